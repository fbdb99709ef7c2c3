import Foundation
import Testing
@testable import WarmpoolEngine
@testable import WarmpoolFailover
import WarmpoolModel
import WarmpoolSSH

/// The pure parts of the restore onto a new host: the command sent over SSH, how its answer is
/// read, and where each pool's snapshots live.
@Suite struct SnapshotRestoreTests {
    @Test func eachPoolHasAPrefixOfItsOwnAndNoStoreMeansNone() {
        #expect(AgentLaunch.snapshotPrefix(["WARMPOOL_S3_BUCKET": "b", "WARMPOOL_S3_PREFIX": "team/"], poolID: 12) == "team/pool-12/")
        #expect(AgentLaunch.snapshotPrefix(["WARMPOOL_S3_BUCKET": "b"], poolID: 7) == "pool-7/")
        #expect(AgentLaunch.snapshotPrefix(["WARMPOOL_FENCE_COMMAND": "x"], poolID: 7) == nil)
        let launch = AgentLaunch(controllers: "c:1", extraEnvironment: ["WARMPOOL_S3_BUCKET": "b", "WARMPOOL_S3_PREFIX": "team/"])
        let request = InstanceRequest(label: "wp-12-primary-e1-a1", offer: GPUOffer(id: 1, machineID: 77, gpuName: "g"), role: .primary,
                                      volume: 5, image: "i", diskGB: 1)
        #expect(launch.environment(agentID: "a", secretHex: "00", request: request, poolID: 12)["WARMPOOL_S3_PREFIX"] == "team/pool-12/")
    }

    @Test func theCommandCarriesTheStoreAndRemovesTheOldIdentity() {
        let command = SnapshotRestore.command(
            restore: SnapshotRestore.defaultRestoreCommand,
            environment: ["WARMPOOL_S3_SECRET_ACCESS_KEY": "it's secret", "WARMPOOL_S3_PREFIX": "pool-12/"], volumePath: "/data")
        #expect(command == #"export WARMPOOL_S3_PREFIX='pool-12/' WARMPOOL_S3_SECRET_ACCESS_KEY='it'\''s secret' WARMPOOL_VOLUME_PATH='/data' && warmpool-snapshot restore --target "$WARMPOOL_VOLUME_PATH" && rm -rf "$WARMPOOL_VOLUME_PATH"/'.warmpool-volume-id' "$WARMPOOL_VOLUME_PATH"/.warmpool"#)
    }

    @Test func theAnswerIsReadFromTheSummaryOrTheFailure() {
        let printed = Array(#"{"bytes":4096,"chunks":3,"files":2,"seconds":0.5,"snapshot":"20261204T120000.250Z-1a2b3c4d"}"#.utf8)
        let restored = SnapshotRestore.outcome(.success(RemoteCommandOutput(stdout: printed, stderr: [], exitStatus: 0)))
        #expect(restored == .restored(snapshot: "20261204T120000.250Z-1a2b3c4d",
                                      takenAt: Instant(nanosecondsSinceEpoch: 1_796_385_600_250_000_000), files: 2, bytes: 4096))
        let failed = SnapshotRestore.outcome(.success(RemoteCommandOutput(stdout: [], stderr: Array("Error: no snapshot in the store\n".utf8), exitStatus: 1)))
        #expect(failed == .failed(message: "exit status 1: Error: no snapshot in the store"))
        #expect(SnapshotRestore.outcome(.failure(SSHFailure(.refused, "connection refused"))) == .notReady(message: SSHFailure(.refused, "connection refused").description))
        if case .failed = SnapshotRestore.outcome(.failure(SSHFailure(.hostKeyMismatch, "key"))) {} else { Issue.record("a wrong key is no 'not yet'") }
    }

    @Test(arguments: [
        ("20261204T120000.250Z-1a2b3c4d", Optional(Instant(nanosecondsSinceEpoch: 1_796_385_600_250_000_000))),
        ("19700101T000000.000Z-x", Optional(Instant(nanosecondsSinceEpoch: 0))),
        ("20260231T000000.000Z-x", nil),  // no 31 February
        ("2026-12-04T12:00:00Z", nil),
        ("", nil),
    ])
    func snapshotIdsBeginWithWhenTheyWereTaken(_ id: String, _ expected: Instant?) {
        #expect(SnapshotID.instant(of: id) == expected)
    }
}
