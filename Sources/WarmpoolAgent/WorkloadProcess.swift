#if canImport(Glibc)
import Glibc
#endif
import Dispatch

/// The supervised workload's process group: started, frozen (SIGSTOP), thawed (SIGCONT) and killed
/// as one, and remembered in a state file so that an agent restarted after a crash finds the
/// group its previous run left and freezes it before anything else (it holds no lease).
///
/// The group, not one pid: a shell's children, a launcher's workers (all that stay in the group)
/// stop together. Blocking calls (waitpid) run on the reaper's own thread, never on the event loop.
final class WorkloadProcess: @unchecked Sendable {
    /// The process group id: the workload's first process leads it.
    let group: pid_t
    let epoch: UInt64

    private init(group: pid_t, epoch: UInt64) {
        self.group = group
        self.epoch = epoch
    }

    /// Starts `command` in a new process group with the agent's environment plus `environment`.
    /// `exited` is called (on the reaper's thread) with the exit status, 128 + signal when killed.
    static func start(
        _ command: [String], environment extra: [String], epoch: UInt64, exited: @escaping @Sendable (Int32) -> Void
    ) -> Result<WorkloadProcess, SpawnError> {
        let pid: pid_t
        switch spawnGroupLeader(command, environment: extra) {
        case .success(let leader): pid = leader
        case .failure(let error): return .failure(error)
        }
        let process = WorkloadProcess(group: pid, epoch: epoch)
        let leader = pid
        ReaperThread.detach {
            var raw: Int32 = 0
            while waitpid(leader, &raw, 0) < 0, errno == EINTR {}
            exited(exitStatus(waitStatus: raw))
        }
        return .success(process)
    }

    /// A group left by a previous run of the agent, if its leader still runs.
    static func adopt(group: pid_t, epoch: UInt64) -> WorkloadProcess? {
        guard group > 1, kill(-group, 0) == 0 else { return nil }
        return WorkloadProcess(group: group, epoch: epoch)
    }

    /// True when the signal reached the group.
    @discardableResult
    func signal(_ signal: Int32) -> Bool { Glibc.kill(-group, signal) == 0 }

    func freeze() -> Bool { signal(SIGSTOP) }

    func thaw() -> Bool { signal(SIGCONT) }

    func killGroup() -> Bool { signal(SIGKILL) }

    /// Whether any process of the group is still there.
    var isAlive: Bool { Glibc.kill(-group, 0) == 0 }

    // MARK: The state file

    /// `GROUP EPOCH`, written whole (temporary file, rename) whenever a workload starts.
    static func remember(_ process: WorkloadProcess?, at path: String) {
        guard let process else {
            unlink(path)
            return
        }
        let temporary = path + ".tmp"
        let fd = open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0o600)
        guard fd >= 0 else { return }
        let text = Array("\(process.group) \(process.epoch)\n".utf8)
        let written = text.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        close(fd)
        if written == text.count { rename(temporary, path) } else { unlink(temporary) }
    }

    static func remembered(at path: String) -> (group: pid_t, epoch: UInt64)? {
        guard let bytes = readSmallFile(path, limit: 64) else { return nil }
        let fields = String(decoding: bytes, as: UTF8.self).trimmingWhitespace().split(separator: " ")
        guard fields.count == 2, let group = pid_t(fields[0]), let epoch = UInt64(fields[1]) else { return nil }
        return (group, epoch)
    }
}

struct SpawnError: Error, CustomStringConvertible {
    var command: String
    var errno: Int32
    var description: String { "cannot start \(command): \(String(cString: strerror(errno)))" }
}

/// Starts `command` (looked up in PATH) as the leader of a new process group, with the agent's
/// environment (less its secret) plus `extra`, default signal handling, and, when given, its
/// standard output (and error) on `standardOutput` and its standard input from /dev/null.
func spawnGroupLeader(
    _ command: [String], environment extra: [String], standardOutput: Int32? = nil, standardErrorToo: Bool = false, noInput: Bool = false
) -> Result<pid_t, SpawnError> {
    // The agent's own secret stays with the agent.
    let inherited = inheritedEnvironment().filter { !$0.hasPrefix("WARMPOOL_AGENT_SECRET=") }
    let argv = command.map { strdup($0) } + [nil]
    let envp = (inherited + extra).map { strdup($0) } + [nil]
    defer {
        argv.forEach { free($0) }
        envp.forEach { free($0) }
    }
    var attributes = posix_spawnattr_t()
    posix_spawnattr_init(&attributes)
    defer { posix_spawnattr_destroy(&attributes) }
    var defaults = sigset_t()
    sigfillset(&defaults)
    posix_spawnattr_setsigdefault(&attributes, &defaults)
    var empty = sigset_t()
    sigemptyset(&empty)
    posix_spawnattr_setsigmask(&attributes, &empty)
    posix_spawnattr_setpgroup(&attributes, 0)
    posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK))
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    if noInput { posix_spawn_file_actions_addopen(&actions, STDIN_FILENO, "/dev/null", O_RDONLY, 0) }
    if let standardOutput { posix_spawn_file_actions_adddup2(&actions, standardOutput, STDOUT_FILENO) }
    if let standardOutput, standardErrorToo { posix_spawn_file_actions_adddup2(&actions, standardOutput, STDERR_FILENO) }
    var pid: pid_t = 0
    let status = posix_spawnp(&pid, command[0], &actions, &attributes, argv, envp)
    guard status == 0 else { return .failure(SpawnError(command: command[0], errno: status)) }
    return .success(pid)
}

/// Reads `fd` to its end, keeping the last `limit` bytes (what a child printed last).
func readTail(_ fd: Int32, limit: Int) -> [UInt8] {
    var kept: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: 16 << 10)
    while true {
        let count = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        if count < 0, errno == EINTR { continue }
        guard count > 0 else { break }
        kept.append(contentsOf: buffer[..<count])
        if kept.count > 2 * limit { kept.removeFirst(kept.count - limit) }
    }
    return kept.count > limit ? Array(kept.suffix(limit)) : kept
}

/// A plain thread for the one blocking wait of each workload: Dispatch's pool is small, and a
/// workload can run for weeks.
enum ReaperThread {
    static func detach(_ body: @escaping @Sendable () -> Void) {
        let box = Unmanaged.passRetained(Box(body)).toOpaque()
        var thread = pthread_t()
        let created = pthread_create(&thread, nil, { raw in
            let box = Unmanaged<Box>.fromOpaque(raw!).takeRetainedValue()
            box.body()
            return nil
        }, box)
        if created == 0 {
            pthread_detach(thread)
        } else {
            Unmanaged<Box>.fromOpaque(box).release()
            DispatchQueue.global().async { body() }
        }
    }

    private final class Box: @unchecked Sendable {
        let body: @Sendable () -> Void
        init(_ body: @escaping @Sendable () -> Void) { self.body = body }
    }
}
