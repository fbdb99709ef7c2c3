import Foundation

/// When to try a provider call again, as the `vastai` CLI does (reference §1): statuses 429, 502,
/// 503 and 504 and lost connections are retried up to `maxAttempts` attempts in all; a
/// `Retry-After` of at most 60 s is honoured, a longer one ends the retries at once; without one
/// the wait starts at 150 ms and grows ×1.5. Pure: the transport feeds it outcomes and sleeps.
public struct RetryPolicy: Hashable, Sendable {
    /// Attempts in all, the first included (the CLI's `--retry`, default 3).
    public var maxAttempts: Int
    public var initialBackoff: Duration
    public var backoffMultiplier: Double
    /// The longest `Retry-After` worth waiting for.
    public var maxRetryAfter: Duration

    public static let retriedStatuses: Set<Int> = [429, 502, 503, 504]
    /// curl codes where the request may not have reached the server or its answer was lost:
    /// couldn't connect (7), timed out (28), empty reply (52), send (55) and receive (56) errors.
    public static let retriedCurlCodes: Set<Int> = [7, 28, 52, 55, 56]

    public init(maxAttempts: Int = 3, initialBackoff: Duration = .milliseconds(150), backoffMultiplier: Double = 1.5,
                maxRetryAfter: Duration = .seconds(60))
    {
        self.maxAttempts = max(1, maxAttempts)
        self.initialBackoff = initialBackoff
        self.backoffMultiplier = backoffMultiplier
        self.maxRetryAfter = maxRetryAfter
    }

    public enum Outcome: Hashable, Sendable {
        /// The server answered. `retryAfter` is the raw header; `quotaExceeded` is the CLI's
        /// `"error": "search_quota_exceeded"` 429, which waiting will not fix.
        case response(status: Int, retryAfter: String?, quotaExceeded: Bool)
        case transportFailure(curlCode: Int)
    }

    public enum Decision: Hashable, Sendable {
        case retry(after: Duration)
        case giveUp
    }

    /// What to do after attempt number `attempt` (1-based) ended with `outcome`.
    /// `idempotent` is false for creates: a request that may have reached the server is not sent
    /// again, or one call could rent two instances. Only "could not connect" (nothing was sent)
    /// and 429 (refused before any work) are retried for those.
    public func decide(after attempt: Int, outcome: Outcome, idempotent: Bool) -> Decision {
        guard attempt < maxAttempts else { return .giveUp }
        switch outcome {
        case .response(let status, let retryAfter, let quotaExceeded):
            guard Self.retriedStatuses.contains(status), !quotaExceeded else { return .giveUp }
            guard idempotent || status == 429 else { return .giveUp }
            if let seconds = Self.seconds(retryAfter: retryAfter) {
                let wait = Duration.milliseconds(Int64((seconds * 1000).rounded()))
                return wait <= maxRetryAfter ? .retry(after: wait) : .giveUp
            }
            return .retry(after: backoff(after: attempt))
        case .transportFailure(let code):
            guard Self.retriedCurlCodes.contains(code) else { return .giveUp }
            guard idempotent || code == 7 else { return .giveUp }
            return .retry(after: backoff(after: attempt))
        }
    }

    /// A `Retry-After` header given in seconds; nil when absent or not a number of seconds (an
    /// HTTP-date, say).
    public static func seconds(retryAfter header: String?) -> Double? {
        header.flatMap { Double($0.trimmingCharacters(in: .whitespaces)) }.flatMap { $0 >= 0 ? $0 : nil }
    }

    /// initialBackoff × multiplier^(attempt-1).
    func backoff(after attempt: Int) -> Duration {
        var wait = initialBackoff
        for _ in 1..<max(1, attempt) { wait = wait * backoffMultiplier }
        return wait
    }
}
