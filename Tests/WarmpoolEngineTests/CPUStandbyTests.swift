import Testing
import WarmpoolEngine
import WarmpoolModel

/// The CPU standby (issue 22): a host without a second GPU gets a VM of another cloud that its
/// primary keeps in sync; a failure promotes the VM (degraded, CPU speed), and a free GPU brings
/// the pool back, planned, through a final snapshot. Pure: fake clouds, a mock clock.
@Suite struct CPUStandbyTests {
    static let settings = EngineSettings(leaseDuration: .seconds(10), degradedRetryInterval: .seconds(120),
                                         cpuStandby: CPUStandbySettings(machineType: "e2-small"))

    /// Pool 7 on host 42, which has one free GPU.
    static func oneGPUPool(settings: EngineSettings = settings) -> Harness {
        var harness = Harness(request: ProvisionRequest(poolID: 7, hostMachineID: 42), provider: FakeProvider(host: 42, freeGPUs: 1),
                              settings: settings)
        harness.settle()
        return harness
    }

    @Test func aHostWithOneFreeGPUGetsACPUStandbyThatThePrimarySyncsTo() throws {
        let harness = Self.oneGPUPool()
        let pool = harness.snapshot
        #expect(pool.state == .active, "\(pool)")
        #expect(pool.strategy == .cpuStandby)
        #expect(pool.standbyInstanceID == nil, "no GPU standby: the host has no second GPU")
        let name = try #require(pool.cpuStandbyName)
        #expect(name == "wp-7-cpu-e1-a1")
        let agent = try #require(pool.cpuStandbyInstanceID)
        #expect(agent.rawValue >= CPUInstanceRequest.agentIDBase, "out of the marketplace's id range")
        #expect(harness.provider.vmCreations == [name: 1])
        #expect(harness.provider.vms[name]?.request.machineType == "e2-small")
        #expect(harness.provider.vms[name]?.request.diskSizeGB == 100, "the pool's volume size")
        let primary = try #require(pool.primaryInstanceID)
        #expect(harness.provider.syncTargets[primary] == [SyncTarget(name: name, agent: agent, ssh: SSHEndpoint(host: "34.1.2.3", port: 22), epoch: 1)])
        #expect(harness.leaseLog.contains(.revokeLease(agent)), "its agent runs no workload")
        #expect(!harness.leaseLog.contains { if case .grantLease(let id, _) = $0 { id == agent } else { false } })
        #expect(Array(harness.steps.suffix(2)) == [.syncConfigured, .standbyReady])
        #expect(harness.notificationKinds.contains(.standbyProvisioned))
        #expect(harness.timeline.first { $0.step == .provisioning && ($0.detail ?? "").contains("cpu_standby") } != nil)
    }

    @Test func withTheStrategyOffAOneGPUHostIsRefusedAsBefore() {
        let harness = Self.oneGPUPool(settings: EngineSettings())
        #expect(harness.snapshot.removed)
        #expect(harness.snapshot.errorMessage?.contains("a CPU standby 1 (the CPU standby strategy is off)") == true, "\(harness.snapshot)")
        #expect(harness.provider.vms.isEmpty)
    }

    @Test func theOperatorMayPickACPUStandbyWhereAWarmPoolWouldFit() {
        var harness = Harness(request: ProvisionRequest(poolID: 7, hostMachineID: 42, prefersCPUStandby: true),
                              provider: FakeProvider(host: 42, freeGPUs: 3), settings: Self.settings)
        harness.settle()
        #expect(harness.snapshot.state == .active && harness.snapshot.strategy == .cpuStandby)
        #expect(harness.provider.liveInstances.count == 1, "one GPU rented, not two")
    }

    @Test func aWarmPoolWhoseHostRunsOutOfGPUsFallsBackToACPUStandby() throws {
        var harness = Harness.active(freeGPUs: 2, settings: Self.settings)
        #expect(harness.snapshot.strategy == .gpuWarmPool)
        let standby = try #require(harness.snapshot.standbyInstanceID)
        harness.feed(harness.machine.standbyLost(instance: standby, reason: "destroyed behind our back", now: harness.now))
        harness.settle()
        #expect(harness.snapshot.state == .active, "\(harness.snapshot)")
        #expect(harness.snapshot.strategy == .cpuStandby)
        #expect(harness.snapshot.cpuStandbyName != nil)

        var strict = Self.settings
        strict.cpuStandby?.replacesMissingGPUStandby = false
        var noFallback = Harness.active(freeGPUs: 2, settings: strict)
        let lost = try #require(noFallback.snapshot.standbyInstanceID)
        noFallback.feed(noFallback.machine.standbyLost(instance: lost, reason: "destroyed behind our back", now: noFallback.now))
        noFallback.settle()
        #expect(noFallback.snapshot.state == .degraded && noFallback.snapshot.cpuStandbyName == nil)
    }

    @Test func aPrimaryFailureIsFailedOverToTheCPUStandbyAsADegradedPrimary() throws {
        var harness = Self.oneGPUPool()
        let old = harness.snapshot
        let (oldPrimary, agent, name) = (old.primaryInstanceID!, old.cpuStandbyInstanceID!, old.cpuStandbyName!)
        let failedAt = harness.now
        harness.failPrimary()
        harness.settle()

        let pool = harness.snapshot
        #expect(pool.state == .degraded, "\(pool)")
        #expect(pool.degradedRung == .runningOnCPU)
        #expect(pool.primaryInstanceID == agent && pool.cpuPrimaryName == name && pool.cpuStandbyName == nil)
        #expect(pool.epoch == old.epoch.next)
        #expect(pool.strategy == .cpuStandby)
        #expect(pool.errorMessage?.contains("CPU speed") == true)
        #expect(harness.leaseLog.last == .grantLease(agent, epoch: pool.epoch))
        // Fenced as today (the provider's stop and the lease), before the VM was touched.
        let stopped = try #require(harness.commandLog.firstIndex { if case .stopInstance(_, let id) = $0.action { id == oldPrimary } else { false } })
        let verified = try #require(harness.commandLog.firstIndex { if case .verifyCPUCopy(_, let id, _, let vm, _) = $0.action { id == agent && vm == name } else { false } })
        #expect(stopped < verified)
        #expect(harness.provider.cpuCopiesVerified[agent] == 1)
        let promoted = try #require(harness.timeline.first { $0.step == .promoted })
        #expect(promoted.at - failedAt >= .seconds(11), "not before the old primary's lease ran out")
        #expect(harness.steps.contains(.standbyStarting) && harness.steps.contains(.volumeVerified))
        #expect(harness.notificationKinds.contains(.failoverComplete))
        #expect(harness.provider.instances[oldPrimary]?.destroyed == true, "the old GPU primary is retired")
        #expect(harness.provider.deletedVolumes.isEmpty, "the volume stays until the pool moves back")
    }

    @Test func aFreeGPUBringsThePoolBackPlannedThroughAFinalSnapshot() throws {
        var harness = Self.oneGPUPool()
        let oldVolume = harness.snapshot.volumeID!
        harness.failPrimary()
        harness.settle()
        let agent = try #require(harness.snapshot.cpuPrimaryName.flatMap { _ in harness.snapshot.primaryInstanceID })
        let name = harness.snapshot.cpuPrimaryName!
        let degradedEpoch = harness.snapshot.epoch

        // Nothing free yet: the pool stays on the CPU and looks again later.
        for _ in 0..<40 where harness.commands({ if case .findFreeOffersAnywhere = $0 { true } else { false } }).isEmpty { harness.step() }
        harness.settle()
        #expect(harness.snapshot.degradedRung == .runningOnCPU && harness.snapshot.nextRetryAt != nil)

        // Two GPUs free up on host 43.
        harness.provider.offers += (0..<2).map { GPUOffer(id: OfferID(Int64(9400 + $0)), machineID: 43, gpuName: "RTX 4090") }
        for _ in 0..<400 where harness.snapshot.state != .active { harness.step() }
        harness.settle()

        let pool = harness.snapshot
        #expect(pool.state == .active, "\(pool)")
        #expect(pool.strategy == .gpuWarmPool && pool.cpuPrimaryName == nil)
        #expect(pool.hostMachineID == 43 && pool.volumeID != oldVolume)
        #expect(pool.epoch == degradedEpoch.next)
        // Planned: the lease first (the workload's fence hook), then the snapshot, then the stop.
        let revoked = try #require(harness.leaseLog.lastIndex(of: .revokeLease(agent)))
        #expect(!harness.leaseLog[revoked...].contains { if case .grantLease(let id, _) = $0 { id == agent } else { false } })
        let snapshotAt = try #require(harness.commandLog.firstIndex { if case .takeSnapshot(_, let id, _) = $0.action { id == agent } else { false } })
        let stopAt = try #require(harness.commandLog.firstIndex { if case .stopCPUInstance(_, let vm) = $0.action { vm == name } else { false } })
        let restoreAt = try #require(harness.commandLog.firstIndex { if case .restoreSnapshot(_, _, _, let s) = $0.action { s == "20231114T230000.000Z-final1" } else { false } })
        #expect(snapshotAt < stopAt && stopAt < restoreAt)
        let failingBack = try #require(harness.timeline.first { $0.step == .failingBack })
        let finalSnapshot = harness.commandLog[snapshotAt].at
        #expect(finalSnapshot - failingBack.at >= .seconds(10), "after the lease ran out")
        #expect(harness.provider.vms[name]?.deleted == true, "the CPU VM is deleted once the GPU primary is promoted")

        _ = try harness.feedThrowing { try $0.cleanup(now: $1) }
        harness.settle()
        #expect(harness.snapshot.removed)
        #expect(harness.provider.liveVMs.isEmpty && harness.provider.liveInstances.isEmpty)
        #expect(Set(harness.provider.deletedVolumes) == [oldVolume, pool.volumeID!])
    }

    @Test func aFinalSnapshotThatFailsGivesTheCPUPrimaryItsLeaseBack() throws {
        var harness = Self.oneGPUPool()
        harness.failPrimary()
        harness.settle()
        let agent = harness.snapshot.primaryInstanceID!
        let epoch = harness.snapshot.epoch
        harness.provider.offers += [GPUOffer(id: 9400, machineID: 43, gpuName: "RTX 4090")]
        harness.provider.vmBootPolls = 0
        // The snapshot tool fails: the VM stays the primary, at the same epoch, granted again.
        harness.provider.restoreAnswers = [.failed(message: "store refuses: 403")]
        for _ in 0..<400 where !harness.steps.contains(.failingBack) { harness.step() }
        for _ in 0..<400 where harness.leaseLog.last != .grantLease(agent, epoch: epoch) { harness.step() }
        #expect(harness.leaseLog.last == .grantLease(agent, epoch: epoch))
        #expect(harness.snapshot.state == .degraded && harness.snapshot.degradedRung == .runningOnCPU)
        #expect(harness.snapshot.errorMessage?.contains("store refuses: 403") == true)
        #expect(harness.commands { if case .stopCPUInstance = $0 { true } else { false } }.isEmpty, "never stopped")
    }

    @Test func aLostHostFailsOverToTheCPUStandbyWithoutASnapshot() {
        var settings = Self.settings
        settings.hostLossTimeout = .seconds(60)
        var harness = Self.oneGPUPool(settings: settings)
        let agent = harness.snapshot.cpuStandbyInstanceID!
        harness.provider.offlineMachines = [42]
        harness.failPrimary()
        harness.settle()
        #expect(harness.snapshot.primaryInstanceID == agent, "\(harness.snapshot)")
        #expect(!harness.steps.contains(.relocating) && !harness.steps.contains(.restored))
    }

    @Test func aControllerCrashAnywhereLeavesOneVMPerNameAndOnePrimary() {
        for event in 1...45 {
            var harness = Harness(request: ProvisionRequest(poolID: 7, hostMachineID: 42), provider: FakeProvider(host: 42, freeGPUs: 1),
                                  settings: Self.settings, crash: (atEvent: event, point: event % 2 == 0 ? .beforeEffects : .afterEffects))
            harness.settle()
            #expect(harness.snapshot.state == .active, "crash at event \(event): \(harness.snapshot)")
            harness.crash = (atEvent: harness.events + event % 5 + 1, point: event % 2 == 0 ? .afterEffects : .beforeEffects)
            harness.failPrimary()
            harness.settle()
            #expect(harness.snapshot.degradedRung == .runningOnCPU, "crash at event \(event): \(harness.snapshot)")
            #expect(harness.provider.vmCreations.values.allSatisfy { $0 == 1 })
            #expect(harness.provider.liveVMs.count == 1)
            #expect(harness.provider.liveInstances.isEmpty, "the old GPU primary retired")
        }
    }

    @Test func aCPUPrimaryThatFailsIsReplacedFromItsNewestSnapshotNeverFromTheStaleVolume() throws {
        var harness = Self.oneGPUPool()
        let staleVolume = harness.snapshot.volumeID!
        harness.failPrimary()
        harness.settle()
        let cpu = try #require(harness.snapshot.primaryInstanceID)
        #expect(harness.snapshot.cpuPrimaryName != nil)
        // The VM dies too; a GPU is free on host 43 (and host 42's is free again).
        harness.provider.offers += [GPUOffer(id: 9500, machineID: 43, gpuName: "RTX 4090")]
        harness.failPrimary()
        harness.settle()
        let pool = harness.snapshot
        #expect(pool.primaryInstanceID != cpu && pool.cpuPrimaryName == nil, "\(pool)")
        #expect(pool.volumeID != staleVolume, "a new volume, from the newest snapshot")
        #expect(harness.commands { if case .restoreSnapshot = $0 { true } else { false } }.count == 1)
        #expect(!harness.commands { if case .ensureInstance(_, let request) = $0 { request.volume == staleVolume && request.role == .primary } else { false } }
            .dropFirst().contains { _ in true }, "no primary on the stale volume but the first one")
        #expect(harness.provider.vms.values.allSatisfy { $0.deleted || $0.request.agent != cpu }, "the dead CPU VM is deleted")
    }

    @Test func aCPUStandbyLostAtItsCloudIsReplacedByAnotherVM() throws {
        var harness = Self.oneGPUPool()
        let old = try #require(harness.snapshot.cpuStandbyInstanceID)
        let oldName = harness.snapshot.cpuStandbyName!
        harness.feed(harness.machine.standbyLost(instance: old, reason: "the cloud no longer lists CPU VM \(oldName)", now: harness.now))
        harness.settle()
        let pool = harness.snapshot
        #expect(pool.state == .active && pool.cpuStandbyName == "wp-7-cpu-e1-a2", "\(pool)")
        #expect(harness.provider.vms[oldName]?.deleted == true, "the lost one is deleted (it may come back)")
        #expect(harness.provider.syncTargets[pool.primaryInstanceID!]?.last??.name == "wp-7-cpu-e1-a2", "the primary syncs to the new one")
        #expect(harness.provider.liveVMs.count == 1)
    }

    @Test func aControllerCrashDuringTheFailbackLeavesOnePrimaryAndNoVM() {
        for event in 1...40 {
            var harness = Self.oneGPUPool()
            harness.failPrimary()
            harness.settle()
            harness.provider.offers += (0..<2).map { GPUOffer(id: OfferID(Int64(9400 + $0)), machineID: 43, gpuName: "RTX 4090") }
            harness.crash = (atEvent: harness.events + event, point: event % 2 == 0 ? .beforeEffects : .afterEffects)
            for _ in 0..<600 where harness.snapshot.state != .active { harness.step() }
            harness.settle()
            #expect(harness.snapshot.state == .active && harness.snapshot.hostMachineID == 43, "crash at +\(event): \(harness.snapshot)")
            #expect(harness.provider.liveVMs.isEmpty, "crash at +\(event)")
            #expect(harness.provider.liveInstances.count == 2, "one primary, one standby: crash at +\(event)")
            #expect(harness.provider.creations.values.allSatisfy { $0 == 1 })
        }
    }
}
