import Testing
import WarmpoolJSON
@testable import WarmpoolLiveness

/// Telemetry's `checkpoint` and `snapshot` as the controller reads them: ages kept with the time
/// of receipt, malformed keys dropped without spoiling the rest.
@Suite struct RecoveryPointReportTests {
    private func report(_ json: String, at: Int64 = 1_000_000_000) throws -> RecoveryPointReport? {
        RecoveryPointReport(telemetry: try JSONValue.parse(json), receivedAt: at)
    }

    @Test func agesGrowWithTheControllersClockFromTheMomentOfReceipt() throws {
        let parsed = try #require(try report(#"""
            {"checkpoint":{"age_ms":12500,"files":3,"newest":"run-1/step_900.pt","pattern":"/data/checkpoints/**"},
             "snapshot":{"failures_in_a_row":1,"interval_s":60,"last_error":"exit status 1","last_id":"s1","last_success_age_ms":70000,"running":true}}
            """#))
        #expect(parsed.checkpoint == .init(pattern: "/data/checkpoints/**", files: 3, newest: "run-1/step_900.pt", ageMilliseconds: 12_500, problem: nil))
        #expect(parsed.snapshots == .init(intervalSeconds: 60, lastID: "s1", lastSuccessAgeMilliseconds: 70_000, lastError: "exit status 1",
                                          failuresInARow: 1, running: true))
        #expect(parsed.checkpointAge(at: 1_000_000_000) == 12.5)
        #expect(parsed.checkpointAge(at: 3_500_000_000) == 15.0)
        #expect(parsed.snapshotAge(at: 2_000_000_000) == 71.0)
    }

    @Test func noneYetIsNotAnAge() throws {
        let parsed = try #require(try report(#"{"checkpoint":{"files":0,"pattern":"/data/checkpoints/**"}}"#))
        #expect(parsed.checkpointAge(at: 5) == nil)
        #expect(parsed.snapshots == nil && parsed.snapshotAge(at: 5) == nil)
    }

    @Test(arguments: [
        #"{}"#,
        #"{"checkpoint":"yesterday"}"#,
        #"{"checkpoint":{"age_ms":-5,"files":1,"pattern":"/p/**"}}"#,
        #"{"checkpoint":{"age_ms":5,"files":"one","pattern":"/p/**"}}"#,
        #"{"snapshot":{"interval_s":60}}"#,
        #"{"snapshot":{"interval_s":60,"running":false,"last_success_age_ms":-1}}"#,
    ])
    func malformedOrAbsentKeysAreDropped(_ json: String) throws {
        #expect(try report(json) == nil)
    }

    @Test func aBadKeySpoilsOnlyItself() throws {
        let parsed = try #require(try report(#"{"checkpoint":{"age_ms":"soon"},"snapshot":{"interval_s":60,"running":false}}"#))
        #expect(parsed.checkpoint == nil)
        #expect(parsed.snapshots?.intervalSeconds == 60)
    }
}
