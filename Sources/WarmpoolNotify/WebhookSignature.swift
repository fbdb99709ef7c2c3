import Crypto
import Foundation

/// The webhook signature scheme (Protocol/WEBHOOKS.md):
///
///     X-Warmpool-Timestamp: <unix seconds>
///     X-Warmpool-Signature: sha256=<lowercase hex HMAC-SHA256(secret, "<timestamp>.<body>")>
///
/// The timestamp is inside the MAC, so a captured request cannot be replayed later with a fresh
/// timestamp; a receiver rejects timestamps outside its tolerance and drops repeated
/// `X-Warmpool-Delivery` ids. Pure: no clock, no I/O.
public enum WebhookSignature {
    public static let prefix = "sha256="

    /// Why a signature was refused, or `valid`.
    public enum Verdict: Equatable, Sendable {
        case valid
        /// Not `sha256=` and 64 hex digits, or the timestamp is not a decimal integer.
        case malformed
        /// Well formed but not made with this secret over this timestamp and body.
        case mismatch
        /// Signed correctly, but the timestamp is further than the tolerance from now: a replay, or a bad clock.
        case stale
    }

    /// The header value for `body` sent at `timestamp`.
    public static func sign(body: some DataProtocol, timestamp: Int64, secret: some ContiguousBytes) -> String {
        let mac = mac(body: body, timestamp: String(timestamp), secret: secret)
        return prefix + String(decoding: mac.flatMap { [hexDigits[Int($0 >> 4)], hexDigits[Int($0 & 0x0f)]] }, as: UTF8.self)
    }

    /// Checks a received request the way a receiver should: the MAC (compared in constant time),
    /// then the timestamp's distance from `now`.
    public static func verify(signature: String, timestamp: String, body: some DataProtocol, secret: some ContiguousBytes,
                              now: Date, tolerance: Duration = .seconds(300)) -> Verdict
    {
        guard let seconds = Int64(timestamp),
              signature.hasPrefix(prefix), let received = bytes(hex: signature.dropFirst(prefix.count)),
              received.count == SHA256.byteCount
        else { return .malformed }
        // isValidAuthenticationCode compares in constant time: no byte-by-byte timing oracle.
        let message = Data(timestamp.utf8) + Data(".".utf8) + Data(body)
        guard HMAC<SHA256>.isValidAuthenticationCode(received, authenticating: message, using: SymmetricKey(data: secret))
        else { return .mismatch }
        let age = abs(now.timeIntervalSince1970 - Double(seconds))
        return age <= Double(tolerance.components.seconds) ? .valid : .stale
    }

    static func mac(body: some DataProtocol, timestamp: String, secret: some ContiguousBytes) -> [UInt8] {
        var hmac = HMAC<SHA256>(key: SymmetricKey(data: secret))
        hmac.update(data: Data(timestamp.utf8))
        hmac.update(data: Data(".".utf8))
        hmac.update(data: Data(body))
        return Array(hmac.finalize())
    }

    private static let hexDigits = Array("0123456789abcdef".utf8)

    /// Upper or lower case; nil on an odd length or a non-hex character.
    private static func bytes(hex: Substring) -> [UInt8]? {
        let utf8 = Array(hex.utf8)
        guard utf8.count % 2 == 0 else { return nil }
        var bytes: [UInt8] = []
        bytes.reserveCapacity(utf8.count / 2)
        var index = 0
        while index < utf8.count {
            guard let high = nibble(utf8[index]), let low = nibble(utf8[index + 1]) else { return nil }
            bytes.append(high << 4 | low)
            index += 2
        }
        return bytes
    }

    private static func nibble(_ character: UInt8) -> UInt8? {
        switch character {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): character - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): character - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): character - UInt8(ascii: "A") + 10
        default: nil
        }
    }
}
