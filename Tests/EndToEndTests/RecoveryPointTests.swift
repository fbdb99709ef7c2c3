import Foundation
import Testing
import WarmpoolJSON
import WarmpoolTestSupport

#if canImport(Glibc)
import Glibc
#endif

/// A real S3 server (moto, checking signatures) with a bucket and a snapshot key for a lab's
/// controller: the store's settings as the instances get them (`--agent-env`), the snapshot
/// command the agents run, and the restore command the controller runs on a new primary.
struct SnapshotStore {
    let server: MotoServer
    /// `NAME=value`, with the deployment's prefix (each pool's snapshots go under `pool-<id>/` in it).
    let environment: [String]
    let agentFlags: [String]
    let restoreFlags: [String]

    /// `reachableAt`: an address the emulated VMs reach the store at (they are namespaces of their own).
    init(lab: WarmPoolLab, reachableAt address: String? = nil) throws {
        server = try MotoServer(reachableAt: address)
        let directory = lab.harness.directory
        try MotoServer.peer(["mb", server.url, server.accessKeyID, server.secretAccessKey, "snapshots"])
        let key = (0..<32).map { _ in String(format: "%02x", UInt8.random(in: 0...255)) }.joined()
        try (key + "\n").write(toFile: directory + "/snapshot-key", atomically: true, encoding: .utf8)
        environment = [
            "WARMPOOL_S3_ENDPOINT=\(server.url)", "WARMPOOL_S3_BUCKET=snapshots", "WARMPOOL_S3_PREFIX=warmpool/",
            "WARMPOOL_S3_ACCESS_KEY_ID=\(server.accessKeyID)", "WARMPOOL_S3_SECRET_ACCESS_KEY=\(server.secretAccessKey)",
            "WARMPOOL_SNAPSHOT_KEY_FILE=\(directory)/snapshot-key",
        ]
        let binaries = lab.harness.binaries
        agentFlags = (environment + [#"WARMPOOL_SNAPSHOT_COMMAND=\#(binaries)/warmpool-snapshot create --source "$WARMPOOL_SNAPSHOT_SOURCE""#])
            .flatMap { ["--agent-env", $0] }
        restoreFlags = ["--restore-command", #"\#(binaries)/warmpool-snapshot restore --target "$WARMPOOL_VOLUME_PATH""#]
    }

    /// A snapshot id's leading time (`yyyyMMddTHHmmss.SSSZ`): ids of snapshots begun later sort after it.
    static func id(of date: Date) -> String {
        let formatter = DateFormatter()
        formatter.locale = Locale(identifier: "en_US_POSIX")
        formatter.timeZone = TimeZone(identifier: "UTC")
        formatter.dateFormat = "yyyyMMdd'T'HHmmss.SSS'Z'"
        return formatter.string(from: date)
    }
}

/// The recovery point end to end (issue 21): real instances (warmpool-sim: sshd + the real agent,
/// the volume at /data), the real controller, a real S3 server (moto). The controller's
/// `--snapshot-interval-s` reaches the primary's agent through the instance's environment, the
/// agent runs the real `warmpool-snapshot` while it holds the lease, and its telemetry carries the
/// newest checkpoint's age and the last snapshot; a failover records the work it lost.
@Suite(.serialized) struct RecoveryPointEndToEndTests {
    @Test func snapshotsFollowTheLeaseAndAFailoverRecordsTheWorkItLost() throws {
        let lab = try WarmPoolLab()
        let snapshots = try SnapshotStore(lab: lab)
        let store = snapshots.environment
        let directory = lab.harness.directory
        try lab.startController(extra: ["--snapshot-interval-s", "2"] + snapshots.agentFlags)
        let provisioned = try lab.provision()["status"] ?? [:]
        let primary = provisioned["primary_gpu_id"]?.intValue ?? -1
        let standby = provisioned["standby_gpu_id"]?.intValue ?? -1
        let port = Int(try lab.status()["primary_ssh_port"]?.intValue ?? 0)

        // The workload's last checkpoint, written 30 s ago; a newer file that is not a checkpoint.
        let written = Int(Date().timeIntervalSince1970) - 30
        _ = try lab.ssh(port: port, "mkdir -p /data/checkpoints/run-1 && head -c 300000 /dev/urandom > /data/checkpoints/run-1/step_900.pt"
                        + " && touch -d @\(written) /data/checkpoints/run-1/step_900.pt && echo log > /data/train.log"
                        + " && sha256sum /data/checkpoints/run-1/step_900.pt")
        let writtenBy = SnapshotStore.id(of: Date())  // a snapshot begun after this holds the files
        var point: JSONValue = .null
        try lab.harness.waitUntil("the primary reports its checkpoint and a snapshot taken after it", timeout: 60) {
            point = (try? lab.status()["recovery_point"]) ?? .null
            // Snapshot ids begin with when they were taken: one begun after the write holds it.
            return (point["checkpoint_newest"]?.stringValue == "run-1/step_900.pt")
                && (point["last_snapshot_id"]?.stringValue ?? "") > writtenBy && (point["snapshot_running"]?.boolValue == false)
        }
        let age = point["checkpoint_age_seconds"]?.doubleValue ?? -1
        #expect(age >= 30 && age < 90, "\(point)")
        #expect(point["checkpoint_pattern"]?.stringValue == "/data/checkpoints/**")
        #expect(point["checkpoint_files"]?.intValue == 1)
        #expect(point["snapshot_interval_seconds"]?.intValue == 2)
        #expect(point["snapshot_error"] == .null, "\(point)")

        // The snapshot the agent reported is in the store and holds the volume as it was.
        // Each pool's snapshots under a prefix of its own.
        let own = store.map { $0 == "WARMPOOL_S3_PREFIX=warmpool/" ? "WARMPOOL_S3_PREFIX=warmpool/pool-12/" : $0 }
        let (listed, listing) = try Command.run(lab.harness.binaries + "/warmpool-snapshot", ["list"], environment: own)
        #expect(listed == 0, "\(listing)")
        let reported = point["last_snapshot_id"]?.stringValue ?? "?"
        #expect(listing.contains(reported), "\(listing)")
        let restored = directory + "/restored"
        let (status, output) = try Command.run(lab.harness.binaries + "/warmpool-snapshot",
                                               ["restore", "--snapshot", reported, "--target", restored], environment: own)
        #expect(status == 0, "\(output)")
        let original = try lab.ssh(port: port, "cat /data/checkpoints/run-1/step_900.pt | sha256sum").prefix(64)
        let copy = try Command.runChecked("/bin/sh", ["-c", "sha256sum < '\(restored)/checkpoints/run-1/step_900.pt'"]).prefix(64)
        #expect(original == copy)

        #expect(try lab.sim("POST", "/admin/instances/\(primary)/crash").status == 200)
        let failover = try lab.waitForFailover(1)
        #expect(failover["new_primary_gpu_id"]?.intValue == standby)
        let lost = failover["work_lost_seconds"]?.doubleValue ?? -1
        #expect(lost >= 30 && lost < 120, "the work since the checkpoint: \(failover)")
        let checkpointAt = ISO8601DateFormatter.withFractions.date(from: failover["last_checkpoint_at"]?.stringValue ?? "")
        #expect(abs((checkpointAt?.timeIntervalSince1970 ?? 0) - Double(written)) < 2.5, "\(failover)")

        // The new primary snapshots the volume too (the old one is gone with its lease).
        try lab.harness.waitUntil("the new primary reports a snapshot of its own", timeout: 60) {
            let now = (try? lab.status()["recovery_point"]) ?? .null
            return now["last_snapshot_id"]?.stringValue.map { $0 != reported } ?? false
        }
    }
}

/// The last rung end to end: the pool's machine is lost for good (the emulator's `lost_machines`:
/// its instances dead, its volume's contents gone); the controller moves the pool to the other
/// host and restores the newest snapshot onto a new volume there, through the new primary, over
/// SSH with the host key its agent reported.
@Suite(.serialized) struct HostLossEndToEndTests {
    @Test func aLostHostsPoolIsRestoredOntoAnotherHostFromItsNewestSnapshot() throws {
        let lab = try WarmPoolLab(simExtra: ["--host", "88:4:RTX_4090:0.50"])
        let snapshots = try SnapshotStore(lab: lab)
        try lab.startController(extra: ["--snapshot-interval-s", "1", "--host-loss-after-s", "2"] + snapshots.agentFlags + snapshots.restoreFlags)
        let before = try lab.provision()["status"] ?? [:]
        #expect(before["host_machine_id"]?.intValue == 77)
        let oldVolume = before["volume_id"]?.intValue ?? -1
        let port = Int(try lab.status()["primary_ssh_port"]?.intValue ?? 0)
        let sums = try lab.ssh(port: port, "mkdir -p /data/checkpoints /data/models && head -c 3000000 /dev/urandom > /data/models/w.bin"
                               + " && seq 1 200000 > /data/checkpoints/step_10.txt && cd /data && sha256sum models/w.bin checkpoints/step_10.txt")
        let written = SnapshotStore.id(of: Date())  // a snapshot begun after this holds the files
        try lab.harness.waitUntil("a snapshot taken after the data was written", timeout: 60) {
            let point = (try? lab.status()["recovery_point"]) ?? .null
            return (point["last_snapshot_id"]?.stringValue ?? "") > written && point["snapshot_running"]?.boolValue == false
        }

        // The machine is gone, and its volume with it.
        #expect(try lab.sim("POST", "/admin/faults", body: #"{"lost_machines": [77]}"#).status == 200)
        let failover = try lab.waitForFailover(1, timeout: 120)
        #expect(failover["result"]?.stringValue == "succeeded", "\(failover)")
        let steps = (failover["timeline"]?.arrayValue ?? []).compactMap { $0["step"]?.stringValue }
        for step in ["detected", "fencing", "fenced", "relocating", "volume_ready", "standby_running", "restored", "volume_verified", "promoted"] {
            #expect(steps.contains(step), "timeline lacks \(step): \(steps)")
        }
        #expect(failover["restored_snapshot"]?.stringValue != nil)
        let recoveryPoint = failover["recovery_point_seconds"]?.doubleValue ?? -1
        #expect(recoveryPoint >= 0 && recoveryPoint < 30, "\(failover)")

        let after = try lab.status()
        #expect(after["host_machine_id"]?.intValue == 88)
        #expect(after["volume_id"]?.intValue != oldVolume)
        #expect(after["epoch"]?.intValue == 2)
        #expect(after["standby_state"]?.stringValue == "stopped", "a standby on the new host: \(after)")
        var protection: JSONValue = .null
        let protected = (try? lab.harness.waitUntil("the moved pool is protected", timeout: 20) {
            protection = (try? lab.status()) ?? .null
            return protection["protected"]?.boolValue == true
        }) != nil
        #expect(protected, "\(protection["conditions"] ?? .null)")
        // The files are back, byte for byte, and the new volume carries its own identity.
        let newPort = Int(after["primary_ssh_port"]?.intValue ?? 0)
        #expect(try lab.ssh(port: newPort, "cd /data && sha256sum models/w.bin checkpoints/step_10.txt") == sums)
        #expect(try lab.ssh(port: newPort, "cat /data/.warmpool-volume-id") == "\(after["volume_id"]?.intValue ?? -1)\n")

        // Cleanup leaves nothing at the provider: the new pool's instances and volume, the lost
        // host's instances and its volume.
        #expect(try http("DELETE", "\(lab.api)/cleanup/12", key: try lab.adminKey()).status == 200)
        try lab.harness.waitUntil("nothing is left at the provider", timeout: 60) {
            let instances = (try? lab.sim("GET", "/api/v0/instances").json["instances"]?.arrayValue) ?? [.null]
            let volumes = (try? lab.sim("GET", "/api/v0/volumes").json["volumes"]?.arrayValue) ?? [.null]
            return instances.isEmpty && volumes.isEmpty
        }
    }
}

/// The operator's snapshot commands, through the real warmpoolctl: list a pool's snapshots, take
/// one now, and restore an older one onto a new volume (the primary fenced first, the old volume
/// kept until cleanup).
@Suite(.serialized) struct SnapshotCommandsEndToEndTests {
    @Test func anOperatorListsTakesAndRestoresSnapshots() throws {
        let lab = try WarmPoolLab()
        let binaries = lab.harness.binaries
        let snapshots = try SnapshotStore(lab: lab)
        try lab.startController(extra: snapshots.agentFlags + snapshots.restoreFlags)
        func ctl(_ arguments: String...) throws -> (status: Int32, output: String) {
            try Command.run(binaries + "/warmpoolctl", [arguments[0], "--url", "http://\(lab.harness.apiAddress)", "--api-key", try lab.adminKey()]
                            + arguments.dropFirst())
        }
        let before = try lab.provision()["status"] ?? [:]
        let port = Int(try lab.status()["primary_ssh_port"]?.intValue ?? 0)
        #expect(try ctl("snapshots", "12").output.contains("no snapshots"))

        _ = try lab.ssh(port: port, "echo first > /data/state.txt")
        let first = try ctl("snapshot", "12", "--json")
        #expect(first.status == 0, "\(first.output)")
        let firstID = try JSONValue.parse(first.output)["snapshot"]?["snapshot"]?.stringValue ?? "?"
        _ = try lab.ssh(port: port, "echo second > /data/state.txt && echo later > /data/later.txt")
        let second = try ctl("snapshot", "12", "--json")
        let secondID = try JSONValue.parse(second.output)["snapshot"]?["snapshot"]?.stringValue ?? "?"
        let listed = try ctl("snapshots", "12", "--json")
        let ids = (try JSONValue.parse(listed.output)["snapshots"]?.arrayValue ?? []).compactMap { $0["id"]?.stringValue }
        #expect(ids == [secondID, firstID], "newest first: \(listed.output)")

        #expect(try ctl("restore", "12", "--snapshot", firstID).status != 0, "a restore needs --yes")
        let restored = try ctl("restore", "12", "--snapshot", firstID, "--yes")
        #expect(restored.status == 0, "\(restored.output)")
        #expect(restored.output.contains("snapshot \(firstID) restored onto volume"), "\(restored.output)")
        let failover = try lab.waitForFailover(1)
        #expect(failover["restored_snapshot"]?.stringValue == firstID)
        let steps = (failover["timeline"]?.arrayValue ?? []).compactMap { $0["step"]?.stringValue }
        #expect(steps.contains("fenced") && steps.contains("restored") && steps.contains("promoted") && !steps.contains("detected"), "\(steps)")
        let after = try lab.status()
        #expect(after["volume_id"]?.intValue != before["volume_id"]?.intValue, "a new volume")
        #expect(after["epoch"]?.intValue == 2)
        let newPort = Int(after["primary_ssh_port"]?.intValue ?? 0)
        #expect(try lab.ssh(port: newPort, "cat /data/state.txt; ls /data") == "first\nstate.txt\n", "the first snapshot's data, nothing later")

        // Bad input is a clear refusal.
        let bad = try http("POST", "\(lab.api)/restore/12", key: try lab.adminKey(), body: #"{"snapshot": "x; rm -rf /"}"#)
        #expect(bad.status == 400, "\(bad.text)")
        #expect(try http("GET", "\(lab.api)/snapshots/99", key: try lab.adminKey()).status == 404)
    }
}

extension ISO8601DateFormatter {
    static var withFractions: ISO8601DateFormatter {
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        return formatter
    }
}
