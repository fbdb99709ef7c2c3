import WarmpoolModel

/// Why an input was refused before anything was sent anywhere.
public struct SSHInputError: Error, Hashable, Sendable, CustomStringConvertible {
    public var field: String
    public var problem: String
    public var description: String { "\(field): \(problem)" }

    public init(field: String, problem: String) {
        self.field = field
        self.problem = problem
    }
}

/// The volume to verify: its path on the instance and the id its marker must hold.
///
/// Both are checked against strict allowlists here, once, before they can reach the remote
/// command: a path is `/` followed by at most 254 characters of `A-Z a-z 0-9 . _ / -`, with no
/// empty, `.` or `..` components; an id is 1-128 characters of `A-Z a-z 0-9 . _ : -` starting
/// with a letter or digit. Nothing that a shell treats specially (quotes, `$`, backticks, `;`,
/// spaces, newlines, globs) can pass. The command then single-quotes them and hands them to a
/// fixed script as positional parameters, which it never evaluates (see `VerificationCommand`).
public struct VolumeSpec: Hashable, Sendable {
    public let path: String
    public let expectedID: String
    public let markerName: String
    /// Write the marker (holding `expectedID`) when the volume is mounted and has none. The
    /// marketplace writes nothing on a volume: the controller marks a fresh volume this way once,
    /// and from then on a missing marker is `SSHFailure.Reason.markerMissing`.
    public let establishMarker: Bool
    /// Write this epoch to `.warmpool/epoch` on the volume (atomically, never lowering it) once the
    /// marker proves it is the expected volume: every agent on the volume reads it, and one that
    /// holds an older epoch fences for good (PROTOCOL.md §7).
    public let writeEpoch: UInt64?

    public static let defaultMarkerName = ".warmpool-volume-id"

    public init(path: String, expectedID: String, markerName: String = VolumeSpec.defaultMarkerName,
                establishMarker: Bool = false, writeEpoch: UInt64? = nil) throws {
        self.path = try Self.validatePath(path)
        self.expectedID = try Self.validateVolumeID(expectedID)
        self.markerName = try Self.validateMarkerName(markerName)
        self.establishMarker = establishMarker
        self.writeEpoch = writeEpoch
    }

    /// Returns the path without a trailing slash, or throws.
    public static func validatePath(_ raw: String) throws -> String {
        let bytes = Array(raw.utf8)
        guard bytes.first == UInt8(ascii: "/") else {
            throw SSHInputError(field: "volume path", problem: "must be absolute (start with /)")
        }
        guard bytes.count <= 255 else {
            throw SSHInputError(field: "volume path", problem: "longer than 255 characters")
        }
        guard bytes.allSatisfy({ isAlphanumeric($0) || $0 == UInt8(ascii: ".") || $0 == UInt8(ascii: "_")
                || $0 == UInt8(ascii: "/") || $0 == UInt8(ascii: "-") })
        else {
            throw SSHInputError(field: "volume path", problem: "only A-Z a-z 0-9 . _ / - are allowed")
        }
        var path = raw
        while path.count > 1, path.hasSuffix("/") { path.removeLast() }
        guard path != "/" else {
            throw SSHInputError(field: "volume path", problem: "the root directory is not a volume")
        }
        let components = path.dropFirst().split(separator: "/", omittingEmptySubsequences: false)
        for component in components {
            if component.isEmpty {
                throw SSHInputError(field: "volume path", problem: "empty component (//)")
            }
            if component == "." || component == ".." {
                throw SSHInputError(field: "volume path", problem: "`.` and `..` components are not allowed")
            }
        }
        return path
    }

    public static func validateVolumeID(_ id: String) throws -> String {
        let bytes = Array(id.utf8)
        guard (1...128).contains(bytes.count) else {
            throw SSHInputError(field: "volume id", problem: "must be 1-128 characters")
        }
        guard isAlphanumeric(bytes[0]) else {
            throw SSHInputError(field: "volume id", problem: "must start with a letter or digit")
        }
        guard bytes.allSatisfy({ isAlphanumeric($0) || $0 == UInt8(ascii: ".") || $0 == UInt8(ascii: "_")
                || $0 == UInt8(ascii: ":") || $0 == UInt8(ascii: "-") })
        else {
            throw SSHInputError(field: "volume id", problem: "only A-Z a-z 0-9 . _ : - are allowed")
        }
        return id
    }

    public static func validateMarkerName(_ name: String) throws -> String {
        let bytes = Array(name.utf8)
        guard (1...64).contains(bytes.count), name != ".", name != "..",
            bytes.allSatisfy({ isAlphanumeric($0) || $0 == UInt8(ascii: ".") || $0 == UInt8(ascii: "_")
                || $0 == UInt8(ascii: "-") })
        else {
            throw SSHInputError(field: "marker name", problem: "must be a file name of 1-64 characters of A-Z a-z 0-9 . _ -")
        }
        return name
    }
}

/// Where to reach an instance's sshd, as whom, and what to verify there.
public struct SSHTarget: Hashable, Sendable {
    /// The key under which the host key is pinned (the provider's instance id).
    public let instanceID: InstanceID
    public let host: String
    public let port: Int
    public let username: String
    public let volume: VolumeSpec

    public init(instanceID: InstanceID, host: String, port: Int = 22, username: String = "root", volume: VolumeSpec) throws {
        guard (1...253).contains(host.utf8.count),
            host.utf8.allSatisfy({ isAlphanumeric($0) || $0 == UInt8(ascii: ".") || $0 == UInt8(ascii: "-")
                || $0 == UInt8(ascii: ":") || $0 == UInt8(ascii: "_") })
        else {
            throw SSHInputError(field: "host", problem: "must be a host name or an IPv4/IPv6 address")
        }
        guard (1...65_535).contains(port) else {
            throw SSHInputError(field: "port", problem: "must be 1-65535")
        }
        let user = Array(username.utf8)
        guard (1...32).contains(user.count), user[0] != UInt8(ascii: "-"),
            user.allSatisfy({ isAlphanumeric($0) || $0 == UInt8(ascii: ".") || $0 == UInt8(ascii: "_")
                || $0 == UInt8(ascii: "-") })
        else {
            throw SSHInputError(field: "username", problem: "must be 1-32 characters of A-Z a-z 0-9 . _ -")
        }
        self.instanceID = instanceID
        self.host = host
        self.port = port
        self.username = username
        self.volume = volume
    }
}

/// The ed25519 private key the verifier logs in with. (libssh2 1.10 against OpenSSH 9.2 cannot
/// use ssh-rsa: its SHA-1 signatures are refused.) The public key is derived from the private one.
public struct SSHCredentials: Sendable {
    public enum PrivateKey: Sendable {
        case file(path: String)
        /// The key file's bytes (OpenSSH or PEM format), held in memory.
        case memory([UInt8])
    }

    public var privateKey: PrivateKey
    public var passphrase: String?

    public init(privateKey: PrivateKey, passphrase: String? = nil) {
        self.privateKey = privateKey
        self.passphrase = passphrase
    }
}

@inline(__always)
func isAlphanumeric(_ byte: UInt8) -> Bool {
    (byte >= UInt8(ascii: "a") && byte <= UInt8(ascii: "z")) || (byte >= UInt8(ascii: "A") && byte <= UInt8(ascii: "Z"))
        || (byte >= UInt8(ascii: "0") && byte <= UInt8(ascii: "9"))
}
