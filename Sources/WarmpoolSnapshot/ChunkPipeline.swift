import Foundation
import Synchronization

/// What one chunk's task reports: the id for its slot in the manifest, and the bytes it uploaded
/// (nil: the store had the chunk, or another task of this snapshot was uploading it).
struct ChunkOutcome: Sendable {
    var slot: Int
    var id: String
    var uploadedBytes: Int64?
}

/// A create's chunks between the reader and the store: each has a slot (its place in the order
/// the files were read) that its id fills when its task reports, and at most `limit` tasks are
/// outstanding, which bounds the memory (each holds one chunk) and the uploads in flight.
struct ChunkPipeline {
    let limit: Int
    private(set) var ids: [String] = []
    private(set) var outstanding = 0
    private(set) var newChunks = 0
    private(set) var uploadedBytes: Int64 = 0

    init(limit: Int) { self.limit = limit }

    var isFull: Bool { outstanding >= limit }

    mutating func reserve() -> Int {
        ids.append("")
        outstanding += 1
        return ids.count - 1
    }

    mutating func record(_ outcome: ChunkOutcome) {
        ids[outcome.slot] = outcome.id
        outstanding -= 1
        if let bytes = outcome.uploadedBytes {
            newChunks += 1
            uploadedBytes += bytes
        }
    }
}

/// The ids the store has, and those a task of this snapshot has claimed to upload: one upload per
/// id, even when the same content appears twice within the chunks in flight.
final class KnownChunks: Sendable {
    private let ids: Mutex<Set<String>>

    init(_ ids: some Sequence<String>) { self.ids = Mutex(Set(ids)) }

    /// True for the first caller with a new id: that one uploads it.
    func claim(_ id: String) -> Bool { ids.withLock { $0.insert(id).inserted } }
}

/// One chunk's plaintext on its way into a task, released as soon as it is compressed: the task
/// lives on while its sealed object is uploaded, and must not keep the plaintext alive meanwhile.
/// Only the task it was made for touches it.
final class PlaintextBox: @unchecked Sendable {
    private var bytes: [UInt8]

    init(_ bytes: [UInt8]) { self.bytes = bytes }

    func withBytes<T>(_ body: (UnsafeRawBufferPointer) throws -> T) rethrows -> T { try bytes.withUnsafeBytes(body) }

    func release() { bytes = [] }
}

/// A restore's chunks, fetched and opened up to `limit` ahead of the one being written, in the
/// order they are written (across file boundaries). Tasks are started as the writer takes
/// results, so at most `limit` chunks wait in memory.
struct ChunkFetcher {
    private var remaining: IndexingIterator<[String]>
    /// Oldest first; at most `limit`. A consumed task is dropped at once: a finished task keeps its
    /// result for as long as anything holds it.
    private var pending: [Task<[UInt8], any Error>] = []
    private let limit: Int
    private let fetch: @Sendable (String) async throws -> [UInt8]

    init(ids: [String], limit: Int, fetch: @escaping @Sendable (String) async throws -> [UInt8]) {
        remaining = ids.makeIterator()
        self.limit = limit
        self.fetch = fetch
    }

    /// The next chunk's plaintext, verified.
    mutating func next() async throws -> [UInt8] {
        fill()
        guard !pending.isEmpty else { throw SnapshotError.io("the manifest names fewer chunks than its files hold") }
        let task = pending.removeFirst()
        fill()
        return try await task.value
    }

    /// Stops what is still being fetched (a failed restore).
    func cancel() {
        for task in pending { task.cancel() }
    }

    private mutating func fill() {
        while pending.count < limit, let id = remaining.next() {
            let fetch = fetch
            pending.append(Task { try await fetch(id) })
        }
    }
}
