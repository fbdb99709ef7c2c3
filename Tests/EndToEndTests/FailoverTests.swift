import Foundation
import Logging
import Testing
import WarmpoolJSON
import WarmpoolModel
import WarmpoolStore
import WarmpoolTestSupport

#if canImport(Glibc)
import Glibc
#endif

/// The whole warm pool on one machine: warmpool-sim runs real instances (sshd + the real agent,
/// the volume bind-mounted at /data), the real controller drives the real failover engine.
final class WarmPoolLab {
    let harness: Harness
    let simKey = "sim-test-key"
    var simAddress = ""
    private var sim: Process?
    var agentListen = ""

    init(bootDelayMilliseconds: Int = 200, host: String = "77:4:RTX_4090:0.45", simExtra: [String] = []) throws {
        harness = try Harness()
        let directory = harness.directory
        try Command.runChecked("/usr/bin/ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-f", directory + "/ssh_key"])
        try Data(simKey.utf8).write(to: URL(fileURLWithPath: directory + "/sim-key"))
        let ready = directory + "/sim.addr"
        sim = try harness.spawn("warmpool-sim", [
            "--api-key", simKey, "--authorized-keys", directory + "/ssh_key.pub", "--host", host,
            "--ready-file", ready, "--boot-delay-ms", "\(bootDelayMilliseconds)", "--state-dir", directory + "/sim",
        ] + simExtra, log: harness.logPath("sim"))
        try harness.waitUntil("the emulator listens", timeout: 20) { FileManager.default.fileExists(atPath: ready) }
        simAddress = try String(contentsOfFile: ready, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
        agentListen = "127.0.0.1:\(try freeLoopbackPort())"
    }

    deinit {
        if let sim, sim.isRunning {
            // SIGTERM: the emulator stops its instances and unmounts their volumes.
            sim.terminate()
            sim.waitUntilExit()
        }
    }

    func startController(extra: [String] = []) throws {
        try harness.startController(intervalMilliseconds: 100, listen: agentListen, extra: [
            "--provider-url", "http://\(simAddress)", "--provider-api-key-file", harness.directory + "/sim-key",
            "--ssh-key", harness.directory + "/ssh_key", "--provider-poll-ms", "100",
            "--agent-onstart", "exec \(harness.binaries)/warmpool-agent --nvml-library none",
            // Every failover waits out the old primary's lease: a short one keeps these tests quick.
            "--lease-ms", "1000",
        ] + extra)
    }

    var api: String { "http://\(harness.apiAddress)/api/v1/warmpool" }

    func adminKey() throws -> String { try harness.adminAPIKey() }

    func sim(_ method: String, _ path: String, body: String? = nil) throws -> HTTPAnswer {
        try http(method, "http://\(simAddress)\(path)", key: simKey, body: body)
    }

    func status(_ machine: Int = 12) throws -> JSONValue {
        try http("GET", "\(api)/status/\(machine)", key: try adminKey()).json
    }

    func provision(_ machine: Int = 12) throws -> JSONValue {
        let answer = try http("POST", "\(api)/provision", key: try adminKey(), body: #"{"machine_id": \#(machine), "host_machine_id": 77}"#)
        #expect(answer.status == 200, "\(answer.text)")
        return answer.json
    }

    /// The pool's events: liveness, and the steps outside a failover (provisioning among them).
    func poolEvents(_ machine: Int = 12) throws -> [JSONValue] {
        try http("GET", "\(api)/events/\(machine)", key: try adminKey()).json["events"]?.arrayValue ?? []
    }

    /// Vast.ai writes nothing on a volume: the controller wrote the marker through the primary,
    /// and the marker holds the volume's id.
    func expectVolumeMarkedByTheController(_ machine: Int = 12) throws {
        let status = try status(machine)
        let volume = status["volume_id"]?.intValue ?? -1
        let marked = try poolEvents(machine).filter { $0["kind"]?.stringValue == "volume_marked" }
        #expect(marked.count == 1, "\(marked)")
        #expect(marked.first?["detail"]?.stringValue == "volume \(volume): identity marker written, through instance \(status["primary_gpu_id"]?.intValue ?? -1)")
        let marker = try ssh(port: Int(status["primary_ssh_port"]?.intValue ?? 0), "cat /data/.warmpool-volume-id")
        #expect(marker == "\(volume)\n")
    }

    func history(_ machine: Int = 12) throws -> [JSONValue] {
        try http("GET", "\(api)/history/\(machine)", key: try adminKey()).json["failovers"]?.arrayValue ?? []
    }

    /// Runs `command` as root on an instance over the real ssh client.
    func ssh(port: Int, _ command: String) throws -> String {
        try Command.runChecked("/usr/bin/ssh", [
            "-i", harness.directory + "/ssh_key", "-p", "\(port)", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "BatchMode=yes", "-o", "LogLevel=ERROR", "root@127.0.0.1", command,
        ])
    }

    func waitForFailover(_ number: Int, timeout: Double = 60) throws -> JSONValue {
        try harness.waitUntil("failover \(number) to finish", timeout: timeout) {
            let failovers = (try? history()) ?? []
            return failovers.count >= number && (failovers.first?["result"]?.stringValue) != "in_progress"
                && (try? status()["state"]?.stringValue) == "active"
        }
        return try history().first!
    }
}

@Suite(.serialized) struct WarmPoolFailoverTests {
    /// Provisioning, then a failover of the given kind; checks what a user would.
    private func failOver(_ fault: String, expectDetection reason: String) throws {
        let lab = try WarmPoolLab()
        try lab.startController()
        let provisioned = try lab.provision()
        let status = provisioned["status"] ?? [:]
        #expect(status["state"]?.stringValue == "active")
        let primary = status["primary_gpu_id"]?.intValue ?? -1
        let standby = status["standby_gpu_id"]?.intValue ?? -1
        let before = try lab.status()
        let primaryPort = Int(before["primary_ssh_port"]?.intValue ?? 0)
        #expect(before["standby_state"]?.stringValue == "stopped")
        #expect(before["epoch"]?.intValue == 1)
        try lab.expectVolumeMarkedByTheController()

        // A checkpoint on the shared volume, written by the primary.
        _ = try lab.ssh(port: primaryPort, "head -c 1048576 /dev/urandom > /data/checkpoint.bin && sha256sum /data/checkpoint.bin > /data/checkpoint.sha256")
        try lab.harness.waitUntil("the primary's agent is alive", timeout: 20) {
            let agents = (try? http("GET", "\(lab.api)/agents", key: try lab.adminKey()).json["agents"])?.arrayValue ?? []
            return agents.contains { $0["instance_id"]?.intValue == primary && $0["state"]?.stringValue == "alive" }
        }

        #expect(try lab.sim("POST", "/admin/instances/\(primary)/\(fault)").status == 200)
        let failover = try lab.waitForFailover(1)
        #expect(failover["result"]?.stringValue == "succeeded")
        #expect(failover["new_primary_gpu_id"]?.intValue == standby)
        let steps = (failover["timeline"]?.arrayValue ?? []).compactMap { $0["step"]?.stringValue }
        for step in ["detected", "fencing", "fenced", "epoch_increased", "standby_starting", "standby_running", "ssh_ready", "volume_verified", "promoted", "standby_provisioning", "standby_ready"] {
            #expect(steps.contains(step), "timeline lacks \(step): \(steps)")
        }
        #expect(steps.firstIndex(of: "fenced")! < steps.firstIndex(of: "standby_starting")!, "fenced before the standby starts")
        let verified = (failover["timeline"]?.arrayValue ?? []).first { $0["step"]?.stringValue == "volume_verified" }
        #expect(verified?["detail"]?.stringValue == "volume \(before["volume_id"]?.intValue ?? -1) mounted, its identity marker holds its id, writable")
        #expect((failover["reason"]?.stringValue ?? "").contains("failed"))

        let after = try lab.status()
        #expect(after["primary_gpu_id"]?.intValue == standby)
        #expect(after["epoch"]?.intValue == 2)
        #expect(after["failover_count"]?.intValue == 1)
        #expect(after["standby_state"]?.stringValue == "stopped")
        let newStandby = after["standby_gpu_id"]?.intValue ?? -1
        #expect(newStandby != standby && newStandby != primary)

        // Exactly one start of the standby, no duplicate instance: primary, standby, new standby.
        let counters = try lab.sim("GET", "/admin/counters").json
        #expect(counters["starts"]?["\(standby)"]?.intValue == 1, "\(counters)")
        #expect(counters["creates"]?.intValue == 3, "\(counters)")
        // The checkpoint is intact on the new primary.
        let check = try lab.ssh(port: Int(after["primary_ssh_port"]?.intValue ?? 0), "cd /data && sha256sum -c checkpoint.sha256")
        #expect(check.contains("OK"))
        let events = try http("GET", "\(lab.api)/events/12", key: try lab.adminKey()).json["events"]?.arrayValue ?? []
        #expect(events.contains { $0["kind"]?.stringValue == "failed" && ($0["detail"]?.stringValue ?? "").contains(reason) })
    }

    @Test func aCrashedPrimaryIsReplacedByItsStandbyWithTheCheckpointIntact() throws {
        try failOver("crash", expectDetection: "closed without a goodbye")
    }

    @Test func aFrozenPrimaryIsFencedAndReplaced() throws {
        try failOver("freeze", expectDetection: "silent")
    }

    /// Two healthy pools survive a controller restart untouched: their agents are known by the
    /// instance ids Vast.ai gives them (CONTAINER_ID), checked against their keys' bindings, so
    /// the restart check finds each primary alive.
    @Test func aControllerKilledWhileActiveRestartsWithoutFailingOver() throws {
        let lab = try WarmPoolLab()
        try lab.startController(extra: ["--restart-grace-ms", "3000"])
        let primaries = try [12, 13].map { pool in try lab.provision(pool)["status"]?["primary_gpu_id"]?.intValue ?? -1 }
        try lab.harness.waitUntil("both primaries' agents are alive", timeout: 20) {
            let agents = (try? http("GET", "\(lab.api)/agents", key: try lab.adminKey()).json["agents"])?.arrayValue ?? []
            return primaries.allSatisfy { primary in agents.contains { $0["instance_id"]?.intValue == primary && $0["state"]?.stringValue == "alive" } }
        }
        lab.harness.killController()
        let eventsBefore = lab.harness.events().count
        try lab.startController(extra: ["--restart-grace-ms", "3000"])
        Thread.sleep(forTimeInterval: 4)
        for (pool, primary) in zip([12, 13], primaries) {
            let status = try lab.status(pool)
            #expect(status["state"]?.stringValue == "active", "\(status)")
            #expect(status["failover_count"]?.intValue == 0)
            #expect(status["primary_gpu_id"]?.intValue == primary)
            #expect(try lab.history(pool).isEmpty)
            #expect(status["last_health_check"]?.stringValue != nil, "the primary's agent reconnected: \(status)")
        }
        let reconnected = Set(lab.harness.events().dropFirst(eventsBefore).filter { $0.kind == "connected" }.map(\.instanceID))
        #expect(Set(primaries.map { Int64($0) }).isSubset(of: reconnected), "\(reconnected)")
        #expect(!lab.harness.events().dropFirst(eventsBefore).contains { $0.kind == "failed" })
    }

    @Test func aFailoverInterruptedBySIGKILLFinishesAfterRestartWithOneStartAndNoDuplicate() throws {
        // Slow provider calls stretch the failover so the kill lands in its middle.
        let lab = try WarmPoolLab(simExtra: ["--latency-ms", "300"])
        try lab.startController()
        let provisioned = try lab.provision()["status"] ?? [:]
        let primary = provisioned["primary_gpu_id"]?.intValue ?? -1
        let standby = provisioned["standby_gpu_id"]?.intValue ?? -1
        #expect(try lab.sim("POST", "/admin/instances/\(primary)/crash").status == 200)
        try lab.harness.waitUntil("the standby is starting", timeout: 30) {
            let steps = ((try? lab.history().first?["timeline"])?.arrayValue ?? []).compactMap { $0["step"]?.stringValue }
            return steps.contains("standby_starting")
        }
        lab.harness.killController()
        try lab.startController()
        let failover = try lab.waitForFailover(1, timeout: 90)
        #expect(failover["result"]?.stringValue == "succeeded")
        #expect(try lab.status()["primary_gpu_id"]?.intValue == standby)
        let counters = try lab.sim("GET", "/admin/counters").json
        #expect(counters["starts"]?["\(standby)"]?.intValue == 1, "one start of the standby: \(counters)")
        #expect(counters["creates"]?.intValue == 3, "no duplicate instance: \(counters)")
    }
}

@Suite(.serialized) struct WarmPoolOperationsTests {
    @Test func aStandbyThatWillNotStartGivesWayToTheNextFreeGPU() throws {
        // Instance 1002 is the pool's first standby; the emulator refuses to start it.
        let lab = try WarmPoolLab(simExtra: ["--fail-start-instance", "1002"])
        try lab.startController()
        _ = try lab.provision()
        let test = try http("POST", "\(lab.api)/failover/test/12", key: try lab.adminKey())
        #expect(test.status == 200, "\(test.text)")
        #expect(test.json["success"]?.boolValue == true, "\(test.text)")
        let newPrimary = test.json["new_primary_gpu_id"]?.intValue ?? -1
        #expect(newPrimary != 1001 && newPrimary != 1002, "a replacement on another GPU: \(test.text)")
        #expect((test.json["recovery_time_seconds"]?.doubleValue ?? -1) > 0)
        let failover = try lab.waitForFailover(1)
        let steps = (failover["timeline"]?.arrayValue ?? []).compactMap { $0["step"]?.stringValue }
        #expect(steps.contains("standby_abandoned"), "\(steps)")
        #expect(steps.contains("volume_verified"), "the replacement's volume is checked for the marker: \(steps)")
        #expect(steps.contains("promoted"))
        #expect(try lab.status()["primary_gpu_id"]?.intValue == newPrimary)
    }

    /// Issue 20: a failover's replacement is first contacted at its verification. An impostor
    /// answering at its address (another host key, the same logins) is refused there, with an
    /// alert, and the failover goes on to the next free GPU; every pin in the store is the key
    /// the instance's own agent reported over its authenticated session, never a first contact.
    @Test func anImpostorAtAReplacementsAddressIsRefusedAndEveryPinIsTheAgentsWord() async throws {
        // 1002 (the first standby) will not start, so the failover creates 1003, where an impostor answers.
        let lab = try WarmPoolLab(simExtra: ["--fail-start-instance", "1002", "--impostor-ssh-instance", "1003"])
        try lab.startController()
        _ = try lab.provision()
        let store = try SQLiteStore(path: lab.harness.databasePath, logger: Logger(label: "test.reader"))
        /// A standby is stopped as soon as it exists, often before its agent has reported: it is
        /// pinned at its first start then, before its verification. A pin, when there is one, is
        /// always the instance's own key.
        func expectPinnedFromTheAgent(_ instance: Int64, standby: Bool = false) async throws {
            let own = lab.harness.directory + "/sim/instances/\(instance)/etc-ssh/ssh_host_ed25519_key.pub"
            let printed = try Command.runChecked("/usr/bin/ssh-keygen", ["-l", "-E", "sha256", "-f", own])
            let pin = try await store.pinnedHostKey(instanceID: InstanceID(instance))
            if standby, pin == nil { return }
            #expect(pin == String(printed.split(separator: " ")[1]), "instance \(instance): pinned \(pin ?? "nothing")")
        }
        try await expectPinnedFromTheAgent(1001)
        try await expectPinnedFromTheAgent(1002, standby: true)
        let test = try http("POST", "\(lab.api)/failover/test/12", key: try lab.adminKey())
        #expect(test.json["success"]?.boolValue == true, "\(test.text)")
        let newPrimary = test.json["new_primary_gpu_id"]?.intValue ?? -1
        #expect(newPrimary > 1003, "the impostor's instance is never promoted: \(test.text)")
        let failover = try lab.waitForFailover(1)
        let refusals = try lab.poolEvents().filter { $0["kind"]?.stringValue == "host_key_mismatch" }
        #expect(refusals.count == 1, "\(refusals)")
        let detail = refusals.first?["detail"]?.stringValue ?? ""
        #expect(detail.hasPrefix("instance 1003 refused: host_key_mismatch: host key SHA256:"), "\(detail)")
        let timeline = (failover["timeline"]?.arrayValue ?? []).compactMap { $0["detail"]?.stringValue }.joined(separator: "\n")
        #expect(timeline.contains("does not match the key pinned for instance 1003"), "\(timeline)")

        try await expectPinnedFromTheAgent(newPrimary)
        try await expectPinnedFromTheAgent(try lab.status()["standby_gpu_id"]?.intValue ?? -1, standby: true)
    }

    /// Webhook receivers that never answer hold a delivery thread each for the whole 10 s timeout;
    /// the failover's provider calls and SSH run on threads of their own and do not wait for them
    /// (issue 20: they shared the process's one thread per core).
    @Test func aBlackholedWebhookReceiverDoesNotSlowAFailover() throws {
        // A listening socket that never accepts: connects succeed, no answer ever comes.
        let (blackhole, port) = try loopbackSocket(listening: true)
        defer { close(blackhole) }
        let lab = try WarmPoolLab()
        try Data("whsec-blackhole\n".utf8).write(to: URL(fileURLWithPath: lab.harness.directory + "/notify-secret"))
        // More silent receivers than this machine has cores: before, they took every thread.
        let receivers = (1...6).flatMap { ["--notify-url", "http://127.0.0.1:\(port)/hook\($0)"] }
        try lab.startController(extra: receivers + ["--notify-secret-file", lab.harness.directory + "/notify-secret"])
        _ = try lab.provision()
        let started = Date()
        let test = try http("POST", "\(lab.api)/failover/test/12", key: try lab.adminKey())
        let took = Date().timeIntervalSince(started)
        #expect(test.status == 200 && test.json["success"]?.boolValue == true, "\(test.text)")
        #expect(took < 9, "the failover waited for the webhook deliveries: \(took) s")
    }

    @Test func aFailoversNotificationsWaitInTheOutboxWithStableIDs() async throws {
        let lab = try WarmPoolLab()
        try lab.startController()
        _ = try lab.provision()
        let test = try http("POST", "\(lab.api)/failover/test/12", key: try lab.adminKey())
        #expect(test.json["success"]?.boolValue == true, "\(test.text)")
        _ = try lab.waitForFailover(1)
        let store = try SQLiteStore(path: lab.harness.databasePath, logger: Logger(label: "test.reader"))
        let entries = try await store.notifications(limit: 100)
        let kinds = Set(entries.map(\.kind))
        #expect(kinds.isSuperset(of: ["standby_starting", "failover_complete", "standby_provisioned"]), "\(kinds)")
        #expect(!kinds.contains("failure_detected"), "a test failover detects nothing")
        let complete = entries.first { $0.kind == "failover_complete" }
        #expect(complete?.id == "wp-12-failover_complete-1")
        let payload = (try? JSONValue.parse(complete?.payload ?? "")) ?? [:]
        #expect(payload["id"]?.stringValue == complete?.id)
        #expect(payload["machine_id"]?.intValue == 12)
        #expect(payload["failover"]?.stringValue == "fo-12-1")
    }

    @Test func anUnreachableProviderIsAClearErrorAndLeavesNoPool() throws {
        let lab = try WarmPoolLab()
        lab.simAddress = "127.0.0.1:1"  // nothing listens there
        try lab.startController()
        let answer = try http("POST", "\(lab.api)/provision", key: try lab.adminKey(), body: #"{"machine_id": 5, "host_machine_id": 77}"#)
        #expect(answer.status == 502, "\(answer.text)")
        #expect(answer.json["error"]?.stringValue == "provider_failed")
        #expect((answer.json["message"]?.stringValue ?? "").contains("curl 7"), "the reason names the transport error: \(answer.text)")
        #expect(try http("GET", "\(lab.api)/status/5", key: try lab.adminKey()).status == 404, "nothing was made, so nothing is left")
        let hosts = try http("GET", "\(lab.api)/hosts", key: try lab.adminKey())
        #expect(hosts.status == 502)
        #expect(try http("DELETE", "\(lab.api)/cleanup/5", key: try lab.adminKey()).status == 200, "a cleanup to be sure succeeds")
    }

    @Test func aStandbyDestroyedBehindOurBackIsReplaced() throws {
        let lab = try WarmPoolLab()
        try lab.startController(extra: ["--standby-check-s", "1"])
        let provisioned = try lab.provision()["status"] ?? [:]
        let standby = provisioned["standby_gpu_id"]?.intValue ?? -1
        #expect(try lab.sim("DELETE", "/api/v0/instances/\(standby)/", body: "{}").status == 200)
        try lab.harness.waitUntil("a new standby", timeout: 30) {
            let status = (try? lab.status()) ?? [:]
            return status["state"]?.stringValue == "active" && (status["standby_gpu_id"]?.intValue).map { $0 != standby } == true
                && status["standby_state"]?.stringValue == "stopped"
        }
        #expect(try lab.status()["failover_count"]?.intValue == 0, "the primary was never touched")
    }

    @Test func withNoFreeGPUOnTheHostThePoolIsDegradedAndSaysSo() async throws {
        let lab = try WarmPoolLab()
        try lab.startController(extra: ["--standby-check-s", "1"])
        let standby = (try lab.provision()["status"])?["standby_gpu_id"]?.intValue ?? -1
        // The host fills up (other tenants), then the standby is reclaimed: no GPU to replace it.
        #expect(try lab.sim("POST", "/admin/faults", body: #"{"full_hosts": [77]}"#).status == 200)
        #expect(try lab.sim("DELETE", "/api/v0/instances/\(standby)/", body: "{}").status == 200)
        try lab.harness.waitUntil("the pool is degraded", timeout: 30) { (try? lab.status()["state"]?.stringValue) == "degraded" }
        let status = try lab.status()
        #expect(status["standby_gpu_id"] == .null, "\(status)")
        #expect(status["primary_gpu_id"]?.intValue == 1001, "the primary runs on")
        let store = try SQLiteStore(path: lab.harness.databasePath, logger: Logger(label: "test.reader"))
        let kinds = try await store.notifications(limit: 100).map(\.kind)
        #expect(kinds.contains("pool_degraded"), "\(kinds)")
    }

    @Test func cleanupDestroysPrimaryStandbyAndVolume() throws {
        let lab = try WarmPoolLab()
        try lab.startController()
        _ = try lab.provision()
        let answer = try http("DELETE", "\(lab.api)/cleanup/12", key: try lab.adminKey())
        #expect(answer.status == 200, "\(answer.text)")
        #expect(answer.json["success"]?.boolValue == true)
        #expect(try http("GET", "\(lab.api)/status/12", key: try lab.adminKey()).status == 404)
        let counters = try lab.sim("GET", "/admin/counters").json
        #expect(counters["destroys"]?.intValue == 2, "\(counters)")
        #expect(counters["volume_deletes"]?.intValue == 1, "\(counters)")
        let hosts = try http("GET", "\(lab.api)/hosts", key: try lab.adminKey()).json["hosts"]?.arrayValue ?? []
        #expect(hosts.first?["available_gpus"]?.intValue == 4, "every GPU is free again: \(hosts)")
    }
    @Test func aControllerKilledWhileReprovisioningKeepsTheFailoverWhole() throws {
        // Found by `Scripts/drill controller-crash`: after a restart between promotion and the new
        // standby, the re-provisioning steps overwrote the finished failover's row and first step.
        let lab = try WarmPoolLab(bootDelayMilliseconds: 1000, simExtra: ["--latency-ms", "200"])
        try lab.startController()
        let primary = (try lab.provision()["status"] ?? [:])["primary_gpu_id"]?.intValue ?? -1
        #expect(try lab.sim("POST", "/admin/instances/\(primary)/crash").status == 200)
        try lab.harness.waitUntil("the new standby is being made", timeout: 30) {
            let steps = ((try? lab.history().first?["timeline"])?.arrayValue ?? []).compactMap { $0["step"]?.stringValue }
            return steps.contains("standby_provisioning")
        }
        lab.harness.killController()
        try lab.startController()
        let failover = try lab.waitForFailover(1, timeout: 60)
        try lab.harness.waitUntil("the standby is ready", timeout: 30) { (try? lab.status()["standby_state"]?.stringValue) == "stopped" }
        let record = try lab.history().first ?? [:]
        let steps = (record["timeline"]?.arrayValue ?? []).compactMap { $0["step"]?.stringValue }
        #expect(steps.first == "detected" && steps.last == "standby_ready", "\(steps)")
        #expect(record["result"]?.stringValue == "succeeded" && record["old_primary_gpu_id"]?.intValue == primary, "\(record)")
        #expect(failover["id"]?.stringValue == record["id"]?.stringValue)
        #expect(try lab.sim("GET", "/admin/counters").json["creates"]?.intValue == 3)
    }
    @Test func provisioningOnAHostWithoutTwoFreeGPUsIsAConflictNotAProviderFailure() throws {
        // Found by `Scripts/drill api-fuzz` (schemathesis): it answered 502 provider_failed.
        let lab = try WarmPoolLab(host: "77:1:RTX_4090:0.45")
        try lab.startController()
        for host in [77, 99] {
            let answer = try http("POST", "\(lab.api)/provision", key: try lab.adminKey(), body: #"{"machine_id": \#(host), "host_machine_id": \#(host)}"#)
            #expect(answer.status == 409, "\(answer.text)")
            #expect((answer.json["message"]?.stringValue ?? "").contains("free GPU"), "\(answer.text)")
        }
    }
}

/// The real controller's webhooks during a real failover, received and verified by a separate
/// process (Python's http.server), as a customer's receiver would.
@Suite(.serialized) struct WebhookDeliveryTests {
    static let receiver = #"""
        import hashlib, hmac, http.server, json, sys
        secret, log, ready = open(sys.argv[1]).read().rstrip().encode(), sys.argv[2], sys.argv[3]
        class Hook(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                stamp = self.headers["X-Warmpool-Timestamp"]
                expected = "sha256=" + hmac.new(secret, stamp.encode() + b"." + body, hashlib.sha256).hexdigest()
                valid = hmac.compare_digest(expected, self.headers["X-Warmpool-Signature"])
                with open(log, "a") as f:
                    f.write(json.dumps({"event": self.headers["X-Warmpool-Event"], "delivery": self.headers["X-Warmpool-Delivery"],
                                        "valid": valid, "body": json.loads(body)}) + "\n")
                self.send_response(200); self.end_headers()
            def log_message(self, *_): pass
        server = http.server.HTTPServer(("127.0.0.1", 0), Hook)
        open(ready + ".partial", "w").write(str(server.server_port)); __import__("os").rename(ready + ".partial", ready)
        server.serve_forever()
        """#

    @Test func aFailoversNotificationsReachTheReceiverSigned() throws {
        let lab = try WarmPoolLab()
        let directory = lab.harness.directory
        try Data("whsec-e2e-\(UUID().uuidString)\n".utf8).write(to: URL(fileURLWithPath: directory + "/hook-secret"))
        try Data(Self.receiver.utf8).write(to: URL(fileURLWithPath: directory + "/receiver.py"))
        let receiver = Process()
        receiver.executableURL = URL(fileURLWithPath: "/usr/bin/python3")
        receiver.arguments = [directory + "/receiver.py", directory + "/hook-secret", directory + "/hooks.jsonl", directory + "/hook.port"]
        try receiver.run()
        // SIGKILL: the test process may hand SIGTERM down ignored, and Python would never hear it.
        defer { kill(receiver.processIdentifier, SIGKILL); receiver.waitUntilExit() }
        try lab.harness.waitUntil("the receiver listens", timeout: 20) { FileManager.default.fileExists(atPath: directory + "/hook.port") }
        let port = try String(contentsOfFile: directory + "/hook.port", encoding: .utf8)
        try lab.startController(extra: ["--notify-url", "http://127.0.0.1:\(port)/hooks/warmpool", "--notify-secret-file", directory + "/hook-secret"])

        let primary = (try lab.provision()["status"])?["primary_gpu_id"]?.intValue ?? -1
        // A checkpoint 20 s old: the failover loses the work since, and says so.
        let primaryPort = Int(try lab.status()["primary_ssh_port"]?.intValue ?? 0)
        _ = try lab.ssh(port: primaryPort, "mkdir -p /data/checkpoints && echo w > /data/checkpoints/a.pt && touch -d @\(Int(Date().timeIntervalSince1970) - 20) /data/checkpoints/a.pt")
        try lab.harness.waitUntil("the primary reports its checkpoint", timeout: 20) {
            (try? lab.status()["recovery_point"]?["checkpoint_newest"]?.stringValue) == "a.pt"
        }
        #expect(try lab.sim("POST", "/admin/instances/\(primary)/crash").status == 200)
        _ = try lab.waitForFailover(1)
        let wanted: Set<String> = ["failure_detected", "standby_starting", "failover_complete", "standby_provisioned"]
        var hooks: [JSONValue] = []
        try lab.harness.waitUntil("the four notifications arrive", timeout: 20) {
            let text = (try? String(contentsOfFile: directory + "/hooks.jsonl", encoding: .utf8)) ?? ""
            hooks = text.split(separator: "\n").compactMap { line in (try? JSONValue.parse(String(line))).flatMap { value in value.objectValue.map { _ in value } } }
            return wanted.isSubset(of: Set(hooks.compactMap { $0["event"]?.stringValue }))
        }
        #expect(hooks.allSatisfy { $0["valid"]?.boolValue == true }, "every signature verifies: \(hooks)")
        let deliveries = hooks.compactMap { $0["delivery"]?.stringValue }
        #expect(Set(deliveries).count == deliveries.count, "one delivery per notification: \(deliveries)")
        #expect(deliveries.contains("wp-12-failover_complete-1"))
        let complete = hooks.first { $0["event"]?.stringValue == "failover_complete" }?["body"]
        #expect(complete?["machine_id"]?.intValue == 12)
        #expect(complete?["failover"]?.stringValue == "fo-12-1")
        let lost = complete?["work_lost_seconds"]?.doubleValue ?? -1
        #expect(lost >= 20 && lost < 80, "the work the failover lost: \(complete ?? .null)")
        let detected = hooks.first { $0["event"]?.stringValue == "failure_detected" }?["body"]
        #expect(detected?["work_lost_seconds"]?.doubleValue == complete?["work_lost_seconds"]?.doubleValue)
    }
}
