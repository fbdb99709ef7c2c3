import Foundation
import WarmpoolJSON

/// ISO-8601 in UTC with milliseconds, as every timestamp in the API is written.
public enum ISO8601 {
    public static func format(_ date: Date) -> String {
        date.formatted(Date.ISO8601FormatStyle(includingFractionalSeconds: true))
    }
}

extension JSONValue {
    /// A timestamp as the API writes it, or null.
    public static func date(_ value: Date?) -> JSONValue { value.map { .string(ISO8601.format($0)) } ?? .null }
}
