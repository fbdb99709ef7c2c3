/// When the agent runs the snapshot command (`warmpool-snapshot create`, a process of its own: the
/// agent links no libcurl). Pure: the runtime passes the time and the lease in and carries out the
/// decision.
///
/// Only the instance that may write `/data` snapshots it: one holding a lease and not fenced.
/// A snapshot is a copy of one writer's volume; a fenced instance's volume may already be the new
/// primary's, and a snapshot of it taken across the handover would be of neither. So a lease
/// lost mid-snapshot cancels it (the process is killed; `warmpool-snapshot` writes its manifest
/// last, so a killed run leaves no snapshot, only chunks the next run reuses).
///
/// The first snapshot is taken as soon as the lease is held (a new primary, or one restored onto
/// a new host, is snapshotted at once), the next `interval` after each start. A failed run is
/// retried after `retryDelay`, doubling up to `interval`.
struct SnapshotSchedule: Equatable, Sendable {
    enum Decision: Equatable, Sendable {
        case none
        case start
        /// Kill the running snapshot: this instance may no longer write the volume.
        case cancel
    }

    enum Outcome: Equatable, Sendable {
        case succeeded(id: String?)
        case failed(String)
    }

    let interval: Int64
    let retryDelay: Int64
    private(set) var running = false
    /// Monotonic; nil: at the next tick that may run.
    private(set) var nextAt: Int64?
    private(set) var lastSucceededAt: Int64?
    private(set) var lastID: String?
    private(set) var lastError: String?
    private(set) var failuresInARow = 0

    init(intervalNanoseconds: Int64, retryDelayNanoseconds: Int64 = 30_000_000_000) {
        interval = intervalNanoseconds
        retryDelay = min(retryDelayNanoseconds, intervalNanoseconds)
    }

    /// `mayWrite`: the agent holds a lease and is not fenced.
    mutating func tick(now: Int64, mayWrite: Bool) -> Decision {
        if running { return mayWrite ? .none : .cancel }
        guard mayWrite, now >= nextAt ?? now else { return .none }
        running = true
        nextAt = now + interval
        return .start
    }

    mutating func finished(_ outcome: Outcome, now: Int64) {
        running = false
        switch outcome {
        case .succeeded(let id):
            lastSucceededAt = now
            lastID = id
            lastError = nil
            failuresInARow = 0
        case .failed(let reason):
            lastError = reason
            failuresInARow += 1
            let backoff = retryDelay << Int64(min(failuresInARow - 1, 20))
            nextAt = now + min(backoff, interval)
        }
    }
}
