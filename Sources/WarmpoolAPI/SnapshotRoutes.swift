import Foundation
import Hummingbird
import WarmpoolJSON
import WarmpoolModel
import WarmpoolStore

/// One snapshot of a pool's volume in the store.
public struct SnapshotListing: Sendable, Equatable {
    public var id: String
    /// From the id (its first part is when it was taken, UTC).
    public var takenAt: Date?
    /// The sealed manifest's size (the chunks are shared between snapshots).
    public var manifestBytes: Int64

    public init(id: String, takenAt: Date?, manifestBytes: Int64) {
        self.id = id
        self.takenAt = takenAt
        self.manifestBytes = manifestBytes
    }
}

/// What the snapshot routes need: the store's listing, a snapshot now, a restore onto a new volume.
public protocol SnapshotOperations: Sendable {
    /// The pool's snapshots, newest first.
    func snapshots(_ poolID: PoolID) async throws -> [SnapshotListing]
    /// A snapshot of the pool's volume now, taken on its primary; the tool's summary.
    func snapshotNow(_ poolID: PoolID) async throws -> JSONValue
    /// `snapshot` (the newest when nil) onto a new volume, the primary fenced first.
    func restore(_ poolID: PoolID, snapshot: String?) async throws -> PoolRecord
}

/// GET /warmpool/snapshots/{machine_id}, POST /warmpool/snapshot/{machine_id} (now) and
/// POST /warmpool/restore/{machine_id} {"snapshot": ID}: a controller without a snapshot store
/// answers 409 with why.
struct SnapshotRoutes {
    let dependencies: APIDependencies

    private func operations() throws -> any SnapshotOperations {
        guard let snapshots = dependencies.snapshots else {
            throw PoolOperationError.conflict("this controller has no snapshot store configured (--agent-env WARMPOOL_S3_*)")
        }
        return snapshots
    }

    func register(on group: RouterGroup<APIRequestContext>) {
        group.get("snapshots/:machine_id") { _, context in
            let poolID = try RequestInput.poolID(context)
            let listed = try await operations().snapshots(poolID)
            return JSONResponse.ok(.object([
                ("machine_id", .id(poolID)),
                ("snapshots", .array(listed.map { snapshot in
                    .object([
                        ("id", .string(snapshot.id)),
                        ("taken_at", .date(snapshot.takenAt)),
                        ("manifest_bytes", .int(snapshot.manifestBytes)),
                    ])
                })),
                ("count", .int(Int64(listed.count))),
            ]))
        }
        group.post("snapshot/:machine_id") { request, context in
            let poolID = try RequestInput.poolID(context)
            _ = try await RequestInput.jsonObject(request)
            let summary = try await operations().snapshotNow(poolID)
            return JSONResponse.ok(.object([("success", .bool(true)), ("snapshot", summary)]))
        }
        group.post("restore/:machine_id") { request, context in
            let poolID = try RequestInput.poolID(context)
            let snapshot = try await RequestInput.jsonObject(request).string("snapshot", maximumLength: 64)
            if let snapshot, snapshot.isEmpty || !snapshot.utf8.allSatisfy({ Self.idCharacters.contains($0) }) {
                throw APIError.badRequest("snapshot must be a snapshot id (letters, digits, '.', '-'), got \"\(snapshot)\"")
            }
            let pool = try await operations().restore(poolID, snapshot: snapshot)
            let protection = await dependencies.operations.protections()[poolID]
            let moved = pool.state == .active || pool.state == .recovering || pool.state == .degraded
            return JSONResponse.ok(.object([
                ("success", .bool(moved)),
                ("message", .string("machine \(poolID): \(snapshot.map { "snapshot \($0)" } ?? "the newest snapshot") restored onto volume "
                                    + "\(pool.volumeID.map(String.init) ?? "none"); pool \(pool.state.rawValue)")),
                ("status", Present.poolStatus(pool, lastHeartbeat: nil, protection: protection)),
            ]))
        }
    }

    private static let idCharacters = Set(Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789.-".utf8))
}
