/// Whether a pool would survive its primary's failure now, as a list of conditions in the style of
/// Kubernetes: each names one thing protection needs, with its status and why. `protected` is
/// true only when every condition that bears on protection is `ok`.
public struct PoolProtection: Sendable, Equatable {
    public var protected: Bool { conditions.allSatisfy { $0.ok || !$0.affectsProtection } }
    public var conditions: [PoolCondition]
    /// A degraded pool's place on the remediation ladder; nil when it is not degraded.
    public var remediation: Remediation?

    public init(conditions: [PoolCondition], remediation: Remediation? = nil) {
        self.conditions = conditions
        self.remediation = remediation
    }

    /// The first condition that makes the pool unprotected, for one-line summaries.
    public var firstProblem: PoolCondition? { conditions.first { !$0.ok && $0.affectsProtection } }

    public struct Remediation: Sendable, Equatable {
        /// `no_standby` or `needs_whole_host_recovery`.
        public var rung: String
        /// When the controller tries again by itself (`repair` tries now).
        public var nextRetryAt: Instant?
        public init(rung: String, nextRetryAt: Instant?) {
            self.rung = rung
            self.nextRetryAt = nextRetryAt
        }
    }
}

public struct PoolCondition: Sendable, Equatable {
    /// What must hold, e.g. `PrimaryHeartbeating`.
    public var type: String
    public var status: Bool
    /// One CamelCase word a program can match on.
    public var reason: String
    /// For people.
    public var message: String
    /// When `status` last changed (or the controller first evaluated it); nil when never evaluated.
    public var lastTransition: Instant?
    /// Kubernetes' negative polarity (`MemoryPressure`): true is the problem, e.g. `StandbyAtRisk`.
    public var problemWhenTrue = false
    /// false for conditions that inform (a maintenance announced for later) without making the
    /// pool unprotected now.
    public var affectsProtection = true
    /// As protection needs it.
    public var ok: Bool { status != problemWhenTrue }

    public init(type: String, status: Bool, reason: String, message: String, lastTransition: Instant?) {
        self.type = type
        self.status = status
        self.reason = reason
        self.message = message
        self.lastTransition = lastTransition
    }
}
