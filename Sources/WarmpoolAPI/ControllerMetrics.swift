import CoreMetrics
import Foundation
import NIOConcurrencyHelpers
import Prometheus
import WarmpoolLiveness
import WarmpoolModel

/// The controller's metrics, made once through swift-metrics and exposed by swift-prometheus.
/// None is labelled by agent: ten thousand agents must not mean ten thousand series.
public final class ControllerMetrics: Sendable {
    public let registry: PrometheusCollectorRegistry
    private let heartbeats: CoreMetrics.Counter
    private let agentsConnected: CoreMetrics.Gauge
    private let detectionLatency: CoreMetrics.Timer
    private let livenessEvents: [LivenessEvent.Kind: CoreMetrics.Counter]
    private let failoverDuration: CoreMetrics.Timer
    private let breakerTripped: CoreMetrics.Gauge
    private let failoversHeld: CoreMetrics.Gauge
    private let breakerTrips: CoreMetrics.Counter
    private let factory: PrometheusMetricsFactory
    private let heartbeatsCounted = NIOLockedValueBox<UInt64>(0)
    /// One series per pool (pools are few, unlike agents); a removed pool's series goes with it.
    private let poolProtected = NIOLockedValueBox<[PoolID: Prometheus.Gauge]>([:])

    public static let detectionLatencyLabel = "warmpool_detection_latency_seconds"
    public static let failoverDurationLabel = "warmpool_failover_duration_seconds"

    public init(registry: PrometheusCollectorRegistry = PrometheusCollectorRegistry()) {
        self.registry = registry
        var factory = PrometheusMetricsFactory(registry: registry)
        factory.durationHistogramBuckets = [
            Self.detectionLatencyLabel: [50, 100, 150, 200, 250, 300, 400, 500, 750, 1000, 2000, 5000].map { .milliseconds($0) },
            Self.failoverDurationLabel: [1, 2, 5, 10, 20, 30, 60, 120, 300, 600].map { .seconds($0) },
        ]
        self.factory = factory
        heartbeats = CoreMetrics.Counter(label: "warmpool_heartbeats_received_total", factory: factory)
        agentsConnected = CoreMetrics.Gauge(label: "warmpool_agents_connected", factory: factory)
        detectionLatency = CoreMetrics.Timer(label: Self.detectionLatencyLabel, factory: factory)
        failoverDuration = CoreMetrics.Timer(label: Self.failoverDurationLabel, factory: factory)
        breakerTripped = CoreMetrics.Gauge(label: "warmpool_mass_failure_suspected", factory: factory)
        failoversHeld = CoreMetrics.Gauge(label: "warmpool_failovers_held", factory: factory)
        breakerTrips = CoreMetrics.Counter(label: "warmpool_mass_failure_trips_total", factory: factory)
        breakerTripped.record(0)
        failoversHeld.record(0)
        var events: [LivenessEvent.Kind: CoreMetrics.Counter] = [:]
        for kind in LivenessEvent.Kind.allCases {
            events[kind] = CoreMetrics.Counter(
                label: "warmpool_liveness_events_total", dimensions: [("event", kind.rawValue)], factory: factory)
        }
        livenessEvents = events
        for result in ["succeeded", "failed", "degraded"] {
            _ = failovers(result: result)
        }
    }

    private func failovers(result: String) -> CoreMetrics.Counter {
        CoreMetrics.Counter(label: "warmpool_failovers_total", dimensions: [("result", result)], factory: factory)
    }

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
        breakerTripped.record(tripped ? 1 : 0)
        failoversHeld.record(held)
        if newTrip { breakerTrips.increment() }
    }

    public func failoverFinished(result: String, durationSeconds: Double) {
        failovers(result: result).increment()
        failoverDuration.recordNanoseconds(Int64(durationSeconds * 1e9))
    }

    /// Brings the scrape-time figures up to date: the hot path only bumps a plain integer in the
    /// hub, and the counter catches up here.
    public func refresh(from hub: LivenessHub) {
        let total = hub.heartbeatsReceived
        let delta = heartbeatsCounted.withLockedValue { counted -> UInt64 in
            defer { counted = max(counted, total) }
            return total > counted ? total - counted : 0
        }
        if delta > 0 { heartbeats.increment(by: Int64(delta)) }
        agentsConnected.record(hub.connectedAgents)
    }

    /// `warmpool_pool_protected{machine_id}`: 1 while the pool is protected, 0 while not.
    public func protection(_ protections: [PoolID: Bool]) {
        poolProtected.withLockedValue { gauges in
            for (poolID, gauge) in gauges where protections[poolID] == nil {
                registry.unregisterGauge(gauge)
                gauges[poolID] = nil
            }
            for (poolID, protected) in protections {
                let gauge = gauges[poolID] ?? registry.makeGauge(name: "warmpool_pool_protected", labels: [("machine_id", "\(poolID)")])
                gauges[poolID] = gauge
                gauge.set(Double(protected ? 1 : 0))
            }
        }
    }

    public func exposition() -> [UInt8] { registry.emitToBuffer() }
}
