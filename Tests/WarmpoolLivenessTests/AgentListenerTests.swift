import Foundation
import Glibc
import NIOCore
import Testing
import WarmpoolTestSupport
import WarmpoolModel
import WarmpoolWire
@testable import WarmpoolLiveness

/// The controller's agent listener on a real loopback socket: bytes in, frames and closes out.
@Suite struct AgentListenerTests {
    static let secret = try! AgentSecret(bytes: Array(0..<32))

    /// A listener on an ephemeral port, serving until `body` returns.
    func withListener(
        lease: Duration = .seconds(2), _ body: (LivenessHub, Int) throws -> Void
    ) async throws {
        let bus = LivenessEventBus()
        defer { bus.finish() }
        let hub = LivenessHub(
            configuration: .init(detector: DetectorConfiguration(heartbeatInterval: .milliseconds(100)), lease: lease),
            keyring: Keyring(["gpu-1": Self.secret]), epoch: 3, bus: bus)
        let listener = try AgentListener(host: "127.0.0.1", port: 0, hub: hub, logger: .init(label: "test"))
        listener.start()
        defer { listener.stop() }
        try body(hub, try #require(listener.localAddress.port))
        listener.stop()
        await listener.stopped()
    }

    struct TestFailure: Error, CustomStringConvertible {
        var description: String
        init(_ description: String) { self.description = description }
    }

    /// Runs the handshake of agent gpu-1 (instance 1) and returns its side, established.
    func establishedAgent(_ client: RawClient) throws -> (AgentSessionStateMachine, Welcome) {
        var agent = AgentSessionStateMachine(
            hello: Hello(clientNonce: HandshakeCrypto.randomNonce(), role: .primary, instanceID: 1, machineID: 2,
                         agentID: "gpu-1", softwareVersion: "t", incarnation: 1),
            secret: Self.secret)
        client.send(agent.start())
        guard case .send(let proof) = agent.frameReceived(try client.readFrame()) else {
            throw TestFailure("no challenge")
        }
        client.send(proof)
        guard case .established(let welcome) = agent.frameReceived(try client.readFrame()) else {
            throw TestFailure("no welcome")
        }
        return (agent, welcome)
    }

    @Test func aFullSessionAuthenticatesBeatsAndGetsALease() async throws {
        try await withListener { hub, port in
            let client = try RawClient("127.0.0.1:\(port)", receiveTimeout: 0.3)
            var (agent, welcome) = try establishedAgent(client)
            #expect(welcome.epoch == 3)
            let sealed = agent.sealHeartbeat(sentAtNanoseconds: 1_000_000, status: AgentStatus())
            client.send(try #require(sealed).frame)
            guard case .lease(let grant) = agent.frameReceived(try client.readFrame()) else {
                Issue.record("no lease for the first beat")
                return
            }
            #expect(grant.acknowledgedSequence == 1 && grant.epoch == 3 && grant.leaseMilliseconds == 2_000)
            #expect(hub.heartbeatsReceived == 1)
            #expect(hub.connectedAgents == 1)
            // The second beat comes well inside a quarter lease: no new grant yet, and the session stays.
            let second = agent.sealHeartbeat(sentAtNanoseconds: 2_000_000, status: AgentStatus())
            client.send(try #require(second).frame)
            #expect(throws: HarnessError.self) { try client.readFrame() }
            #expect(hub.heartbeatsReceived == 2)
            #expect(!client.readUntilClosed().closed)
        }
    }

    @Test func garbageIsRejectedAndTheConnectionClosed() async throws {
        try await withListener { _, port in
            let client = try RawClient("127.0.0.1:\(port)", receiveTimeout: 0.3)
            client.send([0xFF, 0xFF, 0xFF, 0xFF])
            let reject = try client.readFrame()
            #expect(reject.type == .reject)
            #expect(try Reject.decode(reject.payload).reason
                == "frame length field runs past 3 bytes (more than the 65536-byte maximum)")
            #expect(client.readUntilClosed().closed)
        }
    }

    @Test func aFrameSplitAcrossReadsIsReassembled() async throws {
        // The Hello in three pieces, the last two 50 ms apart: the listener must keep the start.
        try await withListener { _, port in
            let client = try RawClient("127.0.0.1:\(port)", receiveTimeout: 0.3)
            var agent = AgentSessionStateMachine(
                hello: Hello(clientNonce: HandshakeCrypto.randomNonce(), role: .primary, instanceID: 1, machineID: 2,
                             agentID: "gpu-1", softwareVersion: "t", incarnation: 1),
                secret: Self.secret)
            var hello = ByteBuffer()
            agent.start().write(into: &hello)
            let bytes = Array(buffer: hello)
            for piece in [bytes[0..<1], bytes[1..<20], bytes[20...]] {
                client.send(Array(piece))
                usleep(50_000)
            }
            #expect(try client.readFrame().type == .challenge)
        }
    }

    /// The failover engine's word on an instance's lease: granted at the pool's epoch, or revoked
    /// whatever the detector thinks; set before the agent connects, it holds from the first beat.
    @Test func leasesFollowTheEnginesPosturePerInstance() async throws {
        // A 40 ms lease is renewed every 10 ms: beats 15 ms apart each get a grant when allowed.
        try await withListener(lease: .milliseconds(40)) { hub, port in
            hub.grantLease(instanceID: 1, epoch: 7)
            let client = try RawClient("127.0.0.1:\(port)", receiveTimeout: 0.3)
            var (agent, _) = try establishedAgent(client)
            var sentAt: UInt64 = 0
            func beat() throws -> LeaseGrant? {
                Thread.sleep(forTimeInterval: 0.015)
                sentAt += 15_000_000
                let sealed = agent.sealHeartbeat(sentAtNanoseconds: sentAt, status: AgentStatus())
                client.send(try #require(sealed).frame)
                guard let frame = try? client.readFrame() else { return nil }
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
            #expect(!client.readUntilClosed().closed)
        }
    }

    @Test func revokingAnAgentsKeyClosesItsLiveSession() async throws {
        try await withListener { hub, port in
            let client = try RawClient("127.0.0.1:\(port)", receiveTimeout: 0.3)
            _ = try establishedAgent(client)
            hub.replaceKeyring(Keyring(["gpu-1": Self.secret, "gpu-2": try AgentSecret(bytes: Array(repeating: 7, count: 32))]))
            #expect(!client.readUntilClosed().closed, "an unrelated key change leaves the session alone")
            hub.replaceKeyring(Keyring())
            #expect(client.readUntilClosed().closed, "the revoked agent's session is closed")
        }
    }

    /// The host key an agent reports in Telemetry is the instance's attested key only while the
    /// agent's key is bound to that instance: a keys-file agent that merely names the instance
    /// vouches for nothing (issue 20).
    @Test func aReportedHostKeyIsAttestedOnlyForTheInstanceTheAgentIsBoundTo() async throws {
        try await withListener { hub, port in
            let client = try RawClient("127.0.0.1:\(port)", receiveTimeout: 0.3)
            var (agent, _) = try establishedAgent(client)
            let fingerprint = "SHA256:" + String(repeating: "A", count: 43)
            let report = agent.sealTelemetry(document: Array(#"{"agent_id":"gpu-1","ssh_host_key":"\#(fingerprint)"}"#.utf8))
            client.send(try #require(report))
            try waitFor("the report to arrive") { hub.hasHostKeyReport(from: "gpu-1") }
            #expect(hub.attestedHostKey(instanceID: 1) == nil, "unbound: the claim of instance 1 is the agent's word only")
            hub.replaceKeyring(Keyring(["gpu-1": Self.secret], bindings: ["gpu-1": 1]))
            #expect(hub.attestedHostKey(instanceID: 1) == fingerprint)
            #expect(hub.attestedHostKey(instanceID: 2) == nil)
            // Not a fingerprint, not JSON: ignored, the report in hand stands, the session stays open.
            let short = agent.sealTelemetry(document: Array(#"{"ssh_host_key":"SHA256:short"}"#.utf8))
            let broken = agent.sealTelemetry(document: Array("[1,2".utf8))
            client.send(try #require(short))
            client.send(try #require(broken))
            #expect(!client.readUntilClosed().closed)
            #expect(hub.attestedHostKey(instanceID: 1) == fingerprint)
            hub.forget(instanceID: 1)
            #expect(hub.attestedHostKey(instanceID: 1) == nil, "a destroyed instance's report goes with it")
        }
    }

    private func waitFor(_ what: String, timeout: Double = 5, _ condition: () -> Bool) throws {
        let deadline = Date().addingTimeInterval(timeout)
        while !condition() {
            guard Date() < deadline else { throw TestFailure("timed out waiting for \(what)") }
            usleep(10_000)
        }
    }
}
