import Foundation
import Logging
import Testing

import WarmpoolModel
import WarmpoolStore

/// The two reads `/metrics` makes of the store, each one query whatever the number of pools.
@Suite struct MetricsQueryTests {
    private func store() throws -> SQLiteStore {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("wp-store-\(UUID().uuidString)/warmpool.db").path
        return try SQLiteStore(path: path, logger: Logger(label: "test.store"))
    }

    @Test func failoversAreTalliedByPoolIncarnationAndResultWithTheNewestFinishedOne() async throws {
        let store = try store()
        #expect(try await store.failoverTallies().isEmpty)
        let t0 = Date(timeIntervalSince1970: 1_700_000_000)
        let failovers: [(PoolID, Int, FailoverRecord.Result, start: Double, seconds: Double?)] = [
            (12, 1, .succeeded, 0, 10), (12, 1, .succeeded, 100, 25), (12, 1, .succeeded, 50, 5), (12, 1, .failed, 200, 60),
            (12, 2, .succeeded, 300, 7), (12, 2, .inProgress, 400, nil), (13, 1, .degraded, 10, 90),
        ]
        for (index, failover) in failovers.enumerated() {
            var record = FailoverRecord(
                id: "fo-\(index)", poolID: failover.0, reason: "test", result: failover.2, epoch: 1, startedAt: t0 + failover.start,
                finishedAt: failover.seconds.map { t0 + failover.start + $0 })
            record.incarnation = failover.1
            try await store.commit(PoolTransition(pool: PoolRecord(poolID: failover.0, state: .active), failover: record))
        }
        let tallies = try await store.failoverTallies().sorted { ($0.poolID, $0.incarnation, $0.result.rawValue) < ($1.poolID, $1.incarnation, $1.result.rawValue) }
        #expect(tallies == [
            FailoverTally(poolID: 12, incarnation: 1, result: .failed, count: 1, lastStartedAt: t0 + 200, lastFinishedAt: t0 + 260),
            FailoverTally(poolID: 12, incarnation: 1, result: .succeeded, count: 3, lastStartedAt: t0 + 100, lastFinishedAt: t0 + 125),
            FailoverTally(poolID: 12, incarnation: 2, result: .inProgress, count: 1),
            FailoverTally(poolID: 12, incarnation: 2, result: .succeeded, count: 1, lastStartedAt: t0 + 300, lastFinishedAt: t0 + 307),
            FailoverTally(poolID: 13, incarnation: 1, result: .degraded, count: 1, lastStartedAt: t0 + 10, lastFinishedAt: t0 + 100),
        ])
        // A cleanup removes the pool's row, never its history.
        try await store.deletePool(id: 13)
        #expect(try await store.failoverTallies().contains { $0.poolID == 13 })
    }

    @Test func theOutboxBacklogCountsPendingAndGivenUpEntriesApart() async throws {
        let store = try store()
        #expect(try await store.outboxBacklog() == OutboxBacklog(pending: 0, oldestPendingCreatedAt: nil, givenUp: 0))
        let t0 = Date(timeIntervalSince1970: 1_700_000_000)
        try await store.enqueue([
            OutboxEntry(id: "delivered", kind: "failover_complete", poolID: 1, payload: "{}", createdAt: t0, nextAttemptAt: t0),
            OutboxEntry(id: "retried", kind: "failover_complete", poolID: 1, payload: "{}", createdAt: t0 + 10, nextAttemptAt: t0 + 10),
            OutboxEntry(id: "new", kind: "pool_degraded", poolID: 2, payload: "{}", createdAt: t0 + 20, nextAttemptAt: t0 + 20),
            OutboxEntry(id: "abandoned", kind: "pool_degraded", poolID: 2, payload: "{}", createdAt: t0 + 5, nextAttemptAt: t0 + 5),
        ])
        try await store.markDelivered(id: "delivered", at: t0 + 1)
        try await store.markAttemptFailed(id: "retried", error: "HTTP 503", nextAttemptAt: t0 + 70)
        try await store.markAttemptFailed(id: "abandoned", error: "gave up after 10 attempts", nextAttemptAt: OutboxEntry.givenUpNextAttemptAt)
        #expect(try await store.outboxBacklog() == OutboxBacklog(pending: 2, oldestPendingCreatedAt: t0 + 10, givenUp: 1))
        // A given-up entry is never due again.
        #expect(try await store.dueNotifications(now: Date.distantFuture - 1, limit: 10).map(\.id).sorted() == ["new", "retried"])
    }
}
