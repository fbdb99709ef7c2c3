import Foundation
import WarmpoolEngine
import WarmpoolModel
import WarmpoolSSH

/// Carries out the engine's `verify`: SSH answers with the pinned host key, and the expected
/// volume is mounted at the volume path and writable. Polls briefly while the instance boots;
/// what will not fix itself (a wrong host key or volume) is a verdict at once.
struct VolumeVerification: Sendable {
    let verifier: SSHVerifier
    let volumePath: String
    /// How long one `verify` keeps trying before it reports "not ready" to the engine, which
    /// decides whether to ask again.
    let attemptWindow: Duration
    let clock: any WallClock

    struct Verdict: Sendable {
        var outcome: VerificationOutcome
        /// Set when the instance presented a host key other than the one pinned for it: beside
        /// the failed verification, an alert (someone else may answer at its address).
        var hostKeyMismatch: String? = nil
    }

    /// `epoch`: the pool's epoch, written to the volume's `.warmpool/epoch` once it is proven the
    /// pool's (before a promotion grants anything, so an old primary that wakes reads it and
    /// fences for good).
    func verdict(instance: InstanceID, ssh: SSHEndpoint?, volume: VolumeID, marker: VolumeMarkerCheck, epoch: Epoch) async -> Verdict {
        guard let ssh else { return Verdict(outcome: .notReady(message: "the provider shows no SSH address for instance \(instance) yet")) }
        let target: SSHTarget
        do {
            target = try SSHTarget(
                instanceID: instance, host: ssh.host, port: ssh.port, username: "root",
                volume: VolumeSpec(path: volumePath, expectedID: "\(volume)", establishMarker: marker == .establish,
                                   writeEpoch: epoch.rawValue))
        } catch {
            return Verdict(outcome: .failed(message: "cannot verify instance \(instance): \(error)"))
        }
        let policy = ReadinessPolicy(deadline: attemptWindow, pollInterval: .milliseconds(20))
        do {
            let result = try await verifier.waitUntilReady(target, policy: policy)
            guard let failure = result.failure else {
                // SSH was ready when the login finished; the volume check (the command) came after.
                let command = Duration.nanoseconds(result.last.timings.command ?? 0)
                return Verdict(outcome: .passed(sshReadyAt: clock.now() - command, markerWritten: result.last.volume?.markerWritten == true))
            }
            if failure.reason == .markerMissing { return Verdict(outcome: .markerMissing(message: failure.description)) }
            if failure.reason == .deadlineExceeded || policy.retryable.contains(failure.reason) {
                return Verdict(outcome: .notReady(message: failure.description))
            }
            return Verdict(outcome: .failed(message: failure.description),
                           hostKeyMismatch: failure.reason == .hostKeyMismatch ? failure.description : nil)
        } catch {
            return Verdict(outcome: .notReady(message: "verification could not run: \(error)"))
        }
    }
}
