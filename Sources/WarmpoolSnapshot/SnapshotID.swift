import Foundation
import WarmpoolModel

/// The snapshot id format (`WarmpoolModel.SnapshotID`) in the `Date`s this module works in.
extension SnapshotID {
    public static func make(_ date: Date) -> String { make(Instant(secondsSinceEpoch: date.timeIntervalSince1970)) }

    /// Whole seconds and the fraction apart: one Double of nanoseconds since 1970 is off by up to
    /// 128 ns, and a retention test compares these dates exactly.
    public static func date(of id: String) -> Date? {
        instant(of: id).map { instant in
            let (seconds, nanoseconds) = instant.nanosecondsSinceEpoch.quotientAndRemainder(dividingBy: 1_000_000_000)
            return Date(timeIntervalSince1970: Double(seconds) + Double(nanoseconds) / 1e9)
        }
    }
}
