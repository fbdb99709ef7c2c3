import Foundation
import Testing
import WarmpoolEngine
import WarmpoolModel

/// The remediation ladder (issue 19): start the standby; still `scheduling` after
/// `schedulingTimeout`, a new instance on a free GPU of the host; none free, degraded with the rung
/// named, and back when a GPU frees up (or on `repair`).
@Suite struct MarketplaceLadderTests {
    @Test func aStandbyStuckInSchedulingGivesWayAfterTheBoundToANewInstanceOnAFreeGPU() {
        let settings = EngineSettings(schedulingTimeout: .seconds(45), pollInterval: .seconds(1))
        var harness = Harness.active(freeGPUs: 4, settings: settings)
        let standby = harness.snapshot.standbyInstanceID!
        harness.provider.scheduling = [standby]
        harness.timeline = []
        harness.failPrimary()
        harness.settle()

        #expect(harness.snapshot.state == .active)
        let replacement = harness.snapshot.primaryInstanceID!
        #expect(replacement != standby)
        #expect(harness.provider.instances[standby]!.destroyed, "the scheduled start is cancelled with it")
        let abandoned = harness.timeline.first { $0.step == .standbyAbandoned }!
        #expect(abandoned.detail?.contains("instance \(standby): instance \(standby) still scheduling after 45") == true, "\(abandoned.detail ?? "")")
        #expect(abandoned.detail?.hasSuffix("its GPU was likely rented by another user") == true)
        let starting = harness.timeline.first { $0.step == .standbyStarting }!
        let waited = abandoned.at - starting.at
        #expect(waited >= .seconds(45) && waited < .seconds(47), "bounded by the scheduling timeout, not the start deadline: \(waited)")
    }

    @Test func withNoFreeGPUThePoolIsDegradedNeedingWholeHostRecoveryAndComesBackWhenAGPUFrees() {
        let settings = EngineSettings(schedulingTimeout: .seconds(30), degradedRetryInterval: .seconds(300))
        var harness = Harness.active(freeGPUs: 2, settings: settings)
        let (oldPrimary, standby) = (harness.snapshot.primaryInstanceID!, harness.snapshot.standbyInstanceID!)
        harness.provider.scheduling = [standby]
        harness.failPrimary()
        harness.settle()

        var snapshot = harness.snapshot
        #expect(snapshot.state == .degraded && snapshot.primaryInstanceID == nil)
        #expect(snapshot.degradedRung == .needsWholeHostRecovery)
        #expect(snapshot.errorMessage?.contains("needs a GPU of the host to free up, or whole-host recovery") == true, "\(snapshot.errorMessage ?? "")")
        let retryAt = try! #require(snapshot.nextRetryAt)
        #expect(retryAt > harness.now && retryAt <= harness.now + .seconds(300))
        #expect(harness.provider.instances[oldPrimary]!.destroyed && harness.provider.instances[standby]!.destroyed)

        // Nothing free at the next look: still degraded, the next retry moved on, no failover counted.
        let failoversBefore = snapshot.failoverCount
        harness.timeline = []
        for _ in 0..<2 { _ = harness.step() }  // the retry timer, then the search's empty answer
        #expect(harness.snapshot.state == .degraded && harness.snapshot.nextRetryAt! > retryAt)
        #expect(harness.timeline.isEmpty, "an empty search writes no failover: \(harness.steps)")

        // A GPU of the host frees up: the next try rebuilds a primary from the volume.
        harness.provider.offers.append(GPUOffer(id: 9100, machineID: 42, gpuName: "RTX 4090"))
        harness.provider.offers.append(GPUOffer(id: 9101, machineID: 42, gpuName: "RTX 4090"))
        _ = harness.step()  // the retry timer
        harness.settle()
        snapshot = harness.snapshot
        #expect(snapshot.state == .active, "\(snapshot)")
        #expect(snapshot.primaryInstanceID != nil && snapshot.standbyInstanceID != nil)
        #expect(snapshot.degradedRung == nil && snapshot.nextRetryAt == nil)
        #expect(snapshot.failoverCount == failoversBefore + 1)
        #expect(harness.steps.first == .rebuilding)
        #expect(harness.steps.contains(.promoted) && harness.steps.contains(.volumeVerified))
        #expect(!harness.steps.contains(.fenced), "the old primary was fenced by the failover that failed")
    }

    @Test func repairTriesTheNextRungNowAndIsRefusedOutsideDegraded() throws {
        let settings = EngineSettings(degradedRetryInterval: .seconds(300))
        var harness = Harness.active(freeGPUs: 2, settings: settings)
        #expect(throws: EngineViolation.self) { try harness.machine.repair(now: harness.now) }
        // The standby is lost with no GPU to replace it: degraded, a primary still running.
        let standby = harness.snapshot.standbyInstanceID!
        harness.feed(harness.machine.standbyLost(instance: standby, reason: "gone", now: harness.now))
        harness.settle()
        #expect(harness.snapshot.state == .degraded && harness.snapshot.degradedRung == .noStandby)
        harness.provider.offers.append(GPUOffer(id: 9100, machineID: 42, gpuName: "RTX 4090"))
        let before = harness.now
        harness.feed(try harness.machine.repair(now: harness.now))
        harness.settle()
        #expect(harness.snapshot.state == .active && harness.snapshot.standbyInstanceID != nil)
        #expect(harness.now - before < .seconds(60), "repaired now, not at the 300 s retry")
    }

    @Test func anActivePoolWhoseHostHasNoFreeGPUIsDegradedKeepingItsStandbyUntilOneFrees() throws {
        var harness = Harness.active(freeGPUs: 2)
        let (primary, standby) = (harness.snapshot.primaryInstanceID!, harness.snapshot.standbyInstanceID!)
        #expect(harness.machine.hostGPUsSeen(free: 1, now: harness.now).isEmpty, "a free GPU: nothing changes")
        harness.feed(harness.machine.hostGPUsSeen(free: 0, now: harness.now))
        var snapshot = harness.snapshot
        #expect(snapshot.state == .degraded && snapshot.degradedRung == .standbyAtRisk && snapshot.nextRetryAt == nil)
        #expect(snapshot.primaryInstanceID == primary && snapshot.standbyInstanceID == standby, "nothing is destroyed or made")
        #expect(snapshot.errorMessage?.hasPrefix("standby at risk: host 42 has no free GPU") == true)
        #expect(harness.timers.isEmpty && harness.provider.liveInstances.count == 2)
        #expect(throws: EngineViolation.self) { try harness.machine.repair(now: harness.now) }
        harness.feed(harness.machine.hostGPUsSeen(free: 1, now: harness.now))
        snapshot = harness.snapshot
        #expect(snapshot.state == .active && snapshot.degradedRung == nil && snapshot.errorMessage == nil)
        // A failure while at risk is failed over as from active.
        harness.feed(harness.machine.hostGPUsSeen(free: 0, now: harness.now))
        harness.provider.offers.append(GPUOffer(id: 9100, machineID: 42, gpuName: "RTX 4090"))
        harness.failPrimary()
        harness.settle()
        #expect(harness.snapshot.primaryInstanceID == standby && harness.snapshot.failoverCount == 1)
    }

    @Test func settingsSavedWithoutTheNewFieldsStillLoad() throws {
        var saved = try JSONSerialization.jsonObject(with: JSONEncoder().encode(EngineSettings(fenceTimeout: .seconds(7)))) as! [String: Any]
        saved["schedulingTimeout"] = nil  // as a controller from before it saved them
        let settings = try JSONDecoder().decode(EngineSettings.self, from: JSONSerialization.data(withJSONObject: saved))
        #expect(settings.schedulingTimeout == .seconds(45) && settings.fenceTimeout == .seconds(7))
    }
}
