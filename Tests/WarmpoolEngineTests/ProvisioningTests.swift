import Testing
import WarmpoolEngine
import WarmpoolModel

@Suite struct ProvisioningTests {
    @Test func provisionsVolumePrimaryAndStoppedStandby() {
        var harness = Harness(request: ProvisionRequest(poolID: 7, hostMachineID: 42),
                              provider: FakeProvider(host: 42, freeGPUs: 3))
        #expect(harness.snapshot.state == .searching)
        harness.step()  // the offers
        #expect(harness.snapshot.state == .provisioning)
        harness.settle()

        let snapshot = harness.snapshot
        #expect(snapshot.state == .active)
        #expect(snapshot.standbyState == .stopped)
        #expect(snapshot.epoch == 1)
        #expect(snapshot.failoverCount == 0)
        #expect(snapshot.errorMessage == nil)
        let live = harness.provider.liveInstances
        #expect(live.map(\.id) == [snapshot.primaryInstanceID, snapshot.standbyInstanceID].compactMap { $0 })
        #expect(harness.provider.instances[snapshot.primaryInstanceID!]?.status == .running)
        #expect(harness.provider.instances[snapshot.standbyInstanceID!]?.status == .stopped)
        #expect(live.map(\.label) == ["wp-7-primary-e1-a1", "wp-7-standby-e1-a2"])
        #expect(snapshot.volumeID == harness.provider.volumes["wp-7-volume"])
        #expect(snapshot.primarySSH != nil)
        #expect(harness.leaseLog == [.grantLease(snapshot.primaryInstanceID!, epoch: 1), .revokeLease(snapshot.standbyInstanceID!)],
                "the standby boots with the volume: its agent is granted nothing")
        #expect(harness.steps == [.provisioning, .volumeReady, .primaryCreated, .primaryRunning, .volumeMarked, .standbyProvisioning, .standbyReady])
        #expect(harness.provider.markedVolumes == [snapshot.volumeID!], "the marketplace writes no marker: the pool does, through its primary")
        #expect(harness.commands { if case .verify(_, snapshot.primaryInstanceID!, _, _, .establish) = $0 { true } else { false } }.count == 1)
        #expect(harness.notificationKinds == [.standbyProvisioned])
        #expect(harness.timers.isEmpty, "an active pool waits for nothing")
    }

    @Test func aHostWithOneFreeGPUFailsAndLeavesNothing() {
        var harness = Harness(request: ProvisionRequest(poolID: 7, hostMachineID: 42),
                              provider: FakeProvider(host: 42, freeGPUs: 1))
        harness.settle()
        #expect(harness.snapshot.removed, "a refused provision leaves no pool in the way of a retry")
        #expect(harness.snapshot.errorMessage == "provisioning failed: host 42 has 1 free GPU(s); a warm pool needs 2, a CPU standby 1 (the CPU standby strategy is off)")
        #expect(harness.provider.instances.isEmpty)
        #expect(harness.steps.suffix(3) == [.failed, .cleanup, .removed])
    }

    @Test func offersOnOtherHostsDoNotCount() {
        var provider = FakeProvider(host: 42, freeGPUs: 1)
        provider.offers.append(GPUOffer(id: 1, machineID: 43, gpuName: "RTX 4090"))
        var harness = Harness(request: ProvisionRequest(poolID: 7, hostMachineID: 42), provider: provider)
        harness.settle()
        #expect(harness.snapshot.removed)
    }

    @Test func retryableErrorsWithinTheBudgetAreRetried() {
        var provider = FakeProvider(host: 42, freeGPUs: 2)
        provider.failures["volume"] = [.failure(message: "HTTP 503", retryable: true), .failure(message: "HTTP 503", retryable: true)]
        var harness = Harness(request: ProvisionRequest(poolID: 7, hostMachineID: 42), provider: provider)
        harness.settle()
        #expect(harness.snapshot.state == .active)
        #expect(harness.commands { if case .ensureVolume = $0 { true } else { false } }.count == 3)
    }

    @Test func retryableErrorsBeyondTheBudgetFailProvisioning() {
        var provider = FakeProvider(host: 42, freeGPUs: 2)
        provider.failures["volume"] = Array(repeating: .failure(message: "HTTP 503", retryable: true), count: 3)
        var harness = Harness(request: ProvisionRequest(poolID: 7, hostMachineID: 42), provider: provider)
        harness.settle()
        #expect(harness.snapshot.removed)
        #expect(harness.snapshot.errorMessage == "provisioning failed: HTTP 503")
        #expect(harness.commands { if case .ensureVolume = $0 { true } else { false } }.count == 3)
    }

    @Test func aRefusalIsNotRetried() {
        var provider = FakeProvider(host: 42, freeGPUs: 2)
        provider.failures["create"] = [.failure(message: "insufficient credit", retryable: false)]
        var harness = Harness(request: ProvisionRequest(poolID: 7, hostMachineID: 42), provider: provider)
        harness.settle()
        #expect(harness.snapshot.removed)
        #expect(harness.snapshot.errorMessage == "provisioning failed: insufficient credit")
        #expect(harness.commands { if case .ensureInstance = $0 { true } else { false } }.count == 1)
    }

    @Test func aPrimaryThatNeverRunsTimesOut() {
        var provider = FakeProvider(host: 42, freeGPUs: 2)
        provider.brokenOffers = [9000]
        let settings = EngineSettings(createTimeout: .seconds(60))
        var harness = Harness(request: ProvisionRequest(poolID: 7, hostMachineID: 42), provider: provider, settings: settings)
        let start = harness.now
        harness.settle()
        #expect(harness.snapshot.removed)
        #expect(harness.snapshot.errorMessage == "provisioning failed: starting the primary did not finish by its deadline")
        #expect(harness.now - start >= .seconds(60))
        #expect(harness.now - start < .seconds(62))
    }

    @Test func crashAtEveryStepProvisionsOnce() {
        var baseline = Harness(request: ProvisionRequest(poolID: 7, hostMachineID: 42), provider: FakeProvider(host: 42, freeGPUs: 2))
        baseline.settle()
        for point in [Harness.CrashPoint.beforeEffects, .afterEffects] {
            for event in 1...baseline.events {
                var harness = Harness(request: ProvisionRequest(poolID: 7, hostMachineID: 42),
                                      provider: FakeProvider(host: 42, freeGPUs: 2), crash: (event, point))
                harness.settle()
                let where_ = "crash after event \(event), \(point)"
                #expect(harness.restarts == 1, "\(where_)")
                #expect(harness.snapshot.state == .active, "\(where_)")
                #expect(harness.provider.creations.values.allSatisfy { $0 == 1 }, "\(where_): \(harness.provider.creations)")
                #expect(harness.provider.liveInstances.count == 2, "\(where_)")
                #expect(harness.provider.volumes.count == 1, "\(where_)")
                #expect(harness.steps == baseline.steps, "\(where_)")
            }
        }
    }
}
