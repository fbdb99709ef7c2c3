import Foundation
import Testing
import WarmpoolEngine
import WarmpoolModel

@Suite struct FailoverTests {
    /// The second `fencing` says the provider confirmed the stop and how long the lease has left.
    static let happySteps: [TimelineEntry.Step] = [
        .detected, .fencing, .fencing, .fenced, .epochIncreased, .standbyStarting, .standbyRunning, .sshReady, .volumeVerified,
        .promoted, .standbyProvisioning, .standbyReady,
    ]

    @Test func happyFailoverPromotesTheStandbyAndProvisionsANewOne() {
        var harness = Harness.active()
        let before = harness.snapshot
        let (oldPrimary, standby) = (before.primaryInstanceID!, before.standbyInstanceID!)
        harness.timeline = []
        harness.notifications = []
        harness.leaseLog = []
        let detectedAt = harness.now

        harness.failPrimary(epoch: 1)
        #expect(harness.snapshot.state == .failover)
        #expect(harness.snapshot.currentFailover == 1)
        harness.settle()

        let after = harness.snapshot
        #expect(after.state == .active)
        #expect(after.primaryInstanceID == standby)
        #expect(after.standbyInstanceID != nil && after.standbyInstanceID != oldPrimary && after.standbyInstanceID != standby)
        #expect(after.standbyState == .stopped)
        #expect(after.epoch == 2)
        #expect(after.failoverCount == 1)
        #expect(after.currentFailover == nil)
        #expect(after.lastFailoverAt != nil)
        #expect(after.primarySSH == SSHEndpoint(host: "10.0.0.\(standby.rawValue % 250)", port: 22))

        #expect(harness.steps == Self.happySteps)
        let entries = harness.timeline
        #expect(entries.allSatisfy { $0.failover == 1 && $0.pool == 7 })
        #expect(entries.first?.at == detectedAt)
        #expect(entries.first?.sinceDetection == .zero)
        for (previous, entry) in zip(entries, entries.dropFirst()) {
            #expect(entry.at >= previous.at)
            #expect(entry.sincePrevious == entry.at - previous.at)
            #expect(entry.sinceDetection == entry.at - detectedAt)
        }
        let promoted = entries.first { $0.step == .promoted }!
        #expect(after.lastRecoveryDuration == promoted.sinceDetection)
        #expect(entries.first { $0.step == .epochIncreased }?.detail == "epoch 1 -> 2")

        #expect(harness.notificationKinds == [.failureDetected, .standbyStarting, .failoverComplete, .standbyProvisioned])
        #expect(harness.notifications.map(\.id) == [
            "wp-7-failure_detected-1", "wp-7-standby_starting-1", "wp-7-failover_complete-1", "wp-7-standby_provisioned-2",
        ])
        #expect(harness.leaseLog == [.revokeLease(oldPrimary), .grantLease(standby, epoch: 2), .revokeLease(after.standbyInstanceID!)])

        // Fencing came before the start, and the start before the promotion's grant.
        let log = harness.commandLog.map(\.action)
        let stop = log.firstIndex { $0 == .stopInstance($0.operation!, oldPrimary) }!
        let start = log.firstIndex { $0 == .startInstance($0.operation!, standby) }!
        #expect(stop < start)
        #expect(harness.provider.effectiveStarts[standby] == 1)
        #expect(harness.provider.instances[oldPrimary]!.destroyed, "the fenced primary is destroyed once replaced")
        #expect(harness.provider.liveInstances.count == 2)
        #expect(harness.provider.liveInstances.last?.label == "wp-7-standby-e2-a3")
    }

    @Test func testFailoverRunsTheSameSequenceWithoutDetection() throws {
        var harness = Harness.active()
        harness.timeline = []
        harness.notifications = []
        _ = try harness.feedThrowing { try $0.testFailover(now: $1) }
        harness.settle()
        #expect(harness.snapshot.state == .active)
        #expect(harness.snapshot.failoverCount == 1)
        #expect(harness.steps == Array(Self.happySteps.dropFirst()))
        #expect(harness.timeline.first?.detail?.hasSuffix("(test)") == true)
        #expect(harness.notificationKinds == [.standbyStarting, .failoverComplete, .standbyProvisioned])
        #expect(harness.snapshot.lastRecoveryDuration! > .zero)
    }

    @Test func testFailoverNeedsAnActiveEnabledPool() throws {
        var harness = Harness.active()
        _ = try harness.machine.disable(now: harness.now)
        #expect(throws: EngineViolation("pool 7 is disabled")) { try harness.machine.testFailover(now: harness.now) }
        _ = try harness.machine.enable(now: harness.now)
        harness.failPrimary()
        #expect(throws: EngineViolation("a test failover needs an active pool; pool 7 is failover")) {
            try harness.machine.testFailover(now: harness.now)
        }
    }

    // Promotion needs the provider's word that the old primary stopped AND the end of its lease,
    // in either order (issue 17). Revoked at detection, a 5 s lease and a 1 s margin: 6 s.

    @Test func aConfirmedStopStillWaitsForTheLease() {
        let settings = EngineSettings(leaseDuration: .seconds(5), leaseSafetyMargin: .seconds(1))
        var harness = Harness.active(settings: settings)
        let oldPrimary = harness.snapshot.primaryInstanceID!
        let detectedAt = harness.now
        harness.failPrimary()
        harness.settle()
        #expect(harness.snapshot.state == .active)
        let fenced = harness.timeline.first { $0.step == .fenced }!
        #expect(fenced.at == detectedAt + .seconds(6), "the provider answered within 200 ms; the lease decides")
        #expect(fenced.detail == "the provider reports instance \(oldPrimary) stopped; its lease ran out (the provider confirmed first)")
        let waiting = harness.timeline.filter { $0.step == .fencing }.last!
        #expect(waiting.detail?.contains("waiting") == true && waiting.detail?.contains("for its lease to run out") == true)
        let start = harness.commandLog.first { if case .startInstance = $0.action { true } else { false } }!
        #expect(start.at >= detectedAt + .seconds(6), "the standby starts only once the old lease is certainly over")
    }

    @Test func aGoneInstanceStillWaitsForTheLease() {
        // A 404 or `{"instances": null}` may be eventually consistent: it proves nothing sooner.
        let settings = EngineSettings(leaseDuration: .seconds(5), leaseSafetyMargin: .seconds(1))
        var harness = Harness.active(settings: settings)
        let oldPrimary = harness.snapshot.primaryInstanceID!
        harness.provider.instances[oldPrimary]!.destroyed = true
        let detectedAt = harness.now
        harness.failPrimary()
        harness.settle()
        let fenced = harness.timeline.first { $0.step == .fenced }!
        #expect(fenced.at == detectedAt + .seconds(6))
        #expect(fenced.detail?.hasPrefix("the provider no longer lists instance \(oldPrimary)") == true)
    }

    @Test func aLeaseThatRanOutFirstStillWaitsForTheProvider() {
        let settings = EngineSettings(leaseDuration: .seconds(5), leaseSafetyMargin: .seconds(1), fenceTimeout: .seconds(20))
        var harness = Harness.active(settings: settings)
        let oldPrimary = harness.snapshot.primaryInstanceID!
        harness.provider.ignoresStop = [oldPrimary]
        let detectedAt = harness.now
        harness.failPrimary()
        // Well past the lease (6 s), the provider still shows it running: nothing is started.
        while harness.now < detectedAt + .seconds(15) { harness.step() }
        #expect(harness.snapshot.state == .failover)
        #expect(harness.commands { if case .startInstance = $0 { true } else { false } }.isEmpty)
        #expect(!harness.steps.contains(.fenced))
        // The host is reachable again: the next stop lands.
        harness.provider.ignoresStop = []
        harness.settle()
        #expect(harness.snapshot.state == .active)
        let fenced = harness.timeline.first { $0.step == .fenced }!
        #expect(fenced.at > detectedAt + .seconds(20), "asked again after the 20 s fence timeout")
        #expect(fenced.detail == "the provider reports instance \(oldPrimary) stopped; its lease had run out (the lease ended first)")
        let asked = harness.timeline.filter { $0.step == .fencing }.compactMap(\.detail)
        #expect(asked.contains { $0.hasPrefix("waiting for the provider to confirm instance \(oldPrimary) stopped") })
    }

    @Test func aRefusedStopIsFollowedByALookAtTheProvider() {
        let settings = EngineSettings(leaseDuration: .seconds(5), leaseSafetyMargin: .seconds(1))
        var harness = Harness.active(settings: settings)
        let oldPrimary = harness.snapshot.primaryInstanceID!
        harness.provider.failures["stop"] = [.failure(message: "host unreachable", retryable: false)]
        let detectedAt = harness.now
        harness.failPrimary()
        harness.settle()
        // The refused stop is asked again after the poll shows it still running; then both hold.
        #expect(harness.snapshot.state == .active)
        let fenced = harness.timeline.first { $0.step == .fenced }!
        #expect(fenced.at >= detectedAt + .seconds(6))
        #expect(harness.timeline.contains { $0.detail?.hasPrefix("stop of instance \(oldPrimary) not accepted (host unreachable)") == true })
    }

    @Test func aRestartInEachFencingStepKeepsBothConditions() {
        // Killed right after each engine event of the fencing (before or after its effects), the
        // controller resumes with a full lease from the restart: the old one may have been renewed.
        for event in 1...6 {
            for point in [Harness.CrashPoint.beforeEffects, .afterEffects] {
                let settings = EngineSettings(leaseDuration: .seconds(5), leaseSafetyMargin: .seconds(1))
                var harness = Harness.active(settings: settings)
                harness.timeline = []
                let oldPrimary = harness.snapshot.primaryInstanceID!
                harness.crash = (atEvent: harness.events + event, point: point)
                harness.failPrimary()
                harness.settle()
                #expect(harness.snapshot.state == .active, "event \(event) \(point)")
                let fenced = harness.timeline.first { $0.step == .fenced }
                let revocations = harness.leaseLog.filter { $0 == .revokeLease(oldPrimary) }.count
                #expect(fenced != nil && revocations >= 1)
                #expect(harness.provider.instances[oldPrimary]!.destroyed)
            }
        }
    }

    @Test func aLongerLeaseAfterARestartAppliesToAFailoverUnderWay() {
        var harness = Harness.active(settings: EngineSettings(leaseDuration: .seconds(2), leaseSafetyMargin: .seconds(1)))
        harness.failPrimary()
        let restartedAt = harness.now
        // The controller comes back configured with a 30 s lease.
        let json = try! JSONEncoder().encode(harness.machine)
        harness.machine = try! JSONDecoder().decode(PoolMachine.self, from: json)
        harness.timers = [:]
        harness.inbox = []
        harness.machine.adopt(settings: EngineSettings(leaseDuration: .seconds(30), leaseSafetyMargin: .seconds(1)), now: restartedAt)
        harness.feed(harness.machine.resume(now: restartedAt))
        harness.settle()
        #expect(harness.machine.settings.leaseDuration == .seconds(30))
        let fenced = harness.timeline.first { $0.step == .fenced }!
        #expect(fenced.at >= restartedAt + .seconds(31))
    }

    @Test func aShorterLeaseAfterARestartWaitsOutTheLongerOne() {
        // Leases granted before the restart lasted 30 s: a failover begun after it waits them out.
        var harness = Harness.active(settings: EngineSettings(leaseDuration: .seconds(30), leaseSafetyMargin: .seconds(1)))
        let restartedAt = harness.now
        harness.machine.adopt(settings: EngineSettings(leaseDuration: .seconds(2), leaseSafetyMargin: .seconds(1)), now: restartedAt)
        harness.feed(harness.machine.resume(now: restartedAt))
        harness.now = harness.now + .seconds(5)
        harness.timeline = []
        harness.failPrimary()
        harness.settle()
        let fenced = harness.timeline.first { $0.step == .fenced }!
        #expect(fenced.at >= restartedAt + .seconds(31), "not 5 + 2 + 1 s: the previous run's 30 s leases")
        // Long after the restart, the new lease alone counts.
        harness.now = harness.now + .seconds(60)
        harness.timeline = []
        let failedAt = harness.now
        harness.failPrimary()
        harness.settle()
        let next = harness.timeline.first { $0.step == .fenced }!
        #expect(next.at == failedAt + .seconds(3))
    }
}

extension Harness {
    /// Runs one of the machine's throwing commands and carries out its actions.
    mutating func feedThrowing(_ body: (inout PoolMachine, Instant) throws -> [EngineAction]) throws -> [EngineAction] {
        let actions = try body(&machine, now)
        feed(actions)
        return actions
    }
}
