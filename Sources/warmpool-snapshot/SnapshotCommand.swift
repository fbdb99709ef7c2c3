import ArgumentParser
import Foundation
import Logging
import NIOPosix
import WarmpoolHTTP
import WarmpoolModel
import WarmpoolSnapshot
import WarmpoolStorage

/// Snapshots of /data to S3-compatible storage: a process of its own, never the heartbeat's (the
/// agent links no libcurl). Prints one JSON object per command.
@main
struct SnapshotCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "warmpool-snapshot",
        abstract: "Encrypted, incremental, content-defined snapshots of a directory to S3-compatible storage.",
        version: WarmpoolVersion.current,
        subcommands: [Create.self, Restore.self, List.self, Prune.self])
}

struct StoreOptions: ParsableArguments {
    private static let environment = ProcessInfo.processInfo.environment

    @Option(help: "The store's endpoint, scheme://host[:port]. Env: WARMPOOL_S3_ENDPOINT.")
    var endpoint: String = environment["WARMPOOL_S3_ENDPOINT"] ?? ""

    @Option(help: "Env: WARMPOOL_S3_REGION.")
    var region: String = environment["WARMPOOL_S3_REGION"] ?? "us-east-1"

    @Option(help: "Env: WARMPOOL_S3_BUCKET.")
    var bucket: String = environment["WARMPOOL_S3_BUCKET"] ?? ""

    @Option(help: "Every key under this prefix, e.g. warmpool/pool-12/. Env: WARMPOOL_S3_PREFIX.")
    var prefix: String = environment["WARMPOOL_S3_PREFIX"] ?? ""

    @Option(help: "Env: WARMPOOL_S3_ACCESS_KEY_ID.")
    var accessKeyId: String = environment["WARMPOOL_S3_ACCESS_KEY_ID"] ?? ""

    @Option(help: "File holding the secret access key. Env: WARMPOOL_S3_SECRET_FILE, or the secret in WARMPOOL_S3_SECRET_ACCESS_KEY.")
    var secretFile: String?

    @Option(help: "File holding the snapshot key: 64 hex characters (32 bytes). Every chunk and manifest is sealed under keys derived from it; without it nothing can be restored. Env: WARMPOOL_SNAPSHOT_KEY_FILE.")
    var keyFile: String?

    @Flag(help: "bucket.host/key addressing instead of host/bucket/key.")
    var virtualHost = false

    @Option(help: "trace, debug, info, notice, warning, error or critical (logs go to stderr).")
    var logLevel: String = "warning"

    @Option(help: "Chunk transfers in flight at once (uploads, downloads, deletes); each holds one chunk (at most 4 MiB) in memory.")
    var parallel: Int = 4

    func validate() throws {
        guard (1...64).contains(parallel) else { throw ValidationError("--parallel must be 1 to 64") }
    }

    /// Runs `body` with the repository these options name, over a thread pool of its own that is
    /// shut down when `body` returns or throws.
    func withRepository<T>(_ body: (SnapshotRepository) async throws -> T) async throws -> T {
        // A transfer blocks a pool thread for its duration: one thread per transfer in flight (the
        // shared pool has one per core), and one kept-alive connection each.
        let threads = NIOThreadPool(numberOfThreads: parallel)
        threads.start()
        do {
            let result = try await body(try repository(threads: threads))
            try? await threads.shutdownGracefully()
            return result
        } catch {
            try? await threads.shutdownGracefully()
            throw error
        }
    }

    private func repository(threads: NIOThreadPool) throws -> SnapshotRepository {
        guard let level = Logger.Level(rawValue: logLevel) else { throw ValidationError("unknown --log-level \(logLevel)") }
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        guard !endpoint.isEmpty, !bucket.isEmpty, !accessKeyId.isEmpty else {
            throw ValidationError("--endpoint, --bucket and --access-key-id are required (or their WARMPOOL_S3_* variables)")
        }
        var secret = Self.environment["WARMPOOL_S3_SECRET_ACCESS_KEY"]
        if let path = secretFile ?? Self.environment["WARMPOOL_S3_SECRET_FILE"] {
            guard let text = try? String(contentsOfFile: path, encoding: .utf8) else { throw ValidationError("cannot read \(path)") }
            secret = text.trimmingCharacters(in: .whitespacesAndNewlines)
        }
        guard let secret, !secret.isEmpty else { throw ValidationError("--secret-file (or WARMPOOL_S3_SECRET_ACCESS_KEY) is required") }
        guard let keyPath = keyFile ?? Self.environment["WARMPOOL_SNAPSHOT_KEY_FILE"],
            let keyText = try? String(contentsOfFile: keyPath, encoding: .utf8)
        else { throw ValidationError("--key-file (or WARMPOOL_SNAPSHOT_KEY_FILE) must name a readable file") }
        guard let key = ChunkSealer.snapshotKey(hex: keyText.trimmingCharacters(in: .whitespacesAndNewlines)) else {
            throw ValidationError("the snapshot key must be 64 hex characters")
        }
        let store = S3Client(
            configuration: .init(endpoint: endpoint, region: region, bucket: bucket, prefix: prefix,
                                 credentials: S3Credentials(accessKeyID: accessKeyId, secretAccessKey: secret),
                                 virtualHostAddressing: virtualHost),
            http: HTTPClient(threadPool: threads, maximumIdleHandles: parallel), logger: Logger(label: "warmpool.snapshot.s3"))
        return SnapshotRepository(store: store, sealer: ChunkSealer(snapshotKey: key), parallel: parallel,
                                  logger: Logger(label: "warmpool.snapshot"))
    }
}

/// `--keep-last` and `--keep-daily`: a retention policy, or none when neither is given.
struct RetentionOptions: ParsableArguments {
    @Option(help: "Keep the newest N snapshots (at least 1; 1 when only --keep-daily is given).")
    var keepLast: Int?

    @Option(help: "Keep the newest snapshot of each of the last D UTC days (today included).")
    var keepDaily: Int?

    func validate() throws {
        if let keepLast, keepLast < 1 { throw ValidationError("--keep-last must be at least 1: a prune keeps the newest snapshot") }
        if let keepDaily, keepDaily < 0 { throw ValidationError("--keep-daily must be 0 or more") }
    }

    var policy: RetentionPolicy? {
        guard keepLast != nil || keepDaily != nil else { return nil }
        return RetentionPolicy(keepLast: keepLast ?? 1, keepDaily: keepDaily ?? 0)
    }
}

extension SnapshotRepository.PruneSummary {
    var json: [String: Any] {
        var object: [String: Any] = [
            "kept": kept, "deleted": deleted, "chunks_deleted": chunksDeleted, "bytes_freed": bytesFreed, "dry_run": dryRun,
            "stale_locks_removed": staleLocksRemoved,
        ]
        if let collectionSkipped { object["collection_skipped"] = collectionSkipped }
        return object
    }
}

/// Runs a command; a failure is also printed as `{"error": ...}` on stdout, where the agent reads
/// the outcome (the exit status says that it failed, this says why).
func reportingFailure(_ body: () async throws -> Void) async throws {
    do {
        try await body()
    } catch {
        emit(["error": "\(error)"])
        throw error
    }
}

/// glibc's malloc, set for a process that passes megabyte buffers between threads (a chunk is read
/// on one, sealed on another and copied for curl on a third). By default every thread gets an
/// arena of its own, and blocks as large as the largest one ever freed come from the arenas: each
/// arena keeps the most it ever held, and a snapshot of 2 GiB measured 90 MiB RSS for about 35 MiB
/// in use. Two arenas, always. For `create` (`mapLargeBlocks`), blocks over 128 KiB are also mapped
/// and unmapped one by one, so what is resident follows what is in use: 61–63 MiB peak at
/// --parallel 4; the price is the page faults of fresh mappings, about 2 s of system CPU per GiB,
/// which on this machine the S3 server's share of the CPU hides. A restore (a new host, before its
/// workload starts) keeps glibc's reuse of freed blocks: two arenas alone bring it to about 55 MiB.
/// Looked up at run time: Swift's Glibc module does not import `<malloc.h>`; elsewhere, a no-op.
enum MallocTuning {
    static func apply(mapLargeBlocks: Bool) {
        #if os(Linux)
        guard let symbol = dlsym(nil, "mallopt") else { return }
        let mallopt = unsafeBitCast(symbol, to: (@convention(c) (Int32, Int32) -> Int32).self)
        // <malloc.h>: M_ARENA_MAX is -8, M_MMAP_THRESHOLD -3 (setting it also stops glibc raising it).
        _ = mallopt(-8, 2)
        if mapLargeBlocks { _ = mallopt(-3, 128 << 10) }
        #endif
    }
}

func emit(_ object: [String: Any]) {
    let data = (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])) ?? Data("{}".utf8)
    print(String(decoding: data, as: UTF8.self))
}

struct Create: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Snapshot a directory; upload only the chunks the store lacks; the manifest last.")

    @OptionGroup var store: StoreOptions

    @Option(help: "The directory to snapshot.")
    var source: String = "/data"

    @OptionGroup(title: "Retention: with either, the snapshot is followed by a prune (see `prune`)")
    var retention: RetentionOptions

    func run() async throws {
        try await reportingFailure {
            let started = Date()
            MallocTuning.apply(mapLargeBlocks: true)
            let object = try await store.withRepository { repository in
                let summary = try await repository.create(source: source)
                var object: [String: Any] = [
                    "snapshot": summary.snapshot, "files": summary.files, "bytes": summary.bytes, "chunks": summary.chunks,
                    "new_chunks": summary.newChunks, "uploaded_bytes": summary.uploadedBytes,
                ]
                object["seconds"] = (Date().timeIntervalSince(started) * 1000).rounded() / 1000
                if let policy = retention.policy {
                    // The snapshot exists whatever the prune does: its failure is reported, not the
                    // run's (exit 0), and the next run's prune does the work.
                    do {
                        object["prune"] = try await repository.prune(policy).json
                    } catch {
                        object["prune"] = ["error": "\(error)"]
                    }
                    object["seconds_with_prune"] = (Date().timeIntervalSince(started) * 1000).rounded() / 1000
                }
                return object
            }
            emit(object)
        }
    }
}

struct Prune: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Delete the snapshots a retention policy does not keep, then the chunks no kept snapshot names.",
        discussion: """
            Keeps the newest --keep-last snapshots and the newest of each of the last --keep-daily UTC days; \
            a snapshot either rule keeps is kept. Safe beside a running `create`: while one holds its lock, \
            manifests are deleted but no chunk is collected (the next prune does it).
            """)

    @OptionGroup var store: StoreOptions
    @OptionGroup var retention: RetentionOptions

    @Flag(help: "Print what would be deleted; delete nothing.")
    var dryRun = false

    func validate() throws {
        guard retention.policy != nil else { throw ValidationError("give --keep-last, --keep-daily or both") }
    }

    func run() async throws {
        try await reportingFailure {
            let started = Date()
            guard let policy = retention.policy else { return }
            var object = try await store.withRepository { try await $0.prune(policy, dryRun: dryRun) }.json
            object["seconds"] = (Date().timeIntervalSince(started) * 1000).rounded() / 1000
            emit(object)
        }
    }
}

struct Restore: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Restore a snapshot (the newest by default), every chunk verified before it is written.")

    @OptionGroup var store: StoreOptions

    @Option(help: "Where to restore to.")
    var target: String = "/data"

    @Option(help: "The snapshot id (see `list`); the newest when left out.")
    var snapshot: String?

    func run() async throws {
        try await reportingFailure {
            let started = Date()
            MallocTuning.apply(mapLargeBlocks: false)
            let summary = try await store.withRepository { try await $0.restore(snapshot, target: target) }
            emit([
                "snapshot": summary.snapshot, "files": summary.files, "bytes": summary.bytes, "chunks": summary.chunks,
                "seconds": (Date().timeIntervalSince(started) * 1000).rounded() / 1000,
            ])
        }
    }
}

struct List: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "The snapshots in the store, oldest first.")

    @OptionGroup var store: StoreOptions

    func run() async throws {
        emit(["snapshots": try await store.withRepository { try await $0.snapshots() }])
    }
}
