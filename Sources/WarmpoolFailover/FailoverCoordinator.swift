import Foundation
import Logging
import ServiceLifecycle
import WarmpoolLiveness
import WarmpoolEngine
import WarmpoolProvider
import WarmpoolSSH
import WarmpoolStore

/// The shell around the pure failover engine: one `PoolMachine` per pool, fed by liveness events,
/// provider answers, SSH verdicts and timers; every transition is committed to the store before
/// its side effects run, and the side effects are carried out here.
///
/// Order matters twice. Transitions are committed in the order they were made (one serial work
/// queue), and a transition's actions run only after its commit: a controller killed at any point
/// restarts from a state whose side effects have either not started or are safe to repeat.
public actor FailoverCoordinator: Service {
    public struct Configuration: Sendable {
        public var engine: EngineSettings
        /// After a restart, a primary whose agent has not reconnected by then is failed over.
        /// Healthy agents reconnect within their backoff (2 s at most), so this never fails one.
        public var restartGrace: Duration
        /// How long one SSH verification keeps polling a booting instance before it reports
        /// "not ready" to the engine.
        public var verificationWindow: Duration
        public var volumePath: String
        /// How often each active pool's stopped standby is looked up at the provider: a standby
        /// destroyed or reclaimed behind our back is replaced before it is needed. Its agent is
        /// silent by design, so only the provider can tell.
        public var standbyCheckInterval: Duration

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

    /// One pool as the coordinator holds it: the store's row, the engine (nil for a machine that
    /// has settings but no pool yet), and the failover being written.
    struct ManagedPool {
        var record: PoolRecord
        var machine: PoolMachine?
        var failover: FailoverRecord?
        var stepsWritten: Int = 0
    }

    /// A committed transition's work, run in order.
    struct Work: Sendable {
        var poolID: PoolID
        var transition: PoolTransition
        var actions: [EngineAction]
        var removesPool: Bool
    }

    private let configuration: Configuration
    private let store: any WarmpoolStore
    private let effects: ProviderEffects
    private let verification: VolumeVerification
    private let hub: LivenessHub?
    private let liveness: AsyncStream<LivenessEvent>?
    private let logger: Logger
    private let onFailoverFinished: @Sendable (_ result: String, _ seconds: Double) -> Void
    private let workQueue: AsyncStream<Work>
    private let workContinuation: AsyncStream<Work>.Continuation

    private var pools: [PoolID: ManagedPool] = [:]
    private var timers: [PoolID: [TimerID: Task<Void, Never>]] = [:]
    private var loaded = false

    public init(
        configuration: Configuration, store: any WarmpoolStore, provider: any ProviderClient, verifier: SSHVerifier,
        launch: AgentLaunch, hub: LivenessHub?, logger: Logger,
        agentKeysChanged: @escaping @Sendable () async -> Void = {},
        onFailoverFinished: @escaping @Sendable (_ result: String, _ seconds: Double) -> Void = { _, _ in }
    ) {
        self.configuration = configuration
        self.store = store
        self.effects = ProviderEffects(provider: provider, store: store, launch: launch, logger: logger, agentKeysChanged: agentKeysChanged)
        self.verification = VolumeVerification(verifier: verifier, volumePath: configuration.volumePath, attemptWindow: configuration.verificationWindow)
        self.hub = hub
        // Subscribed now, not in run(): no failure may slip between construction and start.
        self.liveness = hub?.eventLog.subscribe()
        self.logger = logger
        self.onFailoverFinished = onFailoverFinished
        (workQueue, workContinuation) = AsyncStream.makeStream(of: Work.self, bufferingPolicy: .unbounded)
    }

    // MARK: - Service

    public func run() async throws {
        try await load()
        await withTaskGroup(of: Void.self) { group in
            group.addTask { await self.drainWork() }
            if let liveness {
                group.addTask {
                    for await event in liveness.cancelOnGracefulShutdown() { await self.livenessEvent(event) }
                }
            }
            group.addTask { await self.checkPrimariesAfterGrace() }
            group.addTask { await self.watchStandbys() }
            try? await gracefulShutdown()
            workContinuation.finish()
            group.cancelAll()
        }
        for poolTimers in timers.values { for task in poolTimers.values { task.cancel() } }
    }

    /// Loads every pool and resumes each engine where it stopped.
    func load() async throws {
        guard !loaded else { return }
        loaded = true
        let decoder = JSONDecoder()
        for record in try await store.pools() {
            var pool = ManagedPool(record: record)
            if let data = record.engineState {
                do {
                    pool.machine = try decoder.decode(PoolMachine.self, from: data)
                } catch {
                    // Never guess at a pool's state: it stays as stored, visible, until an operator acts.
                    logger.critical("cannot read a pool's engine state; the pool is left alone", metadata: [
                        "pool": "\(record.machineID)", "error": "\(error)",
                    ])
                }
            }
            // The latest failover, finished or not: its recovery steps (a new standby) come after
            // the promotion that finished it, and must go on its timeline, after the steps written.
            if let latest = try await store.failovers(machineID: record.machineID, limit: 1).first {
                pool.failover = latest
                pool.stepsWritten = try await store.timeline(failoverID: latest.id).count
            }
            pools[PoolID(record.machineID)] = pool
        }
        for poolID in pools.keys.sorted() where pools[poolID]?.machine != nil {
            logger.info("resuming pool", metadata: ["pool": "\(poolID)", "state": "\(pools[poolID]!.record.state)"])
            apply(poolID) { machine, now in machine.resume(now: now) }
        }
    }

    // MARK: - Events in

    private func livenessEvent(_ event: LivenessEvent) async {
        guard event.kind == .failed else { return }
        let instance = await instanceID(ofAgent: event.agent.agentID) ?? InstanceID(event.agent.instanceID)
        guard let poolID = pools.first(where: { $0.value.machine?.snapshot.primaryInstanceID == instance })?.key else { return }
        var epoch: UInt64?
        if case .granted(let granted)? = hub?.leasePosture(instanceID: UInt64(instance)) { epoch = granted }
        logger.warning("primary failed", metadata: ["pool": "\(poolID)", "instance": "\(instance)", "reason": "\(event.reason)"])
        let actions = apply(poolID) { machine, now in machine.livenessFailed(instance: instance, epoch: epoch, now: now) }
        // No failover begun (a disabled pool, say): the agent keeps working under its lease.
        if !actions.contains(.revokeLease(instance)) { hub?.restoreLease(agentID: event.agent.agentID) }
    }

    private func instanceID(ofAgent agentID: String) async -> InstanceID? {
        (try? await store.agent(id: agentID))?.instanceID.map { InstanceID($0) }
    }

    /// After a restart: a primary that has not come back within the grace is failed over, as if
    /// the detector had seen it die (it may have died while the controller was down).
    private func checkPrimariesAfterGrace() async {
        try? await Task.sleep(for: configuration.restartGrace)
        guard !Task.isCancelled, let hub else { return }
        let alive = Set(hub.agentSnapshots().filter { $0.state == "alive" || $0.state == "suspected" }.map { InstanceID($0.identity.instanceID) })
        for (poolID, pool) in pools {
            guard let snapshot = pool.machine?.snapshot, snapshot.enabled, let primary = snapshot.primaryInstanceID,
                [.active, .recovering, .degraded].contains(snapshot.state), !alive.contains(primary)
            else { continue }
            logger.warning("primary did not reconnect after the controller restarted", metadata: ["pool": "\(poolID)", "instance": "\(primary)"])
            apply(poolID) { machine, now in machine.livenessFailed(instance: primary, epoch: nil, now: now) }
        }
    }

    private func watchStandbys() async {
        while !Task.isCancelled {
            try? await Task.sleep(for: configuration.standbyCheckInterval)
            guard !Task.isCancelled else { return }
            let watched = pools.compactMap { poolID, pool -> (PoolID, InstanceID)? in
                guard let snapshot = pool.machine?.snapshot, snapshot.state == .active, let standby = snapshot.standbyInstanceID else { return nil }
                return (poolID, standby)
            }
            for (poolID, standby) in watched {
                do {
                    guard try await effects.provider.instance(id: standby) == nil else { continue }
                } catch {
                    continue  // an unreachable provider says nothing about the standby
                }
                logger.warning("standby gone at the provider", metadata: ["pool": "\(poolID)", "instance": "\(standby)"])
                apply(poolID) { machine, now in
                    machine.standbyLost(instance: standby, reason: "the provider no longer lists instance \(standby)", now: now)
                }
            }
        }
    }

    private func providerAnswered(_ poolID: PoolID, _ operation: OperationID, _ outcome: ProviderOutcome) {
        apply(poolID) { machine, now in machine.providerResult(operation, outcome, now: now) }
    }

    private func verificationAnswered(_ poolID: PoolID, _ operation: OperationID, _ outcome: VerificationOutcome) {
        apply(poolID) { machine, now in machine.verificationResult(operation, outcome, now: now) }
    }

    private func timerFired(_ poolID: PoolID, _ timer: TimerID) {
        timers[poolID]?[timer] = nil
        apply(poolID) { machine, now in machine.timerFired(timer, now: now) }
    }

    // MARK: - Operations (the API's)

    public enum OperationError: Error, CustomStringConvertible, Sendable {
        case unknownPool(PoolID)
        case refused(String)

        public var description: String {
            switch self {
            case .unknownPool(let id): "no warm pool for machine \(id)"
            case .refused(let reason): reason
            }
        }
    }

    public func snapshot(_ poolID: PoolID) -> PoolSnapshot? { pools[poolID]?.machine?.snapshot }

    public func record(_ poolID: PoolID) -> PoolRecord? { pools[poolID]?.record }

    /// Starts a new pool and waits until it is provisioned, failed, or `timeout` passes.
    public func provision(_ request: ProvisionRequest, timeout: Duration) async throws -> PoolRecord {
        try await load()
        if let existing = pools[request.poolID], let machine = existing.machine, !machine.snapshot.removed {
            throw OperationError.refused("machine \(request.poolID) already has a warm pool (state \(machine.snapshot.state.rawValue)); clean it up first")
        }
        let now = Instant.now()
        let (machine, actions) = PoolMachine.provision(request, settings: configuration.engine, now: now)
        var record = pools[request.poolID]?.record ?? PoolRecord(machineID: Int64(request.poolID))
        record.hostMachineID = Int64(request.hostMachineID)
        record.volumeSizeGB = request.volumeGB
        if record.strategy != .gpuWarmPool { record.strategy = .gpuWarmPool }
        pools[request.poolID] = ManagedPool(record: record)
        install(request.poolID, machine: machine, actions: actions, previous: nil, now: now)
        await waitUntil(request.poolID, timeout: timeout) { ![.searching, .provisioning].contains($0.state) }
        return pools[request.poolID]?.record ?? record
    }

    /// Turns the strategy on or off (`gpu_warm_pool` or the `cpu_standby` fallback).
    public func setStrategy(_ strategy: FailoverStrategy, poolID: PoolID) throws -> PoolRecord {
        guard var pool = pools[poolID] else { throw OperationError.unknownPool(poolID) }
        pool.record.strategy = strategy
        pools[poolID] = pool
        if pool.machine != nil {
            try applyThrowing(poolID) { machine, now in
                strategy == .gpuWarmPool ? try machine.enable(now: now) : try machine.disable(now: now)
            }
        } else {
            commitRecordOnly(poolID)
        }
        return pools[poolID]!.record
    }

    /// Settings changes on a pool's row; a new machine gets a row (disabled) to hold them.
    public func updateSettings(poolID: PoolID, gpuPreferences: [String]?, volumeSizeGB: Int?) async throws -> PoolRecord {
        try await load()
        var pool = pools[poolID] ?? ManagedPool(record: PoolRecord(machineID: Int64(poolID)))
        if let gpuPreferences { pool.record.gpuPreferences = gpuPreferences }
        if let volumeSizeGB { pool.record.volumeSizeGB = volumeSizeGB }
        pools[poolID] = pool
        commitRecordOnly(poolID)
        return pool.record
    }

    /// A real failover on purpose; waits until the standby is promoted (or the failover ends
    /// otherwise) and returns the pool's snapshot then.
    public func failoverTest(poolID: PoolID, timeout: Duration) async throws -> PoolSnapshot {
        guard pools[poolID]?.machine != nil else { throw OperationError.unknownPool(poolID) }
        try applyThrowing(poolID) { machine, now in try machine.testFailover(now: now) }
        await waitUntil(poolID, timeout: timeout) { $0.state != .failover }
        return pools[poolID]!.machine!.snapshot
    }

    /// Destroys the pool's instances and volume; waits until they are gone.
    public func cleanup(poolID: PoolID, timeout: Duration) async throws -> Bool {
        guard pools[poolID] != nil else { throw OperationError.unknownPool(poolID) }
        guard pools[poolID]?.machine != nil else {
            // Settings only: nothing at the provider.
            pools[poolID] = nil
            try await store.deletePool(machineID: Int64(poolID))
            return true
        }
        try applyThrowing(poolID) { machine, now in try machine.cleanup(now: now) }
        await waitUntil(poolID, timeout: timeout) { $0.removed || $0.state == .error }
        return pools[poolID] == nil
    }

    private func waitUntil(_ poolID: PoolID, timeout: Duration, _ done: (PoolSnapshot) -> Bool) async {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            guard let snapshot = pools[poolID]?.machine?.snapshot else { return }
            if done(snapshot) { return }
            try? await Task.sleep(for: .milliseconds(50))
        }
    }

    // MARK: - Transitions

    /// Runs one engine event on a pool, queues its commit and its actions, and returns the actions.
    @discardableResult
    private func apply(_ poolID: PoolID, _ event: (inout PoolMachine, Instant) -> [EngineAction]) -> [EngineAction] {
        // A pool gone meanwhile (cleaned up) has nothing to apply an event to.
        (try? applyThrowing(poolID, event)) ?? []
    }

    /// As `apply`, for the operators' events, which the engine may refuse in the pool's state.
    @discardableResult
    private func applyThrowing(_ poolID: PoolID, _ event: (inout PoolMachine, Instant) throws -> [EngineAction]) throws -> [EngineAction] {
        guard let pool = pools[poolID], var machine = pool.machine else { throw OperationError.unknownPool(poolID) }
        let now = Instant.now()
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

    private func install(_ poolID: PoolID, machine: PoolMachine, actions: [EngineAction], previous: PoolSnapshot?, now: Instant) {
        guard var pool = pools[poolID] else { return }
        pool.machine = machine
        let snapshot = machine.snapshot
        var transition = PoolTransition(pool: pool.record)
        for action in actions {
            switch action {
            case .timeline(let entry): record(entry, into: &pool, transition: &transition, snapshot: snapshot, previous: previous)
            case .notify(let notification): transition.notifications.append(Self.outboxEntry(notification, snapshot: snapshot))
            default: break
            }
        }
        if let previous, previous.state != snapshot.state {
            transition.events.append(PoolEvent(
                machineID: Int64(poolID), agentID: nil, kind: "state", at: now.date,
                detail: "\(previous.state.rawValue) → \(snapshot.state.rawValue)"))
        }
        pool.record.apply(snapshot, engineState: try? JSONEncoder().encode(machine), at: now.date)
        transition.pool = pool.record
        if let failover = pool.failover { transition.failover = failover }
        if snapshot.removed {
            pools[poolID] = nil
        } else {
            pools[poolID] = pool
        }
        workContinuation.yield(Work(poolID: poolID, transition: transition, actions: actions, removesPool: snapshot.removed))
    }

    private func commitRecordOnly(_ poolID: PoolID) {
        guard var pool = pools[poolID] else { return }
        pool.record.updatedAt = Date()
        pools[poolID] = pool
        workContinuation.yield(Work(poolID: poolID, transition: PoolTransition(pool: pool.record), actions: [], removesPool: false))
    }

    /// Files a timeline entry: failover steps under their failover's row, the others (provisioning,
    /// cleanup) as pool events.
    private func record(_ entry: TimelineEntry, into pool: inout ManagedPool, transition: inout PoolTransition, snapshot: PoolSnapshot, previous: PoolSnapshot?) {
        guard let number = entry.failover else {
            transition.events.append(PoolEvent(
                machineID: Int64(entry.pool), agentID: nil, kind: entry.step.rawValue, at: entry.at.date, detail: entry.detail))
            return
        }
        let id = "fo-\(entry.pool)-\(number)"
        if pool.failover?.id != id {
            let started = entry.at.date.addingTimeInterval(-(entry.sinceDetection?.seconds ?? 0))
            pool.failover = FailoverRecord(
                id: id, machineID: Int64(entry.pool), reason: entry.detail ?? entry.step.rawValue,
                oldPrimaryInstanceID: (previous?.primaryInstanceID ?? snapshot.primaryInstanceID).map { Int64($0) },
                epoch: Int64(snapshot.epoch), startedAt: started)
            pool.stepsWritten = 0
        }
        var failover = pool.failover!
        pool.stepsWritten += 1
        transition.steps.append(TimelineStep(failoverID: id, sequence: pool.stepsWritten, step: entry.step.rawValue, at: entry.at.date, detail: entry.detail))
        failover.epoch = Int64(snapshot.epoch)
        let wasOpen = failover.result == .inProgress
        switch entry.step {
        case .promoted:
            failover.result = .succeeded
            failover.finishedAt = entry.at.date
            failover.newPrimaryInstanceID = snapshot.primaryInstanceID.map { Int64($0) }
        case .failed:
            if wasOpen {
                failover.result = .failed
                failover.finishedAt = entry.at.date
                failover.errorMessage = entry.detail ?? snapshot.errorMessage
            }
        case .degraded:
            if wasOpen {
                failover.result = .degraded
                failover.finishedAt = entry.at.date
                failover.errorMessage = entry.detail
            }
        default:
            break
        }
        if wasOpen, failover.result != .inProgress, let seconds = failover.durationSeconds {
            onFailoverFinished(failover.result.rawValue, seconds)
        }
        pool.failover = failover
    }

    static func outboxEntry(_ notification: EngineNotification, snapshot: PoolSnapshot) -> OutboxEntry {
        var payload: [String: Any] = [
            "id": notification.id, "event": notification.kind.rawValue, "machine_id": notification.pool,
            "at": notification.at.date.formatted(Date.ISO8601FormatStyle(includingFractionalSeconds: true)), "message": notification.message,
            "state": snapshot.state.rawValue, "epoch": snapshot.epoch,
        ]
        payload["failover"] = notification.failover.map { "fo-\(notification.pool)-\($0)" } ?? NSNull()
        payload["primary_gpu_id"] = snapshot.primaryInstanceID ?? NSNull()
        payload["standby_gpu_id"] = snapshot.standbyInstanceID ?? NSNull()
        let data = (try? JSONSerialization.data(withJSONObject: payload, options: [.sortedKeys])) ?? Data("{}".utf8)
        return OutboxEntry(
            id: notification.id, kind: notification.kind.rawValue, machineID: Int64(notification.pool),
            payload: String(decoding: data, as: UTF8.self), createdAt: notification.at.date, nextAttemptAt: notification.at.date)
    }

    // MARK: - Carrying out

    /// Commits each transition, then runs its actions: never a side effect before its commit.
    private func drainWork() async {
        for await work in workQueue {
            do {
                try await store.commit(work.transition)
                if work.removesPool { try await store.deletePool(machineID: Int64(work.poolID)) }
            } catch {
                // Without the commit the side effects must not run; the engine's deadlines and a
                // restart's resume take it from the last state that was written.
                logger.critical("cannot commit a pool transition; its actions are not carried out", metadata: [
                    "pool": "\(work.poolID)", "error": "\(error)",
                ])
                continue
            }
            carryOut(work.actions, poolID: work.poolID)
        }
    }

    private func carryOut(_ actions: [EngineAction], poolID: PoolID) {
        for action in actions {
            switch action {
            case .revokeLease(let instance):
                hub?.revokeLease(instanceID: UInt64(instance))
            case .grantLease(let instance, let epoch):
                hub?.grantLease(instanceID: UInt64(instance), epoch: epoch)
            case .scheduleTimer(let timer, let at):
                timers[poolID, default: [:]][timer]?.cancel()
                timers[poolID, default: [:]][timer] = Task {
                    let delay = at - Instant.now()
                    if delay > .zero { try? await Task.sleep(for: delay) }
                    guard !Task.isCancelled else { return }
                    self.timerFired(poolID, timer)
                }
            case .cancelTimer(let timer):
                timers[poolID]?[timer]?.cancel()
                timers[poolID]?[timer] = nil
            case .notify, .timeline:
                break  // committed with the transition; the notifier delivers the outbox
            case .verify(let operation, let instance, let ssh, let volume):
                let verification = self.verification
                Task {
                    let outcome = await verification.run(instance: instance, ssh: ssh, volume: volume)
                    self.verificationAnswered(poolID, operation, outcome)
                }
            case .findFreeOffers(let operation, _, _), .ensureVolume(let operation, _, _, _), .ensureInstance(let operation, _),
                .startInstance(let operation, _), .stopInstance(let operation, _), .pollInstance(let operation, _),
                .destroyInstance(let operation, _), .deleteVolume(let operation, _):
                let effects = self.effects
                Task {
                    let outcome = await effects.run(action, poolID: poolID)
                    self.providerAnswered(poolID, operation, outcome)
                }
            }
        }
    }
}

extension PoolRecord {
    /// Copies what the engine knows into the columns the API shows.
    mutating func apply(_ snapshot: PoolSnapshot, engineState: Data?, at now: Date) {
        hostMachineID = Int64(snapshot.hostMachineID)
        state = snapshot.state.rawValue
        volumeID = snapshot.volumeID.map { Int64($0) }
        primaryInstanceID = snapshot.primaryInstanceID.map { Int64($0) }
        standbyInstanceID = snapshot.standbyInstanceID.map { Int64($0) }
        standbyState = snapshot.standbyState.rawValue
        primarySSHHost = snapshot.primarySSH?.host
        primarySSHPort = snapshot.primarySSH?.port
        failoverCount = snapshot.failoverCount
        lastFailoverAt = snapshot.lastFailoverAt?.date
        errorMessage = snapshot.errorMessage
        epoch = Int64(snapshot.epoch)
        self.engineState = engineState
        updatedAt = now
    }
}
