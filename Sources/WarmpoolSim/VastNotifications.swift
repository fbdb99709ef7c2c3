import Crypto
import Foundation
import Logging
import WarmpoolHTTP

/// The notifications Vast.ai sends about a renter's instances, and the slugs and `data` keys we
/// send them under. Only `outbid` (and `low_credit`) are documented slugs; the others are our
/// guesses (reference/vastai-marketplace.md, "Notification webhooks"), kept here and nowhere
/// else. The controller's receiver reads the same table from Protocol/VASTAI-SIM.md.
public enum VastNotificationKind: String, CaseIterable, Sendable {
    case outbid
    case offline = "instance_offline"
    case online = "instance_online"
    case maintenance = "maintenance_scheduled"
    case downtime = "instance_downtime"
    case resumed = "instance_resumed"
    case error = "instance_error"

    /// Subject lines, for people ("do not parse").
    var subject: String {
        switch self {
        case .outbid: "Instance outbid"
        case .offline: "Instance offline"
        case .online: "Instance back online"
        case .maintenance: "Scheduled maintenance"
        case .downtime: "Upcoming downtime"
        case .resumed: "Instance resumed after scheduling"
        case .error: "Problem detected with instance"
        }
    }
}

/// Vast.ai's notification webhooks as the documentation describes them: a signed `POST` of JSON
/// to each registered URL (at most 4), at least once, 10 s timeout; 2xx is delivered, 408, 429,
/// 5xx and no answer are retried (1 s, 2 s, 4 s, … up to 8 attempts), other 3xx and 4xx are
/// permanent failures. Headers `X-Vast-Event-Id`, `X-Vast-Delivery-Attempt`, `X-Vast-Timestamp`,
/// `X-Vast-Signature-256: sha256=<hex HMAC-SHA256(secret, "<timestamp>.<raw body>")>`.
actor VastNotifications {
    struct Delivery: Sendable {
        var eventID: String
        var kind: String
        var instanceID: Int?
        var url: String
        var attempt: Int
        /// The HTTP status, or nil when no answer came.
        var status: Int?
        var error: String?
    }

    static let maximumURLs = 4
    static let maximumAttempts = 8

    private let urls: [String]
    private let secret: Data
    private let logger: Logger
    private let client = HTTPClient()
    private(set) var deliveries: [Delivery] = []
    private var sent = 0

    init(urls: [String], secret: String, logger: Logger) {
        self.urls = Array(urls.prefix(Self.maximumURLs))
        self.secret = Data(secret.utf8)
        self.logger = logger
    }

    /// Queues one event for every URL; returns its id. `duplicate`: deliver it a second time
    /// after the first success, as "at least once" allows.
    @discardableResult
    func send(_ kind: VastNotificationKind, message: String, data: [String: JSON], duplicate: Bool) -> String {
        sent += 1
        let eventID = String(format: "%016llx%016llx", UInt64.random(in: 0...UInt64.max), UInt64(sent))
        let body: JSON = [
            "event_id": .string(eventID), "user_id": 1, "notif_type": .string(kind.rawValue), "subject": .string(kind.subject),
            "message": .string(message), "data": .object(data), "data_truncated": false,
            "timestamp": .number((Date().timeIntervalSince1970 * 1000).rounded() / 1000),
        ]
        let raw = body.encoded()
        for url in urls {
            Task { await self.deliver(raw, eventID: eventID, kind: kind.rawValue, instanceID: data["instance_id"]?.intValue,
                                      url: url, duplicate: duplicate) }
        }
        return eventID
    }

    private func deliver(_ body: Data, eventID: String, kind: String, instanceID: Int?, url: String, duplicate: Bool) async {
        var delivered = 0
        var attempt = 0
        while attempt < Self.maximumAttempts {
            attempt += 1
            let timestamp = String(Int64(Date().timeIntervalSince1970))
            let mac = HMAC<SHA256>.authenticationCode(for: Data(timestamp.utf8) + Data(".".utf8) + body, using: SymmetricKey(data: secret))
            let signature = "sha256=" + mac.map { String(format: "%02x", $0) }.joined()
            var record = Delivery(eventID: eventID, kind: kind, instanceID: instanceID, url: url, attempt: attempt)
            do {
                let response = try await client.send(
                    method: "POST", url: url,
                    headers: [("Content-Type", "application/json"), ("X-Vast-Event-Id", eventID),
                              ("X-Vast-Delivery-Attempt", String(attempt)), ("X-Vast-Timestamp", timestamp),
                              ("X-Vast-Signature-256", signature)],
                    body: body, timeout: .seconds(10))
                record.status = response.status
            } catch {
                record.error = "\(error)"
            }
            deliveries.append(record)
            if let status = record.status, (200..<300).contains(status) {
                delivered += 1
                if duplicate, delivered == 1 { continue }  // the same event again, as a lost acknowledgement would
                return
            }
            if let status = record.status, ![408, 429].contains(status), status < 500 {
                logger.warning("notification refused for good", metadata: ["sim.event_id": "\(eventID)", "sim.status": "\(status)"])
                return
            }
            try? await Task.sleep(for: .seconds(1 << min(attempt - 1, 5)))
        }
        logger.warning("notification not delivered", metadata: ["sim.event_id": "\(eventID)", "sim.url": "\(url)"])
    }

    func log() -> JSON {
        .array(deliveries.map { delivery in
            ["event_id": .string(delivery.eventID), "notif_type": .string(delivery.kind), "instance_id": JSON(delivery.instanceID),
             "url": .string(delivery.url), "attempt": JSON(delivery.attempt), "status": JSON(delivery.status),
             "error": JSON(delivery.error)]
        })
    }
}
