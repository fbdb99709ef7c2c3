import Crypto
import Foundation
import Hummingbird
import HummingbirdTesting
import HTTPTypes
import Synchronization
import Testing
import WarmpoolAPI
import WarmpoolJSON
import WarmpoolModel
import WarmpoolProvider
import WarmpoolStore

/// `POST /api/v1/provider/vast/notifications`: Vast.ai's signature over the raw body, its window,
/// the event id, and every way a request can be wrong (each a 4xx that names it, nothing acted on).
@Suite struct ProviderNoticeTests {
    static let path = "/api/v1/provider/vast/notifications"
    static let secret = "vast-webhook-secret"

    /// Records what reaches the operations; everything else is the providerless behaviour.
    final class Recording: PoolOperations {
        let inner: ProviderlessPoolOperations
        let notices = Mutex<[ProviderNotice]>([])
        init(store: any WarmpoolStore) { inner = ProviderlessPoolOperations(store: store) }
        func hosts(_ filter: WarmPoolHosts.Filter) async throws -> [WarmPoolHosts.Host] { try await inner.hosts(filter) }
        func provision(_ request: ProvisionRequest) async throws -> PoolRecord { try await inner.provision(request) }
        func enable(_ poolID: PoolID) async throws -> PoolRecord { try await inner.enable(poolID) }
        func disable(_ poolID: PoolID) async throws -> PoolRecord { try await inner.disable(poolID) }
        func updateSettings(_ poolID: PoolID, _ change: SettingsChange) async throws -> PoolRecord { try await inner.updateSettings(poolID, change) }
        func failoverTest(_ poolID: PoolID) async throws -> FailoverTestOutcome { try await inner.failoverTest(poolID) }
        func cleanup(_ poolID: PoolID) async throws -> CleanupOutcome { try await inner.cleanup(poolID) }
        func breaker() async throws -> BreakerStatus { try await inner.breaker() }
        func releaseBreaker() async throws -> Int { try await inner.releaseBreaker() }
        func protections() async -> [PoolID: PoolProtection] { await inner.protections() }
        func repair(_ poolID: PoolID) async throws -> PoolRecord { try await inner.repair(poolID) }
        func providerNotice(_ notice: ProviderNotice) async -> String? {
            notices.withLock { $0.append(notice) }
            return "recorded"
        }
    }

    /// A router with the receiver on, over operations that record what reaches them.
    static func fixture() async throws -> (APIFixture, Recording) {
        var recording: Recording?
        let fixture = try await APIFixture(operations: { store in
            let made = Recording(store: store)
            recording = made
            return made
        }, vastWebhookSecret: secret)
        return (fixture, try #require(recording))
    }

    static func signed(_ body: String, timestamp: Int64 = Int64(Date().timeIntervalSince1970), secret: String = secret,
                       eventHeader: String? = "7e9a") -> HTTPFields
    {
        let mac = HMAC<SHA256>.authenticationCode(for: Data("\(timestamp).\(body)".utf8), using: SymmetricKey(data: Data(secret.utf8)))
        var fields = HTTPFields()
        fields[HTTPField.Name("X-Vast-Timestamp")!] = String(timestamp)
        fields[HTTPField.Name("X-Vast-Signature-256")!] = "sha256=" + mac.map { String(format: "%02x", $0) }.joined()
        fields[HTTPField.Name("X-Vast-Delivery-Attempt")!] = "1"
        if let eventHeader { fields[HTTPField.Name("X-Vast-Event-Id")!] = eventHeader }
        fields[.contentType] = "application/json"
        return fields
    }

    static let outbid = #"{"event_id": "7e9a", "user_id": 123, "notif_type": "outbid", "subject": "s", "message": "m", "data": {"instance_id": 1001, "machine_id": 77}, "data_truncated": false, "timestamp": 1772490000.123}"#

    @Test func aSignedNotificationIsAnsweredAtOnceAndReachesTheOperationsWithoutAnAPIKey() async throws {
        let (fixture, received) = try await Self.fixture()
        try await fixture.application.test(.router) { client in
            try await client.execute(uri: Self.path, method: .post, headers: Self.signed(Self.outbid), body: body(Self.outbid)) { response in
                #expect(response.status == .ok)
                #expect(response.json["event_id"] == "7e9a")
            }
        }
        for _ in 0..<100 where received.notices.withLock({ $0.isEmpty }) { try await Task.sleep(for: .milliseconds(10)) }
        #expect(received.notices.withLock { $0 } == [ProviderNotice(eventID: "7e9a", kind: "outbid", instanceID: 1001, machineID: 77, message: "m")])
    }

    @Test func everyBadRequestIsRefusedWithItsReasonAndActedOnNever() async throws {
        let (fixture, received) = try await Self.fixture()
        let now = Int64(Date().timeIntervalSince1970)
        var unsigned = HTTPFields()
        unsigned[.contentType] = "application/json"
        var tampered = Self.signed(Self.outbid)
        tampered[HTTPField.Name("X-Vast-Signature-256")!] = "sha256=" + String(repeating: "0", count: 64)
        var malformed = Self.signed(Self.outbid)
        malformed[HTTPField.Name("X-Vast-Signature-256")!] = "md5=abc"
        let noEvent = #"{"notif_type": "outbid"}"#
        let cases: [(String, HTTPFields, String, HTTPResponse.Status, String)] = [
            ("unsigned", unsigned, Self.outbid, .unauthorized, "unsigned"),
            ("another secret", Self.signed(Self.outbid, secret: "other"), Self.outbid, .unauthorized, "bad_signature"),
            ("tampered", tampered, Self.outbid, .unauthorized, "bad_signature"),
            ("malformed", malformed, Self.outbid, .unauthorized, "bad_signature"),
            ("too old", Self.signed(Self.outbid, timestamp: now - 400), Self.outbid, .unauthorized, "stale_timestamp"),
            ("from the future", Self.signed(Self.outbid, timestamp: now + 400), Self.outbid, .unauthorized, "stale_timestamp"),
            ("body changed after signing", Self.signed(Self.outbid), Self.outbid.replacingOccurrences(of: "1001", with: "1002"), .unauthorized, "bad_signature"),
            ("broken JSON", Self.signed("{\"event_id\": "), "{\"event_id\": ", .badRequest, "malformed_json"),
            ("no event id", Self.signed(noEvent), noEvent, .badRequest, "bad_request"),
            ("header and body disagree", Self.signed(Self.outbid, eventHeader: "other"), Self.outbid, .badRequest, "bad_request"),
        ]
        try await fixture.application.test(.router) { client in
            for (name, headers, text, status, code) in cases {
                try await client.execute(uri: Self.path, method: .post, headers: headers, body: body(text)) { response in
                    #expect(response.status == status, "\(name)")
                    #expect(response.json["error"] == .string(code), "\(name): \(response.json)")
                }
            }
        }
        try await Task.sleep(for: .milliseconds(100))
        #expect(received.notices.withLock { $0.isEmpty })
    }

    @Test func withoutASecretTheReceiverIsNotThere() async throws {
        let fixture = try await APIFixture()
        try await fixture.application.test(.router) { client in
            try await client.execute(uri: Self.path, method: .post, headers: Self.signed(Self.outbid), body: body(Self.outbid)) { response in
                #expect(response.status == .notFound, "not configured: no receiver, and nothing acted on")
            }
        }
    }
}
