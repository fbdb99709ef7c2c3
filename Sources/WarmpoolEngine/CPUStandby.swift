import WarmpoolModel

/// The CPU standby strategy: where the pool's host has no second GPU, a plain VM of another cloud
/// holds a copy of the volume, kept current by the primary's agent (rsync over SSH), and is
/// promoted to a degraded (CPU) primary when the GPU primary fails.
public struct CPUStandbySettings: Hashable, Sendable, Codable {
    /// The cloud's machine type, e.g. `e2-small`.
    public var machineType: String
    /// The VM's disk; nil: the pool's volume size.
    public var diskSizeGB: Int?
    /// A warm pool whose host has no free GPU left for a new standby falls back to a CPU standby
    /// (instead of staying degraded, unprotected, until a GPU frees up).
    public var replacesMissingGPUStandby: Bool

    public init(machineType: String = "e2-small", diskSizeGB: Int? = nil, replacesMissingGPUStandby: Bool = true) {
        self.machineType = machineType
        self.diskSizeGB = diskSizeGB
        self.replacesMissingGPUStandby = replacesMissingGPUStandby
    }
}

/// A CPU VM the engine wants to exist.
public struct CPUInstanceRequest: Hashable, Sendable, Codable {
    /// The VM's name at the cloud, deterministic and unique per pool (`wp-<pool>-cpu-e<epoch>-a<n>`):
    /// an interrupted create is found again by it.
    public var name: String
    /// The id its agent announces. The cloud's own id is not known before the create, and the
    /// agent's key is bound before it: the engine picks one in a range no marketplace id reaches.
    public var agent: InstanceID
    public var machineType: String
    public var diskSizeGB: Int

    /// Agent ids of CPU VMs start here (2^62): Vast.ai's instance ids are eight digits today.
    public static let agentIDBase: Int64 = 1 << 62

    public init(name: String, agent: InstanceID, machineType: String, diskSizeGB: Int) {
        self.name = name
        self.agent = agent
        self.machineType = machineType
        self.diskSizeGB = diskSizeGB
    }
}

/// Where the primary's agent syncs the volume to (written onto the primary by the shell).
public struct SyncTarget: Hashable, Sendable, Codable {
    /// The CPU VM's name.
    public var name: String
    /// Its agent, whose attested host key the shell pins for the sync.
    public var agent: InstanceID
    public var ssh: SSHEndpoint
    /// The primary syncs only while it holds a lease at this epoch.
    public var epoch: Epoch

    public init(name: String, agent: InstanceID, ssh: SSHEndpoint, epoch: Epoch) {
        self.name = name
        self.agent = agent
        self.ssh = ssh
        self.epoch = epoch
    }
}
