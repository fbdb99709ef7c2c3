import Foundation
import Logging
import ServiceLifecycle
import Testing
import WarmpoolModel
import WarmpoolStore
@testable import WarmpoolNotify

/// The notifier against real receivers on loopback and a real SQLite outbox in a temp dir.
@Suite struct NotifierTests {
    static let secret = Array("test-webhook-secret".utf8)

    /// A scratch database; `body` may open it more than once (a controller restart).
    static func withDatabase<T>(_ body: (String) async throws -> T) async throws -> T {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("warmpool-notify-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        return try await body(directory.appendingPathComponent("warmpool.db").path)
    }

    static func openStore(_ path: String) throws -> SQLiteStore {
        var logger = Logger(label: "test.store")
        logger.logLevel = .critical
        return try SQLiteStore(path: path, logger: logger)
    }

    static func configuration(_ urls: [String], backoff: BackoffSchedule = BackoffSchedule(initial: .milliseconds(100), maximum: .milliseconds(200), jitter: 0),
                              giveUp: GiveUpLimit = GiveUpLimit(), timeout: Duration = .seconds(5)) -> WebhookNotifier.Configuration
    {
        WebhookNotifier.Configuration(urls: urls, secret: secret, pollInterval: .milliseconds(20), requestTimeout: timeout,
                                      connectTimeout: .seconds(2), policy: DeliveryPolicy(backoff: backoff, giveUp: giveUp))
    }

    /// Shaped like `WebhookPayload`'s JSON.
    static func entry(_ number: Int, kind: String = "failover_complete") -> OutboxEntry {
        let id = "ntf-77-\(number)"
        let payload = #"{"at":"2026-11-29T05:00:0\#(number).000Z","epoch":3,"event":"\#(kind)","failover":"fo-77-2","id":"\#(id)","machine_id":77,"message":"standby 9002 verified and serving","primary_gpu_id":"9002","standby_gpu_id":null,"state":"degraded"}"#
        let created = Date().addingTimeInterval(Double(number) / 1000 - 1)
        return OutboxEntry(id: id, kind: kind, poolID: 77, payload: payload, createdAt: created, nextAttemptAt: created)
    }

    /// Runs the notifier in a ServiceGroup while `body` runs, then shuts it down gracefully.
    static func running<T: Sendable>(_ notifier: WebhookNotifier, _ body: () async throws -> T) async throws -> T {
        var logger = Logger(label: "test.group")
        logger.logLevel = .critical
        let group = ServiceGroup(configuration: .init(services: [notifier], gracefulShutdownSignals: [], logger: logger))
        return try await withThrowingTaskGroup(of: Void.self) { tasks in
            tasks.addTask { try await group.run() }
            do {
                let result = try await body()
                await group.triggerGracefulShutdown()
                try await tasks.waitForAll()
                return result
            } catch {
                await group.triggerGracefulShutdown()
                try? await tasks.waitForAll()
                throw error
            }
        }
    }

    /// Polls the outbox entry until `condition` holds; fails the test after `timeout`.
    @discardableResult
    static func eventually(_ store: SQLiteStore, _ id: String, timeout: Duration = .seconds(10),
                           _ what: String, _ condition: (OutboxEntry) -> Bool) async throws -> OutboxEntry
    {
        let deadline = ContinuousClock.now + timeout
        while true {
            let entry = try #require(try await store.notifications(limit: 100).first { $0.id == id })
            if condition(entry) { return entry }
            if ContinuousClock.now > deadline {
                Issue.record("timed out waiting for \(what); entry is \(entry)")
                return entry
            }
            try await Task.sleep(for: .milliseconds(20))
        }
    }

    /// The one shape receivers parse: every key present (null when unknown), keys in byte order,
    /// ids as numbers, a slash in a message as it is, a quote escaped.
    @Test func theWebhookPayloadIsWrittenInItsOneShape() {
        let payload = WebhookPayload(
            id: "ntf-77-3", event: "failover_complete", poolID: 77, at: Instant(nanosecondsSinceEpoch: 1_764_392_405_123_000_000),
            message: #"standby 9002 verified on /data ("vol-1")"#, state: .degraded, epoch: 3,
            failover: "fo-77-2", primaryInstanceID: 9002, standbyInstanceID: nil)
        #expect(payload.json() == #"{"at":"2025-11-29T05:00:05.123Z","epoch":3,"event":"failover_complete","failover":"fo-77-2","id":"ntf-77-3","machine_id":77,"message":"standby 9002 verified on /data (\"vol-1\")","primary_gpu_id":9002,"standby_gpu_id":null,"state":"degraded"}"#)
        let entry = payload.outboxEntry()
        #expect(entry.id == "ntf-77-3" && entry.kind == "failover_complete" && entry.poolID == 77 && entry.payload == payload.json())
    }

    @Test func deliversThePayloadSignedWithEveryHeader() async throws {
        try await Self.withDatabase { path in
            let store = try Self.openStore(path)
            let entry = Self.entry(1)
            try await store.enqueue([entry])
            try await WebhookReceiver.with({ _, _ in ReceiverAnswer() }) { url, receiver in
                let notifier = WebhookNotifier(configuration: Self.configuration([url]), store: store, logger: LogRecorder().logger)
                let delivered = try await Self.running(notifier) {
                    try await Self.eventually(store, entry.id, "delivery") { $0.deliveredAt != nil }
                }
                #expect(delivered.attempts == 1)
                #expect(delivered.lastError == nil)
                let requests = receiver.received
                try #require(requests.count == 1)
                let request = requests[0]
                #expect(request.path == "/hooks/warmpool")
                #expect(request.contentType == "application/json")
                #expect(request.event == "failover_complete")
                #expect(request.delivery == entry.id)
                #expect(request.body == Data(entry.payload.utf8))
                let timestamp = try #require(request.timestamp.flatMap { Int64($0) })
                #expect(abs(Double(timestamp) - Date().timeIntervalSince1970) < 10)
                let signature = try #require(request.signature)
                #expect(WebhookSignature.verify(signature: signature, timestamp: String(timestamp), body: request.body,
                                                secret: Self.secret, now: Date()) == .valid)
                #expect(WebhookSignature.verify(signature: signature, timestamp: String(timestamp), body: request.body,
                                                secret: Array("another-secret".utf8), now: Date()) == .mismatch)
            }
        }
    }

    /// A wall clock that reads what the test set.
    struct FixedClock: WallClock {
        let instant: Instant
        func now() -> Instant { instant }
    }

    @Test func theNotifierReadsItsInjectedWallClock() async throws {
        try await Self.withDatabase { path in
            let store = try Self.openStore(path)
            // Due in half an hour by the machine's clock; the notifier's clock is an hour ahead.
            let later = Date().addingTimeInterval(1_800)
            var due = Self.entry(2)
            due.nextAttemptAt = later
            let entry = due
            try await store.enqueue([entry])
            let clock = FixedClock(instant: Instant(secondsSinceEpoch: Date().timeIntervalSince1970 + 3_600))
            try await WebhookReceiver.with({ _, _ in ReceiverAnswer() }) { url, receiver in
                let notifier = WebhookNotifier(configuration: Self.configuration([url]), store: store, logger: LogRecorder().logger,
                                               clock: clock)
                let delivered = try await Self.running(notifier) {
                    try await Self.eventually(store, entry.id, "delivery") { $0.deliveredAt != nil }
                }
                let deliveredAt = try #require(delivered.deliveredAt)
                #expect(abs(deliveredAt.timeIntervalSince1970 - clock.instant.secondsSinceEpoch) < 0.001)
                let timestamp = try #require(receiver.received.first?.timestamp.flatMap { Int64($0) })
                #expect(timestamp == Int64(clock.instant.secondsSinceEpoch))
            }
        }
    }

    @Test func aFiveHundredIsRetriedAfterTheBackoffUnderTheSameDeliveryID() async throws {
        try await Self.withDatabase { path in
            let store = try Self.openStore(path)
            let entry = Self.entry(1, kind: "failure_detected")
            try await store.enqueue([entry])
            try await WebhookReceiver.with({ _, attempt in
                attempt == 1 ? ReceiverAnswer(status: 500, body: "database is locked") : ReceiverAnswer()
            }) { url, receiver in
                let backoff = BackoffSchedule(initial: .seconds(1), jitter: 0)
                let notifier = WebhookNotifier(configuration: Self.configuration([url], backoff: backoff), store: store,
                                               logger: LogRecorder().logger)
                try await Self.running(notifier) {
                    let failed = try await Self.eventually(store, entry.id, "the failed first attempt") { $0.attempts == 1 }
                    #expect(failed.deliveredAt == nil)
                    #expect(failed.lastError?.hasSuffix("answered HTTP 500: database is locked") == true, "\(failed.lastError ?? "")")
                    #expect(failed.nextAttemptAt.timeIntervalSince(Date()) > 0.5)
                    let delivered = try await Self.eventually(store, entry.id, "delivery") { $0.deliveredAt != nil }
                    #expect(delivered.attempts == 2)
                    #expect(delivered.lastError == nil)
                    // Delivered means done: later polls send nothing more.
                    try await Task.sleep(for: .milliseconds(300))
                }
                let requests = receiver.received
                try #require(requests.count == 2)
                #expect(requests.map(\.delivery) == [entry.id, entry.id])
                #expect(requests[1].at - requests[0].at >= .milliseconds(950), "the 1 s backoff was waited out")
                for request in requests {
                    #expect(WebhookSignature.verify(signature: request.signature ?? "", timestamp: request.timestamp ?? "",
                                                    body: request.body, secret: Self.secret, now: Date()) == .valid)
                }
            }
        }
    }

    @Test func aRefusingReceiverGetsTheEntryOnceItComesUp() async throws {
        try await Self.withDatabase { path in
            let store = try Self.openStore(path)
            let entry = Self.entry(1, kind: "standby_starting")
            try await store.enqueue([entry])
            let port = try unusedLoopbackPort()
            let url = "http://127.0.0.1:\(port)/hooks/warmpool"
            let notifier = WebhookNotifier(configuration: Self.configuration([url]), store: store, logger: LogRecorder().logger)
            try await Self.running(notifier) {
                let refused = try await Self.eventually(store, entry.id, "two refused attempts") { $0.attempts >= 2 }
                #expect(refused.deliveredAt == nil)
                let reason = refused.lastError ?? ""
                #expect(reason.hasPrefix("http://127.0.0.1:\(port) could not be reached (curl error 7:"), "\(reason)")
                try await WebhookReceiver.with(port: port, { _, _ in ReceiverAnswer() }) { _, receiver in
                    let delivered = try await Self.eventually(store, entry.id, "delivery once the receiver is up") { $0.deliveredAt != nil }
                    #expect(delivered.lastError == nil)
                    #expect(receiver.received.map(\.delivery) == [entry.id])
                }
            }
        }
    }

    @Test func aNewNotifierOnTheSameDatabaseDeliversWhatWasLeft() async throws {
        try await Self.withDatabase { path in
            let entries = (1...5).map { Self.entry($0) }
            let firstTwo = Set(entries.prefix(2).map(\.id))
            let receiverUp = LockedFlag()
            try await WebhookReceiver.with({ webhook, _ in
                receiverUp.value || firstTwo.contains(webhook.delivery ?? "") ? ReceiverAnswer() : ReceiverAnswer(status: 503)
            }) { url, receiver in
                // The first controller delivers two entries, fails the other three, and stops.
                do {
                    let store = try Self.openStore(path)
                    try await store.enqueue(entries)
                    let notifier = WebhookNotifier(configuration: Self.configuration([url]), store: store, logger: LogRecorder().logger)
                    try await Self.running(notifier) {
                        for entry in entries.suffix(3) {
                            try await Self.eventually(store, entry.id, "a failed attempt") { $0.attempts >= 1 }
                        }
                    }
                    let left = try await store.notifications(limit: 10).filter { $0.deliveredAt == nil }
                    #expect(Set(left.map(\.id)) == Set(entries.suffix(3).map(\.id)))
                }
                receiverUp.value = true
                let sentBeforeRestart = receiver.received.count
                // A new controller: a new store on the same file, a new notifier.
                let store = try Self.openStore(path)
                let notifier = WebhookNotifier(configuration: Self.configuration([url]), store: store, logger: LogRecorder().logger)
                try await Self.running(notifier) {
                    for entry in entries {
                        try await Self.eventually(store, entry.id, "delivery after the restart") { $0.deliveredAt != nil }
                    }
                }
                let afterRestart = receiver.received.dropFirst(sentBeforeRestart).compactMap(\.delivery)
                // Only what was left goes out again; the delivered two are not resent.
                #expect(Set(afterRestart) == Set(entries.suffix(3).map(\.id)))
                #expect(afterRestart.count == 3)
                #expect(receiver.received.filter { firstTwo.contains($0.delivery ?? "") }.count == 2)
            }
        }
    }

    @Test func aSlowReceiverIsAFailedAttemptThatSaysItTimedOut() async throws {
        try await Self.withDatabase { path in
            let store = try Self.openStore(path)
            let entry = Self.entry(1, kind: "pool_degraded")
            try await store.enqueue([entry])
            try await WebhookReceiver.with({ _, _ in ReceiverAnswer(delay: .seconds(3)) }) { url, _ in
                let configuration = Self.configuration([url], backoff: BackoffSchedule(initial: .seconds(60), jitter: 0),
                                                       timeout: .milliseconds(300))
                let notifier = WebhookNotifier(configuration: configuration, store: store, logger: LogRecorder().logger)
                let started = Date()
                let failed = try await Self.running(notifier) {
                    try await Self.eventually(store, entry.id, "the timed-out attempt") { $0.attempts == 1 }
                }
                #expect(Date().timeIntervalSince(started) < 2.5, "the 300 ms timeout cut the 3 s answer short")
                #expect(failed.deliveredAt == nil)
                let reason = failed.lastError ?? ""
                #expect(reason.contains(" timed out (curl error 28: Operation timed out after"), "\(reason)")
                #expect(failed.nextAttemptAt.timeIntervalSince(started) > 50, "retried after the 60 s backoff")
            }
        }
    }

    @Test func pastTheAttemptLimitAnEntryStaysUndeliveredWithItsErrorAndAnErrorLog() async throws {
        try await Self.withDatabase { path in
            let store = try Self.openStore(path)
            let entry = Self.entry(1, kind: "failover_failed")
            try await store.enqueue([entry])
            try await WebhookReceiver.with({ _, _ in ReceiverAnswer(status: 410, body: "gone") }) { url, receiver in
                let logs = LogRecorder()
                let configuration = Self.configuration([url], backoff: BackoffSchedule(initial: .milliseconds(50), jitter: 0),
                                                       giveUp: GiveUpLimit(maxAttempts: 3, maxAge: nil))
                let notifier = WebhookNotifier(configuration: configuration, store: store, logger: logs.logger)
                let given = try await Self.running(notifier) {
                    let given = try await Self.eventually(store, entry.id, "giving up") { $0.attempts == 3 }
                    // Given up means no more attempts, however long it runs.
                    try await Task.sleep(for: .milliseconds(500))
                    return given
                }
                #expect(receiver.received.count == 3)
                #expect(given.deliveredAt == nil)
                #expect(given.lastError == "gave up after 3 attempts: \(NotifierTests.receiverName(url)) answered HTTP 410: gone")
                #expect(given.nextAttemptAt > Date().addingTimeInterval(365 * 86400))
                let errors = logs.records.filter { $0.level == .error }
                #expect(errors.count == 1)
                #expect(errors.first?.metadata["notify.delivery"] == "\(entry.id)")
                #expect(logs.records.filter { $0.level == .warning }.count == 2)
            }
        }
    }

    @Test func withTwoReceiversARetryGoesOnlyToTheOneThatRefused() async throws {
        try await Self.withDatabase { path in
            let store = try Self.openStore(path)
            let entry = Self.entry(1, kind: "standby_provisioned")
            try await store.enqueue([entry])
            try await WebhookReceiver.with({ _, _ in ReceiverAnswer() }) { steadyURL, steady in
                try await WebhookReceiver.with({ _, attempt in attempt == 1 ? ReceiverAnswer(status: 502) : ReceiverAnswer() }) {
                    flakyURL, flaky in
                    let notifier = WebhookNotifier(configuration: Self.configuration([steadyURL, flakyURL]), store: store,
                                                   logger: LogRecorder().logger)
                    let delivered = try await Self.running(notifier) {
                        try await Self.eventually(store, entry.id, "delivery to both") { $0.deliveredAt != nil }
                    }
                    #expect(delivered.attempts == 2)
                    #expect(steady.received.map(\.delivery) == [entry.id])
                    #expect(flaky.received.map(\.delivery) == [entry.id, entry.id])
                }
            }
        }
    }

    /// Logs and the outbox name receivers; webhook URLs often carry tokens in the path.
    @Test func receiverNamesKeepNoPathOrQuery() {
        #expect(WebhookNotifier.receiverName("https://hooks.example.com/services/T000/B000/XXXXSECRET?token=abc")
            == "https://hooks.example.com")
        #expect(WebhookNotifier.receiverName("http://127.0.0.1:8099/hook") == "http://127.0.0.1:8099")
    }

    static func receiverName(_ url: String) -> String { WebhookNotifier.receiverName(url) }
}

final class LockedFlag: @unchecked Sendable {
    private let lock = NSLock()
    private var _value = false
    var value: Bool {
        get { lock.withLock { _value } }
        set { lock.withLock { _value = newValue } }
    }
}
