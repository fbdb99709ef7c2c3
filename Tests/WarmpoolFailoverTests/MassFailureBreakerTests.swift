import Testing
import WarmpoolFailover
import WarmpoolModel

/// The mass-failure breaker with a mock clock: a lone failure passes after the settle delay, a
/// burst trips it and is held until the provider or the agents say what happened.
@Suite struct MassFailureBreakerTests {
    static let t0 = Instant(nanosecondsSinceEpoch: 1_700_000_000_000_000_000)
    static let settings = MassFailureBreaker.Settings(
        minimumFailures: 3, fraction: 0.2, window: .seconds(5), settle: .milliseconds(500), recheckInterval: .seconds(3))

    static func failure(_ instance: InstanceID, _ at: Instant) -> MassFailureBreaker.Failure {
        .init(instance: instance, pool: PoolID(instance.rawValue), at: at)
    }

    @Test func aLoneFailurePassesAfterTheSettleDelay() {
        var breaker = MassFailureBreaker(settings: Self.settings)
        #expect(breaker.failed(instance: 1, pool: 1, monitored: 50, now: Self.t0) == [.wake(at: Self.t0 + .milliseconds(500))])
        #expect(breaker.tick(now: Self.t0 + .milliseconds(499)) == [])
        #expect(breaker.tick(now: Self.t0 + .milliseconds(500)) == [.failOver(Self.failure(1, Self.t0))])
        #expect(!breaker.isTripped)
    }

    @Test func anAgentBackWithinTheSettleDelayIsNotFailedOver() {
        var breaker = MassFailureBreaker(settings: Self.settings)
        _ = breaker.failed(instance: 1, pool: 1, monitored: 50, now: Self.t0)
        #expect(breaker.returned(instance: 1, now: Self.t0 + .milliseconds(200)) == [.dropped(Self.failure(1, Self.t0))])
        #expect(breaker.tick(now: Self.t0 + .seconds(1)) == [])
    }

    @Test func aBurstTripsAndOnlyWhatTheProviderReportsStoppedIsFailedOver() {
        var breaker = MassFailureBreaker(settings: Self.settings)
        // 3 of 10 monitored primaries within 100 ms: at least 3, at least 20 %.
        for i in 1...2 { _ = breaker.failed(instance: InstanceID(Int64(i)), pool: PoolID(Int64(i)), monitored: 10, now: Self.t0) }
        let at = Self.t0 + .milliseconds(100)
        #expect(breaker.failed(instance: 3, pool: 3, monitored: 10, now: at)
            == [.tripped(failures: 3, monitored: 10), .askProvider([1, 2, 3]), .wake(at: at + .seconds(3))])
        #expect(breaker.isTripped)
        #expect(breaker.failed(instance: 4, pool: 4, monitored: 10, now: at) == [.askProvider([4])])
        // Past the settle delay, nothing goes through on its own.
        #expect(breaker.tick(now: Self.t0 + .seconds(1)) == [])
        #expect(breaker.provider(reports: 1, running: true, now: Self.t0 + .seconds(1)) == [])
        #expect(breaker.provider(reports: 2, running: false, now: Self.t0 + .seconds(1)) == [.failOver(Self.failure(2, Self.t0))])
        // The others come back (the partition was the controller's): released, no failover.
        #expect(breaker.returned(instance: 1, now: Self.t0 + .seconds(2)) == [.dropped(Self.failure(1, Self.t0))])
        #expect(breaker.returned(instance: 3, now: Self.t0 + .seconds(2)) == [.dropped(Self.failure(3, at))])
        #expect(breaker.returned(instance: 4, now: Self.t0 + .seconds(2)) == [.dropped(Self.failure(4, at))])
        #expect(breaker.isTripped, "still within the window of the last failure")
        #expect(breaker.tick(now: at + .seconds(5)) == [.released(reason: "every held agent came back or was failed over")])
        #expect(!breaker.isTripped)
    }

    @Test func aHeldInstanceIsAskedAboutAgainUntilItStops() {
        var breaker = MassFailureBreaker(settings: Self.settings)
        for i in 1...3 { _ = breaker.failed(instance: InstanceID(Int64(i)), pool: PoolID(Int64(i)), monitored: 3, now: Self.t0) }
        #expect(breaker.tick(now: Self.t0 + .seconds(3)) == [.askProvider([1, 2, 3]), .wake(at: Self.t0 + .seconds(6))])
        #expect(breaker.provider(reports: 3, running: false, now: Self.t0 + .seconds(3)) == [.failOver(Self.failure(3, Self.t0))])
    }

    @Test func fewFailuresAmongManyPrimariesDoNotTrip() {
        var breaker = MassFailureBreaker(settings: Self.settings)
        // 3 failures but 100 monitored: 3 % is below 20 %.
        for i in 1...3 { _ = breaker.failed(instance: InstanceID(Int64(i)), pool: PoolID(Int64(i)), monitored: 100, now: Self.t0) }
        #expect(!breaker.isTripped)
        #expect(breaker.tick(now: Self.t0 + .seconds(1)).count == 3)
    }

    @Test func anOperatorReleaseFailsOverEveryHeldFailure() {
        var breaker = MassFailureBreaker(settings: Self.settings)
        for i in 1...3 { _ = breaker.failed(instance: InstanceID(Int64(i)), pool: PoolID(Int64(i)), monitored: 3, now: Self.t0) }
        #expect(breaker.release(now: Self.t0 + .seconds(1))
            == [1, 2, 3].map { .failOver(Self.failure(InstanceID(Int64($0)), Self.t0)) } + [.released(reason: "released by an operator")])
        #expect(!breaker.isTripped && breaker.pending.isEmpty)
    }

    @Test func aDisabledBreakerPassesEveryFailureAtOnce() {
        var breaker = MassFailureBreaker(settings: .init(minimumFailures: 0))
        #expect(breaker.failed(instance: 1, pool: 1, monitored: 1, now: Self.t0) == [.failOver(Self.failure(1, Self.t0))])
    }
}
