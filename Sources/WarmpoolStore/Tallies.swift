import Foundation
import WarmpoolModel

/// How many failovers of one pool incarnation ended one way, and the newest of them: what
/// `/metrics` counts. Read from the store, not counted in memory, so a restarted controller
/// reports the same totals.
public struct FailoverTally: Sendable, Equatable {
    public var poolID: PoolID
    public var incarnation: Int
    public var result: FailoverRecord.Result
    public var count: Int
    /// The newest failover of the group to finish: when it began and when it ended. nil for
    /// `in_progress`, whose failovers have not finished.
    public var lastStartedAt: Date?
    public var lastFinishedAt: Date?

    public init(poolID: PoolID, incarnation: Int, result: FailoverRecord.Result, count: Int, lastStartedAt: Date? = nil,
                lastFinishedAt: Date? = nil)
    {
        self.poolID = poolID
        self.incarnation = incarnation
        self.result = result
        self.count = count
        self.lastStartedAt = lastStartedAt
        self.lastFinishedAt = lastFinishedAt
    }
}

/// The outbox's undelivered entries: what `/metrics` shows of webhook delivery.
public struct OutboxBacklog: Sendable, Equatable {
    /// Undelivered entries the notifier still retries.
    public var pending: Int
    /// When the oldest of them was enqueued; nil when none is pending.
    public var oldestPendingCreatedAt: Date?
    /// Entries the notifier gave up on: left undelivered, with their last error, for people to read.
    public var givenUp: Int

    public init(pending: Int, oldestPendingCreatedAt: Date?, givenUp: Int) {
        self.pending = pending
        self.oldestPendingCreatedAt = oldestPendingCreatedAt
        self.givenUp = givenUp
    }
}

extension OutboxEntry {
    /// The next attempt of an entry the notifier gave up on: never. The store counts such entries
    /// apart from those still being retried, so the notifier must mark them with exactly this.
    public static let givenUpNextAttemptAt = Date.distantFuture
}
