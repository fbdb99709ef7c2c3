import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// What an instance's directory holds: its own /etc/ssh (`etc-ssh`, with the ed25519 host key
/// made once at create, so the key a controller pins survives stop and start, as a real
/// instance's does), its sshd_config, the launcher script, the onstart script and the logs.
enum InstanceFiles {
    struct SetupError: Error, CustomStringConvertible {
        var description: String
    }

    /// Written by the launcher into the instance directory once it has started sshd and onstart.
    static let launchedMarker = "launched"

    /// The instance's "container" entrypoint. Arguments: instance directory, volume directory
    /// ('' for none: nothing is attached), 1 to bind-mount it (in the private namespace unshare
    /// made), mount path, 1 to start sshd, the sshd binary, the host key sshd serves, 1 to give
    /// the instance its own /etc/ssh (in that namespace: a container's /etc/ssh is its own, and
    /// its agent reads sshd's public key there). Its shell variables are not exported: onstart
    /// sees the environment the emulator gave, nothing of the launcher's.
    static let launcher = """
        #!/bin/sh
        # warmpool-sim instance launcher: the instance's "container".
        dir=$1 volume=$2 mount=$3 mount_path=$4 ssh=$5 sshd=$6 host_key=$7 own_etc_ssh=$8
        if [ -n "$volume" ] && [ "$mount" = 1 ]; then
          mount --bind "$volume" "$mount_path" || { echo "launcher: cannot bind $volume on $mount_path" >&2; exit 90; }
        fi
        if [ "$own_etc_ssh" = 1 ]; then
          mkdir -p /etc/ssh && mount --bind "$dir/etc-ssh" /etc/ssh || { echo "launcher: cannot bind $dir/etc-ssh on /etc/ssh" >&2; exit 91; }
        fi
        if [ "$ssh" = 1 ]; then
          "$sshd" -D -e -f "$dir/sshd_config" -h "$host_key" >>"$dir/sshd.log" 2>&1 &
        fi
        if [ -s "$dir/onstart.sh" ]; then
          sh -c "$(cat "$dir/onstart.sh")" >>"$dir/onstart.log" 2>&1 &
        fi
        : >"$dir/\(launchedMarker)"
        wait

        """

    static func create(directory: String, sshPort: Int, address: String, authorizedKeys: String, onstart: String?,
                       keygen: String) throws
    {
        try FileManager.default.createDirectory(atPath: directory + "/home", withIntermediateDirectories: true)
        try launcher.write(toFile: directory + "/launcher.sh", atomically: true, encoding: .utf8)
        try (onstart ?? "").write(toFile: directory + "/onstart.sh", atomically: true, encoding: .utf8)
        // A fresh instance's root has no shell start-up files: keep this machine's out of it.
        try sshdConfig(port: sshPort, address: address, directory: directory, authorizedKeys: authorizedKeys,
                       extra: ["LogLevel VERBOSE", "SetEnv HOME=\(directory)/home"])
            .write(toFile: directory + "/sshd_config", atomically: true, encoding: .utf8)
        try FileManager.default.createDirectory(atPath: directory + "/etc-ssh", withIntermediateDirectories: true)
        try makeHostKey(hostKey(directory), keygen: keygen, log: directory + "/setup.log")
    }

    /// An instance's or a VM's sshd: keys only, root by key, no PAM, no DNS.
    static func sshdConfig(port: Int, address: String, directory: String, hostKey: String? = nil, authorizedKeys: String,
                           extra: [String] = []) -> String {
        ([
            "Port \(port)", "ListenAddress \(address)", "PidFile \(directory)/sshd.pid",
        ] + (hostKey.map { ["HostKey \($0)"] } ?? []) + [
            "AuthorizedKeysFile \(authorizedKeys)", "PermitRootLogin prohibit-password", "PubkeyAuthentication yes",
            "PasswordAuthentication no", "KbdInteractiveAuthentication no", "UsePAM no", "StrictModes no", "UseDNS no", "PrintMotd no",
            "MaxStartups 100",
        ] + extra).joined(separator: "\n") + "\n\n"
    }

    /// The instance's own sshd host key (ed25519), in its /etc/ssh.
    static func hostKey(_ directory: String) -> String { directory + "/etc-ssh/ssh_host_ed25519_key" }

    /// The key an impostor answering at the instance's address serves: made at its first use.
    static func impostorKey(_ directory: String, keygen: String) throws -> String {
        let path = directory + "/impostor_ed25519"
        if !FileManager.default.fileExists(atPath: path) { try makeHostKey(path, keygen: keygen, log: directory + "/setup.log") }
        return path
    }

    private static func makeHostKey(_ path: String, keygen: String, log: String) throws {
        let status = try run(keygen, ["-q", "-t", "ed25519", "-N", "", "-C", "warmpool-sim", "-f", path], log: log)
        guard status == 0 else { throw SetupError(description: "ssh-keygen exited \(status); see \(log)") }
    }

    /// Runs a short tool to completion with output to `log`. Spawned directly (no Foundation
    /// Process, no pipes), so no descriptor of ours can leak into it or hold it up.
    static func run(_ path: String, _ arguments: [String], log: String) throws -> Int32 {
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        InheritedDescriptors.closeAll(in: &actions)
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, log, O_WRONLY | O_CREAT | O_APPEND, 0o644)
        posix_spawn_file_actions_adddup2(&actions, 1, 2)
        let argv = ([path] + arguments).map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        var pid: pid_t = 0
        let spawned = posix_spawn(&pid, path, &actions, nil, argv, environ)
        guard spawned == 0 else { throw SetupError(description: "posix_spawn \(path): \(String(cString: strerror(spawned)))") }
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        return (status & 0x7f) == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
    }

    /// A TCP port free on 127.0.0.1 now (bound to port 0, then released).
    static func freePort() throws -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw SetupError(description: "socket: errno \(errno)") }
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard bound == 0 else { throw SetupError(description: "bind: errno \(errno)") }
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        return Int(UInt16(bigEndian: address.sin_port))
    }

    /// An environment variable name a shell accepts; the CLI's `-p 8080:8080` style keys are not.
    static func isEnvironmentName(_ name: String) -> Bool {
        guard let first = name.utf8.first, first == UInt8(ascii: "_") || isalpha(Int32(first)) != 0 else { return false }
        return name.utf8.allSatisfy { $0 == UInt8(ascii: "_") || isalnum(Int32($0)) != 0 }
    }

    /// A mount path: absolute, plain characters, no `.` or `..` components.
    static func isValidMountPath(_ path: String) -> Bool {
        guard path.hasPrefix("/"), path.count > 1, path.count < 256 else { return false }
        let components = path.split(separator: "/")
        return !components.isEmpty && components.allSatisfy { component in
            component != "." && component != ".."
                && component.utf8.allSatisfy { isalnum(Int32($0)) != 0 || "._-".utf8.contains($0) }
        }
    }
}
