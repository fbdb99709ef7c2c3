#if canImport(Glibc)
import Glibc
#endif
import WarmpoolJSON

/// Where the primary's volume is continuously copied to (a CPU standby VM), as the controller
/// writes it onto the primary (`--sync-target-file`, JSON). It belongs to an epoch: the agent
/// pushes to it only while it holds an unexpired lease at that epoch and is not fenced, so that a
/// fenced old primary never writes over the copy that is about to be promoted.
public struct SyncTarget: Equatable, Sendable {
    public var name: String
    public var host: String
    public var port: Int
    public var user: String
    /// Absolute directory on the target that receives the volume's contents.
    public var path: String
    /// OpenSSH private key text.
    public var identity: String
    /// `TYPE BASE64` as in a known_hosts line, without the host.
    public var hostKey: String
    public var epoch: UInt64
    /// 0: no limit.
    public var bandwidthLimitKiB: Int

    public init(name: String, host: String, port: Int = 22, user: String = "root", path: String, identity: String,
                hostKey: String, epoch: UInt64, bandwidthLimitKiB: Int = 0) {
        self.name = name
        self.host = host
        self.port = port
        self.user = user
        self.path = path
        self.identity = identity
        self.hostKey = hostKey
        self.epoch = epoch
        self.bandwidthLimitKiB = bandwidthLimitKiB
    }

    public struct Malformed: Error, Equatable, CustomStringConvertible {
        public var description: String
        init(_ description: String) { self.description = description }
    }

    /// Every problem names the key: the controller shows it as the sync's error, and an operator
    /// must be able to fix the file from that line alone.
    public static func parse(_ bytes: [UInt8]) -> Result<SyncTarget, Malformed> {
        let document: JSONValue
        do {
            document = try JSONParser.parse(bytes)
        } catch {
            return .failure(Malformed("sync target is not JSON: \(error)"))
        }
        guard document.objectValue != nil else { return .failure(Malformed("sync target is not a JSON object")) }
        do {
            func string(_ key: String, default fallback: String? = nil) throws(Malformed) -> String {
                guard let value = document[key], value != .null else {
                    if let fallback { return fallback }
                    throw Malformed("sync target: \"\(key)\" is missing")
                }
                guard let text = value.stringValue else { throw Malformed("sync target: \"\(key)\" must be a string, got \(value.typeName)") }
                return text
            }
            func integer(_ key: String, default fallback: Int64? = nil, in range: ClosedRange<Int64>) throws(Malformed) -> Int64 {
                guard let value = document[key], value != .null else {
                    if let fallback { return fallback }
                    throw Malformed("sync target: \"\(key)\" is missing")
                }
                guard let number = value.intValue else { throw Malformed("sync target: \"\(key)\" must be an integer, got \(value.typeName)") }
                guard range.contains(number) else { throw Malformed("sync target: \"\(key)\" must be in \(range.lowerBound)...\(range.upperBound), got \(number)") }
                return number
            }
            let name = try string("name")
            guard !name.isEmpty, name.utf8.count <= 128 else { throw Malformed("sync target: \"name\" must be 1 to 128 bytes") }
            let host = try string("host")
            // The host and user end up in an rsync argument `user@host:path`: nothing that rsync or
            // ssh would read as an option or a separator.
            guard !host.isEmpty, !host.hasPrefix("-"), host.allSatisfy({ $0.isLetter || $0.isNumber || ".:-_".contains($0) }) else {
                throw Malformed("sync target: \"host\" must be a host name or an IP address, got \(quoted(host))")
            }
            let user = try string("user", default: "root")
            guard !user.isEmpty, !user.hasPrefix("-"), user.allSatisfy({ $0.isLetter || $0.isNumber || "._-".contains($0) }) else {
                throw Malformed("sync target: \"user\" must be a user name, got \(quoted(user))")
            }
            let path = try string("path")
            guard path.hasPrefix("/"), path != "/", !path.contains(where: { $0.isNewline || $0 == "\0" }) else {
                throw Malformed("sync target: \"path\" must be an absolute directory other than /, got \(quoted(path))")
            }
            let identity = try string("identity")
            guard identity.contains("PRIVATE KEY-----") else {
                throw Malformed("sync target: \"identity\" must be an OpenSSH private key (PEM text)")
            }
            let hostKey = try string("host_key")
            // `TYPE BASE64 [COMMENT]`; a whole known_hosts line (a host first) is taken too.
            let fields = hostKey.split(separator: " ").drop { !($0.hasPrefix("ssh-") || $0.hasPrefix("ecdsa-")) }
            guard fields.count >= 2, !hostKey.contains(where: \.isNewline) else {
                throw Malformed("sync target: \"host_key\" must be a public key line `TYPE BASE64`, got \(quoted(String(hostKey.prefix(40))))")
            }
            let port = try integer("port", default: 22, in: 1...65_535)
            let epoch = try integer("epoch", in: 0...Int64.max)
            let limit = try integer("bwlimit_kib", default: 0, in: 0...Int64(Int32.max))
            return .success(SyncTarget(
                name: name, host: host, port: Int(port), user: user, path: String(path.reversed().drop(while: { $0 == "/" }).reversed()),
                identity: identity, hostKey: fields.prefix(2).joined(separator: " "), epoch: UInt64(epoch), bandwidthLimitKiB: Int(limit)))
        } catch let error as Malformed {
            return .failure(error)
        } catch {
            return .failure(Malformed("\(error)"))
        }
    }

    /// A value as JSON would write it, for an error message that must show stray characters.
    private static func quoted(_ text: String) -> String {
        String(decoding: JSONValue.string(text).serialized(), as: UTF8.self)
    }

    /// rsync's destination for a directory's contents.
    var destination: String {
        let address = host.contains(":") ? "[\(host)]" : host
        return "\(user)@\(address):\(path)/"
    }

    /// The known_hosts line ssh checks the target's key against: OpenSSH names a host on another
    /// port than 22 `[host]:port`.
    var knownHostsLine: String {
        (port == 22 ? host : "[\(host)]:\(port)") + " " + hostKey + "\n"
    }
}

/// What the agent last read of its sync target file.
enum SyncTargetReading: Equatable, Sendable {
    /// No file: sync is off.
    case absent
    case target(SyncTarget)
    /// Sync is off, for this reason.
    case malformed(String)
}

/// The sync target file, read again only when it changed (size, modification time or inode: a
/// controller that renames a new file in place changes the inode). Blocking (file reads and
/// writes): confined to the probe queue.
final class SyncTargetFile {
    let path: String
    let identityPath: String
    let knownHostsPath: String
    private var seen: stat?
    private var read = false

    init(path: String, stateDirectory: String, fileStem: String) {
        self.path = path
        identityPath = stateDirectory + "/" + fileStem + ".sync-identity"
        knownHostsPath = stateDirectory + "/" + fileStem + ".sync-known_hosts"
    }

    /// nil when nothing changed since the last call.
    func check() -> SyncTargetReading? {
        var info = stat()
        guard stat(path, &info) == 0 else {
            let wasThere = seen != nil || !read
            seen = nil
            read = true
            if errno == ENOENT || errno == ENOTDIR { return wasThere ? .absent : nil }
            return .malformed("cannot read the sync target \(path): \(String(cString: strerror(errno)))")
        }
        if read, let seen, seen.st_size == info.st_size, seen.st_ino == info.st_ino,
           seen.st_mtim.tv_sec == info.st_mtim.tv_sec, seen.st_mtim.tv_nsec == info.st_mtim.tv_nsec {
            return nil
        }
        read = true
        seen = info
        guard let bytes = readSmallFile(path, limit: 1 << 16) else {
            return .malformed("cannot read the sync target \(path): \(String(cString: strerror(errno)))")
        }
        switch SyncTarget.parse(bytes) {
        case .failure(let error):
            return .malformed(error.description)
        case .success(let target):
            let identity = target.identity.hasSuffix("\n") ? target.identity : target.identity + "\n"
            if let problem = Self.writePrivate(identity, to: identityPath) ?? Self.writePrivate(target.knownHostsLine, to: knownHostsPath) {
                return .malformed(problem)
            }
            return .target(target)
        }
    }

    /// Writes `text` to a temporary file of mode 0600 and renames it over `path`: ssh never reads
    /// a half-written key, and the key is never readable by others, not even for a moment.
    static func writePrivate(_ text: String, to path: String) -> String? {
        let directory = String(path[..<(path.lastIndex(of: "/") ?? path.startIndex)])
        if !directory.isEmpty { mkdir(directory, 0o700) }
        let temporary = path + ".tmp"
        unlink(temporary)
        let fd = open(temporary, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        guard fd >= 0 else { return "cannot write \(temporary): \(String(cString: strerror(errno)))" }
        let bytes = Array(text.utf8)
        var offset = 0
        while offset < bytes.count {
            let written = bytes[offset...].withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
            if written < 0, errno == EINTR { continue }
            guard written > 0 else {
                close(fd)
                unlink(temporary)
                return "cannot write \(temporary): \(String(cString: strerror(errno)))"
            }
            offset += written
        }
        fchmod(fd, 0o600)
        close(fd)
        guard rename(temporary, path) == 0 else {
            unlink(temporary)
            return "cannot rename \(temporary): \(String(cString: strerror(errno)))"
        }
        return nil
    }
}
