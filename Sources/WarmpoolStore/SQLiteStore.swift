import Foundation
import WarmpoolModel
import GRDB
import Logging
import Synchronization

/// The embedded store: one SQLite file in WAL mode with `synchronous=FULL`, so a committed
/// transition survives a SIGKILL or a power cut. GRDB runs every statement on its own queues,
/// never on the caller's thread, so the async methods are safe to await from an event loop.
public final class SQLiteStore: WarmpoolStore {
    private let database: DatabasePool
    public let path: String
    private let agentKeyObservers = Mutex<[@Sendable () async -> Void]>([])

    public init(path: String, logger: Logger) throws {
        self.path = path
        // Every agent's secret is in the database, its WAL and its shared memory: the directory
        // this makes is 0700, and each of the three files is 0600 whatever the umask.
        try SecretFile.makePrivateDirectory((path as NSString).deletingLastPathComponent)
        var configuration = Configuration()
        configuration.prepareDatabase { db in
            try db.execute(sql: "PRAGMA synchronous = FULL")
            try db.execute(sql: "PRAGMA foreign_keys = ON")
        }
        configuration.busyMode = .timeout(5)
        do {
            database = try DatabasePool(path: path, configuration: configuration)
        } catch {
            throw StoreError.unreadable(path: path, reason: "\(error)")
        }
        for file in [path, path + "-wal", path + "-shm"] where FileManager.default.fileExists(atPath: file) {
            chmod(file, 0o600)
        }
        try Self.migrate(database, logger: logger)
    }

    static func migrate(_ writer: some DatabaseWriter, logger: Logger) throws {
        let migrator = Schema.migrator
        let unknown = try writer.read { db in
            try migrator.appliedIdentifiers(db).subtracting(migrator.migrations)
        }
        guard unknown.isEmpty else { throw StoreError.newerSchema(unknownMigrations: unknown.sorted()) }
        let pending = try writer.read { db in try migrator.migrations.filter { !(try migrator.appliedIdentifiers(db).contains($0)) } }
        try migrator.migrate(writer)
        if !pending.isEmpty {
            logger.info("database migrated", metadata: ["store.migrations": "\(pending.joined(separator: ","))"])
        }
    }

    /// The migrations applied to the file, oldest first.
    public func appliedMigrations() async throws -> [String] {
        try await database.read { db in try Schema.migrator.appliedMigrations(db) }
    }

    // MARK: Pools

    public func pool(id: PoolID) async throws -> PoolRecord? {
        try await database.read { db in try PoolRecord.fetchOne(db, key: id.rawValue) }
    }

    public func pools() async throws -> [PoolRecord] {
        try await database.read { db in try PoolRecord.order(Column("machine_id")).fetchAll(db) }
    }

    public func savePool(_ pool: PoolRecord) async throws {
        try await database.write { db in try pool.save(db) }
    }

    public func deletePool(id: PoolID) async throws {
        _ = try await database.write { db in try PoolRecord.deleteOne(db, key: id.rawValue) }
    }

    public func beginIncarnation(poolID: PoolID) async throws -> Int {
        try await database.write { db in
            let next = try Self.lastIncarnation(db, poolID) + 1
            try db.execute(
                sql: "INSERT INTO pool_incarnation (machine_id, last) VALUES (?, ?) ON CONFLICT(machine_id) DO UPDATE SET last = excluded.last",
                arguments: [poolID.rawValue, next])
            return next
        }
    }

    public func lastIncarnation(poolID: PoolID) async throws -> Int {
        try await database.read { db in try Self.lastIncarnation(db, poolID) }
    }

    /// Databases from before the count: a pool row with an engine, failovers or agent keys of the
    /// machine id mean its first pool existed.
    private static func lastIncarnation(_ db: Database, _ poolID: PoolID) throws -> Int {
        let id = poolID.rawValue
        let counted = try Int.fetchOne(db, sql: "SELECT last FROM pool_incarnation WHERE machine_id = ?", arguments: [id]) ?? 0
        let failovers = try Int.fetchOne(db, sql: "SELECT MAX(incarnation) FROM failover WHERE machine_id = ?", arguments: [id]) ?? 0
        let pool = try Int.fetchOne(db, sql: "SELECT incarnation FROM pool WHERE machine_id = ? AND engine_state IS NOT NULL", arguments: [id]) ?? 0
        let agents = try Bool.fetchOne(db, sql: "SELECT EXISTS (SELECT 1 FROM agent WHERE machine_id = ? AND agent_id LIKE 'wp-%')", arguments: [id]) ?? false
        return max(counted, failovers, pool, agents ? 1 : 0)
    }

    public func commit(_ transition: PoolTransition) async throws {
        try await database.write { db in
            try transition.pool.save(db)
            if let failover = transition.failover { try failover.save(db) }
            for step in transition.steps { try step.save(db, onConflict: .ignore) }
            for entry in transition.notifications { try entry.insert(db, onConflict: .ignore) }
            for event in transition.events { _ = try event.inserted(db) }
        }
    }

    // MARK: Failovers

    public func failovers(poolID: PoolID, limit: Int) async throws -> [FailoverRecord] {
        try await database.read { db in
            try FailoverRecord.filter(Column("machine_id") == poolID.rawValue)
                .order(Column("started_at").desc, Column("id").desc).limit(limit).fetchAll(db)
        }
    }

    public func failover(id: String) async throws -> FailoverRecord? {
        try await database.read { db in try FailoverRecord.fetchOne(db, key: id) }
    }

    public func timeline(failoverID: String) async throws -> [TimelineStep] {
        try await database.read { db in
            try TimelineStep.filter(Column("failover_id") == failoverID).order(Column("sequence")).fetchAll(db)
        }
    }

    public func failoverTallies() async throws -> [FailoverTally] {
        try await database.read { db in
            // SQLite fills the bare columns of a group from the row holding its MAX(): the newest
            // finished failover of each group comes with its start, in the same single pass.
            let rows = try Row.fetchAll(db, sql: """
                SELECT machine_id, incarnation, result, COUNT(*) AS count, MAX(finished_at) AS last_finished_at,
                       started_at AS last_started_at
                FROM failover GROUP BY machine_id, incarnation, result
                """)
            return rows.compactMap { row -> FailoverTally? in
                guard let result = FailoverRecord.Result(rawValue: row["result"] as String) else { return nil }
                let finished: Date? = row["last_finished_at"]
                return FailoverTally(
                    poolID: row["machine_id"], incarnation: row["incarnation"], result: result, count: row["count"],
                    lastStartedAt: finished == nil ? nil : row["last_started_at"], lastFinishedAt: finished)
            }
        }
    }

    // MARK: Events

    public func recordEvents(_ events: [PoolEvent]) async throws {
        guard !events.isEmpty else { return }
        try await database.write { db in
            for event in events { _ = try event.inserted(db) }
            // The log is a recent history, not an archive: keep the newest events only.
            try db.execute(
                sql: "DELETE FROM pool_event WHERE id <= (SELECT max(id) FROM pool_event) - ?", arguments: [Self.eventsKept])
        }
    }

    static let eventsKept = 100_000

    public func events(poolID: PoolID?, limit: Int) async throws -> [PoolEvent] {
        try await database.read { db in
            // By time, not by id: liveness events arrive in batches, after engine events of the same moment.
            var request = PoolEvent.order(Column("at").desc, Column("id").desc).limit(limit)
            if let poolID { request = request.filter(Column("machine_id") == poolID.rawValue) }
            return try request.fetchAll(db).reversed()
        }
    }

    // MARK: Agents

    /// `observer` runs after every committed change to an agent's key or instance, and the change
    /// returns only once it has: whoever authenticates agents (the listener's keyring) follows
    /// the store before the writer goes on, without every writer having to know about it.
    public func observeAgentKeys(_ observer: @escaping @Sendable () async -> Void) {
        agentKeyObservers.withLock { $0.append(observer) }
    }

    private func agentKeysChanged() async {
        for observer in agentKeyObservers.withLock({ $0 }) { await observer() }
    }

    public func addAgent(_ agent: AgentRecord) async throws {
        try await database.write { db in
            if try AgentRecord.exists(db, key: agent.agentID.rawValue) { throw StoreError.duplicate(what: "agent", id: agent.agentID.rawValue) }
            try agent.insert(db)
        }
        await agentKeysChanged()
    }

    public func saveAgent(_ agent: AgentRecord) async throws {
        try await database.write { db in try agent.save(db) }
        await agentKeysChanged()
    }

    public func agent(id: AgentID) async throws -> AgentRecord? {
        try await database.read { db in try AgentRecord.fetchOne(db, key: id.rawValue) }
    }

    public func agents() async throws -> [AgentRecord] {
        try await database.read { db in try AgentRecord.order(Column("agent_id")).fetchAll(db) }
    }

    public func revokeAgent(id: AgentID, at: Date) async throws -> Bool {
        let revoked = try await database.write { db in
            guard var agent = try AgentRecord.fetchOne(db, key: id.rawValue), agent.revokedAt == nil else { return false }
            agent.revokedAt = at
            try agent.update(db)
            return true
        }
        if revoked { await agentKeysChanged() }
        return revoked
    }

    // MARK: Host key pins

    public func pinnedHostKey(instanceID: InstanceID) async throws -> String? {
        try await database.read { db in
            try String.fetchOne(db, sql: "SELECT key FROM host_key_pin WHERE instance_id = ?", arguments: [instanceID.description])
        }
    }

    public func pinHostKeyIfAbsent(instanceID: InstanceID, key: String) async throws -> String {
        try await database.write { db in
            try db.execute(
                sql: "INSERT INTO host_key_pin (instance_id, key, pinned_at) VALUES (?, ?, ?) ON CONFLICT(instance_id) DO NOTHING",
                arguments: [instanceID.description, key, Date()])
            return try String.fetchOne(db, sql: "SELECT key FROM host_key_pin WHERE instance_id = ?", arguments: [instanceID.description]) ?? key
        }
    }

    public func unpinHostKey(instanceID: InstanceID) async throws {
        try await database.write { db in
            try db.execute(sql: "DELETE FROM host_key_pin WHERE instance_id = ?", arguments: [instanceID.description])
        }
    }

    // MARK: Outbox

    public func enqueue(_ entries: [OutboxEntry]) async throws {
        try await database.write { db in
            for entry in entries { try entry.insert(db, onConflict: .ignore) }
        }
    }

    public func dueNotifications(now: Date, limit: Int) async throws -> [OutboxEntry] {
        try await database.read { db in
            try OutboxEntry.filter(Column("delivered_at") == nil && Column("next_attempt_at") <= now)
                .order(Column("next_attempt_at"), Column("created_at")).limit(limit).fetchAll(db)
        }
    }

    public func markDelivered(id: String, at: Date) async throws {
        try await database.write { db in
            try db.execute(
                sql: "UPDATE outbox SET delivered_at = ?, attempts = attempts + 1, last_error = NULL WHERE id = ?",
                arguments: [at, id])
        }
    }

    public func markAttemptFailed(id: String, error: String, nextAttemptAt: Date) async throws {
        try await database.write { db in
            try db.execute(
                sql: "UPDATE outbox SET attempts = attempts + 1, last_error = ?, next_attempt_at = ? WHERE id = ?",
                arguments: [error, nextAttemptAt, id])
        }
    }

    public func notifications(limit: Int) async throws -> [OutboxEntry] {
        try await database.read { db in
            try OutboxEntry.order(Column("created_at").desc).limit(limit).fetchAll(db)
        }
    }

    public func outboxBacklog() async throws -> OutboxBacklog {
        try await database.read { db in
            let givenUp = OutboxEntry.givenUpNextAttemptAt
            let row = try Row.fetchOne(db, sql: """
                SELECT COALESCE(SUM(next_attempt_at < ?), 0) AS pending, MIN(CASE WHEN next_attempt_at < ? THEN created_at END) AS oldest,
                       COALESCE(SUM(next_attempt_at >= ?), 0) AS given_up
                FROM outbox WHERE delivered_at IS NULL
                """, arguments: [givenUp, givenUp, givenUp])
            return OutboxBacklog(pending: row?["pending"] ?? 0, oldestPendingCreatedAt: row?["oldest"], givenUp: row?["given_up"] ?? 0)
        }
    }

    // MARK: API keys

    public func addAPIKey(_ key: APIKeyRecord) async throws {
        try await database.write { db in
            if try APIKeyRecord.exists(db, key: key.id) { throw StoreError.duplicate(what: "API key", id: key.id) }
            try key.insert(db)
        }
    }

    public func apiKey(id: String) async throws -> APIKeyRecord? {
        try await database.read { db in try APIKeyRecord.fetchOne(db, key: id) }
    }

    public func apiKeys() async throws -> [APIKeyRecord] {
        try await database.read { db in try APIKeyRecord.order(Column("created_at")).fetchAll(db) }
    }

    public func revokeAPIKey(id: String, at: Date) async throws -> Bool {
        try await database.write { db in
            guard var key = try APIKeyRecord.fetchOne(db, key: id), key.revokedAt == nil else { return false }
            key.revokedAt = at
            try key.update(db)
            return true
        }
    }

    public func revokeAPIKeyKeepingAnAdmin(id: String, at: Date) async throws -> APIKeys.Revocation {
        try await database.write { db in
            guard var key = try APIKeyRecord.fetchOne(db, key: id), key.revokedAt == nil else { return .notFound }
            if key.scope == .admin {
                let activeAdmins = try APIKeyRecord.filter(Column("scope") == APIKeyRecord.Scope.admin.rawValue && Column("revoked_at") == nil).fetchCount(db)
                if activeAdmins <= 1 { return .lastAdminKey }
            }
            key.revokedAt = at
            try key.update(db)
            return .revoked
        }
    }

    public func touchAPIKey(id: String, at: Date) async throws {
        try await database.write { db in
            try db.execute(sql: "UPDATE api_key SET last_used_at = ? WHERE id = ?", arguments: [at, id])
        }
    }
}

// Each record is one row; its CodingKeys name the columns.
extension PoolRecord: FetchableRecord, PersistableRecord {
    public static let databaseTableName = "pool"
}

extension FailoverRecord: FetchableRecord, PersistableRecord {
    public static let databaseTableName = "failover"
}

extension TimelineStep: FetchableRecord, PersistableRecord {
    public static let databaseTableName = "timeline_step"
}

extension AgentRecord: FetchableRecord, PersistableRecord {
    public static let databaseTableName = "agent"
}

extension APIKeyRecord: FetchableRecord, PersistableRecord {
    public static let databaseTableName = "api_key"
}

extension OutboxEntry: FetchableRecord, PersistableRecord {
    public static let databaseTableName = "outbox"
}

extension PoolEvent: FetchableRecord, MutablePersistableRecord {
    public static let databaseTableName = "pool_event"
    public mutating func didInsert(_ inserted: InsertionSuccess) { id = inserted.rowID }
}
