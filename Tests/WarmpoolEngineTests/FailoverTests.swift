import Testing
import WarmpoolEngine
import WarmpoolModel

@Suite struct FailoverTests {
    static let happySteps: [TimelineEntry.Step] = [
        .detected, .fencing, .fenced, .epochIncreased, .standbyStarting, .standbyRunning, .sshReady, .volumeVerified,
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
        #expect(harness.leaseLog == [.revokeLease(oldPrimary), .grantLease(standby, epoch: 2)])

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

    @Test func unconfirmedFenceWaitsForTheLeaseToRunOut() {
        let settings = EngineSettings(leaseDuration: .seconds(5), leaseSafetyMargin: .seconds(1), fenceTimeout: .seconds(2))
        var harness = Harness.active(settings: settings)
        let oldPrimary = harness.snapshot.primaryInstanceID!
        let standby = harness.snapshot.standbyInstanceID!
        harness.provider.ignoresStop = [oldPrimary]
        let detectedAt = harness.now
        harness.failPrimary()
        harness.settle()

        #expect(harness.snapshot.state == .active)
        #expect(harness.snapshot.primaryInstanceID == standby)
        let fenced = harness.timeline.first { $0.step == .fenced }!
        #expect(fenced.detail == "lease certainly expired, stop not confirmed")
        #expect(fenced.at == detectedAt + .seconds(6), "revoked at detection, 5 s lease, 1 s margin")
        let start = harness.commandLog.first { if case .startInstance = $0.action { true } else { false } }!
        #expect(start.at >= detectedAt + .seconds(6), "the standby starts only once the old lease is certainly over")
        let waiting = harness.timeline.filter { $0.step == .fencing }
        #expect(waiting.count == 2)
        #expect(waiting.last?.detail?.contains("waiting for the lease") == true)
    }

    @Test func aRefusedStopAlsoFallsBackToTheLease() {
        let settings = EngineSettings(leaseDuration: .seconds(5), leaseSafetyMargin: .seconds(1))
        var harness = Harness.active(settings: settings)
        harness.provider.failures["stop"] = [.failure(message: "host unreachable", retryable: false)]
        let detectedAt = harness.now
        harness.failPrimary()
        harness.settle()
        #expect(harness.snapshot.state == .active)
        let fenced = harness.timeline.first { $0.step == .fenced }!
        #expect(fenced.at == detectedAt + .seconds(6))
    }

    @Test func confirmedStopDoesNotWaitForTheLease() {
        let settings = EngineSettings(leaseDuration: .seconds(60))
        var harness = Harness.active(settings: settings)
        let oldPrimary = harness.snapshot.primaryInstanceID!
        let detectedAt = harness.now
        harness.failPrimary()
        harness.settle()
        let fenced = harness.timeline.first { $0.step == .fenced }!
        #expect(fenced.at - detectedAt < .seconds(5))
        #expect(fenced.detail == "provider reports instance \(oldPrimary) stopped")
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
