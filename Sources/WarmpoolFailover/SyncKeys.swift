import Crypto
import Foundation
import WarmpoolModel

/// The key pair a pool's primary logs in to its CPU standby with, for the sync (rsync over SSH):
/// one per pool, minted on first need and kept as a file of mode 0600 in `directory`. The public
/// half goes into the VM's `ssh-keys` metadata, the private half onto the primary, in its sync
/// target. Never the controller's own key: a primary that leaks its key opens its own pool's CPU
/// VM and nothing else.
struct SyncKeys: Sendable {
    let directory: String

    struct KeyPair: Sendable, Equatable {
        /// OpenSSH's private key format, as `ssh-keygen` writes it (unencrypted).
        var privateKey: String
        /// `ssh-ed25519 BASE64 comment`.
        var publicKey: String
    }

    func keyPair(for poolID: PoolID) throws -> KeyPair {
        let path = directory + "/pool-\(poolID)"
        let comment = "warmpool-sync-pool-\(poolID)"
        if let data = FileManager.default.contents(atPath: path), let seed = Self.seed(fromHex: String(decoding: data, as: UTF8.self)) {
            return try Self.keyPair(seed: seed, comment: comment)
        }
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        let key = Curve25519.Signing.PrivateKey()
        let seed = [UInt8](key.rawRepresentation)
        let hex = seed.map { String($0, radix: 16).count == 1 ? "0" + String($0, radix: 16) : String($0, radix: 16) }.joined()
        // Written whole under a temporary name: a crash leaves the old file or the new, never half.
        let temporary = path + ".tmp"
        guard FileManager.default.createFile(atPath: temporary, contents: Data(hex.utf8), attributes: [.posixPermissions: 0o600]) else {
            throw SyncKeyError(description: "cannot write \(temporary)")
        }
        guard rename(temporary, path) == 0 else { throw SyncKeyError(description: "cannot rename \(temporary): errno \(errno)") }
        return try Self.keyPair(seed: seed, comment: comment)
    }

    struct SyncKeyError: Error, CustomStringConvertible {
        var description: String
    }

    static func keyPair(seed: [UInt8], comment: String) throws -> KeyPair {
        let key = try Curve25519.Signing.PrivateKey(rawRepresentation: seed)
        let publicKey = [UInt8](key.publicKey.rawRepresentation)
        let blob = string("ssh-ed25519") + string(publicKey)
        return KeyPair(
            privateKey: openSSHPrivateKey(seed: seed, publicKey: publicKey, comment: comment, checkInt: UInt32.random(in: .min ... .max)),
            publicKey: "ssh-ed25519 \(HostKeyFingerprint.base64(blob, padding: true)) \(comment)")
    }

    /// PROTOCOL.key of OpenSSH: `openssh-key-v1`, no cipher, one key, the private section padded
    /// to the cipher block size (8 for none) with 1, 2, 3, ….
    static func openSSHPrivateKey(seed: [UInt8], publicKey: [UInt8], comment: String, checkInt: UInt32) -> String {
        let publicBlob = string("ssh-ed25519") + string(publicKey)
        var section = uint32(checkInt) + uint32(checkInt) + string("ssh-ed25519") + string(publicKey) + string(seed + publicKey)
            + string(Array(comment.utf8))
        var pad: UInt8 = 1
        while section.count % 8 != 0 {
            section.append(pad)
            pad += 1
        }
        let body = Array("openssh-key-v1".utf8) + [0] + string("none") + string("none") + string([UInt8]()) + uint32(1)
            + string(publicBlob) + string(section)
        let encoded = HostKeyFingerprint.base64(body, padding: true)
        var lines = ["-----BEGIN OPENSSH PRIVATE KEY-----"]
        var index = encoded.startIndex
        while index < encoded.endIndex {
            let end = encoded.index(index, offsetBy: 70, limitedBy: encoded.endIndex) ?? encoded.endIndex
            lines.append(String(encoded[index..<end]))
            index = end
        }
        lines.append("-----END OPENSSH PRIVATE KEY-----")
        return lines.joined(separator: "\n") + "\n"
    }

    private static func seed(fromHex hex: String) -> [UInt8]? {
        let digits = Array(hex.trimmingCharacters(in: .whitespacesAndNewlines).utf8)
        guard digits.count == 64 else { return nil }
        var bytes: [UInt8] = []
        for index in stride(from: 0, to: 64, by: 2) {
            guard let byte = UInt8(String(decoding: digits[index...index + 1], as: UTF8.self), radix: 16) else { return nil }
            bytes.append(byte)
        }
        return bytes
    }

    private static func string(_ text: String) -> [UInt8] { string(Array(text.utf8)) }
    private static func string(_ bytes: [UInt8]) -> [UInt8] { uint32(UInt32(bytes.count)) + bytes }
    private static func uint32(_ value: UInt32) -> [UInt8] {
        [UInt8(value >> 24), UInt8(value >> 16 & 0xff), UInt8(value >> 8 & 0xff), UInt8(value & 0xff)]
    }
}
