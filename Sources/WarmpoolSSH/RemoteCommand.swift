import Logging
import WarmpoolModel

/// What a command run on an instance over SSH printed, and how it ended.
public struct RemoteCommandOutput: Sendable, Equatable {
    public var stdout: [UInt8]
    public var stderr: [UInt8]
    /// nil when sshd sent none (the command was killed by a signal).
    public var exitStatus: Int32?

    public init(stdout: [UInt8], stderr: [UInt8], exitStatus: Int32?) {
        self.stdout = stdout
        self.stderr = stderr
        self.exitStatus = exitStatus
    }
}

extension SSHVerifier {
    /// Runs `command` on the instance as `username`, under the same host key rules as a
    /// verification (the pin in force, or none with `.attested` trust: not contacted), and waits
    /// for it to end by `timeout` (nanoseconds). SSH-level failures (refused, unattested, a wrong
    /// key, a timeout) are the `failure` side; a command that ran and failed is an output with its
    /// exit status. Blocking work runs on the verifier's thread pool. Output is capped at `limit`
    /// bytes per stream.
    public func run(
        _ command: String, instanceID: InstanceID, host: String, port: Int, username: String = "root", timeout: Int64,
        limit: Int = 1 << 20
    ) async throws -> Result<RemoteCommandOutput, SSHFailure> {
        let pinned = try await pins.pinnedFingerprint(for: instanceID)
        if pinned == nil, trust == .attested {
            return .failure(SSHFailure(.hostKeyUnattested, "no host key is pinned for instance \(instanceID) and its agent has reported none; not connecting"))
        }
        guard let pinned else {
            // First use is for verification, which pins; a command waits for that pin.
            return .failure(SSHFailure(.hostKeyUnattested, "no host key is pinned for instance \(instanceID) yet; not connecting"))
        }
        let credentials = self.credentials
        return try await runBlocking {
            let deadline = MonotonicClock.now() + timeout
            let session: SSHSession
            switch Self.connectPinned(instanceID: instanceID, host: host, port: port, pinned: pinned, deadline: deadline) {
            case .failure(let failure): return .failure(failure)
            case .success(let connected): session = connected
            }
            defer { session.close() }
            if case .failure(let failure) = session.authenticate(username: username, credentials: credentials, deadline: deadline) {
                return .failure(failure)
            }
            return session.run(command, deadline: deadline, limit: limit).map {
                RemoteCommandOutput(stdout: $0.stdout, stderr: $0.stderr, exitStatus: $0.exitStatus)
            }
        }
    }

    /// The instance's host key as a known_hosts key (`TYPE BASE64`), once it matches the pin in
    /// force: what another machine needs to check the instance's sshd by itself (the primary's
    /// agent syncing to a CPU standby). Nothing is authenticated. Same host key rules as `run`.
    public func pinnedHostKey(instanceID: InstanceID, host: String, port: Int, timeout: Int64) async throws -> Result<String, SSHFailure> {
        guard let pinned = try await pins.pinnedFingerprint(for: instanceID) else {
            return .failure(SSHFailure(.hostKeyUnattested, "no host key is pinned for instance \(instanceID) yet; not connecting"))
        }
        return try await runBlocking {
            switch Self.connectPinned(instanceID: instanceID, host: host, port: port, pinned: pinned, deadline: MonotonicClock.now() + timeout) {
            case .failure(let failure):
                return .failure(failure)
            case .success(let session):
                defer { session.close() }
                guard let line = session.hostKeyLine() else {
                    return .failure(SSHFailure(.handshakeFailed, phase: .handshake, "the server's host key could not be read"))
                }
                return .success(line)
            }
        }
    }

    /// Blocking: a session through the key exchange, its host key the pinned one (nothing
    /// authenticated yet). The caller closes it.
    private static func connectPinned(instanceID: InstanceID, host: String, port: Int, pinned: String, deadline: Int64) -> Result<SSHSession, SSHFailure> {
        let session: SSHSession
        switch SSHSession.connect(host: host, port: port, deadline: min(deadline, MonotonicClock.now() + 5_000_000_000)) {
        case .failure(let failure): return .failure(failure)
        case .success(let connected): session = connected
        }
        switch session.handshake(deadline: deadline) {
        case .failure(let failure):
            session.close()
            return .failure(failure)
        case .success(let fingerprint) where fingerprint != pinned:
            session.close()
            return .failure(SSHFailure(.hostKeyMismatch, phase: .handshake,
                                       "host key \(fingerprint) does not match the key pinned for instance \(instanceID) (\(pinned)); not authenticating"))
        case .success:
            return .success(session)
        }
    }
}
