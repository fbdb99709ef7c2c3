#if canImport(Glibc)
import Glibc
#endif

/// A depth-first walk of a directory tree that never follows a link (a loop, or a link out of the
/// volume, costs nothing) and stops after `entryLimit` entries (a volume of millions of files costs
/// a bounded walk). Blocking: the checkpoint probe and the sync's pending walk run it on threads of
/// their own.
struct BoundedDirectoryWalk {
    struct Entry {
        /// The names from the root down to this entry.
        var components: [String]
        var path: String
        var info: stat
        var type: mode_t { info.st_mode & S_IFMT }
        var modifiedNanoseconds: Int64 { Int64(info.st_mtim.tv_sec) * 1_000_000_000 + Int64(info.st_mtim.tv_nsec) }
        var changedNanoseconds: Int64 { Int64(info.st_ctim.tv_sec) * 1_000_000_000 + Int64(info.st_ctim.tv_nsec) }
    }

    enum Ending: Equatable {
        case complete
        /// The bound was reached: there may be more.
        case truncated
        /// The root itself could not be opened (`errno`); a subdirectory that cannot is skipped.
        case rootUnreadable(Int32)
    }

    let root: String
    let entryLimit: Int

    /// Calls `visit` for every entry (directories included, each descended into) but those `skip`
    /// names, which are neither visited nor counted against the bound.
    func walk(skip: (_ parent: [String], _ name: String) -> Bool = { _, _ in false }, visit: (Entry) -> Void) -> Ending {
        var visited = 0
        var pending: [[String]] = [[]]
        while let relative = pending.popLast() {
            let directory = relative.isEmpty ? root : root + "/" + relative.joined(separator: "/")
            guard let handle = opendir(directory) else {
                if relative.isEmpty { return .rootUnreadable(errno) }
                continue
            }
            defer { closedir(handle) }
            while let entry = readdir(handle) {
                let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                    String(cString: raw.baseAddress!.assumingMemoryBound(to: CChar.self))
                }
                if name == "." || name == ".." || skip(relative, name) { continue }
                visited += 1
                guard visited <= entryLimit else { return .truncated }
                let path = directory + "/" + name
                var info = stat()
                guard lstat(path, &info) == 0 else { continue }
                let found = Entry(components: relative + [name], path: path, info: info)
                if found.type == S_IFDIR { pending.append(found.components) }
                visit(found)
            }
        }
        return .complete
    }
}
