import Foundation
import Logging
import Testing
import WarmpoolModel
import WarmpoolProvider
import WarmpoolSSH
@testable import WarmpoolSim

#if canImport(Glibc)
import Glibc
#endif

/// VastClient against the real emulator over HTTP, and the project's SSHVerifier against the
/// instances it runs: a warm pool's whole life on one simulated machine (as root).
@Suite(.serialized) struct LifecycleTests {
    static let ms: Int64 = 1_000_000

    func verifier(_ fixture: SimFixture, pins: any HostKeyPinStore) -> SSHVerifier {
        SSHVerifier(credentials: SSHCredentials(privateKey: .file(path: fixture.clientKeyPath)), pins: pins, logger: SimFixture.logger)
    }

    func target(_ instance: Instance, volumeID: VolumeID) throws -> SSHTarget {
        try SSHTarget(instanceID: instance.id, host: try #require(instance.sshHost), port: try #require(instance.sshPort),
                      volume: VolumeSpec(path: "/data", expectedID: volumeID.description))
    }

    @Test func primaryAndStandbyShareAVolumeAndTheStandbyStartsVerified() async throws {
        try SimFixture.requireRoot()
        let fixture = try await SimFixture(bootDelay: .milliseconds(200))
        let client = fixture.client()
        let pins = InMemoryHostKeyPinStore()
        let verifier = verifier(fixture, pins: pins)

        let hosts = WarmPoolHosts.group(offers: try await client.searchOffers(OfferQuery(gpuName: "RTX_4090")))
        let host = try #require(hosts.first)
        #expect(host.machineID == 77 && host.availableGPUs == 4 && host.canCreateWarmPool)
        let volumeOffer = try #require(try await client.searchVolumeOffers(machineID: host.machineID).first)
        let volumeID = try await client.createVolume(offerID: volumeOffer.id, sizeGB: 20, name: "wp-77")
        // The volume comes empty, as on Vast.ai: the user (here the onstart) writes the marker the
        // verifier reads, once, atomically, before it writes anything else.
        let marker = "/data/\(VolumeSpec.defaultMarkerName)"
        let request = CreateInstanceRequest(
            image: "warmpool/agent", label: "wp-77", env: ["WARMPOOL_ROLE": "primary"],
            onstart: """
                [ -s \(marker) ] || { echo \(volumeID) > \(marker).$CONTAINER_ID && mv \(marker).$CONTAINER_ID \(marker); }
                echo "$CONTAINER_ID $VAST_CONTAINERLABEL $GPU_COUNT $WARMPOOL_ROLE" > /data/onstart-$CONTAINER_ID
                cp /etc/ssh/ssh_host_ed25519_key.pub /data/hostkey-$CONTAINER_ID
                """,
            volume: .init(volumeID: volumeID))
        let primaryID = try await client.createInstance(offerID: host.offers[0].offerID, request)
        let standbyID = try await client.createInstance(offerID: host.offers[1].offerID, request)
        #expect(primaryID != standbyID)

        // Both boot (and their onstarts ran); the standby is then stopped, as a warm pool keeps it.
        let volumeDirectory = fixture.directory + "/state/volumes/\(volumeID)"
        #expect(try await SimFixture.eventually { try await client.instance(id: standbyID)?.isRunning == true })
        #expect(await SimFixture.eventually {
            [primaryID, standbyID].allSatisfy { FileManager.default.fileExists(atPath: volumeDirectory + "/onstart-\($0)") }
        })
        let policy = ReadinessPolicy(deadline: .milliseconds(20_000), attemptTimeout: .milliseconds(5_000))
        let primary = try #require(try await client.instance(id: primaryID))
        let primaryReady = try await verifier.waitUntilReady(try target(primary, volumeID: volumeID), policy: policy)
        #expect(primaryReady.isVerified, "\(String(describing: primaryReady.failure))")
        try await client.stopInstance(id: standbyID)
        let stopped = try #require(try await client.instance(id: standbyID))
        #expect(stopped.isStopped && stopped.intendedStatus == "stopped" && stopped.volumeIDs == [volumeID])
        let standbyTarget = try target(stopped, volumeID: volumeID)
        let refused = try await verifier.verify(standbyTarget, timeout: 2_000 * Self.ms)
        #expect(refused.failure?.reason == .refused, "a stopped instance has no sshd")

        // Failover: start the standby and time it to "SSH verified, right volume, writable".
        let started = ContinuousClock.now
        try await client.startInstance(id: standbyID)
        let ready = try await verifier.waitUntilReady(standbyTarget, policy: policy)
        let startToVerified = ContinuousClock.now - started
        #expect(ready.isVerified, "\(String(describing: ready.failure))")
        #expect(ready.last.volume?.mounted == true && ready.last.volume?.writable == true)
        #expect(ready.last.volume?.marker == .present(volumeID.description))
        #expect(try await client.instance(id: standbyID)?.isRunning == true)
        print("warmpool-sim: start request to SSH-verified standby in \(startToVerified) (boot delay 200 ms, \(ready.attempts) attempts)")

        // One API round trip through libcurl, a kept-alive connection and the emulator.
        let timed = ContinuousClock.now
        for _ in 0..<50 { _ = try await client.instance(id: standbyID) }
        print("warmpool-sim: show_instance round trip \((ContinuousClock.now - timed) / 50) on average over 50 calls")

        // The host key pinned on first contact survived the stop and the start.
        let pinnedAfter = await pins.pinnedFingerprint(for: standbyID)
        #expect(pinnedAfter != nil && pinnedAfter == ready.last.hostKeyFingerprint)

        // Each instance has its own /etc/ssh, whose key is the one its sshd serves (what its agent
        // reports, and the controller pins), not this machine's.
        var seen: Set<String> = []
        for id in [primaryID, standbyID] {
            let copied = try String(contentsOfFile: volumeDirectory + "/hostkey-\(id)", encoding: .utf8)
            let own = try String(contentsOfFile: fixture.directory + "/state/instances/\(id)/etc-ssh/ssh_host_ed25519_key.pub", encoding: .utf8)
            #expect(copied == own)
            let blob = try #require(HostKeyFingerprint.publicKeyBlob(openSSHLine: copied))
            seen.insert(HostKeyFingerprint.base64(blob, padding: false))
        }
        #expect(seen.count == 2, "two instances, two host keys")
        let machineKey = (try? String(contentsOfFile: "/etc/ssh/ssh_host_ed25519_key.pub", encoding: .utf8)) ?? ""
        #expect(!machineKey.isEmpty && !seen.contains(where: { machineKey.contains($0) }), "not this machine's key")

        // Both onstarts ran with the instance env, and wrote through /data into the one volume.
        for id in [primaryID, standbyID] {
            let line = try String(contentsOfFile: volumeDirectory + "/onstart-\(id)", encoding: .utf8)
            #expect(line == "\(id) C.\(id) 1 primary\n")
        }

        // Exactly one start of the standby, one stop, and no third instance.
        let counters = await fixture.counters()
        #expect(counters.starts == [standbyID.description: 1] && counters.stops == [standbyID.description: 1])
        #expect(counters.creates == 2 && counters.boots[standbyID.description] == 2)

        // A volume in use cannot be deleted; after the instances are destroyed it can.
        await #expect(throws: ProviderError.rejected(message: "volume \(volumeID) is linked to instances [\(primaryID), \(standbyID)]; destroy them first")) {
            try await client.deleteVolume(id: volumeID)
        }
        for id in [primaryID, standbyID] { try await client.destroyInstance(id: id) }
        #expect(try await client.listInstances().isEmpty)
        #expect(SimFixture.processes(mentioning: fixture.directory).isEmpty, "destroy ends every instance process")
        try await client.deleteVolume(id: volumeID)
        #expect(try await client.listVolumes().isEmpty)
        #expect(!FileManager.default.fileExists(atPath: volumeDirectory))
        #expect(try await client.searchOffers(OfferQuery()).filter { $0.numGPUs == 1 }.count == 4, "every GPU is free again")
        await fixture.stop()
    }

    @Test func theInstanceListIsPaged() async throws {
        let fixture = try await SimFixture(hosts: [try HostSpec(parsing: "90:30:RTX_3090:0.2")], bootDelay: .seconds(3600))
        let client = fixture.client(pageSize: 7)
        var created: [InstanceID] = []
        for offer in try await client.searchOffers(OfferQuery()).prefix(23) {
            created.append(try await client.createInstance(offerID: offer.id, CreateInstanceRequest(image: "img", label: "batch")))
        }
        let listed = try await client.listInstances()
        #expect(listed.map(\.id) == created.sorted())
        #expect(await fixture.counters().calls["list_instances"] == 4, "23 rows at 7 a page")
        let (_, page) = await fixture.raw("GET", "/api/v1/instances/?limit=25&after_token=\(created[20])")
        #expect(page["instances"]?.arrayValue?.count == 2 && page["next_token"] == .null && page["total_instances"] == 23)
        await fixture.stop()
    }

    @Test func crashFreezeAndAnInstanceThatNeverGetsSSH() async throws {
        try SimFixture.requireRoot()
        let fixture = try await SimFixture(bootDelay: .milliseconds(50))
        let client = fixture.client()
        let volumeID = try await client.createVolume(offerID: OfferID(Int64(HostSpec.defaultHost.volumeOfferID)), sizeGB: 10, name: nil)
        let request = CreateInstanceRequest(image: "img", onstart: "sleep 600", volume: .init(volumeID: volumeID))
        let id = try await client.createInstance(offerID: 7701, request)
        #expect(await SimFixture.eventually { await fixture.processes(of: Int(id.rawValue)).alive })
        let pid = try #require(await fixture.processes(of: Int(id.rawValue)).pid)

        #expect(await fixture.raw("POST", "/admin/instances/\(id)/freeze").0 == 200)
        // SIGSTOP lands asynchronously.
        #expect(await SimFixture.eventually(.seconds(2)) {
            let stat = (try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8)) ?? ""
            return stat.split(separator: ")").last?.trimmingCharacters(in: .whitespaces).first == "T"
        }, "frozen processes are stopped")
        #expect(await fixture.raw("POST", "/admin/instances/\(id)/thaw").0 == 200)

        #expect(await fixture.raw("POST", "/admin/instances/\(id)/crash").0 == 200)
        #expect(kill(pid_t(pid), 0) != 0, "the launcher is gone")
        // This emulator's instance only: other emulators on the machine have instances of this id too.
        #expect(SimFixture.processes(mentioning: fixture.directory + "/state/instances/\(id)/").isEmpty)
        // The provider still says running: only heartbeats can tell.
        #expect(try await client.instance(id: id)?.isRunning == true)
        #expect(await fixture.raw("POST", "/admin/instances/\(id)/crash").0 == 409)
        // Starting the crashed instance launches it again.
        try await client.startInstance(id: id)
        #expect(await SimFixture.eventually { await fixture.processes(of: Int(id.rawValue)).alive })

        #expect(await fixture.raw("POST", "/admin/faults", body: #"{"no_ssh_instances": [1002]}"#).0 == 200)
        let silent = try await client.createInstance(offerID: 7702, request)
        #expect(silent == 1002)
        #expect(try await SimFixture.eventually { try await client.instance(id: silent)?.isRunning == true })
        let instance = try #require(try await client.instance(id: silent))
        let result = try await verifier(fixture, pins: InMemoryHostKeyPinStore()).verify(
            try target(instance, volumeID: volumeID), timeout: 2_000 * Self.ms)
        #expect(result.failure?.reason == .refused, "running, but no sshd")
        await fixture.stop()
        #expect(SimFixture.processes(mentioning: fixture.directory).isEmpty, "shutdown ends every instance")
    }

    @Test func aStopDuringTheBootIsNotACancel() async throws {
        // Vast.ai does not cancel a boot under way: the boot lands, the processes launch (onstart
        // may run briefly), and then the stop takes effect. Only a destroy cancels it.
        let fixture = try await SimFixture(bootDelay: .milliseconds(1_500))
        let client = fixture.client()
        let request = CreateInstanceRequest(image: "img", onstart: "sleep 600")
        let stopped = try await client.createInstance(offerID: 7701, request)
        try await client.stopInstance(id: stopped)
        let accepted = try #require(try await client.instance(id: stopped))
        #expect(accepted.intendedStatus == "stopped" && accepted.actualStatus == "loading", "accepted, the boot carries on")
        #expect(await fixture.counters().boots[stopped.description] == nil)

        // A stop then a start during the boot: one boot, and it stays up.
        let resumed = try await client.createInstance(offerID: 7702, request)
        try await client.stopInstance(id: resumed)
        try await client.startInstance(id: resumed)
        // A destroy during the boot: nothing launches.
        let destroyed = try await client.createInstance(offerID: 7703, request)
        try await client.destroyInstance(id: destroyed)

        #expect(try await SimFixture.eventually { try await client.instance(id: stopped)?.actualStatus == "exited" })
        let directory = fixture.directory + "/state/instances/"
        #expect(await fixture.counters().boots[stopped.description] == 1, "the boot landed and launched")
        #expect(SimFixture.processes(mentioning: directory + "\(stopped)/").isEmpty, "then the stop ended every process")
        #expect(try await client.instance(id: stopped)?.intendedStatus == "stopped")

        #expect(try await SimFixture.eventually { try await client.instance(id: resumed)?.isRunning == true })
        #expect(await fixture.processes(of: Int(resumed.rawValue)).alive)
        let counters = await fixture.counters()
        #expect(counters.boots[resumed.description] == 1 && counters.starts[resumed.description] == 1)
        #expect(counters.boots[destroyed.description] == nil)
        #expect(SimFixture.processes(mentioning: directory + "\(destroyed)/").isEmpty)

        // Started again after that stop, it boots as any stopped instance does.
        try await client.startInstance(id: stopped)
        #expect(try await SimFixture.eventually { try await client.instance(id: stopped)?.isRunning == true })
        #expect(await fixture.counters().boots[stopped.description] == 2)
        await fixture.stop()
        #expect(SimFixture.processes(mentioning: fixture.directory).isEmpty, "shutdown ends every instance")
    }

    @Test func aFrozenInstanceStillStops() async throws {
        // Fencing stops a primary that may be frozen: SIGTERM waits on a stopped process, so the
        // stop sends SIGCONT with it, and SIGKILL after the grace period.
        try SimFixture.requireRoot()
        let fixture = try await SimFixture(bootDelay: .milliseconds(20))
        let client = fixture.client()
        let id = try await client.createInstance(offerID: 7701, CreateInstanceRequest(image: "img", onstart: "sleep 600"))
        #expect(await SimFixture.eventually { await fixture.processes(of: Int(id.rawValue)).alive })
        let directory = try #require(await fixture.processes(of: Int(id.rawValue)).directory)
        #expect(await fixture.raw("POST", "/admin/instances/\(id)/freeze").0 == 200)
        let started = ContinuousClock.now
        try await client.stopInstance(id: id)
        #expect(ContinuousClock.now - started < .seconds(2))
        #expect(SimFixture.processes(mentioning: directory).isEmpty)
        let stopped = try #require(try await client.instance(id: id))
        #expect(stopped.actualStatus == "exited" && stopped.intendedStatus == "stopped")
        await fixture.stop()
    }
    @Test func anUnreachableInstanceIgnoresStopAndOutlivesItsDestroyUntilTheHostIsBack() async throws {
        // The partition drill: the provider cannot reach a cut-off host, so only the lease fences it.
        try SimFixture.requireRoot()
        let fixture = try await SimFixture(bootDelay: .milliseconds(20))
        let client = fixture.client()
        let id = try await client.createInstance(offerID: 7701, CreateInstanceRequest(image: "img", onstart: "sleep 600"))
        #expect(await SimFixture.eventually { await fixture.processes(of: Int(id.rawValue)).alive })
        let directory = try #require(await fixture.processes(of: Int(id.rawValue)).directory)
        // "alive" is the launcher; under load its children (the ones naming the directory) can
        // take a moment more to appear.
        #expect(await SimFixture.eventually { !SimFixture.processes(mentioning: directory).isEmpty })
        #expect(await fixture.raw("POST", "/admin/faults", body: #"{"unreachable_instances": [\#(id)]}"#).0 == 200)

        try await client.stopInstance(id: id)
        #expect(try await client.instance(id: id)?.isRunning == true, "the stop never reached the host")
        #expect(!SimFixture.processes(mentioning: directory).isEmpty)

        try await client.destroyInstance(id: id)
        #expect(try await client.instance(id: id) == nil, "gone from the API")
        #expect(!SimFixture.processes(mentioning: directory).isEmpty, "still running on the cut-off host")
        #expect(try await client.searchOffers(OfferQuery()).filter { $0.numGPUs == 1 }.count == 3, "its GPU is still busy")

        #expect(await fixture.raw("POST", "/admin/faults", body: "{}").0 == 200)
        #expect(SimFixture.processes(mentioning: directory).isEmpty, "the host is back: the destroy took effect")
        await fixture.stop()
    }

    @Test func aStaleStopIsReportedDoneWhileTheInstanceRunsOn() async throws {
        // The partition and pause drills: the provider answers from its intention, not the host.
        try SimFixture.requireRoot()
        let fixture = try await SimFixture(bootDelay: .milliseconds(20))
        let client = fixture.client()
        let id = try await client.createInstance(offerID: 7701, CreateInstanceRequest(image: "img", onstart: "sleep 600"))
        #expect(await SimFixture.eventually { await fixture.processes(of: Int(id.rawValue)).alive })
        let directory = try #require(await fixture.processes(of: Int(id.rawValue)).directory)
        #expect(await SimFixture.eventually { !SimFixture.processes(mentioning: directory).isEmpty })
        let faults = #"{"unreachable_instances": [\#(id)], "stale_stop_instances": [\#(id)]}"#
        #expect(await fixture.raw("POST", "/admin/faults", body: faults).0 == 200)

        try await client.stopInstance(id: id)
        let reported = try #require(try await client.instance(id: id))
        #expect(reported.actualStatus == "exited" && reported.intendedStatus == "stopped", "reported stopped")
        #expect(!SimFixture.processes(mentioning: directory).isEmpty, "still running on the host")

        try await client.destroyInstance(id: id)
        #expect(await fixture.raw("POST", "/admin/faults", body: "{}").0 == 200)
        #expect(SimFixture.processes(mentioning: directory).isEmpty, "the host is back: the destroy took effect")
        await fixture.stop()
    }
}
