import Foundation
import WarmpoolEngine
import WarmpoolModel

/// "Active" means protected: each pool's conditions, computed from what the controller knows now.
extension FailoverCoordinator {
    /// The pool's protection now; nil for a machine with no pool.
    public func protection(_ poolID: PoolID) -> PoolProtection? {
        guard let snapshot = pools[poolID]?.machine?.snapshot, !snapshot.removed else { return nil }
        let now = clock.now()
        let check = ProtectionCheck(
            snapshot: snapshot, primaryAgent: snapshot.primaryInstanceID.flatMap(primaryAgent),
            standbyAtProvider: standbySeen[poolID].flatMap { $0.instance == snapshot.standbyInstanceID ? .some($0.status) : nil },
            operationInFlight: operationsInFlight[poolID], inRestartGrace: graceEndsAt.map { now < $0 } ?? true,
            breakerTripped: breaker.isTripped,
            uncommitted: uncommitted[poolID],
            freeGPUsOnHost: gpuSeen[snapshot.hostMachineID].map { ($0.free, Date(timeIntervalSince1970: $0.at.secondsSinceEpoch).formatted(.iso8601)) },
            hostNotice: hostNotices[snapshot.hostMachineID])
        var since = conditionSince[poolID] ?? [:]
        let conditions = check.evaluate().map { condition in
            if since[condition.type]?.status != condition.status { since[condition.type] = (condition.status, now) }
            var made = PoolCondition(
                type: condition.type, status: condition.status, reason: condition.reason, message: condition.message,
                lastTransition: since[condition.type]?.since ?? now)
            made.problemWhenTrue = condition.problemWhenTrue
            made.affectsProtection = condition.affectsProtection
            return made
        }
        conditionSince[poolID] = since
        let remediation = snapshot.degradedRung.map { PoolProtection.Remediation(rung: $0.rawValue, nextRetryAt: snapshot.nextRetryAt) }
        return PoolProtection(conditions: conditions, remediation: remediation)
    }

    /// Every pool's protection, by machine id.
    public func protections() -> [PoolID: PoolProtection] {
        var all: [PoolID: PoolProtection] = [:]
        for poolID in pools.keys { all[poolID] = protection(poolID) }
        conditionSince = conditionSince.filter { pools[$0.key] != nil }
        return all
    }

    /// The instance's agent as the detector sees it (its liveliest session's view); nil when unknown.
    func primaryAgent(_ instance: InstanceID) -> ProtectionCheck.PrimaryAgent? {
        guard let hub else { return nil }
        let agents = hub.agentSnapshots().filter { $0.identity.instanceID == instance }
        guard !agents.isEmpty else { return nil }
        let best = agents.first { $0.state == "alive" } ?? agents.first { $0.state == "suspected" } ?? agents[0]
        return ProtectionCheck.PrimaryAgent(
            heartbeating: best.state == "alive" || best.state == "suspected", leaseEpoch: best.leaseEpoch, detectorState: best.state)
    }
}
