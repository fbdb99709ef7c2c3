/// Whether a pool would survive its primary's failure now, as a list of conditions in the style of
/// Kubernetes: each names one thing protection needs, with its status and why. `protected` is
/// true only when every condition holds.
public struct PoolProtection: Sendable, Equatable {
    public var protected: Bool { conditions.allSatisfy(\.status) }
    public var conditions: [PoolCondition]

    public init(conditions: [PoolCondition]) { self.conditions = conditions }

    /// The first condition that does not hold, for one-line summaries.
    public var firstProblem: PoolCondition? { conditions.first { !$0.status } }
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

    public init(type: String, status: Bool, reason: String, message: String, lastTransition: Instant?) {
        self.type = type
        self.status = status
        self.reason = reason
        self.message = message
        self.lastTransition = lastTransition
    }
}
