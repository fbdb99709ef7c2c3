import Foundation
import WarmpoolEngine
import WarmpoolLiveness
import WarmpoolModel
import WarmpoolNotify
import WarmpoolProvider
import WarmpoolStore

/// What feeds the engines besides the provider's and the verifier's answers: the failure
/// detector, a primary's Goodbye, the check after a restart, and the provider's view of every
/// pool's instances.
extension FailoverCoordinator {
    /// A failed agent: its pool fails over if it is the pool's primary. The hub held the
    /// instance's lease at the failure; this rules on it, whatever the outcome.
    func livenessEvent(_ event: LivenessEvent) async {
        switch event.kind {
        case .failed:
            break
        case .left:
            await primaryLeft(event)
            return
        case .hostKeyReported:
            await hostKeyReported(instance: event.agent.instanceID)
            return
        case .recovered, .connected:
            // Back before its failure reached the engine: the breaker lets it go. A reconnect storm
            // with nothing held costs no store lookup.
            guard !breaker.pending.isEmpty else { return }
            guard let instance = await instanceID(ofAgent: event.agent.agentID) else { return }
            carryOut(breaker: breaker.returned(instance: instance, now: clock.now()))
            return
        default:
            return
        }
        guard let instance = await instanceID(ofAgent: event.agent.agentID),
            let poolID = pools.first(where: { $0.value.machine?.snapshot.primaryInstanceID == instance })?.key
        else {
            hub?.releaseHold(instanceID: event.agent.instanceID)
            return
        }
        logger.warning("primary failed", metadata: ["pool": "\(poolID)", "instance": "\(instance)", "reason": "\(event.reason)"])
        carryOut(breaker: breaker.failed(instance: instance, pool: poolID, monitored: monitoredPrimaries, now: clock.now()))
    }

    /// Pins the key an instance's agent reported, before anything contacts the instance (the pin
    /// store takes only the word of an agent bound to it). A report that differs from the pin in
    /// force changes nothing but is an alert: SSH to the instance will be refused.
    private func hostKeyReported(instance: InstanceID) async {
        let pins = verification.verifier.pins
        guard let reported = hub?.attestedHostKey(instanceID: instance) else { return }
        do {
            guard let pinned = try await pins.pinnedFingerprint(for: instance), pinned != reported else { return }
            logger.critical("an instance's agent reports a host key other than the one pinned; the pin stands", metadata: [
                "instance": "\(instance)", "ssh.pinned": "\(pinned)", "ssh.reported": "\(reported)",
            ])
            let affected = pools.filter { [$0.value.machine?.snapshot.primaryInstanceID, $0.value.machine?.snapshot.standbyInstanceID].contains(instance) }
            record("host_key_mismatch",
                   "instance \(instance)'s agent reports host key \(reported), but \(pinned) is pinned: the pin stands and SSH to the instance will be refused",
                   pools: Array(affected.keys))
        } catch {
            logger.error("cannot pin a reported host key", metadata: ["instance": "\(instance)", "error": "\(error)"])
        }
    }

    /// Primaries a failure would fail over now: the breaker's denominator.
    private var monitoredPrimaries: Int {
        pools.values.count { pool in
            guard let snapshot = pool.machine?.snapshot, snapshot.enabled, snapshot.primaryInstanceID != nil else { return false }
            return [.active, .recovering, .degraded].contains(snapshot.state)
        }
    }

    /// The failure reaches the pool's engine (the breaker let it through).
    private func failOver(_ instance: InstanceID, pool poolID: PoolID) {
        let epoch = hub?.leasePosture(instanceID: instance)?.epoch
        let actions = apply(poolID) { machine, now in machine.livenessFailed(instance: instance, epoch: epoch, now: now) }
        // No failover begun (a disabled pool, say): the agent keeps working under its lease.
        if !actions.contains(.revokeLease(instance)) { hub?.releaseHold(instanceID: instance) }
    }

    func carryOut(breaker actions: [MassFailureBreaker.Action]) {
        let wasTripped = breaker.isTripped
        for action in actions {
            switch action {
            case .failOver(let failure):
                failOver(failure.instance, pool: failure.pool)
            case .dropped(let failure):
                logger.notice("failed agent came back before its failover", metadata: ["pool": "\(failure.pool)", "instance": "\(failure.instance)"])
                hub?.releaseHold(instanceID: failure.instance)
            case .askProvider(let instances) where instances.isEmpty:
                break
            case .askProvider(let instances):
                Task { [effects] in
                    do {
                        let listed = try await effects.provider.listInstances()
                        let running = Set(listed.filter(\.isRunning).map(\.id))
                        self.providerReported(instances, running: running)
                    } catch {
                        self.logger.warning("mass failure: cannot list the provider's instances", metadata: ["error": "\(error)"])
                    }
                }
            case .wake(let at):
                Task {
                    try? await Task.sleep(for: max(.zero, at - self.clock.now()))
                    self.breakerTick()
                }
            case .tripped(let failures, let monitored):
                let held = breaker.pending.values.map(\.pool).sorted()
                logger.critical("mass failure suspected: holding failovers until the provider confirms each", metadata: [
                    "failures": "\(failures)", "monitored_primaries": "\(monitored)", "pools": "\(held)",
                ])
                record("mass_failure_suspected",
                       "\(failures) of \(monitored) primaries failed within \(configuration.breaker.window): failovers held until the provider reports an instance not running",
                       pools: held)
            case .released(let reason):
                logger.notice("mass failure breaker released", metadata: ["reason": "\(reason)"])
                record("mass_failure_released", reason, pools: Array(Set(pools.keys)).sorted())
            }
        }
        let tripped = breaker.isTripped
        onBreakerChange(tripped, tripped ? breaker.pending.count : 0, tripped && !wasTripped)
    }

    private func providerReported(_ instances: [InstanceID], running: Set<InstanceID>) {
        for instance in instances {
            carryOut(breaker: breaker.provider(reports: instance, running: running.contains(instance), now: clock.now()))
        }
    }

    private func breakerTick() {
        carryOut(breaker: breaker.tick(now: clock.now()))
    }

    /// The operator's word: the held failures are real. Returns how many were released.
    public func releaseBreaker() -> Int {
        let actions = breaker.release(now: clock.now())
        carryOut(breaker: actions)
        return actions.count { if case .failOver = $0 { true } else { false } }
    }

    /// What the API shows of the breaker.
    public func breakerStatus() -> (tripped: Bool, since: Instant?, held: [(pool: PoolID, instance: InstanceID, at: Instant)]) {
        (breaker.isTripped, breaker.trippedAt,
         breaker.pending.values.sorted { ($0.at, $0.instance) < ($1.at, $1.instance) }.map { ($0.pool, $0.instance, $0.at) })
    }

    /// An event in each pool's log, and a webhook for each.
    func record(_ kind: String, _ detail: String, pools affected: [PoolID]) {
        let now = clock.now()
        let snapshots = affected.compactMap { pools[$0]?.machine?.snapshot }
        Task { [store, logger] in
            do {
                try await store.recordEvents(snapshots.map {
                    PoolEvent(poolID: $0.poolID, agentID: nil, kind: kind, at: Date(timeIntervalSince1970: now.secondsSinceEpoch), detail: detail)
                })
                try await store.enqueue(snapshots.map { snapshot in
                    WebhookPayload(
                        id: "wp-\(snapshot.poolID)-\(kind)-\(now.nanosecondsSinceEpoch)", event: kind, poolID: snapshot.poolID, at: now,
                        message: detail, state: snapshot.state, epoch: snapshot.epoch, failover: nil,
                        primaryInstanceID: snapshot.primaryInstanceID, standbyInstanceID: snapshot.standbyInstanceID
                    ).outboxEntry()
                })
            } catch {
                logger.error("cannot record the breaker's event", metadata: ["event": "\(kind)", "error": "\(error)"])
            }
        }
    }

    /// The instance the agent's key is bound to in the store (the controller created the key for
    /// it, or an operator registered it with an `instance_id`); nil for a key that is bound to
    /// none, a keys-file agent's included. Such an agent is watched, but what it says about
    /// itself (the instance id it declares) gives it no authority over any pool: otherwise its
    /// credential could claim another pool's primary and fail it over by dropping the connection.
    private func instanceID(ofAgent agentID: AgentID) async -> InstanceID? {
        (try? await store.agent(id: agentID))?.instanceID
    }

    /// After a restart: a primary that has not come back within the grace is failed over, as if
    /// the detector had seen it die (it may have died while the controller was down).
    func checkPrimariesAfterGrace() async {
        try? await Task.sleep(for: configuration.restartGrace)
        guard !Task.isCancelled, let hub else { return }
        let alive = Set(hub.agentSnapshots().filter { $0.state == "alive" || $0.state == "suspected" }.map(\.identity.instanceID))
        for (poolID, pool) in pools {
            guard let snapshot = pool.machine?.snapshot, snapshot.enabled, let primary = snapshot.primaryInstanceID,
                [.active, .recovering, .degraded].contains(snapshot.state), !alive.contains(primary)
            else { continue }
            logger.warning("primary did not reconnect after the controller restarted", metadata: ["pool": "\(poolID)", "instance": "\(primary)"])
            apply(poolID) { machine, now in machine.livenessFailed(instance: primary, epoch: nil, now: now) }
        }
    }

    /// A Goodbye is a clean shutdown of the agent, not a failure, so the detector reports none.
    /// But nobody asked a monitored primary to stop (a failover, a cleanup or a disabled pool
    /// would have): its instance was stopped at the provider (a console or CLI stop, a spot
    /// interruption) or its agent was stopped by hand. The provider decides: stopped or gone is
    /// a failover now; still running gets the restart grace to reconnect (an agent upgrade),
    /// then a failover.
    private func primaryLeft(_ event: LivenessEvent) async {
        guard let instance = await instanceID(ofAgent: event.agent.agentID), let poolID = monitoredPool(primary: instance) else { return }
        logger.warning("primary's agent said goodbye; asking the provider", metadata: ["pool": "\(poolID)", "instance": "\(instance)"])
        var stopped: String?
        do {
            stopped = try await stopReason(of: instance, inPool: poolID)
        } catch {
            // Nothing concluded: the grace below still fails it over if it stays away.
            logger.warning("cannot ask the provider about a primary that left", metadata: ["pool": "\(poolID)", "error": "\(error)"])
        }
        if let stopped {
            primaryStopped(poolID, instance: instance, reason: "its agent said goodbye and \(stopped)")
            return
        }
        let grace = configuration.restartGrace
        runner.schedule(.goodbye(poolID), after: grace) {
            guard await self.monitoredPool(primary: instance) == poolID, !(await self.isHeartbeating(instance)) else { return }
            await self.primaryStopped(poolID, instance: instance, reason: "its agent said goodbye and did not come back within \(grace)")
        }
    }

    /// Why the provider that runs the primary proves it stopped: the marketplace, or for a CPU VM
    /// (the promoted CPU standby) the other cloud, by the VM's name. nil when it does not.
    private func stopReason(of instance: InstanceID, inPool poolID: PoolID) async throws -> String? {
        if let name = pools[poolID]?.machine?.snapshot.cpuPrimaryName {
            return try await cpu.stopReason(name: name)
        }
        return Self.stopReason(try await effects.provider.instance(id: instance), instance: instance)
    }

    /// Why the provider's listing proves the instance stopped; nil when it does not.
    static func stopReason(_ listed: Instance?, instance: InstanceID) -> String? {
        guard let listed else { return "the provider no longer lists instance \(instance)" }
        guard listed.isStopped else { return nil }
        return "the provider reports instance \(instance) \(listed.actualStatus ?? "stopped")"
    }

    /// The pool whose enabled engine counts on `instance` as its running primary now.
    func monitoredPool(primary instance: InstanceID) -> PoolID? {
        pools.first { _, pool in
            guard let snapshot = pool.machine?.snapshot, snapshot.enabled, snapshot.primaryInstanceID == instance else { return false }
            return [.active, .recovering, .degraded].contains(snapshot.state)
        }?.key
    }

    private func primaryStopped(_ poolID: PoolID, instance: InstanceID, reason: String) {
        logger.warning("primary stopped without being asked to; failing over", metadata: [
            "pool": "\(poolID)", "instance": "\(instance)", "reason": "\(reason)"])
        apply(poolID) { machine, now in machine.livenessFailed(instance: instance, epoch: nil, reason: reason, now: now) }
    }

    /// Every `standbyCheckInterval`, one listing of the provider's instances (one call, well within
    /// its rate limits) is held against every pool: a monitored primary the provider shows
    /// stopped or no longer lists is failed over (its agent may not have said anything: a host
    /// stop that killed it at once), and an active pool's standby that is gone is replaced before
    /// it is needed (its agent is silent by design, so only the provider can tell).
    func watchInstances() async {
        while !Task.isCancelled {
            try? await Task.sleep(for: configuration.standbyCheckInterval)
            guard !Task.isCancelled else { return }
            await checkInstancesAtProvider()
            await checkStandbyGPUs()
        }
    }

    func checkInstancesAtProvider() async {
        // Only what the pools held before the listing was asked for is judged by it: an instance
        // made or promoted while the call was out is not missing from it.
        let asked = pools.compactMapValues { $0.machine.map { ($0.snapshot.primaryInstanceID, $0.snapshot.standbyInstanceID) } }
        let listed: [InstanceID: Instance]
        do {
            listed = Dictionary(try await effects.provider.listInstances().map { ($0.id, $0) }, uniquingKeysWith: { first, _ in first })
        } catch {
            lastProviderCheck = (clock.now(), "\(error)")
            return  // an unreachable provider says nothing about the instances
        }
        lastProviderCheck = (clock.now(), nil)
        standbySeen = [:]
        for (poolID, pool) in pools {
            guard let snapshot = pool.machine?.snapshot, let before = asked[poolID],
                before == (snapshot.primaryInstanceID, snapshot.standbyInstanceID)
            else { continue }
            if let standby = snapshot.standbyInstanceID { standbySeen[poolID] = (standby, listed[standby].map { $0.actualStatus ?? "unknown" }) }
            if let name = snapshot.cpuPrimaryName, let primary = snapshot.primaryInstanceID {
                // On the other cloud: the marketplace's listing says nothing about it.
                if monitoredPool(primary: primary) == poolID, let stopped = try? await cpu.stopReason(name: name),
                    pools[poolID]?.machine?.snapshot.primaryInstanceID == primary
                {
                    primaryStopped(poolID, instance: primary, reason: stopped)
                }
                continue
            }
            if let primary = snapshot.primaryInstanceID, monitoredPool(primary: primary) == poolID,
                let stopped = Self.stopReason(listed[primary], instance: primary)
            {
                primaryStopped(poolID, instance: primary, reason: stopped)
                continue
            }
            if snapshot.state == .active, let name = snapshot.cpuStandbyName, let agent = snapshot.cpuStandbyInstanceID,
                let lost = try? await cpu.stopReason(name: name), pools[poolID]?.machine?.snapshot.cpuStandbyName == name
            {
                logger.warning("CPU standby gone or stopped at its cloud", metadata: ["pool": "\(poolID)", "vm": "\(name)"])
                apply(poolID) { machine, now in machine.standbyLost(instance: agent, reason: lost, now: now) }
                continue
            }
            if snapshot.state == .active, let standby = snapshot.standbyInstanceID, listed[standby] == nil {
                logger.warning("standby gone at the provider", metadata: ["pool": "\(poolID)", "instance": "\(standby)"])
                apply(poolID) { machine, now in
                    machine.standbyLost(instance: standby, reason: "the provider no longer lists instance \(standby)", now: now)
                }
            }
        }
    }
}
