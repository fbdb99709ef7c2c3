import Foundation
import Testing
import WarmpoolTestSupport

#if canImport(Glibc)
import Glibc
#endif

/// The process's `comm`, parent and process group, from /proc.
private struct ProcessEntry {
    var pid: pid_t
    var name: String
    var parent: pid_t
    var group: pid_t

    static func all() -> [ProcessEntry] {
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
        return entries.compactMap { entry in
            guard let pid = pid_t(entry), let stat = try? String(contentsOfFile: "/proc/\(entry)/stat", encoding: .utf8),
                let open = stat.firstIndex(of: "("), let close = stat.lastIndex(of: ")")
            else { return nil }
            let fields = stat[stat.index(after: close)...].split(separator: " ")
            guard fields.count > 2, fields[0] != "Z", let parent = pid_t(fields[1]), let group = pid_t(fields[2]) else { return nil }
            return ProcessEntry(pid: pid, name: String(stat[stat.index(after: open)..<close]), parent: parent, group: group)
        }
    }
}

/// The real agent binary syncing its volume to a real sshd with Debian's rsync, under a lease from
/// the real controller: only at the target's epoch, files and deletions arrive, the manifest is
/// written, the lag drops to 0, and a lost lease kills rsync and its ssh mid-pass.
@Suite(.serialized) struct SyncTests {
    private func writeTarget(_ path: String, sshd: LoopbackSSHD, copy: String, epoch: Int, bandwidthLimitKiB: Int = 0) throws {
        let document: [String: Any] = [
            "name": "wp-7-cpu-1", "host": "127.0.0.1", "port": sshd.port, "user": "root", "path": copy,
            "identity": try String(contentsOfFile: sshd.clientKeyPath, encoding: .utf8), "host_key": sshd.hostKeyLine,
            "epoch": epoch, "bwlimit_kib": bandwidthLimitKiB,
        ]
        // As the controller writes it: whole, under a temporary name, renamed.
        try JSONSerialization.data(withJSONObject: document).write(to: URL(fileURLWithPath: path + ".tmp"))
        rename(path + ".tmp", path)
    }

    private func manifest(_ copy: String) -> [String: Any]? {
        guard let data = FileManager.default.contents(atPath: copy + "/.warmpool-sync/manifest.json") else { return nil }
        return (try? JSONSerialization.jsonObject(with: data)) as? [String: Any]
    }

    @Test func theAgentSyncsUnderItsLeaseAndStopsDeadWhenItLosesIt() throws {
        let harness = try Harness()
        let sshd = try LoopbackSSHD(in: harness.directory)
        let volume = harness.directory + "/volume"
        let copy = harness.directory + "/copy"
        let state = harness.directory + "/agent-state"
        let targetFile = harness.directory + "/sync-target.json"
        for directory in [volume + "/model", copy] {
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        }
        try Data(repeating: 7, count: 200_000).write(to: URL(fileURLWithPath: volume + "/model/weights.bin"))
        try Data("hello\n".utf8).write(to: URL(fileURLWithPath: volume + "/notes.txt"))
        // Written long before: the lag after the first pass is 0 only for files outside the slack.
        let old = Date(timeIntervalSinceNow: -600)
        for file in ["/model/weights.bin", "/notes.txt"] {
            try FileManager.default.setAttributes([.modificationDate: old], ofItemAtPath: volume + file)
        }
        let secret = try harness.addAgentKey("gpu-s")
        try harness.startController(intervalMilliseconds: 50, extra: ["--lease-ms", "600"])
        // A target of another epoch (the controller grants this agent epoch 1): never pushed to.
        try writeTarget(targetFile, sshd: sshd, copy: copy, epoch: 2)
        let agent = try harness.startAgent("gpu-s", secretFile: secret, extra: [
            "--state-dir", state, "--volume-path", volume, "--sync-target-file", targetFile, "--sync-gap-ms", "200",
            "--probe-interval-ms", "100", "--ssh-host-key", "none", "--log-level", "debug",
        ])
        try harness.waitUntil("the agent holds its lease", timeout: 20) { harness.log("gpu-s").contains("session established") }
        try harness.waitUntil("the agent reads the target", timeout: 10) { harness.log("gpu-s").contains("sync target") }
        usleep(1_500_000)
        #expect(manifest(copy) == nil && !FileManager.default.fileExists(atPath: copy + "/notes.txt"),
                "a target of another epoch is not this lease's")
        let identity = try FileManager.default.attributesOfItem(atPath: state + "/gpu-s.sync-identity")
        #expect(identity[.posixPermissions] as? Int == 0o600)

        // The controller's target at the lease's epoch: the volume arrives, with its manifest.
        try writeTarget(targetFile, sshd: sshd, copy: copy, epoch: 1)
        try harness.waitUntil("the first pass", timeout: 20) { (manifest(copy)?["pass"] as? Int ?? 0) >= 1 }
        #expect(FileManager.default.contentsEqual(atPath: volume + "/model/weights.bin", andPath: copy + "/model/weights.bin"))
        let first = try #require(manifest(copy))
        #expect(first["epoch"] as? Int == 1 && first["source"] as? String == "gpu-s" && first["instance_id"] as? Int == 4242)
        #expect(first["files"] as? Int == 2 && first["bytes"] as? Int == 200_006)
        #expect((first["started_at_ms"] as? Int64 ?? 0) <= (first["finished_at_ms"] as? Int64 ?? 0))
        try harness.waitUntil("a pass with nothing pending", timeout: 10) {
            harness.log("gpu-s").contains("sync pass done") && harness.log("gpu-s").contains("sync.files_pending=0")
        }

        // A deleted file goes from the copy too, in one of the next passes.
        try FileManager.default.removeItem(atPath: volume + "/notes.txt")
        try harness.waitUntil("the deletion is synced", timeout: 10) { !FileManager.default.fileExists(atPath: copy + "/notes.txt") }
        #expect(FileManager.default.fileExists(atPath: copy + "/model/weights.bin"))

        // A big file on a slow link, so a pass is in flight when the lease goes.
        let big = volume + "/big.bin"
        let fd = open(big, O_WRONLY | O_CREAT, 0o644)
        #expect(ftruncate(fd, 64 << 20) == 0)
        close(fd)
        try writeTarget(targetFile, sshd: sshd, copy: copy, epoch: 1, bandwidthLimitKiB: 256)
        var group: pid_t?
        try harness.waitUntil("rsync and its ssh run under the agent", timeout: 20) {
            let all = ProcessEntry.all()
            guard let rsync = all.first(where: { $0.parent == agent.processIdentifier && $0.name == "rsync" }) else { return false }
            guard all.contains(where: { $0.group == rsync.group && $0.name == "ssh" }) else { return false }
            group = rsync.group
            return true
        }
        let passGroup = try #require(group)
        usleep(500_000)
        let passesBefore = manifest(copy)?["pass"] as? Int
        let controller = try #require(harness.controller)
        kill(controller.processIdentifier, SIGSTOP)
        defer { kill(controller.processIdentifier, SIGCONT) }
        try harness.waitUntil("the pass's processes are gone", timeout: 5) {
            !ProcessEntry.all().contains { $0.group == passGroup }
        }
        #expect(harness.log("gpu-s").contains("sync pass cancelled"))
        usleep(1_000_000)
        #expect(!ProcessEntry.all().contains { $0.parent == agent.processIdentifier && ($0.name == "rsync" || $0.name == "ssh") },
                "a fenced primary pushes nothing")
        #expect(manifest(copy)?["pass"] as? Int == passesBefore, "no manifest from a pass cut short")
        #expect(agent.isRunning)
    }
}
