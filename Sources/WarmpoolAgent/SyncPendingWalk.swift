#if canImport(Glibc)
import Glibc
#endif

/// What of the volume changed since a moment: the writes a copy taken from then may lack.
struct SyncPending: Equatable, Sendable {
    var files: Int64 = 0
    var bytes: Int64 = 0
    /// The walk stopped at its bound: there may be more.
    var truncated = false
    var problem: String?
}

/// Counts the volume's regular files modified (or changed: a rename or chmod moves ctime, and
/// rsync copies those too) at or after `since`, wall clock. Blocking; runs on the sync pass's own
/// thread. Bounded like `CheckpointProbe`, links not followed; the agent's own directories in the
/// volume's root (`.warmpool`, `.warmpool-sync`) are not the workload's and are never synced.
struct SyncPendingWalk: Sendable {
    static let entryLimit = 200_000
    /// The agent's own probe files (`.warmpool-agent`, rewritten every probe) too: counted, they
    /// kept the lag from ever reading 0 for long (the CPU standby's end-to-end test caught it).
    static let excluded: Set<String> = [".warmpool", ".warmpool-sync", VolumeProbe.probeDirectoryName]
    let root: String
    var entryLimit = SyncPendingWalk.entryLimit

    func walk(since wallNanoseconds: Int64) -> SyncPending {
        var result = SyncPending()
        let ending = BoundedDirectoryWalk(root: root, entryLimit: entryLimit).walk(
            skip: { parent, name in parent.isEmpty && Self.excluded.contains(name) }
        ) { entry in
            guard entry.type == S_IFREG || entry.type == S_IFLNK,
                  max(entry.modifiedNanoseconds, entry.changedNanoseconds) >= wallNanoseconds
            else { return }
            result.files += 1
            result.bytes += Int64(entry.info.st_size)
        }
        switch ending {
        case .complete: break
        case .truncated: result.truncated = true
        case .rootUnreadable(let error): result.problem = "cannot read \(root): \(String(cString: strerror(error)))"
        }
        return result
    }
}
