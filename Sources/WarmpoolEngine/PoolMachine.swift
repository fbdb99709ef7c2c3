import WarmpoolModel

/// The failover engine for one warm pool. Pure: the caller passes the time in, carries out the
/// actions it returns, and answers the commands among them with `providerResult` or
/// `verificationResult`. No I/O, clock or timer lives in here.
///
/// ```
///   provision
///       │
///       ▼
///   searching ──▶ provisioning ──────────────────▶ active ◀──────────────────┐
///       │             │                              │ primary failed,       │ standby
///       └──▶ error ◀──┘                              │ or a test             │ ready
///                                                    ▼                       │
///   degraded ──── primary failed ───────────────▶ failover ── promoted ──▶ recovering
///    ▲  ▲  │                                       │   │                     │   │
///    │  │  └─ retry timer ─▶ recovering            │   └─ gave up ─▶ error   │   └─ primary failed
///    │  └──────────── no free GPU ─────────────────┘                         │      ─▶ failover
///    └──────────────── no free GPU, or the new standby failed ───────────────┘
///
///   A primary failing while provisioning makes the first standby starts a failover too.
///   active ⇄ degraded (standby at risk): the host had no free GPU at the provider's last look, so
///   the stopped standby (which reserves none) could not start; the standby is kept.
///   degraded without a primary ── a GPU of the host frees up (or repair) ─▶ failover (rebuild).
///   cleanup, from any state: destroy the instances, then the volume ─▶ removed. A failover it
///   interrupts is recorded as failed.
///   A provisioning that fails cleans up what it made (removed, the failure kept): a refused
///   provision leaves nothing behind, at the provider or in the way of a retry.
///   disable / enable: a flag. A disabled pool ignores failures and reports `disabled` at rest;
///   enabling it with a dead primary starts the failover it missed.
/// ```
///
/// A failover, step by step (PoolState `failover` until promoted):
/// 1. detected: the current primary failed (liveness). Revoke its lease.
/// 2. fencing: stop it through the provider, poll until it shows stopped (or gone), **and** wait
///    until its lease has certainly run out (its agent froze the workload by then). Both, in either
///    order: a provider's "stopped" can be stale, and a paused or starved agent's lease timer can
///    run late. A stop not confirmed by `fenceTimeout` is asked again, for as long as it takes
///    (an unreachable provider could not start the standby either); only cleanup ends the wait.
/// 3. fenced, epoch_increased.
/// 4. standby_starting → standby_running: start the standby, poll until running.
/// 5. ssh_ready, volume_verified: the shell verifies it over SSH, the volume's identity marker
///    included (a marker gone since provisioning stops the failover in `error`, nothing destroyed).
/// 6. promoted: it becomes the primary and is granted a lease at the new epoch.
/// 7. recovering: a new stopped standby on the same host (find an offer, create, wait until it
///    exists, stop, poll until stopped) → active.
/// Whole-host loss (with `hostLossTimeout` set): while fencing, an old primary whose machine has
/// been `offline` that long and whose lease has run out cannot write, and its volume is on that
/// machine: the failover becomes a relocation. Find a host with two free GPUs of the pool's
/// preferences (else one), create a volume and a primary there, restore the newest snapshot onto
/// the volume from the primary itself (`restoreSnapshot`), write the volume's identity marker and
/// the epoch (verify), promote, then make a standby on that host. The lost host's instances are
/// destroyed and its volume deleted at cleanup.
/// A standby that does not start or verify is destroyed and a new instance on the next free GPU of
/// the host takes its place (at most `replacementLimit` of them); so is one left in `scheduling` or
/// `offline` past `schedulingTimeout` (its GPU rented by someone else). No free GPU left: degraded,
/// needing whole-host recovery, looking at the host again every `degradedRetryInterval`.
///
/// Durability: the shell saves this value (Codable) before it carries out the actions returned
/// with it. After a crash, `resume(now:)` sends the in-flight step's command again under a fresh
/// operation id; every command is idempotent (creates are "ensure a named thing exists"), so a
/// restart at any point neither repeats a side effect nor loses one.
public struct PoolMachine: Sendable, Codable {
    /// Where the pool is in its life. Each case with a step has exactly one command or one wait
    /// in flight (see `Progress`).
    private enum State: Hashable, Sendable, Codable {
        /// Making a new pool (POST /provision).
        case provisioning(ProvisioningStep)
        /// At rest: primary running, standby stopped. Nothing in flight.
        case active
        /// Replacing the primary (failure or test).
        case failover(Failover, FailoverStep)
        /// Making a new stopped standby beside the primary, after a failover or a lost standby.
        case recovering(StandbyStep)
        /// At rest without a standby: none could be made, or a failover found no GPU (then there
        /// is no primary either). With a primary, a new standby is tried every `degradedRetryInterval`.
        case degraded(reason: String)
        /// At rest after a failure the engine cannot repair itself; cleanup is the way out.
        case error(message: String)
        /// Destroying `remaining` one by one, then deleting the volume.
        case cleaningUp(remaining: [InstanceID])
        /// Cleanup finished: nothing left at the provider.
        case removed

        var isCleaningUp: Bool {
            if case .cleaningUp = self { return true }
            return false
        }
    }

    private enum ProvisioningStep: Hashable, Sendable, Codable {
        /// Two free GPUs on the host, one for each role (PoolState `searching`).
        case findOffers
        case ensureVolume(primary: GPUOffer, standby: GPUOffer?)
        case createPrimary(InstanceRequest, standby: GPUOffer?)
        case awaitPrimaryRunning(InstanceID, standby: GPUOffer?)
        /// The marketplace writes nothing on a volume: its identity marker is written through the
        /// primary, over SSH, before anything else relies on it.
        case markVolume(InstanceID, ssh: SSHEndpoint?, standby: GPUOffer?)
        /// Then the standby, exactly as `recovering` makes one.
        case standby(StandbyStep)
    }

    /// Making a stopped standby next to the primary.
    private enum StandbyStep: Hashable, Sendable, Codable {
        case findOffer
        case create(InstanceRequest)
        /// Until the provider reports any status: only an instance that exists can be stopped.
        case awaitExists(InstanceID)
        case stop(InstanceID)
        case awaitStopped(InstanceID)
        /// The CPU standby: create the VM (or adopt it by name), wait until it runs, then tell the
        /// primary's agent to sync the volume to it.
        case cpuCreate(CPUInstanceRequest)
        case cpuAwaitRunning(CPUInstanceRequest)
        case cpuSync(SyncTarget)

        var cpuVM: CPUInstanceRequest? {
            switch self {
            case .cpuCreate(let create), .cpuAwaitRunning(let create): create
            default: nil
            }
        }

        var isCPU: Bool {
            switch self {
            case .cpuCreate, .cpuAwaitRunning, .cpuSync: true
            default: false
            }
        }
    }

    private enum FailoverStep: Hashable, Sendable, Codable {
        case stopPrimary
        case awaitPrimaryStopped
        /// The provider confirmed the stop (`Failover.stopConfirmed`): wait for `Failover.leaseExpiredBy`.
        case awaitLeaseExpiry
        case startStandby(InstanceID)
        case awaitStandbyRunning(InstanceID)
        /// The standby gave way: a free GPU on the host for a replacement.
        case findReplacement
        case createReplacement(InstanceRequest)
        case verify(InstanceID, ssh: SSHEndpoint?, volume: VolumeID, marker: VolumeMarkerCheck)
        /// Relocation: a host to move to, other than the lost ones.
        case findHost
        /// Relocation: a new volume on the chosen host (its free GPUs, best first).
        case createVolume(host: HostMachineID, offers: [GPUOffer])
        /// Relocation: the newest snapshot onto the new volume, through the new primary.
        case restore(InstanceID, ssh: SSHEndpoint?)
        /// Failback: a snapshot of the CPU primary, taken over SSH once its lease has run out (so
        /// nothing writes any more), before it is stopped.
        case finalSnapshot(InstanceID, ssh: SSHEndpoint?)

        /// Before the old primary is known to be unable to write.
        var isFencing: Bool {
            switch self {
            case .stopPrimary, .awaitPrimaryStopped, .awaitLeaseExpiry: true
            default: false
            }
        }

        /// The instance this step is bringing up, if any.
        var candidate: InstanceID? {
            switch self {
            case .startStandby(let id), .awaitStandbyRunning(let id), .verify(let id, _, _, _), .restore(let id, _): id
            default: nil
            }
        }
    }

    private enum FailoverReason: Hashable, Sendable, Codable {
        case failure
        case test
        /// A degraded pool without a primary found a free GPU on its host: a new primary from the
        /// volume (the old one was fenced by the failover that failed).
        case rebuild
        /// The host is lost: a new volume and primary on another host, from the newest snapshot.
        case relocation
        /// POST /warmpool/restore: the pool's data from a snapshot, onto a new volume (a host with
        /// free GPUs, this one included), after fencing the primary as a failover does.
        case restoreRequested

        /// The pool runs on its CPU VM and a GPU is free: planned, the workload's lease is revoked
        /// (its fence hook checkpoints it), a final snapshot of the VM is taken, the VM stopped,
        /// and the snapshot restored onto a new volume on the GPU's host.
        case failback

        /// The failover makes a new volume and restores a snapshot onto it.
        var movesVolume: Bool { self == .relocation || self == .restoreRequested || self == .failback }
    }

    private struct Failover: Hashable, Sendable, Codable {
        var number: Int
        var reason: FailoverReason
        var oldPrimary: InstanceID
        var startedAt: Instant
        /// By then the old primary's agent has fenced itself: its lease was revoked (no grant sent
        /// since) and has run out. Pushed later when a restart revokes it again.
        var leaseExpiredBy: Instant
        /// What the provider said that proved the old primary stopped; nil until it has.
        var stopConfirmed: String?
        var triedOffers: [OfferID] = []
        var replacementsCreated = 0
        var announcedStandbyStarting = false
        /// A standby create that a failure interrupted (while recovering): adopted by label as the
        /// first replacement, so the instance it may already have made is not left behind.
        var unfinishedStandby: InstanceRequest?
        /// Since when the instance starting now has been `scheduling` (or `offline`): after
        /// `schedulingTimeout` it gives way to a new instance on a free GPU.
        var waitingSince: Instant?
        /// Since when the old primary has been `offline` while fencing (`hostLossTimeout`).
        var offlineSince: Instant?
        /// Relocation: the snapshot is on the new volume (a replacement after this needs no restore).
        var restored: Bool?
        /// The snapshot to restore; nil: the newest.
        var snapshot: String?
    }

    /// The in-flight step's bookkeeping, reset whenever the state changes.
    private struct Progress: Hashable, Sendable, Codable {
        /// The command whose answer the step waits for; nil while it waits for `wakeTimer`.
        var operation: OperationID?
        var failures = 0
        var lastError: String?
        var deadline: Instant?
        var deadlineTimer: TimerID?
        /// Next poll, retry, lease expiry, or degraded retry.
        var wakeTimer: TimerID?
    }

    /// An instance the pool no longer uses, being destroyed beside the main sequence.
    private struct LeftoverSweep: Hashable, Sendable, Codable {
        /// Found and destroyed in this sweep (the provider may list them a while longer).
        var found: [InstanceID] = []
        var done = false
    }

    private struct Retirement: Hashable, Sendable, Codable {
        var instance: InstanceID
        /// nil after a failed destroy: sent again at the next `resume`.
        var operation: OperationID?
    }

    /// The timeline being written: one failover (and the recovery after it), a provisioning, ….
    private struct TimelineRun: Hashable, Sendable, Codable {
        var failover: Int?
        var startedAt: Instant
        var lastAt: Instant
    }

    public private(set) var settings: EngineSettings
    /// Leases granted under earlier settings (a previous run of the controller with a longer lease)
    /// have run out by then: no lease wait ends earlier.
    private var earlierLeasesEndBy: Instant?
    public private(set) var request: ProvisionRequest
    private var state: State
    private var progress = Progress()
    private var enabled = true
    private var volume: VolumeID?
    /// When the volume's identity marker was written or first found. nil for a pool saved before
    /// the controller wrote markers: its next verification writes one if the volume has none.
    private var volumeMarkedAt: Instant?
    private var primary: InstanceID?
    /// The primary a failed failover fenced and retired: a rebuild replaces it.
    private var lastPrimary: InstanceID?
    /// When a degraded pool tries again by itself.
    private var nextRetryAt: Instant?
    /// Degraded because the host had no free GPU at the provider's last look: the stopped standby
    /// (which reserves none) could not start. Active again once one is free.
    private var standbyAtRisk = false
    private var primarySSH: SSHEndpoint?
    private var standby: InstanceID?
    private var standbySSH: SSHEndpoint?
    private var standbyState = StandbyState.none
    private var epoch: Epoch = 1
    private var retiring: [Retirement] = []
    private var run: TimelineRun?
    private var failoversStarted = 0
    private var failoverCount = 0
    private var lastFailoverAt: Instant?
    private var lastRecoveryDuration: Duration?
    /// Numbers the labels of created instances, so that each label is used once.
    private var instancesCreated = 0
    private var standbysProvisioned = 0
    private var degradations = 0
    /// Set when pool_degraded went out; a failed retry from degraded does not repeat it.
    private var degradedAnnounced = false
    /// Why provisioning failed, when it did: the pool then cleans itself up, and this stays
    /// readable in its snapshots until it is removed.
    private var provisioningFailure: String?
    private var provisioningFailedAtProvider: Bool?
    /// Labels of creates that were in flight when a cleanup began: the cleanup looks each up at
    /// the provider (and destroys what it finds) before it deletes the volume, or the instance
    /// the create made would be left behind, holding the volume.
    private var sweepLabels: [String]?
    /// Before a cleanup deletes the volume, it lists the provider's instances once more for any
    /// that carries this incarnation's labels (a create answered too late for the label sweep
    /// above, or one whose answer never came): nil when no cleanup is under way; optional so
    /// that states saved before it decode.
    private var leftoverSweep: LeftoverSweep?
    /// That create's operation, while its answer may still come: the cleanup waits for it.
    private var awaitingCreate: OperationID?
    /// New standbys that vanished at the provider before they were ready, in a row: each is
    /// replaced, up to `replacementLimit`, so that a provider destroying instances behind our back
    /// cannot make the pool create them forever.
    private var standbysVanished: Int?
    /// Offers rented by someone else between a search and its create, in a row: each sends the
    /// step back to a new search, up to `replacementLimit` (other pools on the host, or other
    /// renters, take GPUs at any time).
    private var offersTaken: Int?
    /// Hosts this pool left because they were lost: never chosen again.
    private var lostHosts: [HostMachineID]?
    /// Volumes left on lost hosts: deleted by cleanup, after the current one.
    private var abandonedVolumes: [VolumeID]?
    /// Volumes made by relocations, for their names (`wp-12-volume-r1`, ...).
    private var relocations: Int?
    /// The CPU standby, once created (its VM may still be booting).
    private var cpuStandby: CPUInstanceRequest?
    private var cpuStandbySSH: SSHEndpoint?
    /// The primary is this CPU VM (the CPU standby, promoted).
    private var cpuPrimary: CPUInstanceRequest?
    /// Every CPU VM this pool asked for and has not seen deleted: the cleanup's books.
    private var cpuVMs: [CPUInstanceRequest]?
    /// Numbers the CPU VMs' names and agent ids.
    private var cpuVMsCreated: Int?
    /// The volume is not the pool's data: the CPU standby was promoted (the volume holds the data
    /// as of that failover, older than the workload's), or a move made it and its restore has not
    /// finished. Never a rebuild's volume: only a snapshot brings the pool back.
    private var volumeStale: Bool?
    /// Failbacks abandoned in a row: each one froze the workload for a lease, so the next waits
    /// twice as long (up to 16 degraded intervals).
    private var failBacksAbandoned: Int?
    /// Source of operation and timer ids.
    private var nextID: UInt64 = 1

    private init(request: ProvisionRequest, settings: EngineSettings) {
        self.request = request
        self.settings = settings
        self.state = .provisioning(.findOffers)
    }

    private var poolID: PoolID { request.poolID }

    // MARK: - Events

    /// POST /warmpool/provision: a new pool, searching its host for two free GPUs.
    public static func provision(
        _ request: ProvisionRequest, settings: EngineSettings = EngineSettings(), now: Instant
    ) -> (machine: PoolMachine, actions: [EngineAction]) {
        var machine = PoolMachine(request: request, settings: settings)
        machine.run = TimelineRun(failover: nil, startedAt: now, lastAt: now)
        var actions = [machine.record(.provisioning, now: now, detail: "host \(request.hostMachineID)")]
        actions += machine.enter(.provisioning(.findOffers), deadline: now + settings.commandTimeout, now: now)
        return (machine, actions)
    }

    /// The failure detector failed an agent. Only the current primary matters: a stopped
    /// standby's agent is silent by design, and a failover already under way ignores repeats.
    /// `epoch` is the epoch that agent was last granted (nil if unknown); an older one than the
    /// pool's is a report about a primary that has since been replaced.
    /// `reason`: how the shell knows (a detector verdict, a Goodbye nobody asked for, the
    /// provider's status), for the timeline.
    public mutating func livenessFailed(instance: InstanceID, epoch: Epoch?, reason: String? = nil, now: Instant) -> [EngineAction] {
        guard enabled, instance == primary, (epoch ?? self.epoch) >= self.epoch else { return [] }
        switch state {
        case .active, .recovering, .degraded, .provisioning(.standby):
            // A primary that dies while its standby is being made is failed over too: the
            // detector reports a failure once, so ignoring it would leave a dead primary "active".
            return beginFailover(.failure, because: reason, now: now)
        case .provisioning, .failover, .error, .cleaningUp, .removed:
            // Early provisioning polls its primary itself; the others have no primary to save.
            return []
        }
    }

    /// The shell learnt that the standby instance is gone or broken (the provider lists it
    /// missing or offline). Only a new standby is made; the primary is not touched.
    public mutating func standbyLost(instance: InstanceID, reason: String, now: Instant) -> [EngineAction] {
        if let cpu = cpuStandby, cpu.agent == instance { return cpuStandbyLost(cpu, reason: reason, now: now) }
        guard instance == standby else { return [] }
        switch state {
        case .active:
            run = TimelineRun(failover: nil, startedAt: now, lastAt: now)
            return dropStandby(reason: reason, now: now) + beginRecovering(now: now)
        case .recovering:
            return dropStandby(reason: reason, now: now) + enter(.recovering(.findOffer), deadline: now + settings.commandTimeout, now: now)
        case .provisioning(.standby):
            return dropStandby(reason: reason, now: now)
                + enter(.provisioning(.standby(.findOffer)), deadline: now + settings.commandTimeout, now: now)
        case .failover(_, let step) where step.isFencing:
            // Not started yet: the failover will look for a replacement once fenced.
            return dropStandby(reason: reason, now: now)
        case .failover(let failover, _):
            return giveWay(failover, reason: "standby lost: \(reason)", now: now)
        case .degraded where standbyAtRisk:
            run = TimelineRun(failover: nil, startedAt: now, lastAt: now)
            return dropStandby(reason: reason, now: now) + beginRecovering(now: now)
        case .provisioning, .degraded, .error, .cleaningUp, .removed:
            return []
        }
    }

    /// The CPU standby is gone or stopped at its cloud while the pool rests on it: another VM
    /// takes its place (the pool chose a CPU standby, so it gets one again). During a failover
    /// the failover itself finds out.
    private mutating func cpuStandbyLost(_ cpu: CPUInstanceRequest, reason: String, now: Instant) -> [EngineAction] {
        guard case .active = state else { return [] }
        run = TimelineRun(failover: nil, startedAt: now, lastAt: now)
        var actions = retire(cpu.agent)
        actions.append(record(.standbyAbandoned, now: now, detail: "CPU VM \(cpu.name): \(reason)"))
        cpuStandby = nil
        cpuStandbySSH = nil
        return actions + [record(.standbyProvisioning, now: now, detail: "a new CPU standby")]
            + enter(.recovering(.cpuCreate(makeCPURequest())), deadline: now + settings.createTimeout, now: now)
    }

    /// The shell's look at the host's free GPUs (one offer search for all pools). A stopped
    /// standby reserves no GPU: with none free, its start would wait in `scheduling` while someone
    /// else has the GPU, so an active pool is not protected and says so (degraded, standby kept);
    /// it is active again when a GPU is free.
    public mutating func hostGPUsSeen(free: Int, now: Instant) -> [EngineAction] {
        switch state {
        case .active where free == 0 && standby != nil:
            standbyAtRisk = true
            let reason = "standby at risk: host \(request.hostMachineID) has no free GPU, so standby instance \(standby.map(String.init) ?? "?") "
                + "(stopped, holding none) would wait in scheduling"
            return enter(.degraded(reason: reason), deadline: nil, now: now)
        case .degraded where standbyAtRisk && free > 0:
            standbyAtRisk = false
            return enter(.active, deadline: nil, now: now)
        default:
            return []
        }
    }

    /// The answer to a provider command. Answers to anything but the command in flight (or a
    /// pending destroy) are stale and ignored.
    public mutating func providerResult(_ operation: OperationID, _ outcome: ProviderOutcome, now: Instant) -> [EngineAction] {
        if let index = retiring.firstIndex(where: { $0.operation == operation }) {
            if case .success(.accepted) = outcome {
                let gone = retiring.remove(at: index)
                cpuVMs?.removeAll { $0.agent == gone.instance }
            } else {
                retiring[index].operation = nil
            }
            return []
        }
        if let awaited = awaitingCreate, operation == awaited {
            return awaitedCreateAnswered(outcome, now: now)
        }
        guard operation == progress.operation else { return [] }
        progress.operation = nil
        switch outcome {
        case .failure(let message, let retryable):
            return failedAttempt(message, retryable: retryable, now: now)
        case .success(let data):
            // The budget is for failures in a row: a step that polls (a standby booting, a
            // primary stopping) gets many answers, and three scattered errors among fifty good
            // polls are a flaky provider, not a failed step. Counted over the whole step, they
            // had a good standby destroyed and replaced (the provider-faults drill, at 30 %).
            progress.failures = 0
            return advance(with: data, now: now)
        }
    }

    /// The answer to `EngineAction.verify`.
    public mutating func verificationResult(
        _ operation: OperationID, _ outcome: VerificationOutcome, now: Instant
    ) -> [EngineAction] {
        guard operation == progress.operation else { return [] }
        switch state {
        case .provisioning(.markVolume(let id, _, let standbyOffer)):
            progress.operation = nil
            switch outcome {
            case .passed(_, let written):
                guard let volume else { return stepFailed("the pool has no volume", now: now) }
                volumeMarkedAt = now
                let how = written ? "written" : "already there, holding its id"
                let marked = [record(.volumeMarked, now: now, detail: "volume \(volume): identity marker \(how), through instance \(id)"),
                              record(.standbyProvisioning, now: now)]
                guard let standbyOffer else {
                    return marked + enter(.provisioning(.standby(.cpuCreate(makeCPURequest()))), deadline: now + settings.createTimeout, now: now)
                }
                let create = makeRequest(.standby, offer: standbyOffer, volume: volume)
                return marked + enter(.provisioning(.standby(.create(create))), deadline: now + settings.createTimeout, now: now)
            case .notReady(let message):
                progress.lastError = message
                return wake(at: now + settings.pollInterval)
            case .failed(let message), .markerMissing(let message):
                return stepFailed("cannot mark the volume: \(message)", now: now)
            }

        case .provisioning(.standby(.cpuSync(let target))), .recovering(.cpuSync(let target)):
            progress.operation = nil
            switch outcome {
            case .passed:
                return cpuStandbyReady(target, now: now)
            case .notReady(let message):
                progress.lastError = message
                return wake(at: now + settings.pollInterval)
            case .failed(let message), .markerMissing(let message):
                return stepFailed("cannot start the sync to CPU VM \(target.name): \(message)", now: now)
            }

        case .failover(let failover, .verify(let candidate, let ssh, let volume, let marker)):
            progress.operation = nil
            switch outcome {
            case .passed(let sshReadyAt, let written):
                let lastAt = run?.lastAt ?? sshReadyAt
                let sshAt = min(max(sshReadyAt, lastAt), now)
                var actions = [record(.sshReady, now: sshAt)]
                if marker == .establish {
                    // A pool from before markers: from now on a missing marker is an error.
                    volumeMarkedAt = now
                    if written {
                        actions.append(record(.volumeMarked, now: now, detail: "volume \(volume): identity marker written, through instance \(candidate)"))
                    }
                }
                if let cpu = cpuStandby, cpu.agent == candidate {
                    actions.append(record(.volumeVerified, now: now,
                                          detail: "CPU VM \(cpu.name): its copy of the volume is mounted, writable, and holds the last sync the old primary reported"))
                } else {
                    actions.append(record(.volumeVerified, now: now,
                                          detail: "volume \(volume) mounted, its identity marker holds its id, writable"))
                }
                return actions + promote(failover, candidate: candidate, ssh: ssh, now: now)
            case .notReady(let message):
                progress.lastError = message
                return wake(at: now + settings.pollInterval)
            case .failed(let message):
                return stepFailed("verification failed: \(message)", now: now)
            case .markerMissing(let message):
                return volumeUnproven(failover, reason: message, now: now)
            }

        default:
            return []
        }
    }

    /// The answer to `EngineAction.restoreSnapshot`.
    public mutating func restoreResult(_ operation: OperationID, _ outcome: RestoreOutcome, now: Instant) -> [EngineAction] {
        if operation == progress.operation, case .failover(var failover, .finalSnapshot) = state {
            progress.operation = nil
            switch outcome {
            case .restored(let snapshot, _, let files, let bytes):
                failover.snapshot = snapshot
                return [record(.fencing, now: now, detail: "final snapshot \(snapshot) of instance \(failover.oldPrimary): \(files) files, "
                               + "\(bytes) bytes; stopping it")]
                    + enter(.failover(failover, .stopPrimary), deadline: now + settings.fenceTimeout, now: now)
            case .notReady(let message):
                progress.lastError = message
                return wake(at: now + settings.pollInterval)
            case .failed(let message):
                return stepFailed("final snapshot failed: \(message)", now: now)
            }
        }
        guard operation == progress.operation, case .failover(var failover, .restore(let candidate, let ssh)) = state else { return [] }
        progress.operation = nil
        switch outcome {
        case .restored(let snapshot, let takenAt, let files, let bytes):
            guard let volume else { return stepFailed("the pool has no volume", now: now) }
            failover.restored = true
            volumeStale = nil
            // What the move lost: the work between the snapshot and the failure.
            let point = takenAt.map { max(.zero, failover.startedAt - $0) }
            let age = point.map { " (\($0) before the failure)" } ?? ""
            var entry = record(.restored, now: now, detail: "snapshot \(snapshot)\(age): \(files) files, \(bytes) bytes onto volume \(volume) through instance \(candidate)")
            if case .timeline(var timeline) = entry {
                timeline.snapshot = snapshot
                timeline.recoveryPoint = point
                entry = .timeline(timeline)
            }
            return [entry] + enter(.failover(failover, .verify(candidate, ssh: ssh, volume: volume, marker: .establish)),
                                   deadline: now + settings.verifyTimeout, now: now)
        case .notReady(let message):
            progress.lastError = message
            return wake(at: now + settings.pollInterval)
        case .failed(let message):
            return stepFailed("restore failed: \(message)", now: now)
        }
    }

    public mutating func timerFired(_ timer: TimerID, now: Instant) -> [EngineAction] {
        if timer == progress.deadlineTimer, case .cleaningUp(let remaining) = state, awaitingCreate != nil {
            // The create never answered: the label sweep finds what it made, if anything.
            progress.deadlineTimer = nil
            awaitingCreate = nil
            return continueCleanup(remaining: remaining, now: now)
        }
        if timer == progress.deadlineTimer {
            progress.deadlineTimer = nil
            let lastError = progress.lastError.map { " (last error: \($0))" } ?? ""
            return stepFailed("\(stepName) did not finish by its deadline\(lastError)", atProvider: true, now: now)
        }
        guard timer == progress.wakeTimer else { return [] }
        progress.wakeTimer = nil
        switch state {
        case .failover(let failover, .awaitLeaseExpiry) where failover.reason == .failback && failover.stopConfirmed == nil:
            return [record(.fencing, now: now, detail: "instance \(failover.oldPrimary)'s lease has run out: taking its final snapshot")]
                + enter(.failover(failover, .finalSnapshot(failover.oldPrimary, ssh: primarySSH)), deadline: now + settings.restoreTimeout, now: now)
        case .failover(let failover, .awaitLeaseExpiry):
            guard let confirmation = failover.stopConfirmed else {
                // Saved by a version that let the lease alone suffice: get the provider's word too.
                return enter(.failover(failover, .awaitPrimaryStopped), deadline: now + settings.fenceTimeout, now: now)
            }
            return fenced(failover, how: "\(confirmation); its lease ran out (the provider confirmed first)", now: now)
        case .degraded:
            return retryDegraded(now: now)
        default:
            return issue(now: now)
        }
    }

    /// POST /warmpool/restore: the pool's data from `snapshot` (the newest when nil) onto a new
    /// volume. The primary is fenced as in a failover (its writes stop before the copy is taken
    /// as the pool's), then the move runs as for a lost host; the old volume stays, untouched,
    /// until cleanup. Needs a pool at rest with a primary.
    public mutating func restore(snapshot: String?, now: Instant) throws(EngineViolation) -> [EngineAction] {
        try requireNotRemoved()
        guard enabled else { throw EngineViolation("pool \(poolID) is disabled") }
        switch state {
        case .active, .degraded where primary != nil:
            break
        default:
            throw EngineViolation("a restore needs a pool at rest with a primary; pool \(poolID) is \(self.snapshot.state.rawValue)")
        }
        let actions = beginFailover(.restoreRequested, now: now)
        if case .failover(var failover, let step) = state {
            failover.snapshot = snapshot
            state = .failover(failover, step)
        }
        return actions
    }

    /// POST /warmpool/repair: a degraded pool tries its next rung now instead of at
    /// `nextRetryAt` (a new standby; without a primary, a new one on a free GPU of the host).
    public mutating func repair(now: Instant) throws(EngineViolation) -> [EngineAction] {
        try requireNotRemoved()
        guard case .degraded = state else {
            throw EngineViolation("pool \(poolID) is \(snapshot.state.rawValue), not degraded: nothing to repair")
        }
        guard !standbyAtRisk else {
            throw EngineViolation("pool \(poolID) keeps its standby and waits for a GPU of host \(request.hostMachineID) to free up: nothing to repair")
        }
        guard primary != nil || (lastPrimary != nil && volume != nil) else {
            throw EngineViolation("pool \(poolID) has no primary and no volume to rebuild one from: clean it up and provision again")
        }
        // A search already out answers soon; asking twice would only spend the rate limit.
        guard progress.operation == nil else { return [] }
        var actions: [EngineAction] = []
        if let timer = progress.wakeTimer { actions.append(.cancelTimer(timer)) }
        progress.wakeTimer = nil
        return actions + retryDegraded(now: now)
    }

    /// The degraded pool's next try: a new standby beside the primary, or (none left) a search of
    /// the host for a free GPU to rebuild the primary on.
    private mutating func retryDegraded(now: Instant) -> [EngineAction] {
        nextRetryAt = nil
        if cpuPrimary != nil {
            let operation = newOperation()
            progress.operation = operation
            return [.findFreeOffersAnywhere(operation, gpuNames: request.gpuNames, excludingHosts: lostHosts ?? [])]
        }
        if primary != nil {
            run = TimelineRun(failover: nil, startedAt: now, lastAt: now)
            return beginRecovering(now: now)
        }
        if lostHosts?.contains(request.hostMachineID) == true || volumeStale == true, let lastPrimary {
            // The host is gone for good: only another host can take the pool.
            failoversStarted += 1
            var failover = Failover(number: failoversStarted, reason: .relocation, oldPrimary: lastPrimary, startedAt: now, leaseExpiredBy: now)
            failover.stopConfirmed = "fenced by an earlier failover"
            run = TimelineRun(failover: failover.number, startedAt: now, lastAt: now)
            return [record(.relocating, now: now, detail: "host \(request.hostMachineID) is lost: looking again for another host")]
                + enter(.failover(failover, .findHost), deadline: now + settings.commandTimeout, now: now)
        }
        let operation = newOperation()
        progress.operation = operation
        return [.findFreeOffers(operation, hostMachineID: request.hostMachineID, gpuNames: request.gpuNames)]
    }

    /// A free GPU on the host of a pool without a primary: a failover of its own, from creating a
    /// new primary with the volume on (the old primary was fenced by the failover that failed, at
    /// the epoch the pool still has).
    private mutating func rebuild(on offers: [GPUOffer], now: Instant) -> [EngineAction] {
        guard let offer = offers.first(where: { $0.machineID == request.hostMachineID }), let volume, let lastPrimary else {
            return retryDegradedLater(now: now)
        }
        failoversStarted += 1
        var failover = Failover(number: failoversStarted, reason: .rebuild, oldPrimary: lastPrimary, startedAt: now, leaseExpiredBy: now)
        failover.stopConfirmed = "fenced by an earlier failover"
        run = TimelineRun(failover: failover.number, startedAt: now, lastAt: now)
        let actions = [record(.rebuilding, now: now, detail: "no primary since instance \(lastPrimary) was fenced: a free GPU on host "
                              + "\(request.hostMachineID) (offer \(offer.id)) for a new primary with volume \(volume)")]
        return actions + createReplacement(failover, makeRequest(.primary, offer: offer, volume: volume), now: now)
    }

    /// After a restart, before `resume`: the controller's settings as configured now replace the
    /// saved ones. A lease granted by the previous run lasted the saved lease length at most, so
    /// until `now + saved lease`: no lease wait may end before that, however short the new lease.
    public mutating func adopt(settings live: EngineSettings, now: Instant) {
        let previousLeasesEnd = now + settings.leaseDuration
        earlierLeasesEndBy = max(earlierLeasesEndBy ?? previousLeasesEnd, previousLeasesEnd)
        settings = live
    }

    /// After a restart, with the saved state: the shell's timers and the detector's lease table
    /// are gone, and any command in flight may or may not have been carried out. Sends the lease
    /// posture again, re-arms the deadline, and sends the in-flight command again under a fresh
    /// operation id (its late answers, if any, are then stale).
    public mutating func resume(now: Instant) -> [EngineAction] {
        var actions: [EngineAction] = []
        switch state {
        case .failover(var failover, let step):
            actions.append(.revokeLease(failover.oldPrimary))
            if step.isFencing {
                // Revoked again only now: a grant may have gone out since the restart.
                failover.leaseExpiredBy = max(failover.leaseExpiredBy, leaseExpiry(revokedAt: now))
                state = .failover(failover, step)
            }
        case .cleaningUp, .removed:
            break
        default:
            if let primary { actions.append(.grantLease(primary, epoch: epoch)) }
        }
        // The lease authority forgot its postures with the process: a standby (or a replacement
        // not yet promoted) is withheld again before its agent can reconnect.
        if let standby, !isRemoving { actions.append(.revokeLease(standby)) }
        if let cpuStandby, !isRemoving { actions.append(.revokeLease(cpuStandby.agent)) }
        progress.operation = nil
        progress.wakeTimer = nil
        awaitingCreate = nil  // a call in flight died with the process; the label sweep covers it
        if let deadline = progress.deadline {
            let timer = newTimer()
            progress.deadlineTimer = timer
            actions.append(.scheduleTimer(timer, at: deadline))
        }
        actions += issue(now: now)
        for index in retiring.indices {
            let operation = newOperation()
            retiring[index].operation = operation
            actions.append(destroyCommand(operation, retiring[index].instance))
        }
        return actions
    }

    /// POST /warmpool/enable: failures of the primary are acted on again. `primaryAlive`: the
    /// shell's word on the primary now. One that died while the pool was disabled reported its
    /// failure once, to a pool that ignored it: it is failed over now, or never.
    public mutating func enable(primaryAlive: Bool = true, now: Instant) throws(EngineViolation) -> [EngineAction] {
        try requireNotRemoved()
        let wasEnabled = enabled
        enabled = true
        guard !wasEnabled, !primaryAlive, let primary else { return [] }
        return livenessFailed(instance: primary, epoch: nil, reason: "found dead when the pool was enabled", now: now)
    }

    /// POST /warmpool/disable: failures are ignored from now on. A failover already under way
    /// finishes, because stopping it halfway would leave no primary.
    public mutating func disable(now: Instant) throws(EngineViolation) -> [EngineAction] {
        try requireNotRemoved()
        enabled = false
        return []
    }

    /// POST /warmpool/failover/test: a real failover of a healthy primary.
    public mutating func testFailover(now: Instant) throws(EngineViolation) -> [EngineAction] {
        guard enabled else { throw EngineViolation("pool \(poolID) is disabled") }
        guard case .active = state else {
            throw EngineViolation("a test failover needs an active pool; pool \(poolID) is \(snapshot.state.rawValue)")
        }
        return beginFailover(.test, now: now)
    }

    /// DELETE /warmpool/cleanup: destroy every instance of the pool, then its volume. Allowed in
    /// any state (a failover in progress is abandoned); again after a cleanup that failed.
    public mutating func cleanup(now: Instant) throws(EngineViolation) -> [EngineAction] {
        switch state {
        case .removed: throw EngineViolation("pool \(poolID) is already removed")
        case .cleaningUp: throw EngineViolation("pool \(poolID) is already being cleaned up")
        default: break
        }
        var doomed: [InstanceID] = []
        var actions: [EngineAction] = []
        sweepLabels = createsInFlight.isEmpty ? nil : createsInFlight
        leftoverSweep = instancesCreated > 0 ? LeftoverSweep() : nil  // nothing made, nothing to find
        awaitingCreate = isCreating ? progress.operation : nil
        if case .failover(let failover, _) = state {
            doomed.append(failover.oldPrimary)
            // Its record must end: an abandoned failover is a failed one, not one in progress forever.
            actions.append(record(.failed, now: now, detail: "abandoned: the pool is being cleaned up"))
            actions.append(notify(.failoverFailed, now: now, message: "pool \(poolID): failover \(failover.number) abandoned by a cleanup"))
        }
        for instance in [primary, standby].compactMap({ $0 }) + retiring.map(\.instance) where !doomed.contains(instance) {
            doomed.append(instance)
        }
        // CPU VMs go through the other cloud, by name, from the books (`cpuVMs`).
        doomed.removeAll { cpuVM($0) != nil }
        if let primary { actions.append(.revokeLease(primary)) }
        // Primary and standby stay recorded until their destroy is accepted: a cleanup that
        // fails must not forget what is left.
        retiring = []
        run = TimelineRun(failover: nil, startedAt: now, lastAt: now)
        let vms = (cpuVMs ?? []).isEmpty ? "" : ", CPU VMs \((cpuVMs ?? []).map(\.name))"
        actions.append(record(.cleanup, now: now, detail: "destroying \(doomed.map(String.init))\(vms), volume \(volume.map(String.init) ?? "none")"))
        return actions + continueCleanup(remaining: doomed, now: now)
    }

    // MARK: - Reading

    public var snapshot: PoolSnapshot {
        PoolSnapshot(
            poolID: poolID, state: poolState, enabled: enabled, hostMachineID: request.hostMachineID,
            volumeID: volume, primaryInstanceID: primary, standbyInstanceID: standby, standbyState: standbyState,
            primarySSH: primarySSH, failoverCount: failoverCount, lastFailoverAt: lastFailoverAt,
            lastRecoveryDuration: lastRecoveryDuration, errorMessage: errorMessage, epoch: epoch,
            currentFailover: currentFailover, removed: state == .removed, incarnation: request.incarnation,
            cleaningUp: state.isCleaningUp, volumeVerified: volumeMarkedAt != nil,
            failedAtProvider: provisioningFailure != nil && provisioningFailedAtProvider == true,
            degradedRung: degradedRung, nextRetryAt: nextRetryAt,
            strategy: cpuStandby != nil || cpuPrimary != nil ? .cpuStandby : .gpuWarmPool,
            cpuStandbyName: cpuStandby?.name, cpuStandbyInstanceID: cpuStandby?.agent, cpuStandbySSH: cpuStandbySSH,
            cpuPrimaryName: cpuPrimary?.name)
    }

    private var degradedRung: DegradedRung? {
        guard case .degraded = state else { return nil }
        if standbyAtRisk { return .standbyAtRisk }
        if cpuPrimary != nil { return .runningOnCPU }
        return primary == nil ? .needsWholeHostRecovery : .noStandby
    }

    private var poolState: PoolState {
        switch state {
        case .provisioning(.findOffers): .searching
        case .provisioning: .provisioning
        case .active: enabled ? .active : .disabled
        case .failover: .failover
        case .recovering: .recovering
        case .degraded: enabled ? .degraded : .disabled
        case .error: .error
        case .cleaningUp, .removed: .disabled
        }
    }

    private var errorMessage: String? {
        switch state {
        case .error(let message): message
        case .degraded(let reason): reason
        case .cleaningUp, .removed: provisioningFailure
        default: nil
        }
    }

    private var currentFailover: Int? {
        if case .failover(let failover, _) = state { return failover.number }
        return nil
    }

    /// For messages: what the pool is doing.
    private var stepName: String {
        switch state {
        case .provisioning(.findOffers): "finding free GPUs"
        case .provisioning(.ensureVolume): "creating the volume"
        case .provisioning(.createPrimary): "creating the primary"
        case .provisioning(.awaitPrimaryRunning): "starting the primary"
        case .provisioning(.markVolume): "marking the volume"
        case .provisioning(.standby(let step)), .recovering(let step):
            switch step {
            case .findOffer: "finding a free GPU for the standby"
            case .create, .awaitExists: "creating the standby"
            case .stop, .awaitStopped: "stopping the new standby"
            case .cpuCreate: "creating the CPU standby"
            case .cpuAwaitRunning: "starting the CPU standby"
            case .cpuSync: "starting the sync to the CPU standby"
            }
        case .failover(_, let step):
            switch step {
            case .stopPrimary, .awaitPrimaryStopped: "fencing the old primary"
            case .awaitLeaseExpiry: "waiting for the old primary's lease"
            case .startStandby, .awaitStandbyRunning: "starting the standby"
            case .findReplacement: "finding a free GPU for a replacement"
            case .createReplacement: "creating a replacement"
            case .verify: "verifying SSH and the volume"
            case .findHost: "finding another host"
            case .createVolume: "creating a volume on another host"
            case .restore: "restoring the newest snapshot"
            case .finalSnapshot: "taking the CPU primary's final snapshot"
            }
        case .cleaningUp: "cleaning up"
        case .active, .degraded, .error, .removed: "resting"
        }
    }

    // MARK: - Answers, step by step

    private mutating func advance(with data: ProviderData, now: Instant) -> [EngineAction] {
        switch (state, data) {
        case (.provisioning(.findOffers), .offers(let offers)):
            let usable = offers.filter { $0.machineID == request.hostMachineID }
            // The product's rule: two free GPUs make a warm pool; fewer (or the operator's pick)
            // a CPU standby, unless that strategy is off.
            if usable.count >= 2, !request.prefersCPUStandby {
                return enter(.provisioning(.ensureVolume(primary: usable[0], standby: usable[1])),
                             deadline: now + settings.createTimeout, now: now)
            }
            guard settings.cpuStandby != nil, let primaryOffer = usable.first else {
                let cpu = settings.cpuStandby == nil ? " (the CPU standby strategy is off)" : ""
                return stepFailed(
                    "host \(request.hostMachineID) has \(usable.count) free GPU(s); a warm pool needs 2, a CPU standby 1\(cpu)", now: now)
            }
            let why = request.prefersCPUStandby ? "the operator chose it" : "host \(request.hostMachineID) has \(usable.count) free GPU, a warm pool needs 2"
            return [record(.provisioning, now: now, detail: "strategy cpu_standby: \(why)")]
                + enter(.provisioning(.ensureVolume(primary: primaryOffer, standby: nil)), deadline: now + settings.createTimeout, now: now)

        case (.provisioning(.ensureVolume(let primaryOffer, let standbyOffer)), .volume(let id)):
            volume = id
            let create = makeRequest(.primary, offer: primaryOffer, volume: id)
            return [record(.volumeReady, now: now, detail: "volume \(id)")]
                + enter(.provisioning(.createPrimary(create, standby: standbyOffer)), deadline: now + settings.createTimeout, now: now)

        case (.provisioning(.createPrimary(let create, _)), .offerTaken):
            if let failed = offerLost(create.offer.id, now: now) { return failed }
            return enter(.provisioning(.findOffers), deadline: now + settings.commandTimeout, now: now)

        case (.provisioning(.createPrimary(_, let standbyOffer)), .instance(let instance?)):
            offersTaken = nil
            primary = instance.id
            return [record(.primaryCreated, now: now, detail: "instance \(instance.id)")]
                + enter(.provisioning(.awaitPrimaryRunning(instance.id, standby: standbyOffer)), deadline: progress.deadline, now: now)

        case (.provisioning(.awaitPrimaryRunning(let id, let standbyOffer)), .instance(let instance)):
            guard let instance else { return stepFailed("primary instance \(id) disappeared", now: now) }
            if let status = instance.status, status.provesStopped {
                // Stopped by someone else before it ever ran: waiting for the create deadline
                // (minutes) would only delay the cleanup and the operator's retry.
                return stepFailed("primary instance \(id) was \(status.rawValue) before it ran", now: now)
            }
            guard instance.status == .running else { return wake(at: now + settings.pollInterval) }
            primarySSH = instance.ssh
            return [record(.primaryRunning, now: now, detail: "instance \(id)"), .grantLease(id, epoch: epoch)]
                + enter(.provisioning(.markVolume(id, ssh: instance.ssh, standby: standbyOffer)),
                        deadline: now + settings.verifyTimeout, now: now)

        case (.provisioning(.standby(let step)), _), (.recovering(let step), _):
            return advanceStandby(step, with: data, now: now)

        case (.degraded, .offers(let offers)) where primary == nil:
            return rebuild(on: offers, now: now)
        case (.degraded, .offers(let offers)) where cpuPrimary != nil:
            return failBack(seeing: offers, now: now)
        case (.failover(let failover, let step), _):
            return advanceFailover(failover, step, with: data, now: now)

        case (.cleaningUp(let remaining), .instance(let found)) where !(sweepLabels?.isEmpty ?? true):
            // The label sweep's answer.
            sweepLabels?.removeFirst()
            if sweepLabels?.isEmpty == true { sweepLabels = nil }
            return continueCleanup(remaining: remaining + [found?.id].compactMap { $0 }.filter { !remaining.contains($0) }, now: now)

        case (.cleaningUp(let remaining), .instance(let found)):
            // The leftover sweep's answer: destroy what it found, then look again.
            guard let found, !remaining.contains(found.id) else {
                leftoverSweep?.done = true
                return continueCleanup(remaining: remaining, now: now)
            }
            leftoverSweep?.found.append(found.id)
            return [record(.cleanup, now: now, detail: "instance \(found.id) carries this pool's labels but was not on its books; destroying it")]
                + continueCleanup(remaining: remaining + [found.id], now: now)

        case (.cleaningUp(let remaining), .accepted):
            if let destroyed = remaining.first {
                if destroyed == primary { primary = nil; primarySSH = nil }
                if destroyed == standby { clearStandby() }
            } else if let vm = cpuVMs?.first {
                cpuVMs?.removeFirst()
                if vm == cpuStandby { cpuStandby = nil; cpuStandbySSH = nil }
                if vm == cpuPrimary { cpuPrimary = nil; primary = nil; primarySSH = nil }
            } else if volume != nil {
                volume = nil
            } else {
                abandonedVolumes?.removeFirst()
            }
            return continueCleanup(remaining: Array(remaining.dropFirst()), now: now)

        default:
            return stepFailed("unexpected answer while \(stepName): \(data)", now: now)
        }
    }

    private mutating func advanceStandby(_ step: StandbyStep, with data: ProviderData, now: Instant) -> [EngineAction] {
        // The same steps serve a new pool and a recovery; only the surrounding state differs.
        let inProvisioning = if case .provisioning = state { true } else { false }
        func wrap(_ step: StandbyStep) -> State { inProvisioning ? .provisioning(.standby(step)) : .recovering(step) }

        switch (step, data) {
        case (.findOffer, .offers(let offers)):
            guard let offer = offers.first(where: { $0.machineID == request.hostMachineID }) else {
                if settings.cpuStandby?.replacesMissingGPUStandby == true, primary != nil {
                    return [record(.standbyProvisioning, now: now, detail: "no free GPU left on host \(request.hostMachineID): a CPU standby instead")]
                        + enter(wrap(.cpuCreate(makeCPURequest())), deadline: now + settings.createTimeout, now: now)
                }
                return stepFailed("no free GPU left on host \(request.hostMachineID) for a standby", now: now)
            }
            guard let volume else { return stepFailed("the pool has no volume", now: now) }
            return enter(wrap(.create(makeRequest(.standby, offer: offer, volume: volume))),
                         deadline: now + settings.createTimeout, now: now)

        case (.create(let create), .offerTaken):
            if let failed = offerLost(create.offer.id, now: now) { return failed }
            return enter(wrap(.findOffer), deadline: now + settings.commandTimeout, now: now)

        case (.create, .instance(let instance?)):
            offersTaken = nil
            standby = instance.id
            standbyState = .running  // a new instance boots before it can be stopped
            // It boots with the volume and the onstart: its agent must not be granted (and so
            // start the workload) before a promotion says it is the primary.
            return [.revokeLease(instance.id)] + enter(wrap(.awaitExists(instance.id)), deadline: progress.deadline, now: now)

        case (.awaitExists(let id), .instance(let instance)):
            guard let instance else { return standbyVanished(id, wrap: wrap, now: now) }
            guard instance.status != nil else { return wake(at: now + settings.pollInterval) }
            return enter(wrap(.stop(id)), deadline: now + settings.standbyStopTimeout, now: now)

        case (.stop(let id), .accepted):
            return enter(wrap(.awaitStopped(id)), deadline: progress.deadline, now: now)

        case (.cpuCreate(let create), .instance(let vm)):
            guard vm != nil else { return stepFailed("the cloud lists no VM named \(create.name) after creating it", now: now) }
            cpuStandby = create
            // It boots with our agent, which must not be granted (and start the workload) before
            // a promotion says it is the primary.
            return [.revokeLease(create.agent)] + enter(wrap(.cpuAwaitRunning(create)), deadline: progress.deadline, now: now)

        case (.cpuAwaitRunning(let create), .instance(let vm)):
            guard let vm else {
                cpuVMs?.removeAll { $0 == create }
                cpuStandby = nil
                return stepFailed("CPU VM \(create.name) disappeared before it ran", now: now)
            }
            guard vm.status == .running, let ssh = vm.ssh else { return wake(at: now + settings.pollInterval) }
            cpuStandbySSH = ssh
            guard primary != nil else { return stepFailed("the pool has no primary to sync from", now: now) }
            return [record(.standbyRunning, now: now, detail: "CPU VM \(create.name) (agent \(create.agent)) at \(ssh.host):\(ssh.port)")]
                + enter(wrap(.cpuSync(SyncTarget(name: create.name, agent: create.agent, ssh: ssh, epoch: epoch))),
                        deadline: now + settings.createTimeout, now: now)

        case (.awaitStopped(let id), .instance(let instance)):
            guard let instance else { return standbyVanished(id, wrap: wrap, now: now) }
            guard instance.status?.provesStopped == true else { return wake(at: now + settings.pollInterval) }
            standbyState = .stopped
            standbysVanished = nil
            degradedAnnounced = false
            let actions = [
                record(.standbyReady, now: now, detail: "instance \(id), stopped"),
                notify(.standbyProvisioned, now: now, message: "pool \(poolID): standby instance \(id) is ready (stopped)"),
            ]
            run = nil
            return actions + enter(.active, deadline: nil, now: now)

        default:
            return stepFailed("unexpected answer while \(stepName): \(data)", now: now)
        }
    }

    /// The primary's agent syncs to the CPU standby: the pool is protected (the sync's lag is the
    /// shell's to watch: `sync_behind`).
    private mutating func cpuStandbyReady(_ target: SyncTarget, now: Instant) -> [EngineAction] {
        standbysVanished = nil
        degradedAnnounced = false
        let actions = [
            record(.syncConfigured, now: now, detail: "instance \(primary.map(String.init) ?? "?") syncs the volume to CPU VM \(target.name) at epoch \(target.epoch)"),
            record(.standbyReady, now: now, detail: "CPU VM \(target.name), running, kept in sync"),
            notify(.standbyProvisioned, now: now, message: "pool \(poolID): CPU standby \(target.name) is ready (running, kept in sync)"),
        ]
        run = nil
        return actions + enter(.active, deadline: nil, now: now)
    }

    private mutating func makeCPURequest() -> CPUInstanceRequest {
        let made = (cpuVMsCreated ?? 0) + 1
        cpuVMsCreated = made
        let agent = CPUInstanceRequest.agentIDBase | (poolID.rawValue << 24) | (Int64(request.incarnation & 0xff) << 16) | Int64(made & 0xffff)
        let cpu = settings.cpuStandby ?? CPUStandbySettings()
        let create = CPUInstanceRequest(
            name: "\(request.namePrefix)-cpu-e\(epoch)-a\(made)", agent: InstanceID(rawValue: agent),
            machineType: cpu.machineType, diskSizeGB: cpu.diskSizeGB ?? request.volumeGB)
        // On the books before the create goes out: an answer lost to a crash or a timeout must
        // not leave a VM that nobody deletes.
        cpuVMs = (cpuVMs ?? []) + [create]
        return create
    }

    /// The CPU VM whose agent is `instance`, if it is one of this pool's.
    private func cpuVM(_ instance: InstanceID) -> CPUInstanceRequest? {
        cpuVMs?.first { $0.agent == instance }
    }

    /// An offer rented by someone else before our create: the caller searches again, unless that
    /// has happened `replacementLimit` times in a row; then the step fails (its actions returned).
    private mutating func offerLost(_ offer: OfferID, now: Instant) -> [EngineAction]? {
        let lost = (offersTaken ?? 0) + 1
        offersTaken = lost
        guard lost > settings.replacementLimit else { return nil }
        offersTaken = nil
        return stepFailed("offer \(offer) and \(lost - 1) before it were rented by someone else first", now: now)
    }

    /// A new standby the provider no longer lists (destroyed behind our back, reclaimed): another
    /// one is made in its place, as for a standby lost at rest.
    private mutating func standbyVanished(_ id: InstanceID, wrap: (StandbyStep) -> State, now: Instant) -> [EngineAction] {
        let vanished = (standbysVanished ?? 0) + 1
        guard vanished <= settings.replacementLimit else {
            return stepFailed("standby instance \(id) disappeared (\(vanished) new standbys in a row)", now: now)
        }
        standbysVanished = vanished
        return dropStandby(reason: "the provider no longer lists it", now: now)
            + enter(wrap(.findOffer), deadline: now + settings.commandTimeout, now: now)
    }

    private mutating func advanceFailover(
        _ failover: Failover, _ step: FailoverStep, with data: ProviderData, now: Instant
    ) -> [EngineAction] {
        var failover = failover
        switch (step, data) {
        case (.stopPrimary, .accepted):
            return enter(.failover(failover, .awaitPrimaryStopped), deadline: progress.deadline, now: now)

        case (.awaitPrimaryStopped, .instance(.none)):
            return stopConfirmed(failover, "the provider no longer lists instance \(failover.oldPrimary)", now: now)
        case (.awaitPrimaryStopped, .instance(let instance?)):
            guard let status = instance.status, status.provesStopped else {
                if let relocation = relocateIfHostLost(&failover, status: instance.status, step: step, now: now) { return relocation }
                return wake(at: now + settings.pollInterval)
            }
            return stopConfirmed(failover, "the provider reports instance \(instance.id) \(status.rawValue)", now: now)

        case (.startStandby(let id), .accepted):
            standbyState = .starting
            return enter(.failover(failover, .awaitStandbyRunning(id)), deadline: progress.deadline, now: now)

        case (.awaitStandbyRunning(let id), .instance(let instance)):
            guard let instance else { return stepFailed("standby instance \(id) disappeared", now: now) }
            if let status = instance.status, status == .scheduling || status == .offline {
                // A stopped instance reserves no GPU: someone else may have it, for ever. Bounded,
                // then the next rung: a new instance on a free GPU of the host, with the volume.
                let since = failover.waitingSince ?? now
                failover.waitingSince = since
                state = .failover(failover, step)
                if now - since >= settings.schedulingTimeout {
                    let why = status == .scheduling ? "its GPU was likely rented by another user" : "its machine lost contact with the provider"
                    return giveWay(failover, reason: "instance \(id) still \(status.rawValue) after \(now - since): \(why)", now: now)
                }
                return wake(at: now + settings.pollInterval)
            }
            guard instance.status == .running else { return wake(at: now + settings.pollInterval) }
            guard let volume else { return stepFailed("the pool has no volume", now: now) }
            if let cpu = cpuStandby, cpu.agent == id {
                cpuStandbySSH = instance.ssh ?? cpuStandbySSH
                return [record(.standbyRunning, now: now, detail: "CPU VM \(cpu.name)")]
                    + enter(.failover(failover, .verify(id, ssh: cpuStandbySSH, volume: volume, marker: .required)),
                            deadline: now + settings.verifyTimeout, now: now)
            }
            standbyState = .running
            standbySSH = instance.ssh
            if failover.reason.movesVolume, failover.restored != true {
                return [record(.standbyRunning, now: now, detail: "instance \(id)")]
                    + enter(.failover(failover, .restore(id, ssh: instance.ssh)), deadline: now + settings.restoreTimeout, now: now)
            }
            return [record(.standbyRunning, now: now, detail: "instance \(id)")]
                + enter(.failover(failover, .verify(id, ssh: instance.ssh, volume: volume,
                                                    marker: volumeMarkedAt == nil ? .establish : .required)),
                        deadline: now + settings.verifyTimeout, now: now)

        case (.findReplacement, .offers(let offers)):
            let offer = offers.first { $0.machineID == request.hostMachineID && !failover.triedOffers.contains($0.id) }
            guard let offer else {
                return failoverFailed(failover, degraded: true, reason: "no free GPU left on host \(request.hostMachineID) for a new "
                                      + "primary: the pool needs a GPU of the host to free up, or whole-host recovery", now: now)
            }
            guard let volume else { return stepFailed("the pool has no volume", now: now) }
            return createReplacement(failover, makeRequest(.primary, offer: offer, volume: volume), now: now)

        case (.findHost, .offers(let offers)):
            let lost = Set(lostHosts ?? [])
            var hosts: [HostMachineID] = []
            var free: [HostMachineID: [GPUOffer]] = [:]
            for offer in offers where !lost.contains(offer.machineID) {
                if free[offer.machineID] == nil { hosts.append(offer.machineID) }
                free[offer.machineID, default: []].append(offer)
            }
            // Two free GPUs make a warm pool again; one at least brings the workload back.
            guard let host = hosts.first(where: { free[$0]!.count >= 2 }) ?? hosts.first else {
                return failoverFailed(failover, degraded: true, reason: "host \(request.hostMachineID) is lost and no other host has a free GPU"
                                      + " to restore the pool onto", now: now)
            }
            relocations = (relocations ?? 0) + 1
            return enter(.failover(failover, .createVolume(host: host, offers: free[host]!)), deadline: now + settings.createTimeout, now: now)

        case (.createVolume(let host, let offers), .volume(let id)):
            if let old = volume, old != id { abandonedVolumes = (abandonedVolumes ?? []) + [old] }
            volume = id
            volumeStale = true  // empty until the snapshot is on it: never a rebuild's volume before that
            volumeMarkedAt = nil  // a new volume: its marker is written once the snapshot is on it
            request.hostMachineID = host
            return [record(.volumeReady, now: now, detail: "volume \(id) on host \(host), which has \(offers.count) free GPU(s)")]
                + createReplacement(failover, makeRequest(.primary, offer: offers[0], volume: id), now: now)

        case (.createReplacement(let create), .offerTaken):
            // The next free GPU the failover has not tried yet (this one counts as tried).
            return [record(.standbyAbandoned, now: now, detail: "offer \(create.offer.id) was rented by someone else first")]
                + enter(.failover(failover, .findReplacement), deadline: now + settings.commandTimeout, now: now)

        case (.createReplacement, .instance(let instance?)):
            standby = instance.id
            standbyState = .starting
            // Not the primary until verified and promoted: no lease, so no workload, before that.
            let actions = [EngineAction.revokeLease(instance.id)]
                + announceStandbyStarting(&failover, detail: "replacement instance \(instance.id)", now: now)
            return actions + enter(.failover(failover, .awaitStandbyRunning(instance.id)), deadline: progress.deadline, now: now)

        default:
            return stepFailed("unexpected answer while \(stepName): \(data)", now: now)
        }
    }

    // MARK: - Failover

    private mutating func beginFailover(_ reason: FailoverReason, because cause: String? = nil, now: Instant) -> [EngineAction] {
        guard let oldPrimary = primary else { return [] }
        failoversStarted += 1
        var failover = Failover(
            number: failoversStarted, reason: reason, oldPrimary: oldPrimary, startedAt: now,
            leaseExpiredBy: leaseExpiry(revokedAt: now))
        switch state {
        case .recovering(.create(let unfinished)), .provisioning(.standby(.create(let unfinished))):
            failover.unfinishedStandby = unfinished
        default:
            break
        }
        run = TimelineRun(failover: failover.number, startedAt: now, lastAt: now)
        var actions: [EngineAction] = [.revokeLease(oldPrimary)]
        switch reason {
        case .failure:
            let how = cause.map { ": \($0)" } ?? ""
            actions.append(record(.detected, now: now, detail: "primary instance \(oldPrimary) failed\(how)"))
            actions.append(notify(.failureDetected, now: now, message: "pool \(poolID): primary instance \(oldPrimary) failed\(how)"))
        case .test, .rebuild, .relocation, .restoreRequested, .failback:
            break  // Nothing failed: the sequence starts at fencing (a rebuild or relocation never comes here).
        }
        let test = reason == .test ? " (test)" : reason == .restoreRequested ? " (a restore was asked for)" : ""
        actions.append(record(.fencing, now: now, detail: "stopping instance \(oldPrimary)\(test)"))
        return actions + enter(.failover(failover, .stopPrimary), deadline: now + settings.fenceTimeout, now: now)
    }

    /// While fencing: the old primary `offline` past `hostLossTimeout`, and its lease run out.
    /// Its machine may never come back, and with it the volume: the failover moves the pool to
    /// another host (nil: not yet, or not configured). The lease is what fences it then: a
    /// machine that does come back finds its agent without a lease (frozen) and a newer epoch.
    private mutating func relocateIfHostLost(_ failover: inout Failover, status: InstanceStatus?, step: FailoverStep, now: Instant) -> [EngineAction]? {
        guard let bound = settings.hostLossTimeout, !failover.reason.movesVolume else { return nil }
        guard status == .offline else {
            failover.offlineSince = nil
            state = .failover(failover, step)
            return nil
        }
        let since = failover.offlineSince ?? now
        failover.offlineSince = since
        state = .failover(failover, step)
        guard now - since >= bound, now >= failover.leaseExpiredBy else { return nil }
        if cpuStandby != nil {
            // The CPU standby is on another cloud, with the last synced copy: no snapshot needed.
            lostHosts = (lostHosts ?? []) + [request.hostMachineID]
            failover.stopConfirmed = "machine \(request.hostMachineID) offline for \(now - since)"
            return fenced(failover, how: "machine \(request.hostMachineID) offline for \(now - since): instance \(failover.oldPrimary)'s "
                          + "lease has run out, so it cannot write", now: now)
        }
        return relocate(failover, why: "machine \(request.hostMachineID) offline for \(now - since)", now: now)
    }

    private mutating func relocate(_ failover: Failover, why: String, now: Instant) -> [EngineAction] {
        var failover = failover
        failover.reason = .relocation
        failover.triedOffers = []
        failover.replacementsCreated = 0
        failover.waitingSince = nil
        failover.offlineSince = nil
        failover.stopConfirmed = "\(why); its lease ran out"
        let lostHost = request.hostMachineID
        lostHosts = (lostHosts ?? []) + [lostHost]
        epoch = epoch.next
        var actions = [
            record(.fenced, now: now, detail: "\(why): instance \(failover.oldPrimary)'s lease has run out, so it cannot write"),
            record(.epochIncreased, now: now, detail: "epoch \(epoch.rawValue - 1) -> \(epoch)"),
            record(.relocating, now: now, detail: "host \(lostHost) is lost, volume \(volume.map(String.init) ?? "none") with it: "
                   + "the newest snapshot goes onto a new volume on another host"),
        ]
        // The standby is on the lost machine too.
        actions += dropStandby(reason: "on lost host \(lostHost)", now: now)
        return actions + enter(.failover(failover, .findHost), deadline: now + settings.commandTimeout, now: now)
    }

    /// A degraded pool running on its CPU VM saw free GPUs: move back, planned, to the first host
    /// that is not lost (the search ranks them).
    private mutating func failBack(seeing offers: [GPUOffer], now: Instant) -> [EngineAction] {
        let lost = Set(lostHosts ?? [])
        guard let cpu = cpuPrimary, let primary, let offer = offers.first(where: { !lost.contains($0.machineID) }) else {
            return retryDegradedLater(now: now)
        }
        failoversStarted += 1
        let failover = Failover(number: failoversStarted, reason: .failback, oldPrimary: primary, startedAt: now,
                                leaseExpiredBy: leaseExpiry(revokedAt: now))
        run = TimelineRun(failover: failover.number, startedAt: now, lastAt: now)
        let actions: [EngineAction] = [
            .revokeLease(primary),
            record(.failingBack, now: now, detail: "a free GPU (\(offer.gpuName), host \(offer.machineID)): CPU VM \(cpu.name)'s lease is revoked, "
                   + "so its workload is checkpointed and frozen; then a final snapshot, and onto a new volume on a GPU host"),
        ]
        return actions + enter(.failover(failover, .awaitLeaseExpiry), deadline: nil, now: now)
    }

    /// The final snapshot could not be taken: the CPU primary, untouched but for its lease, is
    /// given its lease back (nothing else wrote: same epoch) and the pool tries again later.
    private mutating func failBackAbandoned(_ failover: Failover, reason: String, now: Instant) -> [EngineAction] {
        var actions: [EngineAction] = [.grantLease(failover.oldPrimary, epoch: epoch)]
        let abandoned = (failBacksAbandoned ?? 0) + 1
        failBacksAbandoned = abandoned
        let wait = settings.degradedRetryInterval * (1 << min(abandoned, 4))
        actions.append(record(.degraded, now: now, detail: "failback \(failover.number) abandoned: \(reason); instance \(failover.oldPrimary) keeps "
                              + "running; the next try in \(wait)"))
        run = nil
        let cpu = cpuPrimary?.name ?? "?"
        actions += becomeDegraded("the primary is CPU VM \(cpu): the workload runs at CPU speed, unprotected, until the pool "
                                  + "moves back to a free GPU (the last try: \(reason))", now: now, recordStep: false)
        nextRetryAt = now + wait
        return actions + wake(at: now + wait)
    }

    private func leaseExpiry(revokedAt: Instant) -> Instant {
        max(revokedAt + settings.leaseDuration, earlierLeasesEndBy ?? revokedAt) + settings.leaseSafetyMargin
    }

    /// The provider's word that the old primary stopped: fenced once its lease has run out too.
    private mutating func stopConfirmed(_ failover: Failover, _ confirmation: String, now: Instant) -> [EngineAction] {
        var failover = failover
        failover.stopConfirmed = confirmation
        guard now >= failover.leaseExpiredBy else {
            let wait = failover.leaseExpiredBy - now
            return [record(.fencing, now: now, detail: "\(confirmation); waiting \(wait) more for its lease to run out")]
                + enter(.failover(failover, .awaitLeaseExpiry), deadline: nil, now: now)
        }
        return fenced(failover, how: "\(confirmation); its lease had run out (the lease ended first)", now: now)
    }

    /// The old primary cannot write any more: a new epoch, then bring up the standby.
    private mutating func fenced(_ failover: Failover, how: String, now: Instant) -> [EngineAction] {
        var failover = failover
        epoch = epoch.next
        var actions = [
            record(.fenced, now: now, detail: how),
            record(.epochIncreased, now: now, detail: "epoch \(epoch.rawValue - 1) -> \(epoch)"),
        ]
        if volumeStale == true, !failover.reason.movesVolume {
            // The primary that failed was the CPU VM: the volume holds the data as of the failover
            // to it, so only its newest snapshot can bring the pool back.
            failover.reason = .relocation
            actions += dropStandby(reason: "linked to volume \(volume.map(String.init) ?? "none"), which is older than the CPU VM's data", now: now)
            actions.append(record(.relocating, now: now, detail: "the CPU primary failed and volume \(volume.map(String.init) ?? "none") is stale: "
                                  + "the newest snapshot goes onto a new volume on a GPU host"))
            return actions + enter(.failover(failover, .findHost), deadline: now + settings.commandTimeout, now: now)
        }
        if failover.reason == .restoreRequested || failover.reason == .failback {
            // The standby is linked to the volume being replaced: it goes, and a new one follows.
            actions += dropStandby(reason: "linked to volume \(volume.map(String.init) ?? "none"), which the restore replaces", now: now)
            actions.append(record(.relocating, now: now, detail: "snapshot \(failover.snapshot ?? "(the newest)") onto a new volume; "
                                  + "volume \(volume.map(String.init) ?? "none") is kept until cleanup"))
            return actions + enter(.failover(failover, .findHost), deadline: now + settings.commandTimeout, now: now)
        }
        if let standby {
            actions += announceStandbyStarting(&failover, detail: "instance \(standby)", now: now)
            return actions + enter(.failover(failover, .startStandby(standby)), deadline: now + settings.standbyStartTimeout, now: now)
        }
        if let cpu = cpuStandby {
            // Its copy is as fresh as the last sync pass; the old primary's agent stopped
            // syncing when its lease ran out, so the copy no longer changes under us.
            actions += announceStandbyStarting(&failover, detail: "CPU VM \(cpu.name)", now: now)
            return actions + enter(.failover(failover, .startStandby(cpu.agent)), deadline: now + settings.standbyStartTimeout, now: now)
        }
        if let unfinished = failover.unfinishedStandby {
            failover.unfinishedStandby = nil
            return actions + createReplacement(failover, unfinished, now: now)
        }
        return actions + enter(.failover(failover, .findReplacement), deadline: now + settings.commandTimeout, now: now)
    }

    private mutating func createReplacement(_ failover: Failover, _ create: InstanceRequest, now: Instant) -> [EngineAction] {
        var failover = failover
        failover.triedOffers.append(create.offer.id)
        failover.replacementsCreated += 1
        return enter(.failover(failover, .createReplacement(create)), deadline: now + settings.createTimeout, now: now)
    }

    private mutating func announceStandbyStarting(_ failover: inout Failover, detail: String, now: Instant) -> [EngineAction] {
        var actions = [record(.standbyStarting, now: now, detail: detail)]
        if !failover.announcedStandbyStarting {
            failover.announcedStandbyStarting = true
            actions.append(notify(.standbyStarting, now: now, message: "pool \(poolID): starting standby, \(detail)"))
        }
        return actions
    }

    private mutating func promote(
        _ failover: Failover, candidate: InstanceID, ssh: SSHEndpoint?, now: Instant
    ) -> [EngineAction] {
        primary = candidate
        primarySSH = ssh
        clearStandby()
        if let cpu = cpuStandby, cpu.agent == candidate {
            cpuPrimary = cpu
            cpuStandby = nil
            cpuStandbySSH = nil
            volumeStale = true
        } else if cpuPrimary != nil {
            cpuPrimary = nil  // a GPU instance took over from the CPU VM
            failBacksAbandoned = nil
        }
        failoverCount += 1
        lastFailoverAt = now
        let took = now - failover.startedAt
        lastRecoveryDuration = took
        var actions = retire(failover.oldPrimary)
        actions.append(.grantLease(candidate, epoch: epoch))
        actions.append(record(.promoted, now: now, detail: "instance \(candidate) is primary at epoch \(epoch)"))
        actions.append(notify(.failoverComplete, now: now,
                              message: "pool \(poolID): instance \(candidate) is primary after \(took)"))
        if let cpu = cpuPrimary {
            return actions + becomeDegraded("the primary is CPU VM \(cpu.name): the workload runs at CPU speed, unprotected, "
                                            + "until the pool moves back to a free GPU", now: now)
        }
        return actions + beginRecovering(now: now)
    }

    /// The standby did not come up: destroy it, try a replacement on the next free GPU.
    private mutating func giveWay(_ failover: Failover, reason: String, now: Instant) -> [EngineAction] {
        var failover = failover
        failover.waitingSince = nil
        var actions = dropStandby(reason: reason, now: now)
        if let cpu = cpuStandby, case .failover(_, let step) = state, step.candidate == cpu.agent {
            // Kept on the books (the cleanup deletes it): it holds the last synced copy.
            actions.append(record(.standbyAbandoned, now: now, detail: "CPU VM \(cpu.name): \(reason)"))
            cpuStandby = nil
            cpuStandbySSH = nil
        }
        guard failover.replacementsCreated < settings.replacementLimit else {
            return actions + failoverFailed(failover, degraded: false,
                                            reason: "\(failover.replacementsCreated) replacement(s) failed; last: \(reason)", now: now)
        }
        actions += enter(.failover(failover, .findReplacement), deadline: now + settings.commandTimeout, now: now)
        return actions
    }

    /// No instance could take over. The old primary is fenced either way, so it goes too.
    private mutating func failoverFailed(_ failover: Failover, degraded: Bool, reason: String, now: Instant) -> [EngineAction] {
        var actions = retire(failover.oldPrimary)
        lastPrimary = failover.oldPrimary
        primary = nil
        primarySSH = nil
        if cpuPrimary?.agent == failover.oldPrimary { cpuPrimary = nil }
        actions.append(record(degraded ? .degraded : .failed, now: now, detail: reason))
        actions.append(notify(.failoverFailed, now: now, message: "pool \(poolID): failover \(failover.number) failed: \(reason)"))
        run = nil
        if degraded { return actions + becomeDegraded(reason, now: now, recordStep: false) }
        return actions + enter(.error(message: "failover \(failover.number) failed: \(reason)"), deadline: nil, now: now)
    }

    /// The marker written at provisioning is gone from the volume: whatever is on it cannot be
    /// vouched for, and every instance of the host mounts the same volume, so no replacement
    /// helps. Nothing is promoted and nothing destroyed (the old primary stays fenced, the
    /// standby stays as it is): people look, then clean up.
    private mutating func volumeUnproven(_ failover: Failover, reason: String, now: Instant) -> [EngineAction] {
        let message = "failover \(failover.number) stopped: \(reason); nothing was promoted or destroyed"
        var actions = [record(.failed, now: now, detail: message)]
        actions.append(notify(.failoverFailed, now: now, message: "pool \(poolID): \(message)"))
        run = nil
        return actions + enter(.error(message: message), deadline: nil, now: now)
    }

    // MARK: - Standby

    private mutating func beginRecovering(now: Instant) -> [EngineAction] {
        if request.prefersCPUStandby, settings.cpuStandby != nil {
            return [record(.standbyProvisioning, now: now, detail: "a CPU standby, as the operator chose")]
                + enter(.recovering(.cpuCreate(makeCPURequest())), deadline: now + settings.createTimeout, now: now)
        }
        return [record(.standbyProvisioning, now: now)]
            + enter(.recovering(.findOffer), deadline: now + settings.commandTimeout, now: now)
    }

    private mutating func becomeDegraded(_ reason: String, now: Instant, recordStep: Bool = true) -> [EngineAction] {
        var actions: [EngineAction] = []
        if recordStep { actions.append(record(.degraded, now: now, detail: reason)) }
        if !degradedAnnounced {
            degradedAnnounced = true
            actions.append(notify(.poolDegraded, now: now, message: "pool \(poolID) is degraded: \(reason)"))
        }
        run = nil
        return actions + enter(.degraded(reason: reason), deadline: nil, now: now)
    }

    private mutating func dropStandby(reason: String, now: Instant) -> [EngineAction] {
        var actions: [EngineAction] = []
        if let standby {
            actions += retire(standby)
            actions.append(record(.standbyAbandoned, now: now, detail: "instance \(standby): \(reason)"))
        }
        clearStandby()
        return actions
    }

    private mutating func clearStandby() {
        standby = nil
        standbySSH = nil
        standbyState = .none
    }

    // MARK: - Cleanup

    private mutating func continueCleanup(remaining: [InstanceID], now: Instant) -> [EngineAction] {
        if remaining.isEmpty, volume == nil, abandonedVolumes?.isEmpty ?? true, awaitingCreate == nil, sweepLabels?.isEmpty ?? true,
           leftoverSweep?.done ?? true, cpuVMs?.isEmpty ?? true
        {
            leftoverSweep = nil
            let actions = [record(.removed, now: now)]
            run = nil
            return actions + enter(.removed, deadline: nil, now: now)
        }
        return enter(.cleaningUp(remaining: remaining), deadline: now + settings.commandTimeout, now: now)
    }

    /// Labels of the creates the pool has started and not seen answered (`sweepLabels`).
    private var createsInFlight: [String] {
        var labels: [String] = []
        switch state {
        case .provisioning(.createPrimary(let create, _)), .provisioning(.standby(.create(let create))), .recovering(.create(let create)):
            labels.append(create.label)
        case .failover(let failover, let step):
            if case .createReplacement(let create) = step { labels.append(create.label) }
            if let unfinished = failover.unfinishedStandby { labels.append(unfinished.label) }
        default:
            break
        }
        return labels
    }

    /// A create command is in flight now (not waiting for a retry).
    private var isCreating: Bool {
        guard progress.operation != nil else { return false }
        switch state {
        case .provisioning(.createPrimary), .provisioning(.standby(.create)), .recovering(.create), .failover(_, .createReplacement): return true
        // An insert still out could land after the cleanup's delete of that name: wait for it.
        case .provisioning(.standby(.cpuCreate)), .recovering(.cpuCreate): return true
        default: return false
        }
    }

    /// The answer to a create a cleanup interrupted: what it made is destroyed with the rest.
    private mutating func awaitedCreateAnswered(_ outcome: ProviderOutcome, now: Instant) -> [EngineAction] {
        awaitingCreate = nil
        guard case .cleaningUp(var remaining) = state else { return [] }
        // A CPU VM is on the books already (deleted by name after the instances).
        if case .success(.instance(let made?)) = outcome, !remaining.contains(made.id), cpuVM(made.id) == nil { remaining.append(made.id) }
        guard progress.operation == nil, progress.wakeTimer == nil else {
            state = .cleaningUp(remaining: remaining)  // after the destroy in flight
            return []
        }
        return continueCleanup(remaining: remaining, now: now)
    }

    private var isRemoving: Bool {
        switch state {
        case .cleaningUp, .removed: true
        default: false
        }
    }

    private func requireNotRemoved() throws(EngineViolation) {
        if isRemoving { throw EngineViolation("pool \(poolID) is being removed") }
    }

    // MARK: - Failures

    /// One attempt of the in-flight command failed.
    private mutating func failedAttempt(_ message: String, retryable: Bool, now: Instant) -> [EngineAction] {
        progress.failures += 1
        progress.lastError = message
        if retryable, progress.failures < settings.retryLimit {
            return wake(at: now + settings.retryDelay)
        }
        return stepFailed(message, transient: retryable, atProvider: true, now: now)
    }

    /// The in-flight step cannot finish (deadline, retries used up, a refusal): what that leads
    /// to depends on the step.
    /// `transient`: the provider kept answering with retryable errors (5xx, 429, lost connections)
    /// until the budget ran out. `atProvider`: the provider failed the step (an error answer, or no
    /// answer by the deadline), as opposed to the host's state or someone else's action (no free
    /// GPU, an instance stopped or destroyed behind our back).
    private mutating func stepFailed(_ message: String, transient: Bool = false, atProvider: Bool = false, now: Instant) -> [EngineAction] {
        switch state {
        case .provisioning:
            // Nothing of a pool that never came up is worth keeping: what was made is destroyed
            // (a volume left behind would cost money and block the next try's name).
            provisioningFailure = "provisioning failed: \(message)"
            provisioningFailedAtProvider = atProvider
            // A create that failed may have made its instance all the same (a timeout after the
            // provider acted): its label is looked up too.
            sweepLabels = createsInFlight.isEmpty ? nil : createsInFlight
            leftoverSweep = instancesCreated > 0 ? LeftoverSweep() : nil  // nothing made, nothing to find
            var actions = [record(.failed, now: now, detail: message)]
            if let primary { actions.append(.revokeLease(primary)) }
            if let standby { actions.append(.revokeLease(standby)) }
            let doomed = [primary, standby].compactMap { $0 }
            actions.append(record(.cleanup, now: now, detail: "provisioning failed; destroying \(doomed.map(String.init)), volume \(volume.map(String.init) ?? "none")"))
            return actions + continueCleanup(remaining: doomed, now: now)

        case .recovering:
            // The primary is fine; only the standby is missing.
            var actions: [EngineAction] = []
            if standbyState != .stopped, let standby {
                actions += retire(standby)
                clearStandby()
            }
            if case .recovering(let step) = state, let vm = step.cpuVM ?? (step.isCPU ? cpuStandby : nil) {
                actions += retire(vm.agent)
                cpuStandby = nil
                cpuStandbySSH = nil
            }
            actions += becomeDegraded(message, now: now)
            // A provider that failed a few attempts in a row is having a bad minute, not running
            // out of GPUs: waiting the degraded interval (5 min) would leave the pool without a
            // standby that long (the provider-faults drill saw it at 30 % failed calls). Ten
            // retry delays instead; each further failure comes back here.
            if transient { actions += wake(at: now + settings.retryDelay * 10) }
            return actions

        case .failover(let failover, let step):
            switch step {
            case .stopPrimary:
                // Whatever the stop answered, the provider's view decides: look (a gone instance proves it).
                let actions = [record(.fencing, now: now,
                                      detail: "stop of instance \(failover.oldPrimary) not accepted (\(message)); asking the provider for its status")]
                return actions + enter(.failover(failover, .awaitPrimaryStopped), deadline: now + settings.fenceTimeout, now: now)
            case .awaitPrimaryStopped:
                // Never promoted on the lease alone: the stop is asked again until the provider confirms it.
                let actions = [record(.fencing, now: now,
                                      detail: "waiting for the provider to confirm instance \(failover.oldPrimary) stopped (\(message)); stopping it again")]
                return actions + enter(.failover(failover, .stopPrimary), deadline: now + settings.fenceTimeout, now: now)
            case .awaitLeaseExpiry:
                return []  // waits for its timer only; nothing in it can fail
            case .startStandby, .awaitStandbyRunning, .createReplacement, .verify, .restore:
                return giveWay(failover, reason: message, now: now)
            case .finalSnapshot:
                return failBackAbandoned(failover, reason: message, now: now)
            case .findReplacement:
                return failoverFailed(failover, degraded: false, reason: message, now: now)
            case .findHost, .createVolume:
                // Retried every degraded interval (`retryDegraded`): the host stays lost.
                return failoverFailed(failover, degraded: true, reason: "moving off lost host: \(message)", now: now)
            }

        case .cleaningUp(let remaining):
            // Keep what is left on the books, so that the next cleanup (or resume) destroys it.
            for instance in remaining where instance != primary && instance != standby {
                retiring.append(Retirement(instance: instance, operation: nil))
            }
            let actions = [record(.failed, now: now, detail: message)]
            run = nil
            return actions + enter(.error(message: "cleanup failed: \(message)"), deadline: nil, now: now)

        case .degraded where primary == nil && enabled:
            // The rebuild's search failed: the next try comes at the usual interval.
            return retryDegradedLater(now: now)

        case .active, .degraded, .error, .removed:
            return []
        }
    }

    // MARK: - Steps and timers

    /// Moves to `state`, cancelling the old step's timers, arming `deadline`, and sending the new
    /// step's command.
    private mutating func enter(_ state: State, deadline: Instant?, now: Instant) -> [EngineAction] {
        var actions: [EngineAction] = []
        if let timer = progress.deadlineTimer { actions.append(.cancelTimer(timer)) }
        if let timer = progress.wakeTimer { actions.append(.cancelTimer(timer)) }
        if case .degraded = state {} else { standbyAtRisk = false }
        self.state = state
        progress = Progress(deadline: deadline)
        nextRetryAt = nil
        if let deadline {
            let timer = newTimer()
            progress.deadlineTimer = timer
            actions.append(.scheduleTimer(timer, at: deadline))
        }
        return actions + issue(now: now)
    }

    /// Sends the current step's command under a fresh operation id, or arms its wait.
    private mutating func issue(now: Instant) -> [EngineAction] {
        switch state {
        case .failover(let failover, .awaitLeaseExpiry):
            return wake(at: max(now, failover.leaseExpiredBy))
        case .degraded where !standbyAtRisk && (primary != nil || (enabled && lastPrimary != nil && volume != nil)):
            return retryDegradedLater(now: now)
        default:
            break
        }
        let operation = newOperation()
        guard let command = command(operation) else { return [] }
        progress.operation = operation
        return [command]
    }

    private func command(_ operation: OperationID) -> EngineAction? {
        let host = request.hostMachineID
        switch state {
        case .provisioning(.findOffers):
            return .findFreeOffers(operation, hostMachineID: host, gpuNames: request.gpuNames)
        case .provisioning(.ensureVolume):
            return .ensureVolume(operation, name: "\(request.namePrefix)-volume", hostMachineID: host, sizeGB: request.volumeGB)
        case .provisioning(.createPrimary(let create, _)):
            return .ensureInstance(operation, create)
        case .provisioning(.awaitPrimaryRunning(let id, _)):
            return .pollInstance(operation, id)
        case .provisioning(.markVolume(let id, let ssh, _)):
            return volume.map { .verify(operation, instance: id, ssh: ssh, volume: $0, marker: .establish) }
        case .provisioning(.standby(let step)), .recovering(let step):
            switch step {
            case .findOffer: return .findFreeOffers(operation, hostMachineID: host, gpuNames: request.gpuNames)
            case .create(let create): return .ensureInstance(operation, create)
            case .awaitExists(let id), .awaitStopped(let id): return .pollInstance(operation, id)
            case .stop(let id): return .stopInstance(operation, id)
            case .cpuCreate(let create): return .ensureCPUInstance(operation, create)
            case .cpuAwaitRunning(let create): return .pollCPUInstance(operation, name: create.name, agent: create.agent)
            case .cpuSync(let target):
                return primary.map { .configureSync(operation, primary: $0, ssh: primarySSH, target: target) }
            }
        case .failover(let failover, let step):
            switch step {
            case .stopPrimary: return stopCommand(operation, failover.oldPrimary)
            case .awaitPrimaryStopped: return pollCommand(operation, failover.oldPrimary)
            case .awaitLeaseExpiry: return nil
            case .startStandby(let id):
                if let vm = cpuVM(id) { return .startCPUInstance(operation, name: vm.name) }
                return .startInstance(operation, id)
            case .awaitStandbyRunning(let id): return pollCommand(operation, id)
            case .findReplacement: return .findFreeOffers(operation, hostMachineID: host, gpuNames: request.gpuNames)
            case .createReplacement(let create): return .ensureInstance(operation, create)
            case .verify(let id, let ssh, let volume, let marker):
                if let vm = cpuVM(id) { return .verifyCPUCopy(operation, instance: id, ssh: ssh, name: vm.name, syncedFrom: failover.oldPrimary) }
                return .verify(operation, instance: id, ssh: ssh, volume: volume, marker: marker)
            case .findHost:
                return .findFreeOffersAnywhere(operation, gpuNames: request.gpuNames, excludingHosts: lostHosts ?? [])
            case .createVolume(let host, _):
                return .ensureVolume(operation, name: "\(request.namePrefix)-volume-r\(relocations ?? 1)", hostMachineID: host,
                                     sizeGB: request.volumeGB)
            case .restore(let id, let ssh):
                return .restoreSnapshot(operation, instance: id, ssh: ssh, snapshot: failover.snapshot)
            case .finalSnapshot(let id, let ssh):
                return .takeSnapshot(operation, instance: id, ssh: ssh)
            }
        case .cleaningUp(let remaining):
            if let instance = remaining.first { return .destroyInstance(operation, instance) }
            if awaitingCreate != nil { return nil }  // its answer comes first
            if let label = sweepLabels?.first { return .findInstance(operation, label: label) }
            if let sweep = leftoverSweep, !sweep.done {
                return .findLeftover(operation, labelPrefixes: InstanceRequest.Role.allCases.map { "\(request.namePrefix)-\($0.rawValue)-" },
                                     excluding: sweep.found)
            }
            if let vm = cpuVMs?.first { return .deleteCPUInstance(operation, name: vm.name) }
            return (volume ?? abandonedVolumes?.first).map { .deleteVolume(operation, $0) }
        case .active, .degraded, .error, .removed:
            return nil
        }
    }

    private mutating func retryDegradedLater(now: Instant) -> [EngineAction] {
        nextRetryAt = now + settings.degradedRetryInterval
        return wake(at: now + settings.degradedRetryInterval)
    }

    /// Waits (a poll interval, a retry delay, a lease) with no command in flight.
    private mutating func wake(at instant: Instant) -> [EngineAction] {
        var actions: [EngineAction] = []
        if let timer = progress.wakeTimer { actions.append(.cancelTimer(timer)) }
        let timer = newTimer()
        progress.operation = nil
        progress.wakeTimer = timer
        actions.append(.scheduleTimer(timer, at: instant))
        return actions
    }

    private mutating func retire(_ instance: InstanceID) -> [EngineAction] {
        guard !retiring.contains(where: { $0.instance == instance }) else { return [] }
        let operation = newOperation()
        retiring.append(Retirement(instance: instance, operation: operation))
        return [destroyCommand(operation, instance)]
    }

    // A CPU VM is reached through the other cloud, by name; the engine's steps are the same.

    private func destroyCommand(_ operation: OperationID, _ instance: InstanceID) -> EngineAction {
        cpuVM(instance).map { .deleteCPUInstance(operation, name: $0.name) } ?? .destroyInstance(operation, instance)
    }

    private func stopCommand(_ operation: OperationID, _ instance: InstanceID) -> EngineAction {
        cpuVM(instance).map { .stopCPUInstance(operation, name: $0.name) } ?? .stopInstance(operation, instance)
    }

    private func pollCommand(_ operation: OperationID, _ instance: InstanceID) -> EngineAction {
        cpuVM(instance).map { .pollCPUInstance(operation, name: $0.name, agent: instance) } ?? .pollInstance(operation, instance)
    }

    private mutating func makeRequest(_ role: InstanceRequest.Role, offer: GPUOffer, volume: VolumeID) -> InstanceRequest {
        instancesCreated += 1
        return InstanceRequest(
            label: "\(request.namePrefix)-\(role.rawValue)-e\(epoch)-a\(instancesCreated)", offer: offer, role: role,
            volume: volume, image: request.image, diskGB: request.diskGB, bidPricePerHour: request.bidPricePerHour)
    }

    private mutating func newOperation() -> OperationID {
        defer { nextID += 1 }
        return OperationID(rawValue: nextID)
    }

    private mutating func newTimer() -> TimerID {
        defer { nextID += 1 }
        return TimerID(rawValue: nextID)
    }

    // MARK: - Records

    private mutating func record(_ step: TimelineEntry.Step, now: Instant, detail: String? = nil) -> EngineAction {
        let current = run ?? TimelineRun(failover: nil, startedAt: now, lastAt: now)
        run = TimelineRun(failover: current.failover, startedAt: current.startedAt, lastAt: now)
        return .timeline(TimelineEntry(
            pool: poolID, failover: current.failover, step: step, at: now, sincePrevious: now - current.lastAt,
            sinceDetection: current.failover.map { _ in now - current.startedAt }, detail: detail))
    }

    private mutating func notify(_ kind: EngineNotification.Kind, now: Instant, message: String) -> EngineAction {
        let failover = run?.failover
        let number: Int
        switch kind {
        case .standbyProvisioned:
            standbysProvisioned += 1
            number = standbysProvisioned
        case .poolDegraded:
            degradations += 1
            number = degradations
        case .failureDetected, .standbyStarting, .failoverComplete, .failoverFailed:
            number = failover ?? 0
        }
        return .notify(EngineNotification(
            id: "\(request.namePrefix)-\(kind.rawValue)-\(number)", kind: kind, pool: poolID, failover: failover, at: now,
            message: message))
    }
}
