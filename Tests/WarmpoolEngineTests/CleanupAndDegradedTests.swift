import Testing
import WarmpoolEngine
import WarmpoolModel

@Suite struct CleanupTests {
    @Test func cleanupDestroysEverythingThenTheVolume() throws {
        var harness = Harness.active()
        let (primary, volume) = (harness.snapshot.primaryInstanceID!, harness.snapshot.volumeID!)
        harness.leaseLog = []
        _ = try harness.feedThrowing { try $0.cleanup(now: $1) }
        harness.settle()
        #expect(harness.snapshot.removed)
        #expect(harness.snapshot.state == .disabled)
        #expect(harness.snapshot.primaryInstanceID == nil && harness.snapshot.standbyInstanceID == nil)
        #expect(harness.snapshot.volumeID == nil)
        #expect(harness.provider.liveInstances.isEmpty)
        #expect(harness.provider.deletedVolumes == [volume])
        #expect(harness.leaseLog == [.revokeLease(primary)])
        let order = harness.commandLog.map(\.action).filter {
            switch $0 { case .destroyInstance, .deleteVolume: true; default: false }
        }
        #expect(order.last.map { if case .deleteVolume = $0 { true } else { false } } == true,
                "the volume goes last, once nothing is attached to it")
        #expect(harness.steps.suffix(2) == [.cleanup, .removed])
        #expect(throws: EngineViolation("pool 7 is already removed")) { try harness.machine.cleanup(now: harness.now) }
        #expect(throws: EngineViolation("pool 7 is being removed")) { try harness.machine.enable(now: harness.now) }
    }

    @Test func cleanupInTheMiddleOfAFailoverAbandonsIt() throws {
        var harness = Harness.active()
        harness.failPrimary()
        for _ in 0..<8 { harness.step() }
        #expect(harness.snapshot.state == .failover)
        _ = try harness.feedThrowing { try $0.cleanup(now: $1) }
        #expect(throws: EngineViolation("pool 7 is already being cleaned up")) { try harness.machine.cleanup(now: harness.now) }
        harness.settle()
        #expect(harness.snapshot.removed)
        #expect(harness.provider.liveInstances.isEmpty)
        #expect(!harness.steps.contains(.promoted))
    }

    @Test func aFailedCleanupIsAnErrorAndCanBeRetried() throws {
        var harness = Harness.active()
        harness.provider.failures["destroy"] = Array(repeating: .failure(message: "HTTP 500", retryable: true), count: 3)
        _ = try harness.feedThrowing { try $0.cleanup(now: $1) }
        harness.settle()
        #expect(harness.snapshot.state == .error)
        #expect(harness.snapshot.errorMessage == "cleanup failed: HTTP 500")
        #expect(harness.snapshot.primaryInstanceID != nil, "what is left stays on the books")

        _ = try harness.feedThrowing { try $0.cleanup(now: $1) }
        harness.settle()
        #expect(harness.snapshot.removed)
        #expect(harness.provider.liveInstances.isEmpty)
        #expect(harness.provider.deletedVolumes.count == 1)
    }

    @Test func aFailedProvisioningRemovesWhatItMade() throws {
        var harness = Harness(request: ProvisionRequest(poolID: 7, hostMachineID: 42),
                              provider: FakeProvider(host: 42, freeGPUs: 2))
        while !harness.steps.contains(.primaryCreated) { harness.step() }
        harness.provider.offers = []  // someone else rents the standby's GPU first
        harness.settle()
        #expect(harness.snapshot.removed)
        #expect(harness.snapshot.errorMessage == "provisioning failed: no free GPU left on host 42 for a standby")
        #expect(harness.provider.liveInstances.isEmpty)
        #expect(throws: EngineViolation.self) { _ = try harness.feedThrowing { try $0.cleanup(now: $1) } }
        #expect(harness.provider.deletedVolumes.count == 1)
    }
}

@Suite struct DegradedTests {
    @Test func aPoolWithoutAFreeGPUForANewStandbyIsDegradedAndRetriesLater() {
        let settings = EngineSettings(degradedRetryInterval: .seconds(300))
        var harness = Harness.active(freeGPUs: 2, settings: settings)
        let standby = harness.snapshot.standbyInstanceID!
        harness.notifications = []
        harness.failPrimary()
        harness.settle()

        #expect(harness.snapshot.state == .degraded)
        #expect(harness.snapshot.primaryInstanceID == standby, "the failover itself succeeded")
        #expect(harness.snapshot.standbyState == StandbyState.none)
        #expect(harness.snapshot.errorMessage == "no free GPU left on host 42 for a standby")
        #expect(harness.notificationKinds == [.failureDetected, .standbyStarting, .failoverComplete, .poolDegraded])
        #expect(harness.timers.count == 1, "a retry is scheduled")

        // Still nothing free at the first retry: no second notification.
        let degradedAt = harness.now
        harness.step()
        harness.settle()
        #expect(harness.now >= degradedAt + .seconds(300))
        #expect(harness.snapshot.state == .degraded)
        #expect(harness.notifications.filter { $0.kind == .poolDegraded }.count == 1)

        // A GPU frees up: the next retry makes a standby.
        harness.provider.offers.append(GPUOffer(id: 1, machineID: 42, gpuName: "RTX 4090"))
        harness.step()
        harness.settle()
        #expect(harness.snapshot.state == .active)
        #expect(harness.snapshot.standbyState == .stopped)
        #expect(harness.notificationKinds.last == .standbyProvisioned)
    }

    /// The provider-faults drill's case: after a failover, the new standby's create failed three
    /// times with 503s. A flaky provider is retried after ten retry delays, not the 5 minutes a
    /// GPU shortage waits.
    @Test func aStandbyLostToProviderErrorsIsRetriedSoonerThanAShortage() {
        let settings = EngineSettings(retryDelay: .seconds(2), degradedRetryInterval: .seconds(300))
        var harness = Harness.active(freeGPUs: 3, settings: settings)
        harness.provider.failures["create"] = Array(repeating: .failure(message: "HTTP 503", retryable: true), count: 3)
        harness.failPrimary()
        harness.settle()
        #expect(harness.snapshot.state == .degraded)
        #expect(harness.snapshot.errorMessage == "HTTP 503")
        let degradedAt = harness.now
        harness.step()
        harness.settle()
        #expect(harness.now < degradedAt + .seconds(60), "retried after ten retry delays")
        #expect(harness.snapshot.state == .active)
        #expect(harness.snapshot.standbyState == .stopped)
        #expect(harness.provider.liveInstances.count == 2)
    }

    @Test func aDegradedPoolWithAPrimaryStillFailsOverToAFreeGPU() {
        var harness = Harness.active(freeGPUs: 2)
        harness.failPrimary()
        harness.settle()
        #expect(harness.snapshot.state == .degraded)
        let primary = harness.snapshot.primaryInstanceID!
        harness.provider.offers.append(GPUOffer(id: 1, machineID: 42, gpuName: "RTX 4090"))
        harness.failPrimary(epoch: 2)
        harness.settle()
        #expect(harness.snapshot.failoverCount == 2)
        #expect(harness.snapshot.primaryInstanceID != primary)
        #expect(harness.snapshot.epoch == 3)
        #expect(harness.snapshot.state == .degraded, "the free GPU became the primary; none is left for a standby")
    }
}
