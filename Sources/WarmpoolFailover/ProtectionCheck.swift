import WarmpoolEngine
import WarmpoolModel

/// Pure: what a pool's protection depends on, and the conditions it comes to. The coordinator
/// gathers the facts (engine snapshot, detector, provider listing, its own state) and keeps each
/// condition's last transition; nothing here reads a clock or does I/O.
struct ProtectionCheck {
    /// The primary's agent as the detector sees it now.
    struct PrimaryAgent: Equatable {
        var heartbeating: Bool
        /// The epoch its grants carry; nil while it may have none (withheld, revoked, unknown).
        var leaseEpoch: Epoch?
        var detectorState: String
    }

    var snapshot: PoolSnapshot
    /// nil when no agent of the primary is known to the detector.
    var primaryAgent: PrimaryAgent?
    /// The CPU standby's agent, when the pool has one (nil: not known to the detector).
    var cpuStandbyAgent: PrimaryAgent? = nil
    /// The standby's status in the provider's last listing; `.some(nil)` when the listing did not
    /// have it; nil when no listing was made since the controller started.
    var standbyAtProvider: String??
    var operationInFlight: String?
    var inRestartGrace: Bool
    var breakerTripped: Bool
    var uncommitted: String?
    /// Free GPUs the provider offered on the pool's host at the last look, and when; nil before one.
    var freeGPUsOnHost: (count: Int, at: String)? = nil
    /// A maintenance or downtime the provider announced for the host (Vast.ai's notifications).
    var hostNotice: String? = nil
    /// The primary's sync to its CPU standby as its agent reports it, the lag aged to now; nil when
    /// it reports none (a pool whose standby is a GPU on the same volume syncs nothing).
    var primarySync: PrimarySync? = nil
    /// The most lag `SyncBehind` accepts (the controller's `--sync-lag-bound-s`).
    var syncLagBoundSeconds: Double = 60

    struct PrimarySync: Equatable {
        var target: String?
        var state: String
        /// nil before the sync began.
        var lagSeconds: Double?
        var error: String?
    }

    typealias Condition = (type: String, status: Bool, reason: String, message: String, problemWhenTrue: Bool, affectsProtection: Bool)

    /// Each condition, in a fixed order.
    func evaluate() -> [Condition] {
        func positive(_ c: (type: String, status: Bool, reason: String, message: String)) -> Condition {
            (c.type, c.status, c.reason, c.message, false, true)
        }
        return [positive(enabled), positive(primary), positive(standby), standbyAtRisk, positive(volume), positive(idle),
                positive(controller), positive(breaker), positive(persisted), hostMaintenance] + (syncBehind.map { [$0] } ?? [])
            + (primaryOnCPU.map { [$0] } ?? [])
    }

    /// The CPU standby was promoted: the workload runs, at CPU speed, until a free GPU takes it
    /// back. Listed only then; nothing protects such a pool (no standby), which StandbyReady says.
    private var primaryOnCPU: Condition? {
        guard let name = snapshot.cpuPrimaryName else { return nil }
        return ("PrimaryOnCPU", true, "CPUStandbyPromoted", "the primary is CPU VM \(name): degraded (CPU) performance until the pool moves "
                + "back to a free GPU", true, false)
    }

    /// The CPU standby's copy lags the primary by more than the bound: a failover now would lose
    /// that many seconds of writes. Listed only while the primary reports a sync.
    private var syncBehind: Condition? {
        guard let sync = primarySync else { return nil }
        let type = "SyncBehind"
        let target = sync.target.map { "CPU standby \($0)" } ?? "the CPU standby"
        let bound = "\(Int(syncLagBoundSeconds.rounded())) s"
        guard let lag = sync.lagSeconds else {
            if sync.state == "off" {
                return (type, true, "SyncOff", "the primary's sync is off" + (sync.error.map { ": \($0)" } ?? ""), true, true)
            }
            return (type, false, "NotStarted", "the primary's sync to \(target) has not begun (\(sync.state))", true, true)
        }
        let seconds = (lag * 10).rounded() / 10
        guard lag > syncLagBoundSeconds else {
            return (type, false, "WithinBound", "\(target) lags the primary by \(seconds) s (bound \(bound))", true, true)
        }
        let why = sync.error.map { "; the last pass failed: \($0)" } ?? ""
        return (type, true, "LagOverBound", "\(target) lags the primary by \(seconds) s, over the \(bound) bound\(why)", true, true)
    }

    /// A stopped standby reserves no GPU: with none free on its host, its start would wait in
    /// `scheduling` (someone else has its GPU) and the failover would have nowhere to go.
    private var standbyAtRisk: Condition {
        let type = "StandbyAtRisk"
        guard snapshot.standbyInstanceID != nil, let seen = freeGPUsOnHost else {
            return (type, false, "NotChecked", "no look at the host's free GPUs since the controller started (or no standby)", true, true)
        }
        if seen.count == 0 {
            return (type, true, "NoFreeGPU", "host \(snapshot.hostMachineID) offered no free GPU at \(seen.at): a stopped standby holds "
                    + "none, so its start would wait in scheduling while another renter has the GPU", true, true)
        }
        return (type, false, "FreeGPU", "host \(snapshot.hostMachineID) offered \(seen.count) free GPU(s) at \(seen.at)", true, true)
    }

    private var hostMaintenance: Condition {
        guard let hostNotice else {
            return ("HostMaintenance", false, "NoneAnnounced", "the provider announced no maintenance or downtime for the host", true, false)
        }
        return ("HostMaintenance", true, "Announced", hostNotice, true, false)
    }

    private var enabled: (type: String, status: Bool, reason: String, message: String) {
        snapshot.enabled
            ? ("Enabled", true, "Enabled", "failures of the primary are failed over")
            : ("Enabled", false, "Disabled", "the pool is disabled: a failure of the primary is not acted on")
    }

    private var primary: (type: String, status: Bool, reason: String, message: String) {
        let type = "PrimaryHeartbeating"
        guard let instance = snapshot.primaryInstanceID else { return (type, false, "NoPrimary", "the pool has no primary instance") }
        guard let agent = primaryAgent else {
            return (type, false, "NeverHeard", "no agent of primary instance \(instance) has connected to this controller")
        }
        guard agent.heartbeating else {
            return (type, false, "Silent", "primary instance \(instance)'s agent is \(agent.detectorState)")
        }
        guard agent.leaseEpoch == snapshot.epoch else {
            let held = agent.leaseEpoch.map { "its lease is at epoch \($0)" } ?? "it holds no lease"
            return (type, false, "NotLeased", "primary instance \(instance) heartbeats but \(held), the pool is at epoch \(snapshot.epoch)")
        }
        return (type, true, "Heartbeating", "primary instance \(instance) heartbeats, leased at epoch \(snapshot.epoch)")
    }

    private var standby: (type: String, status: Bool, reason: String, message: String) {
        let type = "StandbyReady"
        if let name = snapshot.cpuStandbyName, snapshot.standbyInstanceID == nil {
            // A CPU VM runs, its agent heard but withheld from the workload; how fresh its copy
            // is, is `SyncBehind`'s to say.
            guard let agent = cpuStandbyAgent, agent.heartbeating else {
                return (type, false, "CPUStandbySilent", "CPU standby \(name)'s agent is \(cpuStandbyAgent?.detectorState ?? "not heard by this controller")")
            }
            return (type, true, "CPUStandbyRunning", "CPU standby \(name) runs and its agent heartbeats")
        }
        guard let instance = snapshot.standbyInstanceID else { return (type, false, "NoStandby", "the pool has no standby instance") }
        guard snapshot.standbyState == .stopped else {
            return (type, false, "NotStopped", "standby instance \(instance) is \(snapshot.standbyState.rawValue), not stopped and ready to start")
        }
        switch standbyAtProvider {
        case .some(.none):
            return (type, false, "Missing", "the provider's last listing does not have standby instance \(instance)")
        case .some(.some(let status)) where status != "stopped" && status != "exited":
            return (type, false, "Unexpected", "the provider lists standby instance \(instance) as \(status)")
        default:
            return (type, true, "Stopped", "standby instance \(instance) is stopped, ready to start")
        }
    }

    private var volume: (type: String, status: Bool, reason: String, message: String) {
        let volume = snapshot.volumeID.map { "volume \($0)" } ?? "the volume"
        return snapshot.volumeVerified
            ? ("VolumeVerified", true, "Marked", "\(volume) carries the identity marker the controller wrote")
            : ("VolumeVerified", false, "Unmarked", "\(volume) has no identity marker yet: a failover could not prove it")
    }

    private var idle: (type: String, status: Bool, reason: String, message: String) {
        let type = "NoOperationInFlight"
        if let operationInFlight { return (type, false, "OperationInFlight", "\(operationInFlight) is in progress") }
        if snapshot.cleaningUp { return (type, false, "CleaningUp", "the pool is being cleaned up") }
        switch snapshot.state {
        case .active, .disabled, .degraded: return (type, true, "Idle", "nothing is in flight")
        case .error: return (type, false, "Error", snapshot.errorMessage ?? "the pool is in error")
        case .searching, .provisioning, .failover, .recovering:
            return (type, false, "State\(snapshot.state.rawValue.capitalized)", "the pool is \(snapshot.state.rawValue)")
        }
    }

    private var controller: (type: String, status: Bool, reason: String, message: String) {
        inRestartGrace
            ? ("ControllerReady", false, "RestartGrace", "the controller restarted and is waiting for the agents to reconnect")
            : ("ControllerReady", true, "Ready", "the controller is past its restart grace")
    }

    private var breaker: (type: String, status: Bool, reason: String, message: String) {
        breakerTripped
            ? ("BreakerClosed", false, "MassFailureSuspected", "the mass-failure breaker holds failovers until the provider confirms each")
            : ("BreakerClosed", true, "Closed", "failovers are not held")
    }

    private var persisted: (type: String, status: Bool, reason: String, message: String) {
        uncommitted.map { ("StatePersisted", false, "CommitFailing", "the pool's last change is not in the store yet (retrying): \($0)") }
            ?? ("StatePersisted", true, "Committed", "the pool's state is in the store")
    }
}
