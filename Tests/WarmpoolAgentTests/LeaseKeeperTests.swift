import Testing
import WarmpoolWire
@testable import WarmpoolAgent

@Suite struct LeaseKeeperTests {
    static let ms: Int64 = 1_000_000

    @Test func noLeaseNoFence() {
        var keeper = LeaseKeeper()
        #expect(keeper.tick(now: 1_000_000 * Self.ms) == .none)
        #expect(!keeper.holdsLease(now: 0))
    }

    @Test func theLeaseRunsFromTheSendTimeOfTheAcknowledgedBeat() {
        var keeper = LeaseKeeper(driftAllowance: 0)
        // Beat sent at 1000 ms, grant for it arrives at 1300 ms: the lease ends at 3000, not 3300.
        #expect(keeper.granted(anchor: 1_000 * Self.ms, leaseNanoseconds: 2_000 * Self.ms, epoch: 4, now: 1_300 * Self.ms) == .none)
        #expect(keeper.holdsLease(now: 2_999 * Self.ms))
        #expect(keeper.tick(now: 2_999 * Self.ms) == .none)
        #expect(keeper.tick(now: 3_000 * Self.ms) == .fence(epoch: 4))
        #expect(keeper.fencedAtEpoch == 4)
    }

    @Test func driftAllowanceShortensTheLease() {
        var keeper = LeaseKeeper(driftAllowance: 0.01)
        _ = keeper.granted(anchor: 0, leaseNanoseconds: 2_000 * Self.ms, epoch: 1, now: 0)
        #expect(keeper.expiresAt == 1_980 * Self.ms)
    }

    @Test func fencingIsStickyAndHappensOnce() {
        var keeper = LeaseKeeper(driftAllowance: 0)
        _ = keeper.granted(anchor: 0, leaseNanoseconds: 100 * Self.ms, epoch: 2, now: 0)
        #expect(keeper.tick(now: 100 * Self.ms) == .fence(epoch: 2))
        #expect(keeper.tick(now: 200 * Self.ms) == .none)
        // A grant that arrives after the fence (a healed partition) does not revive the lease.
        #expect(keeper.granted(anchor: 300 * Self.ms, leaseNanoseconds: 2_000 * Self.ms, epoch: 2, now: 300 * Self.ms) == .none)
        #expect(!keeper.holdsLease(now: 400 * Self.ms))
        #expect(keeper.fencedAtEpoch == 2)
    }

    @Test func anOlderGrantNeverShortensTheLease() {
        var keeper = LeaseKeeper(driftAllowance: 0)
        _ = keeper.granted(anchor: 1_000 * Self.ms, leaseNanoseconds: 1_000 * Self.ms, epoch: 1, now: 1_000 * Self.ms)
        _ = keeper.granted(anchor: 900 * Self.ms, leaseNanoseconds: 1_000 * Self.ms, epoch: 1, now: 1_010 * Self.ms)
        #expect(keeper.expiresAt == 2_000 * Self.ms)
    }

    @Test func aGrantThatArrivesAlreadyExpiredFencesAtOnce() {
        var keeper = LeaseKeeper(driftAllowance: 0)
        _ = keeper.granted(anchor: 0, leaseNanoseconds: 100 * Self.ms, epoch: 1, now: 50 * Self.ms)
        // Frozen (SIGSTOP) for a second: the next grant is for an old beat.
        #expect(keeper.granted(anchor: 60 * Self.ms, leaseNanoseconds: 100 * Self.ms, epoch: 1, now: 1_060 * Self.ms)
            == .fence(epoch: 1))
    }
}

@Suite struct BackoffTests {
    @Test func doublesToTheCeilingWithJitterInTheUpperHalf() {
        var backoff = Backoff(initial: 100, maximum: 1_000)
        #expect(backoff.nextDelay(unit: 0) == 50)
        #expect(backoff.nextDelay(unit: 1) == 200)
        #expect(backoff.nextDelay(unit: 0.5) == 300)
        #expect(backoff.nextDelay(unit: 1) == 800)
        #expect(backoff.nextDelay(unit: 1) == 1_000)
        for _ in 0..<100 { #expect(backoff.nextDelay(unit: 1) == 1_000) }
        backoff.reset()
        #expect(backoff.nextDelay(unit: 1) == 100)
    }
}
