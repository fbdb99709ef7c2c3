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

    /// `epoch`: the pool's epoch, written to the volume's `.warmpool/epoch` once it is proven the
    /// pool's (before a promotion grants anything, so an old primary that wakes reads it and
    /// fences for good).
    struct Verdict: Sendable {
        var outcome: VerificationOutcome
        /// Set when the instance presented a host key other than the one pinned for it: beside
        /// the failed verification, an alert (someone else may answer at its address).
        var hostKeyMismatch: String? = nil
    }

    func verdict(instance: InstanceID, ssh: SSHEndpoint?, volume: VolumeID, marker: VolumeMarkerCheck, epoch: Epoch) async -> Verdict {
        let outcome = await run(instance: instance, ssh: ssh, volume: volume, marker: marker, epoch: epoch)
        guard case .failed(let message) = outcome.0 else { return Verdict(outcome: outcome.0) }
        return Verdict(outcome: outcome.0, hostKeyMismatch: outcome.1 == .hostKeyMismatch ? message : nil)
    }

    private func run(instance: InstanceID, ssh: SSHEndpoint?, volume: VolumeID, marker: VolumeMarkerCheck, epoch: Epoch) async
        -> (VerificationOutcome, SSHFailure.Reason?)
    {
        guard let ssh else { return (.notReady(message: "the provider shows no SSH address for instance \(instance) yet"), nil) }
        let target: SSHTarget
        do {
            target = try SSHTarget(
                instanceID: instance, host: ssh.host, port: ssh.port, username: "root",
                volume: VolumeSpec(path: volumePath, expectedID: "\(volume)", establishMarker: marker == .establish,
                                   writeEpoch: epoch.rawValue))
        } catch {
            return (.failed(message: "cannot verify instance \(instance): \(error)"), nil)
        }
        let policy = ReadinessPolicy(deadline: attemptWindow, pollInterval: .milliseconds(20))
        do {
            let result = try await verifier.waitUntilReady(target, policy: policy)
            guard let failure = result.failure else {
                // SSH was ready when the login finished; the volume check (the command) came after.
                let command = Duration.nanoseconds(result.last.timings.command ?? 0)
                return (.passed(sshReadyAt: clock.now() - command, markerWritten: result.last.volume?.markerWritten == true), nil)
            }
            if failure.reason == .markerMissing { return (.markerMissing(message: failure.description), failure.reason) }
            if failure.reason == .deadlineExceeded || policy.retryable.contains(failure.reason) {
                return (.notReady(message: failure.description), failure.reason)
            }
            return (.failed(message: failure.description), failure.reason)
        } catch {
            return (.notReady(message: "verification could not run: \(error)"), nil)
        }
    }
}
