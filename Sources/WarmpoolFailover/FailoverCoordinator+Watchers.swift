import WarmpoolEngine
import WarmpoolLiveness
import WarmpoolModel

/// What feeds the engines besides the provider's and the verifier's answers: the failure
/// detector, the check after a restart, and the watch on stopped standbys.
extension FailoverCoordinator {
    /// A failed agent: its pool fails over if it is the pool's primary. The hub held the
    /// instance's lease at the failure; this rules on it, whatever the outcome.
    func livenessEvent(_ event: LivenessEvent) async {
        guard event.kind == .failed else { return }
        let instance = await instanceID(ofAgent: event.agent.agentID) ?? event.agent.instanceID
        guard let poolID = pools.first(where: { $0.value.machine?.snapshot.primaryInstanceID == instance })?.key else {
            hub?.releaseHold(instanceID: event.agent.instanceID)
            return
        }
        let epoch = hub?.leasePosture(instanceID: instance)?.epoch
        logger.warning("primary failed", metadata: ["pool": "\(poolID)", "instance": "\(instance)", "reason": "\(event.reason)"])
        let actions = apply(poolID) { machine, now in machine.livenessFailed(instance: instance, epoch: epoch, now: now) }
        // No failover begun (a disabled pool, say): the agent keeps working under its lease.
        if !actions.contains(.revokeLease(instance)) { hub?.releaseHold(instanceID: instance) }
    }

    /// The instance the controller created an agent's key for; the agent's own report otherwise.
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

    /// Looks each active pool's stopped standby up at the provider, every `standbyCheckInterval`.
    func watchStandbys() async {
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
}
