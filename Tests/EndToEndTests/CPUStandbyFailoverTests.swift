import Foundation
import Testing
import WarmpoolJSON
import WarmpoolTestSupport

/// The CPU standby end to end (issue 22): warmpool-sim emulates both clouds (Vast.ai's hosts and
/// Compute Engine's VMs, each a real sshd with the real agent), the real controller holds the
/// emulator's service-account key, the primary's agent rsyncs /data to the VM over real SSH, and
/// a real S3 server (moto) takes the failback's final snapshot.
@Suite(.serialized) struct CPUStandbyEndToEndTests {
    @Test func aOneGPUHostsPoolFailsOverToItsSyncedCPUVMThenBackToAGPU() throws {
        let gceKey = FileManager.default.temporaryDirectory.path + "/warmpool-gce-\(UUID().uuidString).json"
        defer { try? FileManager.default.removeItem(atPath: gceKey) }
        let lab = try WarmPoolLab(host: "77:1:RTX_4090:0.45", simExtra: ["--host", "88:2:RTX_4090:0.50", "--gce-key-out", gceKey])
        let snapshots = try SnapshotStore(lab: lab, reachableAt: try Self.hostAddress())
        // The VMs are network namespaces whose default route is the emulator's host: they reach
        // the controller at one of this machine's own addresses, the marketplace's instances on
        // loopback.
        let port = lab.agentListen.split(separator: ":").last.map(String.init) ?? "0"
        lab.agentListen = "0.0.0.0:\(port)"
        try lab.startController(extra: [
            "--agent-controllers", "127.0.0.1:\(port)", "--cpu-agent-controllers", "\(try Self.hostAddress()):\(port)",
            "--gce-key-file", gceKey, "--gce-url", "http://\(lab.simAddress)/compute/v1", "--degraded-retry-s", "2",
        ] + snapshots.agentFlags + snapshots.restoreFlags)
        // Other renters hold host 88's GPUs: nowhere to move back to until the test says.
        #expect(try lab.sim("POST", "/admin/faults", body: #"{"full_hosts": [88]}"#).status == 200)

        // One free GPU: the product's rule gives the pool a CPU standby, kept in sync.
        let provisioned = try lab.provision()["status"] ?? [:]
        let primary = provisioned["primary_gpu_id"]?.intValue ?? -1
        var status = try lab.status()
        #expect(status["strategy"]?.stringValue == "cpu_standby", "\(status)")
        #expect(status["standby_gpu_id"] == .null)
        let vm = status["cpu_standby"]?["name"]?.stringValue ?? "?"
        #expect(vm == "wp-12-cpu-e1-a1")
        let vmAddress = status["cpu_standby"]?["ssh_host"]?.stringValue ?? "?"
        let sshPort = Int(status["primary_ssh_port"]?.intValue ?? 0)
        let sums = try lab.ssh(port: sshPort, "mkdir -p /data/models && head -c 2000000 /dev/urandom > /data/models/w.bin"
                               + " && seq 1 100000 > /data/notes.txt && cd /data && sha256sum models/w.bin notes.txt")
        let synced = (try? lab.harness.waitUntil("the sync copies the new files and the pool is protected", timeout: 90) {
            status = (try? lab.status()) ?? .null
            let sync = status["sync"] ?? .null
            // Nothing pending after a pass: the lag shown is then only the report's age, aged on the controller's clock.
            return sync["bytes_pending"]?.intValue == 0 && sync["files_pending"]?.intValue == 0 && (sync["lag_seconds"]?.doubleValue ?? 99) < 5
                && (sync["passes"]?.intValue ?? 0) >= 2 && status["protected"]?.boolValue == true
        }) != nil
        try #require(synced, "\(status["sync"] ?? .null) \((status["conditions"]?.arrayValue ?? []).filter { $0["ok"]?.boolValue == false })")
        #expect(status["sync"]?["target"]?.stringValue == vm, "\(status["sync"] ?? .null)")
        #expect(status["cpu_standby"]?["instance_id"]?.intValue ?? 0 >= 1 << 62)

        // What it costs, from both providers' prices, in the documented shape.
        let costs = try http("GET", "\(lab.api)/costs/12", key: try lab.adminKey())
        #expect(costs.status == 200, "\(costs.text)")
        let problems = try OpenAPIDocument(path: try OpenAPIDocument.locate()).problems(
            method: "GET", template: "/api/v1/warmpool/costs/{machine_id}", status: costs.status, contentType: costs.contentType, body: costs.body)
        #expect(problems.isEmpty, "\(problems)")
        #expect(costs.json["strategy"]?.stringValue == "cpu_standby")
        #expect(costs.json["primary_per_hour"]?.doubleValue == 0.45, "the host's dph_total: \(costs.text)")
        let warm = costs.json["protection_per_month"]?["gpu_warm_pool"]?.doubleValue ?? 0
        let cpu = costs.json["protection_per_month"]?["cpu_standby"]?.doubleValue ?? 0
        #expect(warm > 0 && cpu > warm, "a running VM costs more than a stopped GPU: \(costs.text)")
        #expect(try ssh(lab, host: vmAddress, "cd /data && sha256sum models/w.bin notes.txt") == sums, "the copy on the VM")

        // The primary crashes: the VM is promoted, degraded (CPU speed), with the data.
        #expect(try lab.sim("POST", "/admin/instances/\(primary)/crash").status == 200)
        var failover: JSONValue = .null
        try lab.harness.waitUntil("the CPU VM promoted", timeout: 90) {
            failover = (try? lab.history().first) ?? .null
            return failover["result"]?.stringValue == "succeeded" && (try? lab.status()["state"]?.stringValue) == "degraded"
        }
        status = try lab.status()
        #expect(status["cpu_primary_name"]?.stringValue == vm, "\(status)")
        #expect(status["remediation"]?["rung"]?.stringValue == "running_on_cpu")
        #expect((status["conditions"]?.arrayValue ?? []).contains { $0["type"]?.stringValue == "PrimaryOnCPU" && $0["status"]?.stringValue == "True" },
                "a condition says so: \(status["conditions"] ?? .null)")
        #expect(status["epoch"]?.intValue == 2)
        let steps = (failover["timeline"]?.arrayValue ?? []).compactMap { $0["step"]?.stringValue }
        for step in ["detected", "fencing", "fenced", "standby_starting", "standby_running", "volume_verified", "promoted"] {
            #expect(steps.contains(step), "timeline lacks \(step): \(steps)")
        }
        #expect(try ssh(lab, host: vmAddress, "cd /data && sha256sum models/w.bin notes.txt && cat /data/.warmpool/epoch")
                == sums + "2")
        // The VM's agent holds the lease now: the workload would run there.
        try lab.harness.waitUntil("the VM's agent is granted at epoch 2", timeout: 20) {
            let agents = (try? http("GET", "\(lab.api)/agents", key: try lab.adminKey()).json["agents"]?.arrayValue) ?? []
            return agents.contains { $0["agent_id"]?.stringValue == vm && $0["lease"]?["epoch"]?.intValue == 2 }
        }

        // The GPUs free up: the pool moves back, planned, through a final snapshot of the VM.
        #expect(try lab.sim("POST", "/admin/faults", body: "{}").status == 200)
        try lab.harness.waitUntil("the pool back on a GPU", timeout: 180) {
            status = (try? lab.status()) ?? .null
            return status["state"]?.stringValue == "active" && status["cpu_primary_name"] == .null && status["primary_gpu_id"] != .null
        }
        let back = try lab.history().first ?? .null
        let backSteps = (back["timeline"]?.arrayValue ?? []).compactMap { $0["step"]?.stringValue }
        for step in ["failing_back", "fencing", "fenced", "relocating", "volume_ready", "restored", "volume_verified", "promoted"] {
            #expect(backSteps.contains(step), "failback timeline lacks \(step): \(backSteps)")
        }
        let newPort = Int(status["primary_ssh_port"]?.intValue ?? 0)
        #expect(try lab.ssh(port: newPort, "cd /data && sha256sum models/w.bin notes.txt") == sums, "the data back on a GPU")

        // Cleanup leaves nothing at either cloud.
        #expect(try http("DELETE", "\(lab.api)/cleanup/12", key: try lab.adminKey()).status == 200)
        try lab.harness.waitUntil("nothing is left at either cloud", timeout: 60) {
            let instances = (try? lab.sim("GET", "/api/v0/instances").json["instances"]?.arrayValue) ?? [.null]
            let volumes = (try? lab.sim("GET", "/api/v0/volumes").json["volumes"]?.arrayValue) ?? [.null]
            return instances.isEmpty && volumes.isEmpty && (try? lab.sim("GET", "/admin/gce/instances").json["instances"]?.arrayValue?.isEmpty) ?? false
        }
    }

    /// One of this machine's global IPv4 addresses (not an emulated VM's link).
    static func hostAddress() throws -> String {
        let listing = try Command.runChecked("/bin/ip", ["-4", "-o", "addr", "show", "scope", "global"])
        let addresses = listing.split(separator: "\n").compactMap { line -> String? in
            let fields = line.split(separator: " ")
            guard let index = fields.firstIndex(of: "inet"), index + 1 < fields.count else { return nil }
            return fields[index + 1].split(separator: "/").first.map(String.init)
        }
        guard let address = addresses.first(where: { !$0.hasPrefix("10.216.") }) else {
            throw CPUStandbyTestError(description: "this machine has no global IPv4 address for the emulated VMs to reach")
        }
        return address
    }

    struct CPUStandbyTestError: Error, CustomStringConvertible { var description: String }

    /// Runs `command` as root on a VM at its address, port 22, over the real ssh client.
    private func ssh(_ lab: WarmPoolLab, host: String, _ command: String) throws -> String {
        try Command.runChecked("/usr/bin/ssh", [
            "-i", lab.harness.directory + "/ssh_key", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "BatchMode=yes", "-o", "LogLevel=ERROR", "root@\(host)", command,
        ])
    }
}
