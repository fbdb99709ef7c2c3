import Foundation
import WarmpoolModel

/// The snapshot id format (`WarmpoolModel.SnapshotID`) in the `Date`s this module works in.
extension SnapshotID {
    public static func make(_ date: Date) -> String { make(Instant(secondsSinceEpoch: date.timeIntervalSince1970)) }

    public static func date(of id: String) -> Date? { instant(of: id).map { Date(timeIntervalSince1970: $0.secondsSinceEpoch) } }
}
