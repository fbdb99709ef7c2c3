import Testing
import WarmpoolJSON
@testable import WarmpoolLiveness

/// Telemetry's `sync` as the controller reads it: the lag kept with the time of receipt, wrong
/// optional fields dropped alone, an unreadable state or lag dropping the report.
@Suite struct SyncReportTests {
    private func report(_ json: String, at: Int64 = 1_000_000_000) throws -> SyncReport? {
        SyncReport(telemetry: try JSONValue.parse(json), receivedAt: at)
    }

    @Test func readsEveryKeyAndAgesTheLagOnTheControllersClock() throws {
        let parsed = try #require(try report(#"""
            {"agent_id":"gpu-1","sync":{"bytes_pending":77,"error":"rsync exit status 255: Connection refused","failures":2,
             "files_pending":3,"lag_ms":4500,"last_pass_ms":1234,"last_sent_bytes":4321,
             "manifest":{"pass":9,"started_at_ms":1780000000002},"passes":9,"state":"failing","target":"wp-7-cpu-1"}}
            """#))
        #expect(parsed == SyncReport(
            target: "wp-7-cpu-1", state: "failing", lagMilliseconds: 4_500, bytesPending: 77, filesPending: 3, passes: 9,
            failuresInARow: 2, error: "rsync exit status 255: Connection refused", lastPassMilliseconds: 1_234, lastSentBytes: 4_321,
            manifest: .init(pass: 9, startedAtMilliseconds: 1_780_000_000_002), receivedAt: 1_000_000_000))
        #expect(parsed.lag(at: 1_000_000_000) == 4.5)
        #expect(parsed.lag(at: 3_500_000_000) == 7.0, "2.5 s later on the controller's clock")
    }

    @Test func aCurrentCopyAgesFromZeroAndNoLagStaysNone() throws {
        let current = try #require(try report(#"{"sync":{"failures":0,"lag_ms":0,"passes":4,"state":"idle","target":"vm"}}"#))
        #expect(current.lag(at: 1_000_000_000) == 0)
        #expect(current.lag(at: 2_000_000_000) == 1, "the agent fell silent: the copy's age grows")
        let waiting = try #require(try report(#"{"sync":{"failures":0,"passes":0,"state":"waiting","target":"vm"}}"#))
        #expect(waiting.lag(at: 9_000_000_000) == nil)
        #expect(waiting.manifest == nil)
        let off = try #require(try report(#"{"sync":{"error":"sync target: \"epoch\" is missing","failures":0,"passes":0,"state":"off"}}"#))
        #expect(off.target == nil && off.error == #"sync target: "epoch" is missing"#)
    }

    @Test(arguments: [
        #"{"agent_id":"x"}"#,
        #"{"sync":null}"#,
        #"{"sync":"syncing"}"#,
        #"{"sync":{"lag_ms":10}}"#,
        #"{"sync":{"state":5,"lag_ms":10}}"#,
        #"{"sync":{"state":"syncing","lag_ms":"10"}}"#,
        #"{"sync":{"state":"syncing","lag_ms":-1}}"#,
        #"{"sync":{"state":"syncing","lag_ms":1.5}}"#,
    ])
    func malformedReportsAreDropped(_ json: String) throws {
        #expect(try report(json) == nil)
    }

    @Test func wrongOptionalFieldsAreDroppedAlone() throws {
        let parsed = try #require(try report(#"""
            {"sync":{"state":"syncing","lag_ms":10,"bytes_pending":"many","files_pending":-3,"passes":true,"failures":1.5,
             "error":7,"manifest":{"pass":"nine","started_at_ms":5},"target":["a"]}}
            """#))
        #expect(parsed == SyncReport(target: nil, state: "syncing", lagMilliseconds: 10, receivedAt: 1_000_000_000))
    }
}
