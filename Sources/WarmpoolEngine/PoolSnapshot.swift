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
    /// The pool's incarnation (`ProvisionRequest.incarnation`).
    public var incarnation: Int = 1
    /// Its instances and volume are being destroyed (the state reads `disabled` meanwhile).
    public var cleaningUp = false
    /// The volume's identity marker was written or found: a failover can prove the volume.
    public var volumeVerified = false
    /// A provisioning's failure (in `errorMessage`) came from the provider (an error answer, or
    /// none by the deadline), not from the host's state (no free GPU) or someone else's action.
    public var failedAtProvider = false
    /// Degraded: how far the remediation got (`DegradedRung`); nil otherwise.
    public var degradedRung: DegradedRung?
    /// Degraded: when the engine tries again by itself (`POST /warmpool/repair` tries now).
    public var nextRetryAt: Instant?
    /// `cpu_standby` while a CPU VM is the standby or the primary, else `gpu_warm_pool`.
    public var strategy: FailoverStrategy = .gpuWarmPool
    /// The CPU standby (the VM's name, its agent's id, where SSH answers), when there is one.
    public var cpuStandbyName: String? = nil
    public var cpuStandbyInstanceID: InstanceID? = nil
    public var cpuStandbySSH: SSHEndpoint? = nil
    /// The primary is this CPU VM (degraded performance until the pool moves back to a GPU).
    public var cpuPrimaryName: String? = nil
}

/// Where a degraded pool stands on the remediation ladder (start the standby, then a new
/// instance on a free GPU of the host, then whole-host recovery).
public enum DegradedRung: String, Hashable, Sendable, Codable {
    /// The primary runs; no standby could be made on the host (no free GPU, or the provider
    /// failed): one is tried again at `nextRetryAt`.
    case noStandby = "no_standby"
    /// No primary: the standby did not start (its GPU taken) and the host had no free GPU for a
    /// new instance. A GPU freeing up on the host brings the pool back (tried at `nextRetryAt`);
    /// otherwise only a restore on another host would (whole-host recovery).
    case needsWholeHostRecovery = "needs_whole_host_recovery"
    /// Primary and stopped standby in place, but the host had no free GPU at the last look: the
    /// standby's start would wait in `scheduling`. Active again when a GPU frees up.
    case standbyAtRisk = "standby_at_risk"
    /// The primary is the CPU standby, promoted: the workload runs, slowly, and nothing protects
    /// it. The pool looks for a free GPU to move back to at `nextRetryAt`.
    case runningOnCPU = "running_on_cpu"
}
