import Synchronization
import WarmpoolEngine
import WarmpoolModel

/// Runs the coordinator's side effects (provider commands, verifications, timers) as tasks it keeps
/// track of, so that shutdown cancels every one of them and a removed pool's timers stop.
///
/// A task's result is handed back only if the task was not cancelled: after `shutdown()` (or
/// `cancel(_:)`) nothing reaches the coordinator, even from a blocking call that ran on to its end.
final class EffectRunner: Sendable {
    /// What a tracked task is known by: a pool's timer (so it can be cancelled or replaced), or a
    /// number (an effect, cancelled only by shutdown).
    enum Key: Hashable, Sendable {
        case timer(PoolID, TimerID)
        /// The grace a primary's agent gets to come back after a Goodbye.
        case goodbye(PoolID)
        case effect(UInt64)
    }

    private struct Tracked {
        var generation: UInt64
        var task: Task<Void, Never>
    }

    private struct State {
        var tasks: [Key: Tracked] = [:]
        var generation: UInt64 = 0
        var shutDown = false
    }

    private let state = Mutex(State())

    init() {}

    /// Starts `work`, then `deliver` with its result unless the task was cancelled meanwhile.
    func run<Result: Sendable>(
        _ work: @escaping @Sendable () async -> Result, deliver: @escaping @Sendable (Result) async -> Void
    ) {
        start(key: nil) {
            let result = await work()
            guard !Task.isCancelled else { return }
            await deliver(result)
        }
    }

    /// Calls `fire` after `delay`, unless the timer is cancelled or replaced first. One task per
    /// key: scheduling a key again replaces the earlier one.
    func schedule(_ key: Key, after delay: Duration, fire: @escaping @Sendable () async -> Void) {
        start(key: key) {
            if delay > .zero { try? await Task.sleep(for: delay) }
            guard !Task.isCancelled else { return }
            await fire()
        }
    }

    func cancel(_ key: Key) {
        state.withLock { $0.tasks.removeValue(forKey: key) }?.task.cancel()
    }

    /// Cancels every timer of one pool: a pool that is gone has nothing to wake up for.
    func cancelTimers(of pool: PoolID) {
        let cancelled = state.withLock { state -> [Tracked] in
            let keys = state.tasks.keys.filter {
                switch $0 {
                case .timer(pool, _), .goodbye(pool): true
                default: false
                }
            }
            return keys.compactMap { state.tasks.removeValue(forKey: $0) }
        }
        for tracked in cancelled { tracked.task.cancel() }
    }

    /// Cancels everything running or waiting and refuses new work. A blocking call in flight (a
    /// provider request on its thread pool) runs on to its own timeout, but its result is dropped.
    func shutdown() {
        let cancelled = state.withLock { state -> [Tracked] in
            state.shutDown = true
            defer { state.tasks.removeAll() }
            return Array(state.tasks.values)
        }
        for tracked in cancelled { tracked.task.cancel() }
    }

    /// Tasks started and neither finished nor cancelled.
    var pending: Int { state.withLock { $0.tasks.count } }

    private func start(key: Key?, _ body: @escaping @Sendable () async -> Void) {
        let replaced = state.withLock { state -> Tracked? in
            guard !state.shutDown else { return nil }
            state.generation += 1
            let generation = state.generation
            let key = key ?? .effect(generation)
            // Created under the lock, so the task cannot finish (and remove itself) before it is in.
            let task = Task { [weak self] in
                await body()
                self?.finished(key, generation: generation)
            }
            return state.tasks.updateValue(Tracked(generation: generation, task: task), forKey: key)
        }
        replaced?.task.cancel()
    }

    /// Removes a finished task's entry, unless a later task has taken its key since.
    private func finished(_ key: Key, generation: UInt64) {
        state.withLock { state in
            if state.tasks[key]?.generation == generation { state.tasks[key] = nil }
        }
    }
}
