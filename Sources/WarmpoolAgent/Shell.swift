#if canImport(Glibc)
import Glibc
#endif

/// Runs `/bin/sh -c command` with the agent's environment plus `environment`, waits, and returns
/// the exit status (128 + signal when killed, -1 when it could not start). Blocking.
func runShell(_ command: String, environment extra: [String]) -> Int32 {
    let arguments = ["/bin/sh", "-c", command]
    let argv = arguments.map { strdup($0) } + [nil]
    let envp = (inheritedEnvironment() + extra).map { strdup($0) } + [nil]
    defer {
        argv.forEach { free($0) }
        envp.forEach { free($0) }
    }
    var pid: pid_t = 0
    guard posix_spawn(&pid, "/bin/sh", nil, nil, argv, envp) == 0 else { return -1 }
    var status: Int32 = 0
    while waitpid(pid, &status, 0) < 0 {
        guard errno == EINTR else { return -1 }
    }
    return exitStatus(waitStatus: status)
}

/// The agent's own environment, `NAME=value` entries in order, for a child it starts.
func inheritedEnvironment() -> [String] {
    var inherited: [String] = []
    var cursor = environ
    while let entry = cursor.pointee {
        inherited.append(String(cString: entry))
        cursor += 1
    }
    return inherited
}

/// A `waitpid` status as a shell reports it: the exit status, or 128 + the signal that killed it.
func exitStatus(waitStatus status: Int32) -> Int32 {
    let signal = status & 0x7F
    return signal == 0 ? (status >> 8) & 0xFF : 128 + signal
}
