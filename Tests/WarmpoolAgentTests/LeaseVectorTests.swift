import Foundation
import NIOCore
import Testing
@testable import WarmpoolAgent
@testable import WarmpoolWire

/// The lease-widening vectors of Protocol/vectors/vectors.json (PROTOCOL.md §3.7, §7), fed to the
/// agent's real code: an agent session that sends what `agent_sent` lists (heartbeats recorded in
/// the send-time table, as the connection handler does), then receives the vector's grant. The
/// grant must widen to `widened_sequence`, and the table must anchor it on `anchored_on` (or on
/// nothing: `none`).
@Suite struct LeaseVectorTests {
    static let vectorsPath = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Protocol/vectors/vectors.json").path

    /// `kind first[-last], ...` in the order sent.
    static func frames(_ agentSent: String) throws -> [(kind: String, sequence: UInt32)] {
        var frames: [(kind: String, sequence: UInt32)] = []
        for item in agentSent.split(separator: ",") {
            let parts = item.split(separator: " ")
            try #require(parts.count == 2, "bad agent_sent item \(item)")
            let bounds = parts[1].split(separator: "-").map { UInt32($0) }
            let first = try #require(bounds.first ?? nil)
            let last = try #require(bounds.last ?? nil)
            for sequence in first...last { frames.append((String(parts[0]), sequence)) }
        }
        return frames
    }

    static func body(_ write: (inout ByteBuffer) -> Void) -> ByteBuffer {
        var buffer = ByteBuffer()
        write(&buffer)
        return buffer
    }

    @Test func eachGrantIsWidenedAndAnchoredAsItsVectorSays() throws {
        let data = try Data(contentsOf: URL(fileURLWithPath: Self.vectorsPath))
        let file = try #require(try JSONSerialization.jsonObject(with: data) as? [[String: Any]])
        let entries = file.filter { ($0["inputs"] as? [String: String])?["agent_sent"] != nil }
        #expect(entries.count >= 6)
        for entry in entries {
            let name = try #require(entry["name"] as? String)
            let inputs = try #require(entry["inputs"] as? [String: String])
            let secret = try AgentSecret(hex: try #require(inputs["secret_hex"]))
            let clientNonce = try #require(inputs["client_nonce_hex"].flatMap { [UInt8](hexString: $0) })
            let serverNonce = try #require(inputs["server_nonce_hex"].flatMap { [UInt8](hexString: $0) })
            let sequence = try #require(inputs["sequence"].flatMap { UInt32($0) })
            let widened = try #require(inputs["widened_sequence"].flatMap { UInt32($0) })
            let anchoredOn = try #require(inputs["anchored_on"])
            let sent = try Self.frames(try #require(inputs["agent_sent"]))
            let first = try #require(sent.first)
            #expect(inputs["agent_last_sent"] == sent.last.map { "\($0.sequence)" }, "\(name)")

            // A real agent session, established with the vector's keys, its counters moved on.
            let keys = HandshakeCrypto.sessionKeys(secret: secret, clientNonce: clientNonce, serverNonce: serverNonce)
            var agent = AgentSessionStateMachine(
                hello: Hello(clientNonce: clientNonce, role: .primary, instanceID: 1001, machineID: 77, agentID: "gpu-1",
                             softwareVersion: "0.1.0", incarnation: 1),
                secret: secret)
            _ = agent.start()
            _ = agent.frameReceived(Frame(type: .challenge, payload: Self.body { Challenge(serverNonce: serverNonce).encode(into: &$0) }))
            let welcome = Welcome(
                heartbeatIntervalMilliseconds: 100, silenceTimeoutMilliseconds: 350, leaseMilliseconds: 2_000,
                telemetryIntervalMilliseconds: 30_000, epoch: 3)
            guard case .established = agent.frameReceived(
                keys.controllerToAgent.seal(sequence: 1, type: .welcome, body: Self.body { welcome.encode(into: &$0) }))
            else {
                Issue.record("\(name): no session")
                continue
            }
            agent.fastForward(inbound: sequence, outbound: first.sequence)

            // What the agent sent, with the send time of each heartbeat in the table.
            var table = HeartbeatSendTimes()
            var sentAt: [UInt32: Int64] = [:]
            for (index, frame) in sent.enumerated() {
                let now = 1_000_000_000 + Int64(index) * 100_000_000
                switch frame.kind {
                case "heartbeat":
                    let heartbeat = agent.sealHeartbeat(sentAtNanoseconds: UInt64(now), status: AgentStatus())
                    let sealed = try #require(heartbeat)
                    #expect(sealed.sequence == frame.sequence, "\(name)")
                    table.record(sequence: sealed.sequence, at: now)
                    sentAt[sealed.sequence] = now
                case "telemetry":
                    let telemetry = agent.sealTelemetry(document: Array(#"{"agent_id":"gpu-1"}"#.utf8))
                    #expect(telemetry != nil, "\(name)")
                case "goodbye":
                    let goodbye = agent.sealGoodbye(reason: .shutdown)
                    #expect(goodbye != nil, "\(name)")
                default:
                    Issue.record("\(name): unknown kind \(frame.kind)")
                }
            }

            let bytes = try #require((entry["frame_hex"] as? String).flatMap { [UInt8](hexString: $0) })
            var buffer = ByteBuffer(bytes: bytes)
            let frame = try #require(try FrameParser().parse(&buffer))
            guard case .lease(let grant) = agent.frameReceived(frame) else {
                Issue.record("\(name): the agent did not take the grant")
                continue
            }
            #expect(grant.acknowledgedSequence == widened, "\(name)")
            if anchoredOn == "none" {
                #expect(table.sentAt(grant.acknowledgedSequence) == nil, "\(name): the grant should be ignored")
            } else {
                let beat = try #require(UInt32(anchoredOn))
                #expect(beat == widened, "\(name)")
                #expect(table.sentAt(grant.acknowledgedSequence) == sentAt[beat], "\(name)")
                #expect(sentAt[beat] != nil, "\(name)")
            }
        }
    }

    @Test func onlyHeartbeatsWriteTheTable() {
        var table = HeartbeatSendTimes()
        table.record(sequence: 5, at: 1_000)
        #expect(table.sentAt(5) == 1_000)
        #expect(table.sentAt(69) == nil)  // same entry, another number
        #expect(table.sentAt(0) == nil)  // the empty entries hold number 0 and no time
        table.record(sequence: 69, at: 2_000)
        #expect(table.sentAt(5) == nil)
        #expect(table.sentAt(69) == 2_000)
    }
}
