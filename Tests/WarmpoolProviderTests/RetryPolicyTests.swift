import Testing
@testable import WarmpoolProvider

/// The CLI's retry rules (reference §1), as a table.
@Suite struct RetryPolicyTests {
    let policy = RetryPolicy(maxAttempts: 3)

    func decide(_ outcome: RetryPolicy.Outcome, attempt: Int = 1, idempotent: Bool = true) -> RetryPolicy.Decision {
        policy.decide(after: attempt, outcome: outcome, idempotent: idempotent)
    }

    @Test func retriedStatusesWithAndWithoutRetryAfter() {
        #expect(decide(.response(status: 429, retryAfter: "1", quotaExceeded: false)) == .retry(after: .seconds(1)))
        #expect(decide(.response(status: 503, retryAfter: "60", quotaExceeded: false)) == .retry(after: .seconds(60)))
        #expect(decide(.response(status: 503, retryAfter: "61", quotaExceeded: false)) == .giveUp)
        // An HTTP-date is not seconds: the backoff applies.
        #expect(decide(.response(status: 502, retryAfter: "Wed, 21 Oct 2026 07:28:00 GMT", quotaExceeded: false))
            == .retry(after: .milliseconds(150)))
        #expect(decide(.response(status: 504, retryAfter: nil, quotaExceeded: false), attempt: 2) == .retry(after: .milliseconds(225)))
        for status in [400, 401, 404, 500, 501] {
            #expect(decide(.response(status: status, retryAfter: "1", quotaExceeded: false)) == .giveUp, "\(status)")
        }
    }

    @Test func theLastAttemptAndTheSearchQuotaAreFinal() {
        #expect(decide(.response(status: 503, retryAfter: nil, quotaExceeded: false), attempt: 3) == .giveUp)
        #expect(decide(.response(status: 429, retryAfter: "1", quotaExceeded: true)) == .giveUp)
        #expect(RetryPolicy(maxAttempts: 0).maxAttempts == 1)
    }

    @Test func transportFailures() {
        #expect(decide(.transportFailure(curlCode: 7)) == .retry(after: .milliseconds(150)))
        #expect(decide(.transportFailure(curlCode: 28)) == .retry(after: .milliseconds(150)))
        #expect(decide(.transportFailure(curlCode: 6)) == .giveUp, "an unknown host stays unknown")
    }

    @Test func nonIdempotentCallsRetryOnlyWhatNeverReachedTheServer() {
        #expect(decide(.transportFailure(curlCode: 7), idempotent: false) == .retry(after: .milliseconds(150)))
        #expect(decide(.transportFailure(curlCode: 28), idempotent: false) == .giveUp)
        #expect(decide(.transportFailure(curlCode: 52), idempotent: false) == .giveUp)
        #expect(decide(.response(status: 429, retryAfter: "2", quotaExceeded: false), idempotent: false) == .retry(after: .seconds(2)))
        #expect(decide(.response(status: 503, retryAfter: "2", quotaExceeded: false), idempotent: false) == .giveUp)
    }

    @Test func whichErrorsAreWorthAnotherCallLater() {
        #expect(ProviderError.transport(curlCode: 7, message: "refused").isTransient)
        #expect(ProviderError.http(status: 503, message: "").isTransient && ProviderError.http(status: 429, message: "").isTransient)
        #expect(!ProviderError.http(status: 400, message: "").isTransient)
        #expect(!ProviderError.rejected(message: "no").isTransient && !ProviderError.notFound(what: "x").isTransient)
        #expect(!ProviderError.malformedResponse(what: "x").isTransient)
        #expect(ProviderError.http(status: 503, message: "maintenance").description == "HTTP 503: maintenance")
    }
}
