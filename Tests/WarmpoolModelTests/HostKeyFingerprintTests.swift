import Foundation
import Testing
import WarmpoolModel

/// The fingerprint both ends compute (the agent from its sshd's public key file, the controller
/// from libssh2's hash) and our base64, against Foundation's on random inputs.
@Suite struct HostKeyFingerprintTests {
    @Test func formatsLikeOpenSSH() {
        #expect(HostKeyFingerprint.sha256(digest: Array(repeating: 0, count: 32)) == "SHA256:" + String(repeating: "A", count: 43))
        #expect(HostKeyFingerprint.base64(Array("foobar".utf8), padding: true) == "Zm9vYmFy")
        #expect(HostKeyFingerprint.base64(Array("fooba".utf8), padding: true) == "Zm9vYmE=")
        #expect(HostKeyFingerprint.base64(Array("foob".utf8), padding: true) == "Zm9vYg==")
        #expect(HostKeyFingerprint.base64(Array("foob".utf8), padding: false) == "Zm9vYg")
        #expect(HostKeyFingerprint.base64(Array(0...255), padding: true) == Data(Array(0...255)).base64EncodedString())
    }

    @Test func base64RoundTripsAndDecodesAsFoundationDoes() {
        var generator = SystemRandomNumberGenerator()
        for length in 0..<200 {
            let bytes = (0..<length).map { _ in UInt8.random(in: 0...255, using: &generator) }
            let padded = Data(bytes).base64EncodedString()
            #expect(HostKeyFingerprint.base64(bytes, padding: true) == padded)
            #expect(HostKeyFingerprint.base64Decode(padded) == bytes)
            #expect(HostKeyFingerprint.base64Decode(HostKeyFingerprint.base64(bytes, padding: false)) == bytes)
        }
        for bad in ["A", "AB=C", "A===", "AB*D", "ABC-", "Zm9vYg===", "Zm 9v"] {
            #expect(HostKeyFingerprint.base64Decode(bad) == nil, "\(bad)")
        }
    }

    @Test func readsOnlyEd25519PublicKeyLines() {
        // ssh-keygen's ed25519 public key of the test vector in draft-ietf-curdle-ssh-ed25519.
        let line = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGb2bJOXJ2bItq7Uny7V0RXi3/8NeOm7lSZvnFbC0FqT comment with spaces\n"
        let blob = HostKeyFingerprint.publicKeyBlob(openSSHLine: line)
        #expect(blob?.count == 51)
        #expect(Array(blob?.prefix(15) ?? []) == [0, 0, 0, 11] + Array("ssh-ed25519".utf8))
        #expect(HostKeyFingerprint.publicKeyBlob(openSSHLine: "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTY=") == nil)
        // The type word says ed25519 but the blob names another type.
        #expect(HostKeyFingerprint.publicKeyBlob(openSSHLine: "ssh-ed25519 AAAAB3NzaC1yc2EAAAADAQAB") == nil)
        #expect(HostKeyFingerprint.publicKeyBlob(openSSHLine: "ssh-ed25519") == nil)
        #expect(HostKeyFingerprint.publicKeyBlob(openSSHLine: "ssh-ed25519 not*base64") == nil)
        #expect(HostKeyFingerprint.isWellFormed("SHA256:" + String(repeating: "+", count: 43)))
        #expect(!HostKeyFingerprint.isWellFormed("SHA256:" + String(repeating: "A", count: 42)))
        #expect(!HostKeyFingerprint.isWellFormed("MD5:" + String(repeating: "A", count: 46)))
        #expect(!HostKeyFingerprint.isWellFormed("SHA256:" + String(repeating: "=", count: 43)))
    }
}
