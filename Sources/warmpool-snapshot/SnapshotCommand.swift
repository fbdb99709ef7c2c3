import ArgumentParser
import Foundation
import Logging
import WarmpoolHTTP
import WarmpoolSnapshot
import WarmpoolStorage

/// Snapshots of /data to S3-compatible storage: a process of its own, never the heartbeat's (the
/// agent links no libcurl). Prints one JSON object per command.
@main
struct SnapshotCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "warmpool-snapshot",
        abstract: "Encrypted, incremental, content-defined snapshots of a directory to S3-compatible storage.",
        subcommands: [Create.self, Restore.self, List.self])
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

    func repository() throws -> SnapshotRepository {
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
            http: HTTPClient(), logger: Logger(label: "warmpool.snapshot.s3"))
        return SnapshotRepository(store: store, sealer: ChunkSealer(snapshotKey: key), logger: Logger(label: "warmpool.snapshot"))
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

    func run() async throws {
        let started = Date()
        let summary = try await store.repository().create(source: source)
        emit([
            "snapshot": summary.snapshot, "files": summary.files, "bytes": summary.bytes, "chunks": summary.chunks,
            "new_chunks": summary.newChunks, "uploaded_bytes": summary.uploadedBytes,
            "seconds": (Date().timeIntervalSince(started) * 1000).rounded() / 1000,
        ])
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
        let started = Date()
        let summary = try await store.repository().restore(snapshot, target: target)
        emit([
            "snapshot": summary.snapshot, "files": summary.files, "bytes": summary.bytes, "chunks": summary.chunks,
            "seconds": (Date().timeIntervalSince(started) * 1000).rounded() / 1000,
        ])
    }
}

struct List: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "The snapshots in the store, oldest first.")

    @OptionGroup var store: StoreOptions

    func run() async throws {
        emit(["snapshots": try await store.repository().snapshots()])
    }
}
