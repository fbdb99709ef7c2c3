import Foundation
import NIOConcurrencyHelpers
import WarmpoolWire

/// The status page's logins: a browser that proved an API key gets a random session token in an
/// HttpOnly, SameSite=Strict cookie, and a CSRF token for its forms. Sessions live in memory: a
/// restarted controller asks for the key again, and nothing secret is written to disk.
///
/// A session names its API key's id, never the key: every request reads the key's record again,
/// so a revoked key or a lowered scope takes effect on the next page, not at the session's end.
public final class ConsoleSessions: Sendable {
    public struct Session: Sendable, Equatable {
        public var keyID: String
        public var csrfToken: String
        /// Seconds since 1970, on the controller's clock.
        public var openedAt: Double
        public var lastSeenAt: Double
    }

    /// A session unused this long is gone (a laptop left open overnight logs in again).
    public let idleTimeout: Double
    /// However busy, a session lasts this long at most.
    public let absoluteTimeout: Double
    /// A flood of logins cannot grow memory without end: the least recently seen go first.
    public let capacity: Int
    private let sessions = NIOLockedValueBox<[String: Session]>([:])

    public init(idleTimeout: Double = 8 * 3600, absoluteTimeout: Double = 24 * 3600, capacity: Int = 10_000) {
        self.idleTimeout = idleTimeout
        self.absoluteTimeout = absoluteTimeout
        self.capacity = capacity
    }

    /// A new session for `keyID`: its cookie token and its CSRF token.
    public func open(keyID: String, now: Double) -> (token: String, session: Session) {
        let token = Self.randomToken(), session = Session(keyID: keyID, csrfToken: Self.randomToken(), openedAt: now, lastSeenAt: now)
        sessions.withLockedValue { sessions in
            if sessions.count >= capacity {
                sessions = sessions.filter { live($0.value, now: now) }
                if sessions.count >= capacity, let oldest = sessions.min(by: { $0.value.lastSeenAt < $1.value.lastSeenAt }) {
                    sessions[oldest.key] = nil
                }
            }
            sessions[token] = session
        }
        return (token, session)
    }

    /// The session behind a cookie token, marked seen now; nil when unknown or expired.
    public func session(token: String, now: Double) -> Session? {
        sessions.withLockedValue { sessions in
            guard var session = sessions[token] else { return nil }
            guard live(session, now: now) else {
                sessions[token] = nil
                return nil
            }
            session.lastSeenAt = now
            sessions[token] = session
            return session
        }
    }

    public func close(token: String) {
        _ = sessions.withLockedValue { $0.removeValue(forKey: token) }
    }

    public var count: Int { sessions.withLockedValue { $0.count } }

    private func live(_ session: Session, now: Double) -> Bool {
        now - session.lastSeenAt < idleTimeout && now - session.openedAt < absoluteTimeout
    }

    /// 256 random bits, hex: unguessable, and safe in a cookie and a form field as is.
    static func randomToken() -> String {
        var generator = SystemRandomNumberGenerator()
        return (0..<4).map { _ in
            let hex = String(generator.next() as UInt64, radix: 16)
            return String(repeating: "0", count: 16 - hex.count) + hex
        }.joined()
    }

    /// Compares a submitted CSRF token in time that does not depend on where it differs.
    public static func tokensMatch(_ submitted: String, _ expected: String) -> Bool {
        constantTimeEquals(Array(submitted.utf8), Array(expected.utf8))
    }
}
