import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// Keeps this process's descriptors out of the processes it spawns. Not every descriptor is
/// close-on-exec (Foundation's Pipe is not): an instance that inherited the write end of some
/// other child's output pipe would hold that reader open for as long as the instance lives.
/// glibc's close action ignores descriptors closed meanwhile (EBADF), so listing them is safe.
enum InheritedDescriptors {
    static func closeAll(in actions: inout posix_spawn_file_actions_t) {
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd")) ?? []
        for fd in entries.compactMap({ Int32($0) }) where fd > 2 {
            posix_spawn_file_actions_addclose(&actions, fd)
        }
    }
}
