import Testing
import WarmpoolEngine
import WarmpoolModel

/// The last rung (issue 21): a host lost for good, the pool restored from its newest snapshot onto
/// another host. Pure: a fake provider, a mock clock.
@Suite struct RelocationTests {
    static let settings = EngineSettings(leaseDuration: .seconds(10), hostLossTimeout: .seconds(60))

    /// Host 42 with the pool, host 44 with one free GPU, host 43 with three (listed after 44: the
    /// engine prefers a host where a warm pool fits again).
    static func lab(settings: EngineSettings = settings) -> Harness {
        var harness = Harness.active(freeGPUs: 4, settings: settings)
        harness.provider.offers += [GPUOffer(id: 9100, machineID: 44, gpuName: "RTX 4090")]
        harness.provider.offers += (0..<3).map { GPUOffer(id: OfferID(Int64(9200 + $0)), machineID: 43, gpuName: "RTX 4090") }
        return harness
    }

    @Test func aHostOfflinePastTheBoundMovesThePoolToAnotherHostFromItsNewestSnapshot() throws {
        var harness = Self.lab()
        let old = harness.snapshot
        let (oldPrimary, oldStandby, oldVolume) = (old.primaryInstanceID!, old.standbyInstanceID!, old.volumeID!)
        harness.provider.offlineMachines = [42]
        harness.provider.snapshotTakenAt = harness.now - .seconds(45)
        let failedAt = harness.now
        harness.failPrimary()
        harness.settle()

        let pool = harness.snapshot
        #expect(pool.state == .active, "\(pool)")
        #expect(pool.hostMachineID == 43, "the host with two free GPUs")
        #expect(pool.volumeID != oldVolume && pool.volumeID != nil)
        #expect(pool.epoch == old.epoch.next)
        let primary = try #require(pool.primaryInstanceID)
        let standby = try #require(pool.standbyInstanceID)
        #expect(harness.provider.instances[primary]?.machineID == 43 && harness.provider.instances[standby]?.machineID == 43)
        #expect(harness.provider.restores[primary] == 1, "restored once, through the new primary")
        #expect(harness.provider.markedVolumes.contains(pool.volumeID!), "the new volume's marker written after the restore")
        #expect(harness.provider.volumes["wp-7-volume-r1"] == pool.volumeID)
        // Not before the host had been offline for the bound.
        let relocating = try #require(harness.timeline.first { $0.step == .relocating })
        #expect(relocating.at - failedAt >= .seconds(60))
        #expect(harness.steps.contains(.fenced) && harness.steps.contains(.restored) && harness.steps.contains(.promoted))
        #expect(harness.steps.firstIndex(of: .restored)! < harness.steps.firstIndex(of: .volumeVerified)!)
        let restored = try #require(harness.timeline.first { $0.step == .restored })
        #expect(restored.snapshot == "20231114T221320.000Z-0a0b0c0d")
        #expect(restored.recoveryPoint == .seconds(45), "from the snapshot to the failure")
        // The lost host's instances are retired; nothing is created there again.
        #expect(harness.commands { if case .destroyInstance(_, let id) = $0 { id == oldPrimary || id == oldStandby } else { false } }.count == 2)
        #expect(harness.commands { if case .findFreeOffersAnywhere(_, _, let excluding) = $0 { excluding == [42] } else { false } }.count == 1)
        #expect(harness.leaseLog.contains(.grantLease(primary, epoch: pool.epoch)))
        let revoked = try #require(harness.leaseLog.firstIndex(of: .revokeLease(oldPrimary)))
        #expect(!harness.leaseLog[revoked...].contains { if case .grantLease(let id, _) = $0 { id == oldPrimary } else { false } },
                "the old primary is never granted again")

        // Cleanup removes the new volume and the one left on the lost host.
        _ = try harness.feedThrowing { try $0.cleanup(now: $1) }
        harness.settle()
        #expect(harness.snapshot.removed)
        #expect(Set(harness.provider.deletedVolumes) == [oldVolume, pool.volumeID!])
    }

    @Test func withoutTheBoundOrBeforeItTheFailoverWaitsForTheHost() {
        var harness = Self.lab(settings: EngineSettings(leaseDuration: .seconds(10)))
        harness.provider.offlineMachines = [42]
        harness.failPrimary()
        for _ in 0..<2_000 { harness.step() }
        #expect(harness.snapshot.state == .failover)
        #expect(harness.snapshot.hostMachineID == 42)
        #expect(!harness.steps.contains(.relocating))

        // The machine comes back within the bound: an ordinary failover on the same host.
        var back = Self.lab()
        back.provider.offlineMachines = [42]
        back.failPrimary()
        for _ in 0..<40 { back.step() }
        back.provider.offlineMachines = []
        back.settle()
        #expect(back.snapshot.state == .active && back.snapshot.hostMachineID == 42)
        #expect(!back.steps.contains(.relocating))
    }

    @Test func aFailedRestoreGivesWayAndNoOtherHostMeansDegradedUntilOneFrees() {
        var harness = Self.lab()
        harness.provider.offlineMachines = [42]
        harness.provider.restoreAnswers = [.failed(message: "exit status 1: no snapshot in the store")]
        harness.failPrimary()
        harness.settle()
        #expect(harness.snapshot.state == .active, "the next instance restores: \(harness.snapshot)")
        #expect(harness.snapshot.hostMachineID == 43)
        #expect(harness.steps.contains(.standbyAbandoned))
        #expect(harness.provider.restores.values.reduce(0, +) == 1, "the second instance restored")

        var nowhere = Harness.active(freeGPUs: 4, settings: Self.settings)
        nowhere.provider.offlineMachines = [42]
        nowhere.failPrimary()
        nowhere.settle()
        #expect(nowhere.snapshot.state == .degraded)
        #expect(nowhere.snapshot.degradedRung == .needsWholeHostRecovery)
        // A host with a free GPU appears: the next retry moves there.
        nowhere.provider.offers += [GPUOffer(id: 9300, machineID: 45, gpuName: "RTX 4090")]
        for _ in 0..<200 where nowhere.snapshot.state != .active { nowhere.step() }
        nowhere.settle()
        #expect(nowhere.snapshot.hostMachineID == 45)
        #expect(nowhere.snapshot.primaryInstanceID != nil)
    }

    @Test func aRestartMidRestoreResumesIt() {
        for event in 1...60 {
            var harness = Self.lab()
            harness.provider.offlineMachines = [42]
            harness.failPrimary()
            while !harness.commandLog.contains(where: { if case .restoreSnapshot = $0.action { true } else { false } }) {
                guard harness.step() else { break }
            }
            harness.crash = (atEvent: harness.events + event % 3 + 1, point: event % 2 == 0 ? .beforeEffects : .afterEffects)
            harness.settle()
            #expect(harness.snapshot.state == .active, "crash after event +\(event % 3 + 1): \(harness.snapshot)")
            #expect(harness.snapshot.hostMachineID == 43)
            #expect(harness.provider.liveInstances.filter { $0.machineID == 43 }.count == 2, "one primary, one standby, no duplicate")
            #expect(harness.provider.creations.values.allSatisfy { $0 == 1 })
        }
    }

    @Test func aRestoreAskedForFencesThePrimaryAndMovesTheDataOntoANewVolume() throws {
        var harness = Self.lab()
        let old = harness.snapshot
        _ = try harness.feedThrowing { try $0.restore(snapshot: "20231114T000000.000Z-01", now: $1) }
        #expect(throws: EngineViolation.self) { _ = try harness.machine.restore(snapshot: nil, now: harness.now) }
        harness.settle()
        let pool = harness.snapshot
        #expect(pool.state == .active, "\(pool)")
        #expect(pool.volumeID != old.volumeID && pool.epoch == old.epoch.next)
        #expect(harness.commands { if case .stopInstance(_, let id) = $0 { id == old.primaryInstanceID } else { false } }.count >= 1,
                "fenced through the provider like any failover")
        #expect(harness.steps.firstIndex(of: .fenced)! < harness.steps.firstIndex(of: .restored)!)
        #expect(!harness.steps.contains(.detected))
        #expect(harness.commands { if case .restoreSnapshot(_, _, _, let snapshot) = $0 { snapshot == "20231114T000000.000Z-01" } else { false } }.count == 1)
        #expect(harness.timeline.first { $0.step == .restored }?.snapshot == "20231114T000000.000Z-01")
        #expect(!harness.provider.deletedVolumes.contains(old.volumeID!), "the old volume is kept until cleanup")
        #expect(throws: EngineViolation("pool 7 is disabled")) {
            var disabled = Self.lab()
            _ = try disabled.feedThrowing { try $0.disable(now: $1) }
            _ = try disabled.machine.restore(snapshot: nil, now: disabled.now)
        }
    }
}
