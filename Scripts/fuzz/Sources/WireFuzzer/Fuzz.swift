// libFuzzer entry point for WarmpoolWire. No main.swift: libFuzzer's own main() drives
// LLVMFuzzerTestOneInput. Built and run by Scripts/fuzz/run.
//
// Replay one input with `Scripts/fuzz/run 1 FILE`; WIRE_FUZZ_TRACE=1 also prints each action.
//
// Input layout (Scripts/fuzz/make-corpus writes seeds in this shape; Protocol/vectors/fuzz/README.md
// defines it for outside implementers: keep the two in step):
//
//     byte 0   control bits (below)
//     byte 1   seed of the chunk-size generator
//     rest     the byte stream a peer would send
//
// Control bits of byte 0:
//     0-2  chunking: 0 feeds the stream in one piece; n > 0 feeds chunks of 1...(2^n) bytes
//     3    cross-wire: frames each state machine emits are fed to the other one, so the pair
//          can reach `established` on its own and fuzzed frames land in every state
//     4    fire the handshake timer once, halfway through the stream
//     5    after each frame, seal a lease (controller) and a heartbeat (agent), and feed them over
//     6    at the end, seal a telemetry document made of the stream (compressed when it pays)
//     7    report a parse failure to both machines with decodeFailed (else just stop)
//
// Besides the state machines, every body decoder and Zstd.decompress see the raw stream and each
// parsed payload, and the decoders that must round-trip exactly are checked to.

#if canImport(Glibc)
import Glibc
#endif
import NIOCore
import WarmpoolWire

/// WIRE_FUZZ_TRACE=1 prints every state machine action: for replaying a crasher or checking
/// which states the corpus reaches (`WIRE_FUZZ_TRACE=1 .build/release/WireFuzzer corpus/FILE`).
private let tracing = getenv("WIRE_FUZZ_TRACE") != nil

// MARK: - Fixed session material (the protocol vectors' values, so vector frames MAC-verify)

private let secret = try! AgentSecret(bytes: Array(0..<32))
private let clientNonce: [UInt8] = Array(0xA0...0xAF)
private let serverNonce: [UInt8] = Array(0xB0...0xBF)
private let keyring = Keyring(["gpu-1": secret])
private let terms = SessionTerms(
    heartbeatIntervalMilliseconds: 100, silenceTimeoutMilliseconds: 350, leaseMilliseconds: 2_000,
    telemetryIntervalMilliseconds: 30_000)
private let agentHello = Hello(
    clientNonce: clientNonce, role: .primary, instanceID: 1001, machineID: 77, knownEpoch: 3,
    agentID: "gpu-1", softwareVersion: "0.1.0", incarnation: 0x0123_4567_89AB_CDEF)
private let parser = FrameParser()

// MARK: - Invariants (a failed one traps, which libFuzzer records as a crash)

private func encoded(_ write: (inout ByteBuffer) -> Void) -> [UInt8] {
    var buffer = ByteBuffer()
    write(&buffer)
    return Array(buffer: buffer)
}

private func check(_ condition: Bool, _ what: @autoclosure () -> String) {
    if !condition { fatalError("invariant failed: \(what())") }
}

/// Every decoder on one body. Exact formats must re-encode to the same bytes (Hello up to its
/// ignored field); the two that normalise (reserved heartbeat bits, reject reasons) must be stable
/// after one round.
private func fuzzDecoders(_ body: ByteBuffer, flags: FrameFlags = .status) {
    let bytes = Array(buffer: body)
    if let hello = try? Hello.decode(body) {
        // fenced_at_epoch is ignored (re-encoded as 0) when the fenced flag is 0: PROTOCOL.md §3.1.
        var expected = bytes
        if hello.fencedAtEpoch == nil { expected.replaceSubrange(43..<51, with: repeatElement(0, count: 8)) }
        check(encoded { hello.encode(into: &$0) } == expected, "Hello round trip")
    }
    if let challenge = try? Challenge.decode(body) {
        check(encoded { challenge.encode(into: &$0) } == bytes, "Challenge round trip")
    }
    if let proof = try? Proof.decode(body) {
        check(encoded { proof.encode(into: &$0) } == bytes, "Proof round trip")
    }
    if let welcome = try? Welcome.decode(body) {
        check(encoded { welcome.encode(into: &$0) } == bytes, "Welcome round trip")
    }
    if let grant = try? LeaseGrant.decode(body, sequence: 2, lastSent: 70_000) {
        check(encoded { grant.encode(into: &$0) } == bytes, "LeaseGrant round trip")
        check(grant.acknowledgedSequence <= 70_000 && 70_000 - grant.acknowledgedSequence < 65_536, "LeaseGrant widening")
    }
    if let goodbye = try? Goodbye.decode(body, sequence: 1) {
        check(encoded { goodbye.encode(into: &$0) } == bytes, "Goodbye round trip")
    }
    let previous = Heartbeat(sequence: 1, sentAtMilliseconds: 1_000, status: AgentStatus(gpuCount: 1))
    for after in [nil, previous] {
        if let beat = try? Heartbeat.decode(body, flags: flags, sequence: 2, after: after) {
            var again = ByteBuffer()
            let againFlags = beat.encode(into: &again, after: after)
            check((try? Heartbeat.decode(again, flags: againFlags, sequence: 2, after: after)) == beat, "Heartbeat re-decode")
        }
    }
    if let reject = try? Reject.decode(body) {
        let again = try? Reject.decode(ByteBuffer(bytes: encoded { reject.encode(into: &$0) }))
        check(again == reject, "Reject re-decode")
    }
    if let document = try? Zstd.decompress(bytes) {
        check(document.count <= Zstd.maximumDecompressedSize, "zstd output over the limit")
    }
}

/// PROTOCOL.md §2 and §3.5: the Reject the controller sends is well formed and carries the code
/// the violation calls for.
private func checkReject(_ bytes: ControllerSessionStateMachine.RejectBytes, for reason: ProtocolViolation) {
    guard let frame = bytes.frame else {
        // Only a version-1 peer is answered in version-1 framing.
        return check(reason == .versionOneFrame, "version-1 Reject for \(reason)")
    }
    check(frame.type == .reject && frame.flags.isEmpty, "reject frame header")
    guard let reject = try? Reject.decode(frame.payload) else { return check(false, "unparseable Reject") }
    switch reason {
    case .unsupportedVersion:
        check(reject.code == .unsupportedVersion, "Reject \(reject.code) for \(reason)")
    case .unknownAgent, .badProof:
        check(reject.code == .authenticationFailed && reject.reason == "authentication failed",
              "Reject \(reject.code) \(reject.reason) for \(reason)")
    case .handshakeTimeout:
        check(reject.code == .handshakeTimeout, "Reject \(reject.code) for \(reason)")
    default:
        check(reject.code == .protocolViolation, "Reject \(reject.code) for \(reason)")
    }
    var wire = ByteBuffer()
    frame.write(into: &wire)
    check((try? parser.parse(&wire)) == frame, "Reject does not re-parse")
}

// MARK: - The pair of state machines

private struct Harness {
    var controller = ControllerSessionStateMachine(
        keyring: keyring, serverNonce: serverNonce, terms: terms, epoch: 1)
    var agent = AgentSessionStateMachine(hello: agentHello, secret: secret)
    let crossWire: Bool
    let sealEachStep: Bool
    /// Frames emitted by one machine, waiting to be fed to the other (cross-wire mode).
    var toAgent: [Frame] = []
    var toController: [Frame] = []
    var lastHeartbeat: UInt32 = 0

    init(control: UInt8) {
        crossWire = control & 0x08 != 0
        sealEachStep = control & 0x20 != 0
        let hello = agent.start()
        if crossWire { toController.append(hello) }
    }

    mutating func controllerDid(_ action: ControllerSessionStateMachine.Action) {
        if tracing { print("controller:", action) }
        switch action {
        case .none, .telemetry, .goodbye:
            break
        case .send(let frame):
            if crossWire { toAgent.append(frame) }
        case .established(let identity, _, let welcome):
            check(identity.agentID == "gpu-1", "established as \(identity.agentID)")
            check(controller.isEstablished, "established action but not established")
            if crossWire { toAgent.append(welcome) }
        case .heartbeat(let beat):
            lastHeartbeat = beat.sequence
        case .close(let reason, let reject):
            check(!controller.isEstablished, "closed but still established")
            if let reject { checkReject(reject, for: reason) }
            if crossWire, let reject = reject?.frame { toAgent.append(reject) }
        }
    }

    mutating func agentDid(_ action: AgentSessionStateMachine.Action) {
        if tracing { print("agent:", action) }
        switch action {
        case .send(let frame):
            if crossWire { toController.append(frame) }
        case .established(let welcome):
            check(agent.welcome == welcome, "agent welcome mismatch")
        case .none, .lease, .rejected, .close:
            break
        }
    }

    /// A frame off the fuzzed stream goes to both machines.
    mutating func received(_ frame: Frame) {
        controllerDid(controller.frameReceived(frame))
        agentDid(agent.frameReceived(frame))
        step()
    }

    mutating func step() {
        if sealEachStep {
            if let lease = controller.sealLease(acknowledgedSequence: lastHeartbeat, leaseMilliseconds: 2_000, epoch: 1) {
                check(controller.isEstablished, "sealed a lease while not established")
                if crossWire { toAgent.append(lease) }
            }
            if let (_, beat) = agent.sealHeartbeat(sentAtNanoseconds: 123_456_789, status: AgentStatus()) {
                if crossWire { toController.append(beat) }
            }
        }
        pump()
    }

    /// Delivers the cross-wired frames, bounded so that a ping-pong cannot run forever.
    mutating func pump() {
        var budget = 32
        while budget > 0, !(toAgent.isEmpty && toController.isEmpty) {
            budget -= 1
            if !toController.isEmpty { controllerDid(controller.frameReceived(toController.removeFirst())) }
            if !toAgent.isEmpty { agentDid(agent.frameReceived(toAgent.removeFirst())) }
        }
        toAgent.removeAll()
        toController.removeAll()
    }
}

// MARK: - Entry point

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    let input = UnsafeBufferPointer(start: data, count: size)
    guard size >= 2 else {
        fuzzDecoders(ByteBuffer(bytes: input))
        return 0
    }
    let control = input[0]
    var seed = UInt32(input[1]) &* 0x9E37_79B9 | 1
    let stream = UnsafeBufferPointer(rebasing: input[2...])

    // (3) The decoders and zstd straight on the raw stream.
    fuzzDecoders(ByteBuffer(bytes: stream))

    // (1) + (2) The stream in chunks through the parser, each frame into both machines.
    var harness = Harness(control: control)
    harness.pump()
    let chunkBits = Int(control & 0x07)
    var buffer = ByteBuffer()
    var offset = 0
    var timerFired = control & 0x10 == 0
    streaming: while offset < stream.count {
        var length = stream.count - offset
        if chunkBits > 0 {
            seed ^= seed << 13
            seed ^= seed >> 17
            seed ^= seed << 5
            length = min(length, 1 + Int(seed & ((1 << chunkBits) - 1)))
        }
        buffer.writeBytes(UnsafeBufferPointer(rebasing: stream[offset..<(offset + length)]))
        offset += length
        while true {
            let before = buffer.readableBytes
            let frame: Frame?
            do {
                frame = try parser.parse(&buffer)
            } catch {
                // A refused header consumes nothing: the connection is dead here.
                check(buffer.readableBytes == before, "a throwing parse consumed bytes")
                if control & 0x80 != 0 {
                    harness.controllerDid(harness.controller.decodeFailed(error))
                    harness.agentDid(harness.agent.decodeFailed(error))
                    harness.pump()
                }
                break streaming
            }
            guard let frame else {
                check(buffer.readableBytes == before, "a nil parse consumed bytes")
                break
            }
            // The frame re-encodes to exactly the bytes it was parsed from.
            var rewritten = ByteBuffer()
            frame.write(into: &rewritten)
            check(rewritten.readableBytes == before - buffer.readableBytes, "frame size changed")
            check(rewritten.readableBytes <= Frame.maximumLengthFieldSize + Frame.maximumLength, "frame over the maximum")
            fuzzDecoders(frame.payload, flags: frame.flags)
            harness.received(frame)
        }
        if !timerFired, offset * 2 >= stream.count {
            timerFired = true
            harness.controllerDid(harness.controller.handshakeTimerFired(after: 5_000))
            harness.pump()
        }
    }

    if control & 0x40 != 0, let telemetry = harness.agent.sealTelemetry(document: Array(stream)) {
        harness.controllerDid(harness.controller.frameReceived(telemetry))
        // Whether or not the first copy was taken, a replay of it must never be.
        if case .telemetry = harness.controller.frameReceived(telemetry) {
            check(false, "replayed telemetry accepted")
        }
    }
    harness.controller.closed()
    harness.agent.closed()
    return 0
}
