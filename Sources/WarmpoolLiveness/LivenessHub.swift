import Logging
import NIOConcurrencyHelpers
import WarmpoolModel
import WarmpoolWire

/// The state every controller connection shares: the failure detector, the keyring, the epoch and
/// the event log. Connections on any event loop call in; each call holds the lock only for the
/// detector's arithmetic.
public final class LivenessHub: Sendable {
    public struct Configuration: Sendable {
        public var detector: DetectorConfiguration
        /// How long a grant lets an agent's workload run without another.
        public var lease: Duration
        public var telemetryInterval: Duration
        /// From accept to an established session: a peer that takes longer is closed.
        public var handshakeTimeout: Duration

        public init(
            detector: DetectorConfiguration, lease: Duration = .seconds(2), telemetryInterval: Duration = .seconds(30),
            handshakeTimeout: Duration = .seconds(2)
        ) {
            self.detector = detector
            self.lease = lease
            self.telemetryInterval = telemetryInterval
            self.handshakeTimeout = handshakeTimeout
        }

        /// The lease as the wire's grants carry it.
        public var leaseMilliseconds: UInt32 { UInt32(clamping: lease.milliseconds) }

        public var terms: SessionTerms {
            SessionTerms(
                heartbeatIntervalMilliseconds: UInt32(clamping: detector.heartbeatInterval.milliseconds),
                silenceTimeoutMilliseconds: UInt32(clamping: detector.silenceTimeout.milliseconds),
                leaseMilliseconds: leaseMilliseconds, telemetryIntervalMilliseconds: UInt32(clamping: telemetryInterval.milliseconds))
        }

        /// Renew a session's lease once a quarter of it has passed: three grants can be lost in a
        /// row before the agent fences itself.
        var leaseRenewalNanoseconds: Int64 { lease.nanoseconds / 4 }
    }

    /// The failover engine's word on one instance's lease.
    public enum LeasePosture: Sendable, Equatable {
        /// No grant, whatever the detector thinks: the instance is being fenced or replaced.
        case revoked
        /// Grants carry this epoch (the pool's fencing token), not the controller-wide default.
        case granted(epoch: Epoch)
    }

    private struct Shared: Sendable {
        var tracker: LivenessTracker
        var keyring: Keyring
        var epoch: Epoch
        /// By provider instance id; kept for instances whose agent is not connected (yet), so an
        /// old primary that comes back after a controller restart is refused at once.
        var postures: [InstanceID: LeasePosture] = [:]
        /// Authenticated sessions, so that a revoked key ends them at once.
        var connections: [SessionID: (agentID: AgentID, instanceID: InstanceID, closer: any AgentConnectionCloser)] = [:]
        var nextSession: SessionID = 1
        var heartbeatsReceived: UInt64 = 0
    }

    public let configuration: Configuration
    public let bus: LivenessEventBus
    private let shared: NIOLockedValueBox<Shared>

    public init(configuration: Configuration, keyring: Keyring, epoch: Epoch, bus: LivenessEventBus) {
        self.configuration = configuration
        self.bus = bus
        self.shared = NIOLockedValueBox(
            Shared(tracker: LivenessTracker(configuration: configuration.detector), keyring: keyring, epoch: epoch))
    }

    /// A snapshot for a new connection: its keyring, epoch and session id.
    func openSession() -> (SessionID, Keyring, Epoch) {
        shared.withLockedValue { shared in
            defer { shared.nextSession += 1 }
            return (shared.nextSession, shared.keyring, shared.epoch)
        }
    }

    /// New handshakes use `keyring`; live sessions of agents whose secret is gone or changed, or
    /// whose key is now bound to another instance than the session named, are closed: a revoked
    /// key must not keep beating on a session it opened before.
    public func replaceKeyring(_ keyring: Keyring) {
        let revoked = shared.withLockedValue { shared -> [any AgentConnectionCloser] in
            let previous = shared.keyring
            shared.keyring = keyring
            return shared.connections.values.filter { entry in
                keyring.secret(for: entry.agentID) != previous.secret(for: entry.agentID)
                    || keyring.boundInstance(of: entry.agentID).map { $0 != entry.instanceID } == true
            }.map(\.closer)
        }
        for connection in revoked { connection.close() }
    }

    public var epoch: Epoch { shared.withLockedValue { $0.epoch } }

    public var heartbeatsReceived: UInt64 { shared.withLockedValue { $0.heartbeatsReceived } }

    public var connectedAgents: Int { shared.withLockedValue { $0.tracker.connectedAgentCount } }

    public func agentSnapshots() -> [AgentLivenessSnapshot] {
        let now = MonotonicClock.now()
        return shared.withLockedValue { $0.tracker.snapshots(now: now) }
    }

    public var leaseMilliseconds: UInt32 { configuration.leaseMilliseconds }

    func sessionEstablished(
        _ session: SessionID, agent: AgentIdentity, fencedAtEpoch: UInt64?, closer: any AgentConnectionCloser
    ) {
        let now = MonotonicClock.now()
        shared.withLockedValue { shared in
            shared.connections[session] = (agent.agentID, agent.instanceID, closer)
            bus.publish(
                shared.tracker.sessionEstablished(session, agent: agent, fencedAtEpoch: fencedAtEpoch, now: now))
        }
    }

    /// Records a heartbeat; returns the epoch to grant a lease under, when one is due and allowed.
    func heartbeat(
        _ session: SessionID, agentID: AgentID, sentAt: UInt64, status: AgentStatus, lastGrantAt: Int64?
    ) -> (now: Int64, leaseEpoch: Epoch?) {
        let now = MonotonicClock.now()
        return shared.withLockedValue { shared in
            shared.heartbeatsReceived += 1
            bus.publish(shared.tracker.heartbeat(session, agentID: agentID, sentAt: sentAt, status: status, now: now))
            let due = lastGrantAt.map { now - $0 >= configuration.leaseRenewalNanoseconds } ?? true
            guard due, shared.tracker.mayGrantLease(agentID: agentID) else { return (now, nil) }
            guard let instanceID = shared.tracker.instanceID(agentID: agentID), let posture = shared.postures[instanceID] else {
                return (now, shared.epoch)
            }
            switch posture {
            case .revoked: return (now, nil)
            case .granted(let epoch): return (now, epoch)
            }
        }
    }

    func sessionClosed(_ session: SessionID, agentID: AgentID, graceful: Bool) {
        let now = MonotonicClock.now()
        shared.withLockedValue { shared in
            shared.connections[session] = nil
            bus.publish(shared.tracker.sessionClosed(session, agentID: agentID, graceful: graceful, now: now))
        }
    }

    /// Stops every further grant to the instance's agents; they fence themselves when the lease
    /// in hand runs out. Takes effect before the next grant on any connection.
    public func revokeLease(instanceID: InstanceID) {
        shared.withLockedValue { $0.postures[instanceID] = .revoked }
    }

    /// The instance's agents may hold leases again, at `epoch`.
    public func grantLease(instanceID: InstanceID, epoch: Epoch) {
        shared.withLockedValue { shared in
            shared.postures[instanceID] = .granted(epoch: epoch)
            for agentID in shared.tracker.agentIDs(instanceID: instanceID) { shared.tracker.restoreLease(agentID: agentID) }
        }
    }

    public func leasePosture(instanceID: InstanceID) -> LeasePosture? {
        shared.withLockedValue { $0.postures[instanceID] }
    }

    /// See `LivenessTracker.restoreLease`.
    @discardableResult
    public func restoreLease(agentID: AgentID) -> Bool {
        shared.withLockedValue { $0.tracker.restoreLease(agentID: agentID) }
    }

    func tick() {
        let now = MonotonicClock.now()
        shared.withLockedValue { shared in bus.publish(shared.tracker.tick(now: now)) }
    }
}
