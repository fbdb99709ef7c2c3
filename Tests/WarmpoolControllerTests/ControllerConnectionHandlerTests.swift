import Foundation
import NIOCore
import NIOEmbedded
import Testing
import WarmpoolWire
@testable import WarmpoolController

/// The controller's pipeline in memory: bytes in, frames and closes out, no sockets.
@Suite struct ControllerConnectionHandlerTests {
    static let secret = try! AgentSecret(bytes: Array(0..<32))

    func makeChannel(leaseMilliseconds: UInt32 = 2_000) throws -> (EmbeddedChannel, LivenessHub, String) {
        let eventsPath = FileManager.default.temporaryDirectory.appendingPathComponent("events-\(UUID().uuidString)").path
        let hub = LivenessHub(
            configuration: .init(detector: DetectorConfiguration(heartbeatInterval: 100_000_000), leaseMilliseconds: leaseMilliseconds),
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
        _ = try? channel.writeInbound(ByteBuffer(bytes: [0xFF, 0xFF, 0xFF, 0xFF]))
        let reject = try #require(try readFrame(channel))
        #expect(reject.type == .reject)
        #expect(try Reject.decode(reject.payload).reason
            == "frame length field runs past 3 bytes (more than the 65536-byte maximum)")
        #expect(!channel.isActive)
    }

    /// Runs the handshake of agent gpu-1 (instance 1) on `channel` and returns its side, established.
    func establishedAgent(on channel: EmbeddedChannel) throws -> AgentSessionStateMachine {
        var agent = AgentSessionStateMachine(
            hello: Hello(clientNonce: HandshakeCrypto.randomNonce(), role: .primary, instanceID: 1, machineID: 2,
                         agentID: "gpu-1", softwareVersion: "t"),
            secret: Self.secret)
        try channel.writeInbound(bytes(agent.start()))
        guard case .send(let proof) = agent.frameReceived(try #require(try readFrame(channel))) else {
            throw TestFailure("no challenge")
        }
        try channel.writeInbound(bytes(proof))
        guard case .established = agent.frameReceived(try #require(try readFrame(channel))) else {
            throw TestFailure("no welcome")
        }
        return agent
    }

    struct TestFailure: Error, CustomStringConvertible {
        var description: String
        init(_ description: String) { self.description = description }
    }

    /// The failover engine's word on an instance's lease: granted at the pool's epoch, or revoked
    /// whatever the detector thinks; set before the agent connects, it holds from the first beat.
    @Test func leasesFollowTheEnginesPosturePerInstance() throws {
        // A 40 ms lease is renewed every 10 ms: beats 15 ms apart each get a grant when allowed.
        let (channel, hub, eventsPath) = try makeChannel(leaseMilliseconds: 40)
        defer { try? FileManager.default.removeItem(atPath: eventsPath) }
        hub.grantLease(instanceID: 1, epoch: 7)
        var agent = try establishedAgent(on: channel)

        func beat(_ sentAt: UInt64) throws -> LeaseGrant? {
            Thread.sleep(forTimeInterval: 0.015)
            let sealed = agent.sealHeartbeat(sentAtNanoseconds: sentAt, status: AgentStatus())
            try channel.writeInbound(bytes(try #require(sealed).frame))
            guard let frame = try readFrame(channel) else { return nil }
            guard case .lease(let grant) = agent.frameReceived(frame) else { return nil }
            return grant
        }
        #expect(try beat(1)?.epoch == 7, "granted at the pool's epoch, not the controller's 3")
        hub.revokeLease(instanceID: 1)
        #expect(try beat(2) == nil, "revoked: no grant, though the agent is alive")
        #expect(try beat(3) == nil)
        #expect(hub.leasePosture(instanceID: 1) == .revoked)
        hub.grantLease(instanceID: 1, epoch: 8)
        #expect(try beat(4)?.epoch == 8)
        #expect(channel.isActive)
    }

    @Test func revokingAnAgentsKeyClosesItsLiveSession() throws {
        let (channel, hub, eventsPath) = try makeChannel()
        defer { try? FileManager.default.removeItem(atPath: eventsPath) }
        _ = try establishedAgent(on: channel)
        hub.replaceKeyring(Keyring(["gpu-1": Self.secret, "gpu-2": try AgentSecret(bytes: Array(repeating: 7, count: 32))]))
        channel.embeddedEventLoop.run()
        #expect(channel.isActive, "an unrelated key change leaves the session alone")
        hub.replaceKeyring(Keyring())
        channel.embeddedEventLoop.run()
        #expect(!channel.isActive, "the revoked agent's session is closed")
    }
}
