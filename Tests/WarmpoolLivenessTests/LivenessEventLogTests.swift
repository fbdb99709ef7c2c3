import Foundation
import Testing
import WarmpoolModel
import WarmpoolWire
@testable import WarmpoolLiveness

/// The event line is written by hand (it is on the hot path during an event storm): it must stay
/// the JSON object the harnesses and the failover tooling parse.
@Suite struct LivenessEventLogTests {
    let agent = AgentIdentity(agentID: "gpu-1", instanceID: 11, machineID: 7, role: .standby, softwareVersion: "t")

    func parse(_ data: Data) throws -> [String: Any] {
        #expect(data.last == 0x0A)
        return try #require(try JSONSerialization.jsonObject(with: data.dropLast()) as? [String: Any])
    }

    @Test func everyFieldRoundTrips() throws {
        let event = LivenessEvent(
            kind: .failed, agent: agent, atNanoseconds: 9_300_000_123_456, reason: "silent 361 ms, timeout 350 ms",
            silenceNanoseconds: 361_234_567, fencedAtEpoch: 4)
        let object = try parse(LivenessEventLog.jsonLine(event, wallClock: Date(timeIntervalSince1970: 1_795_930_315.1234)))
        #expect(object["event"] as? String == "failed")
        #expect(object["agent_id"] as? String == "gpu-1")
        #expect((object["instance_id"] as? NSNumber)?.uint64Value == 11)
        #expect((object["machine_id"] as? NSNumber)?.uint64Value == 7)
        #expect(object["role"] as? String == "standby")
        #expect((object["monotonic_ns"] as? NSNumber)?.int64Value == 9_300_000_123_456)
        #expect(object["reason"] as? String == "silent 361 ms, timeout 350 ms")
        #expect((object["silence_ms"] as? NSNumber)?.doubleValue == 361.234567)
        #expect((object["fenced_at_epoch"] as? NSNumber)?.uint64Value == 4)
        #expect(object["time"] as? String == "2026-11-29T05:31:55.123Z")
        #expect(object.count == 10)
    }

    @Test func optionalFieldsAreLeftOut() throws {
        let event = LivenessEvent(kind: .connected, agent: agent, atNanoseconds: 1, reason: "session opened")
        let object = try parse(LivenessEventLog.jsonLine(event, wallClock: Date(timeIntervalSince1970: 0)))
        #expect(object["silence_ms"] == nil && object["fenced_at_epoch"] == nil)
        #expect(object["time"] as? String == "1970-01-01T00:00:00.000Z")
    }

    /// Byte for byte the line the hand-written writer produced before the JSON toolkit's writer took
    /// over (harnesses grep these lines). Only U+0008 and U+000C are now written \b and \f, not \u0008.
    @Test func theLineIsUnchanged() {
        let event = LivenessEvent(
            kind: .failed, agent: agent, atNanoseconds: 9_300_000_123_456,
            reason: "silent 361 ms, timeout 350 ms \"x\" \\ / é ✓ \u{1}\u{1F}\t\n\r",
            silenceNanoseconds: 361_234_567, fencedAtEpoch: 4)
        let line = LivenessEventLog.jsonLine(event, wallClock: Date(timeIntervalSince1970: 1_795_930_315.1234))
        let expected = #"{"agent_id":"gpu-1","event":"failed","fenced_at_epoch":4,"instance_id":11,"machine_id":7,"#
            + #""monotonic_ns":9300000123456,"reason":"silent 361 ms, timeout 350 ms \"x\" \\ / é ✓ \u0001\u001f\t\n\r","#
            + #""role":"standby","silence_ms":361.234567,"time":"2026-11-29T05:31:55.123Z"}"# + "\n"
        #expect(String(decoding: line, as: UTF8.self) == expected)
    }

    @Test func stringsAreEscaped() throws {
        let reason = "quote \" backslash \\ newline \n tab \t bell \u{07} é ✓"
        let event = LivenessEvent(kind: .suspected, agent: agent, atNanoseconds: 1, reason: reason)
        let object = try parse(LivenessEventLog.jsonLine(event, wallClock: Date()))
        #expect(object["reason"] as? String == reason)
    }
}

/// The bus hands batches to every subscriber in order; the log is one of them, writing from its own task.
@Suite struct LivenessEventBusTests {
    let agent = AgentIdentity(agentID: "gpu-1", instanceID: 11, machineID: 7, role: .primary, softwareVersion: "t")

    func event(_ kind: LivenessEvent.Kind, at nanoseconds: Int64) -> LivenessEvent {
        LivenessEvent(kind: kind, agent: agent, atNanoseconds: nanoseconds, reason: "r")
    }

    @Test func everySubscriberGetsEveryBatchInOrder() async {
        let bus = LivenessEventBus()
        let first = bus.subscribe(), second = bus.subscribe()
        bus.publish([event(.connected, at: 1), event(.failed, at: 2)])
        bus.publish([])
        bus.publish([event(.recovered, at: 3)])
        bus.finish()
        for stream in [first, second] {
            var seen: [[Int64]] = []
            for await batch in stream { seen.append(batch.map(\.atNanoseconds)) }
            #expect(seen == [[1, 2], [3]])
        }
    }

    @Test func theLogWritesWhatWasPublishedBeforeTheBusFinished() async throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("events-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: path) }
        let bus = LivenessEventBus()
        let log = try LivenessEventLog(path: path, bus: bus)
        let now = MonotonicClock.now()
        bus.publish([event(.connected, at: now), event(.failed, at: now)])
        bus.publish([event(.recovered, at: now)])
        bus.finish()
        await log.close()
        let lines = try String(contentsOfFile: path, encoding: .utf8).split(separator: "\n")
        #expect(lines.count == 3)
        #expect(lines.map { $0.contains("\"event\":\"connected\"") } == [true, false, false])
        #expect(lines[2].contains("\"event\":\"recovered\""))
    }
}
