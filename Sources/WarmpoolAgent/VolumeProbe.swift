#if canImport(Glibc)
import Glibc
#endif

/// What the agent learned about its data volume.
public struct VolumeReport: Hashable, Sendable, Codable {
    public var path: String
    public var mounted: Bool
    /// The id in the marker file, nil when the file is missing or unreadable.
    public var volumeID: String?
    public var idMatches: Bool
    public var writable: Bool
    public var freeBytes: UInt64
    /// Why the volume is not healthy, in words; nil when it is.
    public var problem: String?
    /// The pool's epoch as the controller last wrote it at `.warmpool/epoch` (PROTOCOL.md §7);
    /// nil when there is none or it cannot be read.
    public var epoch: UInt64?
}

/// Checks the shared volume: a mount point, holding the volume-id marker, writable, and its free
/// space. Blocking (it writes and fsyncs a file): run it off the event loop.
public struct VolumeProbe: Sendable {
    public var path: String
    public var markerName: String
    /// The id the marker must hold; nil accepts any non-empty id.
    public var expectedID: String?
    public var mountInfoPath: String

    public init(path: String = "/data", markerName: String = ".warmpool-volume-id", expectedID: String? = nil,
                mountInfoPath: String = "/proc/self/mountinfo") {
        self.path = path
        self.markerName = markerName
        self.expectedID = expectedID
        self.mountInfoPath = mountInfoPath
    }

    public func probe() -> VolumeReport {
        var report = VolumeReport(path: path, mounted: false, volumeID: nil, idMatches: false, writable: false, freeBytes: 0)
        let normalized = Self.normalize(path)
        guard let mountInfo = readSmallFile(mountInfoPath) else {
            report.problem = "cannot read \(mountInfoPath)"
            return report
        }
        report.mounted = Self.mountPoints(inMountInfo: mountInfo).contains(normalized)
        var stats = statvfs()
        if statvfs(normalized, &stats) == 0 {
            report.freeBytes = UInt64(stats.f_bavail) * UInt64(stats.f_frsize)
        }
        // Not followed if it is a link: the volume is writable by the workload, the agent is root.
        let markerPath = normalized + "/" + markerName
        if let marker = readSmallFile(markerPath, followingLinks: false) {
            let id = String(decoding: marker, as: UTF8.self).trimmingWhitespace()
            report.volumeID = id.isEmpty ? nil : id
        }
        let markerIsLink = Self.isSymbolicLink(markerPath)
        report.idMatches = report.volumeID != nil && (expectedID == nil || report.volumeID == expectedID)
        report.epoch = Self.readEpoch(volume: normalized)
        report.writable = Self.canWrite(directory: normalized)

        if !report.mounted {
            report.problem = "\(normalized) is not a mount point"
        } else if markerIsLink {
            report.problem = "the volume-id marker \(markerPath) is a symbolic link: not followed"
        } else if report.volumeID == nil {
            report.problem = "no volume-id marker at \(normalized)/\(markerName)"
        } else if !report.idMatches {
            report.problem = "volume id \(report.volumeID!) does not match the expected \(expectedID ?? "")"
        } else if !report.writable {
            report.problem = "\(normalized) is not writable"
        }
        return report
    }

    static func isSymbolicLink(_ path: String) -> Bool {
        var info = stat()
        return lstat(path, &info) == 0 && info.st_mode & S_IFMT == S_IFLNK
    }

    /// The name of the epoch file under the volume's root.
    public static let epochFile = ".warmpool/epoch"

    /// The decimal epoch in `<volume>/.warmpool/epoch`. Opened without following a symlink: the
    /// volume is writable by the workload, and the agent runs as root.
    static func readEpoch(volume: String) -> UInt64? {
        guard let bytes = readSmallFile(volume + "/" + epochFile, limit: 32, followingLinks: false), !bytes.isEmpty else { return nil }
        return UInt64(String(decoding: bytes, as: UTF8.self).trimmingWhitespace())
    }

    /// Mount points from /proc/self/mountinfo (field 5), with the kernel's octal escapes undone.
    public static func mountPoints(inMountInfo bytes: [UInt8]) -> Set<String> {
        var points = Set<String>()
        for line in bytes.split(separator: UInt8(ascii: "\n")) {
            let fields = line.split(separator: UInt8(ascii: " "), omittingEmptySubsequences: false)
            guard fields.count > 4 else { continue }
            points.insert(unescapeOctal(Array(fields[4])))
        }
        return points
    }

    /// mountinfo writes space, tab, newline and backslash as `\ooo`.
    static func unescapeOctal(_ field: [UInt8]) -> String {
        func octalDigit(_ byte: UInt8) -> UInt8? {
            byte >= UInt8(ascii: "0") && byte <= UInt8(ascii: "7") ? byte - UInt8(ascii: "0") : nil
        }
        var out: [UInt8] = []
        var index = 0
        while index < field.count {
            if field[index] == UInt8(ascii: "\\"), index + 3 < field.count,
                let a = octalDigit(field[index + 1]), let b = octalDigit(field[index + 2]),
                let c = octalDigit(field[index + 3]), a <= 3
            {
                out.append(a << 6 | b << 3 | c)
                index += 4
            } else {
                out.append(field[index])
                index += 1
            }
        }
        return String(decoding: out, as: UTF8.self)
    }

    static func normalize(_ path: String) -> String {
        var trimmed = path
        while trimmed.count > 1, trimmed.hasSuffix("/") { trimmed.removeLast() }
        return trimmed
    }

    /// The agent's own directory on the volume, where it probes writes.
    public static let probeDirectoryName = ".warmpool-agent"

    /// Creates, writes, fsyncs and removes a probe file. A read-only or full volume fails here.
    /// Anyone who can write the volume (the workload) could plant a link where root is about to
    /// write, so the probe happens only in a directory the agent made and owns (0700, opened
    /// without following a link), under a new random name created with `O_EXCL|O_NOFOLLOW`:
    /// nothing is ever opened through a link, and no existing file is truncated.
    static func canWrite(directory: String) -> Bool {
        let probeDirectory = directory + "/" + probeDirectoryName
        if mkdir(probeDirectory, 0o700) != 0, errno != EEXIST { return false }
        let directoryFD = open(probeDirectory, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
        guard directoryFD >= 0 else { return false }
        defer { close(directoryFD) }
        var info = stat()
        guard fstat(directoryFD, &info) == 0, info.st_uid == geteuid(), info.st_mode & 0o022 == 0 else { return false }
        let name = "write-probe-\(getpid())-\(UInt64.random(in: 0...UInt64.max))"
        let fd = openat(directoryFD, name, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o600)
        guard fd >= 0 else { return false }
        defer { unlinkat(directoryFD, name, 0) }
        let payload: [UInt8] = Array("warmpool write probe\n".utf8)
        let written = payload.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        let synced = fsync(fd) == 0
        let closed = close(fd) == 0
        return written == payload.count && synced && closed
    }
}

/// Reads a file of at most `limit` bytes; nil if it cannot be opened or read (or, unless
/// `followingLinks`, if it is a symbolic link).
func readSmallFile(_ path: String, limit: Int = 1 << 20, followingLinks: Bool = true) -> [UInt8]? {
    let fd = open(path, O_RDONLY | O_CLOEXEC | (followingLinks ? 0 : O_NOFOLLOW | O_NONBLOCK))
    guard fd >= 0 else { return nil }
    defer { close(fd) }
    var result: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 16_384)
    while result.count < limit {
        let count = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        if count < 0 { return nil }
        if count == 0 { break }
        result.append(contentsOf: chunk[0..<count])
    }
    return result
}

extension String {
    func trimmingWhitespace() -> String {
        let bytes = Array(utf8)
        let isSpace: (UInt8) -> Bool = { $0 == 0x20 || $0 == 0x09 || $0 == 0x0A || $0 == 0x0D }
        guard let first = bytes.firstIndex(where: { !isSpace($0) }) else { return "" }
        let last = bytes.lastIndex(where: { !isSpace($0) })!
        return String(decoding: bytes[first...last], as: UTF8.self)
    }
}
