import Foundation
import NIOCore
import NIOEmbedded
import Testing
import WarmpoolWire
@testable import WarmpoolController

/// The controller's pipeline in memory: bytes in, frames and closes out, no sockets.
@Suite struct ControllerConnectionHandlerTests {
    static let secret = try! AgentSecret(bytes: Array(0..<32))

    func makeChannel() throws -> (EmbeddedChannel, LivenessHub, String) {
        let eventsPath = FileManager.default.temporaryDirectory.appendingPathComponent("events-\(UUID().uuidString)").path
        let hub = LivenessHub(
            configuration: .init(detector: DetectorConfiguration(heartbeatInterval: 100_000_000)),
            keyring: Keyring(["gpu-1": Self.secret]), epoch: 3, eventLog: try LivenessEventLog(path: eventsPath))
        let channel = EmbeddedChannel()
        try channel.pipeline.syncOperations.addHandler(ControllerConnectionHandler(hub: hub, logger: .init(label: "test")))
        try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
        return (channel, hub, eventsPath)
    }

    func bytes(_ frame: Frame) -> ByteBuffer {
        var buffer = ByteBuffer()
        frame.write(into: &buffer)
        return buffer
    }

    func readFrame(_ channel: EmbeddedChannel) throws -> Frame? {
        guard var buffer = try channel.readOutbound(as: ByteBuffer.self) else { return nil }
        return try FrameParser().parse(&buffer)
    }

    @Test func aFullSessionAuthenticatesBeatsAndGetsALease() throws {
        let (channel, hub, eventsPath) = try makeChannel()
        defer { try? FileManager.default.removeItem(atPath: eventsPath) }
        var agent = AgentSessionStateMachine(
            hello: Hello(clientNonce: HandshakeCrypto.randomNonce(), role: .primary, instanceID: 1, machineID: 2,
                         agentID: "gpu-1", softwareVersion: "t"),
            secret: Self.secret)
        try channel.writeInbound(bytes(agent.start()))
        guard case .send(let proof) = agent.frameReceived(try #require(try readFrame(channel))) else {
            Issue.record("no challenge")
            return
        }
        try channel.writeInbound(bytes(proof))
        guard case .established(let welcome) = agent.frameReceived(try #require(try readFrame(channel))) else {
            Issue.record("no welcome")
            return
        }
        #expect(welcome.epoch == 3)
        let sealed = agent.sealHeartbeat(sentAtNanoseconds: 1, status: AgentStatus())
        try channel.writeInbound(bytes(try #require(sealed).frame))
        guard case .lease(let grant) = agent.frameReceived(try #require(try readFrame(channel))) else {
            Issue.record("no lease for the first beat")
            return
        }
        #expect(grant.acknowledgedSequence == 1 && grant.epoch == 3 && grant.leaseMilliseconds == 2_000)
        #expect(hub.heartbeatsReceived == 1)
        #expect(hub.connectedAgents == 1)
        // The second beat comes well inside a quarter lease: no new grant yet.
        let second = agent.sealHeartbeat(sentAtNanoseconds: 2, status: AgentStatus())
        try channel.writeInbound(bytes(try #require(second).frame))
        #expect(try readFrame(channel) == nil)
        #expect(channel.isActive)
    }

    @Test func garbageIsRejectedAndTheChannelClosed() throws {
        let (channel, _, eventsPath) = try makeChannel()
        defer { try? FileManager.default.removeItem(atPath: eventsPath) }
        try? channel.writeInbound(ByteBuffer(bytes: [0xFF, 0xFF, 0xFF, 0xFF]))
        let reject = try #require(try readFrame(channel))
        #expect(reject.type == .reject)
        #expect(try Reject.decode(reject.payload).reason == "frame length 4294967295 exceeds the maximum of 65536 bytes")
        #expect(!channel.isActive)
    }
}
