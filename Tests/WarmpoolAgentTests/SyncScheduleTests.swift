import Testing

@testable import WarmpoolAgent

/// The sync schedule as a pure machine: time, lease and target passed in, actions compared whole.
@Suite struct SyncScheduleTests {
    static let second: Int64 = 1_000_000_000
    static let target = SyncTarget(
        name: "wp-7-cpu-1", host: "10.88.0.5", path: "/data", identity: "-----BEGIN OPENSSH PRIVATE KEY-----\n",
        hostKey: "ssh-ed25519 AAAA", epoch: 3)

    static func result(startedAt: Int64 = 0, pendingFiles: Int64 = 0) -> SyncSchedule.PassResult {
        SyncSchedule.PassResult(
            startedAtWallMilliseconds: startedAt, finishedAtWallMilliseconds: startedAt + 10, files: 2, bytes: 20, sentBytes: 30,
            pendingFiles: pendingFiles, pendingBytes: pendingFiles * 100)
    }

    static func withTarget() -> SyncSchedule {
        var schedule = SyncSchedule()
        #expect(schedule.targetRead(.target(target), now: 0) == .none)
        return schedule
    }

    @Test func offWithoutTarget() {
        var schedule = SyncSchedule()
        #expect(schedule.tick(now: 0, leaseEpoch: 3) == .none)
        #expect(schedule.state == .off)
        #expect(schedule.lag(now: 5) == nil)
        #expect(schedule.targetRead(.malformed("sync target: \"port\" must be an integer"), now: 1) == .none)
        #expect(schedule.state == .off)
        #expect(schedule.targetProblem == "sync target: \"port\" must be an integer")
    }

    @Test func pushesOnlyUnderALeaseAtTheTargetsEpoch() {
        var schedule = Self.withTarget()
        #expect(schedule.tick(now: 0, leaseEpoch: nil) == .none)
        #expect(schedule.state == .waiting)
        #expect(schedule.tick(now: 1, leaseEpoch: 2) == .none, "a lease at an older epoch is not this target's")
        #expect(schedule.tick(now: 2, leaseEpoch: 4) == .none, "nor a newer one")
        #expect(schedule.tick(now: 3, leaseEpoch: 3) == .start(pass: 1, target: Self.target))
        #expect(schedule.state == .syncing)
        #expect(schedule.tick(now: 4, leaseEpoch: 3) == .none, "one pass at a time")
    }

    @Test func leaseLossCancelsThePassAndIgnoresItsEnd() {
        var schedule = Self.withTarget()
        #expect(schedule.tick(now: 0, leaseEpoch: 3) == .start(pass: 1, target: Self.target))
        #expect(schedule.tick(now: Self.second, leaseEpoch: nil) == .cancel(pass: 1))
        #expect(schedule.state == .waiting)
        schedule.finished(pass: 1, .succeeded(Self.result()), now: 2 * Self.second)
        #expect(schedule.passes == 0, "a cancelled pass never counts")
        #expect(schedule.tick(now: 3 * Self.second, leaseEpoch: 3) == .start(pass: 2, target: Self.target))
    }

    @Test func passesRunBackToBackWithTheGap() {
        var schedule = Self.withTarget()
        #expect(schedule.tick(now: 0, leaseEpoch: 3) == .start(pass: 1, target: Self.target))
        schedule.finished(pass: 1, .succeeded(Self.result()), now: 5 * Self.second)
        #expect(schedule.state == .idle)
        #expect(schedule.nextAt == 6 * Self.second)
        #expect(schedule.tick(now: 6 * Self.second - 1, leaseEpoch: 3) == .none)
        #expect(schedule.tick(now: 6 * Self.second, leaseEpoch: 3) == .start(pass: 2, target: Self.target))
        #expect(schedule.lastPass?.duration == 5 * Self.second)
    }

    @Test func failuresBackOffDoublingToThirtySeconds() {
        var schedule = Self.withTarget()
        var now: Int64 = 0
        var delays: [Int64] = []
        for pass in 1...8 {
            #expect(schedule.tick(now: now, leaseEpoch: 3) == .start(pass: pass, target: Self.target))
            schedule.finished(pass: pass, .failed("rsync exit status 255: Host key verification failed."), now: now)
            #expect(schedule.state == .failing)
            delays.append(schedule.nextAt! - now)
            #expect(schedule.tick(now: schedule.nextAt! - 1, leaseEpoch: 3) == .none)
            now = schedule.nextAt!
        }
        #expect(delays == [1, 2, 4, 8, 16, 30, 30, 30].map { $0 * Self.second })
        #expect(schedule.failuresInARow == 8)
        #expect(schedule.lastError == "rsync exit status 255: Host key verification failed.")
        #expect(schedule.tick(now: now, leaseEpoch: 3) == .start(pass: 9, target: Self.target))
        schedule.finished(pass: 9, .succeeded(Self.result()), now: now)
        #expect(schedule.failuresInARow == 0 && schedule.lastError == nil && schedule.nextAt == now + Self.second)
    }

    @Test func aChangedTargetCancelsAndStartsOver() {
        var schedule = Self.withTarget()
        #expect(schedule.tick(now: 0, leaseEpoch: 3) == .start(pass: 1, target: Self.target))
        schedule.finished(pass: 1, .succeeded(Self.result()), now: Self.second)
        #expect(schedule.tick(now: 2 * Self.second, leaseEpoch: 3) == .start(pass: 2, target: Self.target))
        #expect(schedule.targetRead(.target(Self.target), now: 2 * Self.second) == .none, "the same target again changes nothing")
        var moved = Self.target
        moved.epoch = 4
        #expect(schedule.targetRead(.target(moved), now: 3 * Self.second) == .cancel(pass: 2))
        #expect(schedule.passes == 0 && schedule.lastPass == nil && schedule.running == nil)
        schedule.finished(pass: 2, .succeeded(Self.result()), now: 4 * Self.second)
        #expect(schedule.passes == 0)
        #expect(schedule.tick(now: 4 * Self.second, leaseEpoch: 3) == .none, "the new target is epoch 4's")
        #expect(schedule.tick(now: 4 * Self.second, leaseEpoch: 4) == .start(pass: 3, target: moved), "numbers are never reused")
        schedule.finished(pass: 2, .succeeded(Self.result()), now: 4 * Self.second)
        #expect(schedule.passes == 0 && schedule.running?.pass == 3, "the old target's late result is not the new pass's")
        #expect(schedule.targetRead(.absent, now: 5 * Self.second) == .cancel(pass: 3))
        #expect(schedule.state == .off)
    }

    @Test func lagCountsFromTheLastPassThatLeftWritesBehind() {
        var schedule = Self.withTarget()
        #expect(schedule.lag(now: 0) == nil, "nothing started yet")
        #expect(schedule.tick(now: 10 * Self.second, leaseEpoch: 3) == .start(pass: 1, target: Self.target))
        #expect(schedule.lag(now: 12 * Self.second) == 2 * Self.second, "before any pass completes: since the sync began")
        schedule.finished(pass: 1, .succeeded(Self.result(pendingFiles: 3)), now: 14 * Self.second)
        #expect(schedule.lag(now: 15 * Self.second) == 5 * Self.second, "writes since pass 1 started are missing")
        #expect(schedule.tick(now: 15 * Self.second, leaseEpoch: 3) == .start(pass: 2, target: Self.target))
        schedule.finished(pass: 2, .succeeded(Self.result(pendingFiles: 0)), now: 16 * Self.second)
        #expect(schedule.lag(now: 20 * Self.second) == 0)
    }
}
