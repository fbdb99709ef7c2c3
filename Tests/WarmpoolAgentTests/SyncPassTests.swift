import Foundation
import Synchronization
import Testing
import WarmpoolTestSupport

@testable import WarmpoolAgent

#if canImport(Glibc)
import Glibc
#endif

/// CLOCK_MONOTONIC, as the agent's runtime reads it.
func monotonic() -> Int64 {
    var spec = timespec()
    clock_gettime(CLOCK_MONOTONIC, &spec)
    return Int64(spec.tv_sec) * 1_000_000_000 + Int64(spec.tv_nsec)
}

/// Processes in a process group, from /proc (the fifth field of stat is the group).
func processes(inGroup group: pid_t) -> [pid_t] {
    guard let entries = try? FileManager.default.contentsOfDirectory(atPath: "/proc") else { return [] }
    return entries.compactMap { entry -> pid_t? in
        guard let pid = pid_t(entry), let stat = try? String(contentsOfFile: "/proc/\(entry)/stat", encoding: .utf8),
            let close = stat.lastIndex(of: ")")
        else { return nil }
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        // fields: state, ppid, pgrp, ...; a zombie is gone already (its parent reaps it).
        guard fields.count > 2, fields[0] != "Z", pid_t(fields[2]) == group else { return nil }
        return pid
    }
}

/// The agent's sync pass against a real sshd and Debian's rsync: what a pass copies, deletes and
/// writes into the manifest, the lag it leaves, and a cancel that leaves no process behind.
@Suite(.serialized) struct SyncPassTests {
    final class Fixture {
        let sshd: LoopbackSSHD
        let root: String
        let volume: String
        let copy: String
        let setup: SyncSetup
        let target: SyncTarget

        init(bandwidthLimitKiB: Int = 0, hostKey: String? = nil) throws {
            sshd = try LoopbackSSHD()
            root = sshd.directory + "/work"
            volume = root + "/volume"
            copy = root + "/copy"
            for directory in [volume, copy, root + "/state"] {
                try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            }
            let identity = try String(contentsOfFile: sshd.clientKeyPath, encoding: .utf8)
            let document: [String: Any] = [
                "name": "wp-7-cpu-1", "host": "127.0.0.1", "port": sshd.port, "user": "root", "path": copy,
                "identity": identity, "host_key": hostKey ?? sshd.hostKeyLine, "epoch": 3, "bwlimit_kib": bandwidthLimitKiB,
            ]
            let file = SyncTargetFile(path: root + "/sync-target.json", stateDirectory: root + "/state", fileStem: "gpu-1")
            try JSONSerialization.data(withJSONObject: document).write(to: URL(fileURLWithPath: file.path))
            guard case .target(let target) = file.check() else { throw HarnessError("the target file was not read") }
            self.target = target
            setup = SyncSetup(
                volumePath: volume, identityPath: file.identityPath, knownHostsPath: file.knownHostsPath,
                manifestDirectory: root + "/state/gpu-1.sync-manifest", source: "gpu-1", instanceID: 4242)
        }

        func write(_ path: String, bytes: Int) throws {
            let url = URL(fileURLWithPath: volume + "/" + path)
            try FileManager.default.createDirectory(at: url.deletingLastPathComponent(), withIntermediateDirectories: true)
            try Data((0..<bytes).map { UInt8(truncatingIfNeeded: $0 &* 31) }).write(to: url)
        }

        /// Runs one pass to its end through the schedule, as the runtime does.
        func pass(_ schedule: inout SyncSchedule, now: Int64) async throws -> SyncSchedule.Outcome {
            guard case .start(let pass, let target) = schedule.tick(now: now, leaseEpoch: 3) else {
                throw HarnessError("the schedule did not start a pass")
            }
            let setup = self.setup
            let outcome = await withCheckedContinuation { continuation in
                _ = SyncPass.start(pass: pass, target: target, epoch: target.epoch, setup: setup) { continuation.resume(returning: $1) }
            }
            schedule.finished(pass: pass, outcome, now: monotonic())
            return outcome
        }

        func manifest() throws -> [String: Any] {
            let data = try Data(contentsOf: URL(fileURLWithPath: copy + "/.warmpool-sync/manifest.json"))
            return try JSONSerialization.jsonObject(with: data) as? [String: Any] ?? [:]
        }
    }

    @Test func copiesDeletesWritesTheManifestAndCatchesUp() async throws {
        let fixture = try Fixture()
        try fixture.write("model/weights.bin", bytes: 300_000)
        try fixture.write("notes.txt", bytes: 12)
        try fixture.write(".warmpool/epoch", bytes: 2)
        // A stale file on the target, and the target's own manifest directory, which --delete keeps.
        try Data([1]).write(to: URL(fileURLWithPath: fixture.copy + "/stale"))
        var schedule = SyncSchedule()
        _ = schedule.targetRead(.target(fixture.target), now: 0)

        guard case .succeeded(let first) = try await fixture.pass(&schedule, now: monotonic()) else {
            Issue.record("pass 1 failed: \(schedule.lastError ?? "?"); sshd: \(fixture.sshd.log().suffix(1_000))")
            return
        }
        let files = try FileManager.default.subpathsOfDirectory(atPath: fixture.copy).sorted()
        #expect(files == [".warmpool-sync", ".warmpool-sync/manifest.json", "model", "model/weights.bin", "notes.txt"])
        #expect(FileManager.default.contentsEqual(atPath: fixture.volume + "/model/weights.bin", andPath: fixture.copy + "/model/weights.bin"))
        #expect(first.files == 2 && first.bytes == 300_012, "rsync's statistics: regular files and their bytes, .warmpool/ left out")
        #expect((first.sentBytes ?? 0) > 300_000)
        let manifest = try fixture.manifest()
        #expect(manifest["pass"] as? Int == 1 && manifest["epoch"] as? Int == 3 && manifest["source"] as? String == "gpu-1")
        #expect(manifest["started_at_ms"] as? Int64 == first.startedAtWallMilliseconds)
        #expect(manifest["finished_at_ms"] as? Int64 == first.finishedAtWallMilliseconds)
        #expect(manifest["files"] as? Int == 2 && manifest["bytes"] as? Int == 300_012)
        #expect(first.pendingFiles == 2 && first.pendingBytes == 300_012, "written within the slack before the pass: not known to be in the copy")
        #expect((schedule.lag(now: monotonic()) ?? 0) > 0)
        let report = SyncTelemetry(schedule, now: monotonic())
        #expect(report.manifest == SyncTelemetry.Manifest(pass: 1, startedAtMs: first.startedAtWallMilliseconds))

        // A second later (past the slack) with one file deleted: it goes on the target too, and
        // nothing written before the pass is pending any more.
        try FileManager.default.removeItem(atPath: fixture.volume + "/notes.txt")
        try await Task.sleep(for: .milliseconds(1_100))
        guard case .succeeded(let second) = try await fixture.pass(&schedule, now: monotonic()) else {
            Issue.record("pass 2 failed: \(schedule.lastError ?? "?")")
            return
        }
        #expect(!FileManager.default.fileExists(atPath: fixture.copy + "/notes.txt"))
        #expect(FileManager.default.fileExists(atPath: fixture.copy + "/.warmpool-sync/manifest.json"))
        #expect(second.pendingFiles == 0 && second.pendingBytes == 0)
        #expect(schedule.lag(now: monotonic()) == 0)
        #expect(schedule.passes == 2 && schedule.state == .idle)
        #expect(try fixture.manifest()["pass"] as? Int == 2)
        #expect(second.sentBytes ?? .max < 10_000, "nothing changed: only the file list crossed")
    }

    @Test func aWrongHostKeyFailsThePassWithSSHsReason() async throws {
        let other = try LoopbackSSHD()
        let fixture = try Fixture(hostKey: other.hostKeyLine)
        try fixture.write("a", bytes: 1)
        var schedule = SyncSchedule()
        _ = schedule.targetRead(.target(fixture.target), now: 0)
        let outcome = try await fixture.pass(&schedule, now: monotonic())
        guard case .failed(let reason) = outcome else {
            Issue.record("pushed to a host whose key is not the target's")
            return
        }
        #expect(reason.hasPrefix("rsync exit status 255") && reason.contains("Host key verification failed"), "\(reason)")
        #expect(schedule.state == .failing && schedule.failuresInARow == 1)
        #expect(!FileManager.default.fileExists(atPath: fixture.copy + "/a"))
    }

    @Test func cancelKillsRsyncAndItsSSH() async throws {
        let fixture = try Fixture(bandwidthLimitKiB: 200)
        try fixture.write("big.bin", bytes: 8 << 20)
        let finished = Mutex(false)
        let run = SyncPass.start(pass: 1, target: fixture.target, epoch: 3, setup: fixture.setup) { _, _ in finished.withLock { $0 = true } }
        // Until rsync and the ssh it started are both running, and bytes flow.
        let deadline = Date().addingTimeInterval(10)
        var group: pid_t?
        while Date() < deadline {
            if let current = run.group, processes(inGroup: current).count >= 2 {
                group = current
                break
            }
            try await Task.sleep(for: .milliseconds(20))
        }
        guard let group else {
            Issue.record("rsync and ssh did not both start")
            return
        }
        try await Task.sleep(for: .milliseconds(500))
        let members = processes(inGroup: group)
        let names = members.compactMap { try? String(contentsOfFile: "/proc/\($0)/comm", encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines) }
        #expect(Set(names).isSuperset(of: ["rsync", "ssh"]), "\(names)")
        run.cancel()
        let gone = Date().addingTimeInterval(3)
        while !processes(inGroup: group).isEmpty, Date() < gone { try await Task.sleep(for: .milliseconds(10)) }
        #expect(processes(inGroup: group).isEmpty, "left running: \(processes(inGroup: group))")
        try await Task.sleep(for: .milliseconds(200))
        #expect(!finished.withLock { $0 }, "a cancelled pass reports nothing")
        #expect(!FileManager.default.fileExists(atPath: fixture.copy + "/.warmpool-sync/manifest.json"), "no manifest for a pass that did not finish")
        // The receiving rsync under sshd goes too once its connection is gone.
        let remoteGone = Date().addingTimeInterval(5)
        func remoteReceivers() -> Int {
            let all = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
            return all.filter { entry in
                guard pid_t(entry) != nil, let line = try? String(contentsOfFile: "/proc/\(entry)/cmdline", encoding: .utf8) else { return false }
                return line.contains("--server") && line.contains(fixture.copy)
            }.count
        }
        while remoteReceivers() > 0, Date() < remoteGone { try await Task.sleep(for: .milliseconds(50)) }
        #expect(remoteReceivers() == 0)
    }
}
