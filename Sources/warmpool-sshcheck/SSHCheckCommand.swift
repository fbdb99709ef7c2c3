import ArgumentParser
import Foundation
import Logging
import WarmpoolModel
import WarmpoolSSH

#if canImport(Glibc)
import Glibc
#endif

/// A thin command line over WarmpoolSSH, for operators and for `Scripts/bench ssh`. Prints one
/// JSON object per line.
@main
struct SSHCheckCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "warmpool-sshcheck",
        abstract: "Verify an instance over SSH: pinned host key, key login, the right volume mounted and writable.",
        version: WarmpoolVersion.current,
        subcommands: [Verify.self, Wait.self])
}

struct TargetOptions: ParsableArguments {
    @Option(help: "Host name or address of the instance's sshd.")
    var host: String = "127.0.0.1"

    @Option(help: "sshd port.")
    var port: Int = 22

    @Option(help: "Remote user.")
    var user: String = "root"

    @Option(help: "ed25519 private key file.")
    var identity: String

    @Option(help: "Name of an environment variable that holds the key's passphrase.")
    var passphraseEnv: String?

    @Flag(help: "Read the key file here and hand libssh2 its bytes instead of the path.")
    var keyInMemory = false

    @Option(help: "Instance id (the provider's, a number): the key the host key is pinned under.")
    var instanceID: Int64

    @Option(help: "Volume mount point on the instance.")
    var volumePath: String = "/data"

    @Option(help: "The id the volume's marker file must hold.")
    var volumeID: String

    @Option(help: "Expected host key, SHA256:... (an in-memory pin).")
    var pin: String?

    @Option(help: "JSON pin file (created when missing); pins on first contact are recorded there.")
    var pinsFile: String?

    @Option(help: "trace, debug, info, notice, warning, error or critical (logs go to stderr).")
    var logLevel: String = "warning"

    func validate() throws {
        guard Logger.Level(rawValue: logLevel) != nil else { throw ValidationError("unknown --log-level \(logLevel)") }
        guard pin == nil || pinsFile == nil else { throw ValidationError("give --pin or --pins-file, not both") }
    }

    func makeTarget() throws -> SSHTarget {
        try SSHTarget(instanceID: InstanceID(instanceID), host: host, port: port, username: user,
                      volume: VolumeSpec(path: volumePath, expectedID: volumeID))
    }

    func makeVerifier() throws -> SSHVerifier {
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = Logger.Level(rawValue: logLevel) ?? .warning
            return handler
        }
        let passphrase = passphraseEnv.flatMap { ProcessInfo.processInfo.environment[$0] }
        let key: SSHCredentials.PrivateKey
        if keyInMemory {
            guard let data = FileManager.default.contents(atPath: identity) else {
                throw ValidationError("cannot read \(identity)")
            }
            key = .memory(Array(data))
        } else {
            key = .file(path: identity)
        }
        let pins: any HostKeyPinStore
        if let pinsFile {
            pins = try FileHostKeyPinStore(path: pinsFile)
        } else {
            pins = InMemoryHostKeyPinStore(pin.map { [InstanceID(instanceID): $0] } ?? [:])
        }
        return SSHVerifier(credentials: SSHCredentials(privateKey: key, passphrase: passphrase), pins: pins,
                           logger: Logger(label: "warmpool.sshcheck"))
    }
}

struct Verify: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Verify once (or --repeat times), one JSON line per result.")

    @OptionGroup var target: TargetOptions

    @Option(help: "Overall timeout per verification, in ms.")
    var timeoutMs: Int = 10_000

    @Option(help: "Verify this many times in a row.")
    var `repeat`: Int = 1

    func run() async throws {
        let verifier = try target.makeVerifier()
        let sshTarget = try target.makeTarget()
        var failures = 0
        for _ in 0..<max(1, self.repeat) {
            let result = try await verifier.verify(sshTarget, timeout: Int64(timeoutMs) * 1_000_000)
            if !result.isVerified { failures += 1 }
            emit(ResultLine(result, returnedAt: monotonicNow()))
        }
        if failures > 0 { throw ExitCode(1) }
    }
}

struct Wait: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Poll until the instance verifies or the deadline passes. Prints a `polling` line first, then the result.")

    @OptionGroup var target: TargetOptions

    @Option(help: "Give up after this many ms.")
    var deadlineMs: Int = 120_000

    @Option(help: "Least time between attempt starts, in ms.")
    var pollIntervalMs: Int = 10

    @Option(help: "First connect timeout, in ms (doubles after each connect timeout, up to 2 s).")
    var connectTimeoutMs: Int = 250

    func run() async throws {
        let verifier = try target.makeVerifier()
        let sshTarget = try target.makeTarget()
        let policy = ReadinessPolicy(deadline: .milliseconds(deadlineMs), pollInterval: .milliseconds(pollIntervalMs),
                                     connectTimeout: .milliseconds(connectTimeoutMs))
        emitRaw(#"{"event":"polling","monotonic_ns":\#(monotonicNow())}"#)
        let readiness = try await verifier.waitUntilReady(sshTarget, policy: policy)
        var line = ResultLine(readiness.last, returnedAt: monotonicNow())
        line.attempts = readiness.attempts
        line.waitedMs = Double(readiness.elapsed) / 1e6
        line.verified = readiness.isVerified
        line.reason = readiness.failure?.reason.rawValue
        line.detail = readiness.failure?.detail
        emit(line)
        if !readiness.isVerified { throw ExitCode(1) }
    }
}

struct ResultLine: Encodable {
    var event = "result"
    var verified: Bool
    var reason: String?
    var phase: String?
    var detail: String?
    var connectMs: Double?
    var handshakeMs: Double?
    var authMs: Double?
    var commandMs: Double?
    var totalMs: Double
    var fingerprint: String?
    var pinnedNow: Bool
    var freeBytes: UInt64?
    var verdictMonotonicNs: Int64
    var returnedMonotonicNs: Int64
    var attempts: Int?
    var waitedMs: Double?

    init(_ result: SSHVerificationResult, returnedAt: Int64) {
        let ms: (Int64?) -> Double? = { $0.map { Double($0) / 1e6 } }
        verified = result.isVerified
        reason = result.failure?.reason.rawValue
        phase = result.failure?.phase?.rawValue
        detail = result.failure?.detail
        connectMs = ms(result.timings.connect)
        handshakeMs = ms(result.timings.handshake)
        authMs = ms(result.timings.auth)
        commandMs = ms(result.timings.command)
        totalMs = Double(result.timings.total) / 1e6
        fingerprint = result.hostKeyFingerprint
        pinnedNow = result.pinnedOnThisContact
        freeBytes = result.volume?.freeBytes
        verdictMonotonicNs = result.verdictAtNanoseconds
        returnedMonotonicNs = returnedAt
    }

    enum CodingKeys: String, CodingKey {
        case event, verified, reason, phase, detail, fingerprint, attempts
        case connectMs = "connect_ms", handshakeMs = "handshake_ms", authMs = "auth_ms", commandMs = "command_ms"
        case totalMs = "total_ms", pinnedNow = "pinned_now", freeBytes = "free_bytes"
        case verdictMonotonicNs = "verdict_monotonic_ns", returnedMonotonicNs = "returned_monotonic_ns", waitedMs = "waited_ms"
    }
}

func emit(_ line: ResultLine) {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
    guard let data = try? encoder.encode(line) else { return }
    emitRaw(String(decoding: data, as: UTF8.self))
}

func emitRaw(_ text: String) {
    print(text)
    fflush(nil)  // all streams; naming `stdout` is not concurrency-safe in Swift 6
}

func monotonicNow() -> Int64 {
    var spec = timespec()
    clock_gettime(CLOCK_MONOTONIC, &spec)
    return Int64(spec.tv_sec) * 1_000_000_000 + Int64(spec.tv_nsec)
}
