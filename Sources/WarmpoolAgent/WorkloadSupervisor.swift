/// The agent's lease and the workload it supervises, as one state machine. Pure: the runtime passes
/// the time in and carries out the actions (PROTOCOL.md §7).
///
/// The lease: a grant for heartbeat n runs from the moment the agent *sent* beat n, not from when
/// the grant arrived: the controller measured its own lease from when it received that beat, which
/// was later, so the agent's lease always ends first.
///
/// The workload runs only while this agent holds a valid lease at the highest epoch it has seen.
/// Grants go only to the pool's current primary, so a standby, or an agent that (re)starts with no
/// lease, holds its workload back until its first grant.
///
///     lease:    none ──grant──▶ holding ──expiry──▶ lapsed ──grant, same epoch──▶ holding
///     workload: waiting ──grant──▶ running ──lease lapsed──▶ frozen ──grant, same epoch──▶ running (thawed)
///                                    │                          │
///                                    └──── a higher epoch (grant, Welcome, the volume) ──▶ killed (final)
///
/// A freeze is reversible: a controller that was away (restarted, upgraded, partitioned from its
/// side) grants again at the same epoch and nothing is lost. Only a newer epoch, proof that another
/// instance has been promoted, makes the fence final. A grant at an epoch below the highest seen is
/// refused: it comes from a controller (or a copy of one) that does not know of the promotion.
public struct WorkloadSupervisor: Sendable {
    private enum Lease: Hashable, Sendable {
        case none
        case holding(expiresAt: Int64, epoch: UInt64)
        /// Ran out at `epoch` at `since`; a grant at the same epoch renews it.
        case lapsed(epoch: UInt64, since: Int64)
    }

    public enum Workload: Hashable, Sendable {
        /// Not started: no lease yet, or this agent supervises nothing.
        case waiting
        case running(epoch: UInt64)
        case frozen(epoch: UInt64, since: Int64)
        /// Killed by a final fence; started again only at a newer epoch's grant.
        case killed(epoch: UInt64)
        /// Ended on its own (finished or crashed): not restarted.
        case exited(epoch: UInt64, status: Int32)
    }

    public enum Action: Hashable, Sendable {
        /// Start the workload, telling it its epoch.
        case start(epoch: UInt64)
        /// The lease ran out: freeze the workload and run the fence command.
        case freeze(epoch: UInt64)
        /// Granted again at the frozen epoch: thaw the workload (it stood frozen `frozenFor` ns).
        case thaw(epoch: UInt64, frozenFor: Int64)
        /// The final fence: a newer epoch exists, kill the workload.
        case kill(epoch: UInt64, reason: String)
        /// A grant below the highest epoch seen: ignored.
        case refuseGrant(epoch: UInt64, highest: UInt64)
    }

    public enum EpochSource: String, Hashable, Sendable {
        case welcome, volume
    }

    private var lease: Lease = .none
    public private(set) var workload: Workload = .waiting
    /// The highest epoch seen in a grant, a Welcome or the volume's epoch file.
    public private(set) var highestEpoch: UInt64 = 0
    /// Whether there is a workload to start (`-- COMMAND`); without one, freezes only run the fence command.
    public let supervises: Bool
    /// Clock rates differ a little; shave this fraction off every lease to stay on the safe side.
    private let driftAllowance: Double

    public init(supervises: Bool, driftAllowance: Double = 0.01) {
        self.supervises = supervises
        self.driftAllowance = driftAllowance
    }

    /// A workload left by a previous run of the agent (it was killed or crashed), frozen at start:
    /// with no lease it may not write. A grant at its epoch thaws it, a newer one kills it.
    public mutating func adopted(epoch: UInt64, now: Int64) {
        workload = .frozen(epoch: epoch, since: now)
        highestEpoch = max(highestEpoch, epoch)
    }

    /// `anchor`: when the acknowledged heartbeat was sent.
    public mutating func granted(anchor: Int64, leaseNanoseconds: Int64, epoch: UInt64, now: Int64) -> [Action] {
        guard epoch >= highestEpoch else { return [.refuseGrant(epoch: epoch, highest: highestEpoch)] }
        var actions = newEpoch(epoch, reason: "granted a lease at epoch \(epoch)")
        var lapsedSince: Int64?
        let expiry = anchor + Int64(Double(leaseNanoseconds) * (1 - driftAllowance))
        switch lease {
        case .holding(let current, let held) where held == epoch:
            lease = .holding(expiresAt: max(current, expiry), epoch: epoch)
        case .lapsed(let held, let since) where held == epoch:
            lapsedSince = since
            lease = .holding(expiresAt: expiry, epoch: epoch)
        default:
            lease = .holding(expiresAt: expiry, epoch: epoch)
        }
        // A grant anchored at a beat sent long ago may already have run out.
        guard holdsLease(now: now) else {
            if let lapsedSince { lease = .lapsed(epoch: epoch, since: lapsedSince) }
            return actions + tick(now: now)
        }
        switch workload {
        case .waiting where supervises, .killed:
            workload = .running(epoch: epoch)
            actions.append(.start(epoch: epoch))
        case .frozen(let frozenEpoch, let since) where frozenEpoch == epoch:
            workload = .running(epoch: epoch)
            actions.append(.thaw(epoch: epoch, frozenFor: now - since))
        case .waiting, .running, .frozen, .exited:
            // Nothing to thaw but the fence command's work (a workload the agent does not start).
            if let lapsedSince { actions.append(.thaw(epoch: epoch, frozenFor: now - lapsedSince)) }
        }
        return actions
    }

    public mutating func tick(now: Int64) -> [Action] {
        guard case .holding(let expiresAt, let epoch) = lease, now >= expiresAt else { return [] }
        lease = .lapsed(epoch: epoch, since: now)
        if case .running(let running) = workload {
            workload = .frozen(epoch: running, since: now)
        }
        return [.freeze(epoch: epoch)]
    }

    /// An epoch learnt from the controller's Welcome or the volume's epoch file.
    public mutating func learned(epoch: UInt64, from source: EpochSource, now: Int64) -> [Action] {
        guard epoch > highestEpoch else { return [] }
        return newEpoch(epoch, reason: "the \(source == .volume ? "volume" : "controller") is at epoch \(epoch)")
    }

    public mutating func workloadExited(status: Int32) {
        switch workload {
        case .running(let epoch), .frozen(let epoch, _): workload = .exited(epoch: epoch, status: status)
        case .waiting, .killed, .exited: break
        }
    }

    /// A newer epoch: a lease or workload of an older one is void, for good.
    private mutating func newEpoch(_ epoch: UInt64, reason: String) -> [Action] {
        guard epoch > highestEpoch else { return [] }
        highestEpoch = epoch
        switch lease {
        case .holding(_, let held) where held < epoch, .lapsed(let held, _) where held < epoch:
            lease = .none
        default:
            break
        }
        switch workload {
        case .running(let old) where old < epoch, .frozen(let old, _) where old < epoch:
            workload = .killed(epoch: old)
            return [.kill(epoch: old, reason: reason)]
        default:
            return []
        }
    }

    /// When the lease runs out, for scheduling the next check.
    public var expiresAt: Int64? {
        if case .holding(let expiresAt, _) = lease { return expiresAt }
        return nil
    }

    public func holdsLease(now: Int64) -> Bool {
        if case .holding(let expiresAt, _) = lease { return now < expiresAt }
        return false
    }

    /// The epoch of the lease that lapsed and has not been renewed: the agent is fenced.
    public var fencedAtEpoch: UInt64? {
        switch (lease, workload) {
        case (.lapsed(let epoch, _), _): epoch
        case (_, .frozen(let epoch, _)), (_, .killed(let epoch)): epoch
        default: nil
        }
    }

    /// The fence is final: the workload was killed because a newer epoch exists.
    public var fenceIsFinal: Bool {
        if case .killed = workload { return true }
        return false
    }

    /// The epoch the agent knows, for its Hello.
    public var knownEpoch: UInt64 { highestEpoch }
}
