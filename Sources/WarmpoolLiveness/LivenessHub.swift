import Logging
import NIOConcurrencyHelpers
import WarmpoolJSON
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
        public var limits: ConnectionLimits

        public init(
            detector: DetectorConfiguration, lease: Duration = .seconds(2), telemetryInterval: Duration = .seconds(30),
            handshakeTimeout: Duration = .seconds(2), limits: ConnectionLimits = ConnectionLimits()
        ) {
            self.detector = detector
            self.lease = lease
            self.telemetryInterval = telemetryInterval
            self.handshakeTimeout = handshakeTimeout
            self.limits = limits
        }

        /// The idle timeout in force: the configured one, but never under ten heartbeat intervals.
        var sessionIdleTimeout: Duration { max(limits.idleTimeout, detector.heartbeatInterval * 10) }

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

    public typealias LeasePosture = LeaseAuthority.Posture

    private struct Shared: Sendable {
        var tracker: LivenessTracker
        var keyring: Keyring
        var leases: LeaseAuthority
        /// Authenticated sessions, so that a revoked key ends them at once.
        var connections: [SessionID: (agentID: AgentID, instanceID: InstanceID, closer: any AgentConnectionCloser)] = [:]
        var nextSession: SessionID = 1
        var heartbeatsReceived: UInt64 = 0
        /// The sshd host key each agent last reported in Telemetry, with the instance its session
        /// named. Kept whatever the agent's binding: the binding is judged when the key is asked
        /// for (an agent may report before the controller has recorded its instance).
        var hostKeys: [AgentID: (instanceID: InstanceID, fingerprint: String)] = [:]
        /// Telemetry's `checkpoint` and `snapshot`, by the instance the session named.
        var recoveryPoints: [InstanceID: RecoveryPointReport] = [:]
        /// Telemetry's `sync`, by the instance the session named.
        var syncReports: [InstanceID: SyncReport] = [:]
    }

    public let configuration: Configuration
    public let bus: LivenessEventBus
    private let shared: NIOLockedValueBox<Shared>

    public init(configuration: Configuration, keyring: Keyring, epoch: Epoch, bus: LivenessEventBus) {
        self.configuration = configuration
        self.bus = bus
        self.shared = NIOLockedValueBox(
            Shared(
                tracker: LivenessTracker(configuration: configuration.detector), keyring: keyring,
                leases: LeaseAuthority(controllerEpoch: epoch)))
    }

    /// A snapshot for a new connection: its keyring, epoch and session id.
    func openSession() -> (SessionID, Keyring, Epoch) {
        shared.withLockedValue { shared in
            defer { shared.nextSession += 1 }
            return (shared.nextSession, shared.keyring, shared.leases.controllerEpoch)
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

    public var epoch: Epoch { shared.withLockedValue { $0.leases.controllerEpoch } }

    public var heartbeatsReceived: UInt64 { shared.withLockedValue { $0.heartbeatsReceived } }

    public var connectedAgents: Int { shared.withLockedValue { $0.tracker.connectedAgentCount } }

    public func agentSnapshots() -> [AgentLivenessSnapshot] {
        let now = MonotonicClock.now()
        return shared.withLockedValue { shared in
            shared.tracker.snapshots(now: now).map { snapshot in
                var snapshot = snapshot
                snapshot.leaseEpoch = Self.leaseEpoch(for: snapshot.identity.agentID, in: shared)
                snapshot.leaseWithheld = shared.leases.isWithheld(snapshot.identity.instanceID)
                return snapshot
            }
        }
    }

    /// The epoch a grant to this agent would carry now, or nil when it may have none.
    private static func leaseEpoch(for agentID: AgentID, in shared: Shared) -> Epoch? {
        guard shared.tracker.isLive(agentID: agentID), let identity = shared.tracker.identity(agentID: agentID) else {
            return nil
        }
        return shared.leases.grantEpoch(forLiveAgentOn: identity.instanceID, role: identity.role)
    }

    /// Publishes the detector's events, the lease authority hearing of each failure first.
    private func publish(_ events: [LivenessEvent], in shared: inout Shared) {
        for event in events where event.kind == .failed { shared.leases.agentFailed(on: event.agent.instanceID) }
        bus.publish(events)
    }

    public var leaseMilliseconds: UInt32 { configuration.leaseMilliseconds }

    /// What `admit` decided: the session's agent slot (what its beats go by), or why not.
    enum Admission: Equatable {
        case admitted(AgentSlot)
        case refused(String)
    }

    /// Registers an authenticated session, or returns why it may not be registered. `secret` is
    /// the one the handshake was checked against, from the keyring of the moment it began: a key
    /// revoked, changed or bound elsewhere while the handshake was in flight is refused here, as
    /// a live session's would be by `replaceKeyring`.
    func admit(
        _ session: SessionID, agent: AgentIdentity, secret: AgentSecret?, fencedAtEpoch: UInt64?,
        closer: any AgentConnectionCloser
    ) -> Admission {
        let now = MonotonicClock.now()
        return shared.withLockedValue { shared in
            guard let current = shared.keyring.secret(for: agent.agentID), current == secret else {
                return .refused("the agent's key was revoked or changed during the handshake")
            }
            if let bound = shared.keyring.boundInstance(of: agent.agentID), bound != agent.instanceID {
                return .refused("the agent's key was bound to instance \(bound) during the handshake")
            }
            let open = shared.tracker.openSessions(agentID: agent.agentID)
            guard open < configuration.limits.sessionsPerAgent else {
                return .refused("the agent already holds \(open) sessions, the most one agent may")
            }
            shared.connections[session] = (agent.agentID, agent.instanceID, closer)
            publish(
                shared.tracker.sessionEstablished(session, agent: agent, fencedAtEpoch: fencedAtEpoch, now: now),
                in: &shared)
            // sessionEstablished has just filed the agent: it has a slot.
            return .admitted(shared.tracker.slot(agentID: agent.agentID)!)
        }
    }

    /// Records a heartbeat on a session admitted under `slot`; returns the epoch to grant a lease
    /// under, when one is due and allowed. The hot path: no lookup by the agent's id.
    func heartbeat(
        _ session: SessionID, slot: AgentSlot, sentAt: UInt64, status: AgentStatus, lastGrantAt: Int64?
    ) -> (now: Int64, leaseEpoch: Epoch?) {
        let now = MonotonicClock.now()
        return shared.withLockedValue { shared in
            shared.heartbeatsReceived += 1
            let events = shared.tracker.heartbeat(session, slot: slot, sentAt: sentAt, status: status, now: now)
            if !events.isEmpty { publish(events, in: &shared) }
            let due = lastGrantAt.map { now - $0 >= configuration.leaseRenewalNanoseconds } ?? true
            guard due, let agent = shared.tracker.identity(slot: slot), agent.isLive else { return (now, nil) }
            return (now, shared.leases.grantEpoch(forLiveAgentOn: agent.identity.instanceID, role: agent.identity.role))
        }
    }

    func sessionClosed(_ session: SessionID, agentID: AgentID, graceful: Bool) {
        let now = MonotonicClock.now()
        shared.withLockedValue { shared in
            shared.connections[session] = nil
            publish(shared.tracker.sessionClosed(session, agentID: agentID, graceful: graceful, now: now), in: &shared)
        }
    }

    /// Stops every further grant to the instance's agents; they fence themselves when the lease
    /// in hand runs out. Takes effect before the next grant on any connection.
    public func revokeLease(instanceID: InstanceID) {
        shared.withLockedValue { $0.leases.revoke(instanceID) }
    }

    /// The instance's agents may hold leases again, at `epoch`.
    public func grantLease(instanceID: InstanceID, epoch: Epoch) {
        shared.withLockedValue { $0.leases.grant(instanceID, epoch: epoch) }
    }

    /// The failover engine's word, after a failure, that no failover began for this instance:
    /// its agent may be granted again at the epoch it held. Only a hold is released; a
    /// revocation stays.
    public func releaseHold(instanceID: InstanceID) {
        shared.withLockedValue { $0.leases.releaseHold(instanceID) }
    }

    public func leasePosture(instanceID: InstanceID) -> LeasePosture? {
        shared.withLockedValue { $0.leases.posture(of: instanceID) }
    }

    /// Reads the host key and the recovery point out of an authenticated Telemetry document.
    /// Returns why (part of) the document was not usable, for the connection's log; the session
    /// stays open either way, and a bad key spoils only itself.
    func telemetryReceived(_ session: SessionID, document: [UInt8]) -> String? {
        let parsed: JSONValue
        do {
            parsed = try JSONParser.parse(document)
        } catch {
            return "telemetry is not JSON: \(error)"
        }
        guard parsed.objectValue != nil else { return "telemetry is not a JSON object" }
        let now = MonotonicClock.now()
        var problem: String?
        var fingerprint: String?
        if let value = parsed["ssh_host_key"] {
            if let text = value.stringValue, HostKeyFingerprint.isWellFormed(text) {
                fingerprint = text
            } else {
                problem = "telemetry's ssh_host_key is not a SHA256 fingerprint"
            }
        }
        let recoveryPoint = RecoveryPointReport(telemetry: parsed, receivedAt: now)
        let sync = SyncReport(telemetry: parsed, receivedAt: now)
        if parsed["sync"] != nil, sync == nil { problem = problem ?? "telemetry's sync is malformed (dropped)" }
        shared.withLockedValue { shared in
            guard let connection = shared.connections[session] else { return }
            if let recoveryPoint { shared.recoveryPoints[connection.instanceID] = recoveryPoint }
            // An agent whose target was removed stops sending the key: its copy is no longer kept.
            shared.syncReports[connection.instanceID] = parsed["sync"] == nil ? nil : sync ?? shared.syncReports[connection.instanceID]
            guard let fingerprint else { return }
            let previous = shared.hostKeys.updateValue((connection.instanceID, fingerprint), forKey: connection.agentID)
            guard previous?.fingerprint != fingerprint || previous?.instanceID != connection.instanceID,
                let identity = shared.tracker.identity(agentID: connection.agentID)
            else { return }
            let reason = previous.map { "reported sshd host key \(fingerprint) (was \($0.fingerprint))" } ?? "reported sshd host key \(fingerprint)"
            publish([LivenessEvent(kind: .hostKeyReported, agent: identity, atNanoseconds: now, reason: reason)], in: &shared)
        }
        return problem
    }

    /// What the instance's agent last said of its newest checkpoint and its snapshots; nil before
    /// any report (or when its agent reports neither).
    public func recoveryPoint(instanceID: InstanceID) -> RecoveryPointReport? {
        shared.withLockedValue { $0.recoveryPoints[instanceID] }
    }

    /// What the instance's agent last said of its sync to a CPU standby; nil before any report, or
    /// when its agent has no sync target. The failover engine's shell reads the manifest pass it
    /// must find on the VM from here (`manifest?.pass`).
    public func syncReport(for instanceID: InstanceID) -> SyncReport? {
        shared.withLockedValue { $0.syncReports[instanceID] }
    }

    /// The host key the instance's own agent reported: the agent's key must be bound to this
    /// instance now (a keys-file agent that merely claims the instance vouches for nothing), and
    /// agents that disagree vouch for nothing either.
    public func attestedHostKey(instanceID: InstanceID) -> String? {
        shared.withLockedValue { shared in
            let vouched = Set(shared.hostKeys.compactMap { agentID, report -> String? in
                guard report.instanceID == instanceID, shared.keyring.secret(for: agentID) != nil,
                    shared.keyring.boundInstance(of: agentID) == instanceID
                else { return nil }
                return report.fingerprint
            })
            return vouched.count == 1 ? vouched.first : nil
        }
    }

    func hasHostKeyReport(from agentID: AgentID) -> Bool {
        shared.withLockedValue { $0.hostKeys[agentID] != nil }
    }

    /// The instance is gone at the provider: its agents' detector entries, its host key reports
    /// and its lease posture go too, unless an agent of it still holds a session.
    public func forget(instanceID: InstanceID) {
        shared.withLockedValue { shared in
            shared.hostKeys = shared.hostKeys.filter { $0.value.instanceID != instanceID }
            shared.recoveryPoints[instanceID] = nil
            shared.syncReports[instanceID] = nil
            shared.tracker.forget(instanceID: instanceID)
            if shared.tracker.agentIDs(instanceID: instanceID).isEmpty { shared.leases.forget(instanceID) }
        }
    }

    func tick() {
        let now = MonotonicClock.now()
        shared.withLockedValue { shared in publish(shared.tracker.tick(now: now), in: &shared) }
    }
}
