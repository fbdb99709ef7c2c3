import Foundation
import WarmpoolJSON
import WarmpoolModel
import WarmpoolStore

/// The body of every webhook, in one place: its fields are what receivers parse, so they are
/// spelled once here and written with sorted keys, `null` written rather than omitted.
public struct WebhookPayload: Sendable, Equatable {
    /// Stable across redeliveries, so receivers can drop duplicates (also the delivery header).
    public var id: String
    /// The event's name (`failure_detected`, `failover_complete`, ...; also the event header).
    public var event: String
    public var poolID: PoolID
    public var at: Instant
    public var message: String
    public var state: PoolState
    public var epoch: Epoch
    /// The failover's id (`fo-POOL-N`), or nil for an event outside a failover.
    public var failover: String?
    public var primaryInstanceID: InstanceID?
    public var standbyInstanceID: InstanceID?
    /// A failover's events: the work it lost (the old primary's checkpoint age at detection), when known.
    public var workLostSeconds: Double?

    public init(
        id: String, event: String, poolID: PoolID, at: Instant, message: String, state: PoolState, epoch: Epoch,
        failover: String?, primaryInstanceID: InstanceID?, standbyInstanceID: InstanceID?
    ) {
        self.id = id
        self.event = event
        self.poolID = poolID
        self.at = at
        self.message = message
        self.state = state
        self.epoch = epoch
        self.failover = failover
        self.primaryInstanceID = primaryInstanceID
        self.standbyInstanceID = standbyInstanceID
    }

    /// The JSON text the outbox stores and the notifier sends: keys in byte order, slashes as they are.
    public func json() -> String {
        var body: [String: JSONValue] = [
            "id": .string(id),
            "event": .string(event),
            "machine_id": .int(poolID.rawValue),
            "at": .string(Self.timestamp(at)),
            "message": .string(message),
            "state": .string(state.rawValue),
            "epoch": .int(Int64(clamping: epoch.rawValue)),
            "failover": .string(failover),
            "primary_gpu_id": .int(primaryInstanceID?.rawValue),
            "standby_gpu_id": .int(standbyInstanceID?.rawValue),
        ]
        // Only a failover's events with a known recovery point carry it (receivers of older
        // payloads see no new null key).
        if let workLostSeconds { body["work_lost_seconds"] = .double((workLostSeconds * 1000).rounded() / 1000) }
        return String(decoding: JSONValue.object(body).serialized(options: .sortedKeys), as: UTF8.self)
    }

    /// The outbox row that carries it: due at once, keyed by the payload's id.
    public func outboxEntry() -> OutboxEntry {
        let date = Date(timeIntervalSince1970: at.secondsSinceEpoch)
        return OutboxEntry(id: id, kind: event, poolID: poolID, payload: json(), createdAt: date, nextAttemptAt: date)
    }

    /// ISO 8601, UTC, milliseconds.
    static func timestamp(_ instant: Instant) -> String {
        Date(timeIntervalSince1970: instant.secondsSinceEpoch).formatted(Date.ISO8601FormatStyle(includingFractionalSeconds: true))
    }
}
