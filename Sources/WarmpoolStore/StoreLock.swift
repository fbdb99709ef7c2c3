import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// One controller per store: an exclusive `flock` on `<database>.lock`, held for the life of the
/// process (the kernel drops it when the process dies, SIGKILL included, so a crash never leaves a
/// stale lock). Two controllers on one database would each run the failover engine for the same
/// pools, grant leases at the same epochs and promote twice; until the controller is made highly
/// available, the second refuses to start. The file holds the holder's pid, for the message.
/// `flock` is per host: a database on a network file system shared by two hosts is not covered.
public final class StoreLock: @unchecked Sendable {
    public struct Held: Error, CustomStringConvertible, Equatable {
        public var lockPath: String
        public var holderPID: Int32?

        public var description: String {
            let holder = holderPID.map { "pid \($0)" } ?? "another process"
            return "another warmpool-controller (\(holder)) is running against this database: \(lockPath) is locked. "
                + "One controller per store; stop the other one first."
        }
    }

    public let path: String
    private let descriptor: Int32

    /// Takes the lock or throws `Held` (another process has it) or a POSIX error as text.
    public init(databasePath: String) throws {
        path = databasePath + ".lock"
        let directory = (databasePath as NSString).deletingLastPathComponent
        if !directory.isEmpty {
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        }
        let fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0o600)
        guard fd >= 0 else {
            throw StoreError.unreadable(path: path, reason: String(cString: strerror(errno)))
        }
        guard flock(fd, LOCK_EX | LOCK_NB) == 0 else {
            let reason = errno
            let holder = Self.readPID(fd)
            close(fd)
            if reason == EWOULDBLOCK { throw Held(lockPath: path, holderPID: holder) }
            throw StoreError.unreadable(path: path, reason: String(cString: strerror(reason)))
        }
        descriptor = fd
        let text = Array("\(getpid())\n".utf8)
        _ = ftruncate(fd, 0)
        _ = text.withUnsafeBytes { pwrite(fd, $0.baseAddress, $0.count, 0) }
    }

    deinit { close(descriptor) }

    private static func readPID(_ fd: Int32) -> Int32? {
        var buffer = [UInt8](repeating: 0, count: 32)
        let count = buffer.withUnsafeMutableBytes { pread(fd, $0.baseAddress, $0.count, 0) }
        guard count > 0 else { return nil }
        return Int32(String(decoding: buffer[0..<count], as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines))
    }
}
