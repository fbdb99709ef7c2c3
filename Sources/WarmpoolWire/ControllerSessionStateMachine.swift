import NIOCore
import WarmpoolModel

/// The secrets the controller holds, by agent id. A value, so a connection works on a snapshot.
public struct Keyring: Sendable {
    private var secrets: [AgentID: AgentSecret]
    /// The instance each bound key was minted for: its Hello must name that instance and no other.
    /// A key without a binding (an operator's keys file, an agent registered through the API)
    /// may name any.
    private var bindings: [AgentID: InstanceID]

    public init(_ secrets: [AgentID: AgentSecret] = [:], bindings: [AgentID: InstanceID] = [:]) {
        self.secrets = secrets
        self.bindings = bindings.filter { secrets[$0.key] != nil }
    }

    public func secret(for agentID: AgentID) -> AgentSecret? { secrets[agentID] }
    public func boundInstance(of agentID: AgentID) -> InstanceID? { bindings[agentID] }
    public var count: Int { secrets.count }
    public var agentIDs: Set<AgentID> { Set(secrets.keys) }

    /// Both keyrings in one; where both name an agent, `other`'s secret and binding (or lack of
    /// one) win.
    public func merging(_ other: Keyring) -> Keyring {
        Keyring(
            secrets.merging(other.secrets) { _, theirs in theirs },
            bindings: bindings.filter { other.secrets[$0.key] == nil }.merging(other.bindings) { _, theirs in theirs })
    }
}

/// The session terms the controller hands every agent in Welcome.
public struct SessionTerms: Hashable, Sendable {
    public var heartbeatIntervalMilliseconds: UInt32
    public var silenceTimeoutMilliseconds: UInt32
    public var leaseMilliseconds: UInt32
    public var telemetryIntervalMilliseconds: UInt32

    public init(
        heartbeatIntervalMilliseconds: UInt32, silenceTimeoutMilliseconds: UInt32, leaseMilliseconds: UInt32,
        telemetryIntervalMilliseconds: UInt32
    ) {
        self.heartbeatIntervalMilliseconds = heartbeatIntervalMilliseconds
        self.silenceTimeoutMilliseconds = silenceTimeoutMilliseconds
        self.leaseMilliseconds = leaseMilliseconds
        self.telemetryIntervalMilliseconds = telemetryIntervalMilliseconds
    }
}

/// One controller-side connection, from the first byte to close. Pure: the handler feeds it
/// frames and timer expiries and carries out the returned action.
///
///     awaitingHello --Hello--> awaitingProof --Proof ok--> established --> closed
///            \--timer / violation--> closed  \--unknown id, bad proof, another instance, timer--> closed
public struct ControllerSessionStateMachine {
    private enum State {
        /// Nothing received yet; the handshake timer runs.
        case awaitingHello
        /// Challenge sent; waiting for the HMAC of the transcript. `secret` is nil for an unknown
        /// agent: it is challenged all the same, so that a peer cannot tell known ids from unknown.
        case awaitingProof(hello: Hello, helloBody: [UInt8], secret: AgentSecret?)
        /// Frames in both directions are MACed and numbered. The session itself is in `session`:
        /// kept out of the enum so that a frame mutates it in place. As an enum payload, every
        /// frame copied it out and back, retaining and releasing its identity and keys each time,
        /// on the controller's hottest path.
        case established
        case closed
    }

    private struct Established {
        var identity: AgentIdentity
        var keys: SessionKeys
        var nextInbound: UInt32
        var nextOutbound: UInt32
        /// The session's previous beat: the next one's time and, unless it carries one, status
        /// are relative to it.
        var lastHeartbeat: Heartbeat?
    }

    public enum Action {
        case none
        case send(Frame)
        /// Send `welcome`; the agent is authenticated.
        case established(AgentIdentity, fencedAtEpoch: UInt64?, welcome: Frame)
        case heartbeat(Heartbeat)
        case telemetry(Telemetry)
        case goodbye(Goodbye)
        /// Send `reject` if present, then close. `reason` is what to log.
        case close(reason: ProtocolViolation, reject: RejectBytes?)
    }

    /// A Reject as it goes out: a frame of this version, or the bytes of a version-1 frame for a
    /// peer that spoke version 1.
    public enum RejectBytes: Hashable, Sendable {
        case frame(Frame)
        case versionOne(ByteBuffer)

        /// The frame, unless this is the version-1 Reject.
        public var frame: Frame? {
            if case .frame(let frame) = self { return frame }
            return nil
        }

        public func write(into buffer: inout ByteBuffer) {
            switch self {
            case .frame(let frame): frame.write(into: &buffer)
            case .versionOne(let bytes): buffer.writeImmutableBuffer(bytes)
            }
        }
    }

    private static let decoySecret = AgentSecret.random()

    private var state: State = .awaitingHello
    /// Set exactly while `state` is `.established`.
    private var session: Established?
    /// The keyring of the moment the connection opened, which the handshake is checked against.
    public let keyring: Keyring
    private let serverNonce: [UInt8]
    private let terms: SessionTerms
    private let epoch: UInt64

    public init(keyring: Keyring, serverNonce: [UInt8], terms: SessionTerms, epoch: UInt64) {
        precondition(serverNonce.count == Hello.nonceSize)
        self.keyring = keyring
        self.serverNonce = serverNonce
        self.terms = terms
        self.epoch = epoch
    }

    public var identity: AgentIdentity? { session?.identity }

    /// The established session's agent id, for the per-frame path.
    public var agentID: AgentID? { session?.identity.agentID }

    public var isEstablished: Bool { session != nil }

    public mutating func frameReceived(_ frame: Frame) -> Action {
        switch state {
        case .awaitingHello:
            guard frame.type == .hello else { return fail(.unexpectedMessage(frame.type, state: "awaiting Hello")) }
            let hello: Hello
            do { hello = try Hello.decode(frame.payload) } catch { return fail(error) }
            state = .awaitingProof(
                hello: hello, helloBody: Array(buffer: frame.payload), secret: keyring.secret(for: AgentID(hello.agentID)))
            var body = ByteBuffer()
            Challenge(serverNonce: serverNonce).encode(into: &body)
            return .send(Frame(type: .challenge, payload: body))

        case .awaitingProof(let hello, let helloBody, let secret):
            guard frame.type == .proof else { return fail(.unexpectedMessage(frame.type, state: "awaiting Proof")) }
            let proof: Proof
            do { proof = try Proof.decode(frame.payload) } catch { return fail(error) }
            // An unknown id costs the same HMAC as a known one, so timing does not tell them apart.
            let expected = HandshakeCrypto.proof(
                secret: secret ?? Self.decoySecret, helloBody: helloBody, serverNonce: serverNonce)
            let matches = constantTimeEquals(proof.mac, expected)
            guard let secret else { return fail(.unknownAgent(hello.agentID), code: .authenticationFailed) }
            guard matches else { return fail(.badProof(agentID: hello.agentID), code: .authenticationFailed) }
            let claimed = InstanceID(Int64(truncatingIfNeeded: hello.instanceID))
            if let bound = keyring.boundInstance(of: AgentID(hello.agentID)), bound != claimed {
                // A valid key for another instance: whatever this agent reports must not be
                // attributed to an instance it does not run on.
                return fail(.instanceNotBound(agentID: hello.agentID, claimed: claimed, bound: bound), code: .authenticationFailed)
            }
            let keys = HandshakeCrypto.sessionKeys(
                secret: secret, clientNonce: hello.clientNonce, serverNonce: serverNonce)
            let welcome = Welcome(
                heartbeatIntervalMilliseconds: terms.heartbeatIntervalMilliseconds,
                silenceTimeoutMilliseconds: terms.silenceTimeoutMilliseconds,
                leaseMilliseconds: terms.leaseMilliseconds,
                telemetryIntervalMilliseconds: terms.telemetryIntervalMilliseconds, epoch: epoch)
            var body = ByteBuffer()
            welcome.encode(into: &body)
            let identity = AgentIdentity(hello)
            state = .established
            session = Established(identity: identity, keys: keys, nextInbound: 1, nextOutbound: 2)
            return .established(
                identity, fencedAtEpoch: hello.fencedAtEpoch,
                welcome: keys.controllerToAgent.seal(sequence: 1, type: .welcome, body: body))

        case .established:
            do {
                return try receiveEstablished(frame)
            } catch {
                return fail(error)
            }

        case .closed:
            return .none
        }
    }

    private mutating func receiveEstablished(_ frame: Frame) throws(ProtocolViolation) -> Action {
        guard frame.type == .heartbeat || frame.type == .telemetry || frame.type == .goodbye else {
            throw .unexpectedMessage(frame.type, state: "established")
        }
        guard var established = session else { throw .unexpectedMessage(frame.type, state: "established without a session") }
        let sequence = established.nextInbound
        // A wrapped counter would let an old frame's MAC verify again (§5).
        guard sequence != .max else { throw .sequenceExhausted }
        let body = try established.keys.agentToController.open(frame, sequence: sequence)
        let action: Action
        switch frame.type {
        case .heartbeat:
            let heartbeat = try Heartbeat.decode(
                body, flags: frame.flags, sequence: sequence, after: established.lastHeartbeat)
            established.lastHeartbeat = heartbeat
            action = .heartbeat(heartbeat)
        case .goodbye:
            action = .goodbye(try Goodbye.decode(body, sequence: sequence))
        default:
            let bytes = Array(buffer: body)
            let document = frame.flags.contains(.compressed) ? try Zstd.decompress(bytes) : bytes
            action = .telemetry(Telemetry(sequence: sequence, document: document))
        }
        established.nextInbound &+= 1
        session = established
        return action
    }

    /// The parser refused the byte stream (oversized length, unknown version, ...).
    public mutating func decodeFailed(_ violation: ProtocolViolation) -> Action {
        fail(violation)
    }

    /// The handshake timer, scheduled by the handler when the connection opened, fired.
    public mutating func handshakeTimerFired(after milliseconds: Int64) -> Action {
        switch state {
        case .awaitingHello, .awaitingProof:
            return fail(.handshakeTimeout(milliseconds: milliseconds), code: .handshakeTimeout)
        case .established, .closed:
            return .none
        }
    }

    /// A MACed lease grant for heartbeat `acknowledgedSequence`, or nil when not established or
    /// when the outbound counter is spent (the inbound one, never behind it, closes the session).
    public mutating func sealLease(acknowledgedSequence: UInt32, leaseMilliseconds: UInt32, epoch: UInt64) -> Frame? {
        guard var established = session, established.nextOutbound != .max else { return nil }
        let sequence = established.nextOutbound
        let grant = LeaseGrant(
            sequence: sequence, acknowledgedSequence: acknowledgedSequence, leaseMilliseconds: leaseMilliseconds,
            epoch: epoch)
        established.nextOutbound &+= 1
        session = established
        var body = ByteBuffer()
        grant.encode(into: &body)
        return established.keys.controllerToAgent.seal(sequence: sequence, type: .lease, body: body)
    }

    /// Moves both counters on to `inbound` and `outbound`, as if that many frames had passed:
    /// only for tests of the end of the counter, which real sessions reach after 13 years.
    mutating func fastForward(inbound: UInt32, outbound: UInt32) {
        session?.nextInbound = inbound
        session?.nextOutbound = outbound
    }

    public mutating func closed() {
        state = .closed
        session = nil
    }

    /// Before authentication the peer is told why (a generic reason for authentication failures,
    /// so ids cannot be probed); after it, the connection just closes: the agent's MACs failed and
    /// nothing it would read could be trusted either way.
    private mutating func fail(_ violation: ProtocolViolation, code: Reject.Code = .protocolViolation) -> Action {
        let wasEstablished = isEstablished
        state = .closed
        session = nil
        if wasEstablished { return .close(reason: violation, reject: nil) }
        switch violation {
        case .versionOneFrame:
            // Told in its own framing, so that an agent from before version 2 logs why.
            return .close(
                reason: violation,
                reject: .versionOne(Reject(code: .unsupportedVersion, reason: violation.description).versionOneFrame()))
        case .unsupportedVersion:
            return .close(reason: violation, reject: .frame(rejectFrame(code: .unsupportedVersion, violation)))
        default:
            return .close(reason: violation, reject: .frame(rejectFrame(code: code, violation)))
        }
    }

    private func rejectFrame(code: Reject.Code, _ violation: ProtocolViolation) -> Frame {
        let text = code == .authenticationFailed ? "authentication failed" : violation.description
        var body = ByteBuffer()
        Reject(code: code, reason: text).encode(into: &body)
        return Frame(type: .reject, payload: body)
    }
}
