import Foundation
@_exported import WarmpoolTestSupport
import Testing
@testable import WarmpoolSSH
import WarmpoolModel

#if canImport(Glibc)
import Glibc
#endif

/// A real OpenSSH server on loopback for one test: its own config, an ed25519 host key made
/// with ssh-keygen in a temporary directory, an authorized_keys file with the client key, and a
/// free high port. Runs as root (sshd needs it for privilege separation), as CI does.
final class SSHD: @unchecked Sendable {
    let directory: String
    let port: Int
    let configPath: String
    let hostKeyPath: String
    let clientKeyPath: String
    /// sshd's pid while it runs. Not a Foundation `Process`: that learns of a child's exit when a
    /// descriptor the child inherited closes, then blocks in waitpid; sshd closes inherited
    /// descriptors at startup, which would stall every other `Process` in the test run.
    private var pid: pid_t?

    static let sshdPath = "/usr/sbin/sshd"

    /// `ecdsaHostKeyFirst`: sshd also holds an ECDSA host key, listed before the ed25519 one
    /// (libssh2's default order would pick it).
    /// `forceCommand`: what sshd runs for every exec request, whatever was asked.
    init(start: Bool = true, ecdsaHostKeyFirst: Bool = false, forceCommand: String? = nil) throws {
        guard getuid() == 0 else { throw HarnessError("sshd tests need root (CI runs as root)") }
        guard access(Self.sshdPath, X_OK) == 0 else { throw HarnessError("\(Self.sshdPath) is missing: run Scripts/setup") }
        directory = FileManager.default.temporaryDirectory.appendingPathComponent("warmpool-sshd-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        // sshd refuses to start without its privilege-separation directory.
        try FileManager.default.createDirectory(atPath: "/run/sshd", withIntermediateDirectories: true)
        port = try Self.freePort()
        configPath = directory + "/sshd_config"
        hostKeyPath = directory + "/host_ed25519"
        clientKeyPath = directory + "/client_ed25519"
        try Self.keygen(hostKeyPath)
        try Self.keygen(clientKeyPath)
        try authorize(clientKeyPath)
        var otherHostKeys = ""
        if ecdsaHostKeyFirst {
            try Command.runChecked("/usr/bin/ssh-keygen", ["-q", "-t", "ecdsa", "-N", "", "-f", directory + "/host_ecdsa"])
            otherHostKeys = "HostKey \(directory)/host_ecdsa\n"
        }
        let forced = forceCommand.map { "ForceCommand \($0)\n" } ?? ""
        try """
            Port \(port)
            ListenAddress 127.0.0.1
            \(otherHostKeys)HostKey \(hostKeyPath)
            PidFile \(directory)/sshd.pid
            AuthorizedKeysFile \(directory)/authorized_keys
            PermitRootLogin prohibit-password
            PubkeyAuthentication yes
            PasswordAuthentication no
            KbdInteractiveAuthentication no
            UsePAM no
            StrictModes no
            UseDNS no
            PrintMotd no
            MaxStartups 1000
            LogLevel VERBOSE
            # bash sources ~/.bashrc for every command sshd runs; this machine's root .bashrc runs
            # `pyenv init` (~230 ms). A fresh instance's does not: measure sshd and us, not that.
            SetEnv HOME=\(directory)
            \(forced)
            """.write(toFile: configPath, atomically: true, encoding: .utf8)
        if start { try self.start() }
    }

    deinit {
        stop()
        try? FileManager.default.removeItem(atPath: directory)
    }

    var logPath: String { directory + "/sshd.log" }
    func log() -> String { (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? "" }

    /// Starts sshd and returns once it listens.
    func start() throws {
        try spawn()
        let deadline = Date().addingTimeInterval(10)
        while !Self.isListening(port: port) {
            guard Date() < deadline, isRunning else {
                throw HarnessError("sshd did not start listening on \(port): \(log().suffix(2_000))")
            }
            usleep(1_000)
        }
    }

    /// Starts sshd and reports, from a dedicated thread, the CLOCK_MONOTONIC time at which its
    /// socket first showed up in LISTEN state (polled every 100 µs).
    func startWatchingListen() async throws -> Int64 {
        try spawn()
        let port = self.port
        return try await withCheckedThrowingContinuation { continuation in
            let thread = Thread {
                let deadline = monotonicNow() + 10_000_000_000
                while monotonicNow() < deadline {
                    if SSHD.isListening(port: port) {
                        continuation.resume(returning: monotonicNow())
                        return
                    }
                    usleep(100)
                }
                continuation.resume(throwing: HarnessError("sshd did not listen within 10 s"))
            }
            thread.start()
        }
    }

    private func spawn() throws {
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, logPath, O_WRONLY | O_CREAT | O_APPEND, 0o644)
        posix_spawn_file_actions_adddup2(&actions, 1, 2)
        let arguments = [Self.sshdPath, "-D", "-e", "-f", configPath]
        let argv = arguments.map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        var child: pid_t = 0
        let status = posix_spawn(&child, Self.sshdPath, &actions, nil, argv, environ)
        guard status == 0 else { throw HarnessError("posix_spawn sshd: \(status)") }
        pid = child
    }

    var isRunning: Bool {
        guard let pid else { return false }
        return waitpid(pid, nil, WNOHANG) == 0
    }

    func stop() {
        guard let pid else { return }
        kill(pid, SIGTERM)
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        self.pid = nil
    }

    /// The host key's fingerprint as `ssh-keygen -l` prints it.
    func hostKeyFingerprint() throws -> String {
        try Self.fingerprint(ofKey: hostKeyPath + ".pub")
    }

    /// Adds a key's public half to authorized_keys.
    func authorize(_ keyPath: String) throws {
        let line = try String(contentsOfFile: keyPath + ".pub", encoding: .utf8)
        let path = directory + "/authorized_keys"
        let existing = (try? String(contentsOfFile: path, encoding: .utf8)) ?? ""
        try (existing + line).write(toFile: path, atomically: true, encoding: .utf8)
    }

    /// A fresh ed25519 key in this fixture's directory.
    func makeKey(_ name: String, passphrase: String = "") throws -> String {
        let path = directory + "/" + name
        try Self.keygen(path, passphrase: passphrase)
        return path
    }

    func credentials() -> SSHCredentials { SSHCredentials(privateKey: .file(path: clientKeyPath)) }

    /// A target for this sshd with `volume`.
    func target(instanceID: InstanceID = InstanceID(Int64.random(in: 1...Int64(UInt32.max))), volume: VolumeSpec) throws -> SSHTarget {
        try SSHTarget(instanceID: instanceID, host: "127.0.0.1", port: port, username: "root", volume: volume)
    }

    static func keygen(_ path: String, passphrase: String = "") throws {
        try Command.runChecked("/usr/bin/ssh-keygen", ["-q", "-t", "ed25519", "-N", passphrase, "-C", "warmpool-test", "-f", path])
    }

    static func fingerprint(ofKey publicKeyPath: String) throws -> String {
        let output = try Command.runChecked("/usr/bin/ssh-keygen", ["-l", "-E", "sha256", "-f", publicKeyPath])
        // "256 SHA256:... comment (ED25519)"
        let fields = output.split(separator: " ")
        guard fields.count >= 2 else { throw HarnessError("unexpected ssh-keygen output: \(output)") }
        return String(fields[1])
    }

    static func freePort() throws -> Int { try freeLoopbackPort() }

    /// Whether 127.0.0.1:`port` is in LISTEN state, from /proc/net/tcp (no connection made).
    static func isListening(port: Int) -> Bool {
        tcpSockets().contains { $0.localPort == port && $0.state == 0x0A }
    }

    struct TCPSocketEntry {
        var localPort: Int
        var remotePort: Int
        var state: Int
    }

    /// IPv4 TCP sockets of this network namespace.
    static func tcpSockets() -> [TCPSocketEntry] {
        guard let text = try? String(contentsOfFile: "/proc/net/tcp", encoding: .utf8) else { return [] }
        return text.split(separator: "\n").dropFirst().compactMap { line in
            let fields = line.split(separator: " ")
            guard fields.count > 3,
                let local = fields[1].split(separator: ":").last, let remote = fields[2].split(separator: ":").last,
                let localPort = Int(local, radix: 16), let remotePort = Int(remote, radix: 16), let state = Int(fields[3], radix: 16)
            else { return nil }
            return TCPSocketEntry(localPort: localPort, remotePort: remotePort, state: state)
        }
    }
}

func monotonicNow() -> Int64 { MonotonicClock.now() }

/// Resident set size of this process, from /proc/self/status, in KiB.
func residentKiB() -> Int {
    guard let text = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8) else { return 0 }
    for line in text.split(separator: "\n") where line.hasPrefix("VmRSS:") {
        return Int(line.split(separator: " ")[1]) ?? 0
    }
    return 0
}

/// Open file descriptors of this process.
func openDescriptorCount() -> Int {
    (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd").count) ?? 0
}
