import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// The processes of one running instance: a launcher shell (the instance's "container") that
/// bind-mounts the volume, starts sshd -D and the onstart script, then waits. It leads its own
/// process group, and when mounts are on it runs in its own mount namespace
/// (`unshare --mount --propagation private`), so the bind mount is seen by the instance alone
/// and vanishes with its last process: nothing is left mounted on the host.
///
/// Owns the launcher's pid: `terminate` kills and reaps everything; `deinit` cannot (a reap can
/// wait), so the simulator always terminates before dropping one.
final class InstanceProcesses: @unchecked Sendable {
    let launcherPID: pid_t
    let inNamespace: Bool
    private(set) var reaped = false

    struct LaunchError: Error, CustomStringConvertible {
        var description: String
    }

    /// Starts `PREFIX... env -C DIR /bin/sh launcher ARGS` with exactly `environment` (nothing of the
    /// emulator's own) in `workingDirectory`, output appended to `logPath`.
    /// The prefix execs its command in the same process (`ip netns exec NS`, `unshare --mount`),
    /// so the launcher keeps the pid spawned here; any `unshare --mount` makes it a mount namespace.
    init(launcher: String, arguments: [String], environment: [String: String], workingDirectory: String, logPath: String,
         prefix: [String] = []) throws
    {
        // `env -C` execs the shell in the working directory (Swift cannot reach glibc's
        // posix_spawn_file_actions_addchdir_np): not the emulator's, which PWD would name.
        let argv = prefix + ["/usr/bin/env", "-C", workingDirectory, "/bin/sh", launcher] + arguments
        let executable = argv[0]
        // `ip netns exec` makes a mount namespace of its own too (it remounts /sys).
        let mountNamespace = !prefix.isEmpty
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        InheritedDescriptors.closeAll(in: &actions)
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, logPath, O_WRONLY | O_CREAT | O_APPEND, 0o644)
        posix_spawn_file_actions_adddup2(&actions, 1, 2)
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        // Own process group (pgid = its pid), so one kill(-pid) reaches every process it starts;
        // default signal dispositions, so a stop reaches a shell that would ignore SIGINT.
        var defaults = sigset_t()
        sigfillset(&defaults)
        posix_spawnattr_setsigdefault(&attributes, &defaults)
        var empty = sigset_t()
        sigemptyset(&empty)
        posix_spawnattr_setsigmask(&attributes, &empty)
        posix_spawnattr_setpgroup(&attributes, 0)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK))
        let cArguments = argv.map { strdup($0) } + [nil]
        let cEnvironment = environment.sorted { $0.key < $1.key }.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer {
            cArguments.forEach { free($0) }
            cEnvironment.forEach { free($0) }
        }
        var pid: pid_t = 0
        let status = posix_spawn(&pid, executable, &actions, &attributes, cArguments, cEnvironment)
        guard status == 0 else { throw LaunchError(description: "posix_spawn \(executable): \(String(cString: strerror(status)))") }
        launcherPID = pid
        inNamespace = mountNamespace
    }

    /// Whether the launcher still runs (reaps it if it exited on its own).
    var isAlive: Bool {
        guard !reaped else { return false }
        var status: Int32 = 0
        let result = waitpid(launcherPID, &status, WNOHANG)
        if result == launcherPID || (result < 0 && errno == ECHILD) {
            reaped = true
            return false
        }
        return true
    }

    /// Sends `signal` to the process group and, in a namespace, to every process in it (sshd's
    /// session children call setsid and so leave the group, but not the namespace).
    func signalAll(_ signal: Int32) {
        let members = namespaceMembers()
        kill(-launcherPID, signal)
        for pid in members where pid != launcherPID { kill(pid, signal) }
    }

    /// SIGTERM, then SIGKILL after `grace` for whatever is left, then reaps the launcher.
    /// SIGCONT follows SIGTERM so that a frozen instance can act on it.
    func terminate(grace: Duration) async {
        guard !reaped else { return }
        // Read the namespace before anything dies: afterwards the launcher's link is gone.
        let members = namespaceMembers()
        for signal in [SIGTERM, SIGCONT] {
            kill(-launcherPID, signal)
            for pid in members where pid != launcherPID { kill(pid, signal) }
        }
        let deadline = ContinuousClock.now + grace
        while ContinuousClock.now < deadline, (isAlive || members.contains(where: Self.exists)) {
            try? await Task.sleep(for: .milliseconds(10))
        }
        kill(-launcherPID, SIGKILL)
        for pid in members where pid != launcherPID { kill(pid, SIGKILL) }
        while isAlive { try? await Task.sleep(for: .milliseconds(5)) }
    }

    /// SIGKILL to everything at once, as a crash would; reaps the launcher.
    func crash() async {
        guard !reaped else { return }
        signalAll(SIGKILL)
        while isAlive { try? await Task.sleep(for: .milliseconds(5)) }
    }

    /// Pids whose mount namespace is the launcher's, when that differs from ours.
    private func namespaceMembers() -> [pid_t] {
        guard inNamespace, !reaped,
            let own = Self.mountNamespace(of: "self"), let instance = Self.mountNamespace(of: String(launcherPID)),
            own != instance
        else { return [] }
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
        return entries.compactMap { entry in
            guard let pid = pid_t(entry), Self.mountNamespace(of: entry) == instance else { return nil }
            return pid
        }
    }

    private static func mountNamespace(of process: String) -> String? {
        try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(process)/ns/mnt")
    }

    /// Alive, not a zombie: a killed child of the launcher waits as a zombie until its new
    /// parent reaps it, and must not hold the grace period open.
    private static func exists(_ pid: pid_t) -> Bool {
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
            let close = stat.lastIndex(of: ")")
        else { return false }
        let state = stat[stat.index(after: close)...].trimmingCharacters(in: .whitespaces).first
        return state != "Z" && state != "X"
    }
}
