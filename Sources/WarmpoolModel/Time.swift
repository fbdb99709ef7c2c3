#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

// One vocabulary for time. Inside a process, deadlines and timings use `MonotonicClock` (it never
// jumps); what is persisted or shown is wall-clock `Instant` (it outlives the process and the boot).
// Configuration is `Duration`; the conversions below are the only ones.

/// CLOCK_MONOTONIC in nanoseconds: the clock of every in-process deadline and timing, the one the
/// controller's events carry as `monotonic_ns`, and the one Python's `time.monotonic_ns()` reads,
/// so outside harnesses can time detection against it.
public enum MonotonicClock {
    public static func now() -> Int64 {
        var spec = timespec()
        clock_gettime(CLOCK_MONOTONIC, &spec)
        return Int64(spec.tv_sec) * 1_000_000_000 + Int64(spec.tv_nsec)
    }
}

/// A moment on the wall clock: nanoseconds since the Unix epoch (UTC).
///
/// Wall clock, not monotonic, on purpose: a pool's state is saved and outlives the controller
/// process, even the host's boot, so its deadlines and timeline must still mean something after a
/// restart. A monotonic reading would not. Pure code never reads a clock; the caller passes `now`.
public struct Instant: Hashable, Comparable, Sendable, Codable, CustomStringConvertible {
    public var nanosecondsSinceEpoch: Int64

    public init(nanosecondsSinceEpoch: Int64) {
        self.nanosecondsSinceEpoch = nanosecondsSinceEpoch
    }

    public static func seconds(_ seconds: Int64) -> Instant {
        Instant(nanosecondsSinceEpoch: seconds * 1_000_000_000)
    }

    /// Seconds since the epoch, with the fraction (what a `Date` holds).
    public var secondsSinceEpoch: Double { Double(nanosecondsSinceEpoch) / 1e9 }

    public init(secondsSinceEpoch: Double) {
        self.nanosecondsSinceEpoch = Int64((secondsSinceEpoch * 1e9).rounded())
    }

    public static func < (lhs: Instant, rhs: Instant) -> Bool {
        lhs.nanosecondsSinceEpoch < rhs.nanosecondsSinceEpoch
    }

    public static func + (lhs: Instant, rhs: Duration) -> Instant {
        Instant(nanosecondsSinceEpoch: lhs.nanosecondsSinceEpoch + rhs.nanoseconds)
    }

    public static func - (lhs: Instant, rhs: Duration) -> Instant {
        Instant(nanosecondsSinceEpoch: lhs.nanosecondsSinceEpoch - rhs.nanoseconds)
    }

    public static func - (lhs: Instant, rhs: Instant) -> Duration {
        .nanoseconds(lhs.nanosecondsSinceEpoch - rhs.nanosecondsSinceEpoch)
    }

    public var description: String { "\(nanosecondsSinceEpoch)ns" }

    // A bare number in JSON, not an object: the engine's state is stored as text.
    public init(from decoder: any Decoder) throws {
        nanosecondsSinceEpoch = try decoder.singleValueContainer().decode(Int64.self)
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(nanosecondsSinceEpoch)
    }
}

/// Where the shells read the wall clock: injected, so the coordinator and the notifier run on a
/// mock clock in tests as the engine does.
public protocol WallClock: Sendable {
    func now() -> Instant
}

/// CLOCK_REALTIME.
public struct SystemWallClock: WallClock {
    public init() {}

    public func now() -> Instant {
        var spec = timespec()
        clock_gettime(CLOCK_REALTIME, &spec)
        return Instant(nanosecondsSinceEpoch: Int64(spec.tv_sec) * 1_000_000_000 + Int64(spec.tv_nsec))
    }
}

/// Wall-clock instants that advance with CLOCK_MONOTONIC: the real time is read once, at
/// creation, and every later reading adds the monotonic time since. A step of the system clock
/// (NTP, an operator) cannot then make a lease look expired early, or a deadline pass: the
/// failover engine's waits are measured on the monotonic clock (PROTOCOL.md §7), while its
/// instants still read as times of day in records and across restarts.
public struct SteadyWallClock: WallClock {
    private let anchor: Int64

    public init() {
        anchor = SystemWallClock().now().nanosecondsSinceEpoch - MonotonicClock.now()
    }

    public func now() -> Instant { Instant(nanosecondsSinceEpoch: anchor + MonotonicClock.now()) }
}

extension Duration {
    /// Whole nanoseconds (truncated); every duration here is far inside Int64's range.
    public var nanoseconds: Int64 {
        let (seconds, attoseconds) = components
        return seconds * 1_000_000_000 + attoseconds / 1_000_000_000
    }

    /// Whole milliseconds (truncated): what libcurl's timeouts and the wire's lease fields take.
    public var milliseconds: Int64 { nanoseconds / 1_000_000 }

    /// Seconds with the fraction: what JSON answers and metrics show.
    public var seconds: Double {
        Double(components.seconds) + Double(components.attoseconds) / 1e18
    }

}

extension Instant {
    /// A UTC calendar time (month 1-12); nil for fields out of range or a date that does not exist
    /// (31 February: timegm would quietly take it for 3 March).
    public static func utc(year: Int, month: Int, day: Int, hour: Int, minute: Int, second: Int, nanoseconds: Int64 = 0) -> Instant? {
        guard (1...12).contains(month), (1...31).contains(day), (0..<24).contains(hour), (0..<60).contains(minute), (0..<61).contains(second),
            (0..<1_000_000_000).contains(nanoseconds)
        else { return nil }
        var parts = tm()
        parts.tm_year = Int32(year - 1900)
        parts.tm_mon = Int32(month - 1)
        parts.tm_mday = Int32(day)
        parts.tm_hour = Int32(hour)
        parts.tm_min = Int32(minute)
        parts.tm_sec = Int32(second)
        var seconds = timegm(&parts)
        var back = tm()
        gmtime_r(&seconds, &back)
        guard back.tm_mday == Int32(day), back.tm_mon == Int32(month - 1) else { return nil }
        return Instant(nanosecondsSinceEpoch: Int64(seconds) * 1_000_000_000 + nanoseconds)
    }
}
