import Testing
import WarmpoolWire
@testable import WarmpoolAgent

/// The agent's lease and its workload, with a mock clock: every transition of
/// `WorkloadSupervisor` (start, freeze, thaw, final kill, refused grant).
@Suite struct WorkloadSupervisorTests {
    static let ms: Int64 = 1_000_000
    static let lease = 2_000 * ms

    /// A supervisor granted at `epoch` at time 0 (its workload running).
    static func running(epoch: UInt64 = 3) -> WorkloadSupervisor {
        var supervisor = WorkloadSupervisor(supervises: true, driftAllowance: 0)
        #expect(supervisor.granted(anchor: 0, leaseNanoseconds: lease, epoch: epoch, now: 0) == [.start(epoch: epoch)])
        return supervisor
    }

    @Test func noLeaseNoWorkloadNoFence() {
        var supervisor = WorkloadSupervisor(supervises: true)
        #expect(supervisor.tick(now: 1_000_000 * Self.ms) == [])
        #expect(!supervisor.holdsLease(now: 0))
        #expect(supervisor.workload == .waiting)
        #expect(supervisor.fencedAtEpoch == nil)
    }

    @Test func theWorkloadStartsOnTheFirstGrantOnly() {
        var supervisor = Self.running(epoch: 3)
        #expect(supervisor.workload == .running(epoch: 3))
        #expect(supervisor.granted(anchor: 500 * Self.ms, leaseNanoseconds: Self.lease, epoch: 3, now: 600 * Self.ms) == [])
    }

    @Test func anUnsupervisedAgentStartsNothing() {
        var supervisor = WorkloadSupervisor(supervises: false, driftAllowance: 0)
        #expect(supervisor.granted(anchor: 0, leaseNanoseconds: Self.lease, epoch: 1, now: 0) == [])
        #expect(supervisor.workload == .waiting)
        // Its fence command still runs, and its thaw command when granted again.
        #expect(supervisor.tick(now: 2_000 * Self.ms) == [.freeze(epoch: 1)])
        #expect(supervisor.granted(anchor: 2_500 * Self.ms, leaseNanoseconds: Self.lease, epoch: 1, now: 2_600 * Self.ms)
            == [.thaw(epoch: 1, frozenFor: 600 * Self.ms)])
    }

    @Test func theLeaseRunsFromTheSendTimeOfTheAcknowledgedBeat() {
        var supervisor = WorkloadSupervisor(supervises: true, driftAllowance: 0)
        // Beat sent at 1000 ms, grant for it arrives at 1300 ms: the lease ends at 3000, not 3300.
        #expect(supervisor.granted(anchor: 1_000 * Self.ms, leaseNanoseconds: Self.lease, epoch: 4, now: 1_300 * Self.ms)
            == [.start(epoch: 4)])
        #expect(supervisor.holdsLease(now: 2_999 * Self.ms))
        #expect(supervisor.tick(now: 2_999 * Self.ms) == [])
        #expect(supervisor.tick(now: 3_000 * Self.ms) == [.freeze(epoch: 4)])
        #expect(supervisor.fencedAtEpoch == 4)
        #expect(supervisor.workload == .frozen(epoch: 4, since: 3_000 * Self.ms))
    }

    @Test func driftAllowanceShortensTheLease() {
        var supervisor = WorkloadSupervisor(supervises: true, driftAllowance: 0.01)
        _ = supervisor.granted(anchor: 0, leaseNanoseconds: Self.lease, epoch: 1, now: 0)
        #expect(supervisor.expiresAt == 1_980 * Self.ms)
    }

    @Test func aFreezeHappensOnceAndAGrantAtTheSameEpochThawsIt() {
        var supervisor = Self.running(epoch: 2)
        #expect(supervisor.tick(now: 2_000 * Self.ms) == [.freeze(epoch: 2)])
        #expect(supervisor.tick(now: 2_100 * Self.ms) == [])
        #expect(!supervisor.fenceIsFinal)
        // The controller comes back (a restart): same epoch, the workload goes on where it stood.
        #expect(supervisor.granted(anchor: 30_000 * Self.ms, leaseNanoseconds: Self.lease, epoch: 2, now: 30_010 * Self.ms)
            == [.thaw(epoch: 2, frozenFor: 28_010 * Self.ms)])
        #expect(supervisor.workload == .running(epoch: 2))
        #expect(supervisor.fencedAtEpoch == nil)
        #expect(supervisor.holdsLease(now: 30_020 * Self.ms))
    }

    @Test func aNewerEpochFromTheVolumeMakesTheFenceFinal() {
        var supervisor = Self.running(epoch: 2)
        _ = supervisor.tick(now: 2_000 * Self.ms)
        #expect(supervisor.learned(epoch: 3, from: .volume, now: 2_500 * Self.ms)
            == [.kill(epoch: 2, reason: "the volume is at epoch 3")])
        #expect(supervisor.fenceIsFinal)
        #expect(supervisor.workload == .killed(epoch: 2))
        // A late grant of the old epoch is refused: it would not revive the killed workload anyway.
        #expect(supervisor.granted(anchor: 2_600 * Self.ms, leaseNanoseconds: Self.lease, epoch: 2, now: 2_700 * Self.ms)
            == [.refuseGrant(epoch: 2, highest: 3)])
        #expect(!supervisor.holdsLease(now: 2_800 * Self.ms))
    }

    @Test func aRunningWorkloadIsKilledAtOnceByANewerEpoch() {
        // Paused past a failover, the agent wakes holding what it thinks is a lease: the volume says otherwise.
        var supervisor = Self.running(epoch: 5)
        #expect(supervisor.learned(epoch: 6, from: .volume, now: 100 * Self.ms) == [.kill(epoch: 5, reason: "the volume is at epoch 6")])
        #expect(!supervisor.holdsLease(now: 200 * Self.ms), "the lease of epoch 5 is void")
        #expect(supervisor.tick(now: 5_000 * Self.ms) == [])
    }

    @Test func theSameOrAnOlderEpochOnTheVolumeChangesNothing() {
        var supervisor = Self.running(epoch: 5)
        #expect(supervisor.learned(epoch: 5, from: .volume, now: 100 * Self.ms) == [])
        #expect(supervisor.learned(epoch: 1, from: .welcome, now: 100 * Self.ms) == [])
        #expect(supervisor.workload == .running(epoch: 5))
    }

    @Test func aGrantAtANewerEpochKillsTheOldRunAndStartsAFreshOne() {
        var supervisor = Self.running(epoch: 1)
        #expect(supervisor.granted(anchor: 100 * Self.ms, leaseNanoseconds: Self.lease, epoch: 2, now: 110 * Self.ms)
            == [.kill(epoch: 1, reason: "granted a lease at epoch 2"), .start(epoch: 2)])
        #expect(supervisor.workload == .running(epoch: 2))
    }

    @Test func grantsBelowTheHighestEpochSeenAreRefused() {
        var supervisor = WorkloadSupervisor(supervises: true, driftAllowance: 0)
        _ = supervisor.learned(epoch: 7, from: .volume, now: 0)
        #expect(supervisor.granted(anchor: 0, leaseNanoseconds: Self.lease, epoch: 6, now: 10 * Self.ms)
            == [.refuseGrant(epoch: 6, highest: 7)])
        #expect(supervisor.workload == .waiting)
        #expect(supervisor.granted(anchor: 0, leaseNanoseconds: Self.lease, epoch: 7, now: 10 * Self.ms) == [.start(epoch: 7)])
    }

    @Test func aWorkloadLeftByAPreviousRunStaysFrozenUntilGranted() {
        var supervisor = WorkloadSupervisor(supervises: true, driftAllowance: 0)
        supervisor.adopted(epoch: 4, now: 0)
        #expect(supervisor.fencedAtEpoch == 4)
        #expect(supervisor.tick(now: 10_000 * Self.ms) == [])
        #expect(supervisor.granted(anchor: 1_000 * Self.ms, leaseNanoseconds: Self.lease, epoch: 4, now: 1_100 * Self.ms)
            == [.thaw(epoch: 4, frozenFor: 1_100 * Self.ms)])
        // Adopted at 4, and the pool has since moved on: killed, not thawed.
        var moved = WorkloadSupervisor(supervises: true, driftAllowance: 0)
        moved.adopted(epoch: 4, now: 0)
        #expect(moved.learned(epoch: 5, from: .volume, now: 10 * Self.ms) == [.kill(epoch: 4, reason: "the volume is at epoch 5")])
    }

    @Test func anExitedWorkloadIsNotRestarted() {
        var supervisor = Self.running(epoch: 1)
        supervisor.workloadExited(status: 0)
        #expect(supervisor.workload == .exited(epoch: 1, status: 0))
        #expect(supervisor.granted(anchor: 100 * Self.ms, leaseNanoseconds: Self.lease, epoch: 1, now: 110 * Self.ms) == [])
    }

    @Test func anOlderGrantNeverShortensTheLease() {
        var supervisor = WorkloadSupervisor(supervises: true, driftAllowance: 0)
        _ = supervisor.granted(anchor: 1_000 * Self.ms, leaseNanoseconds: 1_000 * Self.ms, epoch: 1, now: 1_000 * Self.ms)
        _ = supervisor.granted(anchor: 900 * Self.ms, leaseNanoseconds: 1_000 * Self.ms, epoch: 1, now: 1_010 * Self.ms)
        #expect(supervisor.expiresAt == 2_000 * Self.ms)
    }

    @Test func aGrantThatArrivesAlreadyExpiredFreezesAtOnce() {
        var supervisor = WorkloadSupervisor(supervises: true, driftAllowance: 0)
        _ = supervisor.granted(anchor: 0, leaseNanoseconds: 100 * Self.ms, epoch: 1, now: 50 * Self.ms)
        // Frozen (SIGSTOP) for a second: the next grant is for an old beat.
        #expect(supervisor.granted(anchor: 60 * Self.ms, leaseNanoseconds: 100 * Self.ms, epoch: 1, now: 1_060 * Self.ms)
            == [.freeze(epoch: 1)])
        #expect(supervisor.workload == .frozen(epoch: 1, since: 1_060 * Self.ms))
    }
}

@Suite struct BackoffTests {
    @Test func doublesToTheCeilingWithJitterInTheUpperHalf() {
        var backoff = Backoff(initial: 100, maximum: 1_000)
        #expect(Backoff().maximum == 500_000_000, "a returning controller thaws workloads within half a second")
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
