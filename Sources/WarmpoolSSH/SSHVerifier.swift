import WarmpoolModel
import Logging
import NIOPosix

/// Where the host key an instance must present comes from.
public enum HostKeyTrust: String, Hashable, Sendable, CaseIterable {
    /// Only from the pin store, which pins what the instance's agent reported over its
    /// authenticated session: an instance with no pin yet is not contacted
    /// (`host_key_unattested`), so whoever answers at the address first gains nothing.
    case attested
    /// Whatever key answers first is pinned (trust on first use): for instances that run no
    /// agent, or agents too old to report. The first contact is then unauthenticated.
    case firstUse = "first-use"
}

/// Proves a freshly started instance usable: SSH answers with the pinned host key (with
/// `.firstUse`, one that gets pinned now, on first contact), our ed25519 key logs in, and the
/// fixed verification command finds the right volume mounted and writable.
///
/// Every libssh2 call runs on `threadPool` (a NIOThreadPool: plain threads that may block), never
/// on an event loop or the Swift concurrency pool. One attempt holds one pool thread for at most
/// its deadline; the waits between readiness attempts hold none.
public final class SSHVerifier: Sendable {
    public let credentials: SSHCredentials
    public let pins: any HostKeyPinStore
    public let trust: HostKeyTrust
    private let threadPool: NIOThreadPool
    private let alert: @Sendable (SSHAlert) -> Void
    private let logger: Logger

    /// - Parameters:
    ///   - threadPool: where the blocking libssh2 work runs; `.singleton` has one thread per core.
    ///   - alert: called for every host key mismatch (after it is logged at `critical`).
    public init(credentials: SSHCredentials, pins: any HostKeyPinStore, trust: HostKeyTrust = .firstUse,
                threadPool: NIOThreadPool = .singleton, logger: Logger, alert: @escaping @Sendable (SSHAlert) -> Void = { _ in }) {
        self.credentials = credentials
        self.pins = pins
        self.trust = trust
        self.threadPool = threadPool
        self.logger = logger
        self.alert = alert
    }

    /// One verification with an overall timeout (nanoseconds). SSH-level failures are in the
    /// result; this throws only when the check could not be run (pin store error, cancellation,
    /// thread pool shut down).
    public func verify(_ target: SSHTarget, timeout: Int64 = 10_000_000_000) async throws -> SSHVerificationResult {
        let deadline = MonotonicClock.now() + timeout
        let (raw, pinned) = try await attempt(target, connectDeadline: deadline, deadline: deadline)
        let result = try await conclude(raw, target: target, pinned: pinned)
        log(result, target: target, level: result.isVerified ? .info : .warning)
        return result
    }

    /// Polls from "instance running" until the instance verifies, a failure that will not fix
    /// itself occurs, or the policy's deadline passes. Attempts start every `pollInterval` while
    /// they fail fast (refused), so the verdict follows sshd's first `accept` by at most one
    /// interval plus one verification. Throws on cancellation or a pin store error.
    public func waitUntilReady(_ target: SSHTarget, policy: ReadinessPolicy = ReadinessPolicy()) async throws -> SSHReadinessResult {
        let origin = MonotonicClock.now()
        var schedule = ReadinessSchedule(policy: policy)
        var logger = self.logger
        logger[metadataKey: "ssh.instance_id"] = "\(target.instanceID)"
        logger[metadataKey: "ssh.host"] = "\(target.host):\(target.port)"
        var attempts = 0
        var lastReason: SSHFailure.Reason?
        while let planned = schedule.pending {
            let delay = origin + planned.startAt - MonotonicClock.now()
            if delay > 0 { try await Task.sleep(nanoseconds: UInt64(delay)) }
            try Task.checkCancellation()
            attempts += 1
            let startedAt = MonotonicClock.now()
            let (raw, pinned) = try await attempt(target, connectDeadline: startedAt + planned.connectTimeout,
                                                  deadline: origin + planned.deadline)
            let result = try await conclude(raw, target: target, pinned: pinned)
            let decision = schedule.attemptFinished(result.failure, now: MonotonicClock.now() - origin)
            if let reason = result.failure?.reason, reason != lastReason {
                logger.debug("not ready yet", metadata: [
                    "ssh.attempt": "\(attempts)", "ssh.reason": "\(reason.rawValue)", "ssh.detail": "\(result.failure!.detail)",
                ])
            }
            lastReason = result.failure?.reason
            switch decision {
            case .attempt:
                continue
            case .verified:
                let elapsed = MonotonicClock.now() - origin
                log(result, target: target, level: .info, extra: ["ssh.attempts": "\(attempts)", "ssh.waited_ms": "\(elapsed / 1_000_000)"])
                return SSHReadinessResult(attempts: attempts, elapsed: elapsed, last: result, failure: nil)
            case .giveUp(let failure):
                let elapsed = MonotonicClock.now() - origin
                logger.warning("instance did not become ready", metadata: [
                    "ssh.attempts": "\(attempts)", "ssh.reason": "\(failure.reason.rawValue)", "ssh.detail": "\(failure.detail)",
                ])
                return SSHReadinessResult(attempts: attempts, elapsed: elapsed, last: result, failure: failure)
            }
        }
        // Unreachable: the schedule always has a pending attempt until it decides.
        throw CancellationError()
    }

    /// Runs one attempt on the thread pool, against the pin in force as it starts (looked up
    /// afresh each time: an agent's report may have arrived since the last one).
    private func attempt(_ target: SSHTarget, connectDeadline: Int64, deadline: Int64) async throws
        -> (SSHVerificationResult, pinned: String?)
    {
        let pinned = try await pins.pinnedFingerprint(for: target.instanceID)
        if pinned == nil, trust == .attested {
            var result = SSHVerificationResult(instanceID: target.instanceID, host: target.host, port: target.port)
            result.failure = SSHFailure(.hostKeyUnattested,
                                        "no host key is pinned for instance \(target.instanceID) and its agent has reported none over its authenticated session; not connecting")
            return (result, nil)
        }
        let credentials = self.credentials
        let result = try await threadPool.runIfActive {
            Self.runAttempt(target, credentials: credentials, pinned: pinned, connectDeadline: min(connectDeadline, deadline),
                            deadline: deadline)
        }
        return (result, pinned)
    }

    /// Runs blocking libssh2 work on the verifier's thread pool (never an event loop).
    func runBlocking<T: Sendable>(_ body: @escaping @Sendable () -> T) async throws -> T {
        try await threadPool.runIfActive(body)
    }

    /// Pins on first successful contact (`.firstUse` only); raises the alert on a mismatch.
    private func conclude(_ raw: SSHVerificationResult, target: SSHTarget, pinned: String?) async throws -> SSHVerificationResult {
        var result = raw
        if result.isVerified, pinned == nil, trust == .firstUse, let fingerprint = result.hostKeyFingerprint {
            let inForce = try await pins.pinIfAbsent(fingerprint, for: target.instanceID)
            if inForce == fingerprint {
                result.pinnedOnThisContact = true
                logger.notice("pinned host key on first contact", metadata: [
                    "ssh.instance_id": "\(target.instanceID)", "ssh.fingerprint": "\(fingerprint)",
                ])
            } else {
                // Someone pinned a different key while we were connected.
                result.failure = Self.mismatch(target: target, pinned: inForce, presented: fingerprint)
            }
        }
        if result.failure?.reason == .hostKeyMismatch, let presented = result.hostKeyFingerprint {
            var pin = pinned
            if pin == nil { pin = try await pins.pinnedFingerprint(for: target.instanceID) }
            let pinnedText = pin ?? "(none)"
            logger.critical("SSH host key mismatch: refusing the instance", metadata: [
                "ssh.instance_id": "\(target.instanceID)", "ssh.host": "\(target.host):\(target.port)",
                "ssh.pinned": "\(pinnedText)", "ssh.presented": "\(presented)",
            ])
            alert(.hostKeyMismatch(instanceID: target.instanceID, host: target.host, port: target.port, pinned: pinnedText,
                                   presented: presented))
        }
        return result
    }

    private func log(_ result: SSHVerificationResult, target: SSHTarget, level: Logger.Level, extra: Logger.Metadata = [:]) {
        var metadata: Logger.Metadata = [
            "ssh.instance_id": "\(target.instanceID)", "ssh.host": "\(target.host):\(target.port)",
            "ssh.total_ms": "\(SSHTimings.milliseconds(result.timings.total))",
        ]
        for phase in SSHPhase.allCases {
            if let value = result.timings[phase] { metadata["ssh.\(phase.rawValue)_ms"] = "\(SSHTimings.milliseconds(value))" }
        }
        if let failure = result.failure {
            metadata["ssh.reason"] = "\(failure.reason.rawValue)"
            metadata["ssh.detail"] = "\(failure.detail)"
            logger.log(level: level, "instance not verified", metadata: metadata.merging(extra) { $1 })
        } else {
            if let free = result.volume?.freeBytes { metadata["ssh.volume_free_bytes"] = "\(free)" }
            logger.log(level: level, "instance verified", metadata: metadata.merging(extra) { $1 })
        }
    }

    static func mismatch(target: SSHTarget, pinned: String, presented: String) -> SSHFailure {
        SSHFailure(.hostKeyMismatch, phase: .handshake,
                   "host key \(presented) does not match the key pinned for instance \(target.instanceID) (\(pinned)); not authenticating")
    }

    /// One attempt, start to verdict. Blocking; frees every C resource before it returns.
    static func runAttempt(_ target: SSHTarget, credentials: SSHCredentials, pinned: String?, connectDeadline: Int64,
                           deadline: Int64) -> SSHVerificationResult {
        let start = MonotonicClock.now()
        var result = SSHVerificationResult(instanceID: target.instanceID, host: target.host, port: target.port)
        var mark = start
        func lap() -> Int64 {
            let now = MonotonicClock.now()
            defer { mark = now }
            return now - mark
        }
        func finish(_ failure: SSHFailure?) -> SSHVerificationResult {
            result.failure = failure
            result.verdictAtNanoseconds = MonotonicClock.now()
            result.timings.total = result.verdictAtNanoseconds - start
            return result
        }

        let session: SSHSession
        switch SSHSession.connect(host: target.host, port: target.port, deadline: connectDeadline) {
        case .failure(let failure):
            result.timings.connect = lap()
            return finish(failure)
        case .success(let connected):
            session = connected
            result.timings.connect = lap()
        }
        defer { session.close() }

        switch session.handshake(deadline: deadline) {
        case .failure(let failure):
            result.timings.handshake = lap()
            return finish(failure)
        case .success(let fingerprint):
            result.timings.handshake = lap()
            result.hostKeyFingerprint = fingerprint
            if let pinned, pinned != fingerprint {
                return finish(mismatch(target: target, pinned: pinned, presented: fingerprint))
            }
        }

        let authenticated = session.authenticate(username: target.username, credentials: credentials, deadline: deadline)
        result.timings.auth = lap()
        if case .failure(let failure) = authenticated { return finish(failure) }

        let nonce = VerificationCommand.makeNonce()
        let output = session.run(VerificationCommand.commandLine(volume: target.volume, nonce: nonce), deadline: deadline)
        switch output {
        case .failure(let failure):
            result.timings.command = lap()
            return finish(failure)
        case .success(let output):
            let facts: RemoteVolumeFacts
            do throws(VerificationCommand.ParseError) {
                facts = try VerificationCommand.parse(output.stdout, nonce: nonce)
            } catch {
                result.timings.command = lap()
                let stderr = printable(String(decoding: output.stderr.prefix(200), as: UTF8.self))
                return finish(SSHFailure(.commandFailed, phase: .command,
                                         "unusable answer from the verification command: \(error.problem)"
                                            + " (exit status \(output.exitStatus.map(String.init) ?? "unknown")"
                                            + (stderr.isEmpty ? ")" : ", stderr: \(stderr))")))
            }
            result.timings.command = lap()
            result.volume = facts
            return finish(facts.verdict(for: target.volume))
        }
    }
}
