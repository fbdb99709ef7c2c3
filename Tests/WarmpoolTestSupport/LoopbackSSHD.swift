import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// A real OpenSSH sshd on loopback standing in for the CPU standby VM: its own config, a fresh
/// ed25519 host key and client key, root login by key only. Runs as root (privilege separation),
/// as CI does. The agent's sync tests and the end-to-end sync tests share it.
public final class LoopbackSSHD: @unchecked Sendable {
    public let directory: String
    public let port: Int
    public let clientKeyPath: String
    public let hostKeyPath: String
    private var pid: pid_t?
    /// A directory made here (no `parent` given) goes with the fixture; a harness's stays with it.
    private let ownsDirectory: Bool

    /// In `parent`/sshd, or in a temporary directory of its own.
    public init(in parent: String? = nil) throws {
        guard getuid() == 0 else { throw HarnessError("sshd tests need root (CI runs as root)") }
        guard access("/usr/sbin/sshd", X_OK) == 0, access("/usr/bin/rsync", X_OK) == 0 else {
            throw HarnessError("sshd or rsync is missing: run Scripts/setup")
        }
        directory = parent.map { $0 + "/sshd" } ?? NSTemporaryDirectory() + "warmpool-sync-sshd-\(UUID().uuidString)"
        ownsDirectory = parent == nil
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: "/run/sshd", withIntermediateDirectories: true)
        port = try freeLoopbackPort()
        hostKeyPath = directory + "/host_ed25519"
        clientKeyPath = directory + "/client_ed25519"
        for key in [hostKeyPath, clientKeyPath] {
            try Command.runChecked("/usr/bin/ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-C", "warmpool-test", "-f", key])
        }
        try FileManager.default.copyItem(atPath: clientKeyPath + ".pub", toPath: directory + "/authorized_keys")
        try """
            Port \(port)
            ListenAddress 127.0.0.1
            HostKey \(hostKeyPath)
            PidFile \(directory)/sshd.pid
            AuthorizedKeysFile \(directory)/authorized_keys
            PermitRootLogin prohibit-password
            PasswordAuthentication no
            KbdInteractiveAuthentication no
            UsePAM no
            StrictModes no
            UseDNS no
            # A fresh VM's root has no pyenv in its .bashrc; this machine's costs ~230 ms a command.
            SetEnv HOME=\(directory)
            """.write(toFile: directory + "/sshd_config", atomically: true, encoding: .utf8)
        // Not a Foundation Process: sshd closes the descriptors it inherits, which stalls Process.
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, directory + "/sshd.log", O_WRONLY | O_CREAT | O_APPEND, 0o644)
        posix_spawn_file_actions_adddup2(&actions, 1, 2)
        let arguments = ["/usr/sbin/sshd", "-D", "-e", "-f", directory + "/sshd_config"]
        let argv = arguments.map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        var child: pid_t = 0
        guard posix_spawn(&child, arguments[0], &actions, nil, argv, environ) == 0 else { throw HarnessError("cannot start sshd") }
        pid = child
        let deadline = Date().addingTimeInterval(10)
        while !Self.listens(port) {
            guard Date() < deadline else { throw HarnessError("sshd did not listen: \(log())") }
            usleep(2_000)
        }
    }

    deinit {
        if let pid {
            kill(pid, SIGTERM)
            while waitpid(pid, nil, 0) < 0 && errno == EINTR {}
        }
        if ownsDirectory { try? FileManager.default.removeItem(atPath: directory) }
    }

    public func log() -> String { (try? String(contentsOfFile: directory + "/sshd.log", encoding: .utf8)) ?? "" }

    /// The host key as a known_hosts entry's key part: `ssh-ed25519 AAAA...`.
    public var hostKeyLine: String {
        let text = (try? String(contentsOfFile: hostKeyPath + ".pub", encoding: .utf8)) ?? ""
        return text.split(separator: " ").prefix(2).joined(separator: " ")
    }

    /// Whether a socket listens on the loopback `port` (state 0A in /proc/net/tcp).
    public static func listens(_ port: Int) -> Bool {
        guard let text = try? String(contentsOfFile: "/proc/net/tcp", encoding: .utf8) else { return false }
        return text.split(separator: "\n").dropFirst().contains { line in
            let fields = line.split(separator: " ")
            return fields.count > 3 && fields[1].hasSuffix(String(format: ":%04X", port)) && fields[3] == "0A"
        }
    }
}
