import WarmpoolModel

/// The breaker for mass failure. Pure: the coordinator passes the time in and carries out the
/// actions.
///
/// Many primaries failing at once is more likely the controller's own side (its network, its
/// host) than many GPU hosts dying together; failing them all over would stop every healthy
/// workload. So every failure waits `settle` before it reaches the engine. If, within `window`,
/// at least `minimumFailures` and at least `fraction` of the monitored primaries failed, the
/// breaker trips: the failures are held, the provider is asked about their instances (one list
/// call, every `recheckInterval`), and only an instance the provider reports not running is
/// failed over. An agent that comes back releases its hold. When nothing is held any more and
/// no failure came for a window, the breaker resets. An operator can release it: every held
/// failure is then failed over.
///
/// The cost: `settle` (500 ms by default) between detection and the start of every failover,
/// which then waits out the old primary's lease anyway (10 s by default).
public struct MassFailureBreaker: Sendable {
    public struct Settings: Hashable, Sendable {
        /// 0 disables the breaker: every failure is passed on at once.
        public var minimumFailures: Int
        public var fraction: Double
        public var window: Duration
        public var settle: Duration
        public var recheckInterval: Duration

        public init(minimumFailures: Int = 3, fraction: Double = 0.2, window: Duration = .seconds(5),
                    settle: Duration = .milliseconds(500), recheckInterval: Duration = .seconds(3)) {
            self.minimumFailures = minimumFailures
            self.fraction = fraction
            self.window = window
            self.settle = settle
            self.recheckInterval = recheckInterval
        }
    }

    public struct Failure: Hashable, Sendable {
        public var instance: InstanceID
        public var pool: PoolID
        public var at: Instant

        public init(instance: InstanceID, pool: PoolID, at: Instant) {
            self.instance = instance
            self.pool = pool
            self.at = at
        }
    }

    public enum Action: Hashable, Sendable {
        /// Pass the failure to the pool's engine.
        case failOver(Failure)
        /// The agent came back: no failover, release the lease hold.
        case dropped(Failure)
        /// Ask the provider about these instances (one list call).
        case askProvider([InstanceID])
        /// Call `tick` at this time.
        case wake(at: Instant)
        case tripped(failures: Int, monitored: Int)
        case released(reason: String)
    }

    public let settings: Settings
    /// Failures not yet passed on (settling, or held while tripped), by instance.
    public private(set) var pending: [InstanceID: Failure] = [:]
    /// When recent failures happened, for the trip condition.
    private var recent: [Instant] = []
    public private(set) var trippedAt: Instant?
    private var lastFailureAt: Instant?
    private var nextCheckAt: Instant?

    public init(settings: Settings = Settings()) {
        self.settings = settings
    }

    public var isTripped: Bool { trippedAt != nil }

    /// A primary failed. `monitored`: the primaries that could be failed over now.
    public mutating func failed(instance: InstanceID, pool: PoolID, monitored: Int, now: Instant) -> [Action] {
        let failure = Failure(instance: instance, pool: pool, at: now)
        guard settings.minimumFailures > 0 else { return [.failOver(failure)] }
        guard pending[instance] == nil else { return [] }
        pending[instance] = failure
        lastFailureAt = now
        recent = recent.filter { now - $0 < settings.window } + [now]
        var actions: [Action] = []
        if trippedAt == nil, recent.count >= settings.minimumFailures,
            Double(recent.count) >= settings.fraction * Double(max(monitored, 1))
        {
            trippedAt = now
            nextCheckAt = now + settings.recheckInterval
            actions.append(.tripped(failures: recent.count, monitored: monitored))
            actions.append(.askProvider(pending.keys.sorted()))
            actions.append(.wake(at: now + settings.recheckInterval))
        } else if trippedAt != nil {
            actions.append(.askProvider([instance]))
        } else {
            actions.append(.wake(at: now + settings.settle))
        }
        return actions
    }

    /// The failed agent was heard again.
    public mutating func returned(instance: InstanceID, now: Instant) -> [Action] {
        guard let failure = pending.removeValue(forKey: instance) else { return [] }
        return [.dropped(failure)] + resetIfQuiet(now: now)
    }

    /// The provider's answer for `instance` (nil: it does not list it).
    public mutating func provider(reports instance: InstanceID, running: Bool, now: Instant) -> [Action] {
        guard !running, let failure = pending.removeValue(forKey: instance) else { return [] }
        return [.failOver(failure)] + resetIfQuiet(now: now)
    }

    public mutating func tick(now: Instant) -> [Action] {
        guard trippedAt == nil else {
            var actions = resetIfQuiet(now: now)
            if trippedAt != nil, let check = nextCheckAt, now >= check {
                nextCheckAt = now + settings.recheckInterval
                actions.append(.askProvider(pending.keys.sorted()))
                actions.append(.wake(at: now + settings.recheckInterval))
            }
            return actions
        }
        // Not tripped: failures that settled go on.
        let settled = pending.values.filter { now - $0.at >= settings.settle }.sorted { ($0.at, $0.instance) < ($1.at, $1.instance) }
        for failure in settled { pending[failure.instance] = nil }
        return settled.map { .failOver($0) }
    }

    /// The operator says the failures are real: every held one is failed over.
    public mutating func release(now: Instant) -> [Action] {
        let held = pending.values.sorted { ($0.at, $0.instance) < ($1.at, $1.instance) }
        pending = [:]
        recent = []
        let wasTripped = trippedAt != nil
        trippedAt = nil
        nextCheckAt = nil
        return held.map { .failOver($0) } + (wasTripped ? [.released(reason: "released by an operator")] : [])
    }

    private mutating func resetIfQuiet(now: Instant) -> [Action] {
        guard trippedAt != nil, pending.isEmpty, let last = lastFailureAt, now - last >= settings.window else { return [] }
        trippedAt = nil
        nextCheckAt = nil
        recent = []
        return [.released(reason: "every held agent came back or was failed over")]
    }
}
