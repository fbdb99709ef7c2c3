import _CryptoExtras
import Foundation
import Logging
import Testing
import WarmpoolModel
import WarmpoolProvider
import WarmpoolTestSupport

#if canImport(Glibc)
import Glibc
#endif

/// The real `warmpool-sim` binary emulating Compute Engine, driven by the real `GCEClient`, its
/// VMs reached with the real ssh client: Protocol/GCE.md, "What warmpool-sim emulates".
@Suite(.serialized) struct GCESimTests {
    /// One emulator process with GCE on, its key file, and an ed25519 key for the VMs' root.
    final class GCESim {
        let directory: String
        let process: Process
        let address: String
        let key: ServiceAccountKey

        init(extra: [String] = [], inNamespace namespace: String? = nil) async throws {
            try SimFixture.requireRoot()
            directory = FileManager.default.temporaryDirectory.appendingPathComponent("warmpool-gce-\(UUID().uuidString)").path
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            try Command.runChecked("/usr/bin/ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-f", directory + "/ssh_key"])
            process = Process()
            let binary = try SimProcessTests.binary()
            process.executableURL = URL(fileURLWithPath: namespace == nil ? binary : "/bin/ip")
            process.arguments = (namespace.map { ["netns", "exec", $0, binary] } ?? []) + ["--api-key", "k", "--state-dir", directory + "/state", "--ready-file", directory + "/ready",
                                 "--gce-key-out", directory + "/gce-key.json", "--host", "77:1:RTX_4090:0.45", "--boot-delay-ms", "300",
                                 "--authorized-keys", directory + "/ssh_key.pub", "--log-level", "info"] + extra
            process.standardOutput = FileHandle.nullDevice
            _ = FileManager.default.createFile(atPath: directory + "/sim.log", contents: nil)
            process.standardError = FileHandle(forWritingAtPath: directory + "/sim.log")
            try process.run()
            let ready = directory + "/ready"
            let started = await SimFixture.eventually(.seconds(20)) { FileManager.default.fileExists(atPath: ready) }
            guard started else {
                throw HarnessError("warmpool-sim did not start: " + ((try? String(contentsOfFile: directory + "/sim.log", encoding: .utf8)) ?? ""))
            }
            address = try String(contentsOfFile: ready, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
            key = try ServiceAccountKey(contentsOfFile: directory + "/gce-key.json")
        }

        var log: String { (try? String(contentsOfFile: directory + "/sim.log", encoding: .utf8)) ?? "" }

        func client(clock: any WallClock = SystemWallClock()) -> GCEClient {
            GCEClient(configuration: GCEConfiguration(
                project: "warmpool-sim", zone: "us-central1-a", baseURL: "http://\(address)/compute/v1", key: key,
                retry: RetryPolicy(maxAttempts: 3, initialBackoff: .milliseconds(20))), clock: clock, logger: SimFixture.logger)
        }

        var publicKey: String { (try? String(contentsOfFile: directory + "/ssh_key.pub", encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines) ?? "" }

        /// Runs `command` as root on `host` port 22 with the real ssh client.
        func ssh(_ host: String, _ command: String) throws -> String {
            try Command.runChecked("/usr/bin/ssh", [
                "-i", directory + "/ssh_key", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                "-o", "BatchMode=yes", "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=3", "root@\(host)", command,
            ])
        }

        func raw(_ method: String, _ path: String, authorization: String?, body: String? = nil,
                 contentType: String = "application/json") throws -> (status: Int, body: [String: Any])
        {
            let answer = try Command.run("/usr/bin/curl", ["-s", "-o", "-", "-w", "\n%{http_code}", "-X", method,
                                                            "http://\(address)\(path)"]
                + (authorization.map { ["-H", "Authorization: \($0)"] } ?? [])
                + (body.map { ["-H", "Content-Type: \(contentType)", "--data-binary", $0] } ?? []))
            let lines = answer.output.split(separator: "\n", omittingEmptySubsequences: false)
            let status = Int(lines.last ?? "") ?? 0
            let text = lines.dropLast().joined(separator: "\n")
            let json = (try? JSONSerialization.jsonObject(with: Data(text.utf8))) as? [String: Any] ?? [:]
            return (status, json)
        }

        deinit {
            if process.isRunning {
                process.terminate()
                process.waitUntilExit()
            }
            try? FileManager.default.removeItem(atPath: directory)
        }
    }

    static func eventually(_ what: String, _ timeout: Duration = .seconds(20), _ condition: () async throws -> Bool) async throws {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if (try? await condition()) == true { return }
            try await Task.sleep(for: .milliseconds(100))
        }
        throw HarnessError("timed out waiting for \(what)")
    }

    /// Processes in network namespace `namespace` (what `ip netns pids` prints).
    static func pids(inNamespace namespace: String) -> [Int32] {
        let output = (try? Command.run("/bin/ip", ["netns", "pids", namespace]).output) ?? ""
        return output.split(whereSeparator: \.isWhitespace).compactMap { Int32($0) }
    }

    static func isAlive(_ pid: Int32) -> Bool {
        guard kill(pid, 0) == 0 else { return false }
        let stat = (try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8)) ?? ""
        return !stat.contains(") Z")
    }

    @Test func aVMFromInsertToDelete() async throws {
        let sim = try await GCESim()
        let client = sim.client()
        let name = "wp-standby-12"
        let marker = Int.random(in: 600_000...699_999)
        // Runs at every boot, as root: counts boots and leaves a process behind to find.
        let script = "#!/bin/bash\necho boot >> /data/boots\nid -u > /data/uid\nsetsid sleep \(marker) </dev/null >/dev/null 2>&1 &\necho $! > /data/sleep.pid\n"
        let spec = CPUInstanceSpec(name: name, machineType: "e2-small", diskSizeGB: 20, labels: ["warmpool-pool": "12"],
                                   metadata: [.init(key: "startup-script", value: script),
                                              .init(key: "ssh-keys", value: "root:\(sim.publicKey)\nalice:\(sim.publicKey)")])
        try await client.insertInstance(spec)
        try await client.insertInstance(spec)  // the same name again: fine
        let early = try #require(try await client.instance(named: name))
        #expect(early.status == .provisioning || early.status == .staging)
        #expect(early.labels == ["warmpool-pool": "12"] && early.machineType == "e2-small" && early.id > 0)

        try await Self.eventually("RUNNING") { try await client.instance(named: name)?.status == .running }
        let running = try #require(try await client.instance(named: name))
        let natIP = try #require(running.externalIP)
        try await Self.eventually("SSH at \(natIP):22 and the startup script") { try sim.ssh(natIP, "cat /data/boots") == "boot\n" }
        #expect(try sim.ssh(natIP, "cat /data/uid") == "0\n")
        // /data is the VM's own disk: what it writes there is in its disk, not on this machine's /data.
        _ = try sim.ssh(natIP, "echo kept > /data/mine")
        let disk = try #require(try FileManager.default.contentsOfDirectory(atPath: sim.directory + "/state/gce").first { $0.hasPrefix(name) })
        let diskPath = sim.directory + "/state/gce/\(disk)/disk"
        #expect(FileManager.default.fileExists(atPath: diskPath + "/mine"))
        #expect(!FileManager.default.fileExists(atPath: "/data/mine"))

        #expect(try await client.listInstances(labelKey: "warmpool-pool", value: "12").map(\.name) == [name])
        #expect(try await client.listInstances(labelKey: "warmpool-pool", value: "13").isEmpty)
        #expect(try await client.listInstances(labelKey: "warmpool-pool", value: nil).map(\.name) == [name])

        // A GPU instance of the sim reaches the VM's natIP:22 from its own network (the primary's agent rsyncs there).
        let probe = "bash -c 'exec 3<>/dev/tcp/\(natIP)/22 && head -c 4 <&3 > $HOME/probe'"
        let created = try sim.raw("PUT", "/api/v0/asks/7701/", authorization: "Bearer k", body: #"{"image": "img", "onstart": "\#(probe)"}"#)
        #expect(created.status == 200, "\(created.body)")
        let probePath = sim.directory + "/state/instances/1001/home/probe"
        try await Self.eventually("the GPU instance's probe") { (try? String(contentsOfFile: probePath, encoding: .utf8)) == "SSH-" }

        // Stop: TERMINATED, every process of the VM gone, the external address released, the disk kept.
        let sleepPID = try #require(Int32(try String(contentsOfFile: diskPath + "/sleep.pid", encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)))
        #expect(Self.isAlive(sleepPID))
        try await client.stopInstance(named: name)
        try await Self.eventually("TERMINATED") { try await client.instance(named: name)?.status == .terminated }
        let stopped = try #require(try await client.instance(named: name))
        #expect(stopped.externalIP == nil && stopped.status.isStopped)
        #expect(!Self.isAlive(sleepPID))
        #expect(SimFixture.processes(mentioning: "sleep\u{0}\(marker)").isEmpty)
        #expect(FileManager.default.fileExists(atPath: diskPath + "/mine"))
        try await client.stopInstance(named: name)  // stopping a stopped VM: fine

        // Start: the startup script runs again, on the same disk.
        try await client.startInstance(named: name)
        try await Self.eventually("RUNNING again") { try await client.instance(named: name)?.status == .running }
        let restarted = try #require(try await client.instance(named: name)?.externalIP)
        #expect(restarted != natIP, "an ephemeral external address is new at every start")
        try await Self.eventually("the second boot") { try sim.ssh(restarted, "cat /data/boots") == "boot\nboot\n" }
        #expect(try sim.ssh(restarted, "cat /data/mine") == "kept\n")

        // Delete: gone, disk and network with it; a second delete is fine.
        try await client.deleteInstance(named: name)
        try await Self.eventually("deleted") { try await client.instance(named: name) == nil }
        #expect(!FileManager.default.fileExists(atPath: diskPath))
        #expect(!(try Command.runChecked("/bin/ip", ["netns", "list"])).contains("wpgce-\(sim.process.processIdentifier)-"))
        try await client.deleteInstance(named: name)
        #expect(try await client.listInstances(labelKey: "warmpool-pool", value: nil).isEmpty)
    }

    @Test func aStopDuringTheBootCancelsIt() async throws {
        let sim = try await GCESim()
        let client = sim.client()
        try await client.insertInstance(CPUInstanceSpec(name: "wp-short", machineType: "e2-micro", diskSizeGB: 10, metadata: [
            .init(key: "startup-script", value: "echo boot >> /data/boots"),
        ]))
        try await client.stopInstance(named: "wp-short")
        try await Self.eventually("TERMINATED") { try await client.instance(named: "wp-short")?.status == .terminated }
        try await Task.sleep(for: .milliseconds(600))  // past the boot delay: the boot never lands
        #expect(try await client.instance(named: "wp-short")?.status == .terminated)
        let disk = try #require(try FileManager.default.contentsOfDirectory(atPath: sim.directory + "/state/gce").first { $0.hasPrefix("wp-short") })
        #expect(!FileManager.default.fileExists(atPath: sim.directory + "/state/gce/\(disk)/disk/boots"))
        // Started again, it boots once.
        try await client.startInstance(named: "wp-short")
        try await Self.eventually("RUNNING") { try await client.instance(named: "wp-short")?.status == .running }
        try await Self.eventually("the startup script") {
            (try? String(contentsOfFile: sim.directory + "/state/gce/\(disk)/disk/boots", encoding: .utf8)) == "boot\n"
        }
    }

    @Test func tokensAndFaults() async throws {
        let sim = try await GCESim(extra: ["--gce-token-ttl-s", "2"])
        #expect(sim.key.tokenURI == "http://\(sim.address)/token")
        #expect(sim.key.clientEmail == "warmpool-sim@warmpool-sim.iam.gserviceaccount.com")
        let grant = "urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer"
        let now = Int64(Date().timeIntervalSince1970)

        // A JWT signed by a key the account does not have.
        let stranger = try _RSA.Signing.PrivateKey(keySize: .bits2048)
        let forged = try GCEJWT.assertion(key: sim.key, privateKey: stranger, issuedAt: now)
        let refused = try sim.raw("POST", "/token", authorization: nil, body: "grant_type=\(grant)&assertion=\(forged)",
                                  contentType: "application/x-www-form-urlencoded")
        #expect(refused.status == 400)
        #expect(refused.body["error"] as? String == "invalid_grant")
        #expect(refused.body["error_description"] as? String == "Invalid JWT Signature.")
        // One from two hours ago.
        let stale = try GCEJWT.assertion(key: sim.key, issuedAt: now - 7200)
        let late = try sim.raw("POST", "/token", authorization: nil, body: "grant_type=\(grant)&assertion=\(stale)",
                               contentType: "application/x-www-form-urlencoded")
        #expect(late.status == 400 && (late.body["error_description"] as? String)?.hasPrefix("Invalid JWT: Token must be a short-lived token") == true)
        // A good one.
        let good = try GCEJWT.assertion(key: sim.key, issuedAt: now)
        let granted = try sim.raw("POST", "/token", authorization: nil, body: "grant_type=\(grant)&assertion=\(good)",
                                  contentType: "application/x-www-form-urlencoded")
        #expect(granted.status == 200 && granted.body["expires_in"] as? Int == 2 && granted.body["token_type"] as? String == "Bearer")
        let token = try #require(granted.body["access_token"] as? String)
        let list = "/compute/v1/projects/warmpool-sim/zones/us-central1-a/instances"
        #expect(try sim.raw("GET", list, authorization: "Bearer \(token)").status == 200)

        // Missing, unknown and expired tokens: 401 in Google's shape.
        for authorization in [nil, "Bearer ya29.not-ours"] {
            let answer = try sim.raw("GET", list, authorization: authorization)
            let error = answer.body["error"] as? [String: Any]
            #expect(answer.status == 401 && error?["code"] as? Int == 401 && error?["status"] as? String == "UNAUTHENTICATED")
        }
        try await Task.sleep(for: .milliseconds(2500))
        let expired = try sim.raw("GET", list, authorization: "Bearer \(token)")
        #expect(expired.status == 401)
        let reason = ((expired.body["error"] as? [String: Any])?["errors"] as? [[String: Any]])?.first?["reason"] as? String
        #expect(reason == "authError")

        // A client whose clock stands still keeps its token past expiry: the 401 makes it refresh once.
        let frozen = FrozenClock()
        let client = sim.client(clock: frozen)
        #expect(try await client.listInstances(labelKey: "warmpool-pool", value: nil).isEmpty)
        try await Task.sleep(for: .milliseconds(2500))
        #expect(try await client.instance(named: "nothing-here") == nil)
        #expect(await client.tokens.exchanges == 2)

        // Compute Engine unavailable: 503s, which the client retries and then reports as transient.
        #expect(try sim.raw("POST", "/admin/faults", authorization: "Bearer k", body: #"{"gce_unavailable": true}"#).status == 200)
        do {
            _ = try await sim.client().instance(named: "x")
            Issue.record("expected a 503")
        } catch let error as ProviderError {
            #expect(error.isTransient)
            #expect(error == .http(status: 503, message: "The service is currently unavailable. [backendError, UNAVAILABLE]"))
        }
        #expect(try sim.raw("POST", "/admin/faults", authorization: "Bearer k", body: "{}").status == 200)
        #expect(try await sim.client().instance(named: "x") == nil)

        // SIGTERM with a VM running: its processes end and its namespace goes.
        let marker = Int.random(in: 600_000...699_999)
        let vm = sim.client()
        try await vm.insertInstance(CPUInstanceSpec(name: "wp-left", machineType: "e2-micro", diskSizeGB: 10, metadata: [
            .init(key: "startup-script", value: "setsid sleep \(marker) </dev/null >/dev/null 2>&1 &"),
        ]))
        try await Self.eventually("RUNNING") { try await vm.instance(named: "wp-left")?.status == .running }
        try await Self.eventually("the startup script") { !SimFixture.processes(mentioning: "sleep\u{0}\(marker)").isEmpty }
        sim.process.terminate()
        sim.process.waitUntilExit()
        #expect(SimFixture.processes(mentioning: "sleep\u{0}\(marker)").isEmpty)
        #expect(!(try Command.runChecked("/bin/ip", ["netns", "list"])).contains("wpgce-\(sim.process.processIdentifier)-"))
    }
}

/// The lab's layout (Scripts/lab) in miniature, under names of its own: a control namespace with
/// a bridge where the sim runs, one GPU slot namespace on the bridge, and a veth from this
/// namespace so the test reaches the sim's API.
@Suite(.serialized) struct GCELabTests {
    @Test func aGPUInstanceInALabNamespaceReachesTheVM() async throws {
        try SimFixture.requireRoot()
        let tag = "gl\(getpid() % 10_000)"
        let control = "\(tag)-ctl", slot = "\(tag)-77-1", bridge = "\(tag)br", up = "\(tag)up", root = "\(tag)rt"
        func ip(_ arguments: String...) throws { try Command.runChecked("/bin/ip", arguments) }
        defer {
            for namespace in [slot, control] {
                for pid in GCESimTests.pids(inNamespace: namespace) { kill(pid, SIGKILL) }
                _ = try? Command.run("/bin/ip", ["netns", "del", namespace])
            }
            _ = try? Command.run("/bin/ip", ["link", "del", root])
        }
        try ip("netns", "add", control)
        try ip("-n", control, "link", "set", "lo", "up")
        try ip("-n", control, "link", "add", bridge, "type", "bridge")
        try ip("-n", control, "addr", "add", "10.231.0.1/16", "dev", bridge)
        try ip("-n", control, "link", "set", bridge, "up")
        try ip("link", "add", root, "type", "veth", "peer", "name", up, "netns", control)
        try ip("addr", "add", "10.231.0.254/16", "dev", root)
        try ip("link", "set", root, "up")
        try ip("-n", control, "link", "set", up, "master", bridge, "up")
        try ip("netns", "add", slot)
        try ip("-n", control, "link", "add", "\(tag)s1", "type", "veth", "peer", "name", "eth0", "netns", slot)
        try ip("-n", control, "link", "set", "\(tag)s1", "master", bridge, "up")
        try ip("-n", slot, "addr", "add", "10.231.1.77/16", "dev", "eth0")
        try ip("-n", slot, "link", "set", "eth0", "up")
        try ip("-n", slot, "link", "set", "lo", "up")

        let sim = try await GCESimTests.GCESim(extra: [
            "--listen", "10.231.0.1:0", "--instance-netns", "\(tag)-{machine}-{slot}", "--instance-address", "10.231.{slot}.{machine}",
            "--gce-nat-prefix", "10.232",
        ], inNamespace: control)
        let client = sim.client()
        try await client.insertInstance(CPUInstanceSpec(name: "wp-lab", machineType: "e2-micro", diskSizeGB: 10,
                                                        metadata: [.init(key: "ssh-keys", value: "root:\(sim.publicKey)")]))
        try await GCESimTests.eventually("RUNNING") { try await client.instance(named: "wp-lab")?.status == .running }
        let natIP = try #require(try await client.instance(named: "wp-lab")?.externalIP)
        #expect(natIP.hasPrefix("10.232."))
        let probe = "bash -c 'exec 3<>/dev/tcp/\(natIP)/22 && head -c 4 <&3 > $HOME/probe'"
        let created = try sim.raw("PUT", "/api/v0/asks/7701/", authorization: "Bearer k", body: #"{"image": "img", "onstart": "\#(probe)"}"#)
        #expect(created.status == 200, "\(created.body)")
        let probePath = sim.directory + "/state/instances/1001/home/probe"
        try await GCESimTests.eventually("the lab GPU instance's probe") { (try? String(contentsOfFile: probePath, encoding: .utf8)) == "SSH-" }
        try await client.deleteInstance(named: "wp-lab")
        try await GCESimTests.eventually("deleted") { try await client.instance(named: "wp-lab") == nil }
    }
}

/// A wall clock that never moves: a client that cannot tell its token has expired.
struct FrozenClock: WallClock {
    let instant = SystemWallClock().now()
    func now() -> Instant { instant }
}
