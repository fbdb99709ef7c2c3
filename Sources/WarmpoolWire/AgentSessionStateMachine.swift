import NIOCore

/// One agent-side connection. Pure: the client handler sends what `start()` returns, feeds every
/// received frame in, and asks it to seal outgoing heartbeats.
///
///     idle --start--> awaitingChallenge --Challenge--> awaitingWelcome --Welcome--> established
///                              \------------- Reject / violation ---------------> closed
public struct AgentSessionStateMachine {
    private enum State {
        case idle
        case awaitingChallenge(hello: Hello, helloBody: [UInt8])
        case awaitingWelcome(keys: SessionKeys)
        case established(Established)
        case closed
    }

    private struct Established {
        var keys: SessionKeys
        var welcome: Welcome
        var nextInbound: UInt32
        var nextOutbound: UInt32
        /// The beat sent before on this session: the next one is written relative to it.
        var lastHeartbeat: Heartbeat?
    }

    public enum Action {
        case none
        case send(Frame)
        case established(Welcome)
        case lease(LeaseGrant)
        /// The controller refused us and will close.
        case rejected(Reject)
        /// Close; `reason` is what to log.
        case close(reason: ProtocolViolation)
    }

    /// Telemetry documents smaller than this are sent as they are: zstd cannot win much on them.
    public static let compressionThreshold = 256

    private var state: State = .idle
    private let hello: Hello
    private let secret: AgentSecret

    public init(hello: Hello, secret: AgentSecret) {
        precondition(hello.clientNonce.count == Hello.nonceSize)
        self.hello = hello
        self.secret = secret
    }

    public var welcome: Welcome? {
        if case .established(let established) = state { return established.welcome }
        return nil
    }

    /// The Hello frame that opens the connection.
    public mutating func start() -> Frame {
        precondition({ if case .idle = state { true } else { false } }(), "start() called twice")
        var body = ByteBuffer()
        hello.encode(into: &body)
        state = .awaitingChallenge(hello: hello, helloBody: Array(buffer: body))
        return Frame(type: .hello, payload: body)
    }

    public mutating func frameReceived(_ frame: Frame) -> Action {
        if frame.type == .reject {
            guard !isEstablishedState else { return fail(.unexpectedMessage(.reject, state: "established")) }
            state = .closed
            do { return .rejected(try Reject.decode(frame.payload)) } catch { return .close(reason: error) }
        }
        switch state {
        case .idle, .closed:
            return .none

        case .awaitingChallenge(let hello, let helloBody):
            guard frame.type == .challenge else {
                return fail(.unexpectedMessage(frame.type, state: "awaiting Challenge"))
            }
            let challenge: Challenge
            do { challenge = try Challenge.decode(frame.payload) } catch { return fail(error) }
            let proof = HandshakeCrypto.proof(secret: secret, helloBody: helloBody, serverNonce: challenge.serverNonce)
            state = .awaitingWelcome(
                keys: HandshakeCrypto.sessionKeys(
                    secret: secret, clientNonce: hello.clientNonce, serverNonce: challenge.serverNonce))
            var body = ByteBuffer()
            Proof(mac: proof).encode(into: &body)
            return .send(Frame(type: .proof, payload: body))

        case .awaitingWelcome(let keys):
            guard frame.type == .welcome else {
                return fail(.unexpectedMessage(frame.type, state: "awaiting Welcome"))
            }
            do throws(ProtocolViolation) {
                // A valid MAC here is the controller's proof that it holds our secret too.
                let welcome = try Welcome.decode(try keys.controllerToAgent.open(frame, sequence: 1))
                state = .established(Established(keys: keys, welcome: welcome, nextInbound: 2, nextOutbound: 1))
                return .established(welcome)
            } catch {
                return fail(error)
            }

        case .established(var established):
            guard frame.type == .lease else { return fail(.unexpectedMessage(frame.type, state: "established")) }
            do throws(ProtocolViolation) {
                let sequence = established.nextInbound
                let grant = try LeaseGrant.decode(
                    try established.keys.controllerToAgent.open(frame, sequence: sequence), sequence: sequence,
                    lastSent: established.nextOutbound &- 1)
                established.nextInbound &+= 1
                state = .established(established)
                return .lease(grant)
            } catch {
                return fail(error)
            }
        }
    }

    public mutating func decodeFailed(_ violation: ProtocolViolation) -> Action { fail(violation) }

    /// The beat for this session, at `sentAtNanoseconds` of the agent's monotonic clock (sent as
    /// whole milliseconds: every session of a tick gets the same value).
    public mutating func sealHeartbeat(sentAtNanoseconds: UInt64, status: AgentStatus) -> (sequence: UInt32, frame: Frame)? {
        sealNext(.heartbeat) { sequence, body, established in
            let heartbeat = Heartbeat(
                sequence: sequence, sentAtMilliseconds: sentAtNanoseconds / 1_000_000, status: status)
            defer { established.lastHeartbeat = heartbeat }
            return heartbeat.encode(into: &body, after: established.lastHeartbeat)
        }
    }

    /// Compresses the document when it is large enough and zstd saves at least a tenth.
    public mutating func sealTelemetry(document: [UInt8]) -> Frame? {
        sealNext(.telemetry) { _, body, _ in
            if document.count >= Self.compressionThreshold {
                let compressed = Zstd.compress(document)
                if compressed.count * 10 < document.count * 9 {
                    body.writeBytes(compressed)
                    return .compressed
                }
            }
            body.writeBytes(document)
            return []
        }?.frame
    }

    public mutating func sealGoodbye(reason: Goodbye.Reason) -> Frame? {
        sealNext(.goodbye) { sequence, body, _ in
            Goodbye(sequence: sequence, reason: reason).encode(into: &body)
            return []
        }?.frame
    }

    public mutating func closed() { state = .closed }

    /// Moves the outbound counter (and the inbound one, if given) on, as if that many frames had
    /// passed: only for tests of the end of the counter and of grant widening (the controller's
    /// `fastForward`).
    mutating func fastForward(inbound: UInt32? = nil, outbound: UInt32) {
        guard case .established(var established) = state else { return }
        established.nextOutbound = outbound
        if let inbound { established.nextInbound = inbound }
        state = .established(established)
    }

    /// Numbers, writes and seals the session's next outbound frame; `write` may also update the
    /// session (a heartbeat records itself for the next one to be relative to).
    private mutating func sealNext(
        _ type: MessageType, _ write: (UInt32, inout ByteBuffer, inout Established) -> FrameFlags
    ) -> (sequence: UInt32, frame: Frame)? {
        guard case .established(var established) = state else { return nil }
        let sequence = established.nextOutbound
        var body = ByteBuffer()
        let flags = write(sequence, &body, &established)
        established.nextOutbound &+= 1
        state = .established(established)
        return (sequence, established.keys.agentToController.seal(sequence: sequence, type: type, flags: flags, body: body))
    }

    private var isEstablishedState: Bool {
        if case .established = state { return true }
        return false
    }

    private mutating func fail(_ violation: ProtocolViolation) -> Action {
        state = .closed
        return .close(reason: violation)
    }
}
