import WarmpoolModel

/// What the CPU-standby strategy needs from a cloud that rents plain VMs by name. `GCEClient`
/// speaks Google Compute Engine's REST API (Protocol/GCE.md); tests and drills point it at
/// `warmpool-sim`, which emulates the same shapes.
///
/// Every call is idempotent in the way the failover engine needs after a crash: inserting a name
/// that exists returns normally (the caller then reads it), deleting a name that is gone returns
/// normally. Calls return once the cloud has accepted the request (its zonal operation is
/// `PENDING`, `RUNNING` or `DONE` without error); what it leads to is read back with `instance`.
public protocol CPUProviderClient: Sendable {
    func insertInstance(_ spec: CPUInstanceSpec) async throws
    /// nil when the cloud does not know the name (404).
    func instance(named name: String) async throws -> CPUInstance?
    /// The instances whose label `key` has `value` (every value when nil).
    func listInstances(labelKey key: String, value: String?) async throws -> [CPUInstance]
    func startInstance(named name: String) async throws
    func stopInstance(named name: String) async throws
    func deleteInstance(named name: String) async throws
}

/// One VM to create: a boot disk that holds the standby's copy of `/data`, the metadata its
/// guest environment acts on at every boot (`startup-script`, `ssh-keys`), and labels by which
/// the pool finds what it made.
public struct CPUInstanceSpec: Hashable, Sendable, Codable {
    /// RFC 1035: `[a-z]([-a-z0-9]{0,61}[a-z0-9])?`.
    public var name: String
    /// e.g. `e2-small`.
    public var machineType: String
    public var diskSizeGB: Int
    public var labels: [String: String]
    /// In the order given (GCE keeps `metadata.items` as a list).
    public var metadata: [CPUMetadataItem]

    public init(name: String, machineType: String, diskSizeGB: Int, labels: [String: String] = [:], metadata: [CPUMetadataItem] = []) {
        self.name = name
        self.machineType = machineType
        self.diskSizeGB = diskSizeGB
        self.labels = labels
        self.metadata = metadata
    }
}

public struct CPUMetadataItem: Hashable, Sendable, Codable {
    public var key: String
    public var value: String

    public init(key: String, value: String) {
        self.key = key
        self.value = value
    }
}

/// A VM as `instances.get` returns it.
public struct CPUInstance: Hashable, Sendable, Codable {
    public var name: String
    /// The cloud's numeric id (GCE: a uint64 as a decimal string). Our agent on the VM announces
    /// itself as `InstanceID(id)`.
    public var id: UInt64
    public var status: CPUInstanceStatus
    /// `networkInterfaces[0].accessConfigs[0].natIP`: where SSH answers, port 22.
    public var externalIP: String?
    /// `networkInterfaces[0].networkIP`.
    public var internalIP: String?
    public var machineType: String
    public var labels: [String: String]

    public init(name: String, id: UInt64, status: CPUInstanceStatus, externalIP: String? = nil, internalIP: String? = nil,
                machineType: String, labels: [String: String] = [:])
    {
        self.name = name
        self.id = id
        self.status = status
        self.externalIP = externalIP
        self.internalIP = internalIP
        self.machineType = machineType
        self.labels = labels
    }
}

/// GCE's instance lifecycle (a stopped VM reads `TERMINATED`). Unknown values are kept.
public enum CPUInstanceStatus: Hashable, Sendable, Codable {
    case provisioning, staging, running, stopping, stopped, suspending, suspended, repairing, terminated
    case other(String)

    public init(rawValue: String) {
        switch rawValue {
        case "PROVISIONING": self = .provisioning
        case "STAGING": self = .staging
        case "RUNNING": self = .running
        case "STOPPING": self = .stopping
        case "STOPPED": self = .stopped
        case "SUSPENDING": self = .suspending
        case "SUSPENDED": self = .suspended
        case "REPAIRING": self = .repairing
        case "TERMINATED": self = .terminated
        default: self = .other(rawValue)
        }
    }

    public var rawValue: String {
        switch self {
        case .provisioning: "PROVISIONING"
        case .staging: "STAGING"
        case .running: "RUNNING"
        case .stopping: "STOPPING"
        case .stopped: "STOPPED"
        case .suspending: "SUSPENDING"
        case .suspended: "SUSPENDED"
        case .repairing: "REPAIRING"
        case .terminated: "TERMINATED"
        case .other(let value): value
        }
    }

    /// It will not run until started again.
    public var isStopped: Bool { self == .terminated || self == .stopped || self == .suspended }

    public init(from decoder: any Decoder) throws {
        self.init(rawValue: try decoder.singleValueContainer().decode(String.self))
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(rawValue)
    }
}
