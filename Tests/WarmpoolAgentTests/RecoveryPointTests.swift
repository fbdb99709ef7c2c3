import Foundation
import Testing

@testable import WarmpoolAgent

/// The checkpoint pattern and probe (real files on a real directory), the snapshot schedule (pure,
/// time passed in) and the snapshot run's outcome (a real /bin/sh).
@Suite struct RecoveryPointTests {
    @Test(arguments: [
        ("/data/checkpoints/**", "run/a/b.pt", true),
        ("/data/checkpoints/**", "b.pt", true),
        ("/data/checkpoints/*.pt", "b.pt", true),
        ("/data/checkpoints/*.pt", "run/b.pt", false),
        ("/data/checkpoints/**/*.pt", "b.pt", true),
        ("/data/checkpoints/**/*.pt", "x/y/b.pt", true),
        ("/data/checkpoints/**/*.pt", "x/y/b.json", false),
        ("/data/checkpoints/run-?/latest", "run-7/latest", true),
        ("/data/checkpoints/run-?/latest", "run-17/latest", false),
        ("/data/checkpoints/[ab]*/**", "alpha/x", true),
        ("/data/checkpoints/[ab]*/**", "gamma/x", false),
    ])
    func patternsMatchAsAShellWould(_ pattern: String, _ path: String, _ expected: Bool) throws {
        let parsed = try #require(CheckpointPattern(pattern))
        #expect(parsed.root == "/data/checkpoints")
        #expect(parsed.matches(path.split(separator: "/").map(String.init)) == expected)
    }

    @Test func patternsMustBeAbsolute() {
        #expect(CheckpointPattern("checkpoints/**") == nil)
        #expect(CheckpointPattern("/") == nil)
        #expect(CheckpointPattern("/data/model.pt")?.root == "/data")
        #expect(CheckpointPattern("/data//ckpt/**")?.root == "/data/ckpt")
    }

    @Test func theProbeFindsTheNewestMatchingFileAndFollowsNoLink() throws {
        let root = FileManager.default.temporaryDirectory.appendingPathComponent("wp-ckpt-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: root) }
        let probe = CheckpointProbe(pattern: try #require(CheckpointPattern(root + "/checkpoints/**/*.pt")))
        #expect(probe.probe() == CheckpointReport(pattern: root + "/checkpoints/**/*.pt", files: 0))  // none yet: no problem

        let files = FileManager.default
        try files.createDirectory(atPath: root + "/checkpoints/run-1", withIntermediateDirectories: true)
        try files.createDirectory(atPath: root + "/elsewhere", withIntermediateDirectories: true)
        func write(_ path: String, modified seconds: Int) throws {
            try Data("x".utf8).write(to: URL(fileURLWithPath: path))
            try files.setAttributes([.modificationDate: Date(timeIntervalSince1970: TimeInterval(seconds))], ofItemAtPath: path)
        }
        try write(root + "/checkpoints/step_100.pt", modified: 1_000)
        try write(root + "/checkpoints/run-1/step_200.pt", modified: 2_000)
        try write(root + "/checkpoints/run-1/notes.txt", modified: 9_000)  // not a checkpoint
        try write(root + "/elsewhere/step_300.pt", modified: 3_000)
        // A link to a newer file outside: not followed, not counted.
        try files.createSymbolicLink(atPath: root + "/checkpoints/latest.pt", withDestinationPath: root + "/elsewhere/step_300.pt")
        try files.createSymbolicLink(atPath: root + "/checkpoints/loop", withDestinationPath: root + "/checkpoints")

        let report = probe.probe()
        #expect(report.files == 2)
        #expect(report.newestPath == "run-1/step_200.pt")
        #expect(report.newestModifiedNanoseconds == 2_000_000_000_000)
        #expect(report.problem == nil && !report.truncated)

        let telemetry = CheckpointTelemetry(report, wallNow: 2_012_500_000_000)
        #expect(telemetry.ageMs == 12_500)
    }

    @Test func theWalkIsBounded() throws {
        let root = FileManager.default.temporaryDirectory.appendingPathComponent("wp-ckpt-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: root) }
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
        for index in 0..<(CheckpointProbe.entryLimit + 10) {
            FileManager.default.createFile(atPath: "\(root)/\(index)", contents: nil)
        }
        let report = CheckpointProbe(pattern: try #require(CheckpointPattern(root + "/**"))).probe()
        #expect(report.truncated)
        #expect(report.files == CheckpointProbe.entryLimit)
    }

    // MARK: The schedule

    private let minute: Int64 = 60_000_000_000

    @Test func snapshotsStartWithTheLeaseAndFollowTheInterval() {
        var schedule = SnapshotSchedule(intervalNanoseconds: minute)
        #expect(schedule.tick(now: 0, mayWrite: false) == .none)  // a standby, or before the first grant
        #expect(schedule.tick(now: 5, mayWrite: true) == .start)
        #expect(schedule.tick(now: 6, mayWrite: true) == .none)  // one at a time
        schedule.finished(.succeeded(id: "s1"), now: 10)
        #expect(schedule.lastID == "s1" && schedule.lastSucceededAt == 10)
        #expect(schedule.tick(now: minute, mayWrite: true) == .none)
        #expect(schedule.tick(now: minute + 5, mayWrite: true) == .start)  // an interval after the last start
    }

    @Test func aLostLeaseCancelsTheRunningSnapshot() {
        var schedule = SnapshotSchedule(intervalNanoseconds: minute)
        #expect(schedule.tick(now: 0, mayWrite: true) == .start)
        #expect(schedule.tick(now: 1, mayWrite: false) == .cancel)
        #expect(schedule.tick(now: 2, mayWrite: false) == .cancel)  // until its end is seen
        schedule.finished(.failed("killed by signal 9"), now: 3)
        #expect(schedule.tick(now: 4, mayWrite: false) == .none)
        #expect(schedule.lastSucceededAt == nil && schedule.failuresInARow == 1)
    }

    @Test func failuresAreRetriedSoonerThanTheIntervalWithBackoff() {
        let hour = 60 * minute
        var schedule = SnapshotSchedule(intervalNanoseconds: hour, retryDelayNanoseconds: minute)
        var now: Int64 = 0
        var delays: [Int64] = []
        for _ in 0..<8 {
            #expect(schedule.tick(now: now, mayWrite: true) == .start)
            schedule.finished(.failed("exit status 1"), now: now)
            let next = schedule.nextAt!
            delays.append((next - now) / minute)
            now = next
        }
        #expect(delays == [1, 2, 4, 8, 16, 32, 60, 60])
        #expect(schedule.tick(now: now, mayWrite: true) == .start)
        schedule.finished(.succeeded(id: nil), now: now)
        #expect(schedule.failuresInARow == 0 && schedule.lastError == nil)
    }

    // MARK: A run

    @Test func theOutcomeIsReadFromTheLastJSONObjectPrinted() {
        let printed = Array("progress 50%\n{\"snapshot\":\"20261204T123000.250Z-1a2b3c4d\",\"files\":3}\n".utf8)
        #expect(SnapshotProcess.outcome(status: 0, output: printed) == .succeeded(id: "20261204T123000.250Z-1a2b3c4d"))
        #expect(SnapshotProcess.outcome(status: 0, output: []) == .succeeded(id: nil))
        #expect(SnapshotProcess.outcome(status: 2, output: Array("{\"error\":\"no bucket\"}".utf8)) == .failed("exit status 2: no bucket"))
        #expect(SnapshotProcess.outcome(status: 137, output: []) == .failed("killed by signal 9"))
    }

    @Test func aRealRunIsCancelledWithItsWholeGroup() async throws {
        let marker = FileManager.default.temporaryDirectory.appendingPathComponent("wp-snap-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: marker) }
        // A child of the shell that would outlive a kill of the shell alone.
        let (stream, continuation) = AsyncStream<SnapshotSchedule.Outcome>.makeStream()
        let started = SnapshotProcess.start("sleep 30 & echo $! > \(marker); wait", environment: []) { outcome in
            continuation.yield(outcome)
        }
        let process = try started.get()
        var pid: Int32?
        for _ in 0..<100 where pid == nil {
            try await Task.sleep(for: .milliseconds(20))
            pid = (try? String(contentsOfFile: marker, encoding: .utf8)).flatMap { Int32($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
        }
        let child = try #require(pid)
        process.cancel()
        var iterator = stream.makeAsyncIterator()
        #expect(await iterator.next() == .failed("killed by signal 9"))
        try await Task.sleep(for: .milliseconds(100))
        // Gone, or a zombie waiting for whoever inherited it: either way no longer running.
        let state = (try? String(contentsOfFile: "/proc/\(child)/stat", encoding: .utf8))?.split(separator: ")").last?.split(separator: " ").first
        #expect(state == nil || state == "Z", "the shell's child must die with it (state \(state.map(String.init) ?? "gone"))")

        let succeeded = try SnapshotProcess.start(#"echo "{\"snapshot\":\"$WARMPOOL_SNAPSHOT_SOURCE\"}""#,
                                                  environment: ["WARMPOOL_SNAPSHOT_SOURCE=/data"]) { continuation.yield($0) }.get()
        _ = succeeded
        #expect(await iterator.next() == .succeeded(id: "/data"))
    }
}
