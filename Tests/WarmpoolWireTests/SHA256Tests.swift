import Crypto
import Testing
import WarmpoolWire

/// The wire's own SHA-256 and HMAC-SHA256 (SHA256.swift) against the published vectors and
/// against swift-crypto (BoringSSL) on random inputs of every length around the block boundaries,
/// fed whole and in random pieces.
@Suite struct SHA256Tests {
    static func hex(_ text: String) -> [UInt8] { [UInt8](hexString: text)! }

    /// FIPS 180-4 examples (NIST CSRC "SHA256.pdf", the 1,000,000 x "a" one in `millionA`).
    @Test(arguments: [
        ("", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"),
        ("abc", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"),
        ("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq",
         "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"),
        ("abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmnhijklmnoijklmnopjklmnopqklmnopqrlmnopqrsmnopqrstnopqrstu",
         "cf5b16a778af8380036ce59e7b0492370b249b11e8f07a51afac45037afee9d1"),
    ])
    func nistVectors(message: String, digest: String) {
        #expect(SHA256Hasher.hash(Array(message.utf8)).bytes.hexString == digest)
    }

    /// "a" repeated across the padding's boundaries: 55 bytes is the longest message padded in its
    /// own block, 56 and 63 push the length into a second, 64 fills a block exactly, 119/120 and
    /// 127/128 are the same edges one block on. Digests from coreutils' sha256sum
    /// (`head -c N /dev/zero | tr '\0' a | sha256sum`), an implementation apart from both of ours.
    @Test(arguments: [
        (55, "9f4390f8d30c2dd92ec9f095b65e2b9ae9b0a925a5258e241c9f1e910f734318"),
        (56, "b35439a4ac6f0948b6d6f9e3c6af0f5f590ce20f1bde7090ef7970686ec6738a"),
        (63, "7d3e74a05d7db15bce4ad9ec0658ea98e3f06eeecf16b4c6fff2da457ddc2f34"),
        (64, "ffe054fe7ae0cb6dc65c3af9b61d5209f439851db43d0ba5997337df154668eb"),
        (65, "635361c48bb9eab14198e76ea8ab7f1a41685d6ad62aa9146d301d4f17eb0ae0"),
        (119, "31eba51c313a5c08226adf18d4a359cfdfd8d2e816b13f4af952f7ea6584dcfb"),
        (120, "2f3d335432c70b580af0e8e1b3674a7c020d683aa5f73aaaedfdc55af904c21c"),
        (127, "c57e9278af78fa3cab38667bef4ce29d783787a2f731d4e12200270f0c32320a"),
        (128, "6836cf13bac400e9105071cd6af47084dfacad4e5e302c94bfed24e013afb73e"),
    ])
    func paddingBoundaries(length: Int, digest: String) {
        let message = [UInt8](repeating: UInt8(ascii: "a"), count: length)
        #expect(SHA256Hasher.hash(message).bytes.hexString == digest)
        // The same bytes one at a time: every block is compressed from the pending buffer.
        var hasher = SHA256Hasher()
        for byte in message { hasher.update([byte]) }
        #expect(hasher.finalize().bytes.hexString == digest)
    }

    @Test func millionA() {
        var hasher = SHA256Hasher()
        let chunk = [UInt8](repeating: UInt8(ascii: "a"), count: 1000)
        for _ in 0..<1000 { hasher.update(chunk) }
        #expect(hasher.finalize().bytes.hexString == "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0")
    }

    struct HMACVector: Sendable, CustomTestStringConvertible {
        var name: String
        var key: [UInt8]
        var data: [UInt8]
        var mac: String
        var testDescription: String { name }
    }

    /// RFC 4231 §4.2-4.8; test case 5's MAC is truncated to 128 bits, as the frame MAC is.
    static let rfc4231: [HMACVector] = [
        HMACVector(name: "1", key: [UInt8](repeating: 0x0b, count: 20), data: Array("Hi There".utf8),
                   mac: "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"),
        HMACVector(name: "2", key: Array("Jefe".utf8), data: Array("what do ya want for nothing?".utf8),
                   mac: "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"),
        HMACVector(name: "3", key: [UInt8](repeating: 0xaa, count: 20), data: [UInt8](repeating: 0xdd, count: 50),
                   mac: "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe"),
        HMACVector(name: "4", key: hex("0102030405060708090a0b0c0d0e0f10111213141516171819"),
                   data: [UInt8](repeating: 0xcd, count: 50),
                   mac: "82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b"),
        HMACVector(name: "5", key: [UInt8](repeating: 0x0c, count: 20), data: Array("Test With Truncation".utf8),
                   mac: "a3b6167473100ee06e0c796c2955552b"),
        HMACVector(name: "6", key: [UInt8](repeating: 0xaa, count: 131),
                   data: Array("Test Using Larger Than Block-Size Key - Hash Key First".utf8),
                   mac: "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"),
        HMACVector(name: "7", key: [UInt8](repeating: 0xaa, count: 131),
                   data: Array(("This is a test using a larger than block-size key and a larger than block-size data. "
                       + "The key needs to be hashed before being used by the HMAC algorithm.").utf8),
                   mac: "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2"),
    ]

    @Test(arguments: rfc4231)
    func rfc4231Vectors(vector: HMACVector) {
        let mac = HMACSHA256.authenticationCode(for: vector.data, key: vector.key).bytes.hexString
        #expect(mac.hasPrefix(vector.mac))
    }

    /// Every length from 0 to 300 bytes (past four blocks, across each padding boundary), in one
    /// piece and in random pieces, against BoringSSL; keys of every length around the block size.
    @Test func randomInputsAgainstSwiftCrypto() {
        var generator = SystemRandomNumberGenerator()
        for length in 0...300 {
            let message = (0..<length).map { _ in UInt8.random(in: .min ... .max, using: &generator) }
            let expectedDigest = Array(Crypto.SHA256.hash(data: message))
            #expect(SHA256Hasher.hash(message).bytes == expectedDigest, "length \(length)")

            var pieces = SHA256Hasher()
            var offset = 0
            while offset < length {
                let size = Int.random(in: 0...min(70, length - offset), using: &generator)
                pieces.update(message[offset..<(offset + size)])
                offset += size
            }
            #expect(pieces.finalize().bytes == expectedDigest, "length \(length) in pieces")

            let key = (0..<(length % 140)).map { _ in UInt8.random(in: .min ... .max, using: &generator) }
            let expectedMAC = Array(Crypto.HMAC<Crypto.SHA256>.authenticationCode(for: message, using: SymmetricKey(data: key)))
            var hmac = HMACSHA256(key: key)
            let split = length / 3
            hmac.update(message[..<split])
            hmac.update(message[split...])
            #expect(hmac.finalize().bytes == expectedMAC, "HMAC, length \(length), key \(key.count)")
        }
    }

    /// A keyed HMAC forks by copy: each copy authenticates its own message, the original is untouched.
    @Test func copiesAreIndependent() {
        let keyed = HMACSHA256(key: Array("key".utf8))
        var first = keyed
        first.update(Array("one".utf8))
        var second = keyed
        second.update(Array("two".utf8))
        #expect(first.finalize() == HMACSHA256.authenticationCode(for: Array("one".utf8), key: Array("key".utf8)))
        #expect(second.finalize() == HMACSHA256.authenticationCode(for: Array("two".utf8), key: Array("key".utf8)))
        #expect(keyed.finalize() == HMACSHA256.authenticationCode(for: [], key: Array("key".utf8)))
    }
}
