import Foundation
import WarmpoolEngine
import WarmpoolJSON
import WarmpoolModel
import WarmpoolSSH

/// Carries out the engine's `restoreSnapshot`: on the new primary itself, over SSH with its pinned
/// host key, `warmpool-snapshot restore` streams the newest complete snapshot onto the volume,
/// every chunk verified before it is written. The store's settings travel in the command's
/// environment (an SSH session gets none of the instance's: Vast.ai's docs, VASTAI-SIM.md), so
/// they are visible to the instance's root, which holds them in its agent's environment anyway.
/// The old volume's identity marker and epoch are removed after: they are not data, and the
/// verification that follows writes the new volume's.
public struct SnapshotRestore: Sendable {
    let verifier: SSHVerifier
    let restoreCommand: String
    /// Run on the primary for a snapshot now (`warmpoolctl snapshot`).
    let snapshotCommand: String
    /// The store's settings (`WARMPOOL_S3_*`, `WARMPOOL_SNAPSHOT_KEY_FILE`); each pool's prefix is added.
    let environment: [String: String]
    let volumePath: String
    let timeout: Duration

    public static let defaultRestoreCommand = #"warmpool-snapshot restore --target "$WARMPOOL_VOLUME_PATH""#
    public static let defaultSnapshotCommand = #"warmpool-snapshot create --source "$WARMPOOL_SNAPSHOT_SOURCE""#

    /// `environment`: the store's settings (`WARMPOOL_S3_*`, `WARMPOOL_SNAPSHOT_KEY_FILE`).
    static func command(restore: String, environment: [String: String], volumePath: String, markerName: String = ".warmpool-volume-id") -> String {
        exports(["WARMPOOL_VOLUME_PATH": volumePath].merging(environment) { first, _ in first }) + " && \(restore) && rm -rf \"$WARMPOOL_VOLUME_PATH\"/\(VerificationCommand.shellQuote(markerName)) \"$WARMPOOL_VOLUME_PATH\"/.warmpool"
    }

    /// `export NAME='value' …`, names sorted: the prefix of every command run on an instance (an
    /// SSH session gets none of its environment).
    static func exports(_ variables: [String: String]) -> String {
        "export " + variables.sorted { $0.key < $1.key }.map { "\($0.key)=\(VerificationCommand.shellQuote($0.value))" }.joined(separator: " ")
    }

    /// Why a run that printed no summary failed: its exit status and the end of its standard error.
    static func failure(_ output: RemoteCommandOutput) -> String {
        let stderr = String(decoding: output.stderr.suffix(400), as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        return (output.exitStatus.map { "exit status \($0)" } ?? "killed") + (stderr.isEmpty ? "" : ": \(stderr)")
    }

    /// The store's settings for one pool: its snapshots under a prefix of their own.
    private func environment(for poolID: PoolID) -> [String: String] {
        var environment = self.environment
        if let prefix = AgentLaunch.snapshotPrefix(environment, poolID: poolID) { environment["WARMPOOL_S3_PREFIX"] = prefix }
        return environment
    }

    /// The last JSON object a run printed on its standard output: `warmpool-snapshot`'s summary.
    static func summary(_ stdout: [UInt8]) -> JSONValue? {
        String(decoding: stdout, as: UTF8.self).split(separator: "\n").reversed()
            .lazy.compactMap { try? JSONParser.parse(Array($0.utf8)) }.first { $0.objectValue != nil }
    }

    /// `snapshot`: nil restores the newest.
    func restore(poolID: PoolID, instance: InstanceID, ssh: SSHEndpoint?, snapshot: String?) async -> RestoreOutcome {
        guard let ssh else { return .notReady(message: "the provider shows no SSH address for instance \(instance) yet") }
        let restore = restoreCommand + (snapshot.map { " --snapshot \(VerificationCommand.shellQuote($0))" } ?? "")
        let command = Self.command(restore: restore, environment: environment(for: poolID), volumePath: volumePath)
        do {
            let result = try await verifier.run(command, instanceID: instance, host: ssh.host, port: ssh.port, timeout: timeout.nanoseconds)
            return Self.outcome(result)
        } catch {
            return .notReady(message: "the restore could not run: \(error)")
        }
    }

    /// Runs `snapshotCommand` on the pool's primary now; the tool's JSON summary, or why not.
    func takeSnapshot(poolID: PoolID, instance: InstanceID, ssh: SSHEndpoint) async -> Result<JSONValue, SnapshotFailure> {
        let variables = ["WARMPOOL_VOLUME_PATH": volumePath, "WARMPOOL_SNAPSHOT_SOURCE": volumePath].merging(environment(for: poolID)) { first, _ in first }
        let command = Self.exports(variables) + " && \(snapshotCommand)"
        do {
            let result = try await verifier.run(command, instanceID: instance, host: ssh.host, port: ssh.port, timeout: timeout.nanoseconds)
            switch result {
            case .failure(let failure):
                return .failure(SnapshotFailure(description: failure.description))
            case .success(let output):
                guard output.exitStatus == 0, let summary = Self.summary(output.stdout) else {
                    return .failure(SnapshotFailure(description: Self.failure(output)))
                }
                return .success(summary)
            }
        } catch {
            return .failure(SnapshotFailure(description: "could not run: \(error)"))
        }
    }

    struct SnapshotFailure: Error, CustomStringConvertible {
        var description: String
    }

    /// An SSH failure that a booting instance gets over is "not ready"; the rest, and a command
    /// that ran and failed, is a failed restore.
    static func outcome(_ result: Result<RemoteCommandOutput, SSHFailure>) -> RestoreOutcome {
        switch result {
        case .failure(let failure):
            if failure.reason != .hostKeyMismatch, ReadinessPolicy.defaultRetryable.contains(failure.reason) || failure.reason == .hostKeyUnattested {
                return .notReady(message: failure.description)
            }
            return .failed(message: failure.description)
        case .success(let output):
            guard output.exitStatus == 0, let summary = summary(output.stdout), let snapshot = summary["snapshot"]?.stringValue else {
                return .failed(message: failure(output))
            }
            return .restored(snapshot: snapshot, takenAt: SnapshotID.instant(of: snapshot),
                             files: Int(summary["files"]?.intValue ?? 0), bytes: summary["bytes"]?.intValue ?? 0)
        }
    }
}
