import Testing
import WarmpoolEngine
import WarmpoolModel

/// Which liveness reports start a failover, and which are ignored.
@Suite struct LivenessTests {
    @Test func aDisabledPoolIgnoresFailuresUntilEnabled() throws {
        var harness = Harness.active()
        let primary = harness.snapshot.primaryInstanceID!
        _ = try harness.feedThrowing { try $0.disable(now: $1) }
        #expect(harness.snapshot.state == .disabled)
        #expect(harness.snapshot.enabled == false)
        #expect(harness.machine.livenessFailed(instance: primary, epoch: 1, now: harness.now).isEmpty)
        #expect(harness.snapshot.state == .disabled)

        _ = try harness.feedThrowing { try $0.enable(now: $1) }
        #expect(harness.snapshot.state == .active)
        harness.failPrimary(epoch: 1)
        #expect(harness.snapshot.state == .failover)
    }

    @Test func disablingDuringAFailoverLetsItFinish() throws {
        var harness = Harness.active()
        let standby = harness.snapshot.standbyInstanceID!
        harness.failPrimary()
        _ = try harness.feedThrowing { try $0.disable(now: $1) }
        #expect(harness.snapshot.state == .failover, "a half-done failover would leave no primary")
        harness.settle()
        #expect(harness.snapshot.state == .disabled)
        #expect(harness.snapshot.primaryInstanceID == standby)
        #expect(harness.snapshot.standbyState == .stopped)
    }

    @Test func reportsAboutOtherInstancesOrOldEpochsAreIgnored() {
        var harness = Harness.active()
        let (primary, standby) = (harness.snapshot.primaryInstanceID!, harness.snapshot.standbyInstanceID!)
        #expect(harness.machine.livenessFailed(instance: 123_456, epoch: nil, now: harness.now).isEmpty)
        #expect(harness.machine.livenessFailed(instance: primary, epoch: 0, now: harness.now).isEmpty)
        // A stopped standby's agent is silent by design: its silence is no failure.
        #expect(harness.machine.livenessFailed(instance: standby, epoch: 1, now: harness.now).isEmpty)
        #expect(harness.snapshot.state == .active)
    }

    @Test func duplicateAndLateFailuresAreIgnored() {
        var harness = Harness.active()
        let (oldPrimary, standby) = (harness.snapshot.primaryInstanceID!, harness.snapshot.standbyInstanceID!)
        harness.failPrimary(epoch: 1)
        for _ in 0..<5 { harness.step() }
        let during = harness.snapshot
        #expect(harness.machine.livenessFailed(instance: oldPrimary, epoch: 1, now: harness.now).isEmpty)
        #expect(harness.machine.livenessFailed(instance: oldPrimary, epoch: nil, now: harness.now).isEmpty)
        #expect(harness.snapshot == during)
        harness.settle()

        // After the failover: the old primary's last reports, and the new primary's from before
        // its promotion, change nothing.
        let after = harness.snapshot
        #expect(harness.machine.livenessFailed(instance: oldPrimary, epoch: 1, now: harness.now).isEmpty)
        #expect(harness.machine.livenessFailed(instance: standby, epoch: 1, now: harness.now).isEmpty)
        #expect(harness.snapshot == after)
        #expect(harness.notifications.filter { $0.kind == .failureDetected }.count == 1)
    }

    @Test func aLostStandbyIsOnlyReplaced() {
        var harness = Harness.active()
        let (primary, standby) = (harness.snapshot.primaryInstanceID!, harness.snapshot.standbyInstanceID!)
        harness.timeline = []
        harness.notifications = []
        harness.leaseLog = []
        harness.feed(harness.machine.standbyLost(instance: standby, reason: "provider lists it offline", now: harness.now))
        #expect(harness.snapshot.state == .recovering)
        harness.settle()

        let snapshot = harness.snapshot
        #expect(snapshot.state == .active)
        #expect(snapshot.primaryInstanceID == primary)
        #expect(snapshot.standbyInstanceID != standby && snapshot.standbyInstanceID != nil)
        #expect(snapshot.epoch == 1)
        #expect(snapshot.failoverCount == 0)
        #expect(harness.steps == [.standbyAbandoned, .standbyProvisioning, .standbyReady])
        #expect(harness.timeline.allSatisfy { $0.failover == nil && $0.sinceDetection == nil })
        #expect(harness.notificationKinds == [.standbyProvisioned])
        #expect(harness.leaseLog == [.revokeLease(snapshot.standbyInstanceID!)],
                "the primary's lease is not touched; the new standby's agent gets none")
        #expect(harness.provider.instances[standby]!.destroyed)
        #expect(harness.commands { if case .stopInstance(_, primary) = $0 { true } else { false } }.isEmpty,
                "the primary is never stopped")
        #expect(harness.machine.standbyLost(instance: 31_337, reason: "unknown", now: harness.now).isEmpty)
    }

    @Test func theNewPrimaryFailingWhileRecoveringStartsASecondFailoverWithTheHalfMadeStandby() {
        var harness = Harness.active(freeGPUs: 5)
        let firstStandby = harness.snapshot.standbyInstanceID!
        harness.failPrimary()
        // Run until the new standby exists and is being stopped.
        while harness.commands({ if case .stopInstance(_, let id) = $0 { id > firstStandby } else { false } }).isEmpty {
            harness.step()
        }
        #expect(harness.snapshot.state == .recovering)
        let halfMade = harness.snapshot.standbyInstanceID!
        #expect(harness.snapshot.primaryInstanceID == firstStandby)

        harness.failPrimary(epoch: 2)
        #expect(harness.snapshot.state == .failover)
        #expect(harness.snapshot.currentFailover == 2)
        harness.settle()

        let snapshot = harness.snapshot
        #expect(snapshot.state == .active)
        #expect(snapshot.primaryInstanceID == halfMade, "the standby being made takes over")
        #expect(snapshot.epoch == 3)
        #expect(snapshot.failoverCount == 2)
        #expect(harness.provider.instances[firstStandby]!.destroyed)
        #expect(harness.provider.liveInstances.count == 2)
        #expect(harness.provider.creations.values.allSatisfy { $0 == 1 })
        #expect(harness.timeline.filter { $0.step == .promoted }.map(\.failover) == [1, 2])
    }

    @Test func aFailureInterruptingAStandbyCreateAdoptsThatInstance() {
        var harness = Harness.active(freeGPUs: 4)
        harness.failPrimary()
        // Stop just as the recovery's create was carried out, before its answer arrives.
        while !(harness.inbox.count == 1 && harness.commandLog.last.map({ if case .ensureInstance = $0.action { true } else { false } }) == true) {
            harness.step()
        }
        harness.inbox = []  // the answer is lost with the failure below taking over
        let label = harness.provider.liveInstances.last!.label
        harness.failPrimary(epoch: 2)
        harness.settle()
        #expect(harness.snapshot.state == .active)
        #expect(harness.provider.creations[label] == 1, "adopted by label, not created twice")
        #expect(harness.provider.liveInstances.count == 2)
        #expect(harness.snapshot.primaryInstanceID == harness.provider.liveInstances.first { $0.label == label }?.id)
    }
}

@Suite struct ProvisioningFailureTests {
    @Test func aPrimaryDyingWhileTheFirstStandbyIsMadeIsFailedOver() {
        var harness = Harness(request: ProvisionRequest(poolID: 7, hostMachineID: 42),
                              provider: FakeProvider(host: 42, freeGPUs: 4))
        while !harness.steps.contains(.standbyProvisioning) { harness.step() }
        let primary = harness.snapshot.primaryInstanceID!
        // The standby's create is in flight; the answer is lost as the failure takes over.
        harness.inbox = []
        let standbyLabel = harness.provider.liveInstances.last!.label
        #expect(standbyLabel == "wp-7-standby-e1-a2")
        harness.failPrimary(epoch: 1)
        #expect(harness.snapshot.state == .failover)
        harness.settle()
        #expect(harness.snapshot.state == .active)
        #expect(harness.snapshot.epoch == 2)
        #expect(harness.provider.instances[primary]!.destroyed)
        #expect(harness.provider.creations[standbyLabel] == 1, "the half-made standby was adopted, not made twice")
        #expect(harness.provider.liveInstances.first { $0.label == standbyLabel }?.id == harness.snapshot.primaryInstanceID)
    }

    @Test func aPrimaryDyingBeforeItRunsIsLeftToProvisioning() {
        var harness = Harness(request: ProvisionRequest(poolID: 7, hostMachineID: 42),
                              provider: FakeProvider(host: 42, freeGPUs: 4))
        while !harness.steps.contains(.primaryCreated) { harness.step() }
        let before = harness.snapshot
        #expect(harness.machine.livenessFailed(instance: before.primaryInstanceID!, epoch: nil, now: harness.now).isEmpty)
        #expect(harness.snapshot == before)
    }
}
