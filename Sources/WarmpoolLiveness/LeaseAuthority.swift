import WarmpoolModel
import WarmpoolWire

/// Who may be granted a lease, and under which epoch: the one answer the listener's grants, the
/// agents API and the failover engine all read. Pure; the hub holds it under its lock beside
/// the detector, which supplies the other half of every decision (is the agent live).
///
/// Each instance has a posture set by the failover engine. An instance with none is one no pool
/// claims: no failover can be under way for it, so its agent is granted leases at the
/// controller's epoch whenever it is live, a recovery included (PROTOCOL.md §7).
public struct LeaseAuthority: Sendable, Equatable {
    public enum Posture: Sendable, Equatable {
        /// No grant, whatever the detector thinks: the instance is being fenced or replaced.
        case revoked
        /// Grants carry this epoch (the pool's fencing token), not the controller's.
        case granted(epoch: Epoch)
        /// The agent failed while its instance was granted: a failover may be under way, and a
        /// renewed lease would let the old primary go on writing beside its replacement, so
        /// nothing is granted, through any recovery, until the engine rules (`grant`, `revoke`
        /// or `releaseHold`).
        case held(epoch: Epoch)

        /// The pool's epoch this posture was granted under; nil when revoked.
        public var epoch: Epoch? {
            switch self {
            case .revoked: nil
            case .granted(let epoch), .held(let epoch): epoch
            }
        }
    }

    /// What grants carry for an instance no pool claims, and what Welcome announces.
    public let controllerEpoch: Epoch
    /// By provider instance id; kept for instances whose agent is not connected (yet), so that
    /// an old primary that comes back after a controller restart is refused at once.
    private var postures: [InstanceID: Posture] = [:]

    public init(controllerEpoch: Epoch) {
        self.controllerEpoch = controllerEpoch
    }

    public func posture(of instance: InstanceID) -> Posture? { postures[instance] }

    /// The epoch a grant to a live agent on `instance` carries, or nil when it may have none. An
    /// instance no pool claims is granted at the controller's epoch if its agent runs as a primary
    /// (agents the controller only watches); a standby's agent, never: a lease lets the agent start
    /// its workload, and a standby booting beside the primary (a new one is made running, then
    /// stopped) must not write the shared volume. It is granted once the engine promotes it.
    public func grantEpoch(forLiveAgentOn instance: InstanceID, role: AgentRole = .primary) -> Epoch? {
        switch postures[instance] {
        case nil: role == .primary ? controllerEpoch : nil
        case .granted(let epoch)?: epoch
        case .revoked?, .held?: nil
        }
    }

    /// True while the engine withholds the instance's lease (revoked, or held after a failure).
    public func isWithheld(_ instance: InstanceID) -> Bool {
        switch postures[instance] {
        case .revoked?, .held?: true
        case .granted?, nil: false
        }
    }

    /// The detector failed the instance's agent. Called under the same lock as the detector, so
    /// no grant slips out between the failure and the engine hearing of it.
    public mutating func agentFailed(on instance: InstanceID) {
        if case .granted(let epoch)? = postures[instance] { postures[instance] = .held(epoch: epoch) }
    }

    public mutating func grant(_ instance: InstanceID, epoch: Epoch) { postures[instance] = .granted(epoch: epoch) }

    public mutating func revoke(_ instance: InstanceID) { postures[instance] = .revoked }

    /// The instance is gone for good (destroyed at the provider): nothing to grant or refuse.
    public mutating func forget(_ instance: InstanceID) { postures[instance] = nil }

    /// The engine's word, after a failure, that no failover began: the agent may be granted again
    /// at the epoch it held. Only a hold is released; a revocation stays.
    public mutating func releaseHold(_ instance: InstanceID) {
        if case .held(let epoch)? = postures[instance] { postures[instance] = .granted(epoch: epoch) }
    }
}
