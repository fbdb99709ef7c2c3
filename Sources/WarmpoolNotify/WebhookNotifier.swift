import Foundation
import Logging
import ServiceLifecycle
import WarmpoolHTTP
import WarmpoolModel
import WarmpoolStore

/// Delivers the store's notification outbox to webhook receivers, as a ServiceLifecycle service.
///
/// Every `pollInterval` it takes the due entries, oldest first, and POSTs each one's `payload` to
/// every receiver with these headers (Protocol/WEBHOOKS.md):
///
///     Content-Type: application/json
///     X-Warmpool-Event: <kind>            failure_detected, failover_complete, ...
///     X-Warmpool-Delivery: <entry id>     the same on every retry: receivers drop duplicates by it
///     X-Warmpool-Timestamp: <unix seconds>
///     X-Warmpool-Signature: sha256=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>
///
/// A 2xx from a receiver is acceptance. An entry is delivered once every receiver has accepted
/// it; until then each round is a failed attempt with the precise reasons, retried on the
/// `DeliveryPolicy`'s backoff, and a retry goes only to the receivers that have not accepted yet.
/// That per-receiver record lives in memory: after a controller restart a receiver that had
/// already taken an entry may get it once more (same delivery id). The outbox itself is in the
/// store, so a restart loses nothing. Past the give-up limit an entry is left undelivered with its
/// last error ("gave up after ...") and logged at error level.
public final class WebhookNotifier: Service, Sendable {
    public struct Configuration: Sendable {
        /// Where every entry goes; all must accept it.
        public var urls: [String]
        /// The HMAC key shared with the receivers.
        public var secret: [UInt8]
        public var pollInterval: Duration
        /// Whole-request limit; a receiver slower than this is a failed attempt.
        public var requestTimeout: Duration
        public var connectTimeout: Duration
        public var policy: DeliveryPolicy
        /// Entries read per poll; a full batch is followed by the next at once.
        public var batchSize: Int
        public var userAgent: String

        public init(urls: [String], secret: [UInt8], pollInterval: Duration = .milliseconds(250),
                    requestTimeout: Duration = .seconds(10), connectTimeout: Duration = .seconds(5),
                    policy: DeliveryPolicy = DeliveryPolicy(), batchSize: Int = 32, userAgent: String = "warmpool-webhook/1")
        {
            precondition(!urls.isEmpty && !secret.isEmpty && batchSize > 0, "a notifier needs a URL, a secret and a batch size")
            self.urls = urls
            self.secret = secret
            self.pollInterval = pollInterval
            self.requestTimeout = requestTimeout
            self.connectTimeout = connectTimeout
            self.policy = policy
            self.batchSize = batchSize
            self.userAgent = userAgent
        }
    }

    private let configuration: Configuration
    private let store: any WarmpoolStore
    private let client: HTTPClient
    private let logger: Logger
    private let clock: any WallClock

    public init(
        configuration: Configuration, store: any WarmpoolStore, client: HTTPClient = HTTPClient(), logger: Logger,
        clock: any WallClock = SystemWallClock()
    ) {
        self.configuration = configuration
        self.store = store
        self.client = client
        self.logger = logger
        self.clock = clock
    }

    /// The wall clock as the outbox and the signature read it.
    private func now() -> Date { Date(timeIntervalSince1970: clock.now().secondsSinceEpoch) }

    /// Polls until graceful shutdown or cancellation. A round in progress is finished first, so
    /// its outcome is recorded rather than repeated after the restart.
    public func run() async throws {
        logger.info("webhook notifier started", metadata: [
            "notify.receivers": "\(configuration.urls.map(Self.receiverName).joined(separator: ", "))",
        ])
        var accepted = Acceptances()
        while !Task.isCancelled, !Task.isShuttingDownGracefully {
            var fullBatch = false
            do {
                fullBatch = try await deliverDueEntries(&accepted) == configuration.batchSize
            } catch {
                // The store failed: wait out the interval rather than spin, and try again.
                logger.error("cannot work the notification outbox", metadata: ["notify.error": "\(error)"])
            }
            if !fullBatch {
                try? await cancelWhenGracefulShutdown { [pollInterval = configuration.pollInterval] in
                    try await Task.sleep(for: pollInterval)
                }
            }
        }
        logger.info("webhook notifier stopped")
    }

    /// One poll: every due entry gets one delivery round. Returns how many entries were due.
    private func deliverDueEntries(_ accepted: inout Acceptances) async throws -> Int {
        let entries = try await store.dueNotifications(now: now(), limit: configuration.batchSize)
        for entry in entries {
            if Task.isCancelled || Task.isShuttingDownGracefully { break }
            try await deliver(entry, &accepted)
        }
        return entries.count
    }

    private func deliver(_ entry: OutboxEntry, _ accepted: inout Acceptances) async throws {
        let body = Data(entry.payload.utf8)
        let timestamp = Int64(now().timeIntervalSince1970)
        let headers: [(name: String, value: String)] = [
            ("Content-Type", "application/json"),
            ("User-Agent", configuration.userAgent),
            ("X-Warmpool-Event", entry.kind),
            ("X-Warmpool-Delivery", entry.id),
            ("X-Warmpool-Timestamp", String(timestamp)),
            ("X-Warmpool-Signature", WebhookSignature.sign(body: body, timestamp: timestamp, secret: configuration.secret)),
        ]
        let pending = configuration.urls.indices.filter { !accepted.contains(entry.id, receiver: $0) }
        let failures: [(receiver: Int, reason: String)] = await withTaskGroup(of: (Int, String?).self) { group in
            for receiver in pending {
                group.addTask { (receiver, await self.post(body, headers: headers, to: receiver)) }
            }
            var failures: [(receiver: Int, reason: String)] = []
            for await (receiver, failure) in group {
                if let failure { failures.append((receiver, failure)) } else { accepted.insert(entry.id, receiver: receiver) }
            }
            return failures.sorted { $0.receiver < $1.receiver }
        }

        let now = now()
        var metadata: Logger.Metadata = [
            "notify.delivery": "\(entry.id)", "notify.event": "\(entry.kind)", "notify.attempt": "\(entry.attempts + 1)",
        ]
        switch configuration.policy.verdict(for: entry, failures: failures.map(\.reason), now: now, random: .random(in: 0..<1)) {
        case .delivered:
            try await store.markDelivered(id: entry.id, at: now)
            accepted.forget(entry.id)
            logger.info("webhook delivered", metadata: metadata)
        case .retry(let at, let reason):
            try await store.markAttemptFailed(id: entry.id, error: reason, nextAttemptAt: at)
            metadata["notify.error"] = "\(reason)"
            metadata["notify.retry_in_ms"] = "\(Int((at.timeIntervalSince(now) * 1000).rounded()))"
            logger.warning("webhook attempt failed; will retry", metadata: metadata)
        case .giveUp(let reason):
            // Left in the outbox, undelivered, with the reason: visible, never silently dropped.
            try await store.markAttemptFailed(id: entry.id, error: reason, nextAttemptAt: OutboxEntry.givenUpNextAttemptAt)
            accepted.forget(entry.id)
            metadata["notify.error"] = "\(reason)"
            logger.error("webhook given up; the entry stays undelivered in the outbox", metadata: metadata)
        }
    }

    /// One POST to one receiver: nil when it accepted, otherwise the precise reason.
    private func post(_ body: Data, headers: [(name: String, value: String)], to receiver: Int) async -> String? {
        let url = configuration.urls[receiver]
        let name = Self.receiverName(url)
        do {
            let response = try await client.send(method: "POST", url: url, headers: headers, body: body,
                                                 timeout: configuration.requestTimeout,
                                                 connectTimeout: configuration.connectTimeout)
            if response.isSuccess { return nil }
            let detail = String(decoding: response.body.prefix(200), as: UTF8.self)
                .trimmingCharacters(in: .whitespacesAndNewlines)
            return "\(name) answered HTTP \(response.status)" + (detail.isEmpty ? "" : ": \(detail)")
        } catch let error as HTTPTransportError {
            let what = error.isTimeout ? "timed out" : error.isConnectFailure ? "could not be reached" : "transfer failed"
            return "\(name) \(what) (\(error))"
        } catch {
            return "\(name) not attempted: \(error)"
        }
    }

    /// Scheme, host and port only: webhook paths and queries often carry tokens, and this name
    /// goes into logs and the outbox's last error.
    static func receiverName(_ url: String) -> String {
        guard let components = URLComponents(string: url), let scheme = components.scheme, let host = components.host
        else { return "receiver (unparsable URL)" }
        return "\(scheme)://\(host)" + (components.port.map { ":\($0)" } ?? "")
    }
}

/// Which receivers have taken which entries, so a retry skips them. Only entries still being
/// retried are kept: delivered and given-up ones are forgotten.
struct Acceptances {
    private var receivers: [String: Set<Int>] = [:]

    func contains(_ id: String, receiver: Int) -> Bool { receivers[id]?.contains(receiver) ?? false }
    mutating func insert(_ id: String, receiver: Int) { receivers[id, default: []].insert(receiver) }
    mutating func forget(_ id: String) { receivers[id] = nil }
}
