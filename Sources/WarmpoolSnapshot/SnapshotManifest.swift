import Foundation

/// What one snapshot holds: every entry of the tree, each file as the ids of its chunks in order.
/// Stored sealed (it names files) as `snapshots/<id>`, written after every chunk it names: a
/// snapshot without its manifest does not exist, and one with it is complete.
public struct SnapshotManifest: Codable, Equatable, Sendable {
    public struct Entry: Codable, Equatable, Sendable {
        public enum Kind: String, Codable, Sendable { case directory, file, symlink }
        /// Relative to the snapshot's root, `/`-separated, never `..`.
        public var path: String
        public var kind: Kind
        /// The permission bits (07777).
        public var mode: UInt32
        /// Seconds since 1970, UTC.
        public var modified: Int64
        public var size: Int64
        public var chunks: [String]?
        /// A symlink's target, as stored (never followed).
        public var target: String?
    }

    public var version: Int
    /// `20261204T123000.250Z-1a2b3c4d`: sorts by time, to the millisecond.
    public var id: String
    public var createdAt: Date
    public var entries: [Entry]
    /// The chunker's maximum: the largest chunk a restore accepts.
    public var maximumChunk: Int

    public init(id: String, createdAt: Date, entries: [Entry], maximumChunk: Int) {
        version = 1
        self.id = id
        self.createdAt = createdAt
        self.entries = entries
        self.maximumChunk = maximumChunk
    }

    public var bytes: Int64 { entries.reduce(0) { $0 + ($1.kind == .file ? $1.size : 0) } }

    /// A path a manifest may name: relative, no empty, `.` or `..` component.
    public static func isSafe(_ path: String) -> Bool {
        !path.hasPrefix("/") && !path.isEmpty && path.split(separator: "/", omittingEmptySubsequences: false).allSatisfy {
            !$0.isEmpty && $0 != "." && $0 != ".."
        }
    }

    public func encoded() throws -> [UInt8] {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        encoder.dateEncodingStrategy = .iso8601
        encoder.keyEncodingStrategy = .convertToSnakeCase
        return Array(try encoder.encode(self))
    }

    public static func decoded(_ bytes: [UInt8]) throws -> SnapshotManifest {
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .iso8601
        decoder.keyDecodingStrategy = .convertFromSnakeCase
        let manifest = try decoder.decode(SnapshotManifest.self, from: Data(bytes))
        guard manifest.version == 1 else { throw SnapshotError.unsupported("manifest version \(manifest.version)") }
        for entry in manifest.entries where !isSafe(entry.path) { throw SnapshotError.unsafePath(entry.path) }
        return manifest
    }
}

public enum SnapshotError: Error, CustomStringConvertible, Equatable {
    case unsupported(String)
    /// A manifest naming a path outside the restore's target.
    case unsafePath(String)
    case noSnapshot(String)
    case io(String)
    case changedWhileRead(String)
    /// This process's lock went unrefreshed long enough that another could take it for stale.
    case lockExpired(String)

    public var description: String {
        switch self {
        case .unsupported(let what): "unsupported: \(what)"
        case .unsafePath(let path): "the manifest names an unsafe path: \(path)"
        case .noSnapshot(let detail): "no snapshot: \(detail)"
        case .io(let detail): detail
        case .changedWhileRead(let path): "\(path) kept changing while it was read"
        case .lockExpired(let key): "the lock \(key) went unrefreshed past half its stale bound; stopped before acting on it"
        }
    }
}
