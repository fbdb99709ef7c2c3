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
        var visited = 0
        var pending: [String] = [root]
        while let directory = pending.popLast() {
            guard let handle = opendir(directory) else {
                if directory == root { result.problem = "cannot read \(directory): \(String(cString: strerror(errno)))" }
                continue
            }
            defer { closedir(handle) }
            while let entry = readdir(handle) {
                let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                    String(cString: raw.baseAddress!.assumingMemoryBound(to: CChar.self))
                }
                if name == "." || name == ".." { continue }
                if directory == root, Self.excluded.contains(name) { continue }
                visited += 1
                guard visited <= entryLimit else {
                    result.truncated = true
                    return result
                }
                let path = directory + "/" + name
                var info = stat()
                guard lstat(path, &info) == 0 else { continue }
                switch info.st_mode & S_IFMT {
                case S_IFDIR:
                    pending.append(path)
                case S_IFREG, S_IFLNK:
                    let modified = Int64(info.st_mtim.tv_sec) * 1_000_000_000 + Int64(info.st_mtim.tv_nsec)
                    let changed = Int64(info.st_ctim.tv_sec) * 1_000_000_000 + Int64(info.st_ctim.tv_nsec)
                    if max(modified, changed) >= wallNanoseconds {
                        result.files += 1
                        result.bytes += Int64(info.st_size)
                    }
                default:
                    continue
                }
            }
        }
        return result
    }
}
