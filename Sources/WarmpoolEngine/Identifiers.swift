/// The API's `machine_id`: the logical machine this warm pool serves.
public typealias PoolID = Int
/// A provider instance id (`primary_gpu_id`, `standby_gpu_id`; Vast.ai's `new_contract`).
public typealias InstanceID = Int
/// A provider physical machine id (`host_machine_id`).
public typealias MachineID = Int
/// A provider volume id (`volume_id`).
public typealias VolumeID = Int
/// A provider offer (ask) id: what an instance is created from.
public typealias OfferID = Int

// Both ids are RawRepresentable over UInt64, so the standard library codes them as a bare number.

/// Names one command the engine sent out and awaits an answer to.
///
/// Fresh for every command, re-issues and resumes included, and never reused (the counter is part
/// of the saved state). An answer that names any other operation is stale and is ignored.
public struct OperationID: RawRepresentable, Hashable, Sendable, Codable, CustomStringConvertible {
    public let rawValue: UInt64
    public init(rawValue: UInt64) { self.rawValue = rawValue }
    public var description: String { "op\(rawValue)" }
}

/// Names one timer the engine asked the shell to run. A firing that names a timer the engine no
/// longer waits for (cancelled, superseded, or from before a restart) is ignored.
public struct TimerID: RawRepresentable, Hashable, Sendable, Codable, CustomStringConvertible {
    public let rawValue: UInt64
    public init(rawValue: UInt64) { self.rawValue = rawValue }
    public var description: String { "timer\(rawValue)" }
}

/// Where to reach an instance's sshd.
public struct SSHEndpoint: Hashable, Sendable, Codable {
    public var host: String
    public var port: Int

    public init(host: String, port: Int) {
        self.host = host
        self.port = port
    }
}
