/// The agent's side of the lease. Pure: the runtime passes the time in.
///
/// A grant for heartbeat n runs from the moment the agent *sent* beat n, not from when the grant
/// arrived: the controller measured its own lease from when it received that beat, which was
/// later, so the agent's lease always ends first (PROTOCOL.md §7).
///
///     noLease --grant--> holding --expiry--> fenced (sticky until the process restarts)
public struct LeaseKeeper: Sendable {
    private enum State: Hashable, Sendable {
        /// Never granted: nothing to fence yet.
        case noLease
        case holding(expiresAt: Int64, epoch: UInt64)
        /// The lease ran out and the fence ran. Later grants are refused: a primary that lost its
        /// lease may have been replaced, and only the controller can tell it otherwise (a restart).
        case fenced(epoch: UInt64)
    }

    public enum Action: Hashable, Sendable {
        case none
        /// Run the fence command now: the lease held under `epoch` expired.
        case fence(epoch: UInt64)
    }

    private var state: State = .noLease
    /// Clock rates differ a little; shave this fraction off every lease to stay on the safe side.
    private let driftAllowance: Double

    public init(driftAllowance: Double = 0.01) {
        self.driftAllowance = driftAllowance
    }

    /// `anchor`: when the acknowledged heartbeat was sent.
    public mutating func granted(anchor: Int64, leaseNanoseconds: Int64, epoch: UInt64, now: Int64) -> Action {
        let expiry = anchor + Int64(Double(leaseNanoseconds) * (1 - driftAllowance))
        switch state {
        case .fenced:
            return .none
        case .noLease:
            state = .holding(expiresAt: expiry, epoch: epoch)
        case .holding(let current, _):
            state = .holding(expiresAt: max(current, expiry), epoch: epoch)
        }
        return tick(now: now)
    }

    public mutating func tick(now: Int64) -> Action {
        guard case .holding(let expiresAt, let epoch) = state, now >= expiresAt else { return .none }
        state = .fenced(epoch: epoch)
        return .fence(epoch: epoch)
    }

    /// When the lease runs out, for scheduling the next check.
    public var expiresAt: Int64? {
        if case .holding(let expiresAt, _) = state { return expiresAt }
        return nil
    }

    public func holdsLease(now: Int64) -> Bool {
        if case .holding(let expiresAt, _) = state { return now < expiresAt }
        return false
    }

    public var fencedAtEpoch: UInt64? {
        if case .fenced(let epoch) = state { return epoch }
        return nil
    }

    public var epoch: UInt64? {
        switch state {
        case .noLease: nil
        case .holding(_, let epoch), .fenced(let epoch): epoch
        }
    }
}

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

    public init(initial: Int64 = 50_000_000, maximum: Int64 = 2_000_000_000) {
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
