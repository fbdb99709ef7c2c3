import Foundation
import Logging
import NIOPosix
import Testing
@testable import WarmpoolSSH
import WarmpoolModel

#if canImport(Glibc)
import Glibc
#endif

private let ms: Int64 = 1_000_000

/// Records log entries and alerts, for assertions.
final class Recorder: @unchecked Sendable {
    private let lock = NSLock()
    private var _entries: [(level: Logger.Level, message: String, metadata: Logger.Metadata)] = []
    private var _alerts: [SSHAlert] = []

    var entries: [(level: Logger.Level, message: String, metadata: Logger.Metadata)] { lock.withLock { _entries } }
    var alerts: [SSHAlert] { lock.withLock { _alerts } }

    func record(_ level: Logger.Level, _ message: String, _ metadata: Logger.Metadata) {
        lock.withLock { _entries.append((level, message, metadata)) }
    }

    func alert(_ alert: SSHAlert) { lock.withLock { _alerts.append(alert) } }

    var logger: Logger {
        Logger(label: "warmpool.ssh.test") { _ in RecordingHandler(recorder: self) }
    }

    struct RecordingHandler: LogHandler {
        let recorder: Recorder
        var metadata: Logger.Metadata = [:]
        var logLevel: Logger.Level = .trace
        subscript(metadataKey key: String) -> Logger.Metadata.Value? {
            get { metadata[key] }
            set { metadata[key] = newValue }
        }
        func log(event: LogEvent) {
            recorder.record(event.level, "\(event.message)", metadata.merging(event.metadata ?? [:]) { $1 })
        }
    }
}

/// Against a real OpenSSH server on loopback, as root.
@Suite(.serialized) struct VerifierTests {
    let recorder = Recorder()

    func verifier(_ sshd: SSHD, credentials: SSHCredentials? = nil, pins: any HostKeyPinStore = InMemoryHostKeyPinStore(),
                  trust: HostKeyTrust = .firstUse) -> SSHVerifier
    {
        let recorder = self.recorder
        return SSHVerifier(credentials: credentials ?? sshd.credentials(), pins: pins, trust: trust, logger: recorder.logger,
                           alert: { recorder.alert($0) })
    }

    /// Issue 20: with `attested` trust an instance is not contacted until a pin exists (its agent
    /// reported its key), so whoever answers first at its address is never pinned; the pin is
    /// looked up again at every attempt, and a report that arrives mid-wait is used at once.
    @Test func withAttestedTrustNothingIsContactedBeforeThePinAndThePinIsReadAtEachAttempt() async throws {
        let sshd = try SSHD()
        let volume = try TmpfsVolume(markerID: "vol-42")
        let pins = InMemoryHostKeyPinStore()
        let target = try sshd.target(instanceID: 4343, volume: VolumeSpec(path: volume.path, expectedID: "vol-42"))
        let verifier = verifier(sshd, pins: pins, trust: .attested)

        let unattested = try await verifier.verify(target)
        #expect(unattested.failure?.reason == .hostKeyUnattested)
        #expect(unattested.failure?.detail == "no host key is pinned for instance 4343 and its agent has reported none over its authenticated session; not connecting")
        #expect(unattested.timings.connect == nil && unattested.hostKeyFingerprint == nil)
        #expect(await pins.pinnedFingerprint(for: 4343) == nil, "nothing pinned from a contact")
        #expect(!sshd.log().contains("Connection from"), "sshd never saw us: \(sshd.log().suffix(500))")

        async let readiness = verifier.waitUntilReady(target, policy: ReadinessPolicy(deadline: .seconds(20), pollInterval: .milliseconds(10)))
        try await Task.sleep(for: .milliseconds(200))
        let fingerprint = try sshd.hostKeyFingerprint()
        _ = await pins.pinIfAbsent(fingerprint, for: 4343)
        let ready = try await readiness
        #expect(ready.isVerified, "\(String(describing: ready.failure))")
        #expect(ready.attempts > 3, "turned away while unattested: \(ready.attempts)")
        #expect(ready.last.hostKeyFingerprint == fingerprint && !ready.last.pinnedOnThisContact)
        withExtendedLifetime((sshd, volume)) {}
    }

    /// A peer that streams output faster than we read it never lets a read answer "again": the
    /// read loop checks its deadline on every pass, so the verification ends at its deadline
    /// (issue 20).
    @Test func aCommandThatStreamsForeverEndsAtTheDeadline() async throws {
        let sshd = try SSHD(forceCommand: "cat /dev/zero")
        let volume = try TmpfsVolume(markerID: "vol-42")
        let target = try sshd.target(volume: VolumeSpec(path: volume.path, expectedID: "vol-42"))
        let started = monotonicNow()
        let result = try await verifier(sshd).verify(target, timeout: 1_000 * ms)
        let took = monotonicNow() - started
        #expect(result.failure?.reason == .timeout && result.failure?.phase == .command, "\(String(describing: result.failure))")
        #expect(took < 3_000 * ms, "held \(Double(took) / 1e6) ms for a 1 s deadline")
        withExtendedLifetime((sshd, volume)) {}
    }

    /// The pin is an ed25519 key's; an sshd that also holds ECDSA must present the ed25519 one
    /// (libssh2's default order prefers ECDSA, which no agent vouched for).
    @Test func anSSHDWithSeveralHostKeysPresentsItsEd25519Key() async throws {
        let sshd = try SSHD(ecdsaHostKeyFirst: true)
        let volume = try TmpfsVolume(markerID: "vol-42")
        let target = try sshd.target(volume: VolumeSpec(path: volume.path, expectedID: "vol-42"))
        let result = try await verifier(sshd).verify(target)
        #expect(result.isVerified, "\(String(describing: result.failure)) \(sshd.log().suffix(1_000))")
        #expect(result.hostKeyFingerprint == (try sshd.hostKeyFingerprint()))
        withExtendedLifetime((sshd, volume)) {}
    }

    @Test func aHealthyVolumeVerifiesAndTheHostKeyIsPinnedOnFirstContact() async throws {
        let sshd = try SSHD()
        let volume = try TmpfsVolume(markerID: "vol-42")
        let pins = InMemoryHostKeyPinStore()
        let verifier = verifier(sshd, pins: pins)
        let target = try sshd.target(instanceID: 4242, volume: VolumeSpec(path: volume.path, expectedID: "vol-42"))

        let first = try await verifier.verify(target)
        #expect(first.isVerified, "\(String(describing: first.failure)) \(sshd.log().suffix(1_000))")
        let fingerprint = try sshd.hostKeyFingerprint()
        #expect(first.hostKeyFingerprint == fingerprint)
        #expect(first.pinnedOnThisContact)
        #expect(await pins.pinnedFingerprint(for: 4242) == fingerprint)
        #expect(first.volume?.marker == .present("vol-42"))
        #expect(first.volume?.freeBytes.map { $0 > 7 << 20 && $0 <= 8 << 20 } == true)
        for phase in SSHPhase.allCases { #expect(first.timings[phase] != nil, "\(phase)") }
        #expect(first.timings.total >= SSHPhase.allCases.compactMap { first.timings[$0] }.reduce(0, +))
        #expect(try FileManager.default.contentsOfDirectory(atPath: volume.path) == [VolumeSpec.defaultMarkerName])
        #expect(recorder.entries.contains { $0.level == .notice && $0.message == "pinned host key on first contact" })

        let second = try await verifier.verify(target)
        #expect(second.isVerified && !second.pinnedOnThisContact)
        print("verify on loopback: \(Self.describe(first.timings)); again, pinned: \(Self.describe(second.timings))")
        withExtendedLifetime((sshd, volume)) {}
    }

    @Test func keysFromMemoryAndWithAPassphrase() async throws {
        let sshd = try SSHD()
        let volume = try TmpfsVolume(markerID: "vol-42")
        let locked = try sshd.makeKey("locked", passphrase: "correct horse")
        try sshd.authorize(locked)
        let target = try sshd.target(volume: VolumeSpec(path: volume.path, expectedID: "vol-42"))
        let keyBytes = try Array(Data(contentsOf: URL(fileURLWithPath: sshd.clientKeyPath)))
        let lockedBytes = try Array(Data(contentsOf: URL(fileURLWithPath: locked)))

        for credentials in [
            SSHCredentials(privateKey: .memory(keyBytes)),
            SSHCredentials(privateKey: .file(path: locked), passphrase: "correct horse"),
            SSHCredentials(privateKey: .memory(lockedBytes), passphrase: "correct horse"),
        ] {
            let result = try await verifier(sshd, credentials: credentials).verify(target)
            #expect(result.isVerified, "\(String(describing: result.failure))")
        }
        for credentials in [
            SSHCredentials(privateKey: .file(path: locked), passphrase: "wrong"),
            SSHCredentials(privateKey: .memory(lockedBytes)),
            SSHCredentials(privateKey: .file(path: sshd.directory + "/absent")),
            SSHCredentials(privateKey: .memory(Array("not a key".utf8))),
        ] {
            let result = try await verifier(sshd, credentials: credentials).verify(target)
            #expect(result.failure?.reason == .keyUnusable, "\(String(describing: result.failure))")
            #expect(result.failure?.phase == .auth)
        }
        withExtendedLifetime((sshd, volume)) {}
    }

    @Test func listeningButRefusingOurKey() async throws {
        let sshd = try SSHD()
        let stranger = try sshd.makeKey("stranger")
        let target = try sshd.target(volume: VolumeSpec(path: "/data", expectedID: "vol-42"))
        let result = try await verifier(sshd, credentials: SSHCredentials(privateKey: .file(path: stranger))).verify(target)
        #expect(result.failure?.reason == .authRefused, "\(String(describing: result.failure))")
        #expect(result.failure?.phase == .auth)
        #expect(result.timings.auth != nil && result.timings.command == nil)
        let fingerprint = try sshd.hostKeyFingerprint()
        #expect(result.hostKeyFingerprint == fingerprint)
        // The first contact failed: nothing is pinned.
        #expect(!result.pinnedOnThisContact)
    }

    @Test func aWrongHostKeyForThePinIsAHardFailureWithAnAlert() async throws {
        let sshd = try SSHD()
        let volume = try TmpfsVolume(markerID: "vol-42")
        let other = try SSHD.fingerprint(ofKey: try sshd.makeKey("impostor") + ".pub")
        let pins = InMemoryHostKeyPinStore([4242: other])
        let target = try sshd.target(instanceID: 4242, volume: VolumeSpec(path: volume.path, expectedID: "vol-42"))
        let presented = try sshd.hostKeyFingerprint()

        let result = try await verifier(sshd, pins: pins).verify(target)
        #expect(result.failure?.reason == .hostKeyMismatch)
        #expect(result.failure?.detail == "host key \(presented) does not match the key pinned for instance 4242 (\(other)); not authenticating")
        #expect(result.timings.handshake != nil && result.timings.auth == nil, "no authentication to a host that fails its pin")
        #expect(await pins.pinnedFingerprint(for: 4242) == other, "the pin is never replaced")
        #expect(recorder.alerts == [.hostKeyMismatch(instanceID: 4242, host: "127.0.0.1", port: sshd.port, pinned: other,
                                                      presented: presented)])
        #expect(recorder.entries.contains { $0.level == .critical && $0.metadata["ssh.presented"] == "\(presented)" })

        // Readiness polling stops at once on a mismatch rather than retrying until its deadline.
        let readiness = try await verifier(sshd, pins: pins).waitUntilReady(target, policy: ReadinessPolicy(deadline: .milliseconds(10_000)))
        #expect(readiness.failure?.reason == .hostKeyMismatch && readiness.attempts == 1)
        withExtendedLifetime((sshd, volume)) {}
    }

    @Test func aMissingVolumePathOrAPlainDirectoryIsNotMounted() async throws {
        let sshd = try SSHD()
        let directory = try PlainDirectory()
        let verifier = verifier(sshd)
        let missing = try await verifier.verify(try sshd.target(volume: VolumeSpec(path: directory.path + "/absent", expectedID: "v")))
        #expect(missing.failure == SSHFailure(.notMounted, "\(directory.path)/absent does not exist"))
        let plain = try await verifier.verify(try sshd.target(volume: VolumeSpec(path: directory.path, expectedID: "v")))
        #expect(plain.failure == SSHFailure(.notMounted, "\(directory.path) is not a mount point"))
        #expect(plain.volume?.writable == nil)
        #expect(try FileManager.default.contentsOfDirectory(atPath: directory.path).isEmpty)
        withExtendedLifetime(sshd) {}
    }

    @Test func aVolumeWithTheWrongIDIsTheWrongVolumeAndOneWithoutItsMarkerHasLostIt() async throws {
        let sshd = try SSHD()
        let verifier = verifier(sshd)
        let other = try TmpfsVolume(markerID: "vol-7")
        let wrong = try await verifier.verify(try sshd.target(volume: VolumeSpec(path: other.path, expectedID: "vol-42")))
        #expect(wrong.failure == SSHFailure(.wrongVolume, "volume id vol-7 does not match the expected vol-42"))
        let empty = try TmpfsVolume(markerID: nil)
        let blank = try await verifier.verify(try sshd.target(volume: VolumeSpec(path: empty.path, expectedID: "vol-42")))
        #expect(blank.failure?.reason == .markerMissing)
        #expect(blank.failure?.detail.hasPrefix("no volume-id marker at \(empty.path)/.warmpool-volume-id") == true)
        withExtendedLifetime((sshd, other, empty)) {}
    }

    /// A promotion writes the pool's epoch on the volume, which every agent reads: atomically,
    /// never lowering it, never through a symlink, and only on the volume the marker proves.
    @Test func theEpochIsWrittenOnTheProvenVolumeAndNeverLowered() async throws {
        let sshd = try SSHD()
        let verifier = verifier(sshd)
        let volume = try TmpfsVolume(markerID: "42")
        let first = try await verifier.verify(try sshd.target(volume: VolumeSpec(path: volume.path, expectedID: "42", writeEpoch: 3)))
        #expect(first.failure == nil, "\(String(describing: first.failure))")
        #expect(first.volume?.epochWritten == true && first.volume?.epochFound == 0)
        #expect(try String(contentsOfFile: volume.path + "/.warmpool/epoch", encoding: .utf8) == "3\n")
        #expect(try FileManager.default.contentsOfDirectory(atPath: volume.path + "/.warmpool") == ["epoch"], "no temporary file is left")

        let same = try await verifier.verify(try sshd.target(volume: VolumeSpec(path: volume.path, expectedID: "42", writeEpoch: 3)))
        #expect(same.failure == nil && same.volume?.epochFound == 3)
        let older = try await verifier.verify(try sshd.target(volume: VolumeSpec(path: volume.path, expectedID: "42", writeEpoch: 2)))
        #expect(older.failure == SSHFailure(.wrongVolume, "the volume is at epoch 3, newer than 2: another promotion wrote it"))
        #expect(try String(contentsOfFile: volume.path + "/.warmpool/epoch", encoding: .utf8) == "3\n", "never lowered")

        let other = try TmpfsVolume(markerID: "7")
        let foreign = try await verifier.verify(try sshd.target(volume: VolumeSpec(path: other.path, expectedID: "42", writeEpoch: 9)))
        #expect(foreign.failure?.reason == .wrongVolume)
        #expect(!FileManager.default.fileExists(atPath: other.path + "/.warmpool"), "nothing written on another pool's volume")

        // The workload owns the volume: a symlink planted at .warmpool is not followed.
        let planted = try TmpfsVolume(markerID: "42")
        let elsewhere = FileManager.default.temporaryDirectory.appendingPathComponent("warmpool-elsewhere-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: elsewhere, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: elsewhere) }
        try FileManager.default.createSymbolicLink(atPath: planted.path + "/.warmpool", withDestinationPath: elsewhere.path)
        let refused = try await verifier.verify(try sshd.target(volume: VolumeSpec(path: planted.path, expectedID: "42", writeEpoch: 4)))
        #expect(refused.failure?.reason == .readOnly)
        #expect(try FileManager.default.contentsOfDirectory(atPath: elsewhere.path).isEmpty)
        withExtendedLifetime((sshd, volume, other, planted)) {}
    }

    /// The marketplace writes nothing on a volume: the controller marks a fresh one through its
    /// first primary. Written once, never over another id, never on a path that is not a mount.
    @Test func establishingTheMarkerWritesItOnceAndOnlyOnAMountedVolumeWithoutOne() async throws {
        let sshd = try SSHD()
        let verifier = verifier(sshd)
        let fresh = try TmpfsVolume(markerID: nil)
        let establish = try VolumeSpec(path: fresh.path, expectedID: "42", establishMarker: true)
        let first = try await verifier.verify(try sshd.target(volume: establish))
        #expect(first.failure == nil, "\(String(describing: first.failure))")
        #expect(first.volume?.markerWritten == true)
        #expect(try String(contentsOfFile: fresh.path + "/.warmpool-volume-id", encoding: .utf8) == "42\n")
        #expect(try FileManager.default.contentsOfDirectory(atPath: fresh.path) == [".warmpool-volume-id"], "no temporary file is left")
        let again = try await verifier.verify(try sshd.target(volume: establish))
        #expect(again.failure == nil && again.volume?.markerWritten == nil, "a marker that is there is only read")
        let checked = try await verifier.verify(try sshd.target(volume: VolumeSpec(path: fresh.path, expectedID: "42")))
        #expect(checked.failure == nil)

        let other = try TmpfsVolume(markerID: "7")
        let foreign = try await verifier.verify(
            try sshd.target(volume: VolumeSpec(path: other.path, expectedID: "42", establishMarker: true)))
        #expect(foreign.failure == SSHFailure(.wrongVolume, "volume id 7 does not match the expected 42"))
        #expect(try String(contentsOfFile: other.path + "/.warmpool-volume-id", encoding: .utf8) == "7\n", "another id is never overwritten")

        let plain = FileManager.default.temporaryDirectory.appendingPathComponent("warmpool-unmounted-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: plain, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: plain) }
        let unmounted = try await verifier.verify(
            try sshd.target(volume: VolumeSpec(path: plain.path, expectedID: "42", establishMarker: true)))
        #expect(unmounted.failure?.reason == .notMounted)
        #expect(try FileManager.default.contentsOfDirectory(atPath: plain.path).isEmpty, "nothing is written on a path that is not a mount")

        let readOnly = try TmpfsVolume(markerID: nil, readOnly: true)
        let locked = try await verifier.verify(
            try sshd.target(volume: VolumeSpec(path: readOnly.path, expectedID: "42", establishMarker: true)))
        #expect(locked.failure?.reason == .markerMissing)
        #expect(locked.failure?.detail.hasPrefix("cannot write the volume-id marker at \(readOnly.path)/.warmpool-volume-id") == true)
        withExtendedLifetime((sshd, fresh, other, readOnly)) {}
    }

    @Test func aReadOnlyVolume() async throws {
        let sshd = try SSHD()
        let volume = try TmpfsVolume(markerID: "vol-42", readOnly: true)
        let result = try await verifier(sshd).verify(try sshd.target(volume: VolumeSpec(path: volume.path, expectedID: "vol-42")))
        #expect(result.failure?.reason == .readOnly)
        #expect(result.failure?.detail.contains("Read-only file system") == true, "\(String(describing: result.failure))")
        withExtendedLifetime((sshd, volume)) {}
    }

    /// Validation refuses hostile paths before anything is sent. Then, with validation bypassed,
    /// the same strings go through the real login shell quoted as the verifier quotes them, and
    /// arrive as data: nothing runs.
    @Test func aHostileVolumePathCannotInjectCommands() async throws {
        let sshd = try SSHD()
        let canary = "/tmp/warmpool-pwned"
        unlink(canary)
        for path in VolumeSpecValidationTests.hostilePaths {
            #expect(throws: SSHInputError.self) { try VolumeSpec(path: path, expectedID: "vol-42") }
        }
        let hostile = VolumeSpecValidationTests.hostilePathsSafeToRun
        let session = try Self.loggedIn(sshd)
        defer { session.close() }
        for path in hostile {
            let nonce = "00000000000000ff"
            let command = "/bin/sh -c " + VerificationCommand.shellQuote(VerificationCommand.script) + " warmpool-verify "
                + VerificationCommand.shellQuote(path) + " " + VerificationCommand.shellQuote("$(touch \(canary))") + " "
                + VerificationCommand.shellQuote(nonce) + "; printf \"arg=%s\\n\" " + VerificationCommand.shellQuote(path)
            let output = try session.run(command, deadline: monotonicNow() + 5_000 * ms).get()
            let text = String(decoding: output.stdout, as: UTF8.self)
            #expect(text.hasSuffix("arg=\(path)\n"), "the path must arrive byte for byte: \(text)")
            #expect(!FileManager.default.fileExists(atPath: canary), "\(path) executed something")
        }
        withExtendedLifetime(sshd) {}
    }

    /// A session logged in with the fixture's key (for running raw commands).
    static func loggedIn(_ sshd: SSHD) throws -> SSHSession {
        let deadline = monotonicNow() + 5_000 * ms
        let session = try SSHSession.connect(host: "127.0.0.1", port: sshd.port, deadline: deadline).get()
        _ = try session.handshake(deadline: deadline).get()
        try session.authenticate(username: "root", credentials: sshd.credentials(), deadline: deadline).get()
        return session
    }

    /// The blocking libssh2 work goes to the pool the verifier was given, never inline: with that
    /// pool shut down, a verification cannot run at all.
    @Test func theWorkRunsOnTheGivenThreadPool() async throws {
        let sshd = try SSHD(start: false)
        let pool = NIOThreadPool(numberOfThreads: 1)
        pool.start()
        let verifier = SSHVerifier(credentials: sshd.credentials(), pins: InMemoryHostKeyPinStore(), threadPool: pool,
                                   logger: recorder.logger)
        let target = try sshd.target(volume: VolumeSpec(path: "/data", expectedID: "v"))
        let result = try await verifier.verify(target)
        #expect(result.failure?.reason == .refused)
        try await pool.shutdownGracefully()
        // (NIO answers work submitted to a stopped pool with a CancellationError.)
        await #expect(throws: (any Error).self) { try await verifier.verify(target) }
    }

    @Test func nothingListeningIsRefusedAtOnce() async throws {
        let sshd = try SSHD(start: false)
        let result = try await verifier(sshd).verify(try sshd.target(volume: VolumeSpec(path: "/data", expectedID: "v")))
        #expect(result.failure?.reason == .refused && result.failure?.phase == .connect)
        #expect(result.timings.connect != nil && result.timings.handshake == nil)
        #expect(result.timings.total < 100 * ms)
    }

    @Test func aPeerThatClosesOrStaysSilentSendsNoBanner() async throws {
        let sshd = try SSHD(start: false)
        let volume = try VolumeSpec(path: "/data", expectedID: "v")
        let closing = try SilentServer(closeAtOnce: true)
        let closed = try await verifier(sshd).verify(try SSHTarget(instanceID: 1, host: "127.0.0.1", port: closing.port, volume: volume))
        #expect(closed.failure?.reason == .noBanner && closed.failure?.phase == .handshake, "\(String(describing: closed.failure))")

        let silent = try SilentServer(closeAtOnce: false)
        let started = monotonicNow()
        let quiet = try await verifier(sshd).verify(try SSHTarget(instanceID: 1, host: "127.0.0.1", port: silent.port, volume: volume),
                                                    timeout: 300 * ms)
        let took = monotonicNow() - started
        #expect(quiet.failure?.reason == .noBanner, "\(String(describing: quiet.failure))")
        #expect(took >= 290 * ms && took < 2_000 * ms, "the deadline holds: \(took / ms) ms")
        withExtendedLifetime((closing, silent)) {}
    }

    @Test func readinessGivesUpAtItsDeadline() async throws {
        let sshd = try SSHD(start: false)
        let target = try sshd.target(volume: VolumeSpec(path: "/data", expectedID: "v"))
        let started = monotonicNow()
        let result = try await verifier(sshd).waitUntilReady(target, policy: ReadinessPolicy(deadline: .milliseconds(300), pollInterval: .milliseconds(10)))
        let took = monotonicNow() - started
        #expect(result.failure?.reason == .deadlineExceeded)
        #expect(result.failure?.detail.hasSuffix("last: refused: connection refused") == true, "\(String(describing: result.failure))")
        #expect(result.attempts >= 5 && result.attempts <= 31, "polled every 10 ms: \(result.attempts)")
        #expect(took >= 290 * ms && took < 2_000 * ms)
    }

    @Test func readinessWaitsForAVolumeMountedAfterSSHComesUp() async throws {
        let sshd = try SSHD()
        let directory = try PlainDirectory()
        let target = try sshd.target(volume: VolumeSpec(path: directory.path, expectedID: "vol-42"))
        async let readiness = verifier(sshd).waitUntilReady(target, policy: ReadinessPolicy(deadline: .milliseconds(20_000)))
        // Mount once an attempt has been turned away for it.
        let waitUntil = monotonicNow() + 10_000 * ms
        while !recorder.entries.contains(where: { $0.message == "not ready yet" && $0.metadata["ssh.reason"] == "not_mounted" }),
            monotonicNow() < waitUntil
        {
            try await Task.sleep(for: .milliseconds(5))
        }
        #expect(mount("tmpfs", directory.path, "tmpfs", 0, "size=4m") == 0)
        defer { umount2(directory.path, Int32(MNT_DETACH)) }
        try "vol-42\n".write(toFile: directory.path + "/" + VolumeSpec.defaultMarkerName, atomically: false, encoding: .utf8)
        let result = try await readiness
        #expect(result.isVerified, "\(String(describing: result.failure)) last: \(String(describing: result.last.failure))")
        #expect(result.attempts >= 2)
        withExtendedLifetime(sshd) {}
    }

    /// sshd is not running when polling starts and starts at a random moment; the verdict must
    /// follow its first `listen()` closely. The bench (`Scripts/bench ssh`) holds this to 150 ms
    /// at p99 in a quiet process; here other suites share the machine, so the bound is looser.
    @Test func sshdStartingLateIsVerifiedSoonAfterItListens() async throws {
        let sshd = try SSHD(start: false)
        let volume = try TmpfsVolume(markerID: "vol-42")
        let target = try sshd.target(volume: VolumeSpec(path: volume.path, expectedID: "vol-42"))
        let verifier = verifier(sshd)
        async let readiness = verifier.waitUntilReady(target, policy: ReadinessPolicy(deadline: .milliseconds(30_000)))
        try await Task.sleep(for: .milliseconds(Int.random(in: 100...400)))
        let listeningAt = try await sshd.startWatchingListen()
        let result = try await readiness
        #expect(result.isVerified, "\(String(describing: result.failure)) \(sshd.log().suffix(1_000))")
        #expect(result.attempts > 3, "it was refused while sshd was down")
        let lag = result.last.verdictAtNanoseconds - listeningAt
        print("readiness lag (listen -> verdict): \(Double(lag) / 1e6) ms after \(result.attempts) attempts; last attempt \(Self.describe(result.last.timings))")
        #expect(lag > 0 && lag < 1_000 * ms, "lag \(Double(lag) / 1e6) ms")
        withExtendedLifetime((sshd, volume)) {}
    }

    static func describe(_ timings: SSHTimings) -> String {
        let parts = SSHPhase.allCases.map { phase in "\(phase.rawValue) \(timings[phase].map { String(format: "%.1f", Double($0) / 1e6) } ?? "-")" }
        return parts.joined(separator: ", ") + String(format: ", total %.1f ms", Double(timings.total) / 1e6)
    }
}

/// Accepts TCP connections and either closes each at once or holds it silently.
final class SilentServer {
    let fd: Int32
    let port: Int
    private let held = HeldBox()

    init(closeAtOnce: Bool) throws {
        let listener = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var one: Int32 = 1
        setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(listener, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard bound == 0, listen(listener, 16) == 0 else {
            close(listener)
            throw HarnessError("listen: errno \(errno)")
        }
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(listener, $0, &length) }
        }
        fd = listener
        port = Int(UInt16(bigEndian: address.sin_port))
        let box = held
        Thread {
            while true {
                let client = accept(listener, nil, nil)
                if client < 0 { return }
                if closeAtOnce { close(client) } else { box.add(client) }
            }
        }.start()
    }

    deinit {
        shutdown(fd, Int32(SHUT_RDWR))
        close(fd)
        held.closeAll()
    }

    final class HeldBox: @unchecked Sendable {
        private let lock = NSLock()
        private var fds: [Int32] = []
        func add(_ fd: Int32) { lock.withLock { fds.append(fd) } }
        func closeAll() {
            lock.withLock {
                fds.forEach { close($0) }
                fds = []
            }
        }
    }
}
