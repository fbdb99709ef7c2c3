import Foundation
import WarmpoolModel

/// How long to wait before retrying a webhook: `initial × multiplier^(failures-1)`, capped at
/// `maximum`, less a random share of up to `jitter` of it. The jitter spreads out the retries of
/// many entries that failed together (a receiver that was down), so they do not return in one
/// burst; subtracting it keeps every wait under the cap. Pure: the random number is passed in.
public struct BackoffSchedule: Sendable, Equatable {
    public var initial: Duration
    public var multiplier: Double
    public var maximum: Duration
    /// 0 ... 1: the largest share of a delay the jitter may take off.
    public var jitter: Double

    public init(initial: Duration = .seconds(1), multiplier: Double = 2, maximum: Duration = .seconds(300),
                jitter: Double = 0.2)
    {
        precondition(initial > .zero && maximum >= initial && multiplier >= 1 && (0...1).contains(jitter),
                     "backoff needs initial > 0, maximum >= initial, multiplier >= 1, jitter in 0...1")
        self.initial = initial
        self.multiplier = multiplier
        self.maximum = maximum
        self.jitter = jitter
    }

    /// The wait after the `failures`-th failed attempt (1 for the first); `random` is uniform in 0..<1.
    public func delay(afterFailures failures: Int, random: Double) -> Duration {
        let exponent = Double(max(0, failures - 1))
        // pow may overflow to infinity after many failures; min brings it back to the cap.
        let uncapped = initial.seconds * Swift.max(1, pow(multiplier, exponent))
        let capped = Swift.min(uncapped, maximum.seconds)
        let jittered = capped * (1 - jitter * Swift.min(Swift.max(random, 0), 1))
        return .nanoseconds(Int64((jittered * 1e9).rounded()))
    }
}
