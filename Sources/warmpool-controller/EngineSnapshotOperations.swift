import Foundation
import Logging
import WarmpoolAPI
import WarmpoolFailover
import WarmpoolHTTP
import WarmpoolJSON
import WarmpoolModel
import WarmpoolStorage
import WarmpoolStore

/// The snapshot routes carried out: the store listed from here (snapshot ids are object names, so
/// no key is needed, and a lost host's pool can still be listed), a snapshot now and a restore by
/// the failover engine on the instances.
struct EngineSnapshotOperations: SnapshotOperations {
    let coordinator: FailoverCoordinator
    let store: S3Client
    /// The deployment's `WARMPOOL_S3_*` settings, as the instances get them.
    let environment: [String: String]
    let timeout: Duration

    /// nil when the settings name no store (endpoint, bucket, key id and secret).
    init?(coordinator: FailoverCoordinator, environment: [String: String], timeout: Duration, logger: Logger) {
        guard let endpoint = environment["WARMPOOL_S3_ENDPOINT"], let bucket = environment["WARMPOOL_S3_BUCKET"],
            let keyID = environment["WARMPOOL_S3_ACCESS_KEY_ID"]
        else { return nil }
        var secret = environment["WARMPOOL_S3_SECRET_ACCESS_KEY"]
        if let path = environment["WARMPOOL_S3_SECRET_FILE"] {
            secret = (try? String(contentsOfFile: path, encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines)
        }
        guard let secret, !secret.isEmpty else { return nil }
        self.coordinator = coordinator
        self.environment = environment
        self.timeout = timeout
        self.store = S3Client(
            configuration: .init(endpoint: endpoint, region: environment["WARMPOOL_S3_REGION"] ?? "us-east-1", bucket: bucket,
                                 credentials: S3Credentials(accessKeyID: keyID, secretAccessKey: secret)),
            http: HTTPClient(), logger: logger)
    }

    func snapshots(_ poolID: PoolID) async throws -> [SnapshotListing] {
        guard await coordinator.record(poolID) != nil else { throw PoolOperationError.unknownPool(poolID) }
        let prefix = (AgentLaunch.snapshotPrefix(environment, poolID: poolID) ?? "") + "snapshots/"
        let objects: [S3Object]
        do {
            objects = try await store.list(prefix: prefix)
        } catch {
            throw PoolOperationError.providerFailed("the snapshot store: \(error)")
        }
        return objects.map { object in
            let id = String(object.key.dropFirst(prefix.count))
            let takenAt = SnapshotID.instant(of: id).map { Date(timeIntervalSince1970: $0.secondsSinceEpoch) }
            return SnapshotListing(id: id, takenAt: takenAt, manifestBytes: object.size)
        }.sorted { $0.id > $1.id }
    }

    func snapshotNow(_ poolID: PoolID) async throws -> JSONValue {
        try await coordinatorErrorsMapped { try await coordinator.snapshotNow(poolID: poolID) }
    }

    func restore(_ poolID: PoolID, snapshot: String?) async throws -> PoolRecord {
        _ = try await coordinatorErrorsMapped { try await coordinator.restore(poolID: poolID, snapshot: snapshot, timeout: timeout) }
        guard let record = await coordinator.record(poolID) else { throw PoolOperationError.unknownPool(poolID) }
        return record
    }
}
