/// The send times of one session's recent heartbeats, which anchor its lease grants (PROTOCOL.md
/// §7): 64 entries, one per `sequence mod 64`, each holding the latest heartbeat with that
/// remainder. Only a heartbeat writes an entry; a Telemetry or Goodbye, which take numbers of the
/// same counter, leaves the entry at its remainder as it was.
struct HeartbeatSendTimes {
    static let count = 64
    private var entries: [(sequence: UInt32, at: Int64)] = Array(repeating: (0, 0), count: count)

    mutating func record(sequence: UInt32, at: Int64) {
        entries[Int(sequence % UInt32(Self.count))] = (sequence, at)
    }

    /// When heartbeat `sequence` was sent, or nil when its entry holds another beat (overwritten
    /// by a later one, or the number was never a heartbeat's): a grant for it cannot be anchored.
    func sentAt(_ sequence: UInt32) -> Int64? {
        let entry = entries[Int(sequence % UInt32(Self.count))]
        return entry.sequence == sequence && entry.at != 0 ? entry.at : nil
    }
}

/// Reconnect delays: exponential from `initial` to `maximum`, each drawn uniformly from
/// [delay/2, delay] so that a fleet of agents cut off at once does not reconnect in lockstep.
public struct Backoff: Sendable {
    public let initial: Int64
    public let maximum: Int64
    private var attempt = 0

    /// A ceiling of 500 ms: a controller that comes back (a restart, an upgrade) grants again, and
    /// so thaws every frozen workload, within about half a second (PROTOCOL.md §7).
    public init(initial: Int64 = 50_000_000, maximum: Int64 = 500_000_000) {
        self.initial = initial
        self.maximum = maximum
    }

    /// `unit` is a random draw in 0...1 (passed in so tests are deterministic).
    public mutating func nextDelay(unit: Double) -> Int64 {
        let ceiling = min(maximum, initial << min(attempt, 30))
        attempt += 1
        return ceiling / 2 + Int64(Double(ceiling / 2) * min(1, max(0, unit)))
    }

    public mutating func reset() { attempt = 0 }
}
