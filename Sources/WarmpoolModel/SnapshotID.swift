#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Snapshot ids: `20261204T123000.250Z-1a2b3c4d`, the UTC time the snapshot began, to the
/// millisecond, and a random suffix. They sort by time (`list`, "the newest", retention and the
/// locks all read their order from them), so the time is all a retention policy needs to know of
/// a snapshot, and the controller dates a restored snapshot (its recovery point) without opening
/// it. Defined here, once, for the snapshot tool and the controller alike.
public enum SnapshotID {
    public static func make(_ instant: Instant) -> String {
        stamp(instant) + "-" + String(UInt32.random(in: 0...UInt32.max), radix: 16)
    }

    /// `20261204T123000.250Z`.
    public static func stamp(_ instant: Instant) -> String {
        let milliseconds = instant.nanosecondsSinceEpoch / 1_000_000
        var seconds = time_t(milliseconds >= 0 ? milliseconds / 1000 : (milliseconds - 999) / 1000)
        var parts = tm()
        gmtime_r(&seconds, &parts)
        func digits(_ value: Int, _ count: Int) -> String {
            let text = String(value)
            return String(repeating: "0", count: max(0, count - text.count)) + text
        }
        // Milliseconds: ids sort by time, and two snapshots within a second (a test, an operator's
        // `snapshot` right after a scheduled one) still sort in the order they were made.
        let fraction = Int(milliseconds - Int64(seconds) * 1000)
        return digits(Int(parts.tm_year) + 1900, 4) + digits(Int(parts.tm_mon) + 1, 2) + digits(Int(parts.tm_mday), 2) + "T"
            + digits(Int(parts.tm_hour), 2) + digits(Int(parts.tm_min), 2) + digits(Int(parts.tm_sec), 2) + "." + digits(fraction, 3) + "Z"
    }

    /// The time an id names; nil for anything that is not an id (an object someone else put under
    /// `snapshots/`, which retention then keeps: it never deletes what it cannot date), or a date
    /// that does not exist (31 February).
    public static func instant(of id: String) -> Instant? {
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
            let minute = number(11..<13), let second = number(13..<15), let milliseconds = number(16..<19)
        else { return nil }
        return Instant.utc(year: year, month: month, day: day, hour: hour, minute: minute, second: second,
                           nanoseconds: Int64(milliseconds) * 1_000_000)
    }
}
