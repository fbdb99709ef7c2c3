import Foundation
import Logging
import NIOConcurrencyHelpers
import ServiceLifecycle
import WarmpoolAPI
import WarmpoolLiveness
import WarmpoolModel
import WarmpoolNotify
import WarmpoolStore

/// Feeds liveness events to the metrics and to the store's event log (for `warmpoolctl events`),
/// in batches: a reconnect storm of thousands of agents is a handful of transactions.
struct LivenessEventRecorder: Service {
    let events: AsyncStream<[LivenessEvent]>
    let store: any WarmpoolStore
    let metrics: ControllerMetrics
    let logger: Logger

    init(bus: LivenessEventBus, store: any WarmpoolStore, metrics: ControllerMetrics, logger: Logger) {
        self.events = bus.subscribe()
        self.store = store
        self.metrics = metrics
        self.logger = logger
    }

    /// Events wait at most this long before they are written.
    static let flushInterval = Duration.milliseconds(200)

    func run() async throws {
        let pending = NIOLockedValueBox<[PoolEvent]>([])
        await withTaskGroup(of: Void.self) { group in
            group.addTask { [events, metrics, store] in
                // Agents with a record in the store are filed under its pool; an agent known
                // only from the keys file is in the event log alone: the machine id it reports is
                // its own word, and would let any credential write into any pool's log.
                var pools: [AgentID: PoolID] = [:]
                for await batch in events.cancelOnGracefulShutdown() {
                    // An agent's role is the pool's word, read once per batch: a promoted standby
                    // keeps the identity (and role) it was created with, but it is the primary now.
                    var records: [PoolID: PoolRecord?] = [:]
                    for event in batch {
                        metrics.record(event)
                        let agentID = event.agent.agentID
                        if pools[agentID] == nil, let found = try? await store.agent(id: agentID)?.poolID { pools[agentID] = found }
                        guard let pool = pools[agentID] else { continue }
                        if records[pool] == nil { records[pool] = .some(try? await store.pool(id: pool)) }
                        let record = records[pool] ?? nil
                        let recorded = Self.poolEvent(event, pool: pool, role: Self.role(of: event.agent.instanceID, in: record) ?? "\(event.agent.role)")
                        pending.withLockedValue { $0.append(recorded) }
                        if Self.notified.contains(event.kind) { await notify(event, recorded, pool: pool) }
                    }
                }
            }
            group.addTask {
                while !Task.isShuttingDownGracefully, !Task.isCancelled {
                    try? await Task.sleep(for: Self.flushInterval)
                    await write(pending.withLockedValue { batch in defer { batch.removeAll() }; return batch })
                }
            }
            await group.next()
            group.cancelAll()
        }
        await write(pending.withLockedValue { $0 })
    }

    private func write(_ batch: [PoolEvent]) async {
        do {
            try await store.recordEvents(batch)
        } catch {
            // The detector and the engine do not depend on this log; the gap is named.
            logger.error("cannot record liveness events", metadata: ["error": "\(error)", "events.lost": "\(batch.count)"])
        }
    }

    /// The fence history of a pool's agents also goes to the webhooks: an operator wants to know
    /// that a workload stands frozen, was thawed, or was killed for good.
    static let notified: Set<LivenessEvent.Kind> = [.fenced, .thawed, .fenceFinal, .fenceFailed]

    private func notify(_ event: LivenessEvent, _ recorded: PoolEvent, pool: PoolID) async {
        guard let record = try? await store.pool(id: pool) else { return }
        let now = SystemWallClock().now()
        let payload = WebhookPayload(
            id: "wp-\(pool)-\(event.kind.rawValue)-\(event.agent.agentID)-\(event.atNanoseconds)", event: event.kind.rawValue,
            poolID: pool, at: now, message: recorded.detail ?? event.reason, state: record.state,
            epoch: record.epoch, failover: nil, primaryInstanceID: record.primaryInstanceID, standbyInstanceID: record.standbyInstanceID)
        do {
            try await store.enqueue([payload.outboxEntry()])
        } catch {
            logger.error("cannot queue a fence notification", metadata: ["error": "\(error)", "event": "\(event.kind.rawValue)"])
        }
    }

    /// What the instance is to its pool now; nil when the pool does not name it.
    static func role(of instance: InstanceID, in pool: PoolRecord?) -> String? {
        guard let pool else { return nil }
        if pool.primaryInstanceID == instance { return "primary" }
        if pool.standbyInstanceID == instance { return "standby" }
        return nil
    }

    static func poolEvent(_ event: LivenessEvent, pool: PoolID, role: String? = nil) -> PoolEvent {
        var detail = "\(role ?? "\(event.agent.role)") instance \(event.agent.instanceID): \(event.reason)"
        if let fenced = event.fencedAtEpoch { detail += " (fenced at epoch \(fenced))" }
        return PoolEvent(
            poolID: pool, agentID: event.agent.agentID, kind: event.kind.rawValue, at: Date(),
            detail: detail)
    }
}
