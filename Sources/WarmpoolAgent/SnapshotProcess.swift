#if canImport(Glibc)
import Glibc
#endif
import WarmpoolJSON

/// One run of the snapshot command (`/bin/sh -c COMMAND`, in a process group of its own so that a
/// cancel kills all of it). Its standard output is read (the last 64 KiB) for the JSON summary
/// `warmpool-snapshot create` prints; its standard error goes where the agent's goes.
final class SnapshotProcess: @unchecked Sendable {
    let group: pid_t

    private init(group: pid_t) {
        self.group = group
    }

    /// `finished` is called once, on a thread of its own, with the outcome.
    static func start(
        _ command: String, environment: [String], finished: @escaping @Sendable (SnapshotSchedule.Outcome) -> Void
    ) -> Result<SnapshotProcess, SpawnError> {
        var pipeEnds: [Int32] = [-1, -1]
        guard pipe(&pipeEnds) == 0 else { return .failure(SpawnError(command: "/bin/sh", errno: errno)) }
        // Neither end may leak into another child (a workload started meanwhile would hold the
        // write end, and the read below would wait for it to exit); dup2 gives the snapshot its own.
        for end in pipeEnds { _ = fcntl(end, F_SETFD, FD_CLOEXEC) }
        let spawned = spawnGroupLeader(["/bin/sh", "-c", command], environment: environment, standardOutput: pipeEnds[1])
        close(pipeEnds[1])
        guard case .success(let pid) = spawned else {
            close(pipeEnds[0])
            if case .failure(let error) = spawned { return .failure(error) }
            return .failure(SpawnError(command: "/bin/sh", errno: EINVAL))
        }
        let output = pipeEnds[0]
        ReaperThread.detach {
            let printed = readTail(output, limit: 64 << 10)
            close(output)
            var raw: Int32 = 0
            while waitpid(pid, &raw, 0) < 0, errno == EINTR {}
            finished(outcome(status: exitStatus(waitStatus: raw), output: printed))
        }
        return .success(SnapshotProcess(group: pid))
    }

    /// Kills the whole run: no manifest is written by a process that did not finish.
    func cancel() {
        _ = kill(-group, SIGKILL)
    }

    /// Exit 0 is a snapshot taken; its id is read from the last JSON object printed (`"id"`), if any.
    static func outcome(status: Int32, output: [UInt8]) -> SnapshotSchedule.Outcome {
        let lines = output.split(separator: UInt8(ascii: "\n")).reversed()
        let summary = lines.lazy.compactMap { try? JSONParser.parse(Array($0)) }.first { $0.objectValue != nil }
        guard status == 0 else {
            let reason = summary?["error"]?.stringValue.map { ": \($0)" } ?? ""
            return .failed(status > 128 ? "killed by signal \(status - 128)\(reason)" : "exit status \(status)\(reason)")
        }
        return .succeeded(id: summary?["id"]?.stringValue ?? summary?["snapshot"]?.stringValue)
    }
}
