import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// Snapshot ids: `20261204T123000.250Z-1a2b3c4d`, the UTC time the snapshot began, to the
/// millisecond, and a random suffix. They sort by time (`list`, "the newest", retention and the
/// locks all read their order from them), so the time is all a retention policy needs to know of
/// a snapshot: it never opens a manifest to decide.
public enum SnapshotID {
    public static func make(_ date: Date) -> String {
        stamp(date) + "-" + String(UInt32.random(in: 0...UInt32.max), radix: 16)
    }

    /// `20261204T123000.250Z`.
    static func stamp(_ date: Date) -> String {
        var seconds = time_t(date.timeIntervalSince1970.rounded(.down))
        var parts = tm()
        gmtime_r(&seconds, &parts)
        func two(_ value: Int32) -> String { value < 10 ? "0\(value)" : "\(value)" }
        // Milliseconds: ids sort by time, and two snapshots within a second (a test, an operator's
        // `snapshot` right after a scheduled one) still sort in the order they were made.
        let milliseconds = String(Int((date.timeIntervalSince1970 * 1000).rounded(.down)) % 1000)
        let fraction = String(repeating: "0", count: 3 - milliseconds.count) + milliseconds
        return "\(parts.tm_year + 1900)\(two(parts.tm_mon + 1))\(two(parts.tm_mday))T\(two(parts.tm_hour))\(two(parts.tm_min))\(two(parts.tm_sec)).\(fraction)Z"
    }

    /// The time an id names; nil for anything that is not an id (an object someone else put
    /// under `snapshots/`, which retention then keeps: it never deletes what it cannot date).
    public static func date(of id: String) -> Date? {
        let bytes = Array(id.utf8)
        guard bytes.count >= 20, bytes[8] == UInt8(ascii: "T"), bytes[15] == UInt8(ascii: "."), bytes[19] == UInt8(ascii: "Z"),
            bytes.count == 20 || bytes[20] == UInt8(ascii: "-")
        else { return nil }
        func number(_ range: Range<Int>) -> Int? {
            var value = 0
            for byte in bytes[range] {
                guard byte >= UInt8(ascii: "0"), byte <= UInt8(ascii: "9") else { return nil }
                value = value * 10 + Int(byte - UInt8(ascii: "0"))
            }
            return value
        }
        guard let year = number(0..<4), let month = number(4..<6), let day = number(6..<8), let hour = number(9..<11),
            let minute = number(11..<13), let second = number(13..<15), let milliseconds = number(16..<19),
            (1...12).contains(month), (1...31).contains(day), hour < 24, minute < 60, second < 61
        else { return nil }
        var parts = tm()
        parts.tm_year = Int32(year - 1900)
        parts.tm_mon = Int32(month - 1)
        parts.tm_mday = Int32(day)
        parts.tm_hour = Int32(hour)
        parts.tm_min = Int32(minute)
        parts.tm_sec = Int32(second)
        return Date(timeIntervalSince1970: Double(timegm(&parts)) + Double(milliseconds) / 1000)
    }
}
