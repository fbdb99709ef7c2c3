import WarmpoolModel

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
