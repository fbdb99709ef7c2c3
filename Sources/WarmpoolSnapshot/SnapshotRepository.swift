import Foundation
import Logging
import WarmpoolStorage

#if canImport(Glibc)
import Glibc
#endif

/// Snapshots of a directory tree in an S3-compatible store, under the client's prefix:
/// `chunks/<2 hex>/<id>` (sealed chunks, shared by every snapshot) and `snapshots/<id>` (sealed
/// manifests). Incremental by construction: a chunk already in the store is never uploaded again.
///
/// Consistency: each file is read whole and its size and modification time checked before and
/// after; a file that changed while it was read is read again (three tries, then the snapshot
/// fails and leaves no manifest). So every file in a snapshot is a state it really had, but two
/// files may be from moments apart: the workload's checkpoints, written and renamed into place,
/// are what a snapshot keeps whole.
public final class SnapshotRepository: Sendable {
    public struct CreateSummary: Sendable, Equatable {
        public var snapshot: String
        public var files: Int
        public var bytes: Int64
        public var chunks: Int
        public var newChunks: Int
        public var uploadedBytes: Int64
    }

    public struct RestoreSummary: Sendable, Equatable {
        public var snapshot: String
        public var files: Int
        public var bytes: Int64
        public var chunks: Int
    }

    let store: S3Client
    let sealer: ChunkSealer
    let chunker: ContentDefinedChunker
    let logger: Logger

    public init(store: S3Client, sealer: ChunkSealer, chunker: ContentDefinedChunker = ContentDefinedChunker(), logger: Logger) {
        self.store = store
        self.sealer = sealer
        self.chunker = chunker
        self.logger = logger
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

    public func create(source: String, now: Date = Date()) async throws -> CreateSummary {
        var known = Set(try await store.list(prefix: "chunks/").map { String($0.key.split(separator: "/").last ?? "") })
        let id = Self.snapshotID(now)
        var entries: [SnapshotManifest.Entry] = []
        var summary = CreateSummary(snapshot: id, files: 0, bytes: 0, chunks: 0, newChunks: 0, uploadedBytes: 0)
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
                var entry = try await snapshotFile(path, relative: relative, known: &known, summary: &summary)
                entry.mode = mode
                entries.append(entry)
                summary.files += 1
                summary.bytes += entry.size
            default:
                logger.notice("skipped: not a file, directory or symlink", metadata: ["snapshot.path": "\(relative)"])
            }
        }
        let manifest = SnapshotManifest(id: id, createdAt: now, entries: entries, maximumChunk: chunker.maximum)
        // Last: the snapshot exists from here on, complete.
        try await store.put("snapshots/\(id)", try sealer.sealDocument(try manifest.encoded(), name: "snapshots/\(id)"))
        logger.info("snapshot made", metadata: [
            "snapshot.id": "\(id)", "snapshot.files": "\(summary.files)", "snapshot.bytes": "\(summary.bytes)",
            "snapshot.new_chunks": "\(summary.newChunks)", "snapshot.uploaded_bytes": "\(summary.uploadedBytes)",
        ])
        return summary
    }

    /// One file's chunks, uploading the new ones; read again when it changed meanwhile.
    private func snapshotFile(_ path: String, relative: String, known: inout Set<String>, summary: inout CreateSummary) async throws
        -> SnapshotManifest.Entry
    {
        for _ in 0..<3 {
            let fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC)
            guard fd >= 0 else { throw SnapshotError.io("cannot open \(relative): \(String(cString: strerror(errno)))") }
            defer { close(fd) }
            var before = stat()
            fstat(fd, &before)
            var ids: [String] = []
            var size: Int64 = 0
            var buffer: [UInt8] = []
            buffer.reserveCapacity(2 * chunker.maximum)
            var ended = false
            var scratch = [UInt8](repeating: 0, count: chunker.maximum)
            while !ended || !buffer.isEmpty {
                while !ended && buffer.count < chunker.maximum {
                    let count = scratch.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
                    if count < 0 {
                        if errno == EINTR { continue }
                        throw SnapshotError.io("cannot read \(relative): \(String(cString: strerror(errno)))")
                    }
                    if count == 0 { ended = true } else { buffer += scratch[0..<count] }
                }
                guard !buffer.isEmpty else { break }
                let length = buffer.withUnsafeBytes { chunker.boundary(in: UnsafeRawBufferPointer(rebasing: $0.prefix(chunker.maximum))) }
                let chunk = Array(buffer[0..<length])
                buffer.removeFirst(length)
                size += Int64(length)
                let id = sealer.id(of: chunk)
                ids.append(id)
                summary.chunks += 1
                if !known.contains(id) {
                    let sealed = try sealer.seal(chunk)
                    try await store.put(Self.chunkKey(id), sealed.object)
                    known.insert(id)
                    summary.newChunks += 1
                    summary.uploadedBytes += Int64(sealed.object.count)
                }
            }
            var after = stat()
            fstat(fd, &after)
            if after.st_size == before.st_size, after.st_mtim.tv_sec == before.st_mtim.tv_sec,
                after.st_mtim.tv_nsec == before.st_mtim.tv_nsec, Int64(after.st_size) == size
            {
                return .init(path: relative, kind: .file, mode: 0, modified: Int64(after.st_mtim.tv_sec), size: size, chunks: ids)
            }
            logger.notice("file changed while it was read; reading it again", metadata: ["snapshot.path": "\(relative)"])
        }
        throw SnapshotError.changedWhileRead(relative)
    }

    // MARK: Restore

    /// Restores a snapshot (the newest when nil) into `target`, verifying every chunk (authentic,
    /// and the content its id names) before a byte of it is written. Files are written beside
    /// their place and renamed into it once whole.
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
        for entry in manifest.entries {
            let path = target + "/" + entry.path
            switch entry.kind {
            case .directory:
                continue
            case .symlink:
                try? FileManager.default.removeItem(atPath: path)
                try FileManager.default.createSymbolicLink(atPath: path, withDestinationPath: entry.target ?? "")
            case .file:
                try await restoreFile(entry, to: path, maximumChunk: manifest.maximumChunk, summary: &summary)
            }
        }
        // Directories last: writing into them changed their times and a read-only one refused writes.
        for entry in manifest.entries.reversed() where entry.kind == .directory {
            let path = target + "/" + entry.path
            chmod(path, mode_t(entry.mode))
            Self.setModified(path, entry.modified)
        }
        return summary
    }

    private func restoreFile(_ entry: SnapshotManifest.Entry, to path: String, maximumChunk: Int, summary: inout RestoreSummary) async throws {
        let temporary = path + ".warmpool-restore"
        let fd = open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw SnapshotError.io("cannot create \(entry.path): \(String(cString: strerror(errno)))") }
        var written: Int64 = 0
        do {
            for id in entry.chunks ?? [] {
                let object: [UInt8]
                do {
                    object = try await store.get(Self.chunkKey(id))
                } catch S3Error.notFound {
                    throw SnapshotError.io("chunk \(id) of \(entry.path) is missing from the store")
                }
                let plaintext = try sealer.open(object, id: id, maximumSize: maximumChunk)
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

    static func snapshotID(_ date: Date) -> String {
        var seconds = time_t(date.timeIntervalSince1970.rounded(.down))
        var parts = tm()
        gmtime_r(&seconds, &parts)
        func two(_ value: Int32) -> String { value < 10 ? "0\(value)" : "\(value)" }
        // Milliseconds: ids sort by time, and two snapshots within a second (a test, an operator's
        // `snapshot` right after a scheduled one) still sort in the order they were made.
        let milliseconds = Int(date.timeIntervalSince1970 * 1000) % 1000
        let fraction = String(milliseconds).count < 3 ? String(repeating: "0", count: 3 - String(milliseconds).count) + String(milliseconds) : String(milliseconds)
        let stamp = "\(parts.tm_year + 1900)\(two(parts.tm_mon + 1))\(two(parts.tm_mday))T\(two(parts.tm_hour))\(two(parts.tm_min))\(two(parts.tm_sec)).\(fraction)Z"
        return stamp + "-" + String(UInt32.random(in: 0...UInt32.max), radix: 16)
    }

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
