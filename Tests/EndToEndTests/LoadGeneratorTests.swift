import Foundation
import Testing
import WarmpoolJSON

/// The capacity benchmark's lean agents against the real controller: real handshakes (the
/// controller's `connected` events), beats at the nominal rate (no suspicion while they run, and
/// their own reports say 10 Hz), and keys that do not match refused like any agent's.
@Suite(.serialized) struct LoadGeneratorTests {
    @Test func leanAgentsHandshakeAndBeatAtTheirRate() throws {
        let harness = try Harness()
        try harness.run("warmpool-loadgen", ["keys", "--count", "40", "--keys-file", harness.keysPath])
        try harness.startController(intervalMilliseconds: 100)
        let log = harness.logPath("loadgen")
        let loadgen = try harness.spawn("warmpool-loadgen", [
            "beats", "--count", "40", "--controller", harness.controllerAddress, "--threads", "2", "--seconds", "12",
        ], log: log)
        defer { harness.stop(loadgen) }
        try harness.waitUntil("40 agents connected", timeout: 10) {
            Set(harness.events().filter { $0.kind == "connected" }.map(\.agentID)).count == 40
        }
        try harness.waitUntil("two reports from each thread", timeout: 20) {
            harness.log("loadgen").components(separatedBy: "loadgen: thread ").count - 1 >= 4
        }
        #expect(harness.events().filter { $0.kind == "suspected" || $0.kind == "failed" }.isEmpty)
        // Each report: agents, beats and the seconds they took. 20 agents a thread at 10 Hz.
        let reports = harness.log("loadgen").split(separator: "\n").filter { $0.hasPrefix("loadgen: thread ") }
        for report in reports.dropFirst(2) {
            let fields = Dictionary(uniqueKeysWithValues: report.split(separator: " ").compactMap { part -> (String, String)? in
                let pair = part.split(separator: "=", maxSplits: 1)
                return pair.count == 2 ? (String(pair[0]), String(pair[1])) : nil
            })
            let agents = try #require(fields["agents"].flatMap(Double.init))
            let beats = try #require(fields["beats"].flatMap(Double.init))
            let seconds = try #require(fields["seconds"].flatMap(Double.init))
            #expect(agents == 20)
            #expect(fields["closed"] == "0")
            // Generous bounds: a shared machine; the bench itself checks within 5 %.
            #expect(abs(beats / seconds / agents - 10) < 2, "\(report)")
        }
    }

    /// The late list names agents by their index in the ids, as ranges. A negative threshold makes
    /// every beat late (no silence is shorter than an interval minus a second), so the one thread
    /// names all of its agents and counts every beat.
    @Test func lateBeatsNameTheirAgents() throws {
        let harness = try Harness()
        try harness.run("warmpool-loadgen", ["keys", "--count", "6", "--keys-file", harness.keysPath])
        try harness.startController(intervalMilliseconds: 100)
        let loadgen = try harness.spawn("warmpool-loadgen", [
            "beats", "--count", "6", "--controller", harness.controllerAddress, "--threads", "1", "--seconds", "12",
            "--late-threshold-ms=-1000",
        ], log: harness.logPath("loadgen"))
        defer { harness.stop(loadgen) }
        try harness.waitUntil("two reports", timeout: 20) {
            harness.log("loadgen").components(separatedBy: "loadgen: thread ").count - 1 >= 2
        }
        let report = try #require(
            harness.log("loadgen").split(separator: "\n").filter { $0.hasPrefix("loadgen: thread ") }.dropFirst().first)
        #expect(report.contains(" late_agents=6 "), "\(report)")
        #expect(report.hasSuffix(" late=0-5"), "\(report)")
        #expect(report.contains(" at_ns="), "\(report)")
        let lateBeats = try #require(report.split(separator: " ").first { $0.hasPrefix("late_beats=") })
        let beats = try #require(report.split(separator: " ").first { $0.hasPrefix("beats=") })
        #expect(lateBeats.dropFirst("late_beats=".count) == beats.dropFirst("beats=".count), "every beat is late")
    }

    @Test func theTransportFloorWritesAndReadsAtTheRate() throws {
        let harness = try Harness()
        let output = try harness.run("warmpool-loadgen", ["floor", "--count", "50", "--seconds", "2", "--json"])
        let object = try JSONValue.parse(output)
        #expect(object["sockets"]?.doubleValue == 50)
        // 50 sockets at 10 Hz; generous bounds on a shared machine.
        #expect((400...600).contains(try #require(object["frames_per_second"]?.doubleValue)))
        #expect(try #require(object["receiver_us_per_frame"]?.doubleValue) > 0)
        // Pinned as `bench capacity` pins the controller and the load generator.
        let pinned = try JSONValue.parse(
            try harness.run("warmpool-loadgen", ["floor", "--count", "50", "--seconds", "1", "--pin", "--json"]))
        #expect(pinned["pinned"] == .bool(true))
        #expect(try #require(pinned["frames_per_second"]?.doubleValue) > 300)
    }

    @Test func agentsTheControllerDoesNotKnowAreRefused() throws {
        let harness = try Harness()
        try harness.run("warmpool-loadgen", ["keys", "--count", "3", "--keys-file", harness.keysPath, "--seed", "other"])
        try harness.startController(intervalMilliseconds: 100)
        let loadgen = try harness.spawn("warmpool-loadgen", [
            "beats", "--count", "3", "--controller", harness.controllerAddress, "--seconds", "7",
        ], log: harness.logPath("loadgen"))
        defer { harness.stop(loadgen) }
        try harness.waitUntil("a report", timeout: 15) { harness.log("loadgen").contains("failed_handshakes=") }
        #expect(harness.log("loadgen").contains("failed_handshakes=") && !harness.log("loadgen").contains("failed_handshakes=0"))
        #expect(harness.events().isEmpty)
        #expect(harness.log("controller").contains("failed the challenge (wrong secret)"))
    }
}
