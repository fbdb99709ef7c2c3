import Foundation
import Testing
import WarmpoolModel

struct IdentifierCodingTests {
    struct Row: Codable, Equatable {
        var pool: PoolID
        var instance: InstanceID?
        var host: HostMachineID
        var epoch: Epoch
        var agent: AgentID
    }

    @Test func idsCodeAsTheirBareValues() throws {
        let row = Row(pool: 12, instance: 345, host: 77, epoch: 3, agent: "wp-12-1")
        let encoder = JSONEncoder()
        encoder.outputFormatting = .sortedKeys
        let text = String(decoding: try encoder.encode(row), as: UTF8.self)
        #expect(text == #"{"agent":"wp-12-1","epoch":3,"host":77,"instance":345,"pool":12}"#)
        #expect(try JSONDecoder().decode(Row.self, from: Data(text.utf8)) == row)
    }

    @Test func aNumericIdParsesDecimalDigitsOnly() {
        #expect(PoolID("12") == PoolID(12))
        #expect(PoolID("12a") == nil)
        #expect(InstanceID("") == nil)
        #expect(InstanceID(345).description == "345")
    }

    @Test func epochsOrderAndAdvance() {
        #expect(Epoch(3).next == Epoch(4))
        #expect(Epoch.zero < Epoch(1))
    }
}

struct TimeTests {
    @Test func durationConversionsTruncateToTheirUnit() {
        let duration = Duration.milliseconds(1_500) + .nanoseconds(999)
        #expect(duration.nanoseconds == 1_500_000_999)
        #expect(duration.milliseconds == 1_500)
        #expect(abs(duration.seconds - 1.500000999) < 1e-12)
    }

    @Test func instantsAddDurationsAndSubtractToDurations() {
        let start = Instant.seconds(100)
        #expect((start + .seconds(2)) - start == .seconds(2))
        #expect(start - .milliseconds(500) == Instant(nanosecondsSinceEpoch: 99_500_000_000))
        #expect(Instant(secondsSinceEpoch: start.secondsSinceEpoch) == start)
    }

    @Test func theClocksMoveForward() {
        let first = MonotonicClock.now()
        #expect(MonotonicClock.now() >= first)
        // CLOCK_REALTIME is well past 2020 on any machine that runs these tests.
        #expect(SystemWallClock().now() > Instant.seconds(1_577_836_800))
    }
}
