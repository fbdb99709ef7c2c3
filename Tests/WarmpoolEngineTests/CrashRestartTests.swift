import Foundation
import Testing
import WarmpoolEngine
import WarmpoolModel

/// The controller may die after any event. The shell saved the state (and the timeline and
/// notifications) before carrying out the actions; after a restart it decodes the state and
/// calls resume. The failover must finish exactly as without the crash.
@Suite struct CrashRestartTests {
    @Test(arguments: [Harness.CrashPoint.beforeEffects, .afterEffects])
    func crashAfterEveryEventOfAFailover(point: Harness.CrashPoint) {
        var baseline = Harness.active()
        let startEvent = baseline.events
        baseline.failPrimary()
        baseline.settle()
        let failoverEvents = baseline.events - startEvent
        #expect(failoverEvents >= 20, "a failover is many events: \(failoverEvents)")
        let baselineSteps = baseline.steps
        let baselineNotifications = baseline.notifications.map(\.id)

        for offset in 1...failoverEvents {
            var harness = Harness.active()
            let standby = harness.snapshot.standbyInstanceID!
            harness.crash = (harness.events + offset, point)
            harness.failPrimary()
            harness.settle()
            let context = Comment(rawValue: "crash after failover event \(offset) of \(failoverEvents), \(point)")

            #expect(harness.restarts == 1, context)
            #expect(harness.snapshot.state == .active, context)
            #expect(harness.snapshot.primaryInstanceID == standby, context)
            #expect(harness.snapshot.epoch == 2, context)
            #expect(harness.snapshot.failoverCount == 1, context)
            #expect(harness.provider.effectiveStarts[standby] == 1, "one start of the standby; \(context)")
            #expect(harness.provider.effectiveStarts.count == 1, context)
            #expect(harness.provider.creations.values.allSatisfy { $0 == 1 }, "one create per label; \(context)")
            #expect(harness.provider.liveInstances.count == 2, context)
            #expect(harness.steps == baselineSteps, context)
            #expect(harness.notifications.map(\.id) == baselineNotifications, context)
            // After the crash the old primary's lease is revoked again before anything else.
            #expect(harness.leaseLog.last { if case .grantLease = $0 { true } else { false } } == .grantLease(standby, epoch: 2), context)
            #expect(harness.leaseLog.last == .revokeLease(harness.snapshot.standbyInstanceID!), context)
        }
    }

    @Test func aCrashDuringTheLeaseWaitRevokesAgainAndWaitsAFullLeaseFromTheRestart() {
        let settings = EngineSettings(leaseDuration: .seconds(5), leaseSafetyMargin: .seconds(1), fenceTimeout: .seconds(2))
        var harness = Harness.active(settings: settings)
        let oldPrimary = harness.snapshot.primaryInstanceID!
        harness.failPrimary()
        // The provider confirmed the stop; the lease is what the engine waits for now.
        while !harness.timeline.contains(where: { $0.detail?.contains("for its lease to run out") == true }) { harness.step() }
        harness.now = harness.now + .seconds(1)
        let restartedAt = harness.now
        harness.leaseLog = []
        harness.restart()
        #expect(harness.leaseLog == [.revokeLease(oldPrimary), .revokeLease(harness.snapshot.standbyInstanceID!)],
                "the old primary's lease revoked again, and the standby's withheld")
        harness.settle()
        #expect(harness.timeline.first { $0.step == .fenced }?.at == restartedAt + .seconds(6))
        #expect(harness.snapshot.state == .active)
    }

    @Test func staleAndDuplicateAnswersAreIgnored() {
        var harness = Harness.active()
        let oldPrimary = harness.snapshot.primaryInstanceID!
        harness.failPrimary()
        // The stop is in flight; the answer that would have come is held back.
        guard case .provider(let staleOperation, let staleOutcome) = harness.inbox.first else {
            Issue.record("no stop in flight")
            return
        }
        #expect(harness.commandLog.last?.action == .stopInstance(staleOperation, oldPrimary))
        harness.restart()  // resume sends the stop again under a new operation id
        let resent = harness.commandLog.last!.action
        #expect(resent.operation != staleOperation)
        #expect(resent == .stopInstance(resent.operation!, oldPrimary))

        let before = harness.snapshot
        #expect(harness.machine.providerResult(staleOperation, staleOutcome, now: harness.now).isEmpty)
        #expect(harness.machine.providerResult(staleOperation, .success(.instance(nil)), now: harness.now).isEmpty)
        #expect(harness.machine.verificationResult(staleOperation, .passed(sshReadyAt: harness.now), now: harness.now).isEmpty)
        #expect(harness.machine.providerResult(OperationID(rawValue: 99_999), .success(.accepted), now: harness.now).isEmpty)
        #expect(harness.snapshot == before)

        // The current answer still counts, once.
        harness.step()
        let afterAnswer = harness.snapshot
        #expect(harness.machine.providerResult(resent.operation!, .success(.accepted), now: harness.now).isEmpty,
                "a duplicate of an answer already taken is stale")
        #expect(harness.snapshot == afterAnswer)
        harness.settle()
        #expect(harness.snapshot.state == .active)
    }

    @Test func staleTimersAreIgnored() {
        var harness = Harness.active()
        harness.failPrimary()
        let timersBefore = Array(harness.timers.keys)
        #expect(!timersBefore.isEmpty)
        harness.restart()
        let before = harness.snapshot
        for timer in timersBefore {
            #expect(harness.machine.timerFired(timer, now: harness.now + .seconds(3600)).isEmpty)
        }
        #expect(harness.machine.timerFired(TimerID(rawValue: 424_242), now: harness.now).isEmpty)
        #expect(harness.snapshot == before)
    }

    @Test func theSavedStateRoundTripsMidFailover() throws {
        var harness = Harness.active()
        harness.failPrimary()
        for _ in 0..<6 { harness.step() }
        let encoder = JSONEncoder()
        encoder.outputFormatting = .sortedKeys
        let json = try encoder.encode(harness.machine)
        let decoded = try JSONDecoder().decode(PoolMachine.self, from: json)
        #expect(try encoder.encode(decoded) == json)
        #expect(decoded.snapshot == harness.snapshot)
    }

    @Test func idsAndInstantsAreBareNumbersInTheSavedJSON() throws {
        let encoder = JSONEncoder()
        #expect(String(decoding: try encoder.encode(OperationID(rawValue: 5)), as: UTF8.self) == "5")
        #expect(String(decoding: try encoder.encode(TimerID(rawValue: 6)), as: UTF8.self) == "6")
        #expect(String(decoding: try encoder.encode(Instant(nanosecondsSinceEpoch: 7)), as: UTF8.self) == "7")
    }
}
