import Foundation
import Glibc
import NIOConcurrencyHelpers
import NIOCore
import Testing
import WarmpoolTestSupport
import WarmpoolModel
import WarmpoolWire
@testable import WarmpoolLiveness

/// What an outside client found it could confuse, driven through the real listener on loopback:
/// the session bookkeeping after every kind of close, the one lease authority, and the caps.
/// Serialized, and the waits asleep rather than blocking: the sockets here block their thread,
/// and the event subscriber needs one of the pool's threads free.
@Suite(.serialized) struct ListenerLimitsTests {
    static let secret = try! AgentSecret(bytes: Array(0..<32))

    /// The detector's events as they are published, for a test that blocks on sockets.
    final class Events: Sendable {
        private let seen = NIOLockedValueBox<[LivenessEvent]>([])

        init(_ bus: LivenessEventBus) {
            let stream = bus.subscribe()
            Task { [seen] in
                for await batch in stream { seen.withLockedValue { $0 += batch } }
            }
        }

        var all: [LivenessEvent] { seen.withLockedValue { $0 } }

        /// Waits (up to 3 s) for the `count`-th event of `kind` and returns it.
        func wait(for kind: LivenessEvent.Kind, count: Int = 1) async throws -> LivenessEvent {
            for _ in 0..<300 {
                let matching = all.filter { $0.kind == kind }
                if matching.count >= count { return matching[count - 1] }
                try await Task.sleep(for: .milliseconds(10))
            }
            throw HarnessError("no \(kind) event #\(count); saw \(all.map { "\($0.kind): \($0.reason)" })")
        }
    }

    func withListener(
        limits: ConnectionLimits = ConnectionLimits(), _ body: (LivenessHub, Int, Events) async throws -> Void
    ) async throws {
        let bus = LivenessEventBus()
        defer { bus.finish() }
        let hub = LivenessHub(
            configuration: .init(
                detector: DetectorConfiguration(heartbeatInterval: .milliseconds(100)), lease: .milliseconds(40),
                limits: limits),
            keyring: Keyring(["gpu-1": Self.secret]), epoch: 3, bus: bus)
        let events = Events(bus)
        let listener = try AgentListener(host: "127.0.0.1", port: 0, hub: hub, logger: .init(label: "test"))
        listener.start()
        defer { listener.stop() }
        try await body(hub, try #require(listener.localAddress.port), events)
        listener.stop()
        await listener.stopped()
    }

    /// One agent session of gpu-1 (instance 1) on a raw socket.
    final class Session {
        let client: RawClient
        var agent: AgentSessionStateMachine
        var sentAt: UInt64 = 0

        init(port: Int, incarnation: UInt64 = 1) throws {
            client = try RawClient("127.0.0.1:\(port)", receiveTimeout: 0.3)
            agent = AgentSessionStateMachine(
                hello: Hello(clientNonce: HandshakeCrypto.randomNonce(), role: .primary, instanceID: 1, machineID: 2,
                             agentID: "gpu-1", softwareVersion: "t", incarnation: incarnation),
                secret: ListenerLimitsTests.secret)
        }

        /// Hello and Proof; true when Welcome came back.
        func handshake() throws -> Bool {
            client.send(agent.start())
            guard case .send(let proof) = agent.frameReceived(try client.readFrame()) else { return false }
            client.send(proof)
            guard let welcome = try? client.readFrame(), case .established = agent.frameReceived(welcome) else { return false }
            return true
        }

        static func established(port: Int) throws -> Session {
            let session = try Session(port: port)
            guard try session.handshake() else { throw HarnessError("no Welcome") }
            return session
        }

        func sealedBeat() -> Frame {
            sentAt += 50_000_000
            return agent.sealHeartbeat(sentAtNanoseconds: sentAt, status: AgentStatus())!.frame
        }

        /// A beat 50 ms after the last; the grant it earned, if any.
        func beat() -> LeaseGrant? {
            usleep(50_000)
            client.send(sealedBeat())
            guard let frame = try? client.readFrame(), case .lease(let grant) = agent.frameReceived(frame) else { return nil }
            return grant
        }

        /// The process dies: the socket closes without a Goodbye.
        func crash() { shutdown(client.fd, Int32(SHUT_RDWR)) }
    }

    static func openSessions(_ hub: LivenessHub) -> Int {
        hub.agentSnapshots().first { $0.identity.agentID == "gpu-1" }?.openSessions ?? 0
    }

    enum Violation: String, CaseIterable, Sendable {
        case flippedMACBit, replayedBeat, oversizedLength, garbage
    }

    /// The outside client's first finding: a session closed for a violation stayed registered,
    /// so the agent's later crash was found by the silence timeout instead of at once, and every
    /// later clean shutdown was reported as `failed` instead of `left`.
    @Test(arguments: Violation.allCases)
    func aSessionClosedForAViolationIsUnregistered(_ violation: Violation) async throws {
        try await withListener { hub, port, events in
            let first = try Session.established(port: port)
            #expect(first.beat() != nil)
            switch violation {
            case .flippedMACBit:
                var bytes = ByteBuffer()
                first.sealedBeat().write(into: &bytes)
                var raw = Array(buffer: bytes)
                raw[raw.count - 1] ^= 0x01
                first.client.send(raw)
            case .replayedBeat:
                let beat = first.sealedBeat()
                first.client.send(beat)
                first.client.send(beat)
            case .oversizedLength:
                first.client.send([0xFF, 0xFF, 0x7F])
            case .garbage:
                first.client.send([0xFF, 0xFF, 0xFF, 0xFF])
            }
            #expect(first.client.readUntilClosed().closed)
            let failed = try await events.wait(for: .failed)
            #expect(failed.reason == "every connection closed without a goodbye", "at once, not after a silence")
            #expect(Self.openSessions(hub) == 0)

            // A clean shutdown afterwards is `left`, not `failed`.
            let second = try Session.established(port: port)
            _ = try await events.wait(for: .recovered)
            #expect(Self.openSessions(hub) == 1)
            second.client.send(second.agent.sealGoodbye(reason: .shutdown)!)
            second.crash()
            _ = try await events.wait(for: .left)

            // And a crash after that is found at once again.
            let third = try Session.established(port: port)
            _ = try await events.wait(for: .connected)
            third.crash()
            let crash = try await events.wait(for: .failed, count: 2)
            #expect(crash.reason == "every connection closed without a goodbye")
            #expect(Self.openSessions(hub) == 0)
        }
    }

    /// The second finding: an agent no pool claims was never granted a lease again after one
    /// failure, and flapped failed/recovered every 4 s as its watchdog closed the silent sessions.
    @Test func anAgentNoPoolClaimsIsGrantedAgainAfterAFailure() async throws {
        try await withListener { hub, port, events in
            let first = try Session.established(port: port)
            #expect(first.beat()?.epoch == 3)
            first.crash()
            _ = try await events.wait(for: .failed)
            let second = try Session.established(port: port)
            #expect(second.beat()?.epoch == 3, "no failover can be under way for it: it is granted at once")
            let snapshot = hub.agentSnapshots().first
            #expect(snapshot?.leaseEpoch == 3 && snapshot?.leaseWithheld == false)
        }
    }

    @Test func aClaimedInstanceIsHeldAfterAFailureUntilTheEngineRules() async throws {
        try await withListener { hub, port, events in
            hub.grantLease(instanceID: 1, epoch: 7)
            let first = try Session.established(port: port)
            #expect(first.beat()?.epoch == 7)
            first.crash()
            _ = try await events.wait(for: .failed)
            #expect(hub.leasePosture(instanceID: 1) == .held(epoch: 7))
            let second = try Session.established(port: port)
            #expect(second.beat() == nil, "recovered, but a failover may be under way")
            #expect(hub.agentSnapshots().first?.leaseWithheld == true)
            hub.releaseHold(instanceID: 1)
            #expect(second.beat()?.epoch == 7)
        }
    }

    @Test func aFifthSessionOfOneAgentIsRefused() async throws {
        try await withListener { hub, port, _ in
            let sessions = try (0..<4).map { _ in try Session.established(port: port) }
            let fifth = try Session(port: port)
            #expect(try !fifth.handshake(), "no Welcome for a fifth session")
            #expect(fifth.client.readUntilClosed().closed)
            #expect(Self.openSessions(hub) == 4)
            #expect(!sessions[0].client.readUntilClosed().closed, "the four in place are left alone")
        }
    }

    @Test func aKeyRevokedDuringTheHandshakeIsRefused() async throws {
        try await withListener { hub, port, events in
            let session = try Session(port: port)
            session.client.send(session.agent.start())
            guard case .send(let proof) = session.agent.frameReceived(try session.client.readFrame()) else {
                Issue.record("no challenge")
                return
            }
            hub.replaceKeyring(Keyring())
            session.client.send(proof)
            #expect(session.client.readUntilClosed().closed)
            #expect(hub.agentSnapshots().isEmpty, "nothing registered")
            #expect(events.all.isEmpty)
        }
    }

    @Test func beforeAuthenticationAFrameOver256BytesIsRefused() async throws {
        try await withListener { _, port, _ in
            let client = try RawClient("127.0.0.1:\(port)", receiveTimeout: 0.3)
            client.send([0xAC, 0x02, 0x01])  // a 300-byte "Hello"
            let reject = try client.readFrame()
            #expect(try Reject.decode(reject.payload).reason == "frame length 300 exceeds the maximum of 256 bytes")
            #expect(client.readUntilClosed().closed)
        }
    }

    /// A session that stops mid-frame beside a live sibling is closed; the agent stays alive.
    @Test func anEstablishedSessionThatStopsMidFrameIsClosed() async throws {
        try await withListener(limits: ConnectionLimits(idleTimeout: .milliseconds(1))) { hub, port, events in
            let live = try Session.established(port: port)
            let stuck = try Session.established(port: port)
            stuck.client.send([0x40])  // the length of a frame that never comes
            let started = Date()
            while Date().timeIntervalSince(started) < 2.5 { _ = live.beat() }
            #expect(stuck.client.readUntilClosed().closed, "closed after ten heartbeat intervals without a frame")
            #expect(!live.client.readUntilClosed().closed)
            #expect(Self.openSessions(hub) == 1)
            #expect(!events.all.contains { $0.kind == .failed || $0.kind == .suspected })
        }
    }

    @Test func aPeerOverItsByteBudgetIsClosed() async throws {
        try await withListener(limits: ConnectionLimits(bytesPerSecond: 1_000, byteBurst: 8_000)) { _, port, events in
            let session = try Session.established(port: port)
            // Random bytes: zstd cannot shrink them under the budget.
            let document = (0..<5_000).map { _ in UInt8.random(in: 0...255) }
            for _ in 0..<3 { session.client.send(session.agent.sealTelemetry(document: document)!) }
            #expect(session.client.readUntilClosed().closed)
            _ = try await events.wait(for: .failed)
        }
    }

    /// A few hundred bytes of zstd can make a megabyte: what decompression produced is charged
    /// too, so the listener's thread is not spent opening such frames one after another.
    @Test func decompressedTelemetryCountsAgainstTheBudget() async throws {
        try await withListener { _, port, events in
            let session = try Session.established(port: port)
            let frame = session.agent.sealTelemetry(document: Array(repeating: UInt8(ascii: "0"), count: 300_000))!
            #expect(frame.flags.contains(.compressed) && frame.payload.readableBytes < 2_000)
            session.client.send(frame)
            #expect(session.client.readUntilClosed().closed)
            _ = try await events.wait(for: .failed)
        }
    }

    /// Unauthenticated connections over the cap push out the oldest: a flood churns itself, and a
    /// real agent's handshake (one round trip) still gets through.
    @Test func theOldestUnauthenticatedConnectionMakesRoom() async throws {
        try await withListener(limits: ConnectionLimits(unauthenticated: 8, unauthenticatedPerAddress: 4)) { hub, port, _ in
            let silent = try (0..<4).map { _ in try RawClient("127.0.0.1:\(port)", receiveTimeout: 0.3) }
            usleep(100_000)
            let newest = try RawClient("127.0.0.1:\(port)", receiveTimeout: 0.3)
            #expect(silent[0].readUntilClosed().closed, "the oldest of the address went")
            #expect(!silent[3].readUntilClosed().closed)
            _ = newest
            let agent = try Session(port: port)
            #expect(try agent.handshake(), "an agent still connects")
            #expect(Self.openSessions(hub) == 1)
        }
    }
}
