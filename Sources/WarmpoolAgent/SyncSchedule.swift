/// When the agent pushes its volume to the CPU standby (`SyncTarget`), one rsync pass after
/// another. Pure: the runtime passes the time, the target and the lease in and carries out the
/// returned action; `nextAt` is the timer it sets.
///
/// Only the writer of the epoch the target belongs to pushes: an unexpired lease at that epoch,
/// not fenced. A fenced old primary's volume may already be behind the new primary's, and a pass
/// from it would overwrite the copy that is about to be promoted; so losing the lease, or the
/// target changing, cancels the pass in flight (the runtime kills rsync with its process group).
///
/// Passes run back to back with `gap` between them; a failed pass is retried after a backoff
/// that doubles from `initialBackoff` up to `maximumBackoff`.
struct SyncSchedule: Equatable, Sendable {
    enum State: String, Equatable, Sendable {
        /// No target (or a malformed one).
        case off
        /// A target, but this instance may not push to it (no lease at its epoch, or fenced).
        case waiting
        case syncing
        /// The last pass succeeded; the next one starts after the gap.
        case idle
        /// The last pass failed; the next one starts after the backoff.
        case failing
    }

    enum Action: Equatable, Sendable {
        case none
        case start(pass: Int, target: SyncTarget)
        /// Kill the running pass: the target changed, or this instance may no longer push.
        case cancel(pass: Int)
    }

    /// What one pass did: measured by the shell, wall clock where it goes into the manifest.
    struct PassResult: Equatable, Sendable {
        var startedAtWallMilliseconds: Int64
        var finishedAtWallMilliseconds: Int64
        /// Regular files and their bytes in the volume, as rsync counted them.
        var files: Int64
        var bytes: Int64
        /// What rsync sent over the wire; nil when its statistics could not be read.
        var sentBytes: Int64?
        /// Modified since the pass started (less the slack): what the copy may lack.
        var pendingFiles: Int64
        var pendingBytes: Int64
        var pendingTruncated = false
    }

    enum Outcome: Equatable, Sendable {
        case succeeded(PassResult)
        case failed(String)
    }

    /// The last pass that completed, as the manifest on the target says it.
    struct CompletedPass: Equatable, Sendable {
        var pass: Int
        /// Monotonic: the copy holds every write made before this (less the walk's slack).
        var startedAt: Int64
        var duration: Int64
        var result: PassResult
    }

    let gap: Int64
    let initialBackoff: Int64
    let maximumBackoff: Int64

    private(set) var target: SyncTarget?
    /// Why the target file is not usable; reported as the error while sync is off.
    private(set) var targetProblem: String?
    private(set) var running: (pass: Int, startedAt: Int64)?
    /// The last tick's verdict: may this instance push to the target now.
    private(set) var mayPush = false
    /// Monotonic; nil: at the next tick that may push.
    private(set) var nextAt: Int64?
    /// When this target was first pushed to: the lag before any pass completes counts from here.
    private(set) var beganAt: Int64?
    private(set) var lastPass: CompletedPass?
    /// Completed passes to this target.
    private(set) var passes = 0
    /// Passes started by this agent, every target counted: the last one's number.
    private var passesStarted = 0
    private(set) var failuresInARow = 0
    private(set) var lastError: String?

    init(gapNanoseconds: Int64 = 1_000_000_000, initialBackoffNanoseconds: Int64 = 1_000_000_000,
         maximumBackoffNanoseconds: Int64 = 30_000_000_000) {
        gap = max(0, gapNanoseconds)
        initialBackoff = max(1, initialBackoffNanoseconds)
        maximumBackoff = max(initialBackoff, maximumBackoffNanoseconds)
    }

    static func == (lhs: SyncSchedule, rhs: SyncSchedule) -> Bool {
        lhs.gap == rhs.gap && lhs.initialBackoff == rhs.initialBackoff && lhs.maximumBackoff == rhs.maximumBackoff
            && lhs.target == rhs.target && lhs.targetProblem == rhs.targetProblem && lhs.running?.pass == rhs.running?.pass
            && lhs.running?.startedAt == rhs.running?.startedAt && lhs.mayPush == rhs.mayPush && lhs.nextAt == rhs.nextAt
            && lhs.beganAt == rhs.beganAt && lhs.lastPass == rhs.lastPass && lhs.passes == rhs.passes
            && lhs.passesStarted == rhs.passesStarted && lhs.failuresInARow == rhs.failuresInARow && lhs.lastError == rhs.lastError
    }

    var state: State {
        guard target != nil else { return .off }
        if running != nil { return .syncing }
        guard mayPush else { return .waiting }
        if failuresInARow > 0 { return .failing }
        return lastPass == nil ? .waiting : .idle
    }

    /// The target file was read (again). A different target starts over: its copy is another
    /// machine's, and nothing measured against the old one says anything of it.
    mutating func targetRead(_ reading: SyncTargetReading, now: Int64) -> Action {
        let newTarget: SyncTarget?
        let problem: String?
        switch reading {
        case .absent: (newTarget, problem) = (nil, nil)
        case .malformed(let reason): (newTarget, problem) = (nil, reason)
        case .target(let target): (newTarget, problem) = (target, nil)
        }
        targetProblem = problem
        guard newTarget != target else { return .none }
        let cancelled = running.map { Action.cancel(pass: $0.pass) } ?? .none
        // Pass numbers go on across targets: a late result of the old target's pass can never be
        // taken for one of the new target's.
        let started = passesStarted
        self = SyncSchedule(gapNanoseconds: gap, initialBackoffNanoseconds: initialBackoff, maximumBackoffNanoseconds: maximumBackoff)
        passesStarted = started
        target = newTarget
        targetProblem = problem
        return cancelled
    }

    /// `leaseEpoch`: the epoch of the lease this instance holds, unexpired and not fenced; nil
    /// when it holds none.
    mutating func tick(now: Int64, leaseEpoch: UInt64?) -> Action {
        guard let target else {
            mayPush = false
            return .none
        }
        mayPush = leaseEpoch == target.epoch
        if let running {
            guard !mayPush else { return .none }
            self.running = nil
            return .cancel(pass: running.pass)
        }
        guard mayPush, now >= nextAt ?? now else { return .none }
        passesStarted += 1
        running = (passesStarted, now)
        if beganAt == nil { beganAt = now }
        return .start(pass: passesStarted, target: target)
    }

    /// A pass ended. One that was cancelled, or belongs to an older target, is not counted.
    mutating func finished(pass: Int, _ outcome: Outcome, now: Int64) {
        guard let running, running.pass == pass else { return }
        self.running = nil
        switch outcome {
        case .succeeded(let result):
            passes += 1
            lastPass = CompletedPass(pass: pass, startedAt: running.startedAt, duration: now - running.startedAt, result: result)
            failuresInARow = 0
            lastError = nil
            nextAt = now + gap
        case .failed(let reason):
            failuresInARow += 1
            lastError = reason
            let backoff = initialBackoff << Int64(min(failuresInARow - 1, 20))
            nextAt = now + min(backoff, maximumBackoff)
        }
    }

    /// How much of the volume's recent writes the copy lacks, in time: 0 when the last pass's walk
    /// found nothing pending, else since that pass started; before any pass completes, since the
    /// sync began. nil with no target, or before the first pass starts.
    func lag(now: Int64) -> Int64? {
        guard target != nil else { return nil }
        if let lastPass {
            return lastPass.result.pendingFiles == 0 ? 0 : max(0, now - lastPass.startedAt)
        }
        return beganAt.map { max(0, now - $0) }
    }
}
