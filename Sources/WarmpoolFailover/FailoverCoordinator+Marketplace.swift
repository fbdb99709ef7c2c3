import Foundation
import WarmpoolEngine
import WarmpoolModel
import WarmpoolProvider

/// The marketplace as it is: a stopped standby reserves no GPU (watched, so that a pool at risk is
/// known before a failure), the provider's own notifications (a second source beside the
/// heartbeats), and the operator's repair of a degraded pool.
extension FailoverCoordinator {
    /// Notifications that prove the primary cannot serve: failed over at once, without waiting for
    /// the detector (an agent may still be connected through a dying machine).
    static let primaryLostKinds: Set<String> = ["outbid", "instance_offline", "instance_error"]
    /// Notifications that announce a host's maintenance or downtime.
    static let hostNoticeKinds: Set<String> = ["maintenance_scheduled", "instance_downtime"]
    static let providerEventsKept = 4096

    /// POST /warmpool/repair: a degraded pool tries its next rung now. Returns the snapshot after.
    public func repair(poolID: PoolID) throws -> PoolSnapshot {
        guard pools[poolID]?.machine != nil else { throw OperationError.unknownPool(poolID) }
        try requireIdle(poolID)
        try applyThrowing(poolID) { machine, now in try machine.repair(now: now) }
        guard let snapshot = pools[poolID]?.machine?.snapshot else { throw OperationError.unknownPool(poolID) }
        return snapshot
    }

    /// Acts on one provider notification; returns what it did, for the log and the answer.
    /// Unknown slugs and keys are information, never errors. Returns nil for a duplicate.
    @discardableResult
    public func providerNotice(_ notice: ProviderNotice) -> String? {
        guard !providerEventsSeen.contains(notice.eventID) else { return nil }
        providerEventsSeen.append(notice.eventID)
        if providerEventsSeen.count > Self.providerEventsKept { providerEventsSeen.removeFirst(providerEventsSeen.count - Self.providerEventsKept) }
        let affected = pools.compactMap { poolID, pool -> (PoolID, PoolSnapshot)? in
            guard let snapshot = pool.machine?.snapshot, !snapshot.removed else { return nil }
            let mentions = notice.instanceID.map { [snapshot.primaryInstanceID, snapshot.standbyInstanceID].contains($0) } ?? false
            return mentions || (notice.instanceID == nil && notice.machineID == snapshot.hostMachineID) ? (poolID, snapshot) : nil
        }
        let text = "provider notification \(notice.kind) (event \(notice.eventID))"
            + (notice.instanceID.map { " about instance \($0)" } ?? "") + ": \(notice.message)"
        logger.notice("provider notification", metadata: [
            "event": "\(notice.eventID)", "kind": "\(notice.kind)", "instance": "\(notice.instanceID.map(String.init) ?? "-")",
            "pools": "\(affected.map(\.0))"])
        if !affected.isEmpty { record("provider_notification", text, pools: affected.map(\.0)) }
        if Self.hostNoticeKinds.contains(notice.kind) {
            let host = notice.machineID ?? affected.first?.1.hostMachineID
            if let host {
                let when = notice.startsAt.map { " from \(Date(timeIntervalSince1970: $0).formatted(.iso8601))" } ?? ""
                hostNotices[host] = "\(notice.kind) announced for host \(host)\(when): \(notice.message)"
            }
            return "host notice recorded"
        }
        guard Self.primaryLostKinds.contains(notice.kind), let instance = notice.instanceID,
            let poolID = monitoredPool(primary: instance)
        else { return affected.isEmpty ? "not about a pool's instance" : "recorded" }
        logger.warning("the provider reports the primary lost; failing over", metadata: [
            "pool": "\(poolID)", "instance": "\(instance)", "kind": "\(notice.kind)"])
        apply(poolID) { machine, now in machine.livenessFailed(instance: instance, epoch: nil, reason: text, now: now) }
        return "failover of pool \(poolID) begun"
    }

    /// One search for the free GPUs of every pool's host (one call, whatever the number of
    /// pools): a host with none leaves its pool's stopped standby nothing to start on.
    func checkStandbyGPUs() async {
        let hosts = Set(pools.values.compactMap { pool -> HostMachineID? in
            guard let snapshot = pool.machine?.snapshot, !snapshot.removed, snapshot.standbyInstanceID != nil else { return nil }
            return snapshot.hostMachineID
        })
        guard !hosts.isEmpty else { return }
        let offers: [Offer]
        do {
            offers = try await effects.provider.searchOffers(OfferQuery(verified: nil, rentable: true, machineIDs: hosts.sorted()))
        } catch {
            logger.warning("cannot look at the hosts' free GPUs", metadata: ["error": "\(error)"])
            return
        }
        let now = clock.now()
        for host in hosts {
            gpuSeen[host] = (offers.filter { $0.machineID == host && $0.numGPUs == 1 }.count, now)
        }
        for (poolID, pool) in pools {
            guard let snapshot = pool.machine?.snapshot, let standby = snapshot.standbyInstanceID,
                let seen = gpuSeen[snapshot.hostMachineID]
            else { continue }
            let atRisk = seen.free == 0
            // "Active" means protected: the engine says degraded while the standby is at risk.
            if (atRisk && snapshot.state == .active) || (!atRisk && snapshot.degradedRung == .standbyAtRisk) {
                apply(poolID) { machine, now in machine.hostGPUsSeen(free: seen.free, now: now) }
            }
            guard atRisk != (standbyAtRisk[poolID] ?? false) else { continue }
            standbyAtRisk[poolID] = atRisk
            if atRisk {
                logger.warning("standby at risk: its host has no free GPU", metadata: ["pool": "\(poolID)", "host": "\(snapshot.hostMachineID)"])
                record("standby_at_risk",
                       "host \(snapshot.hostMachineID) has no free GPU: standby instance \(standby) reserves none while stopped, so its start would wait in scheduling",
                       pools: [poolID])
            } else {
                record("standby_no_longer_at_risk", "host \(snapshot.hostMachineID) has \(seen.free) free GPU(s) again", pools: [poolID])
            }
        }
        standbyAtRisk = standbyAtRisk.filter { pools[$0.key] != nil }
    }
}
