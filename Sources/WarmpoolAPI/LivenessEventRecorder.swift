import Foundation
import Logging
import ServiceLifecycle
import WarmpoolController
import WarmpoolStore

/// Feeds liveness events to the metrics and to the store's event log (for `warmpoolctl events`),
/// in batches: a reconnect storm of thousands of agents is a handful of transactions.
public struct LivenessEventRecorder: Service {
    let events: AsyncStream<LivenessEvent>
    let store: any WarmpoolStore
    let metrics: ControllerMetrics
    let logger: Logger

    public init(eventLog: LivenessEventLog, store: any WarmpoolStore, metrics: ControllerMetrics, logger: Logger) {
        self.events = eventLog.subscribe()
        self.store = store
        self.metrics = metrics
        self.logger = logger
    }

    public func run() async throws {
        var batch: [PoolEvent] = []
        var flushAfter = ContinuousClock.now
        for await event in events.cancelOnGracefulShutdown() {
            metrics.record(event)
            batch.append(Self.poolEvent(event))
            if batch.count >= 500 || ContinuousClock.now >= flushAfter {
                await write(batch)
                batch.removeAll(keepingCapacity: true)
                flushAfter = ContinuousClock.now + .milliseconds(200)
            }
        }
        await write(batch)
    }

    private func write(_ batch: [PoolEvent]) async {
        do {
            try await store.recordEvents(batch)
        } catch {
            // The detector and the engine do not depend on this log; the gap is named.
            logger.error("cannot record liveness events", metadata: ["error": "\(error)", "events.lost": "\(batch.count)"])
        }
    }

    static func poolEvent(_ event: LivenessEvent) -> PoolEvent {
        var detail = "\(event.agent.role) instance \(event.agent.instanceID): \(event.reason)"
        if let fenced = event.fencedAtEpoch { detail += " (fenced at epoch \(fenced))" }
        return PoolEvent(
            machineID: Int64(event.agent.machineID), agentID: event.agent.agentID, kind: event.kind.rawValue, at: Date(),
            detail: detail)
    }
}
