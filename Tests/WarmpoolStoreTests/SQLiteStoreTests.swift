import Foundation
import GRDB
import Logging
import Testing

@testable import WarmpoolStore
import WarmpoolModel

private func temporaryDatabasePath() -> String {
    let directory = FileManager.default.temporaryDirectory.appendingPathComponent("wp-store-\(UUID().uuidString)")
    return directory.appendingPathComponent("warmpool.db").path
}

private let logger = Logger(label: "test.store")

@Suite struct IncarnationTests {
    @Test func eachProvisionOfAMachineIDCountsOnAndNothingResetsTheCount() async throws {
        let store = try SQLiteStore(path: temporaryDatabasePath(), logger: logger)
        #expect(try await store.lastIncarnation(poolID: 7) == 0)
        #expect(try await store.beginIncarnation(poolID: 7) == 1)
        var pool = PoolRecord(poolID: 7, state: .active, engineState: Data("{}".utf8))
        try await store.savePool(pool)
        try await store.deletePool(id: 7)  // a cleanup
        #expect(try await store.lastIncarnation(poolID: 7) == 1, "the count outlives the pool's row")
        #expect(try await store.beginIncarnation(poolID: 7) == 2)
        #expect(try await store.beginIncarnation(poolID: 8) == 1, "per machine id")
        pool.incarnation = 2
        try await store.savePool(pool)
    }

    @Test func aDatabaseFromBeforeTheCountStartsAfterWhatItHolds() async throws {
        let store = try SQLiteStore(path: temporaryDatabasePath(), logger: logger)
        // What an older controller left: an agent key and a failover of machine 9's first pool.
        try await store.addAgent(AgentRecord(agentID: "wp-9-primary-e1-a1", secretHex: String(repeating: "ab", count: 32), poolID: 9, role: "primary"))
        #expect(try await store.lastIncarnation(poolID: 9) == 1)
        try await store.commit(PoolTransition(
            pool: PoolRecord(poolID: 9), failover: {
                var failover = FailoverRecord(id: "fo-9-i3-1", poolID: 9, reason: "test", epoch: 2, startedAt: Date())
                failover.incarnation = 3
                return failover
            }()))
        #expect(try await store.beginIncarnation(poolID: 9) == 4)
    }
}

@Suite struct MigrationTests {
    @Test func aNewDatabaseGetsEveryMigrationAndEveryTable() async throws {
        let path = temporaryDatabasePath()
        let store = try SQLiteStore(path: path, logger: logger)
        #expect(try await store.appliedMigrations() == ["v1-initial", "v2-incarnations", "v3-api-key-scopes", "v4-recovery-points", "v5-cpu-standby"])
        let tables = try await DatabaseQueue(path: path).read { db in
            try String.fetchAll(db, sql: "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' AND name NOT LIKE 'grdb_%' ORDER BY name")
        }
        #expect(tables == ["agent", "api_key", "failover", "host_key_pin", "outbox", "pool", "pool_event", "pool_incarnation", "timeline_step"])
        let mode = try FileManager.default.attributesOfItem(atPath: path)[.posixPermissions] as? Int
        #expect(mode == 0o600)
    }

    @Test func keysFromBeforeScopesStayAdmin() async throws {
        let path = temporaryDatabasePath()
        let store = try SQLiteStore(path: path, logger: logger)
        // A row as a controller from before the v3 migration wrote it: no scope column given.
        try await DatabaseQueue(path: path).write { db in
            try db.execute(sql: "INSERT INTO api_key (id, name, hash_hex, created_at) VALUES ('0123abcd', 'old', 'x', '2026-01-01 00:00:00.000')")
        }
        #expect(try await store.apiKey(id: "0123abcd")?.scope == .admin)
        let minted = APIKeys.mint(name: "dashboard", scope: .read)
        try await store.addAPIKey(minted.record)
        #expect(try await store.apiKey(id: minted.record.id)?.scope == .read)
    }

    @Test func reopeningKeepsDataAndAppliesNothingTwice() async throws {
        let path = temporaryDatabasePath()
        do {
            let store = try SQLiteStore(path: path, logger: logger)
            try await store.savePool(PoolRecord(poolID: 7, state: .active, volumeID: 3))
        }
        let reopened = try SQLiteStore(path: path, logger: logger)
        #expect(try await reopened.appliedMigrations() == ["v1-initial", "v2-incarnations", "v3-api-key-scopes", "v4-recovery-points", "v5-cpu-standby"])
        #expect(try await reopened.pool(id: 7)?.volumeID == 3)
    }

    @Test func aDatabaseFromANewerControllerIsRefusedUntouched() async throws {
        let path = temporaryDatabasePath()
        _ = try SQLiteStore(path: path, logger: logger)
        try await DatabaseQueue(path: path).write { db in
            try db.execute(sql: "INSERT INTO grdb_migrations (identifier) VALUES ('v9-from-the-future')")
        }
        #expect(throws: StoreError.newerSchema(unknownMigrations: ["v9-from-the-future"])) {
            _ = try SQLiteStore(path: path, logger: logger)
        }
    }

    @Test func aFileThatIsNotADatabaseGivesAClearError() async throws {
        let path = temporaryDatabasePath()
        try FileManager.default.createDirectory(atPath: (path as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        try Data(repeating: 0x41, count: 4096).write(to: URL(fileURLWithPath: path))
        do {
            _ = try SQLiteStore(path: path, logger: logger)
            Issue.record("a garbage file opened as a database")
        } catch {
            #expect("\(error)".contains("not a database") || "\(error)".contains(path))
        }
    }
}

@Suite struct RecordTests {
    @Test func poolsRoundTripWithEveryColumn() async throws {
        let store = try SQLiteStore(path: temporaryDatabasePath(), logger: logger)
        let now = Date(timeIntervalSince1970: 1_800_000_000.25)
        var pool = PoolRecord(
            poolID: 12, hostMachineID: 77, strategy: .cpuStandby, gpuPreferences: ["RTX 4090", "A100"], volumeSizeGB: 250,
            state: .active, volumeID: 5, primaryInstanceID: 101, standbyInstanceID: 102, standbyState: .stopped,
            primarySSHHost: "10.0.0.1", primarySSHPort: 2222, lastHealthCheck: now, failoverCount: 3, lastFailoverAt: now,
            errorMessage: "none", epoch: 4, engineState: Data("{\"x\":1}".utf8), createdAt: now, updatedAt: now)
        pool.cpuStandbyName = "wp-12-cpu-e4-a2"
        pool.cpuStandbyInstanceID = InstanceID(rawValue: (1 << 62) + 5)
        pool.cpuStandbySSHHost = "10.216.0.1"
        pool.cpuPrimaryName = "wp-12-cpu-e3-a1"
        try await store.savePool(pool)
        #expect(try await store.pool(id: 12) == pool)
        #expect(try await store.pools().map(\.poolID) == [12])
        try await store.deletePool(id: 12)
        #expect(try await store.pool(id: 12) == nil)
    }

    @Test func aTransitionIsAllOrNothing() async throws {
        let store = try SQLiteStore(path: temporaryDatabasePath(), logger: logger)
        let start = Date()
        var failover = FailoverRecord(id: "fo-12-1", poolID: 12, reason: "primary failed", epoch: 2, startedAt: start)
        failover.workLostSeconds = 41.25
        failover.lastCheckpointAt = start.addingTimeInterval(-41.25)
        try await store.commit(PoolTransition(
            pool: PoolRecord(poolID: 12, state: .failover), failover: failover,
            steps: [TimelineStep(failoverID: "fo-12-1", sequence: 1, step: "detected", at: start)],
            notifications: [OutboxEntry(id: "n-1", kind: "failure_detected", poolID: 12, payload: "{}")],
            events: [PoolEvent(poolID: 12, agentID: "a", kind: "failover", at: start)]))

        // A transition whose timeline step names a failover that does not exist fails as a whole:
        // the pool row must not change either.
        await #expect(throws: (any Error).self) {
            try await store.commit(PoolTransition(
                pool: PoolRecord(poolID: 12, state: .active),
                steps: [TimelineStep(failoverID: "no-such-failover", sequence: 1, step: "promoted", at: start)]))
        }
        #expect(try await store.pool(id: 12)?.state == .failover)
        #expect(try await store.timeline(failoverID: "fo-12-1").map(\.step) == ["detected"])
        let stored = try await store.failovers(poolID: 12, limit: 10).first
        #expect(stored?.workLostSeconds == 41.25)
        #expect(abs((stored?.lastCheckpointAt?.timeIntervalSince1970 ?? 0) - start.addingTimeInterval(-41.25).timeIntervalSince1970) < 0.001)
        #expect(try await store.events(poolID: 12, limit: 10).count == 1)
    }

    @Test func reRecordingAStepOrNotificationAfterARestartIsHarmless() async throws {
        let store = try SQLiteStore(path: temporaryDatabasePath(), logger: logger)
        let start = Date()
        let failover = FailoverRecord(id: "fo-1", poolID: 1, reason: "test", epoch: 1, startedAt: start)
        let transition = PoolTransition(
            pool: PoolRecord(poolID: 1, state: .failover), failover: failover,
            steps: [TimelineStep(failoverID: "fo-1", sequence: 1, step: "detected", at: start)],
            notifications: [OutboxEntry(id: "fo-1/failure_detected", kind: "failure_detected", poolID: 1, payload: "{}")])
        try await store.commit(transition)
        try await store.commit(transition)
        #expect(try await store.timeline(failoverID: "fo-1").count == 1)
        #expect(try await store.notifications(limit: 10).count == 1)
    }

    @Test func failoverHistoryIsNewestFirst() async throws {
        let store = try SQLiteStore(path: temporaryDatabasePath(), logger: logger)
        try await store.savePool(PoolRecord(poolID: 1))
        for number in 1...3 {
            var record = FailoverRecord(
                id: "fo-\(number)", poolID: 1, reason: "r", epoch: Epoch(UInt64(number)), startedAt: Date(timeIntervalSince1970: Double(number) * 100))
            record.result = .succeeded
            record.finishedAt = record.startedAt.addingTimeInterval(12.5)
            try await store.commit(PoolTransition(pool: PoolRecord(poolID: 1), failover: record))
        }
        let history = try await store.failovers(poolID: 1, limit: 2)
        #expect(history.map(\.id) == ["fo-3", "fo-2"])
        #expect(history[0].durationSeconds == 12.5)
        #expect(try await store.failover(id: "fo-1")?.epoch == 1)
    }

    @Test func agentsAreUniqueAndRevocable() async throws {
        let store = try SQLiteStore(path: temporaryDatabasePath(), logger: logger)
        try await store.addAgent(AgentRecord(agentID: "gpu-1", secretHex: String(repeating: "ab", count: 32), poolID: 1))
        await #expect(throws: StoreError.duplicate(what: "agent", id: "gpu-1")) {
            try await store.addAgent(AgentRecord(agentID: "gpu-1", secretHex: String(repeating: "cd", count: 32)))
        }
        #expect(try await store.revokeAgent(id: "gpu-1", at: Date()))
        #expect(try await !store.revokeAgent(id: "gpu-1", at: Date()))
        #expect(try await !store.revokeAgent(id: "nobody", at: Date()))
        #expect(try await store.agent(id: "gpu-1")?.revokedAt != nil)
    }

    @Test func theFirstPinStaysAndCanBeRemoved() async throws {
        let store = try SQLiteStore(path: temporaryDatabasePath(), logger: logger)
        #expect(try await store.pinnedHostKey(instanceID: 101) == nil)
        #expect(try await store.pinHostKeyIfAbsent(instanceID: 101, key: "SHA256:first") == "SHA256:first")
        #expect(try await store.pinHostKeyIfAbsent(instanceID: 101, key: "SHA256:second") == "SHA256:first")
        #expect(try await store.pinnedHostKey(instanceID: 101) == "SHA256:first")
        try await store.unpinHostKey(instanceID: 101)
        #expect(try await store.pinnedHostKey(instanceID: 101) == nil)
    }

    @Test func theOutboxHandsOutDueEntriesUntilDelivered() async throws {
        let store = try SQLiteStore(path: temporaryDatabasePath(), logger: logger)
        let now = Date()
        try await store.enqueue([
            OutboxEntry(id: "a", kind: "failover_complete", poolID: 1, payload: "{}", createdAt: now, nextAttemptAt: now),
            OutboxEntry(id: "b", kind: "pool_degraded", poolID: 1, payload: "{}", createdAt: now, nextAttemptAt: now.addingTimeInterval(60)),
        ])
        try await store.enqueue([OutboxEntry(id: "a", kind: "changed", poolID: 1, payload: "{\"dup\":1}")])
        #expect(try await store.dueNotifications(now: now, limit: 10).map(\.id) == ["a"])
        #expect(try await store.dueNotifications(now: now, limit: 10).first?.payload == "{}")
        try await store.markAttemptFailed(id: "a", error: "HTTP 503", nextAttemptAt: now.addingTimeInterval(5))
        #expect(try await store.dueNotifications(now: now, limit: 10).isEmpty)
        let retried = try await store.dueNotifications(now: now.addingTimeInterval(61), limit: 10)
        #expect(retried.map(\.id) == ["a", "b"])
        #expect(retried[0].attempts == 1 && retried[0].lastError == "HTTP 503")
        try await store.markDelivered(id: "a", at: now)
        #expect(try await store.dueNotifications(now: now.addingTimeInterval(61), limit: 10).map(\.id) == ["b"])
    }

    @Test func theEventLogKeepsTheNewestAndFiltersByMachine() async throws {
        let store = try SQLiteStore(path: temporaryDatabasePath(), logger: logger)
        try await store.recordEvents((0..<5).map { PoolEvent(poolID: PoolID(Int64($0 % 2)), agentID: AgentID("a\($0)"), kind: "connected", at: Date()) })
        #expect(try await store.events(poolID: 1, limit: 10).map(\.agentID) == ["a1", "a3"])
        #expect(try await store.events(poolID: nil, limit: 2).map(\.agentID) == ["a3", "a4"])
    }
}

@Suite struct APIKeyTests {
    @Test func aMintedKeyMatchesOnlyItselfAndNotOnceRevoked() async throws {
        let minted = APIKeys.mint(name: "ops")
        #expect(APIKeys.id(of: minted.plaintext) == minted.record.id)
        #expect(APIKeys.matches(minted.plaintext, minted.record))
        #expect(!minted.record.hashHex.contains(minted.plaintext))
        var other = minted.plaintext
        let last = other.removeLast()
        other.append(last == "0" ? "1" : "0")
        #expect(!APIKeys.matches(other, minted.record))
        var revoked = minted.record
        revoked.revokedAt = Date()
        #expect(!APIKeys.matches(minted.plaintext, revoked))
    }

    @Test(arguments: ["", "wp_", "Bearer x", "wp_1234567_" + String(repeating: "a", count: 48), "wp_ABCDEF12_" + String(repeating: "a", count: 48), "xx_12345678_" + String(repeating: "a", count: 48)])
    func malformedKeysHaveNoID(_ token: String) {
        #expect(APIKeys.id(of: token) == nil)
    }

    @Test func keysPersist() async throws {
        let store = try SQLiteStore(path: temporaryDatabasePath(), logger: logger)
        // SQLite keeps milliseconds: a whole-millisecond time compares equal after the round trip.
        let minted = APIKeys.mint(name: "ci", now: Date(timeIntervalSince1970: 1_800_000_000.5))
        try await store.addAPIKey(minted.record)
        #expect(try await store.apiKey(id: minted.record.id) == minted.record)
        try await store.touchAPIKey(id: minted.record.id, at: Date())
        #expect(try await store.apiKey(id: minted.record.id)?.lastUsedAt != nil)
        #expect(try await store.revokeAPIKey(id: minted.record.id, at: Date()))
        #expect(try await store.apiKeys().first?.revokedAt != nil)
    }
}

@Suite struct SecretFileTests {
    @Test func aSecretIsWrittenWholeAt0600AndReplacesWhatWasThere() throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("wp-secret-\(UUID().uuidString)/state").path
        try SecretFile.makePrivateDirectory(directory)
        let mode = { (path: String) in ((try FileManager.default.attributesOfItem(atPath: path))[.posixPermissions] as? NSNumber)?.intValue }
        #expect(try mode(directory) == 0o700)
        let path = directory + "/admin-api-key"
        try "old\n".write(toFile: path, atomically: false, encoding: .utf8)
        try SecretFile.write("new-secret\n", to: path)
        #expect(try String(contentsOfFile: path, encoding: .utf8) == "new-secret\n")
        #expect(try mode(path) == 0o600)
        #expect(try FileManager.default.contentsOfDirectory(atPath: directory) == ["admin-api-key"], "no temporary left")
        #expect(throws: SecretFile.WriteError.self) { try SecretFile.write("x", to: directory + "/missing/dir/key") }
    }
}
