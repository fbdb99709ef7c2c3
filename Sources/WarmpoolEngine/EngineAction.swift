import WarmpoolModel

/// What the shell must do for the engine. The shell saves the machine's new state first (with the
/// `timeline` and `notify` records, in one transaction), then carries the actions out in order.
///
/// Every provider command is idempotent, so that `PoolMachine.resume(now:)` may send it again
/// after a crash; each one carrying an `OperationID` is answered with
/// `PoolMachine.providerResult(_:_:now:)` (or `verificationResult` for `verify`).
public enum EngineAction: Hashable, Sendable, Codable {
    /// Free single-GPU offers on `hostMachineID`, matching `gpuNames` (any if empty), best first.
    /// Answer: `.offers`.
    case findFreeOffers(OperationID, hostMachineID: HostMachineID, gpuNames: [String])
    /// Free single-GPU offers on any host but `excludingHosts`, matching `gpuNames` (any if empty),
    /// best first: where a pool whose host is lost goes. Answer: `.offers`.
    case findFreeOffersAnywhere(OperationID, gpuNames: [String], excludingHosts: [HostMachineID])
    /// Make sure a volume named `name` exists on the host: look it up by name and adopt it, or
    /// create it. Answer: `.volume`.
    case ensureVolume(OperationID, name: String, hostMachineID: HostMachineID, sizeGB: Int)
    /// Make sure an instance labelled `request.label` exists: look the label up in the instance
    /// list and adopt it, or create it from the offer. Never creates a second one. Answer: `.instance`.
    case ensureInstance(OperationID, InstanceRequest)
    /// Answer: `.accepted` (also when it already runs).
    case startInstance(OperationID, InstanceID)
    /// Answer: `.accepted` (also when it is already stopped or gone).
    case stopInstance(OperationID, InstanceID)
    /// Show one instance. Answer: `.instance` (`nil` when the provider has no such instance).
    case pollInstance(OperationID, InstanceID)
    /// Answer: `.accepted` (also when it is already gone).
    case destroyInstance(OperationID, InstanceID)
    /// Look an instance up by its label (a create whose answer never came). Answer: `.instance`
    /// (`nil` when no instance has it).
    case findInstance(OperationID, label: String)
    /// Any instance whose label starts with one of `labelPrefixes` and is not in `excluding`: what
    /// a cleanup might otherwise leave behind (a create that took effect after its answer was
    /// given up on). Answer: `.instance` (`nil` when there is none).
    case findLeftover(OperationID, labelPrefixes: [String], excluding: [InstanceID])
    /// Answer: `.accepted` (also when it is already gone).
    case deleteVolume(OperationID, VolumeID)
    /// Over libssh2: SSH answers with the pinned host key, and `volume` is mounted at the mount
    /// path, is the expected volume (its identity marker holds its id), and is writable. With
    /// `marker: .establish` a missing marker is written first. Answer: `verificationResult`.
    case verify(OperationID, instance: InstanceID, ssh: SSHEndpoint?, volume: VolumeID, marker: VolumeMarkerCheck)
    /// Over libssh2, on the instance itself (the host key pinned): restore `snapshot` (the newest
    /// complete one when nil) onto its volume (streaming, every chunk verified), then remove the
    /// old volume's identity marker and epoch, which are not data. Answer: `restoreResult`.
    case restoreSnapshot(OperationID, instance: InstanceID, ssh: SSHEndpoint?, snapshot: String?)

    /// Make sure the CPU VM `request.name` exists at the cloud: look the name up and adopt it, or
    /// create it. Answer: `.instance`, in the engine's terms (id: `request.agent`; the cloud's
    /// statuses mapped: booting `loading`, `running`, stopped `stopped`, repairing `offline`).
    case ensureCPUInstance(OperationID, CPUInstanceRequest)
    /// Answer: `.accepted` (also when it already runs).
    case startCPUInstance(OperationID, name: String)
    /// Answer: `.accepted` (also when it is already stopped or gone).
    case stopCPUInstance(OperationID, name: String)
    /// Answer: `.instance` with id `agent` (`nil` when the cloud has no VM of that name).
    case pollCPUInstance(OperationID, name: String, agent: InstanceID)
    /// Answer: `.accepted` (also when it is already gone). Its disk goes with it.
    case deleteCPUInstance(OperationID, name: String)
    /// Over libssh2, on the primary: tell its agent where to sync the volume to (`target`), or to
    /// stop syncing (nil). The target's host key is the one its agent attested. Answer:
    /// `verificationResult` (`notReady` until the target's agent has attested its key).
    case configureSync(OperationID, primary: InstanceID, ssh: SSHEndpoint?, target: SyncTarget?)
    /// Over libssh2, on the CPU VM about to be promoted (its host key pinned): its copy of the
    /// volume is mounted and writable, and the sync manifest on it is the last pass that
    /// `syncedFrom` (the old primary) reported, or newer; the epoch is written beside it. Answer:
    /// `verificationResult`.
    case verifyCPUCopy(OperationID, instance: InstanceID, ssh: SSHEndpoint?, name: String, syncedFrom: InstanceID)

    /// Over libssh2, on the instance (its host key pinned): take a snapshot of its volume now.
    /// Answer: `restoreResult` (`.restored` naming the snapshot taken).
    case takeSnapshot(OperationID, instance: InstanceID, ssh: SSHEndpoint?)

    /// Call `timerFired(id, now:)` at `at` (at once if it has passed). Replaces nothing: ids are unique.
    case scheduleTimer(TimerID, at: Instant)
    case cancelTimer(TimerID)

    /// Send this instance's agent no further LeaseGrant: it fences itself when its lease runs out.
    /// Must take effect before the shell sends any other grant.
    case revokeLease(InstanceID)
    /// This instance's agent may hold a lease again, at `epoch` (the tracker's `restoreLease`).
    case grantLease(InstanceID, epoch: Epoch)

    /// Deliver once per `id`: a redelivery after a restart carries the same id.
    case notify(EngineNotification)
    /// Persist with the state, in the same transaction.
    case timeline(TimelineEntry)
}

/// An instance the engine wants to exist.
public struct InstanceRequest: Hashable, Sendable, Codable {
    public enum Role: String, Hashable, Sendable, Codable, CaseIterable { case primary, standby }

    /// Deterministic and unique per pool: `wp-<pool>-<role>-e<epoch>-a<n>`. The shell finds an
    /// instance made by an earlier, interrupted attempt by this label.
    public var label: String
    public var offer: GPUOffer
    public var role: Role
    public var volume: VolumeID
    public var image: String
    public var diskGB: Int
    /// Interruptible at this bid ($/hour); nil: on-demand.
    public var bidPricePerHour: Double?

    public init(label: String, offer: GPUOffer, role: Role, volume: VolumeID, image: String, diskGB: Int, bidPricePerHour: Double? = nil) {
        self.bidPricePerHour = bidPricePerHour
        self.label = label
        self.offer = offer
        self.role = role
        self.volume = volume
        self.image = image
        self.diskGB = diskGB
    }
}

/// One step of a failover (or of provisioning) as it happened.
public struct TimelineEntry: Hashable, Sendable, Codable {
    public enum Step: String, Hashable, Sendable, Codable, CaseIterable {
        case provisioning, volumeReady = "volume_ready", primaryCreated = "primary_created"
        case primaryRunning = "primary_running"
        case detected, fencing, fenced
        case epochIncreased = "epoch_increased"
        case standbyStarting = "standby_starting", standbyRunning = "standby_running"
        case volumeMarked = "volume_marked"
        case sshReady = "ssh_ready", volumeVerified = "volume_verified"
        case standbyAbandoned = "standby_abandoned"
        /// A degraded pool without a primary tries again: a new primary from the volume on a free
        /// GPU of the host.
        case rebuilding
        /// The host is lost (offline past the bound): the pool moves to another host.
        case relocating
        /// The newest snapshot was restored onto the new primary's volume.
        case restored
        case promoted
        /// The primary's agent was told to sync the volume to the CPU standby.
        case syncConfigured = "sync_configured"
        /// The pool runs on a CPU VM and found a free GPU: it moves back, planned.
        case failingBack = "failing_back"
        case standbyProvisioning = "standby_provisioning", standbyReady = "standby_ready"
        case degraded, failed, cleanup, removed
    }

    public var pool: PoolID
    /// The failover this step belongs to (1, 2, …), or nil outside one (provisioning, a standby
    /// lost while active, cleanup).
    public var failover: Int?
    public var step: Step
    public var at: Instant
    public var sincePrevious: Duration
    /// Since the failure was detected (or the test failover began): nil outside a failover.
    public var sinceDetection: Duration?
    public var detail: String?
    /// `restored` only: the snapshot restored, and how old it was when the failure was detected
    /// (the work the move lost; nil when its time is unknown).
    public var snapshot: String? = nil
    public var recoveryPoint: Duration? = nil
}

/// A message for people, sent through the shell's notifier.
public struct EngineNotification: Hashable, Sendable, Codable {
    public enum Kind: String, Hashable, Sendable, Codable, CaseIterable {
        case failureDetected = "failure_detected"
        case standbyStarting = "standby_starting"
        case failoverComplete = "failover_complete"
        case standbyProvisioned = "standby_provisioned"
        case failoverFailed = "failover_failed"
        case poolDegraded = "pool_degraded"
    }

    /// `wp-<pool>-<kind>-<n>`, where n is the failover number for the failover kinds and a count
    /// of that kind otherwise: the same event always gets the same id.
    public var id: String
    public var kind: Kind
    public var pool: PoolID
    public var failover: Int?
    public var at: Instant
    public var message: String
}

/// An event the machine refuses in its present state; nothing changed.
public struct EngineViolation: Error, Hashable, Sendable, CustomStringConvertible {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}
