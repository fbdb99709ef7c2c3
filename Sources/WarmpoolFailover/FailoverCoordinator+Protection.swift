import Foundation
import WarmpoolEngine
import WarmpoolLiveness
import WarmpoolModel
import WarmpoolProvider

/// "Active" means protected: each pool's conditions, computed from what the controller knows now.
extension FailoverCoordinator {
    /// The pool's protection now; nil for a machine with no pool.
    public func protection(_ poolID: PoolID) -> PoolProtection? {
        protection(poolID, agents: agentsByInstance())
    }

    private func protection(_ poolID: PoolID, agents: [InstanceID: [AgentLivenessSnapshot]]) -> PoolProtection? {
        guard let snapshot = pools[poolID]?.machine?.snapshot, !snapshot.removed else { return nil }
        let now = clock.now()
        let primaryAgent = { (instance: InstanceID) in Self.agent(agents[instance] ?? []) }
        var check = ProtectionCheck(
            snapshot: snapshot, primaryAgent: snapshot.primaryInstanceID.flatMap(primaryAgent),
            standbyAtProvider: standbySeen[poolID].flatMap { $0.instance == snapshot.standbyInstanceID ? .some($0.status) : nil },
            operationInFlight: operationsInFlight[poolID], inRestartGrace: graceEndsAt.map { now < $0 } ?? true,
            breakerTripped: breaker.isTripped,
            uncommitted: uncommitted[poolID],
            freeGPUsOnHost: gpuSeen[snapshot.hostMachineID].map { ($0.free, Date(timeIntervalSince1970: $0.at.secondsSinceEpoch).formatted(.iso8601)) },
            hostNotice: hostNotices[snapshot.hostMachineID])
        check.cpuStandbyAgent = snapshot.cpuStandbyInstanceID.flatMap(primaryAgent)
        check.primarySync = snapshot.primaryInstanceID.flatMap { hub?.syncReport(for: $0) }.map {
            ProtectionCheck.PrimarySync(target: $0.target, state: $0.state, lagSeconds: $0.lag(at: MonotonicClock.now()), error: $0.error)
        }
        check.syncLagBoundSeconds = configuration.syncLagBoundSeconds
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
        // One look at the agents for every pool: a status read must not cost pools x agents.
        let agents = agentsByInstance()
        for poolID in pools.keys { all[poolID] = protection(poolID, agents: agents) }
        conditionSince = conditionSince.filter { pools[$0.key] != nil }
        return all
    }

    private func agentsByInstance() -> [InstanceID: [AgentLivenessSnapshot]] {
        Dictionary(grouping: hub?.agentSnapshots() ?? [], by: \.identity.instanceID)
    }

    /// An instance's agent as the detector sees it (its liveliest session's view); nil when unknown.
    static func agent(_ agents: [AgentLivenessSnapshot]) -> ProtectionCheck.PrimaryAgent? {
        guard !agents.isEmpty else { return nil }
        let best = agents.first { $0.state == "alive" } ?? agents.first { $0.state == "suspected" } ?? agents[0]
        return ProtectionCheck.PrimaryAgent(
            heartbeating: best.state == "alive" || best.state == "suspected", leaseEpoch: best.leaseEpoch, detectorState: best.state)
    }
}

extension FailoverCoordinator {
    /// The pool's costs per strategy, from the providers' prices now (two provider calls).
    public func costs(_ poolID: PoolID) async throws -> PoolCosts {
        guard let machine = pools[poolID]?.machine, case let snapshot = machine.snapshot, !snapshot.removed,
              let record = pools[poolID]?.ledger.record
        else {
            throw OperationError.unknownPool(poolID)
        }
        let cpuMachineType = configuration.engine.cpuStandby?.machineType
        let cpuDiskGB = configuration.engine.cpuStandby?.diskSizeGB ?? record.volumeSizeGB
        let prices = GCEPrices.usCentral1
        var primaryPerHour: Double?
        if let primary = snapshot.primaryInstanceID {
            if snapshot.cpuPrimaryName != nil, let cpuMachineType {
                primaryPerHour = prices.machineTypeHourly[cpuMachineType].map { $0 + prices.externalIPv4Hourly }
            } else {
                primaryPerHour = try await effects.provider.instance(id: primary)?.pricePerHour
            }
        }
        let storage = try await effects.provider.searchVolumeOffers(machineID: snapshot.hostMachineID).first?.storageCost
        return PoolCosts.quote(
            strategy: snapshot.strategy.rawValue, primaryPerHour: primaryPerHour, storagePerGBMonth: storage,
            volumeGB: record.volumeSizeGB, standbyDiskGB: machine.request.diskGB, cpuMachineType: cpuMachineType,
            cpuDiskGB: cpuDiskGB, prices: prices)
    }
}
