import Foundation
import NIOConcurrencyHelpers
import Prometheus
import WarmpoolLiveness
import WarmpoolModel
import WarmpoolStore
import WarmpoolWire

/// The controller's metrics, exposed by swift-prometheus with a HELP line on every family.
///
/// They are made straight on the registry: swift-metrics' factory (`PrometheusMetricsFactory`)
/// passes no help text, and an SRE reading `/metrics` needs it. None is labelled by agent: ten
/// thousand agents must not mean ten thousand series. Pools are few, so per-pool series are
/// labelled `machine_id`, and a removed pool's series go with it.
///
/// Two kinds of figure: what happens in the controller (heartbeats, liveness events, detection
/// latency, failover durations, the breaker) is counted as it happens; what the store or the hub
/// already knows (pools, failovers, agents, the webhook outbox) is read at scrape time by
/// `scrape`, so a restarted controller reports the same failover totals.
public final class ControllerMetrics: Sendable {
    public let registry: PrometheusCollectorRegistry
    /// Only a controller that delivers webhooks shows the outbox: without receivers it fills up
    /// by design, and a backlog alert would fire for ever.
    public let countsWebhooks: Bool

    private let livenessEvents: [LivenessEvent.Kind: Counter]
    private let detectionLatency: DurationHistogram
    private let failoverDuration: DurationHistogram
    private let breakerTripped: Gauge
    private let failoversHeld: Gauge
    private let breakerTrips: Counter
    private let agentsConnected: Gauge
    private let agentsFenced: Gauge
    private let agentsFenceFailed: Gauge
    private let webhooks: (backlog: Gauge, oldestAge: Gauge)?
    private let series: NIOLockedValueBox<ScrapedSeries>

    public static let detectionLatencyBuckets: [Duration] =
        [50, 100, 150, 200, 250, 300, 400, 500, 750, 1000, 2000, 5000].map { .milliseconds($0) }
    public static let failoverDurationBuckets: [Duration] = [1, 2, 5, 10, 20, 30, 60, 120, 300, 600].map { .seconds($0) }

    public init(registry: PrometheusCollectorRegistry = PrometheusCollectorRegistry(), countsWebhooks: Bool = false) {
        self.registry = registry
        self.countsWebhooks = countsWebhooks
        typealias F = ControllerMetricFamily
        var events: [LivenessEvent.Kind: Counter] = [:]
        for kind in LivenessEvent.Kind.allCases {
            events[kind] = registry.makeCounter(descriptor: F.livenessEvents.descriptor, labels: [("event", kind.rawValue)])
        }
        livenessEvents = events
        detectionLatency = registry.makeDurationHistogram(descriptor: F.detectionLatency.descriptor, buckets: Self.detectionLatencyBuckets)
        failoverDuration = registry.makeDurationHistogram(descriptor: F.failoverDuration.descriptor, buckets: Self.failoverDurationBuckets)
        breakerTripped = registry.makeGauge(descriptor: F.breakerTripped.descriptor)
        failoversHeld = registry.makeGauge(descriptor: F.failoversHeld.descriptor)
        breakerTrips = registry.makeCounter(descriptor: F.breakerTrips.descriptor)
        agentsConnected = registry.makeGauge(descriptor: F.agentsConnected.descriptor)
        agentsFenced = registry.makeGauge(descriptor: F.agentsFenced.descriptor)
        agentsFenceFailed = registry.makeGauge(descriptor: F.agentsFenceFailed.descriptor)
        webhooks = countsWebhooks
            ? (registry.makeGauge(descriptor: F.webhookBacklog.descriptor),
               registry.makeGauge(descriptor: F.webhookOldestPendingAge.descriptor))
            : nil
        // Every result from the start, at 0: a rate over a series that appears late misses its first failover.
        var byResult: [FailoverRecord.Result: FollowedCounter] = [:]
        for result in ScrapeFigures.finishedResults {
            byResult[result] = FollowedCounter(
                registry.makeCounter(descriptor: F.failovers.descriptor, labels: [("result", result.rawValue)]))
        }
        series = NIOLockedValueBox(ScrapedSeries(
            heartbeats: FollowedCounter(registry.makeCounter(descriptor: F.heartbeats.descriptor)),
            failoversByResult: byResult,
            webhooksGivenUp: countsWebhooks
                ? FollowedCounter(registry.makeCounter(descriptor: F.webhookGivenUp.descriptor)) : nil))
    }

    // MARK: Counted as it happens

    /// Counts a liveness event. Detection latency is a failure's silence: from the agent's last
    /// frame to the moment the detector declared it failed.
    public func record(_ event: LivenessEvent) {
        livenessEvents[event.kind]?.increment()
        if event.kind == .failed, let silence = event.silenceNanoseconds {
            detectionLatency.recordNanoseconds(silence)
        }
    }

    /// The mass-failure breaker: tripped (1) or not, the failovers it holds, and a new trip.
    public func breaker(tripped: Bool, held: Int, newTrip: Bool) {
        breakerTripped.set(Int64(tripped ? 1 : 0))
        failoversHeld.set(Int64(held))
        if newTrip { breakerTrips.increment() }
    }

    /// A failover's duration. How many failovers ended each way is not counted here: the store's
    /// rows are counted at scrape time, so the totals survive a restart.
    public func failoverFinished(durationSeconds: Double) {
        failoverDuration.recordNanoseconds(Int64(durationSeconds * 1e9))
    }

    // MARK: Read at scrape time

    /// Shows `figures`: every pool's series made, set or (for a pool no longer there) removed,
    /// and the followed totals moved up to them.
    public func apply(_ figures: ScrapeFigures) {
        if let agents = figures.agents {
            agentsConnected.set(Int64(agents.connected))
            agentsFenced.set(Int64(agents.fenced))
            agentsFenceFailed.set(Int64(agents.fenceCommandFailed))
        }
        if let webhooks, let backlog = figures.webhooks {
            webhooks.backlog.set(Int64(backlog.pending))
            webhooks.oldestAge.set(backlog.oldestPendingAgeSeconds)
        }
        series.withLockedValue { series in
            if let agents = figures.agents { series.heartbeats.follow(Int64(clamping: agents.heartbeatsReceived)) }
            for result in ScrapeFigures.finishedResults {
                series.failoversByResult[result]?.follow(Int64(figures.failoversByResult[result] ?? 0))
            }
            if let backlog = figures.webhooks { series.webhooksGivenUp?.follow(Int64(backlog.givenUp)) }
            let present = Set(figures.pools.map(\.poolID))
            for (poolID, pool) in series.pools where !present.contains(poolID) {
                pool.unregister(from: registry)
                series.pools[poolID] = nil
            }
            for figure in figures.pools {
                var pool = series.pools[figure.poolID] ?? PoolSeries(figure.poolID, incarnation: figure.incarnation, registry: registry)
                pool.show(figure, registry: registry)
                series.pools[figure.poolID] = pool
            }
        }
    }

    /// Reads what a scrape shows, applies it and returns the exposition. Whatever the number of
    /// pools, the store is read three times (pools, failover tallies, and the outbox when webhooks
    /// are on); the engine's protections and the hub's agents come from memory.
    public func scrape(store: any WarmpoolStore, operations: any PoolOperations, hub: LivenessHub?) async throws -> [UInt8] {
        let records = try await store.pools()
        let tallies = try await store.failoverTallies()
        let backlog = countsWebhooks ? try await store.outboxBacklog() : nil
        let protections = await operations.protections()
        let now = Date()
        var recoveryPoints: [PoolID: ScrapeFigures.RecoveryPoint] = [:]
        if let hub {
            let monotonicNow = MonotonicClock.now()
            for record in records {
                guard let primary = record.primaryInstanceID, let report = hub.recoveryPoint(instanceID: primary) else { continue }
                recoveryPoints[record.poolID] = .init(
                    checkpointAgeSeconds: report.checkpointAge(at: monotonicNow), snapshotAgeSeconds: report.snapshotAge(at: monotonicNow))
            }
        }
        apply(ScrapeFigures(
            pools: ScrapeFigures.pools(records, tallies: tallies, protections: protections, recoveryPoints: recoveryPoints),
            failoversByResult: ScrapeFigures.failoversByResult(tallies),
            agents: hub.map {
                ScrapeFigures.agents($0.agentSnapshots(), heartbeatsReceived: $0.heartbeatsReceived, connected: $0.connectedAgents)
            },
            webhooks: backlog.map { ScrapeFigures.webhooks($0, now: now) }))
        return exposition()
    }

    public func exposition() -> [UInt8] { registry.emitToBuffer() }
}

/// Each family's name and one-line HELP, in one place: swift-prometheus traps when one name is
/// registered with two texts, and the monitoring rules and dashboard (Scripts/monitoring) use
/// these names, which MetricsTests checks against a real exposition.
public struct ControllerMetricFamily: Sendable {
    public let name: String
    public let help: String

    /// The whole name goes in `metricName`: the names are spelled out here as they are used.
    var descriptor: MetricNameDescriptor { MetricNameDescriptor(metricName: name, unitName: "", helpText: help) }

    static let heartbeats = Self(
        name: "warmpool_heartbeats_received_total", help: "Heartbeat frames received from all agents.")
    static let livenessEvents = Self(
        name: "warmpool_liveness_events_total",
        help: "Failure-detector events by kind (connected, suspected, failed, recovered, fenced, left, ...).")
    static let detectionLatency = Self(
        name: "warmpool_detection_latency_seconds",
        help: "Silence of an agent the detector failed: from its last frame to the failure, in seconds.")
    static let failoverDuration = Self(
        name: "warmpool_failover_duration_seconds",
        help: "Failovers that finished while this controller ran: detection to promotion (or to failure), in seconds.")
    static let failovers = Self(
        name: "warmpool_failovers_total",
        help: "Failovers that finished, by result, over every pool ever managed (read from the store: survives restarts).")
    static let breakerTripped = Self(
        name: "warmpool_mass_failure_suspected",
        help: "1 while the mass-failure breaker holds failovers (many primaries failed at once); 0 otherwise.")
    static let failoversHeld = Self(
        name: "warmpool_failovers_held", help: "Failovers the mass-failure breaker holds until the provider confirms each or an operator releases them.")
    static let breakerTrips = Self(
        name: "warmpool_mass_failure_trips_total", help: "Times the mass-failure breaker tripped since this controller started.")
    static let agentsConnected = Self(
        name: "warmpool_agents_connected", help: "Agents with at least one open session to this controller.")
    static let agentsFenced = Self(
        name: "warmpool_agents_fenced",
        help: "Connected agents that report they fenced themselves on lease loss: their workload is frozen or killed.")
    static let agentsFenceFailed = Self(
        name: "warmpool_agents_fence_command_failed",
        help: "Connected agents whose fence command last exited non-zero: their workload may still be writing.")
    static let webhookBacklog = Self(
        name: "warmpool_webhook_backlog", help: "Webhook notifications not yet delivered to every receiver and still being retried.")
    static let webhookOldestPendingAge = Self(
        name: "warmpool_webhook_oldest_pending_age_seconds",
        help: "Age of the oldest webhook notification still being retried, in seconds; 0 when none is.")
    static let webhookGivenUp = Self(
        name: "warmpool_webhook_given_up_total",
        help: "Webhook notifications the notifier gave up on (left undelivered in the outbox; read from the store).")
    static let poolState = Self(
        name: "warmpool_pool_state",
        help: "1 for the pool's current state, 0 for the others (disabled, searching, provisioning, active, failover, recovering, degraded, error).")
    static let poolEnabled = Self(
        name: "warmpool_pool_enabled", help: "1 while a failure of the pool's primary is failed over; 0 while the pool is disabled.")
    static let poolProtected = Self(
        name: "warmpool_pool_protected", help: "1 while the pool would survive its primary's failure now (every condition ok); 0 while not.")
    static let poolStandbyAtRisk = Self(
        name: "warmpool_pool_standby_at_risk",
        help: "1 while the pool's host offered no free GPU at the last look: the stopped standby's start would wait in scheduling.")
    static let poolFailovers = Self(
        name: "warmpool_pool_failovers_total", help: "Failovers of the pool that finished, whatever their result (read from the store).")
    static let poolLastFailoverDuration = Self(
        name: "warmpool_pool_last_failover_duration_seconds",
        help: "How long the pool's newest finished failover took: detection to promotion (or to failure), in seconds.")
    static let poolCheckpointAge = Self(
        name: "warmpool_pool_checkpoint_age_seconds",
        help: "Age of the newest checkpoint the pool's primary reports on its volume, in seconds: the work a failover would lose.")
    static let poolSnapshotAge = Self(
        name: "warmpool_pool_snapshot_age_seconds",
        help: "Age of the newest snapshot of the pool's volume the primary reports, in seconds: the work a move to another host would lose.")

    /// Every family the controller can show, for tests and docs.
    public static let all: [ControllerMetricFamily] = [
        heartbeats, livenessEvents, detectionLatency, failoverDuration, failovers, breakerTripped, failoversHeld, breakerTrips,
        agentsConnected, agentsFenced, agentsFenceFailed, webhookBacklog, webhookOldestPendingAge, webhookGivenUp, poolState,
        poolEnabled, poolProtected, poolStandbyAtRisk, poolFailovers, poolLastFailoverDuration, poolCheckpointAge, poolSnapshotAge,
    ]
}

/// What one scrape shows of things read rather than counted: the pools, the failover history,
/// the agents and the webhook outbox. Pure values; `ControllerMetrics.scrape` gathers them.
public struct ScrapeFigures: Sendable, Equatable {
    public struct Pool: Sendable, Equatable {
        public var poolID: PoolID
        /// Which of the machine id's pools this is: a new one's failovers count from 0.
        public var incarnation: Int
        public var state: PoolState
        public var enabled: Bool
        public var protected: Bool
        public var standbyAtRisk: Bool
        /// Finished failovers of the pool's current incarnation (a machine id provisioned again
        /// after a cleanup is a new pool, counted from 0, like its status' `failover_count`).
        public var failovers: Int
        public var lastFailoverSeconds: Double?
        public var recoveryPoint: RecoveryPoint?

        public init(poolID: PoolID, incarnation: Int = 1, state: PoolState, enabled: Bool, protected: Bool, standbyAtRisk: Bool,
                    failovers: Int, lastFailoverSeconds: Double? = nil, recoveryPoint: RecoveryPoint? = nil)
        {
            self.poolID = poolID
            self.incarnation = incarnation
            self.state = state
            self.enabled = enabled
            self.protected = protected
            self.standbyAtRisk = standbyAtRisk
            self.failovers = failovers
            self.lastFailoverSeconds = lastFailoverSeconds
            self.recoveryPoint = recoveryPoint
        }
    }

    /// As the status route shows it (`recovery_point`): what the primary's agent last reported, aged to now.
    public struct RecoveryPoint: Sendable, Equatable {
        public var checkpointAgeSeconds: Double?
        public var snapshotAgeSeconds: Double?
        public init(checkpointAgeSeconds: Double?, snapshotAgeSeconds: Double?) {
            self.checkpointAgeSeconds = checkpointAgeSeconds
            self.snapshotAgeSeconds = snapshotAgeSeconds
        }
    }

    public struct Agents: Sendable, Equatable {
        public var heartbeatsReceived: UInt64
        public var connected: Int
        public var fenced: Int
        public var fenceCommandFailed: Int
        public init(heartbeatsReceived: UInt64, connected: Int, fenced: Int, fenceCommandFailed: Int) {
            self.heartbeatsReceived = heartbeatsReceived
            self.connected = connected
            self.fenced = fenced
            self.fenceCommandFailed = fenceCommandFailed
        }
    }

    public struct Webhooks: Sendable, Equatable {
        public var pending: Int
        public var oldestPendingAgeSeconds: Double
        public var givenUp: Int
        public init(pending: Int, oldestPendingAgeSeconds: Double, givenUp: Int) {
            self.pending = pending
            self.oldestPendingAgeSeconds = oldestPendingAgeSeconds
            self.givenUp = givenUp
        }
    }

    public var pools: [Pool]
    /// Every finished failover recorded, removed pools' included, by result.
    public var failoversByResult: [FailoverRecord.Result: Int]
    /// nil without a liveness hub: the agent figures are left as they were.
    public var agents: Agents?
    /// nil when the controller delivers no webhooks.
    public var webhooks: Webhooks?

    public init(pools: [Pool], failoversByResult: [FailoverRecord.Result: Int], agents: Agents? = nil, webhooks: Webhooks? = nil) {
        self.pools = pools
        self.failoversByResult = failoversByResult
        self.agents = agents
        self.webhooks = webhooks
    }

    static let finishedResults: [FailoverRecord.Result] = [.succeeded, .failed, .degraded]

    /// Each stored pool's figures. The engine's conditions decide protection, risk and whether it is
    /// enabled; a pool no engine manages (no provider configured) is not protected.
    public static func pools(
        _ records: [PoolRecord], tallies: [FailoverTally], protections: [PoolID: PoolProtection],
        recoveryPoints: [PoolID: RecoveryPoint] = [:]
    ) -> [Pool] {
        let incarnations = Dictionary(records.map { ($0.poolID, $0.incarnation) }, uniquingKeysWith: max)
        var finished: [PoolID: (count: Int, last: FailoverTally?)] = [:]
        for tally in tallies where tally.result != .inProgress && incarnations[tally.poolID] == tally.incarnation {
            var entry = finished[tally.poolID] ?? (0, nil)
            entry.count += tally.count
            if let at = tally.lastFinishedAt, at > (entry.last?.lastFinishedAt ?? .distantPast) { entry.last = tally }
            finished[tally.poolID] = entry
        }
        return records.map { record in
            let protection = protections[record.poolID]
            func condition(_ type: String) -> Bool? { protection?.conditions.first { $0.type == type }?.status }
            let last = finished[record.poolID]?.last
            return Pool(
                poolID: record.poolID, incarnation: record.incarnation, state: record.state, enabled: condition("Enabled") ?? (record.state != .disabled),
                protected: protection?.protected ?? false, standbyAtRisk: condition("StandbyAtRisk") ?? false,
                failovers: finished[record.poolID]?.count ?? 0,
                lastFailoverSeconds: last.flatMap { last in
                    last.lastStartedAt.flatMap { started in last.lastFinishedAt.map { max(0, $0.timeIntervalSince(started)) } }
                },
                recoveryPoint: recoveryPoints[record.poolID])
        }
    }

    public static func failoversByResult(_ tallies: [FailoverTally]) -> [FailoverRecord.Result: Int] {
        tallies.filter { $0.result != .inProgress }.reduce(into: [:]) { $0[$1.result, default: 0] += $1.count }
    }

    /// Only agents with a session count: a fenced agent that went away fences nothing any more.
    public static func agents(_ snapshots: [AgentLivenessSnapshot], heartbeatsReceived: UInt64, connected: Int) -> Agents {
        let open = snapshots.filter { $0.openSessions > 0 }
        return Agents(
            heartbeatsReceived: heartbeatsReceived, connected: connected,
            fenced: open.filter { $0.status?.flags.contains(.fenced) == true }.count,
            fenceCommandFailed: open.filter { $0.status?.flags.contains(.fenceCommandFailed) == true }.count)
    }

    public static func webhooks(_ backlog: OutboxBacklog, now: Date) -> Webhooks {
        Webhooks(pending: backlog.pending, oldestPendingAgeSeconds: backlog.oldestPendingCreatedAt.map { max(0, now.timeIntervalSince($0)) } ?? 0,
                 givenUp: backlog.givenUp)
    }
}

/// A counter that follows a total kept elsewhere (the store's rows, the hub's count), which only
/// grows: it moves up by the difference, so no scrape sees it pass through 0. A lower total is a
/// stale read (two scrapes at once, the later one applied first) and changes nothing; a pool's
/// new incarnation, which counts from 0 again, gets a new counter instead.
struct FollowedCounter {
    let counter: Counter
    private var shown: Int64 = 0

    init(_ counter: Counter) { self.counter = counter }

    mutating func follow(_ total: Int64) {
        guard total > shown else { return }
        counter.increment(by: total - shown)
        shown = total
    }
}

/// The series made from scrape-time figures, under one lock so that two scrapes at once neither
/// make a pool's series twice nor count a difference twice.
struct ScrapedSeries {
    var heartbeats: FollowedCounter
    var failoversByResult: [FailoverRecord.Result: FollowedCounter]
    var webhooksGivenUp: FollowedCounter?
    var pools: [PoolID: PoolSeries] = [:]
}

/// One pool's series. Those that may have no value (no finished failover, no report from the
/// primary) exist only while they have one: an absent series says "unknown", a 0 would lie.
struct PoolSeries {
    let labels: [(String, String)]
    private(set) var incarnation: Int
    let states: [PoolState: Gauge]
    let enabled: Gauge
    let protected: Gauge
    let standbyAtRisk: Gauge
    var failovers: FollowedCounter
    var lastFailoverDuration: Gauge?
    var checkpointAge: Gauge?
    var snapshotAge: Gauge?

    init(_ poolID: PoolID, incarnation: Int, registry: PrometheusCollectorRegistry) {
        typealias F = ControllerMetricFamily
        let labels = [("machine_id", "\(poolID)")]
        self.labels = labels
        self.incarnation = incarnation
        var states: [PoolState: Gauge] = [:]
        for state in PoolState.allCases {
            states[state] = registry.makeGauge(descriptor: F.poolState.descriptor, labels: labels + [("state", state.rawValue)])
        }
        self.states = states
        enabled = registry.makeGauge(descriptor: F.poolEnabled.descriptor, labels: labels)
        protected = registry.makeGauge(descriptor: F.poolProtected.descriptor, labels: labels)
        standbyAtRisk = registry.makeGauge(descriptor: F.poolStandbyAtRisk.descriptor, labels: labels)
        failovers = FollowedCounter(registry.makeCounter(descriptor: F.poolFailovers.descriptor, labels: labels))
    }

    mutating func show(_ pool: ScrapeFigures.Pool, registry: PrometheusCollectorRegistry) {
        for (state, gauge) in states { gauge.set(Int64(state == pool.state ? 1 : 0)) }
        enabled.set(Int64(pool.enabled ? 1 : 0))
        protected.set(Int64(pool.protected ? 1 : 0))
        standbyAtRisk.set(Int64(pool.standbyAtRisk ? 1 : 0))
        if pool.incarnation != incarnation {
            // The machine id was provisioned again: a new pool, whose counter starts at 0 (a reset to Prometheus).
            registry.unregisterCounter(failovers.counter)
            failovers = FollowedCounter(registry.makeCounter(descriptor: ControllerMetricFamily.poolFailovers.descriptor, labels: labels))
            incarnation = pool.incarnation
        }
        failovers.follow(Int64(pool.failovers))
        Self.show(pool.lastFailoverSeconds, in: &lastFailoverDuration, ControllerMetricFamily.poolLastFailoverDuration, labels, registry)
        Self.show(pool.recoveryPoint?.checkpointAgeSeconds, in: &checkpointAge, ControllerMetricFamily.poolCheckpointAge, labels, registry)
        Self.show(pool.recoveryPoint?.snapshotAgeSeconds, in: &snapshotAge, ControllerMetricFamily.poolSnapshotAge, labels, registry)
    }

    private static func show(_ value: Double?, in gauge: inout Gauge?, _ family: ControllerMetricFamily, _ labels: [(String, String)],
                             _ registry: PrometheusCollectorRegistry)
    {
        guard let value else {
            if let gauge { registry.unregisterGauge(gauge) }
            gauge = nil
            return
        }
        let made = gauge ?? registry.makeGauge(descriptor: family.descriptor, labels: labels)
        made.set(value)
        gauge = made
    }

    func unregister(from registry: PrometheusCollectorRegistry) {
        for gauge in [enabled, protected, standbyAtRisk] + Array(states.values) + [lastFailoverDuration, checkpointAge, snapshotAge].compactMap({ $0 }) {
            registry.unregisterGauge(gauge)
        }
        registry.unregisterCounter(failovers.counter)
    }
}
