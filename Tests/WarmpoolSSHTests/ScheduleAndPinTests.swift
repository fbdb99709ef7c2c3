import Foundation
import Testing
@testable import WarmpoolSSH
import WarmpoolModel

#if canImport(Glibc)
import Glibc
#endif

private let ms: Int64 = 1_000_000

@Suite struct ReadinessScheduleTests {
    let policy = ReadinessPolicy(deadline: .milliseconds(1_000), pollInterval: .milliseconds(10), connectTimeout: .milliseconds(100),
                                 maximumConnectTimeout: .milliseconds(400), attemptTimeout: .milliseconds(500))

    func attempt(_ decision: ReadinessSchedule.Decision) -> ReadinessSchedule.Attempt? {
        if case .attempt(let attempt) = decision { return attempt }
        return nil
    }

    @Test func theFirstAttemptStartsAtOnce() {
        let schedule = ReadinessSchedule(policy: policy)
        #expect(schedule.pending == .init(number: 1, startAt: 0, connectTimeout: 100 * ms, deadline: 500 * ms))
    }

    @Test func fastFailuresArePolledAtTheInterval() {
        var schedule = ReadinessSchedule(policy: policy)
        let next = attempt(schedule.attemptFinished(SSHFailure(.refused, phase: .connect, "refused"), now: 1 * ms))
        #expect(next == .init(number: 2, startAt: 10 * ms, connectTimeout: 100 * ms, deadline: 510 * ms))
        #expect(schedule.pending == next)
    }

    @Test func slowFailuresAreRetriedAtOnce() {
        var schedule = ReadinessSchedule(policy: policy)
        let next = attempt(schedule.attemptFinished(SSHFailure(.noBanner, phase: .handshake, "closed"), now: 50 * ms))
        #expect(next?.startAt == 50 * ms)
    }

    @Test func connectTimeoutsDoubleUpToTheMaximumAndResetOnAnythingElse() {
        var schedule = ReadinessSchedule(policy: policy)
        let timeout = SSHFailure(.timeout, phase: .connect, "no answer")
        var now: Int64 = 0
        var seen: [Int64] = []
        for _ in 0..<4 {
            now += 100 * ms
            seen.append(attempt(schedule.attemptFinished(timeout, now: now))!.connectTimeout)
        }
        #expect(seen == [200 * ms, 400 * ms, 400 * ms, 400 * ms])
        let reset = attempt(schedule.attemptFinished(SSHFailure(.refused, phase: .connect, "refused"), now: now + ms))
        #expect(reset?.connectTimeout == 100 * ms)
        // A timeout in a later phase is not a slow network path: no doubling.
        let later = attempt(schedule.attemptFinished(SSHFailure(.timeout, phase: .command, "slow"), now: now + 20 * ms))
        #expect(later?.connectTimeout == 100 * ms)
    }

    @Test func anAttemptNeverOutlivesTheOverallDeadline() {
        var schedule = ReadinessSchedule(policy: policy)
        let next = attempt(schedule.attemptFinished(SSHFailure(.refused, phase: .connect, "refused"), now: 950 * ms))
        #expect(next == .init(number: 2, startAt: 950 * ms, connectTimeout: 50 * ms, deadline: 1_000 * ms))
    }

    @Test func theDeadlineEndsPollingNamingTheLastFailure() {
        var schedule = ReadinessSchedule(policy: policy)
        let decision = schedule.attemptFinished(SSHFailure(.refused, phase: .connect, "connection refused"), now: 1_000 * ms)
        guard case .giveUp(let failure) = decision else {
            Issue.record("expected giveUp, got \(decision)")
            return
        }
        #expect(failure.reason == .deadlineExceeded)
        #expect(failure.detail == "not verified within 1000 ms after 1 attempt; last: refused: connection refused")
        #expect(schedule.pending == nil)
    }

    @Test(arguments: [SSHFailure.Reason.hostKeyMismatch, .authRefused, .keyUnusable, .wrongVolume, .readOnly])
    func failuresThatWillNotFixThemselvesStopAtOnce(reason: SSHFailure.Reason) {
        var schedule = ReadinessSchedule(policy: policy)
        let decision = schedule.attemptFinished(SSHFailure(reason, "x"), now: ms)
        #expect(decision == .giveUp(SSHFailure(reason, "x")))
        #expect(schedule.pending == nil)
    }

    @Test func aHostKeyMismatchIsNeverRetriedWhateverThePolicySays() {
        let policy = ReadinessPolicy(deadline: policy.deadline, retryable: Set(SSHFailure.Reason.allCases))
        #expect(!policy.retryable.contains(.hostKeyMismatch))
        var schedule = ReadinessSchedule(policy: policy)
        let decision = schedule.attemptFinished(SSHFailure(.hostKeyMismatch, "x"), now: ms)
        #expect(decision == .giveUp(SSHFailure(.hostKeyMismatch, "x")))
    }

    @Test func aNotYetMountedVolumeIsWaitedFor() {
        var schedule = ReadinessSchedule(policy: policy)
        let retry = schedule.attemptFinished(SSHFailure(.notMounted, "not a mount point"), now: 90 * ms)
        #expect(attempt(retry) != nil)
        let done = schedule.attemptFinished(nil, now: 200 * ms)
        #expect(done == .verified)
        #expect(schedule.pending == nil)
    }
}

@Suite struct PinStoreTests {
    @Test func inMemoryPinsOnceAndNeverReplaces() async {
        let store = InMemoryHostKeyPinStore()
        #expect(await store.pinnedFingerprint(for: 1) == nil)
        #expect(await store.pinIfAbsent("SHA256:a", for: 1) == "SHA256:a")
        #expect(await store.pinIfAbsent("SHA256:b", for: 1) == "SHA256:a")
        #expect(await store.pinnedFingerprint(for: 1) == "SHA256:a")
        await store.removePin(for: 1)
        #expect(await store.pinnedFingerprint(for: 1) == nil)
    }

    func temporaryPath() throws -> (directory: String, file: String) {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("warmpool-pins-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        return (directory, directory + "/pins.json")
    }

    @Test func theFileStorePersistsAtomicallyWithMode0600() async throws {
        let (directory, path) = try temporaryPath()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let store = try FileHostKeyPinStore(path: path)
        #expect(await store.pinnedFingerprint(for: 4242) == nil)
        #expect(!FileManager.default.fileExists(atPath: path), "nothing written before the first pin")
        #expect(try await store.pinIfAbsent("SHA256:first", for: 4242) == "SHA256:first")
        #expect(try await store.pinIfAbsent("SHA256:second", for: 4242) == "SHA256:first")
        _ = try await store.pinIfAbsent("SHA256:other", for: 77)

        #expect(try FileManager.default.contentsOfDirectory(atPath: directory) == ["pins.json"], "no temporary file left")
        var info = stat()
        let statted = stat(path, &info)
        #expect(statted == 0 && info.st_mode & 0o777 == 0o600)

        let reloaded = try FileHostKeyPinStore(path: path)
        #expect(await reloaded.pinnedFingerprint(for: 4242) == "SHA256:first")
        #expect(await reloaded.pinnedFingerprint(for: 77) == "SHA256:other")
        #expect(await reloaded.entry(for: 4242)?.pinnedAt.hasSuffix("Z") == true)

        try await reloaded.removePin(for: 77)
        let again = try FileHostKeyPinStore(path: path)
        #expect(await again.pinnedFingerprint(for: 77) == nil)
        let json = try String(contentsOfFile: path, encoding: .utf8)
        #expect(json.contains("\"version\" : 1") && json.contains("\"pinned_at\""))
    }

    @Test func aDamagedFileIsAnErrorNotAnEmptyStore() throws {
        let (directory, path) = try temporaryPath()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        try "{\"version\":1,\"pins\":".write(toFile: path, atomically: true, encoding: .utf8)
        #expect(throws: FileHostKeyPinStore.StoreError.self) { try FileHostKeyPinStore(path: path) }
        try "{\"version\":2,\"pins\":{}}".write(toFile: path, atomically: true, encoding: .utf8)
        #expect(throws: FileHostKeyPinStore.StoreError.self) { try FileHostKeyPinStore(path: path) }
    }
}
