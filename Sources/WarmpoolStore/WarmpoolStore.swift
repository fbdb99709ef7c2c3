import Foundation
import WarmpoolModel

/// The controller's durable state, behind the narrowest interface the engine, the API and the
/// notifier need. `SQLiteStore` is the embedded default; a PostgreSQL store for several
/// controllers implements the same protocol without touching its callers.
public protocol WarmpoolStore: Sendable {
    // Pools and their settings.
    func pool(id: PoolID) async throws -> PoolRecord?
    func pools() async throws -> [PoolRecord]
    /// Inserts or replaces the pool row alone (settings changes, health-check stamps).
    func savePool(_ pool: PoolRecord) async throws
    func deletePool(id: PoolID) async throws
    /// Counts a new pool for the machine id and returns its number (1 for the first): higher
    /// than any the id had, whatever is left of them.
    func beginIncarnation(poolID: PoolID) async throws -> Int
    /// The number of the machine id's latest pool; 0 if it never had one.
    func lastIncarnation(poolID: PoolID) async throws -> Int
    /// One engine transition, atomically: pool row, failover row, timeline steps, notifications, events.
    func commit(_ transition: PoolTransition) async throws

    // Failover history.
    func failovers(poolID: PoolID, limit: Int) async throws -> [FailoverRecord]
    func failover(id: String) async throws -> FailoverRecord?
    func timeline(failoverID: String) async throws -> [TimelineStep]
    /// Every pool incarnation's failovers counted by result, removed pools' included, in one
    /// query however many pools there are: what `/metrics` counts.
    func failoverTallies() async throws -> [FailoverTally]

    // Events.
    func recordEvents(_ events: [PoolEvent]) async throws
    func events(poolID: PoolID?, limit: Int) async throws -> [PoolEvent]

    // Agents and their keys.
    func addAgent(_ agent: AgentRecord) async throws
    /// Replaces an agent's row (e.g. to record the instance it was created for).
    func saveAgent(_ agent: AgentRecord) async throws
    func agent(id: AgentID) async throws -> AgentRecord?
    func agents() async throws -> [AgentRecord]
    func revokeAgent(id: AgentID, at: Date) async throws -> Bool

    // Pinned SSH host keys, by provider instance id.
    func pinnedHostKey(instanceID: InstanceID) async throws -> String?
    /// Pins `key` when the instance has none, atomically; returns the pin in force afterwards.
    func pinHostKeyIfAbsent(instanceID: InstanceID, key: String) async throws -> String
    func unpinHostKey(instanceID: InstanceID) async throws

    // The notification outbox.
    /// Adds entries whose id is new; an id already present (a re-run after restart) is left alone.
    func enqueue(_ entries: [OutboxEntry]) async throws
    func dueNotifications(now: Date, limit: Int) async throws -> [OutboxEntry]
    func markDelivered(id: String, at: Date) async throws
    func markAttemptFailed(id: String, error: String, nextAttemptAt: Date) async throws
    func notifications(limit: Int) async throws -> [OutboxEntry]
    /// The undelivered entries, pending and given up, in one query: what `/metrics` shows.
    func outboxBacklog() async throws -> OutboxBacklog

    // API keys.
    func addAPIKey(_ key: APIKeyRecord) async throws
    func apiKey(id: String) async throws -> APIKeyRecord?
    func apiKeys() async throws -> [APIKeyRecord]
    func revokeAPIKey(id: String, at: Date) async throws -> Bool
    /// Revokes the key unless it is the last active admin key; checked and written in one
    /// transaction, so two revocations at once cannot each leave the other key as the last one.
    func revokeAPIKeyKeepingAnAdmin(id: String, at: Date) async throws -> APIKeys.Revocation
    func touchAPIKey(id: String, at: Date) async throws
}

public enum StoreError: Error, CustomStringConvertible, Equatable {
    /// The database was written by a newer controller: running older code on it could lose data.
    case newerSchema(unknownMigrations: [String])
    case duplicate(what: String, id: String)
    case unreadable(path: String, reason: String)

    public var description: String {
        switch self {
        case .newerSchema(let migrations):
            "the database has migrations this controller does not know (\(migrations.joined(separator: ", "))): it was written by a newer version"
        case .duplicate(let what, let id):
            "\(what) \(id) already exists"
        case .unreadable(let path, let reason):
            "cannot open the database at \(path): \(reason)"
        }
    }
}
