import Foundation
import WarmpoolModel

/// An OAuth 2.0 access token and when Google said it ends.
public struct GCEAccessToken: Hashable, Sendable {
    public var value: String
    /// Seconds of life the token endpoint gave (`expires_in`).
    public var lifetimeSeconds: Int64

    public init(value: String, lifetimeSeconds: Int64) {
        self.value = value
        self.lifetimeSeconds = lifetimeSeconds
    }
}

/// Hands out the access token for every Compute Engine call: one JWT bearer grant per token, kept
/// until shortly before it expires, one exchange in flight however many calls wait for it.
///
/// Time comes from a `WallClock`: the JWT's `iat`/`exp` are checked by Google against its wall
/// clock, and tests drive a mock one.
public actor GCETokenSource {
    /// Trades a signed assertion for a token at `tokenURI` (the real one is an HTTPS POST).
    public typealias Exchange = @Sendable (_ assertion: String, _ tokenURI: String) async throws -> GCEAccessToken

    private struct Cached {
        var token: GCEAccessToken
        /// Handed out until then; refreshed afterwards.
        var refreshAt: Instant
    }

    public let key: ServiceAccountKey
    public let scope: String
    private let clock: any WallClock
    /// How long before expiry a token is replaced: a call started with it must not outlive it.
    private let refreshMargin: Duration
    private let exchange: Exchange
    private var cached: Cached?
    private var inFlight: Task<GCEAccessToken, any Error>?
    /// Exchanges made so far (tests and logs).
    public private(set) var exchanges = 0

    public init(key: ServiceAccountKey, scope: String = GCEJWT.computeScope, clock: any WallClock = SystemWallClock(),
                refreshMargin: Duration = .seconds(300), exchange: @escaping Exchange)
    {
        self.key = key
        self.scope = scope
        self.clock = clock
        self.refreshMargin = refreshMargin
        self.exchange = exchange
    }

    /// A token valid for a while yet: the cached one, else a fresh one.
    public func token() async throws -> String {
        if let cached, clock.now() < cached.refreshAt { return cached.token.value }
        return try await refresh().value
    }

    /// The server refused `token` (401): drop it, unless a newer one has already replaced it.
    public func invalidate(_ token: String) {
        if cached?.token.value == token { cached = nil }
    }

    private func refresh() async throws -> GCEAccessToken {
        if let inFlight { return try await inFlight.value }
        let issuedAt = clock.now()
        let assertion = try GCEJWT.assertion(key: key, scope: scope, issuedAt: issuedAt.nanosecondsSinceEpoch / 1_000_000_000)
        let exchange = self.exchange
        let tokenURI = key.tokenURI
        let task = Task { try await exchange(assertion, tokenURI) }
        inFlight = task
        defer { inFlight = nil }
        exchanges += 1
        let token = try await task.value
        // Half the life at least, so a short-lived token (a test's, or a sim's) is still reused.
        let life = Duration.seconds(token.lifetimeSeconds)
        let keep = max(life / 2, life - refreshMargin)
        cached = Cached(token: token, refreshAt: issuedAt + keep)
        return token
    }
}
