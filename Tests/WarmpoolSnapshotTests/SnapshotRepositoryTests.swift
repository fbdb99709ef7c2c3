import Foundation
import Logging
import Synchronization
import Testing
import WarmpoolModel
import WarmpoolHTTP
import WarmpoolStorage
import WarmpoolTestSupport
@testable import WarmpoolSnapshot

#if canImport(Glibc)
import Glibc
#endif

/// The repository against a real S3 server (moto, checking every signature): parallel uploads and
/// downloads give the same snapshot as one at a time; a prune deletes what its policy drops and
/// collects what no snapshot names; a prune beside a create collects nothing the create reuses,
/// and a create waits for a prune; locks of killed runs go stale; a create that fails part-way
/// leaves no manifest (issue 21).
@Suite(.serialized) struct SnapshotRepositoryTests {
    let server: MotoServer
    let directory: String
    /// Small chunks, so a few megabytes make dozens of them in a debug build.
    let chunker = ContentDefinedChunker(minimum: 16 << 10, average: 64 << 10, maximum: 256 << 10)
    let key = randomBytes(32, seed: 42)
    /// Refreshed every 200 ms, stale after 5 s: a live lock never looks stale on a loaded machine.
    let timing = LockTiming(refresh: .milliseconds(200), staleAfter: .seconds(5), poll: .milliseconds(50))
    /// For the test of stale locks: stale after 2 s.
    let quick = LockTiming(refresh: .milliseconds(200), staleAfter: .seconds(2), poll: .milliseconds(50))

    init() async throws {
        server = try MotoServer()
        directory = NSTemporaryDirectory() + "warmpool-repository-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        try await store().createBucket()
    }

    func store() -> S3Client {
        S3Client(configuration: .init(endpoint: server.url, region: "us-east-1", bucket: "repository-test", prefix: "pool-7/",
                                      credentials: S3Credentials(accessKeyID: server.accessKeyID, secretAccessKey: server.secretAccessKey),
                                      attempts: 2, backoff: .milliseconds(10)),
                 http: HTTPClient(), logger: Logger(label: "test.s3"))
    }

    func repository(parallel: Int = 4, timing: LockTiming? = nil, hooks: SnapshotRepository.Hooks = .init()) -> SnapshotRepository {
        SnapshotRepository(store: store(), sealer: ChunkSealer(snapshotKey: key), chunker: chunker, parallel: parallel,
                           lockTiming: timing ?? self.timing, logger: Logger(label: "test.snapshot"), hooks: hooks)
    }

    /// A tree of `files` (relative path: bytes) under a fresh directory.
    func tree(_ name: String, _ files: [String: [UInt8]]) throws -> String {
        let root = directory + "/" + name
        try? FileManager.default.removeItem(atPath: root)
        for (path, bytes) in files {
            let url = URL(fileURLWithPath: root + "/" + path)
            try FileManager.default.createDirectory(at: url.deletingLastPathComponent(), withIntermediateDirectories: true)
            try Data(bytes).write(to: url)
        }
        return root
    }

    func contents(_ root: String) throws -> [String: [UInt8]] {
        var found: [String: [UInt8]] = [:]
        for relative in try SnapshotRepository.walk(root) {
            var info = stat()
            if lstat(root + "/" + relative, &info) == 0, info.st_mode & S_IFMT == S_IFREG {
                found[relative] = Array(FileManager.default.contents(atPath: root + "/" + relative) ?? Data())
            }
        }
        return found
    }

    func keys(_ prefix: String) async throws -> Set<String> { Set(try await store().list(prefix: prefix).map(\.key)) }

    func referencedChunks(_ repository: SnapshotRepository, _ id: String) async throws -> Set<String> {
        Set(try await repository.manifest(id).entries.flatMap { $0.chunks ?? [] }.map(SnapshotRepository.chunkKey))
    }

    func text(_ count: Int, seed: UInt64) -> [UInt8] {
        var generator = SeededGenerator(seed: seed)
        let words = ["loss", "step", "epoch", "grad", "norm", "0.0314", "1200", "warmup", "rank"]
        var out: [UInt8] = []
        while out.count < count { out += Array((words.randomElement(using: &generator)! + " ").utf8) }
        return Array(out.prefix(count))
    }

    @Test func parallelTransfersMakeTheSameSnapshotAsOneAtATime() async throws {
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let shared = randomBytes(300_000, seed: 9)
        let files: [String: [UInt8]] = [
            "models/a.bin": randomBytes(3 << 20, seed: 1),
            "logs/train.log": text(2 << 20, seed: 2),
            "copies/one": shared, "copies/two": shared,  // the same chunks twice: uploaded once
            "empty": [],
            "small/x": Array("x\n".utf8),
        ].merging((0..<40).map { ("many/\($0)", randomBytes(1_000 + $0 * 37, seed: UInt64(100 + $0))) }) { $1 }
        let source = try tree("source", files)

        let first = try await repository(parallel: 4).create(source: source)
        #expect(first.files == files.count && first.bytes == Int64(files.values.reduce(0) { $0 + $1.count }))
        let stored = try await keys("chunks/")
        #expect(first.newChunks == stored.count, "each distinct chunk uploaded once: \(first.newChunks) of \(stored.count)")
        #expect(first.newChunks < first.chunks, "the copies share their chunks")
        #expect(try await keys("locks/").isEmpty, "the create lock is released")

        // One at a time: the same chunks, nothing new but the manifest.
        let second = try await repository(parallel: 1).create(source: source)
        #expect(second.newChunks == 0 && second.chunks == first.chunks)
        let manifests = (try await repository().manifest(first.snapshot), try await repository().manifest(second.snapshot))
        #expect(manifests.0.entries == manifests.1.entries, "the same entries, chunk for chunk, in the same order")

        for parallel in [1, 3] {
            let target = directory + "/restored-\(parallel)"
            let restored = try await repository(parallel: parallel).restore(first.snapshot, target: target)
            #expect(restored.files == files.count && restored.chunks == first.chunks)
            #expect(try contents(target) == files)
        }
    }

    @Test func pruneDeletesWhatThePolicyDropsAndCollectsWhatNoSnapshotNames() async throws {
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let repository = repository()
        var files: [String: [UInt8]] = ["model.bin": randomBytes(1 << 20, seed: 1), "log": text(1 << 20, seed: 2)]
        var ids: [String] = []
        for round in 0..<3 {
            files["step-\(round).pt"] = randomBytes(400_000, seed: UInt64(10 + round))
            files["model.bin"]! += randomBytes(100_000, seed: UInt64(20 + round))
            if round == 2 { files["step-0.pt"] = nil }
            ids.append(try await repository.create(source: try tree("source", files)).snapshot)
        }
        let before = try await keys("chunks/")
        let newest = try await referencedChunks(repository, ids[2])
        #expect(newest.isSubset(of: before) && newest.count < before.count)
        let sizes = Dictionary(uniqueKeysWithValues: try await store().list(prefix: "chunks/").map { ($0.key, $0.size) })
        let garbage = before.subtracting(newest)

        let dry = try await repository.prune(RetentionPolicy(keepLast: 1, keepDaily: 0), dryRun: true)
        #expect(dry.kept == [ids[2]] && dry.deleted == [ids[0], ids[1]] && dry.dryRun)
        #expect(dry.chunksDeleted == garbage.count && dry.bytesFreed == garbage.reduce(0) { $0 + sizes[$1]! })
        let afterDryRun = (try await repository.snapshots(), try await keys("chunks/"))
        #expect(afterDryRun.0 == ids && afterDryRun.1 == before, "a dry run deletes nothing")

        let pruned = try await repository.prune(RetentionPolicy(keepLast: 1, keepDaily: 0))
        #expect(pruned.kept == [ids[2]] && pruned.deleted == [ids[0], ids[1]] && pruned.collectionSkipped == nil)
        #expect(pruned.chunksDeleted == dry.chunksDeleted && pruned.bytesFreed == dry.bytesFreed)
        #expect(try await repository.snapshots() == [ids[2]])
        #expect(try await keys("chunks/") == newest, "exactly the chunks the kept snapshot names remain")
        #expect(try await keys("locks/").isEmpty)
        let target = directory + "/restored"
        _ = try await repository.restore(nil, target: target)
        #expect(try contents(target) == files)

        let again = try await repository.prune(RetentionPolicy(keepLast: 1, keepDaily: 0))
        #expect(again.deleted.isEmpty && again.chunksDeleted == 0, "a second prune finds nothing")
    }

    /// The race the locks exist for: a create lists the chunks (finding X), a prune deletes the only
    /// snapshot naming X, and X must survive until the create's manifest names it.
    @Test func aPruneBesideACreateCollectsNothingTheCreateReuses() async throws {
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let plain = repository()
        let d = ["data": randomBytes(1 << 20, seed: 1)]
        let e = ["data": randomBytes(1 << 20, seed: 2)]
        let s1 = try await plain.create(source: try tree("d", d)).snapshot
        let s2 = try await plain.create(source: try tree("e", e)).snapshot
        let x = try await referencedChunks(plain, s1)

        let listed = Gate(), proceed = Gate()
        let paused = repository(hooks: .init(createListedChunks: {
            await listed.open()
            await proceed.wait()
        }))
        let source = try tree("d-again", d)
        let create = Task { try await paused.create(source: source) }
        await listed.wait()
        // The create found X in the store and will not upload it again.
        let pruned = try await plain.prune(RetentionPolicy(keepLast: 1, keepDaily: 0))
        #expect(pruned.deleted == [s1] && pruned.kept == [s2])
        #expect(pruned.collectionSkipped?.contains("locks/create-") == true, "\(String(describing: pruned.collectionSkipped))")
        #expect(x.isSubset(of: try await keys("chunks/")), "X survived the prune")
        await proceed.open()
        let s3 = try await create.value
        #expect(s3.newChunks == 0, "the create reused X")
        let target = directory + "/restored"
        _ = try await plain.restore(s3.snapshot, target: target)
        #expect(try contents(target) == d)

        // With no create running, the next prune collects: E's chunks go, X stays (S3 names it).
        let next = try await plain.prune(RetentionPolicy(keepLast: 1, keepDaily: 0))
        #expect(next.deleted == [s2] && next.collectionSkipped == nil && next.chunksDeleted > 0)
        #expect(try await keys("chunks/") == x)
    }

    @Test func aCreateWaitsForARunningPrune() async throws {
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let plain = repository()
        let old = try await plain.create(source: try tree("old", ["data": randomBytes(600_000, seed: 3)])).snapshot
        _ = try await plain.create(source: try tree("new", ["data": randomBytes(600_000, seed: 4)]))

        let inPrune = Gate(), finishPrune = Gate()
        let pausedPrune = repository(hooks: .init(pruneDeletedManifests: {
            await inPrune.open()
            await finishPrune.wait()
        }))
        let prune = Task { try await pausedPrune.prune(RetentionPolicy(keepLast: 1, keepDaily: 0)) }
        await inPrune.wait()
        // The prune holds its lock (refreshed meanwhile): a create waits.
        let finished = Mutex(false)
        let source = try tree("old-again", ["data": randomBytes(600_000, seed: 3)])
        let create = Task {
            let summary = try await plain.create(source: source)
            finished.withLock { $0 = true }
            return summary
        }
        try await Task.sleep(for: .milliseconds(1_500))
        #expect(!finished.withLock { $0 }, "the create went ahead beside a live prune")
        await finishPrune.open()
        let pruned = try await prune.value
        #expect(pruned.deleted == [old] && pruned.collectionSkipped == nil)
        let made = try await create.value
        #expect(made.newChunks > 0, "the old snapshot's chunks were collected; the create uploaded them again")
        let target = directory + "/restored"
        _ = try await plain.restore(made.snapshot, target: target)
        #expect(try contents(target)["data"] == randomBytes(600_000, seed: 3))
    }

    /// A killed run's lock stops counting after the stale bound, and the next prune removes it.
    @Test func locksOfKilledRunsGoStale() async throws {
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let plain = repository(timing: quick)
        let s3 = store()
        _ = try await plain.create(source: try tree("a", ["data": randomBytes(300_000, seed: 5)]))
        _ = try await plain.create(source: try tree("b", ["data": randomBytes(300_000, seed: 6)]))
        let dead = "locks/create-\(SnapshotID.make(Date()))"
        try await s3.put(dead, Array(#"{"kind":"create"}"#.utf8))

        let fresh = try await plain.prune(RetentionPolicy(keepLast: 1, keepDaily: 0))
        #expect(fresh.collectionSkipped != nil && fresh.staleLocksRemoved == 0, "a fresh lock is honoured")
        try await Task.sleep(for: .milliseconds(3_200))  // past the bound, with a second for the store's clock grain
        let stale = try await plain.prune(RetentionPolicy(keepLast: 1, keepDaily: 0))
        #expect(stale.collectionSkipped == nil && stale.staleLocksRemoved == 1 && stale.chunksDeleted > 0)
        #expect(try await keys("locks/").isEmpty)

        // A killed prune's lock holds a create off until it is stale, no longer; the next prune removes it.
        try await s3.put("locks/prune-\(SnapshotID.make(Date()))", Array(#"{"kind":"prune"}"#.utf8))
        let started = ContinuousClock.now
        _ = try await plain.create(source: try tree("c", ["data": randomBytes(300_000, seed: 7)]))
        let waited = ContinuousClock.now - started
        #expect(waited > .milliseconds(1_900) && waited < .seconds(8), "waited \(waited)")
        let after = try await plain.prune(RetentionPolicy(keepLast: 1, keepDaily: 0))
        #expect(after.staleLocksRemoved == 1 && after.collectionSkipped == nil)
        #expect(try await keys("locks/").isEmpty)
    }

    /// A file that changes while it is read, every time, makes the snapshot fail: no manifest, its
    /// lock released; the retry (the file still again) reuses what the failed run uploaded.
    @Test func aCreateThatFailsPartWayLeavesNoManifest() async throws {
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let source = try tree("busy", ["a-first": randomBytes(2 << 20, seed: 8), "b-busy": randomBytes(1 << 20, seed: 9)])
        let reads = Mutex(0)
        // The workload appends to b-busy while each read of it is under way (after its last byte
        // was read, before the snapshot looks at it again): every one of the three tries sees a change.
        let busy = repository(hooks: .init(createReadFile: { relative in
            guard relative == "b-busy" else { return }
            reads.withLock { $0 += 1 }
            let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: source + "/b-busy"))
            try handle.seekToEnd()
            try handle.write(contentsOf: Data(randomBytes(1_000, seed: 77)))
            try handle.close()
        }))
        await #expect(throws: SnapshotError.changedWhileRead("b-busy")) { try await busy.create(source: source) }
        #expect(reads.withLock { $0 } == 3, "read three times, then given up")
        #expect(try await repository().snapshots().isEmpty, "no manifest")
        #expect(try await keys("locks/").isEmpty, "the lock is released")
        let uploaded = try await keys("chunks/")
        #expect(!uploaded.isEmpty, "the first file's chunks were uploaded before the failure")

        let retry = try await repository().create(source: source)
        #expect(retry.newChunks < retry.chunks, "the retry reuses the failed run's chunks")
        let target = directory + "/restored"
        _ = try await repository().restore(nil, target: target)
        #expect(try contents(target) == contents(source))
    }
}

/// Opened once; every waiter, before or after, goes on.
actor Gate {
    private var isOpen = false
    private var waiters: [CheckedContinuation<Void, Never>] = []

    func open() {
        isOpen = true
        for waiter in waiters { waiter.resume() }
        waiters = []
    }

    func wait() async {
        if isOpen { return }
        await withCheckedContinuation { waiters.append($0) }
    }
}
