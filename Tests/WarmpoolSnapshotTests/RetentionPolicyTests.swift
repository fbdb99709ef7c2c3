import Foundation
import Testing
import WarmpoolModel
@testable import WarmpoolSnapshot

/// Retention over fixed dates: `now` is 2026-12-04 12:30:00 UTC throughout.
@Suite struct RetentionPolicyTests {
    static let now = Date(timeIntervalSince1970: 1_796_387_400)

    /// An id for a time given as "20261204T123000.000Z".
    func id(_ stamp: String, _ suffix: String = "a") -> String { stamp + "-" + suffix }

    @Test func idsParseBackToTheirTime() throws {
        #expect(SnapshotID.date(of: "20261204T123000.250Z-1a2b3c4d") == Self.now.addingTimeInterval(0.25))
        let made = SnapshotID.make(Self.now.addingTimeInterval(0.5))
        #expect(made.hasPrefix("20261204T123000.500Z-"), "\(made)")
        #expect(SnapshotID.date(of: made) == Self.now.addingTimeInterval(0.5))
        for bad in ["", "latest", "20261304T123000.000Z-a", "20261204T123000Z-a", "20261204X123000.000Z-a", "2026120ST123000.000Z-a",
                    "20261204T123000.000Zx"] {
            #expect(SnapshotID.date(of: bad) == nil, "\(bad)")
        }
    }

    @Test func keepLastKeepsTheNewestN() {
        let ids = (0..<10).map { id("2026120\($0 < 4 ? 1 : 2)T0\($0)0000.000Z") }
        let decision = RetentionPolicy(keepLast: 3, keepDaily: 0).decide(ids.shuffled(), now: Self.now)
        #expect(decision.keep == Array(ids.suffix(3)))
        #expect(decision.delete == Array(ids.prefix(7)), "oldest first")
    }

    @Test func keepDailyKeepsTheNewestOfEachOfTheLastDDays() {
        // Every six hours from Nov 25 00:00 to Dec 4 12:00.
        var ids: [String] = []
        for day in 25...34 {
            let (month, date) = day <= 30 ? ("11", day) : ("12", day - 30)
            for hour in ["00", "06", "12", "18"] where !(day == 34 && hour == "18") {
                ids.append(id("2026\(month)\(date < 10 ? "0" : "")\(date)T\(hour)0000.000Z"))
            }
        }
        let decision = RetentionPolicy(keepLast: 1, keepDaily: 3).decide(ids, now: Self.now)
        // Today's newest (12:00, also the last), Dec 3's and Dec 2's 18:00.
        #expect(decision.keep == [id("20261202T180000.000Z"), id("20261203T180000.000Z"), id("20261204T120000.000Z")])
        #expect(decision.keep.count + decision.delete.count == ids.count)
    }

    @Test func eitherRuleKeeps() {
        let ids = [
            id("20261120T100000.000Z"), id("20261202T080000.000Z"), id("20261202T090000.000Z"),
            id("20261204T100000.000Z"), id("20261204T110000.000Z"), id("20261204T120000.000Z"),
        ]
        let decision = RetentionPolicy(keepLast: 2, keepDaily: 7).decide(ids, now: Self.now)
        #expect(decision.keep == [id("20261202T090000.000Z"), id("20261204T110000.000Z"), id("20261204T120000.000Z")])
        #expect(decision.delete == [id("20261120T100000.000Z"), id("20261202T080000.000Z"), id("20261204T100000.000Z")])
    }

    /// Calendar days in UTC: a second before midnight and a millisecond after are two days.
    @Test func daysAreUTCCalendarDays() {
        let ids = [id("20261203T235959.999Z"), id("20261204T000000.000Z"), id("20261204T000000.001Z")]
        let decision = RetentionPolicy(keepLast: 1, keepDaily: 2).decide(ids, now: Self.now)
        #expect(decision.keep == [id("20261203T235959.999Z"), id("20261204T000000.001Z")])
        // keepDaily 1 is today only.
        #expect(RetentionPolicy(keepLast: 1, keepDaily: 1).decide(ids, now: Self.now).keep == [id("20261204T000000.001Z")])
    }

    /// Days without a snapshot still count: "for D days" bounds the age of the oldest daily one.
    @Test func daysWithoutSnapshotsDoNotStretchTheWindow() {
        let ids = [id("20261120T120000.000Z"), id("20261124T120000.000Z"), id("20261204T090000.000Z")]
        let decision = RetentionPolicy(keepLast: 1, keepDaily: 7).decide(ids, now: Self.now)
        #expect(decision.keep == [id("20261204T090000.000Z")])
    }

    @Test func aSnapshotFromTheFutureAndAnUnknownObjectAreKept() {
        let ids = [id("20261201T120000.000Z"), id("20261204T110000.000Z"), id("20261206T080000.000Z", "skewed"), "not-a-snapshot"]
        let decision = RetentionPolicy(keepLast: 1, keepDaily: 2).decide(ids, now: Self.now)
        #expect(Set(decision.keep) == [id("20261204T110000.000Z"), id("20261206T080000.000Z", "skewed"), "not-a-snapshot"])
        #expect(decision.delete == [id("20261201T120000.000Z")])
    }

    @Test func nothingToDecide() {
        #expect(RetentionPolicy(keepLast: 3, keepDaily: 3).decide([], now: Self.now) == .init(keep: [], delete: []))
    }

    /// What must always hold, over random histories: the newest is kept; keep and delete split the
    /// input; every kept one is the newest N or its day's newest within D days (or undatable);
    /// each of the last D days that has snapshots keeps its newest; a second prune deletes nothing.
    @Test func invariantsOverRandomHistories() {
        let seed = UInt64.random(in: 0...UInt64.max)
        var generator = SeededGenerator(seed: seed)
        for _ in 0..<300 {
            let count = Int.random(in: 0...60, using: &generator)
            let ids = (0..<count).map { _ in
                let offset = Double.random(in: -40 * 86_400...(2 * 3_600), using: &generator)
                return SnapshotID.make(Self.now.addingTimeInterval(offset))
            }
            let policy = RetentionPolicy(keepLast: Int.random(in: 1...8, using: &generator), keepDaily: Int.random(in: 0...14, using: &generator))
            let decision = policy.decide(ids, now: Self.now)
            let sorted = ids.sorted()
            #expect(Set(decision.keep).isDisjoint(with: decision.delete) && (decision.keep + decision.delete).sorted() == sorted, "seed \(seed)")
            if let newest = sorted.last { #expect(decision.keep.last == newest, "seed \(seed)") }
            let firstDay = RetentionPolicy.day(of: Self.now) - Int64(policy.keepDaily - 1)
            let byDay = Dictionary(grouping: sorted) { RetentionPolicy.day(of: SnapshotID.date(of: $0)!) }
            for kept in decision.keep {
                let day = RetentionPolicy.day(of: SnapshotID.date(of: kept)!)
                let justified = sorted.suffix(policy.keepLast).contains(kept) || (policy.keepDaily > 0 && day >= firstDay && byDay[day]!.last == kept)
                #expect(justified, "\(kept) kept without a rule; seed \(seed)")
            }
            if policy.keepDaily > 0 {
                for (day, members) in byDay where day >= firstDay { #expect(decision.keep.contains(members.last!), "seed \(seed)") }
            }
            #expect(policy.decide(decision.keep, now: Self.now).delete.isEmpty, "a second prune deletes nothing; seed \(seed)")
        }
    }
}

/// SplitMix64: a reproducible generator for the randomized tests (their seed is printed on failure).
struct SeededGenerator: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
