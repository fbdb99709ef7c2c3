import Foundation
import Testing

@testable import WarmpoolAgent

/// The sync target file as the controller writes it, the pending walk on real files, and rsync's
/// statistics.
@Suite struct SyncTargetTests {
    static let key = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----\n"
    static let good = """
        {"name": "wp-7-cpu-1", "host": "10.88.0.5", "port": 2222, "user": "root", "path": "/data/", "identity": \(quoted(key)),
         "host_key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl root@vm", "epoch": 3, "bwlimit_kib": 0}
        """

    static func quoted(_ text: String) -> String {
        String(decoding: try! JSONSerialization.data(withJSONObject: [text]), as: UTF8.self).dropFirst().dropLast().description
    }

    @Test func parsesTheControllersFile() throws {
        let target = try SyncTarget.parse(Array(Self.good.utf8)).get()
        #expect(target == SyncTarget(
            name: "wp-7-cpu-1", host: "10.88.0.5", port: 2222, user: "root", path: "/data", identity: Self.key,
            hostKey: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl", epoch: 3))
        #expect(target.destination == "root@10.88.0.5:/data/")
        #expect(target.knownHostsLine == "[10.88.0.5]:2222 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl\n")
        let defaults = try SyncTarget.parse(Array("""
            {"name": "n", "host": "fd00::5", "path": "/d", "identity": \(Self.quoted(Self.key)), "host_key": "ssh-ed25519 AAAA", "epoch": 0}
            """.utf8)).get()
        #expect(defaults.port == 22 && defaults.user == "root" && defaults.bandwidthLimitKiB == 0)
        #expect(defaults.destination == "root@[fd00::5]:/d/")
        #expect(defaults.knownHostsLine == "fd00::5 ssh-ed25519 AAAA\n")
    }

    @Test(arguments: [
        ("", "sync target is not JSON"),
        ("[1]", "sync target is not a JSON object"),
        (#"{"host": "h"}"#, #"sync target: "name" is missing"#),
        (#"{"name": 5}"#, #"sync target: "name" must be a string, got an integer"#),
        (#"{"name": "n", "host": "-oProxyCommand=x", "path": "/d"}"#, #"sync target: "host" must be a host name or an IP address"#),
        (#"{"name": "n", "host": "h", "user": "a b", "path": "/d"}"#, #"sync target: "user" must be a user name"#),
        (#"{"name": "n", "host": "h", "path": "data"}"#, #"sync target: "path" must be an absolute directory"#),
        (#"{"name": "n", "host": "h", "path": "/"}"#, #"sync target: "path" must be an absolute directory"#),
        (#"{"name": "n", "host": "h", "path": "/d", "identity": "hunter2"}"#, #"sync target: "identity" must be an OpenSSH private key"#),
        (#"{"name": "n", "host": "h", "path": "/d", "identity": "-----BEGIN OPENSSH PRIVATE KEY-----", "host_key": "AAAA"}"#, #"sync target: "host_key" must be a public key line"#),
        (#"{"name": "n", "host": "h", "path": "/d", "identity": "-----BEGIN OPENSSH PRIVATE KEY-----", "host_key": "ssh-ed25519 AAAA", "port": "22", "epoch": 1}"#, #"sync target: "port" must be an integer, got a string"#),
        (#"{"name": "n", "host": "h", "path": "/d", "identity": "-----BEGIN OPENSSH PRIVATE KEY-----", "host_key": "ssh-ed25519 AAAA", "port": 70000, "epoch": 1}"#, #"sync target: "port" must be in 1...65535, got 70000"#),
        (#"{"name": "n", "host": "h", "path": "/d", "identity": "-----BEGIN OPENSSH PRIVATE KEY-----", "host_key": "ssh-ed25519 AAAA"}"#, #"sync target: "epoch" is missing"#),
        (#"{"name": "n", "host": "h", "path": "/d", "identity": "-----BEGIN OPENSSH PRIVATE KEY-----", "host_key": "ssh-ed25519 AAAA", "epoch": -1}"#, #"sync target: "epoch" must be in 0..."#),
        (#"{"name": "n", "host": "h", "path": "/d", "identity": "-----BEGIN OPENSSH PRIVATE KEY-----", "host_key": "ssh-ed25519 AAAA", "epoch": 1.5}"#, #"sync target: "epoch" must be an integer"#),
        (#"{"name": "n", "host": "h", "path": "/d", "identity": "-----BEGIN OPENSSH PRIVATE KEY-----", "host_key": "ssh-ed25519 AAAA", "epoch": 1, "bwlimit_kib": true}"#, #"sync target: "bwlimit_kib" must be an integer, got"#),
    ])
    func refusesMalformedFilesPrecisely(_ text: String, _ expected: String) {
        guard case .failure(let error) = SyncTarget.parse(Array(text.utf8)) else {
            Issue.record("accepted \(text)")
            return
        }
        #expect(error.description.hasPrefix(expected), "\(error)")
    }

    @Test func theFileIsReadWhenItChangesAndItsKeysArePrivate() throws {
        let directory = NSTemporaryDirectory() + "warmpool-sync-target-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let file = SyncTargetFile(path: directory + "/sync-target.json", stateDirectory: directory + "/state", fileStem: "gpu-1")
        #expect(file.check() == .absent)
        #expect(file.check() == nil, "still absent: no news")
        try Self.good.write(toFile: file.path, atomically: true, encoding: .utf8)
        guard case .target(let target) = file.check() else {
            Issue.record("the target was not read")
            return
        }
        #expect(target.name == "wp-7-cpu-1")
        #expect(file.check() == nil, "unchanged")
        for path in [file.identityPath, file.knownHostsPath] {
            let attributes = try FileManager.default.attributesOfItem(atPath: path)
            #expect((attributes[.posixPermissions] as? Int) == 0o600, "\(path)")
        }
        #expect(try String(contentsOfFile: file.identityPath, encoding: .utf8) == Self.key)
        #expect(try String(contentsOfFile: file.knownHostsPath, encoding: .utf8) == target.knownHostsLine)
        try "{\"name\": ".write(toFile: file.path, atomically: true, encoding: .utf8)
        guard case .malformed(let reason) = file.check() else {
            Issue.record("a truncated file was not reported")
            return
        }
        #expect(reason.hasPrefix("sync target is not JSON"))
        try FileManager.default.removeItem(atPath: file.path)
        #expect(file.check() == .absent)
    }

    @Test func pendingWalkCountsFilesChangedSinceAndSkipsTheAgentsOwn() throws {
        let root = NSTemporaryDirectory() + "warmpool-sync-walk-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: root) }
        for directory in ["a/b", ".warmpool", ".warmpool-sync", "c"] {
            try FileManager.default.createDirectory(atPath: root + "/" + directory, withIntermediateDirectories: true)
        }
        let old = Date(timeIntervalSinceNow: -3600)
        for (path, size) in [("old.bin", 10), ("a/b/old2.bin", 20)] {
            try Data(count: size).write(to: URL(fileURLWithPath: root + "/" + path))
            try FileManager.default.setAttributes([.modificationDate: old], ofItemAtPath: root + "/" + path)
        }
        // ctime cannot be set back: measure "since" from after the old files were made.
        usleep(20_000)
        let since = Int64(Date().timeIntervalSince1970 * 1e9)
        usleep(20_000)
        for (path, size) in [("new.bin", 100), ("a/b/new2.bin", 1000), (".warmpool/epoch", 5), (".warmpool-sync/manifest.json", 7), ("c/.warmpool", 3)] {
            try Data(count: size).write(to: URL(fileURLWithPath: root + "/" + path))
        }
        let pending = SyncPendingWalk(root: root).walk(since: since)
        #expect(pending == SyncPending(files: 3, bytes: 1103), "only the agent's directories at the volume's root are skipped")
        #expect(SyncPendingWalk(root: root).walk(since: Int64(Date().timeIntervalSince1970 * 1e9) + 10_000_000_000) == SyncPending())
        var bounded = SyncPendingWalk(root: root)
        bounded.entryLimit = 2
        #expect(bounded.walk(since: since).truncated)
        #expect(SyncPendingWalk(root: root + "/missing").walk(since: 0).problem != nil)
    }

    @Test func readsRsyncStatistics() {
        let output = """
            Number of files: 1,234 (reg: 1,000, dir: 234)
            Number of created files: 0
            Total file size: 12,345,678 bytes
            Total transferred file size: 0 bytes
            Total bytes sent: 45,678
            Total bytes received: 321

            sent 45,678 bytes  received 321 bytes  91,998.00 bytes/sec
            """
        #expect(RsyncStatistics(Array(output.utf8)) == RsyncStatistics(files: 1000, totalBytes: 12_345_678, sentBytes: 45_678))
        #expect(RsyncStatistics(Array("Number of files: 7\n".utf8)) == RsyncStatistics(files: 7))
        #expect(RsyncStatistics([]) == RsyncStatistics())
        #expect(SyncPass.failure("rsync", status: 255, output: Array("Host key verification failed.\r\nrsync: connection unexpectedly closed (0 bytes received so far) [sender]\nrsync error: unexplained error (code 255) at io.c(232) [sender=3.2.7]\n".utf8))
                == "rsync exit status 255: Host key verification failed.")
    }
}
