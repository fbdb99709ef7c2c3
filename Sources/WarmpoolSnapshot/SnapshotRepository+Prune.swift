import Foundation
import WarmpoolModel
import Logging
import WarmpoolStorage

extension SnapshotRepository {
    public struct PruneSummary: Sendable, Equatable {
        /// Oldest first.
        public var kept: [String]
        public var deleted: [String]
        public var chunksDeleted: Int
        public var bytesFreed: Int64
        public var dryRun: Bool
        /// Why unreferenced chunks were left in the store this time (nil: they were collected).
        public var collectionSkipped: String?
        /// Locks of killed runs, past their stale bound, removed.
        public var staleLocksRemoved: Int
    }

    /// Deletes the manifests `policy` does not keep, then the chunks no remaining manifest names.
    ///
    /// Safe beside a create, through locks under `locks/` (restic's scheme, on the store's clock):
    /// a create writes `locks/create-<id>` before it lists the chunks the store has, and a prune
    /// writes `locks/prune-<id>` before it lists the create locks. Each writes, then reads the
    /// other's; on a store with read-after-write consistency (S3 since 2020, R2, B2) at least one
    /// of the two sees the other. A prune that sees a fresh create lock deletes manifests (a create
    /// never reads them) but collects no chunk: that create may have found a chunk in the store,
    /// skipped its upload, and not yet written the manifest naming it. A create that sees a fresh
    /// prune lock waits until it is gone, then lists the chunks: it finds what the collection left.
    /// Locks are rewritten every `LockTiming.refresh` and stale after `staleAfter` unrefreshed (a
    /// killed run); a stale one is ignored and removed by the next prune. A holder that could not
    /// refresh its lock for half the stale bound stops before acting on it (no manifest, no further
    /// deletes), so a lock another process takes for stale no longer protects anything.
    ///
    /// Why not a grace period instead (spare chunks younger than an hour): the chunk a create skips
    /// is old (it was in the store already), so a grace period protects it only if every create
    /// rewrites every chunk it reuses (a request per chunk per snapshot, thousands on a 2 GiB
    /// volume), and a window remains between that refresh and the manifest. The locks cost a few
    /// small requests per run and leave no window.
    ///
    /// `dryRun`: decides and counts what would go, deletes nothing and takes no lock.
    public func prune(_ policy: RetentionPolicy, now: Date = Date(), dryRun: Bool = false) async throws -> PruneSummary {
        if dryRun {
            let decision = policy.decide(try await snapshots(), now: now)
            var summary = PruneSummary(kept: decision.keep, deleted: decision.delete, chunksDeleted: 0, bytesFreed: 0, dryRun: true,
                                       collectionSkipped: nil, staleLocksRemoved: 0)
            switch try await unreferencedChunks(keeping: decision.keep) {
            case .garbage(let objects):
                summary.chunksDeleted = objects.count
                summary.bytesFreed = objects.reduce(0) { $0 + $1.size }
            case .unreadable(let reason):
                summary.collectionSkipped = reason
            }
            return summary
        }
        let (lock, creates, stale) = try await lockForPrune()
        do {
            let summary = try await prune(policy, now: now, lock: lock, creates: creates, stale: stale)
            await lock.release()
            return summary
        } catch {
            await lock.release()
            throw error
        }
    }

    private func prune(_ policy: RetentionPolicy, now: Date, lock: HeldLock, creates: LockTable.Assessment, stale: [String]) async throws
        -> PruneSummary
    {
        let decision = policy.decide(try await snapshots(), now: now)
        var summary = PruneSummary(kept: decision.keep, deleted: [], chunksDeleted: 0, bytesFreed: 0, dryRun: false,
                                   collectionSkipped: nil, staleLocksRemoved: 0)
        for id in decision.delete {
            guard lock.isSafe else { throw SnapshotError.lockExpired(lock.key) }
            try await store.delete("snapshots/\(id)")
            summary.deleted.append(id)
        }
        try await hooks.pruneDeletedManifests()
        for key in stale {
            try? await store.delete(key)
            summary.staleLocksRemoved += 1
        }
        if let running = creates.fresh.first {
            summary.collectionSkipped = "a snapshot is being made (\(running)); the next prune collects"
            logger.notice("chunks not collected: a snapshot is being made", metadata: ["snapshot.lock": "\(running)"])
            return summary
        }
        // Every manifest left, not only those the policy named: another prune may have deleted more.
        switch try await unreferencedChunks(keeping: try await snapshots()) {
        case .unreadable(let reason):
            summary.collectionSkipped = reason
            logger.warning("chunks not collected", metadata: ["snapshot.reason": "\(reason)"])
        case .garbage(let objects):
            try await withThrowingTaskGroup(of: Int64.self) { group in
                var outstanding = 0
                for object in objects {
                    guard lock.isSafe else { throw SnapshotError.lockExpired(lock.key) }
                    if outstanding >= parallel, let freed = try await group.next() {
                        summary.bytesFreed += freed
                        summary.chunksDeleted += 1
                        outstanding -= 1
                    }
                    group.addTask { [store] in
                        try await store.delete(object.key)
                        return object.size
                    }
                    outstanding += 1
                }
                while let freed = try await group.next() {
                    summary.bytesFreed += freed
                    summary.chunksDeleted += 1
                }
            }
        }
        logger.info("pruned", metadata: [
            "snapshot.kept": "\(summary.kept.count)", "snapshot.deleted": "\(summary.deleted.count)",
            "snapshot.chunks_deleted": "\(summary.chunksDeleted)", "snapshot.bytes_freed": "\(summary.bytesFreed)",
        ])
        return summary
    }

    enum Garbage {
        case garbage([S3Object])
        /// A manifest could not be read: what it names is unknown, so nothing may be collected.
        case unreadable(String)
    }

    /// The chunk objects none of `manifests` names.
    func unreferencedChunks(keeping manifests: [String]) async throws -> Garbage {
        var referenced = Set<String>()
        for id in manifests {
            do {
                for entry in try await manifest(id).entries { referenced.formUnion(entry.chunks ?? []) }
            } catch {
                return .unreadable("cannot read manifest \(id) (\(error)); no chunk is collected while one is unreadable")
            }
        }
        return .garbage(try await store.list(prefix: "chunks/").filter { object in
            !referenced.contains(String(object.key.split(separator: "/").last ?? ""))
        })
    }

    // MARK: Locks

    /// A create's side of the locks: writes its lock, then waits while a fresh prune lock exists.
    func lockForCreate(_ id: String) async throws -> HeldLock {
        let lock = try await HeldLock.write(.create, name: id, store: store, timing: lockTiming, logger: logger)
        do {
            var announced = false
            while true {
                let prunes = LockTable.assess(try await store.list(prefix: "locks/"), kind: .prune, own: lock.key,
                                              staleAfter: lockTiming.staleAfter, now: Date())
                guard let running = prunes.fresh.first else { break }
                if !announced {
                    logger.notice("waiting for a prune to finish", metadata: ["snapshot.lock": "\(running)"])
                    announced = true
                }
                try await Task.sleep(for: lockTiming.poll)
            }
        } catch {
            await lock.release()
            throw error
        }
        return lock
    }

    /// A prune's side: writes its lock, then reads the create locks (fresh: someone is making a
    /// snapshot now). Stale locks of either kind (left by killed runs) are returned for removal.
    func lockForPrune() async throws -> (HeldLock, creates: LockTable.Assessment, stale: [String]) {
        let lock = try await HeldLock.write(.prune, name: SnapshotID.make(Date()), store: store, timing: lockTiming, logger: logger)
        do {
            let listing = try await store.list(prefix: "locks/")
            let creates = LockTable.assess(listing, kind: .create, own: lock.key, staleAfter: lockTiming.staleAfter, now: Date())
            let prunes = LockTable.assess(listing, kind: .prune, own: lock.key, staleAfter: lockTiming.staleAfter, now: Date())
            return (lock, creates, creates.stale + prunes.stale)
        } catch {
            await lock.release()
            throw error
        }
    }
}
