import Foundation
import Glibc
import NIOCore
import Testing
import WarmpoolWire
@testable import WarmpoolController

/// The controller's agent listener on a real loopback socket: bytes in, frames and closes out.
@Suite struct AgentListenerTests {
    static let secret = try! AgentSecret(bytes: Array(0..<32))

    /// A listener on an ephemeral port, serving until `body` returns.
    func withListener(
        leaseMilliseconds: UInt32 = 2_000, _ body: (LivenessHub, Int) throws -> Void
    ) async throws {
        let eventsPath = FileManager.default.temporaryDirectory.appendingPathComponent("events-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: eventsPath) }
        let hub = LivenessHub(
            configuration: .init(detector: DetectorConfiguration(heartbeatInterval: 100_000_000), leaseMilliseconds: leaseMilliseconds),
            keyring: Keyring(["gpu-1": Self.secret]), epoch: 3, eventLog: try LivenessEventLog(path: eventsPath))
        let listener = try AgentListener(host: "127.0.0.1", port: 0, hub: hub, logger: .init(label: "test"))
        listener.start()
        defer { listener.stop() }
        try body(hub, try #require(listener.localAddress.port))
        listener.stop()
        await listener.stopped()
    }

    /// A blocking client socket with a short receive timeout, so "nothing came" is an answer.
    final class Client {
        let fd: Int32
        init(port: Int) throws {
            fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            var timeout = timeval(tv_sec: 0, tv_usec: 300_000)
            setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
            var address = sockaddr_in()
            address.sin_family = sa_family_t(AF_INET)
            address.sin_port = in_port_t(UInt16(port).bigEndian)
            address.sin_addr.s_addr = inet_addr("127.0.0.1")
            let connected = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
            }
            guard connected == 0 else { throw TestFailure("connect: errno \(errno)") }
        }
        deinit { close(fd) }

        func send(_ bytes: [UInt8]) {
            _ = bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
        }

        func send(_ frame: Frame) {
            var buffer = ByteBuffer()
            frame.write(into: &buffer)
            send(Array(buffer: buffer))
        }

        /// The next frame, or nil when none came within the timeout or the peer closed.
        func readFrame() throws -> Frame? {
            var pending = ByteBuffer()
            var byte: UInt8 = 0
            while true {
                if let frame = try FrameParser().parse(&pending) { return frame }
                guard recv(fd, &byte, 1, 0) == 1 else { return nil }
                pending.writeInteger(byte)
            }
        }

        /// Whether the peer has closed (a read returns end of stream within a second).
        func closedByPeer() -> Bool {
            var byte: UInt8 = 0
            for _ in 0..<4 {
                let count = recv(fd, &byte, 1, 0)
                if count == 0 || (count < 0 && errno == ECONNRESET) { return true }
            }
            return false
        }
    }

    struct TestFailure: Error, CustomStringConvertible {
        var description: String
        init(_ description: String) { self.description = description }
    }

    /// Runs the handshake of agent gpu-1 (instance 1) and returns its side, established.
    func establishedAgent(_ client: Client) throws -> (AgentSessionStateMachine, Welcome) {
        var agent = AgentSessionStateMachine(
            hello: Hello(clientNonce: HandshakeCrypto.randomNonce(), role: .primary, instanceID: 1, machineID: 2,
                         agentID: "gpu-1", softwareVersion: "t"),
            secret: Self.secret)
        client.send(agent.start())
        guard case .send(let proof) = agent.frameReceived(try #require(try client.readFrame())) else {
            throw TestFailure("no challenge")
        }
        client.send(proof)
        guard case .established(let welcome) = agent.frameReceived(try #require(try client.readFrame())) else {
            throw TestFailure("no welcome")
        }
        return (agent, welcome)
    }

    @Test func aFullSessionAuthenticatesBeatsAndGetsALease() async throws {
        try await withListener { hub, port in
            let client = try Client(port: port)
            var (agent, welcome) = try establishedAgent(client)
            #expect(welcome.epoch == 3)
            let sealed = agent.sealHeartbeat(sentAtNanoseconds: 1_000_000, status: AgentStatus())
            client.send(try #require(sealed).frame)
            guard case .lease(let grant) = agent.frameReceived(try #require(try client.readFrame())) else {
                Issue.record("no lease for the first beat")
                return
            }
            #expect(grant.acknowledgedSequence == 1 && grant.epoch == 3 && grant.leaseMilliseconds == 2_000)
            #expect(hub.heartbeatsReceived == 1)
            #expect(hub.connectedAgents == 1)
            // The second beat comes well inside a quarter lease: no new grant yet, and the session stays.
            let second = agent.sealHeartbeat(sentAtNanoseconds: 2_000_000, status: AgentStatus())
            client.send(try #require(second).frame)
            #expect(try client.readFrame() == nil)
            #expect(hub.heartbeatsReceived == 2)
            #expect(!client.closedByPeer())
        }
    }

    @Test func garbageIsRejectedAndTheConnectionClosed() async throws {
        try await withListener { _, port in
            let client = try Client(port: port)
            client.send([0xFF, 0xFF, 0xFF, 0xFF])
            let reject = try #require(try client.readFrame())
            #expect(reject.type == .reject)
            #expect(try Reject.decode(reject.payload).reason
                == "frame length field runs past 3 bytes (more than the 65536-byte maximum)")
            #expect(client.closedByPeer())
        }
    }

    @Test func aFrameSplitAcrossReadsIsReassembled() async throws {
        // The Hello in three pieces, the last two 50 ms apart: the listener must keep the start.
        try await withListener { _, port in
            let client = try Client(port: port)
            var agent = AgentSessionStateMachine(
                hello: Hello(clientNonce: HandshakeCrypto.randomNonce(), role: .primary, instanceID: 1, machineID: 2,
                             agentID: "gpu-1", softwareVersion: "t"),
                secret: Self.secret)
            var hello = ByteBuffer()
            agent.start().write(into: &hello)
            let bytes = Array(buffer: hello)
            for piece in [bytes[0..<1], bytes[1..<20], bytes[20...]] {
                client.send(Array(piece))
                usleep(50_000)
            }
            #expect(try client.readFrame()?.type == .challenge)
        }
    }

    /// The failover engine's word on an instance's lease: granted at the pool's epoch, or revoked
    /// whatever the detector thinks; set before the agent connects, it holds from the first beat.
    @Test func leasesFollowTheEnginesPosturePerInstance() async throws {
        // A 40 ms lease is renewed every 10 ms: beats 15 ms apart each get a grant when allowed.
        try await withListener(leaseMilliseconds: 40) { hub, port in
            hub.grantLease(instanceID: 1, epoch: 7)
            let client = try Client(port: port)
            var (agent, _) = try establishedAgent(client)
            var sentAt: UInt64 = 0
            func beat() throws -> LeaseGrant? {
                Thread.sleep(forTimeInterval: 0.015)
                sentAt += 15_000_000
                let sealed = agent.sealHeartbeat(sentAtNanoseconds: sentAt, status: AgentStatus())
                client.send(try #require(sealed).frame)
                guard let frame = try client.readFrame() else { return nil }
                guard case .lease(let grant) = agent.frameReceived(frame) else { return nil }
                return grant
            }
            #expect(try beat()?.epoch == 7, "granted at the pool's epoch, not the controller's 3")
            hub.revokeLease(instanceID: 1)
            #expect(try beat() == nil, "revoked: no grant, though the agent is alive")
            #expect(try beat() == nil)
            #expect(hub.leasePosture(instanceID: 1) == .revoked)
            hub.grantLease(instanceID: 1, epoch: 8)
            #expect(try beat()?.epoch == 8)
            #expect(!client.closedByPeer())
        }
    }

    @Test func revokingAnAgentsKeyClosesItsLiveSession() async throws {
        try await withListener { hub, port in
            let client = try Client(port: port)
            _ = try establishedAgent(client)
            hub.replaceKeyring(Keyring(["gpu-1": Self.secret, "gpu-2": try AgentSecret(bytes: Array(repeating: 7, count: 32))]))
            #expect(!client.closedByPeer(), "an unrelated key change leaves the session alone")
            hub.replaceKeyring(Keyring())
            #expect(client.closedByPeer(), "the revoked agent's session is closed")
        }
    }
}
