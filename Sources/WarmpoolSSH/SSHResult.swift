import WarmpoolModel

/// The steps of one verification, in order.
public enum SSHPhase: String, Hashable, Sendable, CaseIterable, Codable {
    case connect
    case handshake
    case auth
    case command
}

/// Why a verification failed: one precise reason, with a sentence for people.
public struct SSHFailure: Error, Hashable, Sendable, CustomStringConvertible {
    public enum Reason: String, Hashable, Sendable, CaseIterable, Codable {
        /// TCP reset: nothing listens on the port (yet).
        case refused
        /// A phase did not finish before its deadline; `phase` says which.
        case timeout
        /// TCP connected, but the peer closed or stayed silent without sending an SSH banner.
        case noBanner = "no_banner"
        /// The host key is not the one pinned for this instance. Never retried; raises an alert.
        case hostKeyMismatch = "host_key_mismatch"
        /// No key is pinned for the instance and its agent has reported none over its
        /// authenticated session: nothing to hold the host to, so no connection is made. Retried:
        /// the agent reports as soon as its session opens.
        case hostKeyUnattested = "host_key_unattested"
        /// The server refused our public key.
        case authRefused = "auth_refused"
        /// The volume path does not exist or is not a mount point.
        case notMounted = "not_mounted"
        /// Mounted, but the marker is empty, unusable or holds another volume's id.
        case wrongVolume = "wrong_volume"
        /// Mounted, but no marker at all: the volume lost the one written when the pool was made
        /// (wiped, or not the pool's volume), or, when asked to establish it, it could not be written.
        case markerMissing = "marker_missing"
        /// The write probe (create, write, fsync, remove) failed.
        case readOnly = "read_only"
        /// Readiness polling ran out of time; `detail` names the last attempt's failure.
        case deadlineExceeded = "deadline_exceeded"
        // Beyond the issue's list, so that no failure is filed under a wrong name:
        /// The address could not be resolved or the network said it is unreachable.
        case unreachable
        /// A banner arrived but key exchange failed (protocol error, no common algorithm, reset).
        case handshakeFailed = "handshake_failed"
        /// Our own private key could not be loaded (missing file, wrong passphrase, bad format).
        case keyUnusable = "key_unusable"
        /// The session channel or the command failed, or its answer could not be parsed.
        case commandFailed = "command_failed"
    }

    public var reason: Reason
    /// The phase that failed; nil for verdicts on the volume and for the overall deadline.
    public var phase: SSHPhase?
    public var detail: String

    public init(_ reason: Reason, phase: SSHPhase? = nil, _ detail: String) {
        self.reason = reason
        self.phase = phase
        self.detail = detail
    }

    public var description: String { "\(reason.rawValue): \(detail)" }
}

/// How long each phase took, in nanoseconds of the monotonic clock; nil when it was not reached.
public struct SSHTimings: Hashable, Sendable {
    public var connect: Int64?
    public var handshake: Int64?
    public var auth: Int64?
    public var command: Int64?
    public var total: Int64 = 0

    public init(connect: Int64? = nil, handshake: Int64? = nil, auth: Int64? = nil, command: Int64? = nil, total: Int64 = 0) {
        self.connect = connect
        self.handshake = handshake
        self.auth = auth
        self.command = command
        self.total = total
    }

    public subscript(phase: SSHPhase) -> Int64? {
        switch phase {
        case .connect: connect
        case .handshake: handshake
        case .auth: auth
        case .command: command
        }
    }

    public static func milliseconds(_ nanoseconds: Int64) -> Double { Double(nanoseconds) / 1e6 }
}

/// What the remote verification command reported about the volume.
public struct RemoteVolumeFacts: Hashable, Sendable {
    public enum Marker: Hashable, Sendable {
        case missing
        /// The marker's content with surrounding whitespace trimmed (may be empty).
        case present(String)
        /// Present but not usable as an id: larger than the limit or not UTF-8.
        case unusable(String)
    }

    public var exists: Bool
    public var mounted: Bool
    public var marker: Marker
    /// Whether the command wrote the marker; nil when it was not asked to or the marker was there.
    public var markerWritten: Bool?
    /// nil when the probe was not run (the path is not a mount point).
    public var writable: Bool?
    /// The write probe's error message, sanitised, when it failed.
    public var writeError: String?
    /// nil when not measured (the path is not a mount point).
    public var freeBytes: UInt64?
    /// Whether the command wrote the epoch asked for; nil when it was not asked, or the marker
    /// did not prove the volume (the verdict says why).
    public var epochWritten: Bool?
    /// The epoch the volume held before (0: none).
    public var epochFound: UInt64?

    public init(exists: Bool, mounted: Bool, marker: Marker, markerWritten: Bool? = nil, writable: Bool?, writeError: String? = nil,
                freeBytes: UInt64?) {
        self.exists = exists
        self.mounted = mounted
        self.marker = marker
        self.markerWritten = markerWritten
        self.writable = writable
        self.writeError = writeError
        self.freeBytes = freeBytes
    }

    /// The one verdict on these facts for `volume`: nil when the volume is the right one, mounted
    /// and writable. Checks in order: mounted, then the id, then writable.
    public func verdict(for volume: VolumeSpec) -> SSHFailure? {
        guard exists else { return SSHFailure(.notMounted, "\(volume.path) does not exist") }
        guard mounted else { return SSHFailure(.notMounted, "\(volume.path) is not a mount point") }
        let markerPath = "\(volume.path)/\(volume.markerName)"
        switch marker {
        case .missing where volume.establishMarker:
            return SSHFailure(.markerMissing, "cannot write the volume-id marker at \(markerPath)"
                + (writable == false ? " (\(volume.path) is not writable\(writeError.map { ": \($0)" } ?? ""))" : ""))
        case .missing:
            return SSHFailure(.markerMissing, "no volume-id marker at \(markerPath): the marker written when the pool was made is gone (a wiped volume, or not the pool's)")
        case .unusable(let why):
            return SSHFailure(.wrongVolume, "the marker at \(markerPath) is unusable: \(why)")
        case .present(let id) where id.isEmpty:
            return SSHFailure(.wrongVolume, "the marker at \(markerPath) is empty")
        case .present(let id) where id != volume.expectedID:
            return SSHFailure(.wrongVolume, "volume id \(printable(id)) does not match the expected \(volume.expectedID)")
        case .present:
            break
        }
        guard writable == true else {
            return SSHFailure(.readOnly, "\(volume.path) is not writable" + (writeError.map { ": \($0)" } ?? ""))
        }
        if let epoch = volume.writeEpoch, epochWritten != true {
            if let found = epochFound, found > epoch {
                return SSHFailure(.wrongVolume, "the volume is at epoch \(found), newer than \(epoch): another promotion wrote it")
            }
            return SSHFailure(.readOnly, "cannot write epoch \(epoch) to \(volume.path)/.warmpool/epoch")
        }
        return nil
    }
}

/// One verification attempt: timings for every phase reached, and a verdict.
public struct SSHVerificationResult: Hashable, Sendable {
    public var instanceID: InstanceID
    public var host: String
    public var port: Int
    public var timings: SSHTimings
    /// `SHA256:...` as OpenSSH prints it, once the handshake got that far.
    public var hostKeyFingerprint: String?
    /// True when this contact pinned the host key (there was no pin before).
    public var pinnedOnThisContact: Bool
    public var volume: RemoteVolumeFacts?
    /// nil: verified.
    public var failure: SSHFailure?
    /// CLOCK_MONOTONIC nanoseconds when the verdict was reached (for measuring lag from outside).
    public var verdictAtNanoseconds: Int64

    public var isVerified: Bool { failure == nil }

    public init(instanceID: InstanceID, host: String, port: Int, timings: SSHTimings = SSHTimings(),
                hostKeyFingerprint: String? = nil, pinnedOnThisContact: Bool = false, volume: RemoteVolumeFacts? = nil,
                failure: SSHFailure? = nil, verdictAtNanoseconds: Int64 = 0) {
        self.instanceID = instanceID
        self.host = host
        self.port = port
        self.timings = timings
        self.hostKeyFingerprint = hostKeyFingerprint
        self.pinnedOnThisContact = pinnedOnThisContact
        self.volume = volume
        self.failure = failure
        self.verdictAtNanoseconds = verdictAtNanoseconds
    }
}

/// The outcome of readiness polling: the last attempt, how many there were, and the verdict.
public struct SSHReadinessResult: Hashable, Sendable {
    public var attempts: Int
    /// From the call to the verdict, in nanoseconds.
    public var elapsed: Int64
    public var last: SSHVerificationResult
    /// nil: verified. Otherwise a terminal failure of the last attempt, or `deadlineExceeded`.
    public var failure: SSHFailure?

    public var isVerified: Bool { failure == nil }

    public init(attempts: Int, elapsed: Int64, last: SSHVerificationResult, failure: SSHFailure?) {
        self.attempts = attempts
        self.elapsed = elapsed
        self.last = last
        self.failure = failure
    }
}

/// Raised to the verifier's alert handler; a mismatch may mean a replaced host or an attack.
public enum SSHAlert: Hashable, Sendable {
    case hostKeyMismatch(instanceID: InstanceID, host: String, port: Int, pinned: String, presented: String)
}

/// Remote text for messages and logs: printable ASCII only, at most 80 characters.
func printable(_ text: String) -> String {
    var out = ""
    for scalar in text.unicodeScalars.prefix(80) {
        out.unicodeScalars.append(scalar.value >= 0x20 && scalar.value < 0x7F ? scalar : "?")
    }
    return text.unicodeScalars.count > 80 ? out + "..." : out
}
