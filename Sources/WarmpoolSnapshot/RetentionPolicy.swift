import Foundation
import WarmpoolModel

/// Which snapshots a prune keeps: the newest `keepLast`, and the newest of each UTC day for the
/// `keepDaily` days that end with today (`now`'s UTC day), so the oldest daily snapshot is never
/// more than `keepDaily` days old: "one a day for D days" bounds what the store holds. A snapshot
/// either rule keeps is kept. Pure: ids and the time in, a decision out; nothing is read.
///
/// - Days are calendar days in UTC, not 24-hour spans back from `now`: a snapshot at 23:59 and one
///   at 00:01 are two days, as an operator reading the ids expects.
/// - A snapshot dated after `now` (another host's clock ahead of ours) counts as today or later
///   and is kept by the daily rule too: the newest data is the last thing to lose to a skewed clock.
/// - An id that does not parse (an object someone else put under `snapshots/`) is kept: a prune
///   never deletes what it cannot date.
/// - `keepLast` is at least 1: whatever the policy, a prune leaves the newest snapshot.
public struct RetentionPolicy: Sendable, Equatable {
    public var keepLast: Int
    public var keepDaily: Int

    public init(keepLast: Int, keepDaily: Int) {
        precondition(keepLast >= 1, "a prune keeps at least the newest snapshot")
        precondition(keepDaily >= 0, "keepDaily is a number of days")
        self.keepLast = keepLast
        self.keepDaily = keepDaily
    }

    public struct Decision: Equatable, Sendable {
        /// Oldest first, as the ids sort.
        public var keep: [String]
        public var delete: [String]
    }

    public func decide(_ snapshots: [String], now: Date) -> Decision {
        let ids = snapshots.sorted()
        let dated = ids.compactMap { id in SnapshotID.date(of: id).map { (id: id, date: $0) } }
        var kept = Set(dated.suffix(keepLast).map(\.id))
        kept.formUnion(ids.filter { SnapshotID.date(of: $0) == nil })
        if keepDaily > 0 {
            let firstDay = Self.day(of: now) - Int64(keepDaily - 1)
            var newestOfDay: [Int64: String] = [:]
            // Ids sort by time: a later one of the same day replaces the earlier.
            for (id, date) in dated where Self.day(of: date) >= firstDay { newestOfDay[Self.day(of: date)] = id }
            kept.formUnion(newestOfDay.values)
        }
        return Decision(keep: ids.filter { kept.contains($0) }, delete: ids.filter { !kept.contains($0) })
    }

    /// Days since 1970-01-01, UTC.
    static func day(of date: Date) -> Int64 {
        Int64((date.timeIntervalSince1970 / 86_400).rounded(.down))
    }
}
