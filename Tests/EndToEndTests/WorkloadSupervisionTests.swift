import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// The real agent supervising a real workload (`warmpool-agent ... -- COMMAND`) against the real
/// controller: the workload writes only under a lease, freezes when the lease runs out, and goes
/// on with the same process when the controller grants again; an agent restarted without a lease
/// holds the workload its previous run left until its first grant.
@Suite(.serialized) struct WorkloadSupervisionTests {
    /// Appends "EPOCH PID NS" to `file` every 20 ms.
    static func workload(_ file: String) -> [String] {
        ["--", "/bin/sh", "-c", "while :; do echo \"$WARMPOOL_EPOCH $$ $(date +%s%N)\" >> '\(file)'; sleep 0.02; done"]
    }

    struct Written {
        var lines: [(epoch: String, pid: String)]
        var count: Int { lines.count }
        var pids: Set<String> { Set(lines.map(\.pid)) }
    }

    static func written(_ file: String) -> Written {
        let text = (try? String(contentsOfFile: file, encoding: .utf8)) ?? ""
        return Written(lines: text.split(separator: "\n").compactMap { line in
            let fields = line.split(separator: " ")
            return fields.count == 3 ? (String(fields[0]), String(fields[1])) : nil
        })
    }

    /// True when nothing is appended to `file` for `seconds`.
    static func stands(_ file: String, for seconds: Double) -> Bool {
        let before = written(file).count
        usleep(UInt32(seconds * 1_000_000))
        return written(file).count == before
    }

    private func start(_ harness: Harness) throws -> (secret: String, file: String, state: String) {
        let secret = try harness.addAgentKey("gpu-w")
        try harness.startController(intervalMilliseconds: 50, extra: ["--lease-ms", "600"])
        let state = harness.directory + "/agent-state"
        return (secret, harness.directory + "/workload.log", state)
    }

    @Test func theWorkloadRunsOnlyUnderALeaseFreezesWithoutOneAndThawsAsTheSameProcess() throws {
        let harness = try Harness()
        let (secret, file, state) = try start(harness)
        // No lease yet (the controller is stopped before the agent can be granted): nothing runs.
        let controller = try #require(harness.controller)
        kill(controller.processIdentifier, SIGSTOP)
        _ = try harness.startAgent("gpu-w", secretFile: secret, extra: ["--state-dir", state] + Self.workload(file))
        usleep(800_000)
        #expect(Self.written(file).count == 0, "an agent with no lease holds its workload back")
        kill(controller.processIdentifier, SIGCONT)
        try harness.waitUntil("the workload writes", timeout: 20) { Self.written(file).count >= 10 }
        let first = Self.written(file)
        #expect(first.pids.count == 1 && first.lines.allSatisfy { $0.epoch == "1" }, "started once, told its epoch")

        // The controller goes away (a restart, a hang) past the 600 ms lease: the workload freezes.
        kill(controller.processIdentifier, SIGSTOP)
        usleep(900_000)
        #expect(Self.stands(file, for: 0.5), "frozen once the lease ran out")
        kill(controller.processIdentifier, SIGCONT)
        try harness.waitUntil("the workload writes again", timeout: 20) { Self.written(file).count > first.count + 10 }
        #expect(Self.written(file).pids == first.pids, "thawed, not restarted: the same process goes on")
        try harness.waitUntil("fenced and thawed events", timeout: 10) {
            let kinds = harness.events().filter { $0.agentID == "gpu-w" }.map(\.kind)
            return kinds.contains("fenced") && kinds.contains("thawed")
        }
        Self.killWorkloads(file)
    }

    @Test func anAgentRestartedWithNoLeaseFreezesTheWorkloadItsPreviousRunLeft() throws {
        let harness = try Harness()
        let (secret, file, state) = try start(harness)
        let agent = try harness.startAgent("gpu-w", secretFile: secret, extra: ["--state-dir", state] + Self.workload(file))
        try harness.waitUntil("the workload writes", timeout: 20) { Self.written(file).count >= 10 }
        let pids = Self.written(file).pids

        // The controller is unreachable and the agent crashes: its workload is left running, with
        // nobody holding a lease for it.
        let controller = try #require(harness.controller)
        kill(controller.processIdentifier, SIGSTOP)
        // Not waited for: Foundation does not reap it while its orphaned workload lives on.
        kill(agent.processIdentifier, SIGKILL)
        usleep(200_000)
        _ = try harness.startAgent("gpu-w", secretFile: secret, extra: ["--state-dir", state] + Self.workload(file))
        usleep(500_000)
        #expect(Self.stands(file, for: 0.5), "the restarted agent froze the workload it found")
        kill(controller.processIdentifier, SIGCONT)
        try harness.waitUntil("the workload writes again", timeout: 20) { Self.written(file).count > 0 && !Self.stands(file, for: 0.2) }
        #expect(Self.written(file).pids == pids, "adopted and thawed, not a second copy")
        Self.killWorkloads(file)
    }

    /// The workloads lead process groups of their own, which the harness does not know of.
    static func killWorkloads(_ file: String) {
        for pid in written(file).pids { if let pid = Int32(pid) { kill(-pid, SIGKILL) } }
    }
}
