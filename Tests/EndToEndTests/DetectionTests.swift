import Foundation
import NIOCore
import Testing
import WarmpoolWire

#if canImport(Glibc)
import Glibc
#endif

/// The real controller and agent binaries on loopback. Bounds here are generous (this machine is
/// shared and noisy); the strict targets live in `Scripts/bench detect`.
@Suite(.serialized) struct DetectionTests {
    @Test func aKilledAgentIsFailedAtOnce() throws {
        let harness = try Harness()
        let secret = try harness.addAgentKey("gpu-1")
        try harness.startController()
        let agent = try harness.startAgent("gpu-1", secretFile: secret)
        _ = try harness.waitForEvent("connected", for: "gpu-1")
        usleep(300_000)
        let killedAt = monotonicNow()
        kill(agent.processIdentifier, SIGKILL)
        let failed = try harness.waitForEvent("failed", for: "gpu-1", timeout: 5)
        let detection = Double(failed.monotonicNanoseconds - killedAt) / 1e6
        #expect(detection < 1_000, "crash detected after \(detection) ms")
        #expect(failed.reason == "every connection closed without a goodbye")
    }

    @Test func aFrozenAgentIsFailedOnSilenceAndRecoversWhenThawed() throws {
        let harness = try Harness()
        let secret = try harness.addAgentKey("gpu-1")
        try harness.startController(intervalMilliseconds: 50)
        let agent = try harness.startAgent("gpu-1", secretFile: secret)
        _ = try harness.waitForEvent("connected", for: "gpu-1")
        usleep(300_000)
        let stoppedAt = monotonicNow()
        kill(agent.processIdentifier, SIGSTOP)
        let suspected = try harness.waitForEvent("suspected", for: "gpu-1", timeout: 5)
        let failed = try harness.waitForEvent("failed", for: "gpu-1", timeout: 5)
        let detection = Double(failed.monotonicNanoseconds - stoppedAt) / 1e6
        #expect(suspected.monotonicNanoseconds < failed.monotonicNanoseconds)
        // The default timeout at 50 ms beats is 200 ms; allow a loaded machine plenty more.
        #expect(detection > 100 && detection < 2_000, "hang detected after \(detection) ms")
        #expect(failed.reason.hasPrefix("silent "))
        kill(agent.processIdentifier, SIGCONT)
        _ = try harness.waitForEvent("recovered", for: "gpu-1", timeout: 5)
    }

    @Test func everySessionGetsTheFullTelemetryOnArrival() throws {
        let harness = try Harness()
        let secret = try harness.addAgentKey("gpu-1")
        try harness.startController()
        _ = try harness.startAgent("gpu-1", secretFile: secret)
        _ = try harness.waitForEvent("connected", for: "gpu-1")
        try harness.waitUntil("telemetry on both sessions", timeout: 10) {
            harness.log("controller").components(separatedBy: "telemetry received").count - 1 >= 2
        }
    }

    @Test func aStoppedAgentSaysGoodbyeAndLeaves() throws {
        let harness = try Harness()
        let secret = try harness.addAgentKey("gpu-1")
        try harness.startController()
        let agent = try harness.startAgent("gpu-1", secretFile: secret)
        _ = try harness.waitForEvent("connected", for: "gpu-1")
        // Both sessions up (each gets telemetry once established): "connected" comes with the
        // first, and a SIGTERM while the second is still in its handshake closes that one without
        // a goodbye (it has no session keys yet), which is no clean leave.
        try harness.waitUntil("telemetry on both sessions", timeout: 10) {
            harness.log("controller").components(separatedBy: "telemetry received").count - 1 >= 2
        }
        kill(agent.processIdentifier, SIGTERM)
        _ = try harness.waitForEvent("left", for: "gpu-1", timeout: 5)
        agent.waitUntilExit()
        #expect(agent.terminationStatus == 0)
        #expect(harness.events("failed", for: "gpu-1").isEmpty)
    }

    @Test func anAgentFrozenPastItsLeaseFencesItself() throws {
        // A frozen agent is failed, and stays frozen past its lease: once thawed it finds the
        // lease run out, runs its fence command before anything else and reports the fence. (A
        // claimed instance's lease is also held by the controller from the failure on:
        // ListenerLimitsTests; this agent is in no pool, so the controller would grant again.)
        let harness = try Harness()
        let secret = try harness.addAgentKey("gpu-1")
        try harness.startController(intervalMilliseconds: 50, extra: ["--lease-ms", "600"])
        let marker = harness.directory + "/fenced-epoch"
        let agent = try harness.startAgent(
            "gpu-1", secretFile: secret, extra: ["--fence-command", "echo $WARMPOOL_FENCED_EPOCH > \(marker)"])
        _ = try harness.waitForEvent("connected", for: "gpu-1")
        usleep(300_000)
        kill(agent.processIdentifier, SIGSTOP)
        _ = try harness.waitForEvent("failed", for: "gpu-1", timeout: 5)
        usleep(800_000)  // the 600 ms lease runs out while the agent cannot renew it
        kill(agent.processIdentifier, SIGCONT)
        _ = try harness.waitForEvent("fenced", for: "gpu-1", timeout: 5)
        try harness.waitUntil("the fence command ran", timeout: 5) { FileManager.default.fileExists(atPath: marker) }
        #expect(try String(contentsOfFile: marker, encoding: .utf8) == "1\n")
        #expect(harness.log("gpu-1").contains("lease expired: fencing this instance"))
    }

    @Test func anAgentWithTheWrongSecretIsRefusedAndLogged() throws {
        let harness = try Harness()
        _ = try harness.addAgentKey("gpu-1")
        try harness.startController()
        let wrong = harness.directory + "/wrong.secret"
        try AgentSecret.random().hex.write(toFile: wrong, atomically: true, encoding: .utf8)
        _ = try harness.startAgent("gpu-1", secretFile: wrong)
        try harness.waitUntil("the controller logs the bad proof", timeout: 10) {
            harness.log("controller").contains("agent \"gpu-1\" failed the challenge (wrong secret)")
        }
        try harness.waitUntil("the agent logs the rejection", timeout: 10) {
            harness.log("gpu-1").contains("controller rejected us: authentication failed")
        }
        #expect(harness.events().isEmpty)
    }
}

/// Hostile bytes over real TCP: each connection is closed with a logged reason, and a real agent
/// heartbeating beside them is never disturbed.
@Suite(.serialized) struct BadInputTests {
    func withHealthyAgent(_ body: (Harness) throws -> Void) throws {
        let harness = try Harness()
        let secret = try harness.addAgentKey("gpu-1")
        _ = try harness.addAgentKey("gpu-2")
        try harness.startController(intervalMilliseconds: 100, extra: ["--handshake-timeout-ms", "500"])
        _ = try harness.startAgent("gpu-1", secretFile: secret)
        _ = try harness.waitForEvent("connected", for: "gpu-1")
        try body(harness)
        usleep(400_000)
        // A `suspected` on a busy CI machine is scheduling noise; a failure or a dropped session is not.
        let disturbed = harness.events().filter { $0.agentID == "gpu-1" && ["failed", "left"].contains($0.kind) }
        #expect(disturbed.isEmpty, "the healthy agent saw \(disturbed.map(\.kind))")
        #expect(harness.agents["gpu-1"]?.isRunning == true)
    }

    func expectClosed(_ client: RawClient, harness: Harness, logged reason: String) throws {
        let (_, closed) = client.readUntilClosed()
        #expect(closed, "connection left open")
        try harness.waitUntil("the controller logs \(reason)", timeout: 5) { harness.log("controller").contains(reason) }
    }

    @Test func oversizedLengthPrefix() throws {
        try withHealthyAgent { harness in
            let client = try RawClient(harness.controllerAddress)
            // 0x81 0x80 0x04 is 65,537, over even an established session's maximum; before
            // authentication anything over 256 bytes is refused before any body byte.
            client.send([0x81, 0x80, 0x04])
            try expectClosed(client, harness: harness, logged: "frame length 65537 exceeds the maximum of 256 bytes")
        }
    }

    @Test func lengthFieldRunningOn() throws {
        try withHealthyAgent { harness in
            let client = try RawClient(harness.controllerAddress)
            client.send([0xFF, 0xFF, 0xFF, 0xF0])
            try expectClosed(client, harness: harness, logged: "frame length field runs past 3 bytes")
        }
    }

    @Test func garbageBytes() throws {
        try withHealthyAgent { harness in
            let client = try RawClient(harness.controllerAddress)
            client.send(Array("GET / HTTP/1.1\r\nHost: x\r\n\r\n".utf8))
            // "G" claims a 71-byte frame; "E" (0x45) is type 0x05, Reject, with a flag bit it cannot carry.
            try expectClosed(client, harness: harness, logged: "flags 0x40 are not allowed on reject")
        }
    }

    @Test func wrongVersion() throws {
        try withHealthyAgent { harness in
            // A Hello that names version 9 in version-2 framing: Reject 1, in version-2 framing.
            let client = try RawClient(harness.controllerAddress)
            var hello = ByteBuffer()
            Hello(clientNonce: HandshakeCrypto.randomNonce(), role: .primary, instanceID: 1, machineID: 1,
                  agentID: "gpu-9", softwareVersion: "x", incarnation: 1).encode(into: &hello)
            hello.setInteger(UInt8(9), at: hello.readerIndex)
            client.send(Frame(type: .hello, payload: hello))
            let (bytes, closed) = client.readUntilClosed()
            #expect(closed)
            // The reject still goes out, so the peer learns why.
            var buffer = ByteBuffer(bytes: bytes)
            let frame = try #require(try FrameParser().parse(&buffer))
            #expect(try Reject.decode(frame.payload).code == .unsupportedVersion)
            try harness.waitUntil("logged", timeout: 5) {
                harness.log("controller").contains("unsupported protocol version 9")
            }
        }
    }

    @Test func aVersionOneAgentIsToldInItsOwnFraming() throws {
        try withHealthyAgent { harness in
            // The first bytes of a version-1 Hello: u32 length, version 1, type 1, flags 0.
            let client = try RawClient(harness.controllerAddress)
            client.send([0, 0, 0, 0x45, 1, 1, 0])
            let (bytes, closed) = client.readUntilClosed()
            #expect(closed)
            var buffer = ByteBuffer(bytes: bytes)
            let read = buffer.readInteger(as: UInt32.self)
            let length = try #require(read)
            #expect(Int(length) == buffer.readableBytes)
            #expect(buffer.readBytes(length: 3) == [1, MessageType.reject.rawValue, 0])
            #expect(try Reject.decode(buffer).code == .unsupportedVersion)
            try harness.waitUntil("logged", timeout: 5) {
                harness.log("controller").contains("a protocol version 1 frame")
            }
        }
    }

    @Test func truncatedFrameThenEOF() throws {
        try withHealthyAgent { harness in
            let client = try RawClient(harness.controllerAddress)
            client.send([60, MessageType.hello.rawValue, warmpoolProtocolVersion, 1, 2, 3])
            shutdown(client.fd, Int32(SHUT_WR))
            let (_, closed) = client.readUntilClosed()
            #expect(closed)
        }
    }

    @Test func aPeerThatSendsNothingIsClosedAfterTheHandshakeTimeout() throws {
        try withHealthyAgent { harness in
            let client = try RawClient(harness.controllerAddress)
            let start = Date()
            try expectClosed(client, harness: harness, logged: "no completed handshake within 500 ms")
            #expect(Date().timeIntervalSince(start) >= 0.4)
        }
    }

    @Test func unknownAgent() throws {
        try withHealthyAgent { harness in
            let client = try RawClient(harness.controllerAddress)
            var session = AgentSessionStateMachine(
                hello: Hello(clientNonce: HandshakeCrypto.randomNonce(), role: .primary, instanceID: 1, machineID: 1,
                             agentID: "intruder", softwareVersion: "x", incarnation: 1),
                secret: AgentSecret.random())
            client.send(session.start())
            guard case .send(let proof) = session.frameReceived(try client.readFrame()) else {
                Issue.record("no challenge")
                return
            }
            client.send(proof)
            try expectClosed(client, harness: harness, logged: "unknown agent id \"intruder\"")
        }
    }

    /// Completes a real handshake as gpu-2 over a raw socket, for the post-handshake attacks.
    func establishedSession(_ harness: Harness) throws -> (RawClient, AgentSessionStateMachine) {
        let client = try RawClient(harness.controllerAddress)
        let secret = try AgentSecret(hex: String(contentsOfFile: harness.directory + "/gpu-2.secret", encoding: .utf8))
        var session = AgentSessionStateMachine(
            hello: Hello(clientNonce: HandshakeCrypto.randomNonce(), role: .standby, instanceID: 2, machineID: 1,
                         agentID: "gpu-2", softwareVersion: "x", incarnation: 1),
            secret: secret)
        client.send(session.start())
        guard case .send(let proof) = session.frameReceived(try client.readFrame()) else {
            throw HarnessError("no challenge")
        }
        client.send(proof)
        guard case .established = session.frameReceived(try client.readFrame()) else { throw HarnessError("no welcome") }
        return (client, session)
    }

    @Test func replayedHeartbeat() throws {
        try withHealthyAgent { harness in
            var (client, session) = try establishedSession(harness)
            _ = client
            let sealed = session.sealHeartbeat(sentAtNanoseconds: 1, status: AgentStatus())
            let beat = try #require(sealed).frame
            client.send(beat)
            client.send(beat)
            // The copy is MACed as frame 1; the controller counts it as frame 2.
            try expectClosed(client, harness: harness, logged: "heartbeat failed MAC verification")
            _ = try harness.waitForEvent("failed", for: "gpu-2", timeout: 5)
        }
    }

    @Test func badMAC() throws {
        try withHealthyAgent { harness in
            var (client, session) = try establishedSession(harness)
            _ = client
            let sealed = session.sealHeartbeat(sentAtNanoseconds: 1, status: AgentStatus())
            var beat = try #require(sealed).frame
            let last = beat.payload.writerIndex - 1
            beat.payload.setInteger(beat.payload.getInteger(at: last, as: UInt8.self)! ^ 0xFF, at: last)
            client.send(beat)
            try expectClosed(client, harness: harness, logged: "heartbeat failed MAC verification")
        }
    }
}
