import Foundation
import Hummingbird
import WarmpoolJSON
import WarmpoolModel
import WarmpoolNotify

/// `POST /api/v1/provider/vast/notifications`: Vast.ai's notification webhooks, a second source
/// beside the heartbeats. Verified on the raw body (`X-Vast-Signature-256` over
/// `<X-Vast-Timestamp>.<body>`, HMAC-SHA256 with the configured secret, compared in constant time,
/// timestamps at most 300 s away), deduplicated on the event id, answered 2xx at once; the work
/// happens after the answer. A request that fails a check gets a 4xx naming it and changes nothing.
struct ProviderNoticeRoutes {
    static let path = "\(APIRouter.prefix)/provider/vast/notifications"
    static let tolerance: Duration = .seconds(300)
    let operations: any PoolOperations
    let secret: String

    func register(on router: Router<APIRequestContext>) {
        router.post(RouterPath(Self.path)) { request, context in
            let body = try await RequestInput.body(request)
            func header(_ name: String) -> String? {
                request.headers.first { $0.name.canonicalName == name }?.value
            }
            guard let signature = header("x-vast-signature-256"), let timestamp = header("x-vast-timestamp") else {
                throw APIError(.unauthorized, "unsigned", "X-Vast-Signature-256 and X-Vast-Timestamp are required")
            }
            switch WebhookSignature.verify(signature: signature, timestamp: timestamp, body: body, secret: Data(secret.utf8),
                                           now: Date(), tolerance: Self.tolerance) {
            case .valid: break
            case .malformed: throw APIError(.unauthorized, "bad_signature", "the signature or the timestamp is malformed")
            case .mismatch: throw APIError(.unauthorized, "bad_signature", "the signature does not match the body and timestamp")
            case .stale:
                throw APIError(.unauthorized, "stale_timestamp", "the timestamp is more than \(Self.tolerance.components.seconds) s away")
            }
            let notice = try Self.notice(body, eventHeader: header("x-vast-event-id"))
            context.logger.info("provider notification received", metadata: [
                "event": "\(notice.eventID)", "kind": "\(notice.kind)", "attempt": "\(header("x-vast-delivery-attempt") ?? "-")"])
            // Answered now; a slow pool operation must not make the provider retry (10 s timeout).
            let operations = self.operations
            Task { _ = await operations.providerNotice(notice) }
            return JSONResponse.ok(.object([("received", .bool(true)), ("event_id", .string(notice.eventID))]))
        }
    }

    /// The documented body: `event_id`, `notif_type`, `message`, `data` (keys vary, may be null).
    /// Unknown slugs and keys are kept as information.
    static func notice(_ body: [UInt8], eventHeader: String?) throws -> ProviderNotice {
        let value = try RequestInput.jsonObject(body)
        guard let eventID = value["event_id"]?.stringValue, !eventID.isEmpty, eventID.utf8.count <= 128 else {
            throw APIError.badRequest("event_id is required (a string of at most 128 bytes)")
        }
        if let eventHeader, eventHeader != eventID {
            throw APIError.badRequest("X-Vast-Event-Id \(eventHeader) does not match the body's event_id \(eventID)")
        }
        guard let kind = value["notif_type"]?.stringValue, !kind.isEmpty, kind.utf8.count <= 64 else {
            throw APIError.badRequest("notif_type is required (a string of at most 64 bytes)")
        }
        let data = value["data"]
        func id(_ key: String) -> Int64? {
            if let number = data?[key]?.intValue { return number }
            return data?[key]?.stringValue.flatMap { Int64($0) }
        }
        return ProviderNotice(
            eventID: eventID, kind: kind, instanceID: id("instance_id").map(InstanceID.init),
            machineID: id("machine_id").map(HostMachineID.init), message: String((value["message"]?.stringValue ?? "").prefix(500)),
            startsAt: data?["start_time"]?.doubleValue.flatMap { $0.isFinite && $0 > 0 ? $0 : nil })
    }
}
