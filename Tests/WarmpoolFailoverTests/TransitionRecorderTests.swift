import Foundation
import Testing
@testable import WarmpoolEngine
@testable import WarmpoolFailover
import WarmpoolModel
import WarmpoolStore

/// The recorder is pure: engine actions and snapshots in, the store transaction out.
struct TransitionRecorderTests {
    static let t0 = Instant.seconds(1_800_000_000)

    static func snapshot(
        _ state: PoolState, primary: InstanceID? = 101, standby: InstanceID? = 102, epoch: Epoch = 1, failovers: Int = 0,
        current: Int? = nil
    ) -> PoolSnapshot {
        PoolSnapshot(
            poolID: 7, state: state, enabled: true, hostMachineID: 77, volumeID: 55, primaryInstanceID: primary,
            standbyInstanceID: standby, standbyState: standby == nil ? .none : .stopped,
            primarySSH: SSHEndpoint(host: "10.0.0.1", port: 22), failoverCount: failovers, lastFailoverAt: nil,
            lastRecoveryDuration: nil, errorMessage: nil, epoch: epoch, currentFailover: current, removed: false)
    }

    static func step(_ step: TimelineEntry.Step, failover: Int?, at: Instant, sinceDetection: Duration? = nil, detail: String? = nil)
        -> EngineAction
    {
        .timeline(TimelineEntry(
            pool: 7, failover: failover, step: step, at: at, sincePrevious: .zero, sinceDetection: sinceDetection, detail: detail))
    }

    @Test func aTransitionWithoutAFailoverBecomesPoolEventsAndTheRow() {
        var ledger = PoolLedger(record: PoolRecord(poolID: 7, state: .provisioning))
        let recorded = TransitionRecorder.record(
            [Self.step(.primaryRunning, failover: nil, at: Self.t0, detail: "instance 101"), .scheduleTimer(TimerID(rawValue: 1), at: Self.t0)],
            ledger: &ledger, previous: Self.snapshot(.provisioning), snapshot: Self.snapshot(.active), engineState: Data("{}".utf8),
            now: Self.t0)
        let transition = recorded.transition
        #expect(transition.steps.isEmpty && transition.failover == nil && transition.notifications.isEmpty)
        #expect(transition.events.map(\.kind) == ["primary_running", "state"])
        #expect(transition.events.last?.detail == "provisioning → active")
        #expect(transition.events.allSatisfy { $0.poolID == 7 })
        #expect(transition.pool.state == .active && transition.pool.primaryInstanceID == 101 && transition.pool.standbyInstanceID == 102)
        #expect(transition.pool.volumeID == 55 && transition.pool.hostMachineID == 77 && transition.pool.primarySSHHost == "10.0.0.1")
        #expect(transition.pool.engineState == Data("{}".utf8))
        #expect(transition.pool.updatedAt == Date(timeIntervalSince1970: Self.t0.secondsSinceEpoch))
        #expect(ledger.record == transition.pool)
        #expect(recorded.finishedFailovers.isEmpty)
    }

    @Test func aFailoverIsOpenedNumberedOnAcrossTransitionsAndFinishedOnce() {
        var ledger = PoolLedger(record: PoolRecord(poolID: 7, state: .active))
        let detected = Self.t0 + .milliseconds(350)
        // Detection: the failover's row starts at the silence's start, with the old primary.
        let first = TransitionRecorder.record(
            [Self.step(.detected, failover: 1, at: detected, sinceDetection: .milliseconds(350), detail: "agent failed"),
             Self.step(.fencing, failover: 1, at: detected)],
            ledger: &ledger, previous: Self.snapshot(.active), snapshot: Self.snapshot(.failover, current: 1), engineState: nil,
            now: detected)
        let opened = try! #require(first.transition.failover)
        #expect(opened.id == "fo-7-1" && opened.poolID == 7 && opened.result == .inProgress)
        #expect(opened.reason == "agent failed" && opened.oldPrimaryInstanceID == 101)
        #expect(opened.startedAt == Date(timeIntervalSince1970: Self.t0.secondsSinceEpoch))
        #expect(first.transition.steps.map(\.sequence) == [1, 2])
        #expect(first.transition.steps.map(\.step) == ["detected", "fencing"])

        // Promotion, in a later transition: numbering goes on, and the failover ends succeeded.
        let promotedAt = Self.t0 + .seconds(3)
        let second = TransitionRecorder.record(
            [Self.step(.epochIncreased, failover: 1, at: promotedAt), Self.step(.promoted, failover: 1, at: promotedAt)],
            ledger: &ledger, previous: Self.snapshot(.failover, current: 1),
            snapshot: Self.snapshot(.recovering, primary: 102, standby: nil, epoch: 2, failovers: 1), engineState: nil, now: promotedAt)
        let finished = try! #require(second.transition.failover)
        #expect(second.transition.steps.map(\.sequence) == [3, 4])
        #expect(finished.result == .succeeded && finished.newPrimaryInstanceID == 102 && finished.epoch == 2)
        #expect(finished.durationSeconds == 3)
        #expect(second.finishedFailovers == [FinishedFailover(result: .succeeded, seconds: 3)])

        // A step after the end (the new standby) goes on its timeline; the result stays.
        let third = TransitionRecorder.record(
            [Self.step(.failed, failover: 1, at: promotedAt + .seconds(60), detail: "no standby")],
            ledger: &ledger, previous: Self.snapshot(.recovering), snapshot: Self.snapshot(.degraded), engineState: nil,
            now: promotedAt + .seconds(60))
        #expect(third.transition.steps.map(\.sequence) == [5])
        #expect(third.transition.failover?.result == .succeeded)
        #expect(third.finishedFailovers.isEmpty)
    }

    @Test func aLedgerLoadedAfterARestartNumbersOnFromTheStepsWritten() {
        let open = FailoverRecord(id: "fo-7-2", poolID: 7, reason: "r", epoch: 2, startedAt: Date(timeIntervalSince1970: 0))
        var ledger = PoolLedger(record: PoolRecord(poolID: 7, state: .failover), failover: open, stepsWritten: 4)
        let recorded = TransitionRecorder.record(
            [Self.step(.standbyRunning, failover: 2, at: Self.t0)], ledger: &ledger, previous: nil,
            snapshot: Self.snapshot(.failover, current: 2), engineState: nil, now: Self.t0)
        #expect(recorded.transition.steps.map(\.sequence) == [5])
        #expect(recorded.transition.failover?.id == "fo-7-2")
        // No previous snapshot (a resume): no state event.
        #expect(recorded.transition.events.isEmpty)
    }

    @Test func aNotificationBecomesAnOutboxEntryWithTheWebhookBody() throws {
        var ledger = PoolLedger(record: PoolRecord(poolID: 7, state: .failover))
        let notification = EngineNotification(
            id: "n-7-3", kind: .failoverComplete, pool: 7, failover: 1, at: Instant(nanosecondsSinceEpoch: 1_800_000_000_123_000_000),
            message: "standby 102 promoted")
        let recorded = TransitionRecorder.record(
            [.notify(notification)], ledger: &ledger, previous: nil,
            snapshot: Self.snapshot(.recovering, primary: 102, standby: nil, epoch: 2), engineState: nil, now: Self.t0)
        let entry = try #require(recorded.transition.notifications.first)
        #expect(entry.id == "n-7-3" && entry.kind == "failover_complete" && entry.poolID == 7 && entry.attempts == 0)
        #expect(entry.payload == #"{"at":"2027-01-15T08:00:00.123Z","epoch":2,"event":"failover_complete","failover":"fo-7-1","id":"n-7-3","machine_id":7,"message":"standby 102 promoted","primary_gpu_id":102,"standby_gpu_id":null,"state":"recovering"}"#)
        #expect(entry.nextAttemptAt == entry.createdAt)
    }

    /// The work a failover lost is the old primary's checkpoint age, aged back to the detection,
    /// and every notification of that failover carries it.
    @Test func aFailoverRecordsTheWorkItLostAndItsNotificationsCarryIt() throws {
        var ledger = PoolLedger(record: PoolRecord(poolID: 7, state: .active))
        let detected = Self.t0 + .milliseconds(400)
        let now = detected + .milliseconds(100)
        let notification = EngineNotification(id: "n-7-1", kind: .failureDetected, pool: 7, failover: 1, at: detected, message: "failed")
        let recorded = TransitionRecorder.record(
            [Self.step(.detected, failover: 1, at: detected, sinceDetection: .milliseconds(400)), .notify(notification)],
            ledger: &ledger, previous: Self.snapshot(.active), snapshot: Self.snapshot(.failover, current: 1), engineState: nil,
            checkpointAge: 42.5, now: now)
        let failover = try #require(recorded.transition.failover)
        // Checkpointed 42.5 s before `now`; the primary failed (detection's start) 0.5 s before it.
        #expect(abs((failover.workLostSeconds ?? -1) - 42.0) < 1e-6)
        #expect(failover.lastCheckpointAt == Date(timeIntervalSince1970: (now - .milliseconds(42_500)).secondsSinceEpoch))
        let payload = try #require(recorded.transition.notifications.first?.payload)
        #expect(payload.contains(#""work_lost_seconds":42"#), "\(payload)")

        // Without a report: nothing is claimed.
        var other = PoolLedger(record: PoolRecord(poolID: 7, state: .active))
        let unknown = TransitionRecorder.record(
            [Self.step(.detected, failover: 1, at: detected), .notify(notification)],
            ledger: &other, previous: Self.snapshot(.active), snapshot: Self.snapshot(.failover, current: 1), engineState: nil, now: now)
        #expect(unknown.transition.failover?.workLostSeconds == nil)
        let unknownPayload = unknown.transition.notifications.first?.payload ?? ""
        #expect(unknownPayload.contains("failure_detected") && !unknownPayload.contains("work_lost"), "\(unknownPayload)")
    }
}
