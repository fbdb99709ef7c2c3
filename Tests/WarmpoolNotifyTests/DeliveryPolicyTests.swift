import Foundation
import Testing
import WarmpoolStore
@testable import WarmpoolNotify

@Suite struct BackoffScheduleTests {
    let schedule = BackoffSchedule(initial: .seconds(1), multiplier: 2, maximum: .seconds(300), jitter: 0.2)

    @Test func doublesFromTheInitialDelayUpToTheCap() {
        let delays = (1...11).map { schedule.delay(afterFailures: $0, random: 0) }
        #expect(delays == [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300].map { Duration.seconds($0) })
        // Thousands of failures neither overflow nor pass the cap.
        #expect(schedule.delay(afterFailures: 5_000, random: 0) == .seconds(300))
    }

    @Test func jitterTakesOffAtMostItsShare() {
        #expect(schedule.delay(afterFailures: 3, random: 0.5) == .milliseconds(3_600))
        #expect(schedule.delay(afterFailures: 3, random: 0.999_999) > .milliseconds(3_199))
        #expect(schedule.delay(afterFailures: 20, random: 0.999_999) >= .seconds(240))
        #expect(schedule.delay(afterFailures: 20, random: 0.5) <= .seconds(300))
    }
}

@Suite struct DeliveryPolicyTests {
    static let created = Date(timeIntervalSince1970: 1_000_000)
    let policy = DeliveryPolicy(backoff: BackoffSchedule(initial: .seconds(1), jitter: 0),
                                giveUp: GiveUpLimit(maxAttempts: 5, maxAge: .seconds(3600)))

    func entry(attempts: Int) -> OutboxEntry {
        OutboxEntry(id: "n-1", kind: "failover_complete", poolID: 7, payload: "{}", createdAt: Self.created,
                    attempts: attempts, nextAttemptAt: Self.created)
    }

    @Test func noFailuresIsDelivered() {
        #expect(policy.verdict(for: entry(attempts: 4), failures: [], now: Self.created, random: 0) == .delivered)
    }

    @Test func aFailureIsRetriedAfterTheBackoffOfItsAttemptNumber() {
        let now = Self.created.addingTimeInterval(10)
        #expect(policy.verdict(for: entry(attempts: 0), failures: ["HTTP 500"], now: now, random: 0)
            == .retry(at: now.addingTimeInterval(1), reason: "HTTP 500"))
        #expect(policy.verdict(for: entry(attempts: 2), failures: ["a: HTTP 500", "b: refused"], now: now, random: 0)
            == .retry(at: now.addingTimeInterval(4), reason: "a: HTTP 500; b: refused"))
    }

    @Test func theLastAllowedAttemptGivesUpWithTheReason() {
        let now = Self.created.addingTimeInterval(10)
        #expect(policy.verdict(for: entry(attempts: 3), failures: ["HTTP 500"], now: now, random: 0)
            == .retry(at: now.addingTimeInterval(8), reason: "HTTP 500"))
        #expect(policy.verdict(for: entry(attempts: 4), failures: ["HTTP 500"], now: now, random: 0)
            == .giveUp(reason: "gave up after 5 attempts: HTTP 500"))
    }

    @Test func anEntryPastTheMaximumAgeGivesUp() {
        let now = Self.created.addingTimeInterval(3600)
        #expect(policy.verdict(for: entry(attempts: 1), failures: ["timed out"], now: now, random: 0)
            == .giveUp(reason: "gave up after 2 attempts over 3600 s: timed out"))
        let unlimited = DeliveryPolicy(backoff: policy.backoff, giveUp: GiveUpLimit(maxAttempts: nil, maxAge: nil))
        guard case .retry = unlimited.verdict(for: entry(attempts: 10_000), failures: ["x"], now: now, random: 0) else {
            Issue.record("with no limit an entry is retried forever")
            return
        }
    }
}
