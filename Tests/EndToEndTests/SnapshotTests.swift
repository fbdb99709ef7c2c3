import Foundation
import Testing
import WarmpoolJSON
import WarmpoolTestSupport

#if canImport(Glibc)
import Glibc
#endif

/// The real `warmpool-snapshot` against a real S3 server (moto, checking every signature): a
/// tree survives the round trip, the second snapshot uploads what changed only, an old snapshot
/// is restored as it was, and a changed object or a wrong key is refused; `prune` and
/// `create --keep-last` keep what the policy says and collect the rest (issue 21).
@Suite(.serialized) struct SnapshotTests {
    let server: MotoServer
    let directory: String
    let binaries: String

    init() throws {
        server = try MotoServer()
        binaries = try Harness.findBinaries()
        directory = NSTemporaryDirectory() + "warmpool-snapshot-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: directory + "/data", withIntermediateDirectories: true)
        try (server.secretAccessKey + "\n").write(toFile: directory + "/s3-secret", atomically: true, encoding: .utf8)
        let key = (0..<32).map { _ in String(format: "%02x", UInt8.random(in: 0...255)) }.joined()
        try (key + "\n").write(toFile: directory + "/snapshot-key", atomically: true, encoding: .utf8)
        try MotoServer.peer(["mb", server.url, server.accessKeyID, server.secretAccessKey, "snapshots"])
    }

    func snapshot(_ arguments: [String], keyFile: String? = nil) throws -> (status: Int32, json: JSONValue?, output: String) {
        let (status, output) = try Command.run(binaries + "/warmpool-snapshot", arguments + [
            "--endpoint", server.url, "--bucket", "snapshots", "--prefix", "pool-12/", "--access-key-id", server.accessKeyID,
            "--secret-file", directory + "/s3-secret", "--key-file", keyFile ?? directory + "/snapshot-key",
        ])
        let line = output.split(separator: "\n").last { $0.hasPrefix("{") }
        return (status, line.flatMap { try? JSONValue.parse(String($0)) }, output)
    }

    func bytes(_ path: String) -> [UInt8]? { FileManager.default.contents(atPath: path).map { Array($0) } }

    func pseudoRandom(_ count: Int, seed: UInt64) -> [UInt8] {
        var state = seed | 1
        return (0..<count).map { _ in
            state ^= state << 13
            state ^= state >> 7
            state ^= state << 17
            return UInt8(truncatingIfNeeded: state)
        }
    }

    @Test func aTreeSurvivesTheRoundTripAndOnlyWhatChangedIsUploadedAgain() throws {
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let data = directory + "/data"
        try FileManager.default.createDirectory(atPath: data + "/models", withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: data + "/checkpoints/nested/deeper", withIntermediateDirectories: true)
        let model = pseudoRandom(6 << 20, seed: 1)
        let checkpoint = Array(repeating: Array("step 1200 loss 0.0314\n".utf8), count: 150_000).flatMap { $0 }
        try Data(model).write(to: URL(fileURLWithPath: data + "/models/big.bin"))
        try Data(checkpoint).write(to: URL(fileURLWithPath: data + "/checkpoints/step-1200.pt"))
        try Data().write(to: URL(fileURLWithPath: data + "/empty"))
        try "deep\n".write(toFile: data + "/checkpoints/nested/deeper/note.txt", atomically: true, encoding: .utf8)
        chmod(data + "/checkpoints/nested/deeper/note.txt", 0o640)
        try FileManager.default.createSymbolicLink(atPath: data + "/latest", withDestinationPath: "checkpoints/step-1200.pt")

        let first = try snapshot(["create", "--source", data])
        #expect(first.status == 0, "\(first.output)")
        let firstID = first.json?["snapshot"]?.stringValue ?? ""
        #expect(first.json?["files"]?.intValue == 4)
        #expect(first.json?["bytes"]?.intValue == Int64(model.count + checkpoint.count + 5))
        #expect(first.json?["new_chunks"]?.intValue == first.json?["chunks"]?.intValue, "the first snapshot uploads every chunk")
        let firstUpload = first.json?["uploaded_bytes"]?.intValue ?? 0
        #expect(firstUpload < Int64(model.count + checkpoint.count / 10), "the checkpoint compresses: \(firstUpload) bytes uploaded")

        // What the store holds is sealed: no object contains a file's bytes.
        let keys = try MotoServer.peer(["ls", server.url, server.accessKeyID, server.secretAccessKey, "snapshots", "pool-12/"])
            .split(separator: "\n").map(String.init)
        #expect(keys.contains("pool-12/snapshots/\(firstID)"))
        #expect(keys.allSatisfy { $0.hasPrefix("pool-12/chunks/") || $0.hasPrefix("pool-12/snapshots/") }, "\(keys)")

        let restored = directory + "/restored"
        let back = try snapshot(["restore", "--target", restored])
        #expect(back.status == 0, "\(back.output)")
        #expect(back.json?["snapshot"]?.stringValue == firstID)
        #expect(bytes(restored + "/models/big.bin") == model)
        #expect(bytes(restored + "/checkpoints/step-1200.pt") == checkpoint)
        #expect(bytes(restored + "/empty") == [])
        #expect(bytes(restored + "/checkpoints/nested/deeper/note.txt") == Array("deep\n".utf8))
        #expect(try FileManager.default.destinationOfSymbolicLink(atPath: restored + "/latest") == "checkpoints/step-1200.pt")
        let mode = (try FileManager.default.attributesOfItem(atPath: restored + "/checkpoints/nested/deeper/note.txt")[.posixPermissions] as? NSNumber)?.intValue
        #expect(mode == 0o640)

        // 1 % changes: an append to the model and an edit inside the checkpoint.
        var edited = checkpoint
        edited.replaceSubrange(1_000_000..<1_000_010, with: Array("EDITEDEDIT".utf8))
        try Data(edited).write(to: URL(fileURLWithPath: data + "/checkpoints/step-1200.pt"))
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: data + "/models/big.bin"))
        try handle.seekToEnd()
        try handle.write(contentsOf: Data(pseudoRandom(60_000, seed: 9)))
        try handle.close()
        let second = try snapshot(["create", "--source", data])
        #expect(second.status == 0, "\(second.output)")
        let newChunks = second.json?["new_chunks"]?.intValue ?? -1
        #expect(newChunks >= 1 && newChunks <= 4, "only the chunks around the changes: \(second.output)")
        #expect((second.json?["uploaded_bytes"]?.intValue ?? .max) < firstUpload / 2, "\(second.output)")

        let list = try snapshot(["list"])
        let ids = list.json?["snapshots"]?.arrayValue?.compactMap(\.stringValue) ?? []
        #expect(ids.count == 2 && ids.first == firstID, "\(list.output)")
        // The older snapshot is still whole.
        let old = try snapshot(["restore", "--target", directory + "/old", "--snapshot", firstID])
        #expect(old.status == 0 && bytes(directory + "/old/checkpoints/step-1200.pt") == checkpoint, "\(old.output)")

        // Another key opens nothing.
        try (String(repeating: "ab", count: 32) + "\n").write(toFile: directory + "/other-key", atomically: true, encoding: .utf8)
        let wrongKey = try snapshot(["restore", "--target", directory + "/nothing"], keyFile: directory + "/other-key")
        #expect(wrongKey.status != 0 && wrongKey.output.contains("failed authentication"), "\(wrongKey.output)")

        // A chunk changed in the store is refused, and the file it belongs to is not written.
        let chunk = keys.first { $0.hasPrefix("pool-12/chunks/") }!
        try Data(pseudoRandom(1_000, seed: 4)).write(to: URL(fileURLWithPath: directory + "/junk"))
        try MotoServer.peer(["put", server.url, server.accessKeyID, server.secretAccessKey, "snapshots", chunk, directory + "/junk"])
        let tampered = try snapshot(["restore", "--target", directory + "/tampered", "--snapshot", firstID])
        #expect(tampered.status != 0 && tampered.output.contains("failed authentication"), "\(tampered.output)")
    }

    func ids(_ json: JSONValue?, _ key: String) -> [String] { json?[key]?.arrayValue?.compactMap(\.stringValue) ?? [] }

    @Test func pruneAndCreateWithRetentionKeepWhatThePolicySaysAndCollectTheRest() throws {
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let data = directory + "/data"
        var model = pseudoRandom(3 << 20, seed: 1)
        var made: [String] = []
        for round in 0..<3 {
            model.replaceSubrange((round << 20)..<((round << 20) + 1000), with: pseudoRandom(1000, seed: UInt64(10 + round)))
            try Data(model).write(to: URL(fileURLWithPath: data + "/model.bin"))
            try Data(pseudoRandom(200_000, seed: UInt64(20 + round))).write(to: URL(fileURLWithPath: data + "/step.pt"))
            let created = try snapshot(["create", "--source", data, "--parallel", "\(1 + round * 3)"])
            #expect(created.status == 0 && created.json?["prune"] == nil, "\(created.output)")
            made.append(created.json?["snapshot"]?.stringValue ?? "")
        }

        let noPolicy = try snapshot(["prune"])
        #expect(noPolicy.status != 0 && noPolicy.output.contains("--keep-last"), "\(noPolicy.output)")
        let keepNone = try snapshot(["prune", "--keep-last", "0"])
        #expect(keepNone.status != 0, "\(keepNone.output)")

        let dry = try snapshot(["prune", "--keep-last", "1", "--dry-run"])
        #expect(dry.status == 0 && dry.json?["dry_run"]?.boolValue == true, "\(dry.output)")
        #expect(ids(dry.json, "deleted") == Array(made.prefix(2)) && ids(dry.json, "kept") == [made[2]], "\(dry.output)")
        let wouldFree = dry.json?["chunks_deleted"]?.intValue ?? 0
        #expect(wouldFree > 0, "the replaced chunks and the old step.pt: \(dry.output)")
        #expect(ids(try snapshot(["list"]).json, "snapshots") == made, "a dry run deletes nothing")

        let pruned = try snapshot(["prune", "--keep-last", "1"])
        #expect(pruned.status == 0 && ids(pruned.json, "deleted") == Array(made.prefix(2)), "\(pruned.output)")
        #expect(pruned.json?["chunks_deleted"]?.intValue == wouldFree && (pruned.json?["bytes_freed"]?.intValue ?? 0) > 0, "\(pruned.output)")
        #expect(pruned.json?["collection_skipped"] == nil, "\(pruned.output)")
        #expect(ids(try snapshot(["list"]).json, "snapshots") == [made[2]])

        // The agent's form: a create followed by a prune, in one run.
        try Data(pseudoRandom(200_000, seed: 99)).write(to: URL(fileURLWithPath: data + "/step.pt"))
        let scheduled = try snapshot(["create", "--source", data, "--keep-last", "1", "--keep-daily", "1"])
        let newest = scheduled.json?["snapshot"]?.stringValue ?? ""
        #expect(scheduled.status == 0, "\(scheduled.output)")
        // Today's newest and the last one are the same snapshot: the one before goes.
        #expect(ids(scheduled.json?["prune"], "kept") == [newest] && ids(scheduled.json?["prune"], "deleted") == [made[2]], "\(scheduled.output)")
        #expect((scheduled.json?["prune"]?["chunks_deleted"]?.intValue ?? 0) > 0, "the old step.pt's chunks: \(scheduled.output)")

        let restored = try snapshot(["restore", "--target", directory + "/restored", "--parallel", "8"])
        #expect(restored.status == 0 && restored.json?["snapshot"]?.stringValue == newest, "\(restored.output)")
        #expect(bytes(directory + "/restored/model.bin") == model)
        #expect(bytes(directory + "/restored/step.pt") == pseudoRandom(200_000, seed: 99))
        let keys = try MotoServer.peer(["ls", server.url, server.accessKeyID, server.secretAccessKey, "snapshots", "pool-12/locks/"])
        #expect(keys.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty, "every lock released: \(keys)")
    }

    /// A failure is reported where the agent reads the outcome: `{"error": ...}` on stdout.
    @Test func aFailureIsReportedAsJSON() throws {
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let missing = try snapshot(["create", "--source", directory + "/no-such-directory"])
        #expect(missing.status != 0 && missing.json?["error"]?.stringValue != nil, "\(missing.output)")
        #expect(ids(try snapshot(["list"]).json, "snapshots").isEmpty)
    }
}
