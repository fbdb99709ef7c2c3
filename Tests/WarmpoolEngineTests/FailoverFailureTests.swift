import Testing
import WarmpoolEngine
import WarmpoolModel

@Suite struct FailoverFailureTests {
    @Test func aStandbyThatWillNotStartGivesWayToTheNextFreeGPU() {
        let settings = EngineSettings(standbyStartTimeout: .seconds(20))
        var harness = Harness.active(freeGPUs: 4, settings: settings)
        let (oldPrimary, standby) = (harness.snapshot.primaryInstanceID!, harness.snapshot.standbyInstanceID!)
        harness.provider.neverRuns = [standby]
        harness.timeline = []
        harness.notifications = []
        harness.failPrimary()
        harness.settle()

        let snapshot = harness.snapshot
        #expect(snapshot.state == .active)
        let replacement = snapshot.primaryInstanceID!
        #expect(replacement != standby && replacement != oldPrimary)
        #expect(harness.provider.instances[replacement]?.label == "wp-7-primary-e2-a3")
        #expect(harness.provider.instances[standby]!.destroyed)
        #expect(harness.provider.instances[oldPrimary]!.destroyed)
        #expect(harness.steps == [
            .detected, .fencing, .fencing, .fenced, .epochIncreased, .standbyStarting, .standbyAbandoned, .standbyStarting,
            .standbyRunning, .sshReady, .volumeVerified, .promoted, .standbyProvisioning, .standbyReady,
        ])
        let abandoned = harness.timeline.first { $0.step == .standbyAbandoned }!
        #expect(abandoned.detail == "instance \(standby): starting the standby did not finish by its deadline")
        #expect(harness.notificationKinds == [.failureDetected, .standbyStarting, .failoverComplete, .standbyProvisioned],
                "standby_starting is announced once per failover")
        #expect(harness.leaseLog.last { if case .grantLease = $0 { true } else { false } } == .grantLease(replacement, epoch: 2))
        #expect(harness.leaseLog.contains(.revokeLease(replacement)), "withheld from its create until its promotion")
    }

    @Test func verificationFailureGivesWayToo() {
        var harness = Harness.active(freeGPUs: 4)
        let standby = harness.snapshot.standbyInstanceID!
        harness.provider.failsVerification = [standby]
        harness.failPrimary()
        harness.settle()
        #expect(harness.snapshot.state == .active)
        #expect(harness.snapshot.primaryInstanceID != standby)
        #expect(harness.provider.instances[standby]!.destroyed)
        let abandoned = harness.timeline.first { $0.step == .standbyAbandoned }!
        #expect(abandoned.detail == "instance \(standby): verification failed: volume is not mounted at /data")
        #expect(harness.commands { if case .verify(_, _, _, _, .required) = $0 { true } else { false } }.count == 2)
    }

    @Test func sshNotReadyYetIsRetriedUntilTheDeadline() {
        let settings = EngineSettings(verifyTimeout: .seconds(10), pollInterval: .seconds(1))
        var harness = Harness.active(freeGPUs: 2, settings: settings)
        let standby = harness.snapshot.standbyInstanceID!
        harness.provider.refusesSSH = [standby]
        harness.failPrimary()
        harness.settle()
        let verifies = harness.commands { if case .verify = $0 { true } else { false } }.count
        #expect(verifies >= 9 && verifies <= 11, "one attempt per poll interval for 10 s: \(verifies)")
        #expect(harness.snapshot.state == .degraded, "no GPU left for a replacement")
        let abandoned = harness.timeline.first { $0.step == .standbyAbandoned }!
        #expect(abandoned.detail?.hasSuffix("(last error: connection refused)") == true)
    }

    @Test func noFreeGPULeftDegradesThePoolWithNotifications() {
        var harness = Harness.active(freeGPUs: 2)
        let (oldPrimary, standby) = (harness.snapshot.primaryInstanceID!, harness.snapshot.standbyInstanceID!)
        harness.provider.neverRuns = [standby]
        harness.notifications = []
        harness.failPrimary()
        harness.settle()

        let snapshot = harness.snapshot
        #expect(snapshot.state == .degraded)
        #expect(snapshot.primaryInstanceID == nil)
        #expect(snapshot.standbyInstanceID == nil)
        #expect(snapshot.standbyState == StandbyState.none)
        #expect(snapshot.errorMessage == "no free GPU left on host 42 for a new primary: the pool needs a GPU of the host to free up, or whole-host recovery")
        #expect(snapshot.degradedRung == .needsWholeHostRecovery)
        #expect(snapshot.failoverCount == 0)
        #expect(harness.notificationKinds == [.failureDetected, .standbyStarting, .failoverFailed, .poolDegraded])
        #expect(harness.notifications.map(\.id).suffix(2) == ["wp-7-failover_failed-1", "wp-7-pool_degraded-1"])
        #expect(harness.steps.last == .degraded)
        #expect(harness.provider.liveInstances.isEmpty, "both the fenced primary and the dead standby are destroyed")
        #expect(harness.provider.instances[oldPrimary]!.destroyed)
        #expect(harness.timers.count == 1 && harness.timers.values.first == snapshot.nextRetryAt,
                "only the next look for a free GPU to rebuild the primary on")
    }

    @Test func providerErrorsBeyondTheBudgetFailTheFailover() {
        var harness = Harness.active(freeGPUs: 4)
        let standby = harness.snapshot.standbyInstanceID!
        harness.provider.failures["start"] = [.failure(message: "HTTP 400: instance locked", retryable: false)]
        harness.provider.failures["offers"] = Array(repeating: .failure(message: "HTTP 502", retryable: true), count: 3)
        harness.notifications = []
        harness.failPrimary()
        harness.settle()

        #expect(harness.snapshot.state == .error)
        #expect(harness.snapshot.errorMessage == "failover 1 failed: HTTP 502")
        #expect(harness.snapshot.primaryInstanceID == nil)
        #expect(harness.notificationKinds == [.failureDetected, .standbyStarting, .failoverFailed])
        #expect(harness.steps.suffix(2) == [.standbyAbandoned, .failed])
        #expect(harness.provider.instances[standby]!.destroyed)
        #expect(harness.commands { if case .findFreeOffers = $0 { true } else { false } }.count == 3 + 1,
                "three attempts in the failover, one at provisioning")
    }

    @Test func retryableErrorsWithinTheBudgetDoNotDisturbTheFailover() {
        var harness = Harness.active()
        let standby = harness.snapshot.standbyInstanceID!
        harness.provider.failures["start"] = Array(repeating: .failure(message: "HTTP 503", retryable: true), count: 2)
        harness.provider.failures["poll"] = [.failure(message: "timeout", retryable: true)]
        harness.failPrimary()
        harness.settle()
        #expect(harness.snapshot.state == .active)
        #expect(harness.snapshot.primaryInstanceID == standby)
        #expect(!harness.steps.contains(.standbyAbandoned))
    }

    /// The provider-faults drill's case: a standby booting while about one provider call in
    /// three fails. Scattered errors among good polls are a flaky provider, not a failed step.
    @Test func scatteredPollErrorsWhileTheStandbyBootsDoNotAbandonIt() {
        var harness = Harness.active()
        let standby = harness.snapshot.standbyInstanceID!
        harness.provider.slowBoots[standby] = 8
        let timeout = ProviderOutcome.failure(message: "timeout", retryable: true)
        // Five errors, never three in a row.
        harness.provider.failures["poll"] = [nil, timeout, nil, timeout, nil, nil, timeout, nil, timeout, nil, timeout]
        harness.failPrimary()
        harness.settle()
        #expect(!harness.steps.contains(.standbyAbandoned))
        #expect(harness.snapshot.state == .active)
        #expect(harness.snapshot.primaryInstanceID == standby)
        #expect(harness.provider.failures["poll"]?.isEmpty == true, "every injected answer was used")
    }

    @Test func threeErrorsInARowStillFailTheStep() {
        var harness = Harness.active()
        let standby = harness.snapshot.standbyInstanceID!
        harness.provider.slowBoots[standby] = 4
        let timeout = ProviderOutcome.failure(message: "timeout", retryable: true)
        harness.provider.failures["poll"] = [nil, nil, timeout, timeout, timeout]
        harness.failPrimary()
        harness.settle()
        #expect(harness.steps.contains(.standbyAbandoned))
    }

    @Test func replacementsStopAtTheLimit() {
        let settings = EngineSettings(standbyStartTimeout: .seconds(10), createTimeout: .seconds(10), replacementLimit: 2)
        var harness = Harness.active(freeGPUs: 6, settings: settings)
        harness.provider.neverRuns = [harness.snapshot.standbyInstanceID!]
        harness.provider.brokenOffers = Set(harness.provider.offers.map(\.id))
        harness.failPrimary()
        harness.settle()
        #expect(harness.snapshot.state == .error)
        #expect(harness.steps.filter { $0 == .standbyAbandoned }.count == 3, "the standby and two replacements")
        #expect(harness.snapshot.errorMessage?.hasPrefix("failover 1 failed: 2 replacement(s) failed; last:") == true)
        #expect(harness.provider.liveInstances.isEmpty)
    }
}
