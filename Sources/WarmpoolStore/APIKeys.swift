import Crypto
import Foundation

/// API keys look like `wp_<8 hex id>_<48 hex secret>`. The id finds the row; only the key's
/// SHA-256 is stored, and it is compared in constant time.
public enum APIKeys {
    public struct Minted: Sendable {
        public var record: APIKeyRecord
        /// Shown once, to whoever created the key; never stored.
        public var plaintext: String
    }

    public static func mint(name: String, scope: APIKeyRecord.Scope = .admin, now: Date = Date()) -> Minted {
        let id = hex(randomBytes(4))
        let plaintext = "wp_\(id)_\(hex(randomBytes(24)))"
        return Minted(record: APIKeyRecord(id: id, name: name, hashHex: hash(plaintext), createdAt: now, scope: scope),
                      plaintext: plaintext)
    }

    /// The id inside a well-formed key, or nil for anything else.
    public static func id(of token: String) -> String? {
        let parts = token.split(separator: "_", omittingEmptySubsequences: false)
        guard parts.count == 3, parts[0] == "wp", parts[1].utf8.count == 8, parts[2].utf8.count == 48,
            (parts[1] + parts[2]).utf8.allSatisfy(isLowerHex)
        else { return nil }
        return String(parts[1])
    }

    /// True when `token` is the key `record` was minted for and the key is not revoked.
    public static func matches(_ token: String, _ record: APIKeyRecord) -> Bool {
        guard record.revokedAt == nil else { return false }
        let presented = Array(hash(token).utf8)
        let stored = Array(record.hashHex.utf8)
        guard presented.count == stored.count else { return false }
        var difference: UInt8 = 0
        for index in presented.indices { difference |= presented[index] ^ stored[index] }
        return difference == 0
    }

    static func hash(_ token: String) -> String { hex(Array(SHA256.hash(data: Array(token.utf8)))) }

    private static func randomBytes(_ count: Int) -> [UInt8] {
        var generator = SystemRandomNumberGenerator()
        return (0..<count).map { _ in UInt8.random(in: .min ... .max, using: &generator) }
    }

    private static func hex(_ bytes: [UInt8]) -> String {
        let digits = Array("0123456789abcdef".utf8)
        var out = [UInt8]()
        out.reserveCapacity(bytes.count * 2)
        for byte in bytes {
            out.append(digits[Int(byte >> 4)])
            out.append(digits[Int(byte & 0x0F)])
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// What asking to revoke a key came to.
    public enum Revocation: Equatable, Sendable {
        case revoked
        /// No such key, or it is revoked already.
        case notFound
        /// It is the last active admin key: revoking it would leave no one able to manage keys,
        /// agents or settings through the API (only `warmpool-controller apikey` on the database's
        /// machine could mint one again).
        case lastAdminKey
    }

    private static func isLowerHex(_ byte: UInt8) -> Bool {
        (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte) || (UInt8(ascii: "a")...UInt8(ascii: "f")).contains(byte)
    }
}
