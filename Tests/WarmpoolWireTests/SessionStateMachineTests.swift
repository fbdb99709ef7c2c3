import NIOCore
import Testing
import WarmpoolModel
@testable import WarmpoolWire

/// The two session machines wired back to back in memory: every frame one emits is fed to the other.
struct SessionPair {
    static let secret = try! AgentSecret(bytes: Array(0..<32))
    static let terms = SessionTerms(
        heartbeatIntervalMilliseconds: 100, silenceTimeoutMilliseconds: 350, leaseMilliseconds: 2_000,
        telemetryIntervalMilliseconds: 30_000)

    var agent: AgentSessionStateMachine
    var controller: ControllerSessionStateMachine

    init(agentSecret: AgentSecret = SessionPair.secret, agentID: String = "gpu-1",
         keyring: Keyring = Keyring(["gpu-1": SessionPair.secret])) {
        let hello = Hello(
            clientNonce: Array(repeating: 0xA0, count: 16), role: .primary, instanceID: 1001, machineID: 77,
            knownEpoch: 0, agentID: agentID, softwareVersion: "test", incarnation: 1)
        agent = AgentSessionStateMachine(hello: hello, secret: agentSecret)
        controller = ControllerSessionStateMachine(
            keyring: keyring, serverNonce: Array(repeating: 0xB0, count: 16), terms: SessionPair.terms, epoch: 5)
    }

    /// Runs the handshake; returns the controller's last action and the agent's.
    mutating func handshake() -> (ControllerSessionStateMachine.Action, AgentSessionStateMachine.Action) {
        let hello = agent.start()
        let first = controller.frameReceived(hello)
        guard case .send(let challenge) = first else { return (first, .none) }
        let answer = agent.frameReceived(challenge)
        guard case .send(let proof) = answer else { return (.none, answer) }
        let controllerAction = controller.frameReceived(proof)
        guard case .established(_, _, let welcome) = controllerAction else { return (controllerAction, .none) }
        return (controllerAction, agent.frameReceived(welcome))
    }
}

@Suite struct SessionStateMachineTests {
    @Test func handshakeEstablishesBothSidesWithTheTerms() {
        var pair = SessionPair()
        let (controllerAction, agentAction) = pair.handshake()
        guard case .established(let identity, let fenced, _) = controllerAction else {
            Issue.record("controller did not establish: \(controllerAction)")
            return
        }
        #expect(identity == AgentIdentity(agentID: "gpu-1", instanceID: 1001, machineID: 77, role: .primary, softwareVersion: "test", incarnation: 1))
        #expect(fenced == nil)
        guard case .established(let welcome) = agentAction else {
            Issue.record("agent did not establish: \(agentAction)")
            return
        }
        #expect(welcome.epoch == 5)
        #expect(welcome.heartbeatIntervalMilliseconds == 100)
        #expect(welcome.leaseMilliseconds == 2_000)
    }

    @Test func heartbeatsAndLeasesFlowAndASteadyHeartbeatIs11BytesOnTheWire() throws {
        var pair = SessionPair()
        _ = pair.handshake()
        let status = AgentStatus(flags: [.volumeMounted, .volumeWritable], gpuCount: 2, gpuHealthyCount: 2,
                                 gpuMaxTemperatureCelsius: 61, gpuMaxUtilizationPercent: 97, volumeFreeMebibytes: 123_456,
                                 workload: .running)
        for expected in UInt32(1)...3 {
            let sentAt = 5_000_000_000 + UInt64(expected) * 100_000_000
            let sealed1 = pair.agent.sealHeartbeat(sentAtNanoseconds: sentAt + 999_999, status: status)
            let (sequence, frame) = try #require(sealed1)
            #expect(sequence == expected)
            var wire = ByteBuffer()
            frame.write(into: &wire)
            // The first beat of a session carries the status and its absolute time; later ones
            // with the same status only the 100 ms since.
            #expect(wire.readableBytes == (expected == 1 ? 21 : 11))
            guard case .heartbeat(let beat) = pair.controller.frameReceived(frame) else {
                Issue.record("heartbeat refused")
                return
            }
            #expect(beat.status == status)
            #expect(beat.sentAtMilliseconds == sentAt / 1_000_000)
            let sealed2 = pair.controller.sealLease(acknowledgedSequence: sequence, leaseMilliseconds: 2_000, epoch: 5)
            let grant = try #require(sealed2)
            guard case .lease(let lease) = pair.agent.frameReceived(grant) else {
                Issue.record("lease refused")
                return
            }
            #expect(lease.acknowledgedSequence == sequence)
        }
    }

    /// §5: a session closes before a counter wraps, or the frame numbered 0 after the wrap would
    /// verify with an old frame's MAC.
    @Test func theControllerClosesASessionWhoseCounterIsSpent() throws {
        var pair = SessionPair()
        _ = pair.handshake()
        pair.agent.fastForward(outbound: .max - 1)
        pair.controller.fastForward(inbound: .max - 1, outbound: 2)
        let sealedLast = pair.agent.sealHeartbeat(sentAtNanoseconds: 1_000_000, status: AgentStatus())
        let last = try #require(sealedLast)
        guard case .heartbeat = pair.controller.frameReceived(last.frame) else {
            Issue.record("the last number before the end was refused")
            return
        }
        let sealedSpent = pair.agent.sealHeartbeat(sentAtNanoseconds: 2_000_000, status: AgentStatus())
        let spent = try #require(sealedSpent)
        guard case .close(let reason, nil) = pair.controller.frameReceived(spent.frame) else {
            Issue.record("a frame numbered 2^32 - 1 was accepted")
            return
        }
        #expect(reason == .sequenceExhausted)
        #expect(!pair.controller.isEstablished)
    }

    @Test func noGrantIsSealedWithTheLastOutboundNumber() {
        var pair = SessionPair()
        _ = pair.handshake()
        pair.controller.fastForward(inbound: 2, outbound: .max)
        #expect(pair.controller.sealLease(acknowledgedSequence: 1, leaseMilliseconds: 2_000, epoch: 5) == nil)
    }

    @Test func aReplayedHeartbeatClosesTheSession() throws {
        var pair = SessionPair()
        _ = pair.handshake()
        let sealed3 = pair.agent.sealHeartbeat(sentAtNanoseconds: 1, status: AgentStatus())
        let (_, frame) = try #require(sealed3)
        guard case .heartbeat = pair.controller.frameReceived(frame) else {
            Issue.record("first copy refused")
            return
        }
        guard case .close(let reason, let reject) = pair.controller.frameReceived(frame) else {
            Issue.record("replay accepted")
            return
        }
        // Sequence numbers are never sent, but the MAC covers the receiver's count: a copy fails it.
        #expect(reason == .badMAC(.heartbeat))
        #expect(reject == nil)
    }

    @Test func aReorderedHeartbeatClosesTheSession() throws {
        var pair = SessionPair()
        _ = pair.handshake()
        let sealed4 = pair.agent.sealHeartbeat(sentAtNanoseconds: 1, status: AgentStatus())
        let first = try #require(sealed4).frame
        let sealed5 = pair.agent.sealHeartbeat(sentAtNanoseconds: 2, status: AgentStatus())
        let second = try #require(sealed5).frame
        _ = first
        guard case .close(let reason, _) = pair.controller.frameReceived(second) else {
            Issue.record("out-of-order beat accepted")
            return
        }
        #expect(reason == .badMAC(.heartbeat))
    }

    @Test func theControllerSeesEveryBeatWhole() throws {
        // Beats without the status flag inherit the session's previous status; times add up.
        var pair = SessionPair()
        _ = pair.handshake()
        var status = AgentStatus(flags: [.volumeMounted], gpuCount: 1, gpuHealthyCount: 1, volumeFreeMebibytes: 10)
        for tick in UInt64(0)..<20 {
            if tick % 7 == 6 { status.volumeFreeMebibytes += 1 }
            if tick == 15 { status.flags.insert(.fenced) }
            let sentAt = 86_400_000_000_000 + tick * 100_000_000 + tick % 3 * 400_000
            let sealed = pair.agent.sealHeartbeat(sentAtNanoseconds: sentAt, status: status)
            let (_, frame) = try #require(sealed)
            guard case .heartbeat(let beat) = pair.controller.frameReceived(frame) else {
                Issue.record("beat \(tick) refused")
                return
            }
            #expect(beat == Heartbeat(sequence: UInt32(tick) + 1, sentAtMilliseconds: sentAt / 1_000_000, status: status))
        }
    }

    @Test func aHelloOfAnotherVersionGetsRejectOne() throws {
        var pair = SessionPair()
        let hello = pair.agent.start()
        var payload = hello.payload
        payload.setInteger(UInt8(3), at: payload.readerIndex)
        guard case .close(let reason, let reject?) = pair.controller.frameReceived(Frame(type: .hello, payload: payload)) else {
            Issue.record("another version accepted")
            return
        }
        #expect(reason == .unsupportedVersion(3))
        #expect(try Reject.decode(try #require(reject.frame).payload).code == .unsupportedVersion)
    }

    @Test func aVersionOneAgentIsToldInVersionOneFraming() throws {
        var pair = SessionPair()
        guard case .close(let reason, let reject?) = pair.controller.decodeFailed(.versionOneFrame) else {
            Issue.record("no reject")
            return
        }
        #expect(reason == .versionOneFrame)
        var bytes = ByteBuffer()
        reject.write(into: &bytes)
        // u32 length | version 1 | type Reject | flags 0 | body, as a version-1 agent reads it.
        let read = bytes.readInteger(as: UInt32.self)
        let length = try #require(read)
        #expect(Int(length) == bytes.readableBytes)
        #expect(bytes.readBytes(length: 3) == [1, MessageType.reject.rawValue, 0])
        let decoded = try Reject.decode(bytes)
        #expect(decoded.code == .unsupportedVersion)
        #expect(decoded.reason.contains("version 1"))
    }

    @Test func aFlippedBitFailsTheMAC() throws {
        var pair = SessionPair()
        _ = pair.handshake()
        let sealed6 = pair.agent.sealHeartbeat(sentAtNanoseconds: 1, status: AgentStatus())
        var frame = try #require(sealed6).frame
        // Claim a healthy GPU count the agent never sent (after the time and status varints).
        let offset = frame.payload.readerIndex + 3
        frame.payload.setInteger(frame.payload.getInteger(at: offset, as: UInt8.self)! ^ 0x01, at: offset)
        guard case .close(let reason, _) = pair.controller.frameReceived(frame) else {
            Issue.record("tampered beat accepted")
            return
        }
        #expect(reason == .badMAC(.heartbeat))
    }

    @Test func aForgedHeartbeatUnderAnotherKeyFailsTheMAC() throws {
        var pair = SessionPair()
        _ = pair.handshake()
        let forger = HandshakeCrypto.sessionKeys(
            secret: AgentSecret.random(), clientNonce: Array(repeating: 0xA0, count: 16),
            serverNonce: Array(repeating: 0xB0, count: 16))
        var body = ByteBuffer()
        let flags = Heartbeat(sequence: 1, sentAtMilliseconds: 1, status: AgentStatus()).encode(into: &body, after: nil)
        let forged = forger.agentToController.seal(sequence: 1, type: .heartbeat, flags: flags, body: body)
        guard case .close(let reason, _) = pair.controller.frameReceived(forged) else {
            Issue.record("forged beat accepted")
            return
        }
        #expect(reason == .badMAC(.heartbeat))
    }

    @Test func aLeaseReflectedBackAtTheControllerIsRefused() throws {
        // Direction keys differ: a controller frame replayed towards the controller cannot verify.
        var pair = SessionPair()
        _ = pair.handshake()
        let sealed7 = pair.controller.sealLease(acknowledgedSequence: 1, leaseMilliseconds: 1, epoch: 5)
        let grant = try #require(sealed7)
        guard case .close(let reason, _) = pair.controller.frameReceived(grant) else {
            Issue.record("reflected frame accepted")
            return
        }
        #expect(reason == .unexpectedMessage(.lease, state: "established"))
    }

    @Test func anUnknownAgentIsRejectedWithAGenericReason() throws {
        var pair = SessionPair(agentID: "stranger")
        let (action, _) = pair.handshake()
        guard case .close(let reason, let rejectFrame?) = action else {
            Issue.record("unknown agent not rejected: \(action)")
            return
        }
        #expect(reason == .unknownAgent("stranger"))
        let reject = try Reject.decode(try #require(rejectFrame.frame).payload)
        #expect(reject == Reject(code: .authenticationFailed, reason: "authentication failed"))
    }

    @Test func aWrongSecretFailsTheProofAndNeverReachesEstablished() {
        var pair = SessionPair(agentSecret: AgentSecret.random())
        let (action, _) = pair.handshake()
        guard case .close(let reason, let reject) = action else {
            Issue.record("wrong secret accepted: \(action)")
            return
        }
        #expect(reason == .badProof(agentID: "gpu-1"))
        #expect(reject != nil)
        #expect(!pair.controller.isEstablished)
    }

    /// A key minted for one instance proves the agent's identity, not where it runs: a Hello that
    /// names another instance is refused as an authentication failure, and the log line says why.
    @Test func aValidKeyBoundToAnotherInstanceIsRefused() throws {
        var pair = SessionPair(keyring: Keyring(["gpu-1": SessionPair.secret], bindings: ["gpu-1": 2002]))
        let (action, _) = pair.handshake()
        guard case .close(let reason, let rejectFrame?) = action else {
            Issue.record("a Hello for another instance was accepted: \(action)")
            return
        }
        #expect(reason == .instanceNotBound(agentID: "gpu-1", claimed: 1001, bound: 2002))
        #expect(reason.description == "agent \"gpu-1\" is bound to instance 2002; its Hello claims instance 1001")
        #expect(try Reject.decode(try #require(rejectFrame.frame).payload) == Reject(code: .authenticationFailed, reason: "authentication failed"))
        #expect(!pair.controller.isEstablished)

        var bound = SessionPair(keyring: Keyring(["gpu-1": SessionPair.secret], bindings: ["gpu-1": 1001]))
        guard case .established(let identity, _, _) = bound.handshake().0 else {
            Issue.record("the bound instance itself was refused")
            return
        }
        #expect(identity.instanceID == 1001)
    }

    @Test func aMergedKeyringTakesTheOtherSidesBindingOrItsAbsence() {
        let file = Keyring(["a": SessionPair.secret, "b": SessionPair.secret], bindings: ["a": 1, "b": 2])
        let store = Keyring(["b": SessionPair.secret, "c": SessionPair.secret], bindings: ["c": 3])
        let merged = file.merging(store)
        #expect(merged.boundInstance(of: "a") == 1)
        #expect(merged.boundInstance(of: "b") == nil, "the store names b without a binding: it wins")
        #expect(merged.boundInstance(of: "c") == 3)
        #expect(Keyring([:], bindings: ["ghost": 9]).boundInstance(of: "ghost") == nil, "a binding without a key is dropped")
    }

    @Test func aHeartbeatBeforeTheHandshakeIsAViolation() {
        var pair = SessionPair()
        let frame = Frame(type: .heartbeat, payload: ByteBuffer(bytes: Array(repeating: 0, count: 39)))
        guard case .close(let reason, _) = pair.controller.frameReceived(frame) else {
            Issue.record("accepted")
            return
        }
        #expect(reason == .unexpectedMessage(.heartbeat, state: "awaiting Hello"))
    }

    @Test func theHandshakeTimerClosesASilentPeerButNotAnEstablishedOne() {
        var silent = SessionPair()
        guard case .close(let reason, let reject) = silent.controller.handshakeTimerFired(after: 2_000) else {
            Issue.record("silent peer kept")
            return
        }
        #expect(reason == .handshakeTimeout(milliseconds: 2_000))
        #expect(reject != nil)

        var established = SessionPair()
        _ = established.handshake()
        guard case .none = established.controller.handshakeTimerFired(after: 2_000) else {
            Issue.record("established session closed by the handshake timer")
            return
        }
    }

    @Test func theAgentRefusesAWelcomeNotMACedWithItsKey() {
        var pair = SessionPair()
        let hello = pair.agent.start()
        guard case .send(let challenge) = pair.controller.frameReceived(hello),
            case .send = pair.agent.frameReceived(challenge)
        else {
            Issue.record("handshake did not start")
            return
        }
        // An impostor controller that does not know the secret.
        let impostor = HandshakeCrypto.sessionKeys(
            secret: AgentSecret.random(), clientNonce: Array(repeating: 0xA0, count: 16),
            serverNonce: Array(repeating: 0xB0, count: 16))
        var body = ByteBuffer()
        Welcome(heartbeatIntervalMilliseconds: 100, silenceTimeoutMilliseconds: 350, leaseMilliseconds: 60_000,
                telemetryIntervalMilliseconds: 1, epoch: 1).encode(into: &body)
        guard case .close(let reason) = pair.agent.frameReceived(impostor.controllerToAgent.seal(sequence: 1, type: .welcome, body: body))
        else {
            Issue.record("impostor welcome accepted")
            return
        }
        #expect(reason == .badMAC(.welcome))
    }

    @Test func anUnknownAgentIsChallengedLikeAKnownOne() {
        // Answering an unknown id differently would let a peer enumerate agent ids.
        var pair = SessionPair(agentID: "stranger")
        guard case .send(let challenge) = pair.controller.frameReceived(pair.agent.start()) else {
            Issue.record("unknown agent not challenged")
            return
        }
        #expect(challenge.type == .challenge)
    }

    @Test func theAgentReportsARejection() {
        var pair = SessionPair(agentID: "stranger")
        guard case .send(let challenge) = pair.controller.frameReceived(pair.agent.start()),
            case .send(let proof) = pair.agent.frameReceived(challenge),
            case .close(_, let reject?) = pair.controller.frameReceived(proof), let reject = reject.frame
        else {
            Issue.record("not rejected")
            return
        }
        guard case .rejected(let decoded) = pair.agent.frameReceived(reject) else {
            Issue.record("agent did not surface the reject")
            return
        }
        #expect(decoded.code == .authenticationFailed)
    }

    @Test func telemetryIsCompressedWhenItPaysAndRoundTrips() throws {
        var pair = SessionPair()
        _ = pair.handshake()
        let big = Array(String(repeating: "{\"gpu\":\"NVIDIA H100 80GB HBM3\",\"temperature\":41},", count: 40).utf8)
        let sealed8 = pair.agent.sealTelemetry(document: big)
        let frame = try #require(sealed8)
        #expect(frame.flags.contains(.compressed))
        #expect(frame.payload.readableBytes < big.count / 4)
        guard case .telemetry(let telemetry) = pair.controller.frameReceived(frame) else {
            Issue.record("telemetry refused")
            return
        }
        #expect(telemetry.document == big)

        let small = Array("{\"gpus\":[]}".utf8)
        let sealed9 = pair.agent.sealTelemetry(document: small)
        let plain = try #require(sealed9)
        #expect(!plain.flags.contains(.compressed))
        guard case .telemetry(let smallTelemetry) = pair.controller.frameReceived(plain) else {
            Issue.record("small telemetry refused")
            return
        }
        #expect(smallTelemetry.document == small)
    }

    @Test func fencedAtEpochTravelsInHello() {
        var pair = SessionPair()
        pair.agent = AgentSessionStateMachine(
            hello: Hello(clientNonce: Array(repeating: 1, count: 16), role: .primary, instanceID: 1, machineID: 1,
                         knownEpoch: 4, fencedAtEpoch: 4, agentID: "gpu-1", softwareVersion: "t", incarnation: 1),
            secret: SessionPair.secret)
        guard case .established(_, let fenced, _) = pair.handshake().0 else {
            Issue.record("not established")
            return
        }
        #expect(fenced == 4)
    }
}

@Suite struct CompressionTests {
    @Test func aDecompressionBombIsRefusedBeforeAllocating() throws {
        let huge = [UInt8](repeating: 0, count: Zstd.maximumDecompressedSize + 1)
        let bomb = Zstd.compress(huge)
        #expect(bomb.count < 1_000)
        #expect(throws: ProtocolViolation.decompressionFailed(
            "declares \(huge.count) bytes, over the \(Zstd.maximumDecompressedSize)-byte limit")) {
            try Zstd.decompress(bomb)
        }
    }

    @Test func garbageIsNotAZstdFrame() {
        #expect(throws: ProtocolViolation.decompressionFailed("not a zstd frame")) {
            try Zstd.decompress([1, 2, 3, 4, 5, 6, 7, 8, 9])
        }
    }

    /// §3.8: what `printf '{"agent_id":"gpu-1"}' | zstd -3 -c` writes (zstd 1.5.4): reading a pipe,
    /// the CLI does not know the size and leaves Frame_Content_Size out (and adds a checksum).
    static let fromStdin = [UInt8](hexString: "28b52ffd0458a100007b226167656e745f6964223a226770752d31227d9c7571b5")!
    /// The same with `--stream-size=20`: the size is stated (Single_Segment, a 1-byte size of 20).
    static let withStreamSize = [UInt8](hexString: "28b52ffd2414a100007b226167656e745f6964223a226770752d31227d9c7571b5")!

    @Test func aFrameThatDoesNotStateItsSizeIsRefused() throws {
        #expect(throws: ProtocolViolation.decompressionFailed("frame does not state its size")) {
            try Zstd.decompress(Self.fromStdin)
        }
        // Stating the size is all it takes; the CLI's content checksum is accepted (and checked).
        #expect(try Zstd.decompress(Self.withStreamSize) == Array(#"{"agent_id":"gpu-1"}"#.utf8))

        // The controller closes the session on it, without a Reject (it is established).
        var pair = SessionPair()
        _ = pair.handshake()
        let keys = HandshakeCrypto.sessionKeys(
            secret: SessionPair.secret, clientNonce: Array(repeating: 0xA0, count: 16),
            serverNonce: Array(repeating: 0xB0, count: 16))
        let frame = keys.agentToController.seal(
            sequence: 1, type: .telemetry, flags: .compressed, body: ByteBuffer(bytes: Self.fromStdin))
        guard case .close(let reason, nil) = pair.controller.frameReceived(frame) else {
            Issue.record("a frame without its content size was accepted")
            return
        }
        #expect(reason == .decompressionFailed("frame does not state its size"))
        #expect(reason.description == "telemetry decompression failed: frame does not state its size")
    }

    @Test func aTruncatedFrameFails() {
        let compressed = Zstd.compress(Array(repeating: 42, count: 10_000))
        #expect(throws: ProtocolViolation.self) { try Zstd.decompress(Array(compressed.dropLast(3))) }
    }
}

@Suite struct SecretTests {
    @Test func parsesHexWithATrailingNewlineAndRefusesBadInput() throws {
        let secret = AgentSecret.random()
        #expect(try AgentSecret(hex: secret.hex + "\n") == secret)
        #expect(throws: AgentSecret.SecretError.notHex) { try AgentSecret(hex: "zz" + String(secret.hex.dropFirst(2))) }
        #expect(throws: AgentSecret.SecretError.wrongLength(16)) { try AgentSecret(hex: String(secret.hex.prefix(32))) }
    }

    @Test func constantTimeEqualsComparesWholeArrays() {
        #expect(constantTimeEquals([1, 2, 3], [1, 2, 3]))
        #expect(!constantTimeEquals([1, 2, 3], [1, 2, 4]))
        #expect(!constantTimeEquals([1, 2, 3], [1, 2]))
    }
}
