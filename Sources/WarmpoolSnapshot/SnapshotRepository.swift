import Foundation
import WarmpoolModel
import Logging
import WarmpoolStorage

#if canImport(Glibc)
import Glibc
#endif

/// Snapshots of a directory tree in an S3-compatible store, under the client's prefix:
/// `chunks/<2 hex>/<id>` (sealed chunks, shared by every snapshot), `snapshots/<id>` (sealed
/// manifests) and `locks/` (see `prune`). Incremental by construction: a chunk already in the store
/// is never uploaded again.
///
/// Consistency: each file is read whole and its size and modification time checked before and
/// after; a file that changed while it was read is read again (three tries, then the snapshot
/// fails and leaves no manifest). So every file in a snapshot is a state it really had, but two
/// files may be from moments apart: the workload's checkpoints, written and renamed into place,
/// are what a snapshot keeps whole.
///
/// Memory: one window buffer (the largest chunk plus one read), and at most `parallel` chunks
/// between the reader and the store, each held as its plaintext until it is compressed and then
/// as its sealed object until the store has it; a restore holds at most `parallel` chunks ahead
/// of the one it writes.
public final class SnapshotRepository: Sendable {
    public struct CreateSummary: Sendable, Equatable {
        public var snapshot: String
        public var files: Int
        public var bytes: Int64
        public var chunks: Int
        public var newChunks: Int
        /// Every byte this snapshot added to the store: its new chunks and its manifest.
        public var uploadedBytes: Int64
    }

    public struct RestoreSummary: Sendable, Equatable {
        public var snapshot: String
        public var files: Int
        public var bytes: Int64
        public var chunks: Int
    }

    /// Test seams: where a test pauses a create or a prune to run the other against it.
    struct Hooks: Sendable {
        /// A create holds its lock and has listed the chunks the store holds; it uploads none yet.
        var createListedChunks: @Sendable () async throws -> Void = {}
        /// A create has read a file to its end and is about to check whether it changed meanwhile.
        var createReadFile: @Sendable (_ relative: String) async throws -> Void = { _ in }
        /// A prune holds its lock and has deleted the manifests it does not keep.
        var pruneDeletedManifests: @Sendable () async throws -> Void = {}
    }

    let store: S3Client
    let sealer: ChunkSealer
    let chunker: ContentDefinedChunker
    let logger: Logger
    /// Chunk uploads (a create) or downloads (a restore) in flight at once.
    public let parallel: Int
    let lockTiming: LockTiming
    let codecs: CodecPool
    let hooks: Hooks

    public convenience init(store: S3Client, sealer: ChunkSealer, chunker: ContentDefinedChunker = ContentDefinedChunker(),
                            parallel: Int = 4, lockTiming: LockTiming = LockTiming(), logger: Logger)
    {
        self.init(store: store, sealer: sealer, chunker: chunker, parallel: parallel, lockTiming: lockTiming, logger: logger, hooks: Hooks())
    }

    init(store: S3Client, sealer: ChunkSealer, chunker: ContentDefinedChunker = ContentDefinedChunker(), parallel: Int = 4,
         lockTiming: LockTiming = LockTiming(), logger: Logger, hooks: Hooks)
    {
        precondition(parallel >= 1, "at least one transfer in flight")
        self.store = store
        self.sealer = sealer
        self.chunker = chunker
        self.parallel = parallel
        self.lockTiming = lockTiming
        self.logger = logger
        self.hooks = hooks
        codecs = CodecPool(level: sealer.compressionLevel)
    }

    static func chunkKey(_ id: String) -> String { "chunks/\(id.prefix(2))/\(id)" }

    /// Snapshot ids, oldest first (the ids sort by time).
    public func snapshots() async throws -> [String] {
        try await store.list(prefix: "snapshots/").map { String($0.key.dropFirst("snapshots/".count)) }.sorted()
    }

    public func manifest(_ id: String) async throws -> SnapshotManifest {
        let object: [UInt8]
        do {
            object = try await store.get("snapshots/\(id)")
        } catch S3Error.notFound {
            throw SnapshotError.noSnapshot("no snapshot \(id)")
        }
        return try SnapshotManifest.decoded(try sealer.openDocument(object, name: "snapshots/\(id)", maximumSize: 256 << 20))
    }

    // MARK: Create

    /// Makes a snapshot of `source`. Holds a create lock from before it looks at the store until
    /// its manifest is written (see `prune`); a create that fails or is killed part-way leaves no
    /// manifest, only chunks that the next create reuses and a prune collects.
    public func create(source: String, now: Date = Date()) async throws -> CreateSummary {
        let id = SnapshotID.make(now)
        let lock = try await lockForCreate(id)
        do {
            let summary = try await create(id: id, source: source, now: now, lock: lock)
            await lock.release()
            return summary
        } catch {
            await lock.release()
            throw error
        }
    }

    private func create(id: String, source: String, now: Date, lock: HeldLock) async throws -> CreateSummary {
        let known = KnownChunks(try await store.list(prefix: "chunks/").map { String($0.key.split(separator: "/").last ?? "") })
        try await hooks.createListedChunks()
        var entries: [SnapshotManifest.Entry] = []
        var summary = CreateSummary(snapshot: id, files: 0, bytes: 0, chunks: 0, newChunks: 0, uploadedBytes: 0)
        let reader = ChunkReader(chunker: chunker)
        try await withThrowingTaskGroup(of: ChunkOutcome.self) { group in
            var pipeline = ChunkPipeline(limit: parallel)
            var fileChunks: [(entry: Int, slots: Range<Int>)] = []
            for relative in try Self.walk(source) {
                let path = source + "/" + relative
                var info = stat()
                guard lstat(path, &info) == 0 else { continue }  // gone since the walk saw it
                let mode = UInt32(info.st_mode) & 0o7777
                switch info.st_mode & S_IFMT {
                case S_IFDIR:
                    entries.append(.init(path: relative, kind: .directory, mode: mode, modified: Int64(info.st_mtim.tv_sec), size: 0))
                case S_IFLNK:
                    let target = (try? FileManager.default.destinationOfSymbolicLink(atPath: path)) ?? ""
                    entries.append(.init(path: relative, kind: .symlink, mode: mode, modified: Int64(info.st_mtim.tv_sec), size: 0, target: target))
                case S_IFREG:
                    let (entry, slots) = try await snapshotFile(path, relative: relative, reader: reader, known: known, group: &group,
                                                                pipeline: &pipeline)
                    fileChunks.append((entries.count, slots))
                    entries.append(.init(path: relative, kind: .file, mode: mode, modified: entry.modified, size: entry.size))
                    summary.files += 1
                    summary.bytes += entry.size
                default:
                    logger.notice("skipped: not a file, directory or symlink", metadata: ["snapshot.path": "\(relative)"])
                }
            }
            while let outcome = try await group.next() { pipeline.record(outcome) }
            for (index, slots) in fileChunks { entries[index].chunks = Array(pipeline.ids[slots]) }
            summary.chunks = fileChunks.reduce(0) { $0 + $1.slots.count }
            summary.newChunks = pipeline.newChunks
            summary.uploadedBytes = pipeline.uploadedBytes
        }
        let manifest = SnapshotManifest(id: id, createdAt: now, entries: entries, maximumChunk: chunker.maximum)
        let sealed = try sealer.sealDocument(try manifest.encoded(), name: "snapshots/\(id)")
        // A prune may already take our lock for stale (this process stood still, or could not
        // refresh it): the chunks this snapshot found in the store may be gone. No manifest, then.
        guard lock.isSafe else { throw SnapshotError.lockExpired(lock.key) }
        // Last: the snapshot exists from here on, complete.
        try await store.put("snapshots/\(id)", sealed)
        summary.uploadedBytes += Int64(sealed.count)
        logger.info("snapshot made", metadata: [
            "snapshot.id": "\(id)", "snapshot.files": "\(summary.files)", "snapshot.bytes": "\(summary.bytes)",
            "snapshot.new_chunks": "\(summary.newChunks)", "snapshot.uploaded_bytes": "\(summary.uploadedBytes)",
        ])
        return summary
    }

    /// One file's chunks, each handed to a task that names it and, when the store lacks it, seals
    /// and uploads it; read again when the file changed meanwhile. Returns the file's size and
    /// time, and the pipeline slots its chunk ids will be in.
    private func snapshotFile(_ path: String, relative: String, reader: ChunkReader, known: KnownChunks,
                              group: inout ThrowingTaskGroup<ChunkOutcome, any Error>, pipeline: inout ChunkPipeline) async throws
        -> (entry: (modified: Int64, size: Int64), slots: Range<Int>)
    {
        for _ in 0..<3 {
            let fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC)
            guard fd >= 0 else { throw SnapshotError.io("cannot open \(relative): \(String(cString: strerror(errno)))") }
            defer { close(fd) }
            var before = stat()
            fstat(fd, &before)
            reader.reset(fd)
            let first = pipeline.ids.count
            var size: Int64 = 0
            while true {
                let chunk: [UInt8]?
                do {
                    chunk = try reader.next()
                } catch {
                    throw SnapshotError.io("cannot read \(relative): \(String(cString: strerror(error.errno)))")
                }
                guard let chunk else { break }
                size += Int64(chunk.count)
                if pipeline.isFull, let outcome = try await group.next() { pipeline.record(outcome) }
                let slot = pipeline.reserve()
                let box = PlaintextBox(chunk)
                group.addTask { [sealer, store, codecs] in
                    try await Self.storeChunk(box, slot: slot, known: known, sealer: sealer, codecs: codecs, store: store)
                }
            }
            try await hooks.createReadFile(relative)
            var after = stat()
            fstat(fd, &after)
            if after.st_size == before.st_size, after.st_mtim.tv_sec == before.st_mtim.tv_sec,
                after.st_mtim.tv_nsec == before.st_mtim.tv_nsec, Int64(after.st_size) == size
            {
                return ((Int64(after.st_mtim.tv_sec), size), first..<pipeline.ids.count)
            }
            // The chunks of this read stay in the store unnamed: a prune collects those no snapshot names.
            logger.notice("file changed while it was read; reading it again", metadata: ["snapshot.path": "\(relative)"])
        }
        throw SnapshotError.changedWhileRead(relative)
    }

    /// Names a chunk and, unless the store has it or another task is uploading it, seals and
    /// uploads it.
    private static func storeChunk(_ box: PlaintextBox, slot: Int, known: KnownChunks, sealer: ChunkSealer, codecs: CodecPool,
                                   store: S3Client) async throws -> ChunkOutcome
    {
        switch try seal(box, known: known, sealer: sealer, codecs: codecs) {
        case .known(let id):
            return ChunkOutcome(slot: slot, id: id, uploadedBytes: nil)
        case .new(let id, let object):
            try await store.put(chunkKey(id), data: object)
            return ChunkOutcome(slot: slot, id: id, uploadedBytes: Int64(object.count))
        }
    }

    private enum Sealed {
        case known(String)
        case new(String, Data)
    }

    /// The synchronous part, in a function of its own so that the plaintext is released before
    /// the upload: only the sealed object waits for the store.
    private static func seal(_ box: PlaintextBox, known: KnownChunks, sealer: ChunkSealer, codecs: CodecPool) throws -> Sealed {
        let id = box.withBytes { sealer.id(of: $0) }
        guard known.claim(id) else {
            box.release()
            return .known(id)
        }
        return .new(id, try codecs.with { codec in try sealer.seal(box, id: id, codec: codec) })
    }

    // MARK: Restore

    /// Restores a snapshot (the newest when nil) into `target`, verifying every chunk (authentic,
    /// and the content its id names) before a byte of it is written. Files are written beside
    /// their place and renamed into it once whole. Up to `parallel` chunks are fetched and opened
    /// ahead of the one being written, across file boundaries (small files do not wait on each other).
    public func restore(_ snapshot: String?, target: String) async throws -> RestoreSummary {
        var chosen = snapshot
        if chosen == nil { chosen = try await snapshots().last }
        guard let id = chosen else { throw SnapshotError.noSnapshot("the store holds none") }
        let manifest = try await manifest(id)
        var summary = RestoreSummary(snapshot: id, files: 0, bytes: 0, chunks: 0)
        try FileManager.default.createDirectory(atPath: target, withIntermediateDirectories: true)
        for entry in manifest.entries where entry.kind == .directory {
            try FileManager.default.createDirectory(atPath: target + "/" + entry.path, withIntermediateDirectories: true)
        }
        for entry in manifest.entries where entry.kind == .symlink {
            let path = target + "/" + entry.path
            try? FileManager.default.removeItem(atPath: path)
            try FileManager.default.createSymbolicLink(atPath: path, withDestinationPath: entry.target ?? "")
        }
        let files = manifest.entries.filter { $0.kind == .file }
        var fetcher = ChunkFetcher(ids: files.flatMap { $0.chunks ?? [] }, limit: parallel) { [store, sealer, codecs] id in
            let object: Data
            do {
                object = try await store.getData(Self.chunkKey(id))
            } catch S3Error.notFound {
                throw SnapshotError.io("chunk \(id) is missing from the store")
            }
            return try codecs.with { codec in try sealer.open(object, id: id, maximumSize: manifest.maximumChunk, codec: codec) }
        }
        defer { fetcher.cancel() }
        for entry in files {
            try await restoreFile(entry, to: target + "/" + entry.path, fetcher: &fetcher, summary: &summary)
        }
        // Directories last: writing into them changed their times and a read-only one refused writes.
        for entry in manifest.entries.reversed() where entry.kind == .directory {
            let path = target + "/" + entry.path
            chmod(path, mode_t(entry.mode))
            Self.setModified(path, entry.modified)
        }
        return summary
    }

    private func restoreFile(_ entry: SnapshotManifest.Entry, to path: String, fetcher: inout ChunkFetcher,
                             summary: inout RestoreSummary) async throws
    {
        let temporary = path + ".warmpool-restore"
        let fd = open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw SnapshotError.io("cannot create \(entry.path): \(String(cString: strerror(errno)))") }
        var written: Int64 = 0
        do {
            for _ in entry.chunks ?? [] {
                let plaintext = try await fetcher.next()
                try Self.writeAll(fd, plaintext, path: entry.path)
                written += Int64(plaintext.count)
                summary.chunks += 1
            }
            guard written == entry.size else { throw SnapshotError.io("\(entry.path): restored \(written) bytes, the manifest says \(entry.size)") }
            guard fsync(fd) == 0 else { throw SnapshotError.io("cannot fsync \(entry.path)") }
            close(fd)
        } catch {
            close(fd)
            unlink(temporary)
            throw error
        }
        chmod(temporary, mode_t(entry.mode))
        Self.setModified(temporary, entry.modified)
        guard rename(temporary, path) == 0 else { throw SnapshotError.io("cannot rename \(entry.path) into place") }
        summary.files += 1
        summary.bytes += written
    }

    // MARK: Helpers

    static func snapshotID(_ date: Date) -> String { SnapshotID.make(date) }

    /// Every entry under `root`, relative, parents before children, in name order; links are
    /// listed, never followed.
    static func walk(_ root: String) throws -> [String] {
        var found: [String] = []
        func visit(_ relative: String) throws {
            let directory = relative.isEmpty ? root : root + "/" + relative
            for name in try FileManager.default.contentsOfDirectory(atPath: directory).sorted() {
                let child = relative.isEmpty ? name : relative + "/" + name
                found.append(child)
                var info = stat()
                if lstat(root + "/" + child, &info) == 0, info.st_mode & S_IFMT == S_IFDIR { try visit(child) }
            }
        }
        try visit("")
        return found
    }

    static func writeAll(_ fd: Int32, _ bytes: [UInt8], path: String) throws {
        var offset = 0
        while offset < bytes.count {
            let count = bytes.withUnsafeBytes { write(fd, $0.baseAddress! + offset, $0.count - offset) }
            if count < 0 {
                if errno == EINTR { continue }
                throw SnapshotError.io("cannot write \(path): \(String(cString: strerror(errno)))")
            }
            offset += count
        }
    }

    static func setModified(_ path: String, _ seconds: Int64) {
        var times = [timespec(tv_sec: Int(seconds), tv_nsec: 0), timespec(tv_sec: Int(seconds), tv_nsec: 0)]
        utimensat(AT_FDCWD, path, &times, AT_SYMLINK_NOFOLLOW)
    }
}
