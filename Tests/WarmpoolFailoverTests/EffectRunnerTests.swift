import Synchronization
import Testing
@testable import WarmpoolEngine
@testable import WarmpoolFailover
import WarmpoolModel

/// The runner's bookkeeping against real tasks and real sleeps (generous bounds only).
struct EffectRunnerTests {
    /// Counts calls; thread-safe.
    final class Calls: Sendable {
        private let names = Mutex<[String]>([])
        func add(_ name: String) { names.withLock { $0.append(name) } }
        var all: [String] { names.withLock { $0 } }
    }

    /// A blocking call that ignores cancellation (like a libcurl transfer on its thread), released by the test.
    final class Gate: Sendable {
        private let waiting = Mutex<CheckedContinuation<Void, Never>?>(nil)
        private let opened = Mutex(false)
        func wait() async {
            await withCheckedContinuation { continuation in
                let open = opened.withLock { $0 }
                if open { continuation.resume() } else { waiting.withLock { $0 = continuation } }
            }
        }
        var isWaiting: Bool { waiting.withLock { $0 != nil } }
        func open() {
            opened.withLock { $0 = true }
            waiting.withLock { $0.take() }?.resume()
        }
    }

    static func eventually(_ condition: () -> Bool) async -> Bool {
        for _ in 0..<200 {
            if condition() { return true }
            try? await Task.sleep(for: .milliseconds(10))
        }
        return condition()
    }

    @Test func finishedWorkIsDeliveredAndForgotten() async {
        let runner = EffectRunner()
        let calls = Calls()
        runner.run({ 42 }, deliver: { calls.add("delivered \($0)") })
        #expect(await Self.eventually { calls.all == ["delivered 42"] && runner.pending == 0 })
    }

    @Test func shutdownCancelsWaitingTimersAndDropsResultsStillInFlight() async {
        let runner = EffectRunner()
        let calls = Calls()
        let gate = Gate()
        runner.schedule(.timer(7, TimerID(rawValue: 1)), after: .seconds(60)) { calls.add("timer") }
        runner.run({ await gate.wait(); return "provider answer" }, deliver: { calls.add($0) })
        #expect(await Self.eventually { gate.isWaiting })
        #expect(runner.pending == 2)

        runner.shutdown()
        #expect(runner.pending == 0)
        // The blocking call ends after shutdown: its answer must not reach the coordinator.
        gate.open()
        try? await Task.sleep(for: .milliseconds(100))
        #expect(calls.all.isEmpty)

        // Nothing new starts once shut down.
        runner.run({ 1 }, deliver: { calls.add("late \($0)") })
        runner.schedule(.timer(7, TimerID(rawValue: 2)), after: .zero) { calls.add("late timer") }
        try? await Task.sleep(for: .milliseconds(100))
        #expect(calls.all.isEmpty && runner.pending == 0)
    }

    @Test func schedulingATimerAgainReplacesIt() async {
        let runner = EffectRunner()
        let calls = Calls()
        let key = EffectRunner.Key.timer(7, TimerID(rawValue: 1))
        runner.schedule(key, after: .milliseconds(50)) { calls.add("first") }
        runner.schedule(key, after: .milliseconds(60)) { calls.add("second") }
        #expect(await Self.eventually { calls.all == ["second"] })
        try? await Task.sleep(for: .milliseconds(100))
        #expect(calls.all == ["second"] && runner.pending == 0)
    }

    @Test func cancellingAPoolsTimersLeavesOtherPoolsAlone() async {
        let runner = EffectRunner()
        let calls = Calls()
        runner.schedule(.timer(7, TimerID(rawValue: 1)), after: .milliseconds(50)) { calls.add("pool 7") }
        runner.schedule(.timer(8, TimerID(rawValue: 1)), after: .milliseconds(50)) { calls.add("pool 8") }
        runner.schedule(.timer(7, TimerID(rawValue: 2)), after: .milliseconds(50)) { calls.add("pool 7 again") }
        runner.cancelTimers(of: 7)
        #expect(runner.pending == 1)
        #expect(await Self.eventually { calls.all == ["pool 8"] })
        runner.cancel(.timer(8, TimerID(rawValue: 1)))
        #expect(runner.pending == 0)
    }
}
