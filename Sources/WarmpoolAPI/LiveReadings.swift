import Foundation
import WarmpoolLiveness
import WarmpoolModel

/// What the liveness hub knows right now, read once per request: the API's status routes and the
/// console must not take a snapshot of every agent for every pool they show.
struct LiveReadings {
    let hub: LivenessHub?
    let now: Date
    let monotonicNow: Int64
    let agents: [AgentLivenessSnapshot]

    init(hub: LivenessHub?, now: Date = Date()) {
        self.hub = hub
        self.now = now
        monotonicNow = MonotonicClock.now()
        agents = hub?.agentSnapshots() ?? []
    }

    /// The newest heartbeat heard from each instance's agents.
    func lastHeartbeats() -> [InstanceID: Date] {
        var newest: [InstanceID: Date] = [:]
        for snapshot in agents {
            let heard = lastHeartbeat(snapshot)
            newest[snapshot.identity.instanceID] = max(newest[snapshot.identity.instanceID] ?? heard, heard)
        }
        return newest
    }

    func lastHeartbeat(_ snapshot: AgentLivenessSnapshot) -> Date {
        now.addingTimeInterval(-Double(snapshot.silenceNanoseconds) / 1e9)
    }

    /// What a pool's primary's agent last reported of its checkpoints and snapshots.
    func recoveryPoint(primary: InstanceID?) -> Present.RecoveryPoint? {
        guard let hub, let primary, let report = hub.recoveryPoint(instanceID: primary) else { return nil }
        return Present.RecoveryPoint(report: report, now: now, monotonicNow: monotonicNow)
    }

    /// What a pool's primary's agent last reported of its sync to a CPU standby.
    func sync(primary: InstanceID?) -> Present.Sync? {
        guard let hub, let primary, let report = hub.syncReport(for: primary) else { return nil }
        return Present.Sync(report: report, now: now, monotonicNow: monotonicNow)
    }
}
