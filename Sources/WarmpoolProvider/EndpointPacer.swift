/// Spaces the calls to each endpoint so that the controller does not set off a 429 storm. Vast.ai
/// limits every endpoint as a minimum interval between calls and mostly does not say which
/// (reference: Rate limits), so the interval is learnt: each 429 doubles the endpoint's spacing
/// (from `firstSpacing` up to `maximumSpacing`), and each call served after it takes a tenth off
/// again, down to the configured floor. Calls to one endpoint then go out one spacing apart, in
/// the order they asked. Pure: the transport passes the time in and sleeps.
public struct EndpointPacer: Sendable {
    public struct Settings: Hashable, Sendable {
        /// Spacing kept at all times per operation (`*` for every operation without its own).
        public var floors: [String: Duration]
        public var firstSpacing: Duration
        public var maximumSpacing: Duration

        public init(floors: [String: Duration] = [:], firstSpacing: Duration = .milliseconds(500), maximumSpacing: Duration = .seconds(30)) {
            self.floors = floors
            self.firstSpacing = firstSpacing
            self.maximumSpacing = maximumSpacing
        }

        func floor(_ operation: String) -> Duration { floors[operation] ?? floors["*"] ?? .zero }
    }

    public let settings: Settings
    private var spacing: [String: Duration] = [:]
    private var nextSlot: [String: ContinuousClock.Instant] = [:]
    /// 429s seen per operation since the start: for logs and drills.
    public private(set) var rateLimited: [String: Int] = [:]

    public init(settings: Settings = Settings()) { self.settings = settings }

    /// The spacing `operation` is held to now.
    public func spacing(_ operation: String) -> Duration { max(spacing[operation] ?? .zero, settings.floor(operation)) }

    /// When a call of `operation` asked for at `now` may go out; the slot after it is taken. A
    /// caller that will not wait past `now + patience` gets nil and takes no slot: refused calls
    /// that each took one pushed the next slot on by a spacing apiece, and with many pools polling
    /// (the chaos drill: ten a second) a 30 s spacing ran the queue minutes ahead, stalling every
    /// failover behind it.
    public mutating func reserve(_ operation: String, now: ContinuousClock.Instant, patience: Duration? = nil) -> ContinuousClock.Instant? {
        let at = max(now, nextSlot[operation] ?? now)
        if let patience, at - now > patience { return nil }
        nextSlot[operation] = at + spacing(operation)
        return at
    }

    /// When the next call of `operation` could go out, without taking it.
    public func nextAvailable(_ operation: String, now: ContinuousClock.Instant) -> ContinuousClock.Instant {
        max(now, nextSlot[operation] ?? now)
    }

    /// A call of `operation` was answered 429 at `now`: wider spacing, and nothing more goes out
    /// before one spacing has passed. With a `Retry-After`, the provider said how long: that is
    /// held, and nothing is learnt (a burst of 429s that each said "1 s" had the spacing doubled
    /// to its 30 s maximum).
    public mutating func rateLimited(_ operation: String, now: ContinuousClock.Instant, retryAfter: Duration? = nil) {
        rateLimited[operation, default: 0] += 1
        if let retryAfter {
            hold(operation, until: now + retryAfter)
            return
        }
        let wider = spacing[operation].map { $0 * 2 } ?? settings.firstSpacing
        spacing[operation] = min(settings.maximumSpacing, max(wider, settings.firstSpacing))
        nextSlot[operation] = max(nextSlot[operation] ?? now, now + spacing(operation))
    }

    /// The provider waits until `until` (a `Retry-After`): nothing of `operation` goes before.
    public mutating func hold(_ operation: String, until: ContinuousClock.Instant) {
        nextSlot[operation] = max(nextSlot[operation] ?? until, until)
    }

    /// A call of `operation` was served: the learnt spacing relaxes a little.
    public mutating func served(_ operation: String) {
        guard let current = spacing[operation] else { return }
        let relaxed = current * 0.9
        spacing[operation] = relaxed < .milliseconds(10) ? nil : relaxed
    }
}
