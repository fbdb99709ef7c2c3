import Foundation
import WarmpoolEngine
import WarmpoolModel
import WarmpoolNotify
import WarmpoolStore

/// What the coordinator keeps of one pool between transitions, besides its engine: the store's row
/// and the failover being written (its timeline's length, so steps are numbered on).
struct PoolLedger: Sendable, Equatable {
    var record: PoolRecord
    var failover: FailoverRecord?
    var stepsWritten: Int = 0
}

/// One engine transition as the store will hold it, and the failovers it finished (for metrics).
struct RecordedTransition: Sendable {
    var transition: PoolTransition
    var finishedFailovers: [FinishedFailover]
}

struct FinishedFailover: Sendable, Equatable {
    var result: FailoverRecord.Result
    var seconds: Double
}

/// Pure: turns an engine transition (its actions, the snapshots before and after) into the one
/// store transaction that records it: the pool's row, the failover's row and timeline steps, the
/// outbox entries and the pool events. No clock, no I/O; the coordinator commits what it returns.
enum TransitionRecorder {
    /// `checkpointAge`: how old the newest checkpoint of the primary before this transition
    /// (`previous`) is now, in seconds, from its agent's last report; nil when unknown. A failover
    /// this transition starts records it as the work lost.
    static func record(
        _ actions: [EngineAction], ledger: inout PoolLedger, previous: PoolSnapshot?, snapshot: PoolSnapshot,
        engineState: Data?, checkpointAge: Double? = nil, now: Instant
    ) -> RecordedTransition {
        var transition = PoolTransition(pool: ledger.record)
        var finished: [FinishedFailover] = []
        for action in actions {
            switch action {
            case .timeline(let entry):
                if let done = file(entry, into: &ledger, transition: &transition, snapshot: snapshot, previous: previous,
                                   checkpointAge: checkpointAge, now: now) {
                    finished.append(done)
                }
            case .notify(let notification):
                var payload = payload(notification, snapshot: snapshot)
                if let failover = ledger.failover, payload.failover == failover.id { payload.workLostSeconds = failover.workLostSeconds }
                transition.notifications.append(payload.outboxEntry())
            default:
                break
            }
        }
        if let previous, previous.state != snapshot.state {
            transition.events.append(PoolEvent(
                poolID: snapshot.poolID, agentID: nil, kind: "state", at: date(now),
                detail: "\(previous.state.rawValue) → \(snapshot.state.rawValue)"))
        }
        ledger.record.apply(snapshot, engineState: engineState, at: date(now))
        transition.pool = ledger.record
        transition.failover = ledger.failover
        return RecordedTransition(transition: transition, finishedFailovers: finished)
    }

    /// A row change that is not an engine transition (settings, a strategy switch without a pool).
    static func recordOnly(_ ledger: inout PoolLedger, now: Instant) -> PoolTransition {
        ledger.record.updatedAt = date(now)
        return PoolTransition(pool: ledger.record)
    }

    /// The failover's id, as the API and webhooks name it: `fo-12-3` in a machine's first pool
    /// (as always), `fo-12-i2-3` in its second.
    static func failoverID(pool: PoolID, incarnation: Int, number: Int) -> String {
        incarnation <= 1 ? "fo-\(pool)-\(number)" : "fo-\(pool)-i\(incarnation)-\(number)"
    }

    static func payload(_ notification: EngineNotification, snapshot: PoolSnapshot) -> WebhookPayload {
        WebhookPayload(
            id: notification.id, event: notification.kind.rawValue, poolID: notification.pool, at: notification.at,
            message: notification.message, state: snapshot.state, epoch: snapshot.epoch,
            failover: notification.failover.map { failoverID(pool: notification.pool, incarnation: snapshot.incarnation, number: $0) },
            primaryInstanceID: snapshot.primaryInstanceID, standbyInstanceID: snapshot.standbyInstanceID)
    }

    /// Files a timeline entry: failover steps under their failover's row, the others (provisioning,
    /// cleanup) as pool events. Returns the failover it finished, if it finished one.
    private static func file(
        _ entry: TimelineEntry, into ledger: inout PoolLedger, transition: inout PoolTransition, snapshot: PoolSnapshot,
        previous: PoolSnapshot?, checkpointAge: Double?, now: Instant
    ) -> FinishedFailover? {
        guard let number = entry.failover else {
            transition.events.append(PoolEvent(
                poolID: entry.pool, agentID: nil, kind: entry.step.rawValue, at: date(entry.at), detail: entry.detail))
            return nil
        }
        let id = failoverID(pool: entry.pool, incarnation: snapshot.incarnation, number: number)
        if ledger.failover?.id != id {
            let started = entry.at - (entry.sinceDetection ?? .zero)
            ledger.failover = FailoverRecord(
                id: id, poolID: entry.pool, reason: entry.detail ?? entry.step.rawValue,
                oldPrimaryInstanceID: previous?.primaryInstanceID ?? snapshot.primaryInstanceID,
                epoch: snapshot.epoch, startedAt: date(started))
            ledger.failover?.incarnation = snapshot.incarnation
            if let checkpointAge {
                // Aged back to the detection: what the primary had not checkpointed when it was lost.
                let checkpointedAt = now - Duration.nanoseconds(Int64(checkpointAge * 1e9))
                ledger.failover?.lastCheckpointAt = date(checkpointedAt)
                ledger.failover?.workLostSeconds = max(0, (started - checkpointedAt).seconds)
            }
            ledger.stepsWritten = 0
        }
        guard var failover = ledger.failover else { return nil }
        ledger.stepsWritten += 1
        transition.steps.append(TimelineStep(
            failoverID: id, sequence: ledger.stepsWritten, step: entry.step.rawValue, at: date(entry.at), detail: entry.detail))
        failover.epoch = snapshot.epoch
        let wasOpen = failover.result == .inProgress
        switch entry.step {
        case .restored:
            failover.restoredSnapshot = entry.snapshot
            failover.recoveryPointSeconds = entry.recoveryPoint?.seconds
        case .promoted:
            failover.result = .succeeded
            failover.finishedAt = date(entry.at)
            failover.newPrimaryInstanceID = snapshot.primaryInstanceID
        case .failed where wasOpen:
            failover.result = .failed
            failover.finishedAt = date(entry.at)
            failover.errorMessage = entry.detail ?? snapshot.errorMessage
        case .degraded where wasOpen:
            failover.result = .degraded
            failover.finishedAt = date(entry.at)
            failover.errorMessage = entry.detail
        default:
            break
        }
        ledger.failover = failover
        guard wasOpen, failover.result != .inProgress, let seconds = failover.durationSeconds else { return nil }
        return FinishedFailover(result: failover.result, seconds: seconds)
    }

    static func date(_ instant: Instant) -> Date { Date(timeIntervalSince1970: instant.secondsSinceEpoch) }
}

extension PoolRecord {
    /// Copies what the engine knows into the columns the API shows.
    mutating func apply(_ snapshot: PoolSnapshot, engineState: Data?, at now: Date) {
        hostMachineID = snapshot.hostMachineID
        state = snapshot.state
        volumeID = snapshot.volumeID
        primaryInstanceID = snapshot.primaryInstanceID
        standbyInstanceID = snapshot.standbyInstanceID
        standbyState = snapshot.standbyState
        // What protects the pool now (the engine chose it: a CPU standby where the host has no
        // second GPU); a disabled pool keeps the operator's word.
        if snapshot.enabled { strategy = snapshot.strategy }
        cpuStandbyName = snapshot.cpuStandbyName
        cpuStandbyInstanceID = snapshot.cpuStandbyInstanceID
        cpuStandbySSHHost = snapshot.cpuStandbySSH?.host
        cpuPrimaryName = snapshot.cpuPrimaryName
        primarySSHHost = snapshot.primarySSH?.host
        primarySSHPort = snapshot.primarySSH?.port
        failoverCount = snapshot.failoverCount
        lastFailoverAt = snapshot.lastFailoverAt.map(TransitionRecorder.date)
        errorMessage = snapshot.errorMessage
        epoch = snapshot.epoch
        incarnation = snapshot.incarnation
        self.engineState = engineState
        updatedAt = now
    }
}
