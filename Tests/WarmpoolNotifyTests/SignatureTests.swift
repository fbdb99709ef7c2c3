import Foundation
import Testing
@testable import WarmpoolNotify

@Suite struct SignatureTests {
    static let secret = Array("whsec-test-0123456789".utf8)
    static let body = Data(#"{"event":"failover_complete","id":"n-1"}"#.utf8)
    static let timestamp: Int64 = 1_764_393_600
    static let now = Date(timeIntervalSince1970: 1_764_393_600)

    /// Computed independently with Python's hmac module (the snippet in Protocol/WEBHOOKS.md).
    @Test func signatureMatchesAKnownAnswer() {
        #expect(WebhookSignature.sign(body: Self.body, timestamp: Self.timestamp, secret: Self.secret)
            == "sha256=5a336e22a23afb8884a24162aea2ca9e6068edde0358a42947feb18b1837eab1")
    }

    @Test func aSignatureVerifiesWithTheSameSecretTimestampAndBody() {
        let signature = WebhookSignature.sign(body: Self.body, timestamp: Self.timestamp, secret: Self.secret)
        #expect(WebhookSignature.verify(signature: signature, timestamp: "1764393600", body: Self.body,
                                        secret: Self.secret, now: Self.now) == .valid)
        // Hex case does not matter to the receiver.
        #expect(WebhookSignature.verify(signature: "sha256=" + signature.dropFirst(7).uppercased(), timestamp: "1764393600",
                                        body: Self.body, secret: Self.secret, now: Self.now) == .valid)
    }

    @Test func anyChangeIsAMismatch() {
        let signature = WebhookSignature.sign(body: Self.body, timestamp: Self.timestamp, secret: Self.secret)
        #expect(WebhookSignature.verify(signature: signature, timestamp: "1764393600", body: Self.body,
                                        secret: Array("whsec-test-0123456788".utf8), now: Self.now) == .mismatch)
        #expect(WebhookSignature.verify(signature: signature, timestamp: "1764393600", body: Self.body + Data(" ".utf8),
                                        secret: Self.secret, now: Self.now) == .mismatch)
        // A replay under a fresh timestamp: the old MAC does not cover it.
        #expect(WebhookSignature.verify(signature: signature, timestamp: "1764393601", body: Self.body,
                                        secret: Self.secret, now: Self.now) == .mismatch)
    }

    @Test func anOldTimestampIsStaleEvenWhenSignedCorrectly() {
        let signature = WebhookSignature.sign(body: Self.body, timestamp: Self.timestamp, secret: Self.secret)
        #expect(WebhookSignature.verify(signature: signature, timestamp: "1764393600", body: Self.body, secret: Self.secret,
                                        now: Self.now.addingTimeInterval(301)) == .stale)
        #expect(WebhookSignature.verify(signature: signature, timestamp: "1764393600", body: Self.body, secret: Self.secret,
                                        now: Self.now.addingTimeInterval(-299)) == .valid)
    }

    @Test(arguments: [
        "", "sha256=", "sha1=5a336e22a23afb8884a24162aea2ca9e6068edde0358a42947feb18b1837eab1",
        "sha256=5a336e22a23afb8884a24162aea2ca9e6068edde0358a42947feb18b1837eab", // odd length
        "sha256=5a336e22a23afb8884a24162aea2ca9e6068edde0358a42947feb18b1837ea", // one byte short
        "sha256=zz336e22a23afb8884a24162aea2ca9e6068edde0358a42947feb18b1837eab1",
    ])
    func malformedSignaturesAreRefused(signature: String) {
        #expect(WebhookSignature.verify(signature: signature, timestamp: "1764393600", body: Self.body,
                                        secret: Self.secret, now: Self.now) == .malformed)
    }

    @Test func aNonNumericTimestampIsMalformed() {
        let signature = WebhookSignature.sign(body: Self.body, timestamp: Self.timestamp, secret: Self.secret)
        #expect(WebhookSignature.verify(signature: signature, timestamp: "yesterday", body: Self.body,
                                        secret: Self.secret, now: Self.now) == .malformed)
    }
}
