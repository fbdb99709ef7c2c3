import Foundation
import WarmpoolStore
import WarmpoolModel

/// When an outbox entry stops being retried: after `maxAttempts` attempts or once it is
/// `maxAge` old, whichever comes first (nil: no such limit). A given-up entry is never lost: it
/// stays in the outbox, undelivered, with its last error.
public struct GiveUpLimit: Sendable, Equatable {
    public var maxAttempts: Int?
    public var maxAge: Duration?

    public init(maxAttempts: Int? = nil, maxAge: Duration? = .seconds(24 * 3600)) {
        self.maxAttempts = maxAttempts
        self.maxAge = maxAge
    }
}

/// What to do with an entry after one delivery round.
public enum DeliveryVerdict: Equatable, Sendable {
    /// Every receiver has taken it.
    case delivered
    /// Try again at `at`; `reason` is what went wrong this time.
    case retry(at: Date, reason: String)
    /// Stop trying; `reason` says why and what went wrong last.
    case giveUp(reason: String)
}

/// The pure decision after a delivery round: backoff and give-up rules, no clock, no I/O.
public struct DeliveryPolicy: Sendable, Equatable {
    public var backoff: BackoffSchedule
    public var giveUp: GiveUpLimit

    public init(backoff: BackoffSchedule = BackoffSchedule(), giveUp: GiveUpLimit = GiveUpLimit()) {
        self.backoff = backoff
        self.giveUp = giveUp
    }

    /// `failures` holds one reason per receiver that did not take the entry this round (empty:
    /// all took it). `entry.attempts` counts the rounds before this one.
    public func verdict(for entry: OutboxEntry, failures: [String], now: Date, random: Double) -> DeliveryVerdict {
        if failures.isEmpty { return .delivered }
        let reason = failures.joined(separator: "; ")
        let attempts = entry.attempts + 1
        if let maxAttempts = giveUp.maxAttempts, attempts >= maxAttempts {
            return .giveUp(reason: "gave up after \(attempts) attempts: \(reason)")
        }
        let age = now.timeIntervalSince(entry.createdAt)
        if let maxAge = giveUp.maxAge, age >= maxAge.seconds {
            return .giveUp(reason: "gave up after \(attempts) attempts over \(Int(age)) s: \(reason)")
        }
        let wait = backoff.delay(afterFailures: attempts, random: random)
        return .retry(at: now.addingTimeInterval(wait.seconds), reason: reason)
    }
}
