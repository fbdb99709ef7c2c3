import WarmpoolModel

/// How readiness polling behaves. All durations in nanoseconds.
public struct ReadinessPolicy: Hashable, Sendable {
    /// From the call to giving up.
    public var deadline: Duration
    /// The least time between the starts of two attempts. A refused connection costs one SYN and
    /// one RST, so polling fast is cheap; the time between sshd's `listen()` and our verdict is at
    /// most this plus one verification.
    public var pollInterval: Duration
    /// The connect timeout of a first attempt. It doubles after each connect that timed out (a
    /// far or slow host), up to `maximumConnectTimeout`, and is reset by any other outcome.
    public var connectTimeout: Duration
    public var maximumConnectTimeout: Duration
    /// The most one attempt may take, all phases together.
    public var attemptTimeout: Duration
    /// Failures worth another attempt: the instance is still coming up. Anything else ends the
    /// polling at once: a host key mismatch, a refused key or a wrong volume will not fix itself.
    public var retryable: Set<SSHFailure.Reason>

    public static let defaultRetryable: Set<SSHFailure.Reason> = [
        .refused, .timeout, .noBanner, .unreachable, .handshakeFailed, .commandFailed, .notMounted, .hostKeyUnattested,
    ]

    public init(deadline: Duration = .seconds(300), pollInterval: Duration = .milliseconds(10), connectTimeout: Duration = .milliseconds(250),
                maximumConnectTimeout: Duration = .seconds(2), attemptTimeout: Duration = .seconds(10),
                retryable: Set<SSHFailure.Reason> = ReadinessPolicy.defaultRetryable) {
        self.deadline = deadline
        self.pollInterval = max(.zero, pollInterval)
        self.connectTimeout = max(.milliseconds(1), connectTimeout)
        self.maximumConnectTimeout = max(self.connectTimeout, maximumConnectTimeout)
        self.attemptTimeout = max(.milliseconds(1), attemptTimeout)
        self.retryable = retryable.subtracting([.hostKeyMismatch, .deadlineExceeded])
    }
}

/// When to make each readiness attempt and when to stop. Pure: times are nanoseconds since the
/// polling began, passed in.
///
/// `waiting(attempt)` --`attemptFinished`--> `waiting(next)` | `done`. Attempts start at a fixed
/// rate (`pollInterval` after the previous start), or at once when the previous one took longer.
public struct ReadinessSchedule: Sendable {
    public struct Attempt: Hashable, Sendable {
        /// 1 for the first.
        public var number: Int
        public var startAt: Int64
        public var connectTimeout: Int64
        /// The attempt's own deadline: its timeout, capped by the overall deadline.
        public var deadline: Int64
    }

    public enum Decision: Hashable, Sendable {
        case attempt(Attempt)
        case verified
        /// Stop: the failure to report (terminal, or `deadlineExceeded` naming the last one).
        case giveUp(SSHFailure)
    }

    private enum State: Hashable {
        case waiting(Attempt, consecutiveConnectTimeouts: Int)
        case done
    }

    public let policy: ReadinessPolicy
    private var state: State

    public init(policy: ReadinessPolicy) {
        self.policy = policy
        let first = Attempt(number: 1, startAt: 0, connectTimeout: min(policy.connectTimeout.nanoseconds, max(0, policy.deadline.nanoseconds)),
                            deadline: min(policy.attemptTimeout.nanoseconds, policy.deadline.nanoseconds))
        state = .waiting(first, consecutiveConnectTimeouts: 0)
    }

    /// The attempt to make now, or nil once polling is over.
    public var pending: Attempt? {
        if case .waiting(let attempt, _) = state { return attempt }
        return nil
    }

    /// Feeds the outcome of the pending attempt (nil: verified) at time `now`.
    public mutating func attemptFinished(_ failure: SSHFailure?, now: Int64) -> Decision {
        guard case .waiting(let attempt, let connectTimeouts) = state else {
            return .giveUp(SSHFailure(.deadlineExceeded, "readiness polling already finished"))
        }
        guard let failure else {
            state = .done
            return .verified
        }
        guard policy.retryable.contains(failure.reason) else {
            state = .done
            return .giveUp(failure)
        }
        let timedOutConnecting = failure.reason == .timeout && failure.phase == .connect
        let nextConnectTimeouts = timedOutConnecting ? connectTimeouts + 1 : 0
        let startAt = max(now, attempt.startAt + policy.pollInterval.nanoseconds)
        guard startAt < policy.deadline.nanoseconds else {
            state = .done
            return .giveUp(SSHFailure(
                .deadlineExceeded,
                "not verified within \(policy.deadline.milliseconds) ms after \(attempt.number) attempt\(attempt.number == 1 ? "" : "s"); last: \(failure)"))
        }
        var connectTimeout = policy.connectTimeout.nanoseconds
        for _ in 0..<min(nextConnectTimeouts, 30) where connectTimeout < policy.maximumConnectTimeout.nanoseconds {
            connectTimeout = min(connectTimeout * 2, policy.maximumConnectTimeout.nanoseconds)
        }
        let deadline = min(startAt + policy.attemptTimeout.nanoseconds, policy.deadline.nanoseconds)
        let next = Attempt(number: attempt.number + 1, startAt: startAt, connectTimeout: min(connectTimeout, deadline - startAt),
                           deadline: deadline)
        state = .waiting(next, consecutiveConnectTimeouts: nextConnectTimeouts)
        return .attempt(next)
    }
}
