/// Host-key fingerprints as OpenSSH prints them, shared by the two ends that must agree on one:
/// the agent, which reports its sshd's key over its authenticated session, and the controller's
/// SSH client, which compares it with the key the instance presents.
public enum HostKeyFingerprint {
    /// The one host key type the controller asks for and the agent reports. Every OpenSSH since
    /// 6.5 generates it (`ssh-keygen -A`), so one key per instance keeps the pin one value; a
    /// negotiation that picked ECDSA or RSA would present a key no agent vouched for.
    public static let keyType = "ssh-ed25519"

    /// `SHA256:` and the digest in base64 without padding, as `ssh-keygen -l` prints it.
    public static func sha256(digest: [UInt8]) -> String {
        "SHA256:" + base64(digest, padding: false)
    }

    /// Whether `text` has the shape of `sha256(digest:)`'s answer for a 32-byte digest.
    public static func isWellFormed(_ text: String) -> Bool {
        let utf8 = Array(text.utf8)
        guard utf8.count == 7 + 43, text.hasPrefix("SHA256:") else { return false }
        return utf8[7...].allSatisfy { decodeTable[Int($0)] >= 0 }
    }

    /// The key blob of an OpenSSH public key line (`ssh-ed25519 AAAA... comment`), when the line
    /// holds a key of `keyType` whose blob names that type too.
    public static func publicKeyBlob(openSSHLine line: String) -> [UInt8]? {
        let fields = line.split(whereSeparator: { $0 == " " || $0 == "\t" || $0 == "\n" || $0 == "\r" })
        guard fields.count >= 2, fields[0] == Substring(keyType), let blob = base64Decode(String(fields[1])) else { return nil }
        // The blob starts with its own type as an SSH string: u32 length, then the name.
        let name = Array(keyType.utf8)
        guard blob.count > 4 + name.count,
            Array(blob[0..<4]) == [0, 0, 0, UInt8(name.count)], Array(blob[4..<(4 + name.count)]) == name
        else { return nil }
        return blob
    }

    public static func base64(_ bytes: [UInt8], padding: Bool) -> String {
        var out: [UInt8] = []
        out.reserveCapacity((bytes.count + 2) / 3 * 4)
        var index = 0
        while index + 3 <= bytes.count {
            let value = UInt32(bytes[index]) << 16 | UInt32(bytes[index + 1]) << 8 | UInt32(bytes[index + 2])
            out += [alphabet[Int(value >> 18 & 63)], alphabet[Int(value >> 12 & 63)], alphabet[Int(value >> 6 & 63)],
                    alphabet[Int(value & 63)]]
            index += 3
        }
        let rest = bytes.count - index
        if rest == 1 {
            let value = UInt32(bytes[index]) << 16
            out += [alphabet[Int(value >> 18 & 63)], alphabet[Int(value >> 12 & 63)]]
            if padding { out += Array("==".utf8) }
        } else if rest == 2 {
            let value = UInt32(bytes[index]) << 16 | UInt32(bytes[index + 1]) << 8
            out += [alphabet[Int(value >> 18 & 63)], alphabet[Int(value >> 12 & 63)], alphabet[Int(value >> 6 & 63)]]
            if padding { out += Array("=".utf8) }
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// Standard base64, padding optional; nil for any other character or an impossible length.
    public static func base64Decode(_ text: String) -> [UInt8]? {
        var symbols = Array(text.utf8)
        while symbols.last == UInt8(ascii: "=") { symbols.removeLast() }
        guard symbols.count % 4 != 1, text.utf8.count - symbols.count <= 2 else { return nil }
        var out: [UInt8] = []
        out.reserveCapacity(symbols.count * 3 / 4)
        var accumulator: UInt32 = 0
        var bits = 0
        for symbol in symbols {
            let value = decodeTable[Int(symbol)]
            guard value >= 0 else { return nil }
            accumulator = accumulator << 6 | UInt32(value)
            bits += 6
            if bits >= 8 {
                bits -= 8
                out.append(UInt8(truncatingIfNeeded: accumulator >> UInt32(bits)))
            }
        }
        return out
    }

    private static let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".utf8)
    private static let decodeTable: [Int8] = {
        var table = [Int8](repeating: -1, count: 256)
        for (index, symbol) in alphabet.enumerated() { table[Int(symbol)] = Int8(index) }
        return table
    }()
}
