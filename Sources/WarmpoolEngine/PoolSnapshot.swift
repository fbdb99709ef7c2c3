import WarmpoolModel

/// Everything GET /warmpool/status needs about one pool, read-only.
public struct PoolSnapshot: Hashable, Sendable, Codable {
    public var poolID: PoolID
    public var state: PoolState
    public var enabled: Bool
    public var hostMachineID: HostMachineID
    public var volumeID: VolumeID?
    public var primaryInstanceID: InstanceID?
    public var standbyInstanceID: InstanceID?
    public var standbyState: StandbyState
    public var primarySSH: SSHEndpoint?
    public var failoverCount: Int
    public var lastFailoverAt: Instant?
    /// From detection (or the start of a test) to promotion, for the last successful failover.
    public var lastRecoveryDuration: Duration?
    public var errorMessage: String?
    /// The fencing token of the current primary's lease.
    public var epoch: Epoch
    /// The number of the failover in progress, nil when none is.
    public var currentFailover: Int?
    /// After cleanup: the pool's instances and volume are gone and the shell may forget it.
    public var removed: Bool
}
