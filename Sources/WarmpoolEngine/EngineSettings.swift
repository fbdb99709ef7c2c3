import WarmpoolModel

/// Deadlines, retry budgets and the lease length the engine works with.
///
/// A step that is not finished by its deadline fails, and so does a command whose retryable
/// provider errors use up `retryLimit` attempts. What a failed step leads to depends on the step
/// (see `PoolMachine`). The settings are saved with the pool, but a restarted controller's own
/// configuration replaces them (`PoolMachine.adopt(settings:now:)`): a longer lease or a new
/// timeout applies to the pools that exist, and a shorter lease cannot shorten a wait for a lease
/// granted under the longer one.
public struct EngineSettings: Hashable, Sendable, Codable {
    /// The agents' lease (PROTOCOL.md §7, `lease_ms`). A primary whose lease was revoked at `t` has
    /// frozen its workload by `t + leaseDuration`.
    public var leaseDuration: Duration
    /// Added to the lease before the engine counts on it having run out: covers the shell carrying
    /// out the revocation a little after the engine asked, and clock drift.
    public var leaseSafetyMargin: Duration
    /// Stopping the old primary and seeing the provider report it stopped.
    public var fenceTimeout: Duration
    /// Starting the stopped standby until the provider reports it running.
    public var standbyStartTimeout: Duration
    /// How long a starting standby may sit in `scheduling` (its GPU rented by someone else) or
    /// `offline` before the failover gives up on it and creates a new instance on a free GPU of
    /// the host. Vast.ai: "stuck more than 30 seconds means the GPU was likely rented".
    public var schedulingTimeout: Duration
    /// Creating an instance (or volume) until it exists, and for a replacement standby until it runs:
    /// includes pulling the image.
    public var createTimeout: Duration
    /// Stopping a freshly made standby until the provider reports it stopped.
    public var standbyStopTimeout: Duration
    /// SSH answering and the volume verified on the instance about to be promoted.
    public var verifyTimeout: Duration
    /// A single provider command that is not a create: search, destroy, delete.
    public var commandTimeout: Duration
    /// Between two looks at an instance's status, and between two SSH attempts.
    public var pollInterval: Duration
    /// Before re-sending a command that failed with a retryable error.
    public var retryDelay: Duration
    /// Attempts per command, the first included, when errors are retryable.
    public var retryLimit: Int
    /// Replacement instances one failover may create after the standby failed to come up.
    public var replacementLimit: Int
    /// How often a degraded pool with a primary looks again for a free GPU for a standby.
    public var degradedRetryInterval: Duration
    /// The last rung: a failover whose old primary's machine has been `offline` this long (and whose
    /// lease has run out) stops waiting for the host and restores the newest snapshot onto a new
    /// volume and primary on another host. nil: never (no snapshots to restore from).
    public var hostLossTimeout: Duration?
    /// Restoring the snapshot onto the new primary's volume, from the first SSH attempt.
    public var restoreTimeout: Duration
    /// The CPU standby strategy; nil: off (a host without two free GPUs cannot be protected).
    public var cpuStandby: CPUStandbySettings?

    public init(
        leaseDuration: Duration = .seconds(10),
        leaseSafetyMargin: Duration = .seconds(1),
        fenceTimeout: Duration = .seconds(30),
        standbyStartTimeout: Duration = .seconds(120),
        schedulingTimeout: Duration = .seconds(45),
        createTimeout: Duration = .seconds(600),
        standbyStopTimeout: Duration = .seconds(120),
        verifyTimeout: Duration = .seconds(60),
        commandTimeout: Duration = .seconds(30),
        pollInterval: Duration = .seconds(1),
        retryDelay: Duration = .seconds(2),
        retryLimit: Int = 3,
        replacementLimit: Int = 3,
        degradedRetryInterval: Duration = .seconds(300),
        hostLossTimeout: Duration? = nil,
        restoreTimeout: Duration = .seconds(3600),
        cpuStandby: CPUStandbySettings? = nil
    ) {
        self.cpuStandby = cpuStandby
        self.hostLossTimeout = hostLossTimeout
        self.restoreTimeout = restoreTimeout
        self.leaseDuration = leaseDuration
        self.leaseSafetyMargin = leaseSafetyMargin
        self.fenceTimeout = fenceTimeout
        self.standbyStartTimeout = standbyStartTimeout
        self.schedulingTimeout = schedulingTimeout
        self.createTimeout = createTimeout
        self.standbyStopTimeout = standbyStopTimeout
        self.verifyTimeout = verifyTimeout
        self.commandTimeout = commandTimeout
        self.pollInterval = pollInterval
        self.retryDelay = retryDelay
        self.retryLimit = retryLimit
        self.replacementLimit = replacementLimit
        self.degradedRetryInterval = degradedRetryInterval
    }

    private enum CodingKeys: String, CodingKey { case leaseDuration, leaseSafetyMargin, fenceTimeout, standbyStartTimeout, schedulingTimeout, createTimeout, standbyStopTimeout, verifyTimeout, commandTimeout, pollInterval, retryDelay, retryLimit, replacementLimit, degradedRetryInterval, hostLossTimeout, restoreTimeout, cpuStandby }

    /// Settings saved by an older controller lack the newer fields: those take their defaults
    /// (a restarted controller replaces the saved settings anyway).
    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        let defaults = EngineSettings()
        leaseDuration = try c.decodeIfPresent(Duration.self, forKey: .leaseDuration) ?? defaults.leaseDuration
        leaseSafetyMargin = try c.decodeIfPresent(Duration.self, forKey: .leaseSafetyMargin) ?? defaults.leaseSafetyMargin
        fenceTimeout = try c.decodeIfPresent(Duration.self, forKey: .fenceTimeout) ?? defaults.fenceTimeout
        standbyStartTimeout = try c.decodeIfPresent(Duration.self, forKey: .standbyStartTimeout) ?? defaults.standbyStartTimeout
        schedulingTimeout = try c.decodeIfPresent(Duration.self, forKey: .schedulingTimeout) ?? defaults.schedulingTimeout
        createTimeout = try c.decodeIfPresent(Duration.self, forKey: .createTimeout) ?? defaults.createTimeout
        standbyStopTimeout = try c.decodeIfPresent(Duration.self, forKey: .standbyStopTimeout) ?? defaults.standbyStopTimeout
        verifyTimeout = try c.decodeIfPresent(Duration.self, forKey: .verifyTimeout) ?? defaults.verifyTimeout
        commandTimeout = try c.decodeIfPresent(Duration.self, forKey: .commandTimeout) ?? defaults.commandTimeout
        pollInterval = try c.decodeIfPresent(Duration.self, forKey: .pollInterval) ?? defaults.pollInterval
        retryDelay = try c.decodeIfPresent(Duration.self, forKey: .retryDelay) ?? defaults.retryDelay
        retryLimit = try c.decodeIfPresent(Int.self, forKey: .retryLimit) ?? defaults.retryLimit
        replacementLimit = try c.decodeIfPresent(Int.self, forKey: .replacementLimit) ?? defaults.replacementLimit
        degradedRetryInterval = try c.decodeIfPresent(Duration.self, forKey: .degradedRetryInterval) ?? defaults.degradedRetryInterval
        hostLossTimeout = try c.decodeIfPresent(Duration.self, forKey: .hostLossTimeout)
        restoreTimeout = try c.decodeIfPresent(Duration.self, forKey: .restoreTimeout) ?? defaults.restoreTimeout
        cpuStandby = try c.decodeIfPresent(CPUStandbySettings.self, forKey: .cpuStandby)
    }
}

/// What POST /warmpool/provision asks for, kept for the pool's whole life: every later standby is
/// made the same way on the same host.
public struct ProvisionRequest: Hashable, Sendable, Codable {
    public var poolID: PoolID
    public var hostMachineID: HostMachineID
    /// Acceptable GPU names, best first (e.g. `["RTX 4090"]`); empty means any.
    public var gpuNames: [String]
    public var image: String
    public var diskGB: Int
    public var volumeGB: Int
    /// Counts the pools this machine id has had: a pool provisioned again after a cleanup is a
    /// new incarnation, and nothing it names (instance labels, agent ids, failover and
    /// notification ids) may collide with what the earlier one left in the store.
    public var incarnation: Int
    /// Rent interruptible (bid) instances at this price per hour instead of on-demand ones:
    /// cheaper, but a higher bid pauses the primary (outbid), which is then failed over.
    public var bidPricePerHour: Double?
    /// The operator picked the CPU standby even where the host has two free GPUs.
    public var prefersCPUStandby: Bool

    public init(
        poolID: PoolID, hostMachineID: HostMachineID, gpuNames: [String] = [],
        image: String = "pytorch/pytorch:2.4.0-cuda12.4-cudnn9-runtime", diskGB: Int = 50, volumeGB: Int = 100,
        incarnation: Int = 1, bidPricePerHour: Double? = nil, prefersCPUStandby: Bool = false
    ) {
        self.prefersCPUStandby = prefersCPUStandby
        self.incarnation = incarnation
        self.bidPricePerHour = bidPricePerHour
        self.poolID = poolID
        self.hostMachineID = hostMachineID
        self.gpuNames = gpuNames
        self.image = image
        self.diskGB = diskGB
        self.volumeGB = volumeGB
    }

    private enum CodingKeys: String, CodingKey { case poolID, hostMachineID, gpuNames, image, diskGB, volumeGB, incarnation, bidPricePerHour, prefersCPUStandby }

    /// Pools saved before incarnations were counted are the first of their machine id.
    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        poolID = try container.decode(PoolID.self, forKey: .poolID)
        hostMachineID = try container.decode(HostMachineID.self, forKey: .hostMachineID)
        gpuNames = try container.decode([String].self, forKey: .gpuNames)
        image = try container.decode(String.self, forKey: .image)
        diskGB = try container.decode(Int.self, forKey: .diskGB)
        volumeGB = try container.decode(Int.self, forKey: .volumeGB)
        incarnation = try container.decodeIfPresent(Int.self, forKey: .incarnation) ?? 1
        bidPricePerHour = try container.decodeIfPresent(Double.self, forKey: .bidPricePerHour)
        prefersCPUStandby = try container.decodeIfPresent(Bool.self, forKey: .prefersCPUStandby) ?? false
    }

    /// What the pool's names start with: `wp-12` for a machine's first pool (the names the
    /// product has always used), `wp-12-i2` for the next one.
    public var namePrefix: String { incarnation <= 1 ? "wp-\(poolID)" : "wp-\(poolID)-i\(incarnation)" }
}
