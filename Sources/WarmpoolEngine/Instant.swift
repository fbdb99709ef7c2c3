/// A moment on the wall clock: nanoseconds since the Unix epoch (UTC).
///
/// Wall clock, not monotonic, on purpose: a pool's state is saved and outlives the controller
/// process, even the host's boot, so its deadlines and timeline must still mean something after a
/// restart. A monotonic reading would not. The engine never reads a clock; the caller passes `now`.
public struct Instant: Hashable, Comparable, Sendable, Codable, CustomStringConvertible {
    public var nanosecondsSinceEpoch: Int64

    public init(nanosecondsSinceEpoch: Int64) {
        self.nanosecondsSinceEpoch = nanosecondsSinceEpoch
    }

    public static func seconds(_ seconds: Int64) -> Instant {
        Instant(nanosecondsSinceEpoch: seconds * 1_000_000_000)
    }

    public static func < (lhs: Instant, rhs: Instant) -> Bool {
        lhs.nanosecondsSinceEpoch < rhs.nanosecondsSinceEpoch
    }

    public static func + (lhs: Instant, rhs: Duration) -> Instant {
        Instant(nanosecondsSinceEpoch: lhs.nanosecondsSinceEpoch + rhs.nanoseconds)
    }

    public static func - (lhs: Instant, rhs: Instant) -> Duration {
        .nanoseconds(lhs.nanosecondsSinceEpoch - rhs.nanosecondsSinceEpoch)
    }

    public var description: String { "\(nanosecondsSinceEpoch)ns" }

    // A bare number in JSON, not an object: the shell stores this state as text.
    public init(from decoder: any Decoder) throws {
        nanosecondsSinceEpoch = try decoder.singleValueContainer().decode(Int64.self)
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(nanosecondsSinceEpoch)
    }
}

extension Duration {
    /// Whole nanoseconds (truncated); the engine's durations are far inside Int64's range.
    var nanoseconds: Int64 {
        let (seconds, attoseconds) = components
        return seconds * 1_000_000_000 + attoseconds / 1_000_000_000
    }
}
