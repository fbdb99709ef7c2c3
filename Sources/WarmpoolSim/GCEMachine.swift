import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// One emulated Compute Engine VM and what makes it real: a network namespace of its own (made at
/// insert, gone at delete) joined to the sim's by a veth pair made at each boot, on which it holds
/// its external address (`natIP`, new at every start, as an ephemeral address is); a mount
/// namespace per boot where its disk is `/data`, its own `/root` and `/etc/ssh`; sshd on port 22;
/// the `startup-script` run as root at every boot, as the guest environment does. Needs root.
struct GCEMachine {
    let name: String
    let serial: Int
    let id: UInt64
    let machineType: String
    let diskSizeGB: Int
    let labels: [String: String]
    let metadata: [(String, String)]
    /// Has a ONE_TO_ONE_NAT access config: an external address while running.
    let external: Bool
    let networkIP: String
    let directory: String
    let created = Date()
    var status = "PROVISIONING"
    var natIP: String?
    var lastStart: Date?
    var lastStop: Date?
    var deleting = false
    /// Bumped by every lifecycle change, so that a boot scheduled before it lands nowhere.
    var generation = 0
    /// The operation (insert or start) that ends when the boot under way lands.
    var bootOperation: String?
    var processes: InstanceProcesses?

    /// `wpgce-<sim pid>-<serial>`: unique on this machine while the sim runs.
    var namespace: String { "wpgce-\(getpid())-\(serial)" }
    /// The sim-side end of the VM's link (at most 15 characters).
    var hostLink: String { "wg\(getpid() % 100_000)x\(serial)" }
    var diskDirectory: String { directory + "/disk" }

    init(name: String, serial: Int, id: UInt64, machineType: String, diskSizeGB: Int, labels: [String: String],
         metadata: [(String, String)], external: Bool, networkIP: String, directory: String, keygen: String) throws
    {
        self.name = name
        self.serial = serial
        self.id = id
        self.machineType = machineType
        self.diskSizeGB = diskSizeGB
        self.labels = labels
        self.metadata = metadata
        self.external = external
        self.networkIP = networkIP
        self.directory = directory
        let files = FileManager.default
        // The disk: empty but for what the guest writes; kept across stop and start.
        for sub in ["disk", "root/.ssh", "etc-ssh"] {
            try files.createDirectory(atPath: directory + "/" + sub, withIntermediateDirectories: true)
        }
        let log = directory + "/setup.log"
        // The image's first boot makes the host key (Debian's openssh-server, Google's guest agent).
        let keygenStatus = try InstanceFiles.run(keygen, ["-q", "-t", "ed25519", "-N", "", "-C", "root@\(name)", "-f", directory + "/etc-ssh/ssh_host_ed25519_key"], log: log)
        guard keygenStatus == 0 else { throw InstanceFiles.SetupError(description: "ssh-keygen exited \(keygenStatus); see \(log)") }
        try Self.launcher.write(toFile: directory + "/launcher.sh", atomically: true, encoding: .utf8)
        try InstanceFiles.sshdConfig(port: 22, address: "0.0.0.0", directory: directory, hostKey: "/etc/ssh/ssh_host_ed25519_key",
                                     authorizedKeys: ".ssh/authorized_keys", extra: ["Subsystem sftp /usr/lib/openssh/sftp-server"])
            .write(toFile: directory + "/sshd_config", atomically: true, encoding: .utf8)
        try Self.ip(["netns", "add", namespace], log: log)
        try Self.ip(["-n", namespace, "link", "set", "lo", "up"], log: log)
    }

    /// The guest: its disk on /data, its /root and /etc/ssh, sshd, then the startup script
    /// (with its shebang if it has one, else bash), as root. Arguments: the VM's directory, sshd.
    static let launcher = """
        #!/bin/sh
        # warmpool-sim GCE VM: the guest environment's part of a boot.
        dir=$1 sshd=$2
        mount --bind "$dir/disk" /data || { echo "launcher: cannot mount the disk on /data" >&2; exit 90; }
        mount --bind "$dir/root" /root || { echo "launcher: cannot bind $dir/root on /root" >&2; exit 91; }
        mount --bind "$dir/etc-ssh" /etc/ssh || { echo "launcher: cannot bind $dir/etc-ssh on /etc/ssh" >&2; exit 92; }
        "$sshd" -D -e -f "$dir/sshd_config" >>"$dir/sshd.log" 2>&1 &
        if [ -s "$dir/startup-script" ]; then
          if [ "$(head -c 2 "$dir/startup-script")" = "#!" ]; then
            "$dir/startup-script" >>"$dir/startup-script.log" 2>&1 &
          else
            /bin/bash "$dir/startup-script" >>"$dir/startup-script.log" 2>&1 &
          fi
        fi
        : >"$dir/launched"
        wait

        """

    /// Link `link` (a /30 of `natPrefix`.0.0/16) up, metadata acted on, the guest started.
    mutating func boot(link: Int, natPrefix: String, sshd: String) throws {
        let log = directory + "/setup.log"
        let base = (link % 16_383) * 4
        let vmAddress = "\(natPrefix).\(base / 256).\(base % 256 + 1)"
        let simAddress = "\(natPrefix).\(base / 256).\(base % 256 + 2)"
        try? Self.ip(["link", "del", hostLink], log: log)
        try Self.ip(["link", "add", hostLink, "type", "veth", "peer", "name", "eth0", "netns", namespace], log: log)
        try Self.ip(["addr", "add", simAddress + "/32", "dev", hostLink], log: log)
        try Self.ip(["link", "set", hostLink, "up"], log: log)
        try Self.ip(["-n", namespace, "addr", "add", vmAddress + "/32", "dev", "eth0"], log: log)
        try Self.ip(["-n", namespace, "link", "set", "eth0", "up"], log: log)
        try Self.ip(["-n", namespace, "route", "add", simAddress + "/32", "dev", "eth0"], log: log)
        try Self.ip(["-n", namespace, "route", "add", "default", "via", simAddress, "dev", "eth0"], log: log)
        try Self.ip(["route", "replace", vmAddress + "/32", "dev", hostLink, "src", simAddress], log: log)
        natIP = external ? vmAddress : nil
        if !external { try? Self.ip(["route", "del", vmAddress + "/32"], log: log) }
        try actOnMetadata()
        try FileManager.default.createDirectory(atPath: "/data", withIntermediateDirectories: true)
        try? FileManager.default.removeItem(atPath: directory + "/launched")
        processes = try InstanceProcesses(
            launcher: directory + "/launcher.sh", arguments: [directory, sshd],
            environment: ["PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root"],
            workingDirectory: "/", logPath: directory + "/launcher.log",
            prefix: ["/bin/ip", "netns", "exec", namespace, "/usr/bin/unshare", "--mount", "--propagation", "private"])
    }

    /// What the guest environment does with the metadata at boot: `ssh-keys` lines
    /// `USER:KEY` become USER's authorized keys (root's only: see Protocol/GCE.md, gaps), and
    /// `startup-script` is the script to run.
    private func actOnMetadata() throws {
        let keys = metadata.filter { $0.0 == "ssh-keys" }.flatMap { $0.1.split(whereSeparator: \.isNewline) }
        let rootKeys = keys.compactMap { line -> String? in
            let parts = line.split(separator: ":", maxSplits: 1)
            guard parts.count == 2, parts[0] == "root" else { return nil }
            return parts[1].trimmingCharacters(in: .whitespaces)
        }
        let authorized = directory + "/root/.ssh/authorized_keys"
        try (rootKeys.map { $0 + "\n" }.joined()).write(toFile: authorized, atomically: true, encoding: .utf8)
        chmod(authorized, 0o600)
        let script = metadata.last { $0.0 == "startup-script" }?.1 ?? ""
        let scriptPath = directory + "/startup-script"
        try script.write(toFile: scriptPath, atomically: true, encoding: .utf8)
        chmod(scriptPath, 0o755)
    }

    /// Every process of the VM ends: the process group and the mount namespace (InstanceProcesses),
    /// then anything left in the network namespace; the link goes, and with it the external address.
    func halt(grace: Duration) async {
        if let processes { await processes.terminate(grace: grace) }
        for pid in Self.pids(in: namespace) { kill(pid, SIGKILL) }
        try? Self.ip(["link", "del", hostLink], log: directory + "/setup.log")
    }

    func removeNamespace() {
        for pid in Self.pids(in: namespace) { kill(pid, SIGKILL) }
        try? Self.ip(["netns", "del", namespace], log: directory + "/setup.log")
    }

    /// The VM is gone, its disk with it (`autoDelete`).
    func destroy() {
        removeNamespace()
        try? FileManager.default.removeItem(atPath: directory)
    }

    // MARK: Tools

    static func ip(_ arguments: [String], log: String) throws {
        let status = try InstanceFiles.run("/bin/ip", arguments, log: log)
        guard status == 0 else { throw InstanceFiles.SetupError(description: "ip \(arguments.joined(separator: " ")) exited \(status); see \(log)") }
    }

    /// The processes whose network namespace is `namespace` (what `ip netns pids` prints).
    static func pids(in namespace: String) -> [pid_t] {
        guard let target = try? FileManager.default.attributesOfItem(atPath: "/run/netns/" + namespace)[.systemFileNumber] as? UInt64 else { return [] }
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
        return entries.compactMap { entry in
            guard let pid = pid_t(entry), pid != getpid(),
                let link = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(entry)/ns/net"),
                link == "net:[\(target)]"
            else { return nil }
            return pid
        }
    }
}
