/// The product's pool states, as GET /warmpool/status names them.
public enum PoolState: String, Hashable, Sendable, Codable, CaseIterable {
    /// The warm pool strategy is off: failures are ignored (the machine falls back to CPU standby).
    case disabled
    /// Looking for free GPUs on the host for a new pool.
    case searching
    /// Volume and instances being created.
    case provisioning
    /// Primary running, standby stopped.
    case active
    /// Replacing the primary: fencing it, starting the standby, promoting it.
    case failover
    /// Provisioning a new standby after a failover.
    case recovering
    /// No standby available; the fallback is in force.
    case degraded
    /// Provisioning, a failover or cleanup failed; `errorMessage` says why.
    case error
}

/// The standby instance's state, as GET /warmpool/status names it.
public enum StandbyState: String, Hashable, Sendable, Codable {
    case none, stopped, starting, running
}

/// Everything GET /warmpool/status needs about one pool, read-only.
public struct PoolSnapshot: Hashable, Sendable, Codable {
    public var poolID: PoolID
    public var state: PoolState
    public var enabled: Bool
    public var hostMachineID: MachineID
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
    public var epoch: UInt64
    /// The number of the failover in progress, nil when none is.
    public var currentFailover: Int?
    /// After cleanup: the pool's instances and volume are gone and the shell may forget it.
    public var removed: Bool
}
