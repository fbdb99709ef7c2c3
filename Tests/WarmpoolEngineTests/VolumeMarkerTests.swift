import Foundation
import Testing
import WarmpoolEngine
import WarmpoolModel

/// The marketplace writes nothing on a volume: the pool writes its identity marker through its
/// first primary, and every later verification requires it.
@Suite struct VolumeMarkerTests {
    @Test func aFailoverRequiresTheMarkerWrittenAtProvisioning() {
        var harness = Harness.active(freeGPUs: 4)
        let standby = harness.snapshot.standbyInstanceID!
        harness.failPrimary()
        harness.settle()
        #expect(harness.snapshot.state == .active && harness.snapshot.primaryInstanceID == standby)
        #expect(harness.commands { if case .verify(_, standby, _, _, .required) = $0 { true } else { false } }.count == 1)
        let verified = harness.timeline.last { $0.step == .volumeVerified }
        #expect(verified?.detail == "volume \(harness.snapshot.volumeID!) mounted, its identity marker holds its id, writable")
        #expect(harness.timeline.filter { $0.step == .volumeMarked }.count == 1, "marked once, at provisioning")
    }

    /// Every instance of the host mounts the same volume, so replacing the standby cannot help,
    /// and destroying anything would only lose what may still be recovered.
    @Test func aMarkerGoneSinceProvisioningStopsTheFailoverWithNothingDestroyed() throws {
        var harness = Harness.active(freeGPUs: 4)
        let primary = harness.snapshot.primaryInstanceID!
        let standby = harness.snapshot.standbyInstanceID!
        harness.provider.markedVolumes = []
        harness.failPrimary()
        harness.settle()
        #expect(harness.snapshot.state == .error)
        #expect(harness.snapshot.errorMessage?.contains("no volume-id marker") == true, "\(harness.snapshot)")
        #expect(harness.snapshot.errorMessage?.hasSuffix("nothing was promoted or destroyed") == true)
        #expect(harness.provider.instances[primary]?.destroyed == false && harness.provider.instances[standby]?.destroyed == false)
        #expect(harness.provider.liveInstances.count == 2, "no replacement was created")
        #expect(!harness.leaseLog.contains(.grantLease(standby, epoch: 2)), "nothing was promoted")
        #expect(harness.notificationKinds.last == .failoverFailed)
        #expect(harness.steps.last == .failed)

        // Cleanup still removes everything.
        _ = try harness.feedThrowing { try $0.cleanup(now: $1) }
        harness.settle()
        #expect(harness.snapshot.removed && harness.provider.liveInstances.isEmpty)
    }

    /// A pool saved before the controller wrote markers: its volume may have none (on Vast.ai,
    /// nothing wrote one). Its next verification writes it, and from then on it is required.
    @Test func aPoolFromBeforeMarkersIsMarkedAtItsNextVerification() throws {
        var harness = Harness.active(freeGPUs: 6)
        var saved = try #require(try JSONSerialization.jsonObject(with: JSONEncoder().encode(harness.machine)) as? [String: Any])
        #expect(saved.removeValue(forKey: "volumeMarkedAt") != nil, "the field this test removes exists")
        harness.machine = try JSONDecoder().decode(PoolMachine.self, from: JSONSerialization.data(withJSONObject: saved))
        harness.provider.markedVolumes = []
        let first = harness.snapshot.standbyInstanceID!
        harness.failPrimary()
        harness.settle()
        #expect(harness.snapshot.state == .active && harness.snapshot.primaryInstanceID == first)
        #expect(harness.commands { if case .verify(_, first, _, _, .establish) = $0 { true } else { false } }.count == 1)
        let marked = try #require(harness.timeline.last { $0.step == .volumeMarked })
        #expect(marked.failover == 1 && marked.detail == "volume \(harness.snapshot.volumeID!): identity marker written, through instance \(first)")

        let second = harness.snapshot.standbyInstanceID!
        harness.failPrimary()
        harness.settle()
        #expect(harness.snapshot.primaryInstanceID == second)
        #expect(harness.commands { if case .verify(_, second, _, _, .required) = $0 { true } else { false } }.count == 1)
    }

    @Test func aVolumeThatCannotBeMarkedFailsProvisioning() {
        var provider = FakeProvider(host: 42, freeGPUs: 4)
        provider.failsVerification = [100, 101, 102]
        var harness = Harness(request: ProvisionRequest(poolID: 7, hostMachineID: 42), provider: provider)
        harness.settle()
        #expect(harness.snapshot.removed)
        #expect(harness.snapshot.errorMessage == "provisioning failed: cannot mark the volume: volume is not mounted at /data")
        #expect(harness.steps.suffix(3) == [.failed, .cleanup, .removed])
        #expect(harness.provider.liveInstances.isEmpty && harness.provider.deletedVolumes.count == 1, "the primary and the volume it could not mark are gone")
    }
}
