import Crypto
import Foundation
import Hummingbird
import Synchronization
import Testing
import WarmpoolModel
import WarmpoolProvider
import WarmpoolSim
import WarmpoolTestSupport

/// The marketplace as it is (reference/vastai-marketplace.md): a stopped instance reserves no
/// GPU, other renters take free ones, a higher bid pauses an interruptible instance, a machine
/// goes offline with everything on it, endpoints have minimum intervals, and Vast.ai's own
/// notifications arrive signed, at least once.
@Suite(.serialized) struct MarketplaceTests {
    static let twoGPUs = HostSpec(machineID: 77, gpuCount: 2, gpuName: "RTX 4090", pricePerGPUHour: 0.45)

    @Test func aStoppedInstanceReservesNoGPUAndItsStartWaitsInSchedulingUntilOneIsFree() async throws {
        let fixture = try await SimFixture(hosts: [Self.twoGPUs])
        #expect(await fixture.raw("PUT", "/api/v0/asks/7701/", body: #"{"image": "img"}"#).0 == 200)
        #expect(await fixture.raw("PUT", "/api/v0/asks/7702/", body: #"{"image": "img"}"#).0 == 200)
        #expect(await SimFixture.eventually { await fixture.status(of: 1002) == "running" })
        #expect(await fixture.offerIDs().isEmpty)
        // Stopped: its GPU is on offer again, and another renter takes it.
        #expect(await fixture.raw("PUT", "/api/v0/instances/1002/", body: #"{"state": "stopped"}"#).0 == 200)
        #expect(await fixture.status(of: 1002) == "exited")
        #expect(await fixture.offerIDs() == [7702])
        #expect(await fixture.raw("POST", "/admin/faults", body: #"{"rented_gpus": {"77": 1}}"#).0 == 200)
        #expect(await fixture.offerIDs().isEmpty)
        // The start is accepted and waits: no GPU, no boot, for as long as the renter keeps it.
        #expect(await fixture.raw("PUT", "/api/v0/instances/1002/", body: #"{"state": "running"}"#).0 == 200)
        try await Task.sleep(for: .milliseconds(500))
        #expect(await fixture.status(of: 1002) == "scheduling")
        #expect(await fixture.counters().boots["1002"] == 1, "only the boot after its create")
        // The renter gives the GPU back: the waiting start gets it and boots.
        #expect(await fixture.raw("POST", "/admin/faults", body: "{}").0 == 200)
        #expect(await SimFixture.eventually { await fixture.status(of: 1002) == "running" })
        // A stop while scheduling ends the wait.
        #expect(await fixture.raw("PUT", "/api/v0/instances/1002/", body: #"{"state": "stopped"}"#).0 == 200)
        #expect(await fixture.raw("POST", "/admin/faults", body: #"{"full_hosts": [77]}"#).0 == 200)
        #expect(await fixture.raw("PUT", "/api/v0/instances/1002/", body: #"{"state": "running"}"#).0 == 200)
        #expect(await fixture.status(of: 1002) == "scheduling")
        #expect(await fixture.raw("PUT", "/api/v0/instances/1002/", body: #"{"state": "stopped"}"#).0 == 200)
        #expect(await fixture.status(of: 1002) == "exited")
        #expect(await fixture.raw("POST", "/admin/faults", body: "{}").0 == 200)
        try await Task.sleep(for: .milliseconds(300))
        #expect(await fixture.status(of: 1002) == "exited", "a cancelled start does not come back")
        await fixture.stop()
    }

    @Test func anInterruptibleInstanceIsPausedWhenOutbidAndResumesWhenTheBidGivesTheGPUBack() async throws {
        let receiver = try await NotificationReceiver(secret: "vast-secret")
        let fixture = try await SimFixture(hosts: [Self.twoGPUs], notificationURLs: [receiver.url], notificationSecret: "vast-secret")
        #expect(await fixture.raw("PUT", "/api/v0/asks/7701/", body: #"{"image": "img"}"#).0 == 200)
        #expect(await fixture.raw("PUT", "/api/v0/asks/7702/", body: #"{"image": "img", "price": 0.3}"#).0 == 200)
        #expect(await SimFixture.eventually { await fixture.processes(of: 1002).alive })
        #expect(await launched(fixture, 1002))
        #expect(await SimFixture.eventually { await fixture.status(of: 1001) == "running" })
        let (refused, answer) = await fixture.raw("POST", "/admin/instances/1001/outbid")
        #expect(refused == 409 && answer["error"] == "on_demand", "an on-demand instance is never outbid")
        #expect(await fixture.raw("POST", "/admin/instances/1002/outbid").0 == 200)
        #expect(await fixture.status(of: 1002) == "stopped")
        let shown = await fixture.raw("GET", "/api/v0/instances/1002/?owner=me").1["instances"]
        #expect(shown?["intended_status"] == "running" && shown?["is_bid"] == true)
        let pid = try #require(await fixture.processes(of: 1002).pid)
        #expect(await SimFixture.eventually { processState(pid) == "T" }, "paused, not ended; \(Self.describe(pid))")
        #expect(await SimFixture.eventually { receiver.received().contains { $0.kind == "outbid" && $0.instanceID == 1002 } })
        // The higher bid leaves: the same GPU comes back and the processes go on.
        #expect(await fixture.raw("POST", "/admin/faults", body: #"{"rented_gpus": {"77": 0}}"#).0 == 200)
        #expect(await fixture.status(of: 1002) == "running")
        #expect(await SimFixture.eventually { processState(pid) != "T" })
        #expect(await SimFixture.eventually { receiver.received().contains { $0.kind == "instance_resumed" } })
        #expect(receiver.failures().isEmpty, "\(receiver.failures())")
        await fixture.stop()
        await receiver.stop()
    }

    @Test func anOfflineMachineTakesEveryInstanceAndDefersWhatIsAskedUntilItIsBack() async throws {
        let receiver = try await NotificationReceiver(secret: "s")
        let fixture = try await SimFixture(hosts: [Self.twoGPUs], notificationURLs: [receiver.url], notificationSecret: "s")
        #expect(await fixture.raw("PUT", "/api/v0/asks/7701/", body: #"{"image": "img"}"#).0 == 200)
        #expect(await SimFixture.eventually { await fixture.processes(of: 1001).alive })
        #expect(await launched(fixture, 1001))
        let pid = try #require(await fixture.processes(of: 1001).pid)
        #expect(await fixture.raw("POST", "/admin/faults", body: #"{"offline_machines": [77], "duplicate_notifications": true}"#).0 == 200)
        #expect(await fixture.status(of: 1001) == "offline")
        #expect(await SimFixture.eventually { processState(pid) == "T" }, "unreachable: nothing on the machine runs; \(Self.describe(pid))")
        #expect(await fixture.offerIDs().isEmpty)
        #expect(await fixture.raw("PUT", "/api/v0/asks/7702/", body: #"{"image": "img"}"#).1["error"] == "no_such_ask")
        // A stop is recorded, not carried out: the provider cannot reach the machine.
        #expect(await fixture.raw("PUT", "/api/v0/instances/1001/", body: #"{"state": "stopped"}"#).0 == 200)
        #expect(await fixture.processes(of: 1001).alive)
        #expect(await SimFixture.eventually {
            receiver.received().filter { $0.kind == "instance_offline" }.count == 2  // delivered twice: at least once
        })
        let offline = receiver.received().filter { $0.kind == "instance_offline" }
        #expect(Set(offline.map(\.eventID)).count == 1 && offline.map(\.attempt).sorted() == [1, 2], "one event, two deliveries")
        #expect(await fixture.raw("POST", "/admin/faults", body: "{}").0 == 200)
        #expect(await fixture.status(of: 1001) == "exited", "the stop took effect once the machine was back")
        #expect(!(await fixture.processes(of: 1001).alive))
        #expect(await SimFixture.eventually { receiver.received().contains { $0.kind == "instance_online" } })
        #expect(await fixture.raw("POST", "/admin/notifications",
                                  body: #"{"notif_type": "maintenance_scheduled", "machine_id": 77, "data": {"start_time": 1900000000}}"#).0 == 200)
        #expect(await SimFixture.eventually { receiver.received().contains { $0.kind == "maintenance_scheduled" } })
        #expect(receiver.failures().isEmpty, "\(receiver.failures())")
        await fixture.stop()
        await receiver.stop()
    }

    @Test func endpointsHaveMinimumIntervalsAnsweredWithVastAisKindsOf429() async throws {
        let fixture = try await SimFixture(bootDelay: .seconds(3600), mountVolumes: false)
        #expect(await fixture.raw("POST", "/admin/faults", body: #"{"min_interval_ms": {"show_instance": 60000, "*": 0}}"#).0 == 200)
        var answers: [SimResponse] = []
        for _ in 0..<4 {
            answers.append(await fixture.simulator.handle(SimRequest(
                method: "GET", path: "/api/v0/instances/1001/", authorization: "Bearer \(SimFixture.apiKey)")))
        }
        #expect(answers.map(\.status) == [200, 429, 429, 429], "the first within the interval is served, the rest refused")
        #expect(answers.allSatisfy { $0.retryAfterSeconds == nil }, "Vast.ai sends no Retry-After")
        let plain = answers.compactMap(\.text)
        #expect(plain.count == 2 && plain.allSatisfy { $0.hasPrefix("API requests too frequent: endpoint threshold=60") }, "\(plain)")
        #expect(answers.contains { $0.status == 429 && $0.text == nil && $0.body["success"] == false })
        let counters = await fixture.counters()
        #expect(counters.rateLimited == ["show_instance": 3] && counters.calls == ["show_instance": 1])
        // Other endpoints are limited apart.
        #expect(await fixture.raw("GET", "/api/v1/instances/").0 == 200)
        await fixture.stop()
    }

    /// A machine lost for good (issue 21's host-loss drill): offline, and never back; its
    /// instances dead, not paused; what its volume held gone; a destroy done at once, so that the
    /// volume can be deleted.
    @Test func aLostMachineIsOfflineForGoodWithItsInstancesDeadAndItsVolumeEmptied() async throws {
        try SimFixture.requireRoot()
        let fixture = try await SimFixture(hosts: [Self.twoGPUs], bootDelay: .milliseconds(50), mountVolumes: true)
        let client = fixture.client()
        let volumeID = try await client.createVolume(offerID: OfferID(Int64(Self.twoGPUs.volumeOfferID)), sizeGB: 1, name: "doomed")
        let volumeDirectory = fixture.directory + "/state/volumes/\(volumeID)"
        let id = try await client.createInstance(offerID: 7701, CreateInstanceRequest(
            image: "img", onstart: "echo precious > /data/model.bin", volume: .init(volumeID: volumeID, mountPath: "/data")))
        #expect(await SimFixture.eventually { FileManager.default.fileExists(atPath: volumeDirectory + "/model.bin") })
        let pid = try #require(await fixture.processes(of: Int(id.rawValue)).pid)

        #expect(await fixture.raw("POST", "/admin/faults", body: #"{"lost_machines": [77]}"#).0 == 200)
        #expect(await fixture.status(of: Int(id.rawValue)) == "offline")
        #expect(await SimFixture.eventually { processState(pid) == nil || processState(pid) == "Z" }, "dead, not paused")
        #expect(try FileManager.default.contentsOfDirectory(atPath: volumeDirectory).isEmpty, "the volume's contents are lost")
        #expect(await fixture.offerIDs().isEmpty)
        // A plan without it does not bring it back.
        #expect(await fixture.raw("POST", "/admin/faults", body: "{}").0 == 200)
        #expect(await fixture.status(of: Int(id.rawValue)) == "offline")
        #expect(await fixture.raw("GET", "/admin/faults").1["lost_machines"] == [77])
        // Nothing is left to end: the destroy takes effect, then the volume can go.
        try await client.destroyInstance(id: id)
        #expect(try await client.instance(id: id) == nil)
        try await client.deleteVolume(id: volumeID)
        #expect(try await client.listVolumes().isEmpty)
        await fixture.stop()
    }

    /// Until the instance's launcher has started what it runs and only `wait`s. A stop that lands
    /// while it is still starting them can catch it inside vfork: its child stops before exec, and
    /// the launcher waits for it uninterruptibly (state D) with the stop pending. Paused all the
    /// same, but not shown as stopped (T): these tests look for T (seen in about one run in ten).
    private func launched(_ fixture: SimFixture, _ id: Int) async -> Bool {
        await SimFixture.eventually {
            guard let directory = await fixture.processes(of: id).directory else { return false }
            return FileManager.default.fileExists(atPath: directory + "/launched")
        }
    }

    /// What a failed wait for a stop shows of the process: its state, group, parent and signals.
    static func describe(_ pid: Int) -> String {
        let stat = (try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8)) ?? "no /proc/\(pid)/stat"
        let status = ((try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)) ?? "")
            .split(separator: "\n").filter { ["State", "PPid", "NSpid", "SigPnd", "ShdPnd", "SigBlk", "SigIgn"].contains(String($0.prefix { $0 != ":" })) }
        return "stat: \(stat.prefix(120)); \(status.joined(separator: ", "))"
    }

    private func processState(_ pid: Int) -> Character? {
        (try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8))?.split(separator: ")").last?
            .trimmingCharacters(in: .whitespaces).first
    }
}

/// A webhook receiver on loopback that checks each delivery's Vast.ai signature and keeps what came.
final class NotificationReceiver: Sendable {
    struct Received: Sendable {
        var eventID: String
        var kind: String
        var instanceID: Int?
        var attempt: Int
    }

    let url: String
    private let server: Task<Void, any Error>
    private final class Log: Sendable {
        let lock = Mutex<(received: [Received], failures: [String])>(([], []))
    }
    private let log = Log()

    init(secret: String) async throws {
        let key = SymmetricKey(data: Data(secret.utf8))
        let log = self.log
        let responder = CallbackResponder<BasicRequestContext> { request, _ in
            var buffer = try await request.body.collect(upTo: 1 << 20)
            let body = Data(buffer.readBytes(length: buffer.readableBytes) ?? [])
            func header(_ name: String) -> String? {
                request.headers.first { $0.name.rawName.lowercased() == name.lowercased() }?.value
            }
            let timestamp = header("X-Vast-Timestamp") ?? ""
            let expected = "sha256=" + HMAC<SHA256>.authenticationCode(for: Data(timestamp.utf8) + Data(".".utf8) + body, using: key)
                .map { String(format: "%02x", $0) }.joined()
            let json = try? JSON.parse(body)
            log.lock.withLock { state in
                guard header("X-Vast-Signature-256") == expected, let json, let eventID = header("X-Vast-Event-Id"),
                    json["event_id"]?.stringValue == eventID, let attempt = header("X-Vast-Delivery-Attempt").flatMap(Int.init),
                    let kind = json["notif_type"]?.stringValue, json["data_truncated"] == false, json["timestamp"]?.numberValue != nil
                else {
                    state.failures.append("bad delivery: \(String(decoding: body, as: UTF8.self))")
                    return
                }
                state.received.append(Received(eventID: eventID, kind: kind, instanceID: json["data"]?["instance_id"]?.intValue,
                                               attempt: attempt))
            }
            return Response(status: .ok)
        }
        let (ports, continuation) = AsyncStream.makeStream(of: Int.self)
        let app = Application(responder: responder, configuration: .init(address: .hostname("127.0.0.1", port: 0)),
                              onServerRunning: { continuation.yield($0.localAddress?.port ?? 0) }, logger: SimFixture.logger)
        server = Task { try await app.runService(gracefulShutdownSignals: []) }
        var iterator = ports.makeAsyncIterator()
        guard let port = await iterator.next() else { throw HarnessError("the receiver did not start") }
        url = "http://127.0.0.1:\(port)/vast"
    }

    func received() -> [Received] { log.lock.withLock { $0.received } }
    func failures() -> [String] { log.lock.withLock { $0.failures } }
    func stop() async { server.cancel() }
}
