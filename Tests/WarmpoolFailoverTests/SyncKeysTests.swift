import Foundation
import Testing
import WarmpoolModel
@testable import WarmpoolFailover

/// The pools' sync keys: written in OpenSSH's own format, which the real `ssh-keygen` (and so
/// the primary's ssh) reads back to the same public key; one per pool, kept across restarts.
@Suite struct SyncKeysTests {
    static func run(_ arguments: [String]) throws -> (status: Int32, output: String) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/ssh-keygen")
        process.arguments = arguments
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = pipe
        try process.run()
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return (process.terminationStatus, String(decoding: data, as: UTF8.self))
    }

    @Test func aPoolsKeyIsOpenSSHsOwnFormatAndStaysTheSame() throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("sync-keys-\(UUID())").path
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let keys = SyncKeys(directory: directory)
        let first = try keys.keyPair(for: PoolID(7))
        #expect(first.publicKey.hasPrefix("ssh-ed25519 ") && first.publicKey.hasSuffix(" warmpool-sync-pool-7"))
        #expect(first.privateKey.hasPrefix("-----BEGIN OPENSSH PRIVATE KEY-----\n"))
        let mode = try FileManager.default.attributesOfItem(atPath: directory + "/pool-7")[.posixPermissions] as? Int
        #expect(mode == 0o600)

        // The real ssh-keygen derives the same public key from the private one we wrote.
        let file = directory + "/id"
        FileManager.default.createFile(atPath: file, contents: Data(first.privateKey.utf8), attributes: [.posixPermissions: 0o600])
        let derived = try Self.run(["-y", "-f", file])
        #expect(derived.status == 0, "\(derived.output)")
        #expect(derived.output.split(separator: " ").prefix(2) == first.publicKey.split(separator: " ").prefix(2), "\(derived.output)")

        // The same key after a restart; another pool's is another.
        let again = try SyncKeys(directory: directory).keyPair(for: PoolID(7))
        #expect(again.publicKey == first.publicKey)
        #expect(try keys.keyPair(for: PoolID(8)).publicKey != first.publicKey)
    }

    @Test func aDamagedKeyFileIsReplacedNotUsed() throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("sync-keys-\(UUID())").path
        defer { try? FileManager.default.removeItem(atPath: directory) }
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        FileManager.default.createFile(atPath: directory + "/pool-3", contents: Data("not hex".utf8))
        let made = try SyncKeys(directory: directory).keyPair(for: PoolID(3))
        #expect(made.publicKey.hasPrefix("ssh-ed25519 "))
        #expect(try SyncKeys(directory: directory).keyPair(for: PoolID(3)).publicKey == made.publicKey, "kept once made")
    }
}
