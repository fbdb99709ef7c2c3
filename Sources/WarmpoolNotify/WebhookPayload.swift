import Foundation
import WarmpoolModel
import WarmpoolStore

/// The body of every webhook, in one place: its fields are what receivers parse, so they are
/// spelled once here and written with sorted keys, `null` written rather than omitted.
public struct WebhookPayload: Sendable, Equatable, Encodable {
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

    enum CodingKeys: String, CodingKey {
        case id, event, at, message, state, epoch, failover
        case poolID = "machine_id"
        case primaryInstanceID = "primary_gpu_id"
        case standbyInstanceID = "standby_gpu_id"
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(id, forKey: .id)
        try container.encode(event, forKey: .event)
        try container.encode(poolID, forKey: .poolID)
        try container.encode(Self.timestamp(at), forKey: .at)
        try container.encode(message, forKey: .message)
        try container.encode(state, forKey: .state)
        try container.encode(epoch, forKey: .epoch)
        try container.encode(failover, forKey: .failover)
        try container.encode(primaryInstanceID, forKey: .primaryInstanceID)
        try container.encode(standbyInstanceID, forKey: .standbyInstanceID)
    }

    /// The JSON text the outbox stores and the notifier sends.
    public func json() -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        // Every field is a string, a number or null: encoding cannot fail.
        return String(decoding: (try? encoder.encode(self)) ?? Data("{}".utf8), as: UTF8.self)
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
