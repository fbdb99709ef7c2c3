import Foundation
import Logging
import Synchronization
import WarmpoolModel
import WarmpoolStorage

/// How often a held lock is rewritten, when an unrefreshed one stops counting, and how often a
/// waiting create looks again.
public struct LockTiming: Sendable, Equatable {
    public var refresh: Duration
    public var staleAfter: Duration
    public var poll: Duration

    /// A lock is rewritten every 20 s and stale after 2 minutes unrefreshed: a killed snapshot (the
    /// agent kills one whose lease went) holds off garbage collection, and a killed prune holds
    /// off snapshots, for 2 minutes at most; a live one refreshes six times within that bound.
    public init(refresh: Duration = .seconds(20), staleAfter: Duration = .seconds(120), poll: Duration = .seconds(2)) {
        precondition(refresh * 2 < staleAfter, "a lock must be refreshed well within its stale bound")
        self.refresh = refresh
        self.staleAfter = staleAfter
        self.poll = poll
    }
}

/// The two kinds of lock under `locks/`: `locks/create-<snapshot id>` and `locks/prune-<id>`.
enum LockKind: String, Sendable {
    case create, prune

    func key(_ name: String) -> String { "locks/\(rawValue)-\(name)" }
}

/// The locks' one decision, pure: which of the listed locks of a kind still hold. Ages are measured
/// on the store's clock (each lock's LastModified against that of our own lock, just written), so
/// neither host's clock decides; a listing without times falls back to the time in the key against
/// ours.
enum LockTable {
    struct Assessment: Equatable, Sendable {
        var fresh: [String]
        var stale: [String]
    }

    static func assess(_ listing: [S3Object], kind: LockKind, own: String, staleAfter: Duration, now: Date) -> Assessment {
        let reference = listing.first { $0.key == own }?.lastModified ?? now
        let bound = staleAfter.seconds
        var assessment = Assessment(fresh: [], stale: [])
        for object in listing where object.key != own && object.key.hasPrefix(kind.key("")) {
            let written = object.lastModified ?? SnapshotID.date(of: String(object.key.dropFirst(kind.key("").count)))
            if let written, reference.timeIntervalSince(written) > bound {
                assessment.stale.append(object.key)
            } else {
                assessment.fresh.append(object.key)
            }
        }
        return assessment
    }
}

/// A lock this process holds: written at once, rewritten every `refresh` by a task of its own,
/// deleted on release. It knows when it was last written, so its holder can tell whether the
/// others could already take it for stale (`isSafe`) before it acts on the lock's protection.
final class HeldLock: Sendable {
    let key: String
    private let store: S3Client
    private let timing: LockTiming
    /// When the last successful write began (before the request: the store's LastModified is later).
    private let written: Mutex<ContinuousClock.Instant>
    private let refresher: Mutex<Task<Void, Never>?>

    private init(key: String, store: S3Client, timing: LockTiming, written: ContinuousClock.Instant) {
        self.key = key
        self.store = store
        self.timing = timing
        self.written = Mutex(written)
        refresher = Mutex(nil)
    }

    static func write(_ kind: LockKind, name: String, store: S3Client, timing: LockTiming, logger: Logger) async throws -> HeldLock {
        let key = kind.key(name)
        let body = Self.body(kind)
        let started = ContinuousClock.now
        try await store.put(key, body, contentType: "application/json")
        let lock = HeldLock(key: key, store: store, timing: timing, written: started)
        let task = Task { [weak lock] in
            while !Task.isCancelled {
                try? await Task.sleep(for: timing.refresh)
                guard !Task.isCancelled, let lock else { return }
                let attempt = ContinuousClock.now
                do {
                    try await store.put(key, body, contentType: "application/json")
                    lock.written.withLock { $0 = attempt }
                } catch {
                    logger.warning("could not refresh a snapshot lock", metadata: ["snapshot.lock": "\(key)", "snapshot.error": "\(error)"])
                }
            }
        }
        lock.refresher.withLock { $0 = task }
        return lock
    }

    /// Whether no other process can take this lock for stale yet: its last write began less than
    /// half the stale bound ago (the other half is the margin for the action it protects).
    var isSafe: Bool { ContinuousClock.now - written.withLock { $0 } < timing.staleAfter / 2 }

    /// Stops refreshing (waiting for a refresh under way, so none lands after the delete), then
    /// deletes the lock. Best effort: a lock left behind goes stale.
    func release() async {
        let task = refresher.withLock { task in
            defer { task = nil }
            return task
        }
        task?.cancel()
        await task?.value
        try? await store.delete(key)
    }

    /// What a lock says, for an operator reading the bucket: nothing about the data.
    private static func body(_ kind: LockKind) -> [UInt8] {
        var host = [CChar](repeating: 0, count: 256)
        gethostname(&host, host.count - 1)
        let hostname = String(decoding: host.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        return Array(#"{"kind":"\#(kind.rawValue)","host":"\#(hostname.filter { $0 != "\"" && $0 != "\\" })","pid":\#(getpid())}"#.utf8)
    }
}
