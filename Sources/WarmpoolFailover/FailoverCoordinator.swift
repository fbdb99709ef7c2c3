import Foundation
import Logging
import ServiceLifecycle
import WarmpoolEngine
import WarmpoolLiveness
import WarmpoolModel
import WarmpoolProvider
import WarmpoolSSH
import WarmpoolStore

/// The shell around the pure failover engine: one `PoolMachine` per pool, fed by liveness events,
/// provider answers, SSH verdicts and timers. Each transition is turned into one store transaction
/// (`TransitionRecorder`), committed, and only then are its side effects carried out
/// (`EffectRunner`).
///
/// Order matters twice. Transitions are committed in the order they were made (one serial work
/// queue), and a transition's actions run only after its commit: a controller killed at any point
/// restarts from a state whose side effects have either not started or are safe to repeat.
///
/// The operators' requests (`FailoverCoordinator+Operations.swift`) and the watchers that feed it
/// events (`FailoverCoordinator+Watchers.swift`) live beside this file.
public actor FailoverCoordinator: Service {
    public struct Configuration: Sendable {
        public var engine: EngineSettings
        /// After a restart, a primary whose agent has not reconnected by then is failed over.
        /// Healthy agents reconnect within their backoff (500 ms at most), so this never fails one.
        public var restartGrace: Duration
        /// How long one SSH verification keeps polling a booting instance before it reports
        /// "not ready" to the engine.
        public var verificationWindow: Duration
        public var volumePath: String
        /// How often each active pool's stopped standby is looked up at the provider: a standby
        /// destroyed or reclaimed behind our back is replaced before it is needed. Its agent is
        /// silent by design, so only the provider can tell.
        public var standbyCheckInterval: Duration
        /// When many primaries fail at once (`MassFailureBreaker`).
        public var breaker = MassFailureBreaker.Settings()
        /// Run on a pool's new primary over SSH when its host is lost (`EngineSettings.hostLossTimeout`).
        public var restoreCommand = SnapshotRestore.defaultRestoreCommand
        /// Run on a pool's primary over SSH for a snapshot now (the agent's own command, usually).
        public var snapshotCommand = SnapshotRestore.defaultSnapshotCommand
        /// The snapshot store's settings for that command (`WARMPOOL_S3_*`, `WARMPOOL_SNAPSHOT_KEY_FILE`).
        public var restoreEnvironment: [String: String] = [:]
        /// The CPU standby: where the primaries' agents read their sync target (their
        /// `--sync-target-file`), where the pools' sync keys are kept, and the controller's public
        /// key (installed on every CPU VM, beside the pool's sync key).
        public var syncTargetFile = "/data/.warmpool/sync-target.json"
        public var syncKeyDirectory = "/var/lib/warmpool/sync-keys"
        public var sshPublicKey: String?
        /// Where the CPU VMs' agents reach this controller (nil: where the marketplace's do); the
        /// other cloud may see the control plane at another address.
        public var cpuAgentControllers: String?
        /// The most lag the primary's sync to its CPU standby may have before `SyncBehind`.
        public var syncLagBoundSeconds: Double = 60

        public init(
            engine: EngineSettings = EngineSettings(), restartGrace: Duration = .seconds(10),
            verificationWindow: Duration = .seconds(15), volumePath: String = "/data", standbyCheckInterval: Duration = .seconds(30)
        ) {
            self.engine = engine
            self.restartGrace = restartGrace
            self.verificationWindow = verificationWindow
            self.volumePath = volumePath
            self.standbyCheckInterval = standbyCheckInterval
        }
    }

    /// One pool as the coordinator holds it: what is recorded of it, and its engine (nil for a
    /// machine that has settings but no pool yet).
    struct ManagedPool {
        var ledger: PoolLedger
        var machine: PoolMachine?
    }

    /// A transition to commit, then carry out.
    struct Work: Sendable {
        /// Counts the transitions installed, so a waiter knows which commits come after its request.
        var sequence: UInt64
        var poolID: PoolID
        var transition: PoolTransition
        var actions: [EngineAction]
        /// The engine's snapshot after the transition; nil for a change of the row alone.
        var snapshot: PoolSnapshot?
    }

    /// An operator's request waiting for its pool to reach a state. Resumed once a transition
    /// installed at or after `from` that gets it there is committed (with the snapshot then): the
    /// answer never runs ahead of the store. Resumed with nil by the pool's removal or shutdown, and
    /// with the state reached so far by its timeout.
    struct Waiter {
        var from: UInt64
        var isDone: @Sendable (PoolSnapshot) -> Bool
        var continuation: CheckedContinuation<PoolSnapshot?, Never>
    }

    let configuration: Configuration
    let store: any WarmpoolStore
    let effects: ProviderEffects
    let verification: VolumeVerification
    let restorer: SnapshotRestore
    let cpu: CPUStandbyEffects
    let hub: LivenessHub?
    let liveness: AsyncStream<[LivenessEvent]>?
    let logger: Logger
    let clock: any WallClock
    let runner = EffectRunner()
    private let onFailoverFinished: @Sendable (_ result: String, _ seconds: Double) -> Void
    /// Metrics: whether the breaker is tripped, how many failures it holds, and whether this is a new trip.
    let onBreakerChange: @Sendable (_ tripped: Bool, _ held: Int, _ newTrip: Bool) -> Void
    var breaker: MassFailureBreaker
    private let workQueue: AsyncStream<Work>
    private let workContinuation: AsyncStream<Work>.Continuation

    var pools: [PoolID: ManagedPool] = [:]
    /// The operator's operation running on each pool (`FailoverCoordinator+Operations.swift`).
    var operationsInFlight: [PoolID: String] = [:]
    /// Hosts with a provisioning in flight, and for which pool.
    var provisioningHosts: [HostMachineID: PoolID] = [:]
    /// Pools whose last transition could not be committed yet, and why: shown as a condition
    /// until a retry gets it in.
    var uncommitted: [PoolID: String] = [:]
    /// When the provider's instances were last listed, and the error if that failed.
    var lastProviderCheck: (at: Instant, error: String?)?
    /// Each pool's standby as that listing showed it: its id and status (nil: not listed).
    var standbySeen: [PoolID: (instance: InstanceID, status: String?)] = [:]
    /// Free GPUs offered on each pool host at the last look (`checkStandbyGPUs`).
    var gpuSeen: [HostMachineID: (free: Int, at: Instant)] = [:]
    /// Pools whose standby was at risk at the last look, so each change is announced once.
    var standbyAtRisk: [PoolID: Bool] = [:]
    /// Maintenance and downtime the provider announced per host, from its notifications.
    var hostNotices: [HostMachineID: String] = [:]
    /// Provider notifications already acted on (their event ids), oldest first, bounded.
    var providerEventsSeen: [String] = []
    /// Until then, primaries that have not reconnected since the start are not yet failed over.
    var graceEndsAt: Instant?
    /// Each pool's conditions' last status and when it last changed.
    var conditionSince: [PoolID: [String: (status: Bool, since: Instant)]] = [:]
    private var waiters: [PoolID: [UInt64: Waiter]] = [:]
    private var nextWaiter: UInt64 = 0
    private var installed: UInt64 = 0
    private var loaded = false

    public init(
        configuration: Configuration, store: any WarmpoolStore, provider: any ProviderClient, verifier: SSHVerifier,
        launch: AgentLaunch, hub: LivenessHub?, logger: Logger, clock: any WallClock = SteadyWallClock(),
        cpuCloud: (any CPUProviderClient)? = nil,
        onFailoverFinished: @escaping @Sendable (_ result: String, _ seconds: Double) -> Void = { _, _ in },
        onBreakerChange: @escaping @Sendable (_ tripped: Bool, _ held: Int, _ newTrip: Bool) -> Void = { _, _, _ in }
    ) {
        self.configuration = configuration
        self.store = store
        self.effects = ProviderEffects(provider: provider, store: store, launch: launch, logger: logger)
        self.verification = VolumeVerification(
            verifier: verifier, volumePath: configuration.volumePath, attemptWindow: configuration.verificationWindow, clock: clock)
        self.restorer = SnapshotRestore(
            verifier: verifier, restoreCommand: configuration.restoreCommand, snapshotCommand: configuration.snapshotCommand,
            environment: configuration.restoreEnvironment,
            volumePath: configuration.volumePath, timeout: configuration.engine.restoreTimeout)
        self.cpu = CPUStandbyEffects(
            cloud: cpuCloud, store: store, launch: launch, verifier: verifier, restorer: restorer,
            syncKeys: SyncKeys(directory: configuration.syncKeyDirectory), controllerPublicKey: configuration.sshPublicKey,
            controllers: configuration.cpuAgentControllers ?? launch.controllers,
            syncTargetFile: configuration.syncTargetFile, volumePath: configuration.volumePath,
            timeout: configuration.verificationWindow, lastSyncedPass: { [hub] instance in hub?.syncReport(for: instance)?.manifest?.pass },
            clock: clock, logger: logger)
        self.hub = hub
        // Subscribed now, not in run(): no failure may slip between construction and start.
        self.liveness = hub?.bus.subscribe()
        self.logger = logger
        self.clock = clock
        self.onFailoverFinished = onFailoverFinished
        self.onBreakerChange = onBreakerChange
        self.breaker = MassFailureBreaker(settings: configuration.breaker)
        (workQueue, workContinuation) = AsyncStream.makeStream(of: Work.self, bufferingPolicy: .unbounded)
    }

    // MARK: - Service

    public func run() async throws {
        graceEndsAt = clock.now() + configuration.restartGrace
        try await load()
        await withTaskGroup(of: Void.self) { group in
            group.addTask { await self.drainWork() }
            if let liveness {
                group.addTask {
                    for await batch in liveness.cancelOnGracefulShutdown() {
                        for event in batch { await self.livenessEvent(event) }
                    }
                }
            }
            group.addTask { await self.checkPrimariesAfterGrace() }
            group.addTask { await self.watchInstances() }
            group.addTask {
                // Conditions' transition times are kept to the second, asked for or not.
                while !Task.isCancelled {
                    try? await Task.sleep(for: .seconds(1))
                    _ = await self.protections()
                }
            }
            try? await gracefulShutdown()
            workContinuation.finish()
            group.cancelAll()
        }
        runner.shutdown()
        for poolID in waiters.keys { wakeWaiters(poolID, after: .max, snapshot: nil) }
    }

    /// Loads every pool and resumes each engine where it stopped.
    func load() async throws {
        guard !loaded else { return }
        loaded = true
        let decoder = JSONDecoder()
        for record in try await store.pools() {
            var pool = ManagedPool(ledger: PoolLedger(record: record))
            if let data = record.engineState {
                do {
                    pool.machine = try decoder.decode(PoolMachine.self, from: data)
                } catch {
                    // Never guess at a pool's state: it stays as stored, visible, until an operator acts.
                    logger.critical("cannot read a pool's engine state; the pool is left alone", metadata: [
                        "pool": "\(record.poolID)", "error": "\(error)",
                    ])
                }
            }
            // The latest failover, finished or not: its recovery steps (a new standby) come after
            // the promotion that finished it, and must go on its timeline, after the steps written.
            if let latest = try await store.failovers(poolID: record.poolID, limit: 1).first {
                pool.ledger.failover = latest
                pool.ledger.stepsWritten = try await store.timeline(failoverID: latest.id).count
            }
            pools[record.poolID] = pool
        }
        for (poolID, pool) in pools.sorted(by: { $0.key < $1.key }) where pool.machine != nil {
            logger.info("resuming pool", metadata: ["pool": "\(poolID)", "state": "\(pool.ledger.record.state.rawValue)"])
            let live = configuration.engine
            apply(poolID) { machine, now in
                machine.adopt(settings: live, now: now)
                return machine.resume(now: now)
            }
        }
    }

    // MARK: - Events in

    func providerAnswered(_ poolID: PoolID, _ operation: OperationID, _ outcome: ProviderOutcome) {
        apply(poolID) { machine, now in machine.providerResult(operation, outcome, now: now) }
    }

    func restoreAnswered(_ poolID: PoolID, _ operation: OperationID, _ outcome: RestoreOutcome) {
        apply(poolID) { machine, now in machine.restoreResult(operation, outcome, now: now) }
    }

    func verificationAnswered(_ poolID: PoolID, _ operation: OperationID, _ outcome: VerificationOutcome) {
        apply(poolID) { machine, now in machine.verificationResult(operation, outcome, now: now) }
    }

    func timerFired(_ poolID: PoolID, _ timer: TimerID) {
        apply(poolID) { machine, now in machine.timerFired(timer, now: now) }
    }

    // MARK: - Transitions

    public enum OperationError: Error, CustomStringConvertible, Sendable {
        case unknownPool(PoolID)
        case refused(String)
        /// The pool could not be made; what it had made is destroyed. `atProvider`: the provider
        /// failed it (else the host's state or someone else's action did).
        case provisioningFailed(String, atProvider: Bool)

        public var description: String {
            switch self {
            case .unknownPool(let id): "no warm pool for machine \(id)"
            case .refused(let reason), .provisioningFailed(let reason, _): reason
            }
        }
    }

    /// Runs one engine event on a pool, queues its commit and its actions, and returns the actions.
    @discardableResult
    func apply(_ poolID: PoolID, _ event: (inout PoolMachine, Instant) -> [EngineAction]) -> [EngineAction] {
        // A pool gone meanwhile (cleaned up) has nothing to apply an event to.
        (try? applyThrowing(poolID, event)) ?? []
    }

    /// As `apply`, for the operators' events, which the engine may refuse in the pool's state.
    @discardableResult
    func applyThrowing(_ poolID: PoolID, _ event: (inout PoolMachine, Instant) throws -> [EngineAction]) throws -> [EngineAction] {
        guard let pool = pools[poolID], var machine = pool.machine else { throw OperationError.unknownPool(poolID) }
        let now = clock.now()
        let previous = machine.snapshot
        let actions: [EngineAction]
        do {
            actions = try event(&machine, now)
        } catch {
            throw OperationError.refused("\(error)")
        }
        install(poolID, machine: machine, actions: actions, previous: previous, now: now)
        return actions
    }

    /// Makes `machine` the pool's engine, records the transition and queues it.
    func install(_ poolID: PoolID, machine: PoolMachine, actions: [EngineAction], previous: PoolSnapshot?, now: Instant) {
        guard var pool = pools[poolID] else { return }
        pool.machine = machine
        let snapshot = machine.snapshot
        let checkpointAge = (previous?.primaryInstanceID).flatMap { hub?.recoveryPoint(instanceID: $0)?.checkpointAge(at: MonotonicClock.now()) }
        let recorded = TransitionRecorder.record(
            actions, ledger: &pool.ledger, previous: previous, snapshot: snapshot,
            engineState: try? JSONEncoder().encode(machine), checkpointAge: checkpointAge, now: now)
        for finished in recorded.finishedFailovers { onFailoverFinished(finished.result.rawValue, finished.seconds) }
        if snapshot.removed {
            pools[poolID] = nil
            runner.cancelTimers(of: poolID)
        } else {
            pools[poolID] = pool
        }
        installed += 1
        workContinuation.yield(Work(
            sequence: installed, poolID: poolID, transition: recorded.transition, actions: actions, snapshot: snapshot))
    }

    /// Queues a change of the pool's row alone (settings; a strategy switch with no engine).
    func commitRecordOnly(_ poolID: PoolID) {
        guard var pool = pools[poolID] else { return }
        let transition = TransitionRecorder.recordOnly(&pool.ledger, now: clock.now())
        pools[poolID] = pool
        installed += 1
        workContinuation.yield(Work(sequence: installed, poolID: poolID, transition: transition, actions: [], snapshot: nil))
    }

    // MARK: - Waiting for a pool

    /// Waits until a transition installed from now on (the caller's own included) that leaves the
    /// pool's snapshot satisfying `isDone` is committed, or `timeout` passes. Returns the snapshot
    /// then (a removed one when the pool is gone, whatever `isDone` says); nil when the controller
    /// is shutting down.
    func waitUntil(_ poolID: PoolID, timeout: Duration, _ isDone: @escaping @Sendable (PoolSnapshot) -> Bool) async -> PoolSnapshot? {
        guard pools[poolID]?.machine != nil else { return nil }
        let from = installed
        let id = nextWaiter
        nextWaiter += 1
        let timer = Task { [weak self] in
            try? await Task.sleep(for: timeout)
            guard !Task.isCancelled else { return }
            await self?.timeOut(poolID, waiter: id)
        }
        defer { timer.cancel() }
        return await withCheckedContinuation { continuation in
            waiters[poolID, default: [:]][id] = Waiter(from: from, isDone: isDone, continuation: continuation)
        }
    }

    private func timeOut(_ poolID: PoolID, waiter id: UInt64) {
        guard let waiter = waiters[poolID]?.removeValue(forKey: id) else { return }
        waiter.continuation.resume(returning: pools[poolID]?.machine?.snapshot)
    }

    /// After the commit of transition `sequence`. A removed snapshot or nil (the controller
    /// stops) resumes every waiter.
    private func wakeWaiters(_ poolID: PoolID, after sequence: UInt64, snapshot: PoolSnapshot?) {
        guard let pending = waiters[poolID] else { return }
        for (id, waiter) in pending where sequence >= waiter.from && (snapshot.map { $0.removed || waiter.isDone($0) } ?? true) {
            waiters[poolID]?[id] = nil
            waiter.continuation.resume(returning: snapshot)
        }
        if waiters[poolID]?.isEmpty == true { waiters[poolID] = nil }
    }

    // MARK: - Carrying out

    /// Commits each transition, then runs its actions: never a side effect before its commit.
    private func drainWork() async {
        for await work in workQueue {
            let removesPool = work.snapshot?.removed == true
            guard await commitRetrying(work, removesPool: removesPool) else { return }
            if let snapshot = work.snapshot {
                wakeWaiters(work.poolID, after: work.sequence, snapshot: snapshot)
            }
            carryOut(work.actions, poolID: work.poolID, epoch: work.snapshot?.epoch)
        }
    }

    /// Commits one transition, retrying until the store takes it (a full disk, an I/O error).
    /// The engine has already moved on in memory, so skipping the commit would carry out no
    /// action of it, its timers included: the pool would wait forever for a command never sent.
    /// Meanwhile nothing later is committed or carried out (order is what makes a restart safe)
    /// and the pool reports why. False only when the controller stops first.
    private func commitRetrying(_ work: Work, removesPool: Bool) async -> Bool {
        var delay = Duration.milliseconds(100)
        while true {
            do {
                try await store.commit(work.transition)
                if removesPool { try await store.deletePool(id: work.poolID) }
                if uncommitted.removeValue(forKey: work.poolID) != nil {
                    logger.notice("pool transition committed after retries", metadata: ["pool": "\(work.poolID)"])
                }
                return true
            } catch {
                if uncommitted[work.poolID] == nil {
                    logger.critical("cannot commit a pool transition; retrying, nothing is carried out until it is in", metadata: [
                        "pool": "\(work.poolID)", "error": "\(error)",
                    ])
                }
                uncommitted[work.poolID] = "\(error)"
                guard (try? await Task.sleep(for: delay)) != nil else { return false }
                delay = min(delay * 2, .seconds(5))
            }
        }
    }

    /// True while the instance's agent is heard (alive, or suspected but not yet failed).
    func isHeartbeating(_ instance: InstanceID) -> Bool {
        Self.agent(hub?.agentSnapshots().filter { $0.identity.instanceID == instance } ?? [])?.heartbeating ?? false
    }

    /// `epoch`: the pool's after the transition, which a verification writes on the volume.
    private func carryOut(_ actions: [EngineAction], poolID: PoolID, epoch: Epoch?) {
        for action in actions {
            switch action {
            case .revokeLease(let instance):
                hub?.revokeLease(instanceID: instance)
            case .grantLease(let instance, let epoch):
                hub?.grantLease(instanceID: instance, epoch: epoch)
            case .scheduleTimer(let timer, let at):
                runner.schedule(.timer(poolID, timer), after: at - clock.now()) { await self.timerFired(poolID, timer) }
            case .cancelTimer(let timer):
                runner.cancel(.timer(poolID, timer))
            case .notify, .timeline:
                break  // committed with the transition; the notifier delivers the outbox
            case .verify(let operation, let instance, let ssh, let volume, let marker):
                let epoch = epoch ?? 1
                runner.run { [verification] in
                    await verification.verdict(instance: instance, ssh: ssh, volume: volume, marker: marker, epoch: epoch)
                } deliver: { verdict in
                    if let mismatch = verdict.hostKeyMismatch {
                        await self.record("host_key_mismatch", "instance \(instance) refused: \(mismatch)", pools: [poolID])
                    }
                    await self.verificationAnswered(poolID, operation, verdict.outcome)
                }
            case .ensureCPUInstance(let operation, _), .startCPUInstance(let operation, _), .stopCPUInstance(let operation, _),
                .pollCPUInstance(let operation, _, _), .deleteCPUInstance(let operation, _):
                runner.run { [cpu] in
                    await cpu.run(action, poolID: poolID)
                } deliver: { outcome in
                    await self.providerAnswered(poolID, operation, outcome)
                }
            case .configureSync(let operation, let primary, let ssh, let target):
                runner.run { [cpu] in
                    await cpu.configureSync(primary: primary, ssh: ssh, target: target, poolID: poolID)
                } deliver: { outcome in
                    await self.verificationAnswered(poolID, operation, outcome)
                }
            case .verifyCPUCopy(let operation, let instance, let ssh, let name, let syncedFrom):
                let epoch = epoch ?? 1
                runner.run { [cpu] in
                    await cpu.verifyCopy(instance: instance, ssh: ssh, name: name, syncedFrom: syncedFrom, epoch: epoch)
                } deliver: { outcome in
                    await self.verificationAnswered(poolID, operation, outcome)
                }
            case .takeSnapshot(let operation, let instance, let ssh):
                runner.run { [cpu] in
                    await cpu.takeSnapshot(instance: instance, ssh: ssh, poolID: poolID)
                } deliver: { outcome in
                    await self.restoreAnswered(poolID, operation, outcome)
                }
            case .restoreSnapshot(let operation, let instance, let ssh, let snapshot):
                runner.run { [restorer] in
                    await restorer.restore(poolID: poolID, instance: instance, ssh: ssh, snapshot: snapshot)
                } deliver: { outcome in
                    await self.restoreAnswered(poolID, operation, outcome)
                }
            case .findFreeOffers(let operation, _, _), .findFreeOffersAnywhere(let operation, _, _), .ensureVolume(let operation, _, _, _), .ensureInstance(let operation, _),
                .startInstance(let operation, _), .stopInstance(let operation, _), .pollInstance(let operation, _),
                .destroyInstance(let operation, _), .deleteVolume(let operation, _), .findInstance(let operation, _),
                .findLeftover(let operation, _, _):
                runner.run { [effects] in
                    await effects.run(action, poolID: poolID)
                } deliver: { outcome in
                    // A destroyed instance never comes back: the detector need not remember it.
                    if case .destroyInstance(_, let instance) = action, case .success = outcome { self.hub?.forget(instanceID: instance) }
                    await self.providerAnswered(poolID, operation, outcome)
                }
            }
        }
    }
}
