import WarmpoolModel
import WarmpoolWire

#if canImport(Glibc)
import Glibc
#endif

/// An interval split into 1 ms phases, handed out at their deadlines on the calling thread. Fixed
/// rate: a late caller gets the missed phases back to back, so every socket assigned to a phase
/// is written once an interval and the writes stay spread over it.
struct PhasedClock {
    let phases: Int
    private let period: Int64
    private var deadline: Int64
    private var handedOut = 0

    init(interval: Int64, now: Int64 = MonotonicClock.now()) {
        phases = Int(max(1, interval / 1_000_000))
        period = interval / Int64(phases)
        deadline = now
    }

    /// Sleeps until the next phase is due; returns it, how late it was handed out (ns) and when
    /// it was due (a caller that does more work before the phase's writes measures their
    /// lateness against `due`).
    mutating func next() -> (phase: Int, lateness: Int64, due: Int64) {
        var now = MonotonicClock.now()
        while now < deadline {
            var pause = timespec(tv_sec: 0, tv_nsec: Int(deadline - now))
            nanosleep(&pause, nil)
            now = MonotonicClock.now()
        }
        let due = deadline
        deadline += period
        defer { handedOut += 1 }
        return (handedOut % phases, now - due, due)
    }
}
