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
public enum StandbyState: String, Hashable, Sendable, Codable, CaseIterable {
    case none, stopped, starting, running
}

/// How a machine is protected. `gpu_warm_pool` keeps a stopped GPU standby on the same host;
/// `cpu_standby` is the fallback when the host has no second GPU; `disabled` does nothing.
public enum FailoverStrategy: String, Hashable, Codable, Sendable, CaseIterable {
    case gpuWarmPool = "gpu_warm_pool"
    case cpuStandby = "cpu_standby"
    case disabled
}
