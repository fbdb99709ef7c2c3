import Foundation
import NIOCore
import Testing
@testable import WarmpoolWire

/// Protocol/vectors/vectors.json: at least one golden frame per message type, with the inputs that
/// made it. Another implementation checks itself against the file; we check the file against
/// ourselves, in both directions: our encoder reproduces every frame, and every frame decodes (MAC
/// verified) to its inputs and re-encodes to the same bytes. The lease-widening vectors are also
/// fed to a real agent session (here) and to the agent's send-time table (WarmpoolAgentTests).
///
/// `WARMPOOL_WRITE_VECTORS=1 swift test --filter WarmpoolWireTests.VectorTests` rewrites the file
/// after a deliberate protocol change (the plain `VectorTests` filter would also run
/// LeaseVectorTests, which may read the file while it is being rewritten).
@Suite(.serialized) struct VectorTests {
    static let vectorsPath = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Protocol/vectors/vectors.json").path

    static let secret = try! AgentSecret(bytes: Array(0..<32))
    static let clientNonce: [UInt8] = (0..<16).map { 0xA0 + $0 }
    static let serverNonce: [UInt8] = (0..<16).map { 0xB0 + $0 }
    static let keys = HandshakeCrypto.sessionKeys(secret: secret, clientNonce: clientNonce, serverNonce: serverNonce)
    static let hello = Hello(
        clientNonce: clientNonce, role: .primary, instanceID: 1001, machineID: 77, knownEpoch: 3, agentID: "gpu-1",
        softwareVersion: "0.1.0", incarnation: 0x0123_4567_89AB_CDEF)
    static let status = AgentStatus(
        flags: [.volumeMounted, .volumeIDMatches, .volumeWritable, .gpuProbeAvailable, .leaseHeld], gpuCount: 4,
        gpuHealthyCount: 4, gpuMaxTemperatureCelsius: 64, gpuMaxUtilizationPercent: 93, volumeFreeMebibytes: 81_920,
        workload: .running)
    static let smallDocument = #"{"agent_id":"gpu-1","gpu":{"available":false,"gpus":[]}}"#
    static let largeDocument = "{\"gpus\":[" + (0..<8).map {
        #"{"index":\#($0),"name":"NVIDIA H100 80GB HBM3","temperature_celsius":41,"utilization_percent":97}"#
    }.joined(separator: ",") + "]}"

    struct Vector {
        var name: String
        var inputs: [String: String]
        var type: MessageType
        /// The whole frame as it crosses the wire.
        var bytes: [UInt8]

        init(name: String, inputs: [String: String], frame: Frame) {
            var buffer = ByteBuffer()
            frame.write(into: &buffer)
            self.init(name: name, inputs: inputs, type: frame.type, bytes: Array(buffer: buffer))
        }

        init(name: String, inputs: [String: String], type: MessageType, bytes: [UInt8]) {
            self.name = name
            self.inputs = inputs
            self.type = type
            self.bytes = bytes
        }
    }

    /// A LeaseGrant that shows how the agent widens `acknowledged` (§3.7) and which grants its
    /// send-time table honours (§7). Each stands alone: a session of the shared inputs on which
    /// the agent has sent `agentSent` (in order, numbered as given; the numbers before the first
    /// do not matter) and the controller seals its grant number `sequence`.
    struct Widening {
        var name: String
        var sequence: UInt32
        /// What the controller acknowledged: only its low 16 bits go on the wire.
        var acknowledged: UInt32
        /// `kind first[-last]` items, comma separated, kind `heartbeat`, `telemetry` or `goodbye`.
        var agentSent: String
        /// The last number in `agentSent`: what the agent widens against.
        var lastSent: UInt32
        var widened: UInt32
        /// The heartbeat the grant's lease is anchored on; nil when the agent ignores the grant.
        var anchoredOn: UInt32?
    }

    static let widenings: [Widening] = [
        // The low 16 bits wrapped between the acknowledged beat and the agent's last frame.
        Widening(
            name: "lease_widen_low16_wrap", sequence: 13_108, acknowledged: 65_535,
            agentSent: "heartbeat 65533-65535, telemetry 65536, heartbeat 65537", lastSent: 65_537, widened: 65_535,
            anchoredOn: 65_535),
        // The end of the counter: 2^32 - 2 is the last number the controller accepts (§5).
        Widening(
            name: "lease_widen_counter_end", sequence: 858_993_459, acknowledged: 4_294_967_293,
            agentSent: "heartbeat 4294967290-4294967294", lastSent: 4_294_967_294, widened: 4_294_967_293,
            anchoredOn: 4_294_967_293),
        // The number of a Telemetry: widened all the same, then ignored.
        Widening(
            name: "lease_widen_telemetry", sequence: 2, acknowledged: 1, agentSent: "telemetry 1, heartbeat 2",
            lastSent: 2, widened: 1, anchoredOn: nil),
        // A number the agent has not sent yet (only a faulty controller): the subtraction wraps
        // below zero, modulo 2^32, to a number no beat has.
        Widening(
            name: "lease_widen_ahead", sequence: 2, acknowledged: 3, agentSent: "telemetry 1, heartbeat 2",
            lastSent: 2, widened: 4_294_901_763, anchoredOn: nil),
        // Heartbeat 100's entry (100 mod 64 = 36) survives Telemetry 164: 65 frames back, still honoured.
        Widening(
            name: "lease_widen_kept_across_telemetry", sequence: 34, acknowledged: 100,
            agentSent: "heartbeat 100-163, telemetry 164, heartbeat 165", lastSent: 165, widened: 100,
            anchoredOn: 100),
        // Heartbeat 164 took heartbeat 100's entry: the grant is ignored.
        Widening(
            name: "lease_widen_overwritten", sequence: 34, acknowledged: 100, agentSent: "heartbeat 100-165",
            lastSent: 165, widened: 100, anchoredOn: nil),
    ]

    /// The Reject a version-2 controller answers a version-1 peer with, in version-1 framing.
    static let versionOneReject = Reject(code: .unsupportedVersion, reason: ProtocolViolation.versionOneFrame.description)

    /// An agent session of the shared inputs, established, with its counters moved on.
    static func establishedAgent(inbound: UInt32, outbound: UInt32) -> AgentSessionStateMachine {
        var agent = AgentSessionStateMachine(hello: hello, secret: secret)
        _ = agent.start()
        _ = agent.frameReceived(Frame(type: .challenge, payload: body { Challenge(serverNonce: serverNonce).encode(into: &$0) }))
        let welcome = Welcome(
            heartbeatIntervalMilliseconds: 100, silenceTimeoutMilliseconds: 350, leaseMilliseconds: 2_000,
            telemetryIntervalMilliseconds: 30_000, epoch: 3)
        _ = agent.frameReceived(keys.controllerToAgent.seal(sequence: 1, type: .welcome, body: body { welcome.encode(into: &$0) }))
        agent.fastForward(inbound: inbound, outbound: outbound)
        return agent
    }

    static func body(_ write: (inout ByteBuffer) -> Void) -> ByteBuffer {
        var buffer = ByteBuffer()
        write(&buffer)
        return buffer
    }

    static var common: [String: String] {
        ["secret_hex": secret.hex, "client_nonce_hex": clientNonce.hexString, "server_nonce_hex": serverNonce.hexString]
    }

    static func vectors() -> [Vector] {
        let helloBody = body { hello.encode(into: &$0) }
        var fencedHello = hello
        fencedHello.fencedAtEpoch = 3
        let welcome = Welcome(
            heartbeatIntervalMilliseconds: 100, silenceTimeoutMilliseconds: 350, leaseMilliseconds: 2_000,
            telemetryIntervalMilliseconds: 30_000, epoch: 3)
        var agent = AgentSessionStateMachine(hello: hello, secret: secret)
        // Drive a real agent session so its sealing code (sequence numbers, compression) makes the frames.
        _ = agent.start()
        _ = agent.frameReceived(Frame(type: .challenge, payload: body { Challenge(serverNonce: serverNonce).encode(into: &$0) }))
        _ = agent.frameReceived(keys.controllerToAgent.seal(sequence: 1, type: .welcome, body: body { welcome.encode(into: &$0) }))
        let heartbeat = agent.sealHeartbeat(sentAtNanoseconds: 123_456_789_000, status: status)!.frame
        let steadyHeartbeat = agent.sealHeartbeat(sentAtNanoseconds: 123_556_789_000, status: status)!.frame
        let smallTelemetry = agent.sealTelemetry(document: Array(smallDocument.utf8))!
        let largeTelemetry = agent.sealTelemetry(document: Array(largeDocument.utf8))!
        let goodbye = agent.sealGoodbye(reason: .shutdown)!
        let widened = widenings.map { widening in
            Vector(name: widening.name, inputs: common.merging([
                "sequence": "\(widening.sequence)", "acknowledged_sequence": "\(widening.acknowledged)",
                "lease_ms": "2000", "epoch": "3", "mac_key": "controller->agent", "agent_sent": widening.agentSent,
                "agent_last_sent": "\(widening.lastSent)", "widened_sequence": "\(widening.widened)",
                "anchored_on": widening.anchoredOn.map { "\($0)" } ?? "none",
            ]) { $1 }, frame: keys.controllerToAgent.seal(sequence: widening.sequence, type: .lease, body: body {
                LeaseGrant(sequence: widening.sequence, acknowledgedSequence: widening.acknowledged,
                           leaseMilliseconds: 2_000, epoch: 3).encode(into: &$0)
            }))
        }
        let helloInputs: [String: String] = [
            "client_nonce_hex": clientNonce.hexString, "role": "primary", "instance_id": "1001", "machine_id": "77",
            "known_epoch": "3", "agent_id": "gpu-1", "software_version": "0.1.0", "incarnation": "81985529216486895",
        ]
        return [
            Vector(name: "hello", inputs: helloInputs.merging(["fenced_at_epoch": "none"]) { $1 },
                   frame: Frame(type: .hello, payload: helloBody)),
            Vector(name: "hello_fenced", inputs: helloInputs.merging(["fenced_at_epoch": "3"]) { $1 },
                   frame: Frame(type: .hello, payload: body { fencedHello.encode(into: &$0) })),
            Vector(name: "challenge", inputs: ["server_nonce_hex": serverNonce.hexString],
                   frame: Frame(type: .challenge, payload: body { Challenge(serverNonce: serverNonce).encode(into: &$0) })),
            Vector(name: "proof", inputs: common.merging(["hello_body_hex": Array(buffer: helloBody).hexString]) { $1 },
                   frame: Frame(type: .proof, payload: body {
                       Proof(mac: HandshakeCrypto.proof(secret: secret, helloBody: Array(buffer: helloBody),
                                                        serverNonce: serverNonce)).encode(into: &$0)
                   })),
            Vector(name: "welcome", inputs: common.merging([
                "sequence": "1", "heartbeat_interval_ms": "100", "silence_timeout_ms": "350", "lease_ms": "2000",
                "telemetry_interval_ms": "30000", "epoch": "3", "mac_key": "controller->agent",
            ]) { $1 }, frame: keys.controllerToAgent.seal(sequence: 1, type: .welcome, body: body { welcome.encode(into: &$0) })),
            Vector(name: "reject", inputs: ["code": "2", "reason": "authentication failed"],
                   frame: Frame(type: .reject, payload: body {
                       Reject(code: .authenticationFailed, reason: "authentication failed").encode(into: &$0)
                   })),
            Vector(name: "reject_version_1", inputs: [
                "code": "1", "reason": versionOneReject.reason, "framing_version": "1",
            ], type: .reject, bytes: Array(buffer: versionOneReject.versionOneFrame())),
            Vector(name: "heartbeat", inputs: common.merging([
                "sequence": "1", "sent_at_ms": "123456", "status_flags": "0x004f", "gpu_count": "4",
                "gpu_healthy": "4", "gpu_max_temp_c": "64", "gpu_max_util_pct": "93", "volume_free_mib": "81920",
                "workload": "2", "mac_key": "agent->controller",
            ]) { $1 }, frame: heartbeat),
            Vector(name: "heartbeat_steady", inputs: common.merging([
                "sequence": "2", "sent_at_ms": "123556", "previous_sent_at_ms": "123456", "status": "as heartbeat",
                "mac_key": "agent->controller",
            ]) { $1 }, frame: steadyHeartbeat),
            Vector(name: "lease", inputs: common.merging([
                "sequence": "2", "acknowledged_sequence": "2", "lease_ms": "2000", "epoch": "3", "mac_key": "controller->agent",
            ]) { $1 }, frame: keys.controllerToAgent.seal(sequence: 2, type: .lease, body: body {
                LeaseGrant(sequence: 2, acknowledgedSequence: 2, leaseMilliseconds: 2_000, epoch: 3).encode(into: &$0)
            })),
            Vector(name: "telemetry", inputs: common.merging([
                "sequence": "3", "compressed": "false", "document": smallDocument, "mac_key": "agent->controller",
            ]) { $1 }, frame: smallTelemetry),
            Vector(name: "telemetry_compressed", inputs: common.merging([
                "sequence": "4", "compressed": "true", "document": largeDocument, "zstd_level": "3", "mac_key": "agent->controller",
            ]) { $1 }, frame: largeTelemetry),
            Vector(name: "goodbye", inputs: common.merging([
                "sequence": "5", "reason": "0", "mac_key": "agent->controller",
            ]) { $1 }, frame: goodbye),
        ] + widened
    }

    static func hex(_ frame: Frame) -> String {
        var buffer = ByteBuffer()
        frame.write(into: &buffer)
        return Array(buffer: buffer).hexString
    }

    @Test func everyMessageTypeHasAVector() {
        let types = Set(Self.vectors().map(\.type))
        #expect(types == Set(MessageType.allCases))
    }

    @Test func theVectorsFileMatchesOurEncoder() throws {
        let vectors = Self.vectors()
        if ProcessInfo.processInfo.environment["WARMPOOL_WRITE_VECTORS"] == "1" {
            let objects: [[String: Any]] = vectors.map {
                ["name": $0.name, "type": Int($0.type.rawValue), "inputs": $0.inputs, "frame_hex": $0.bytes.hexString]
            }
            let data = try JSONSerialization.data(withJSONObject: objects, options: [.prettyPrinted, .sortedKeys])
            try data.write(to: URL(fileURLWithPath: Self.vectorsPath))
        }
        let data = try Data(contentsOf: URL(fileURLWithPath: Self.vectorsPath))
        let file = try #require(try JSONSerialization.jsonObject(with: data) as? [[String: Any]])
        #expect(file.count == vectors.count)
        for vector in vectors {
            let entry = try #require(file.first { $0["name"] as? String == vector.name }, "missing vector \(vector.name)")
            #expect(entry["frame_hex"] as? String == vector.bytes.hexString, "\(vector.name)")
            #expect(entry["inputs"] as? [String: String] == vector.inputs, "\(vector.name)")
            #expect(entry["type"] as? Int == Int(vector.type.rawValue))
        }
    }

    @Test func everyVectorDecodesAndReencodesToTheSameBytes() throws {
        let data = try Data(contentsOf: URL(fileURLWithPath: Self.vectorsPath))
        let file = try #require(try JSONSerialization.jsonObject(with: data) as? [[String: Any]])
        for entry in file {
            let name = try #require(entry["name"] as? String)
            let frameHex = try #require(entry["frame_hex"] as? String)
            let bytes = try #require([UInt8](hexString: frameHex))
            if name == "reject_version_1" {
                try Self.checkVersionOneReject(bytes)
                continue
            }
            var buffer = ByteBuffer(bytes: bytes)
            let parsed = try FrameParser().parse(&buffer)
            let frame = try #require(parsed, "\(name) did not parse")
            #expect(buffer.readableBytes == 0)
            #expect(Self.hex(frame) == bytes.hexString)
            switch frame.type {
            case .hello:
                let hello = try Hello.decode(frame.payload)
                #expect(hello.agentID == "gpu-1" && hello.instanceID == 1001 && hello.machineID == 77)
                #expect(hello.fencedAtEpoch == (name == "hello_fenced" ? 3 : nil))
                #expect(hello.incarnation == 0x0123_4567_89AB_CDEF)
                #expect(Self.hex(Frame(type: .hello, payload: Self.body { hello.encode(into: &$0) })) == bytes.hexString)
            case .challenge:
                #expect(try Challenge.decode(frame.payload).serverNonce == Self.serverNonce)
            case .proof:
                let helloBody = Array(buffer: Self.body { Self.hello.encode(into: &$0) })
                #expect(try Proof.decode(frame.payload).mac
                    == HandshakeCrypto.proof(secret: Self.secret, helloBody: helloBody, serverNonce: Self.serverNonce))
            case .welcome:
                let welcome = try Welcome.decode(try Self.keys.controllerToAgent.open(frame, sequence: 1))
                #expect(welcome.epoch == 3 && welcome.leaseMilliseconds == 2_000 && welcome.heartbeatIntervalMilliseconds == 100)
            case .reject:
                #expect(try Reject.decode(frame.payload) == Reject(code: .authenticationFailed, reason: "authentication failed"))
            case .heartbeat:
                let first = Heartbeat(sequence: 1, sentAtMilliseconds: 123_456, status: Self.status)
                if name == "heartbeat" {
                    let body = try Self.keys.agentToController.open(frame, sequence: 1)
                    #expect(try Heartbeat.decode(body, flags: frame.flags, sequence: 1, after: nil) == first)
                    #expect(bytes.count == 22)
                } else {
                    let body = try Self.keys.agentToController.open(frame, sequence: 2)
                    #expect(try Heartbeat.decode(body, flags: frame.flags, sequence: 2, after: first)
                        == Heartbeat(sequence: 2, sentAtMilliseconds: 123_556, status: Self.status))
                    #expect(bytes.count == 11)
                }
            case .lease where name == "lease":
                let body = try Self.keys.controllerToAgent.open(frame, sequence: 2)
                let grant = try LeaseGrant.decode(body, sequence: 2, lastSent: 2)
                #expect(grant == LeaseGrant(sequence: 2, acknowledgedSequence: 2, leaseMilliseconds: 2_000, epoch: 3))
            case .lease:
                let inputs = try #require(entry["inputs"] as? [String: String])
                let sequence = try #require(inputs["sequence"].flatMap { UInt32($0) })
                let lastSent = try #require(inputs["agent_last_sent"].flatMap { UInt32($0) })
                let widened = try #require(inputs["widened_sequence"].flatMap { UInt32($0) })
                let body = try Self.keys.controllerToAgent.open(frame, sequence: sequence)
                let grant = try LeaseGrant.decode(body, sequence: sequence, lastSent: lastSent)
                #expect(grant == LeaseGrant(sequence: sequence, acknowledgedSequence: widened, leaseMilliseconds: 2_000, epoch: 3),
                        "\(name)")
                #expect(Self.hex(frame) == bytes.hexString)
            case .telemetry:
                let sequence: UInt32 = frame.flags.contains(.compressed) ? 4 : 3
                let body = Array(buffer: try Self.keys.agentToController.open(frame, sequence: sequence))
                let document = frame.flags.contains(.compressed) ? try Zstd.decompress(body) : body
                let expected = frame.flags.contains(.compressed) ? Self.largeDocument : Self.smallDocument
                #expect(String(decoding: document, as: UTF8.self) == expected)
                #expect(document.count == (frame.flags.contains(.compressed) ? 754 : 56))  // as §10 says
            case .goodbye:
                let body = try Self.keys.agentToController.open(frame, sequence: 5)
                #expect(try Goodbye.decode(body, sequence: 5) == Goodbye(sequence: 5, reason: .shutdown))
            }
        }
    }

    /// The version-1 Reject: what the controller answers a stream opening with `00`, byte for byte,
    /// and readable as version 1 framed it (u32 length of what follows, version, type, flags,
    /// body; no MAC).
    static func checkVersionOneReject(_ bytes: [UInt8]) throws {
        var stream = ByteBuffer(bytes: [0, 0, 0, 40, 1, 1, 0])
        #expect(throws: ProtocolViolation.versionOneFrame) { try FrameParser().parse(&stream) }
        var controller = ControllerSessionStateMachine(
            keyring: Keyring(["gpu-1": secret]), serverNonce: serverNonce,
            terms: SessionTerms(heartbeatIntervalMilliseconds: 100, silenceTimeoutMilliseconds: 350,
                                leaseMilliseconds: 2_000, telemetryIntervalMilliseconds: 30_000), epoch: 3)
        guard case .close(.versionOneFrame, .versionOne(let reject)?) = controller.decodeFailed(.versionOneFrame) else {
            Issue.record("no version-1 Reject for a version-1 frame")
            return
        }
        #expect(Array(buffer: reject) == bytes)
        var frame = ByteBuffer(bytes: bytes)
        let length = frame.readInteger(as: UInt32.self)
        #expect(length.map { Int($0) } == frame.readableBytes)
        let header = frame.readBytes(length: 3)
        #expect(header == [1, MessageType.reject.rawValue, 0])
        #expect(try Reject.decode(frame) == versionOneReject)
        #expect(versionOneReject.code == .unsupportedVersion)
    }

    /// §3.7: each widening vector's grant, fed to a real agent session whose last frame was
    /// `agent_last_sent`, comes out acknowledging `widened_sequence`.
    @Test func theAgentWidensEachGrantAsItsVectorSays() throws {
        let data = try Data(contentsOf: URL(fileURLWithPath: Self.vectorsPath))
        let file = try #require(try JSONSerialization.jsonObject(with: data) as? [[String: Any]])
        let entries = file.filter { ($0["inputs"] as? [String: String])?["agent_last_sent"] != nil }
        #expect(entries.count == Self.widenings.count)
        for entry in entries {
            let name = try #require(entry["name"] as? String)
            let inputs = try #require(entry["inputs"] as? [String: String])
            let sequence = try #require(inputs["sequence"].flatMap { UInt32($0) })
            let lastSent = try #require(inputs["agent_last_sent"].flatMap { UInt32($0) })
            let widened = try #require(inputs["widened_sequence"].flatMap { UInt32($0) })
            let bytes = try #require((entry["frame_hex"] as? String).flatMap { [UInt8](hexString: $0) })
            var buffer = ByteBuffer(bytes: bytes)
            let frame = try #require(try FrameParser().parse(&buffer))
            var agent = Self.establishedAgent(inbound: sequence, outbound: lastSent &+ 1)
            guard case .lease(let grant) = agent.frameReceived(frame) else {
                Issue.record("\(name): the agent did not take the grant")
                continue
            }
            #expect(grant.acknowledgedSequence == widened, "\(name)")
            #expect(grant.sequence == sequence && grant.leaseMilliseconds == 2_000 && grant.epoch == 3, "\(name)")
        }
    }
}
