import Foundation
import Logging
import Testing
import WarmpoolJSON
import WarmpoolNotify
import WarmpoolStore

#if canImport(Glibc)
import Glibc
#endif

/// The real controller binary's REST API: its answers checked against Protocol/openapi.yaml, and
/// its state across a SIGKILL.
@Suite(.serialized) struct ControlPlaneTests {
    /// Seeds what only the failover engine writes (a failover with its timeline), so that the
    /// history route has something to show.
    /// Registers an agent through the API; returns the file its secret was written to.
    private func registerAgent(_ harness: Harness, base: String, key: String, _ body: String) throws -> String {
        let registration = try http("POST", "\(base)/api/v1/warmpool/agents", key: key, body: body)
        #expect(registration.status == 201, "\(registration.text)")
        let agentID = registration.json["agent_id"]?.stringValue ?? "agent"
        let secretFile = harness.directory + "/\(agentID).secret"
        try Data(((registration.json["secret"]?.stringValue ?? "") + "\n").utf8).write(to: URL(fileURLWithPath: secretFile))
        return secretFile
    }

    private func seedFailover(_ harness: Harness) async throws {
        let store = try SQLiteStore(path: harness.databasePath, logger: Logger(label: "test.seed"))
        let start = Date()
        var failover = FailoverRecord(id: "fo-12-1", poolID: 12, reason: "primary failed: silent 355 ms", oldPrimaryInstanceID: 4242, epoch: 2, startedAt: start)
        failover.result = .succeeded
        failover.newPrimaryInstanceID = 4243
        failover.finishedAt = start.addingTimeInterval(11.5)
        try await store.commit(PoolTransition(
            pool: PoolRecord(
                poolID: 12, hostMachineID: 77, state: .active, volumeID: 9, primaryInstanceID: 4242, standbyInstanceID: 4244,
                standbyState: .stopped, primarySSHHost: "127.0.0.1", primarySSHPort: 2222, failoverCount: 1, lastFailoverAt: start, epoch: 2),
            failover: failover,
            steps: [
                TimelineStep(failoverID: "fo-12-1", sequence: 1, step: "detected", at: start),
                TimelineStep(failoverID: "fo-12-1", sequence: 2, step: "promoted", at: start.addingTimeInterval(11.5), detail: "epoch 2"),
            ],
            events: [PoolEvent(poolID: 12, agentID: "gpu-12", kind: "failed", at: start, detail: "silent 355 ms")]))
    }

    /// A plain TCP connection to the controller's API, with a receive timeout.
    private func apiSocket(_ harness: Harness, receiveTimeoutSeconds: Int = 5) throws -> Int32 {
        let parts = harness.apiAddress.split(separator: ":")
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(parts.last.map(String.init) ?? "0") ?? 0).bigEndian
        inet_pton(AF_INET, String(parts.first ?? "127.0.0.1"), &address.sin_addr)
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard connected == 0 else {
            close(fd)
            throw HarnessError("cannot connect to the API at \(harness.apiAddress): errno \(errno)")
        }
        var timeout = timeval(tv_sec: receiveTimeoutSeconds, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        return fd
    }

    /// A client that drips its body a byte at a time is never idle, so the idle timeout never
    /// closes it: the body deadline answers 408 (issue 20's request timeout).
    @Test func aBodyThatDripsInIsCutOffAtTheBodyDeadline() throws {
        let harness = try Harness()
        try harness.startController(extra: ["--api-idle-timeout-s", "5", "--api-body-timeout-s", "1"])
        let fd = try apiSocket(harness, receiveTimeoutSeconds: 1)
        defer { close(fd) }
        let head = Array("POST /api/v1/warmpool/agents HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \(try harness.adminAPIKey())\r\nContent-Type: application/json\r\nContent-Length: 200\r\n\r\n{".utf8)
        _ = head.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
        let started = Date()
        var answer: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        // One byte every 200 ms: 40 s for the whole body, and never 5 s without one.
        while Date().timeIntervalSince(started) < 15, !String(decoding: answer, as: UTF8.self).contains("\r\n\r\n") {
            _ = [UInt8](" ".utf8).withUnsafeBytes { send(fd, $0.baseAddress, 1, Int32(MSG_NOSIGNAL)) }
            var pollFD = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            if poll(&pollFD, 1, 200) > 0 {
                let read = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
                if read <= 0 { break }
                answer += buffer[0..<read]
            }
        }
        let waited = Date().timeIntervalSince(started)
        let text = String(decoding: answer, as: UTF8.self)
        #expect(text.hasPrefix("HTTP/1.1 408"), "\(text)")
        #expect(waited < 5, "answered at the 1 s body deadline, not after the body: \(waited) s")
        // The rest of the body is never read: the connection is not kept for another request.
        var rest = [UInt8](repeating: 0, count: 4096)
        var closed = false
        let closeBy = Date().addingTimeInterval(6)
        while Date() < closeBy {
            let read = rest.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if read == 0 || (read < 0 && errno == ECONNRESET) { closed = true; break }
        }
        #expect(closed, "the connection closes after the 408")
    }

    @Test func anAPIConnectionThatNeverFinishesItsRequestIsClosed() throws {
        let harness = try Harness()
        try harness.startController(extra: ["--api-idle-timeout-s", "1"])
        let fd = try apiSocket(harness)
        defer { close(fd) }
        let partial = Array("GET /healthz HTTP/1.1\r\nHost: x\r\n".utf8)  // the blank line never comes
        _ = partial.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, 0) }
        let started = Date()
        var buffer = [UInt8](repeating: 0, count: 256)
        let read = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
        let waited = Date().timeIntervalSince(started)
        #expect(read == 0, "the controller closed the connection (recv \(read), errno \(errno))")
        #expect(waited < 4.5, "closed by the idle timeout, not left open: \(waited) s")
    }

    @Test func everyFileTheControllerWritesIsReadableByItAlone() async throws {
        let harness = try Harness()
        try harness.startController()
        let base = "http://\(harness.apiAddress)"
        // Minting an agent key writes its secret to the store, and so to the WAL first.
        _ = try registerAgent(harness, base: base, key: try harness.adminAPIKey(), #"{"agent_id": "gpu-9", "role": "primary"}"#)
        let directory = harness.directory + "/db"
        let mode = { (path: String) -> Int in
            ((try? FileManager.default.attributesOfItem(atPath: path))?[.posixPermissions] as? NSNumber)?.intValue ?? -1
        }
        #expect(mode(directory) == 0o700, "the state directory: \(String(mode(directory), radix: 8))")
        let files = try FileManager.default.contentsOfDirectory(atPath: directory).sorted()
        for file in ["warmpool.db", "warmpool.db-wal", "warmpool.db-shm", "admin-api-key"] {
            #expect(files.contains(file), "\(files)")
        }
        for file in files {
            #expect(mode(directory + "/" + file) & 0o077 == 0, "\(file) is \(String(mode(directory + "/" + file), radix: 8))")
        }
        let secret = try String(contentsOfFile: directory + "/admin-api-key", encoding: .utf8)
        #expect(secret.hasSuffix("\n") && secret.count > 20)
    }

    @Test func everyAnswerOfTheLiveServerConformsToOpenAPI() async throws {
        let document = try OpenAPIDocument(path: try OpenAPIDocument.locate())
        let harness = try Harness()
        try await seedFailover(harness)
        let vastSecret = "vast-webhook-secret"
        try Data((vastSecret + "\n").utf8).write(to: URL(fileURLWithPath: harness.directory + "/vast-secret"))
        try harness.startController(extra: ["--vast-webhook-secret-file", harness.directory + "/vast-secret"])
        let base = "http://\(harness.apiAddress)"
        let key = try harness.adminAPIKey()

        // A registered agent, live, so the agent listing carries its GPU and volume summary.
        let secretFile = try registerAgent(harness, base: base, key: key,
                                           #"{"agent_id": "gpu-12", "machine_id": 12, "instance_id": 4242, "role": "primary"}"#)
        _ = try harness.startAgent("gpu-12", secretFile: secretFile)
        try harness.waitUntil("the registered agent is alive", timeout: 20) {
            let agents = (try? http("GET", "\(base)/api/v1/warmpool/agents", key: key).json["agents"])?.arrayValue ?? []
            return agents.contains { $0["agent_id"]?.stringValue == "gpu-12" && $0["state"]?.stringValue == "alive" && $0["gpu"]?.objectValue != nil }
        }
        let created = try http("POST", "\(base)/api/v1/keys", key: key, body: #"{"name": "second"}"#)
        let secondID = created.json["id"]?.stringValue ?? ""

        let big = "{\"name\": \"" + String(repeating: "x", count: 70_000) + "\"}"
        let calls: [(String, String, String, String?, String?, Int)] = [
            ("GET", "/healthz", "/healthz", nil, nil, 200),
            ("GET", "/metrics", "/metrics", key, nil, 200),
            ("GET", "/metrics", "/metrics", nil, nil, 401),
            ("GET", "/api/v1/warmpool/status/12", "/api/v1/warmpool/status/{machine_id}", key, nil, 200),
            ("GET", "/api/v1/warmpool/status/13", "/api/v1/warmpool/status/{machine_id}", key, nil, 404),
            ("GET", "/api/v1/warmpool/status/x", "/api/v1/warmpool/status/{machine_id}", key, nil, 400),
            ("GET", "/api/v1/warmpool/status/12", "/api/v1/warmpool/status/{machine_id}", nil, nil, 401),
            ("GET", "/api/v1/warmpool/hosts", "/api/v1/warmpool/hosts", key, nil, 503),
            ("GET", "/api/v1/warmpool/breaker", "/api/v1/warmpool/breaker", key, nil, 200),
            ("GET", "/api/v1/warmpool/breaker", "/api/v1/warmpool/breaker", nil, nil, 401),
            ("POST", "/api/v1/warmpool/breaker/release", "/api/v1/warmpool/breaker/release", key, "{}", 200),
            ("POST", "/api/v1/warmpool/breaker/release", "/api/v1/warmpool/breaker/release", key, "{not json", 400),
            ("GET", "/api/v1/warmpool/hosts?min_gpus=0", "/api/v1/warmpool/hosts", key, nil, 400),
            ("POST", "/api/v1/warmpool/provision", "/api/v1/warmpool/provision", key, #"{"machine_id": 12, "host_machine_id": 77}"#, 503),
            ("POST", "/api/v1/warmpool/provision", "/api/v1/warmpool/provision", key, #"{"machine_id": "12"}"#, 400),
            ("POST", "/api/v1/warmpool/provision", "/api/v1/warmpool/provision", key, big, 413),
            ("POST", "/api/v1/warmpool/disable/12", "/api/v1/warmpool/disable/{machine_id}", key, nil, 200),
            ("POST", "/api/v1/warmpool/enable/12", "/api/v1/warmpool/enable/{machine_id}", key, nil, 200),
            ("POST", "/api/v1/warmpool/enable/13", "/api/v1/warmpool/enable/{machine_id}", key, nil, 404),
            ("POST", "/api/v1/warmpool/failover/test/12", "/api/v1/warmpool/failover/test/{machine_id}", key, nil, 503),
            ("DELETE", "/api/v1/warmpool/cleanup/13", "/api/v1/warmpool/cleanup/{machine_id}", key, nil, 404),
            ("GET", "/api/v1/warmpool/pools", "/api/v1/warmpool/pools", key, nil, 200),
            ("PUT", "/api/v1/warmpool/settings/12", "/api/v1/warmpool/settings/{machine_id}", key, #"{"gpu_preferences": ["RTX 4090"]}"#, 200),
            ("PUT", "/api/v1/warmpool/settings/12", "/api/v1/warmpool/settings/{machine_id}", key, #"{"strategy": "warm"}"#, 400),
            ("GET", "/api/v1/warmpool/settings/12", "/api/v1/warmpool/settings/{machine_id}", key, nil, 200),
            ("GET", "/api/v1/warmpool/history/12", "/api/v1/warmpool/history/{machine_id}", key, nil, 200),
            ("GET", "/api/v1/warmpool/events/12", "/api/v1/warmpool/events/{machine_id}", key, nil, 200),
            ("GET", "/api/v1/warmpool/agents", "/api/v1/warmpool/agents", key, nil, 200),
            ("POST", "/api/v1/warmpool/agents", "/api/v1/warmpool/agents", key, #"{"agent_id": "gpu-12"}"#, 409),
            ("POST", "/api/v1/warmpool/agents", "/api/v1/warmpool/agents", key, #"{"agent_id": "gpu-13", "role": "standby"}"#, 201),
            ("DELETE", "/api/v1/warmpool/agents/gpu-13", "/api/v1/warmpool/agents/{agent_id}", key, nil, 200),
            ("DELETE", "/api/v1/warmpool/agents/gpu-13", "/api/v1/warmpool/agents/{agent_id}", key, nil, 404),
            ("GET", "/api/v1/keys", "/api/v1/keys", key, nil, 200),
            ("GET", "/api/v1/version", "/api/v1/version", key, nil, 200),
            ("POST", "/api/v1/keys", "/api/v1/keys", key, #"{"name": "third"}"#, 201),
            ("DELETE", "/api/v1/keys/\(secondID)", "/api/v1/keys/{key_id}", key, nil, 200),
            ("DELETE", "/api/v1/keys/\(secondID)", "/api/v1/keys/{key_id}", key, nil, 404),
            ("POST", "/api/v1/warmpool/repair/12", "/api/v1/warmpool/repair/{machine_id}", key, nil, 503),
            ("POST", "/api/v1/warmpool/repair/13", "/api/v1/warmpool/repair/{machine_id}", key, nil, 404),
            ("POST", "/api/v1/warmpool/repair/12", "/api/v1/warmpool/repair/{machine_id}", nil, nil, 401),
            // No snapshot store here: a clear 409; bad input is a 400 before that.
            ("GET", "/api/v1/warmpool/snapshots/12", "/api/v1/warmpool/snapshots/{machine_id}", key, nil, 409),
            ("GET", "/api/v1/warmpool/snapshots/x", "/api/v1/warmpool/snapshots/{machine_id}", key, nil, 400),
            ("POST", "/api/v1/warmpool/snapshot/12", "/api/v1/warmpool/snapshot/{machine_id}", key, nil, 409),
            ("POST", "/api/v1/warmpool/restore/12", "/api/v1/warmpool/restore/{machine_id}", key, #"{"snapshot": "$(reboot)"}"#, 400),
            ("POST", "/api/v1/warmpool/restore/12", "/api/v1/warmpool/restore/{machine_id}", key, nil, 409),
            // No provider, no prices.
            ("GET", "/api/v1/warmpool/costs/12", "/api/v1/warmpool/costs/{machine_id}", key, nil, 409),
        ]
        var exercised = Set<String>()
        for (method, path, template, callKey, body, expected) in calls {
            let answer = try http(method, base + path, key: callKey, body: body)
            #expect(answer.status == expected, "\(method) \(path): \(answer.text.prefix(300))")
            let problems = document.problems(method: method, template: template, status: answer.status, contentType: answer.contentType, body: answer.body)
            #expect(problems.isEmpty, "\(method) \(path) → \(answer.status): \(problems)")
            exercised.insert("\(method) \(template)")
        }
        // Vast.ai's notifications: signed instead of a key.
        let notice = #"{"event_id": "e1", "user_id": 1, "notif_type": "outbid", "subject": "s", "message": "m", "data": {"instance_id": 4242}, "data_truncated": false, "timestamp": 1772490000.5}"#
        let now = Int64(Date().timeIntervalSince1970)
        let signed = ["X-Vast-Timestamp": String(now), "X-Vast-Event-Id": "e1", "X-Vast-Delivery-Attempt": "1",
                      "X-Vast-Signature-256": WebhookSignature.sign(body: Data(notice.utf8), timestamp: now, secret: Data(vastSecret.utf8))]
        let template = "/api/v1/provider/vast/notifications"
        for (headers, body, expected) in [(signed, notice, 200), ([:], notice, 401), (signed, notice + " ", 401)] {
            let answer = try http("POST", base + template, key: nil, body: body, headers: headers)
            #expect(answer.status == expected, "\(answer.text)")
            let problems = document.problems(method: "POST", template: template, status: answer.status, contentType: answer.contentType, body: answer.body)
            #expect(problems.isEmpty, "POST \(template) → \(answer.status): \(problems)")
            exercised.insert("POST \(template)")
        }
        #expect(document.operations.subtracting(exercised).isEmpty, "never called: \(document.operations.subtracting(exercised).sorted())")

        let history = try http("GET", "\(base)/api/v1/warmpool/history/12", key: key).json
        let failovers = history["failovers"]?.arrayValue ?? []
        #expect(failovers.first?["timeline"]?.arrayValue?.count == 2)
        let metrics = try http("GET", "\(base)/metrics", key: key).text
        #expect(metrics.contains("warmpool_agents_connected 1"))
        #expect(metrics.contains("warmpool_liveness_events_total{event=\"connected\"} 1"))
    }

    @Test func aSecondControllerOnTheSameDatabaseRefusesToStart() async throws {
        let harness = try Harness()
        try harness.startController()
        let first = try #require(harness.controller)
        let second = try harness.spawn("warmpool-controller", [
            "--listen", "127.0.0.1:0", "--keys-file", harness.keysPath, "--events", harness.directory + "/events-2",
            "--db", harness.databasePath, "--api-listen", "127.0.0.1:0",
        ], log: harness.logPath("controller-2"))
        second.waitUntilExit()
        #expect(second.terminationStatus == 1)
        let log = (try? String(contentsOfFile: harness.logPath("controller-2"), encoding: .utf8)) ?? ""
        #expect(log.contains("another warmpool-controller (pid \(first.processIdentifier)) is running against this database"), "\(log)")
        #expect(log.contains(harness.databasePath + ".lock"))
        #expect(first.isRunning, "the first one runs on")
        let health = try http("GET", "http://\(harness.apiAddress)/healthz", key: nil)
        #expect(health.status == 200)

        // SIGKILL drops the lock with the process: a restart is never locked out by a crash.
        harness.killController()
        try harness.startController()
        #expect(harness.controller?.isRunning == true)
    }

    @Test func aControllerKilledWithSIGKILLFindsEverythingAgainOnRestart() async throws {
        let harness = try Harness()
        try harness.startController()
        var base = "http://\(harness.apiAddress)"
        let admin = try harness.adminAPIKey()
        #expect(try http("PUT", "\(base)/api/v1/warmpool/settings/5", key: admin, body: #"{"strategy": "cpu_standby", "volume_size_gb": 300}"#).status == 200)
        let ops = try http("POST", "\(base)/api/v1/keys", key: admin, body: #"{"name": "ops"}"#).json["key"]?.stringValue ?? ""
        let secretFile = try registerAgent(harness, base: base, key: admin, #"{"agent_id": "gpu-5", "machine_id": 5}"#)
        _ = try harness.startAgent("gpu-5", secretFile: secretFile, extra: ["--machine-id", "5"])
        _ = try harness.waitForEvent("connected", for: "gpu-5", timeout: 20)
        // The event recorder batches for up to 200 ms; let it write before the kill.
        try harness.waitUntil("the connected event is stored", timeout: 10) {
            let events = (try? http("GET", "\(base)/api/v1/warmpool/events/5", key: admin).json["events"])?.arrayValue ?? []
            return events.contains { $0["kind"]?.stringValue == "connected" }
        }

        harness.killController()
        let eventsBeforeRestart = harness.events().count
        try harness.startController(listen: harness.controllerAddress)
        base = "http://\(harness.apiAddress)"

        let settings = try http("GET", "\(base)/api/v1/warmpool/settings/5", key: ops)
        #expect(settings.status == 200, "the ops key survives")
        #expect(settings.json["strategy"]?.stringValue == "cpu_standby")
        #expect(settings.json["volume_size_gb"]?.intValue == 300)
        #expect(try http("GET", "\(base)/api/v1/warmpool/pools", key: admin).status == 200, "the admin key survives")
        let events = (try http("GET", "\(base)/api/v1/warmpool/events/5", key: admin).json["events"])?.arrayValue ?? []
        #expect(events.contains { $0["kind"]?.stringValue == "connected" && $0["agent_id"]?.stringValue == "gpu-5" })

        // The agent's key lives only in the store: it reconnects with it, and the restarted
        // controller fails nobody over.
        try harness.waitUntil("the agent reconnects to the restarted controller", timeout: 20) {
            harness.events().dropFirst(eventsBeforeRestart).contains { $0.agentID == "gpu-5" && ($0.kind == "connected" || $0.kind == "recovered") }
        }
        try await Task.sleep(for: .seconds(1))
        #expect(!harness.events().dropFirst(eventsBeforeRestart).contains { $0.kind == "failed" })
        #expect(!FileManager.default.fileExists(atPath: harness.directory + "/db/admin-api-key.partial"))
    }

    /// A key minted for one instance cannot speak for another: the real agent binary, with a
    /// valid secret and another instance id, is refused at the handshake, the controller logs
    /// both ids, and nothing is attributed to the instance it claimed.
    @Test func aValidKeyClaimingAnotherInstanceIsRefusedAndNothingIsAttributedToIt() async throws {
        let harness = try Harness()
        try harness.startController()
        let base = "http://\(harness.apiAddress)"
        let admin = try harness.adminAPIKey()
        let secretFile = try registerAgent(harness, base: base, key: admin,
                                           #"{"agent_id": "gpu-9", "machine_id": 9, "instance_id": 9001, "role": "primary"}"#)

        let impostor = try harness.startAgent("gpu-9", secretFile: secretFile, instanceID: 9002)
        try harness.waitUntil("the controller refuses the Hello for instance 9002", timeout: 20) {
            harness.log("controller").contains("agent \"gpu-9\" is bound to instance 9001; its Hello claims instance 9002")
        }
        try await Task.sleep(for: .milliseconds(500))
        #expect(harness.events().isEmpty, "no liveness event at all: \(harness.events().map { ($0.kind, $0.instanceID) })")
        let agents = (try http("GET", "\(base)/api/v1/warmpool/agents", key: admin).json["agents"])?.arrayValue ?? []
        #expect(!agents.contains { $0["instance_id"]?.intValue == 9002 })
        #expect(agents.first { $0["agent_id"]?.stringValue == "gpu-9" }?["state"]?.stringValue != "alive")
        harness.stop(impostor)

        // The same key from the instance it is bound to is welcome.
        _ = try harness.startAgent("gpu-9", secretFile: secretFile, instanceID: 9001)
        let connected = try harness.waitForEvent("connected", for: "gpu-9", timeout: 20)
        #expect(connected.instanceID == 9001)
        #expect(!harness.events().contains { $0.instanceID == 9002 })
    }
}
