import NIOCore
import Testing
@testable import WarmpoolWire

@Suite struct FrameParserTests {
    let parser = FrameParser()

    func frameBytes(_ frame: Frame) -> ByteBuffer {
        var buffer = ByteBuffer()
        frame.write(into: &buffer)
        return buffer
    }

    func sampleFrames() -> [Frame] {
        var hello = ByteBuffer()
        Hello(clientNonce: Array(repeating: 7, count: 16), role: .standby, instanceID: 42, machineID: 9, agentID: "gpu-1",
              softwareVersion: "0.1.0", incarnation: 1).encode(into: &hello)
        var reject = ByteBuffer()
        Reject(code: .protocolViolation, reason: "nope").encode(into: &reject)
        return [
            Frame(type: .hello, payload: hello),
            Frame(type: .reject, payload: reject),
            Frame(type: .telemetry, flags: .compressed, payload: ByteBuffer(bytes: [1, 2, 3])),
            Frame(type: .proof, payload: ByteBuffer(bytes: Array(repeating: 0xAB, count: 32))),
        ]
    }

    @Test func roundTripsEveryFrame() throws {
        for frame in sampleFrames() {
            var buffer = frameBytes(frame)
            #expect(try parser.parse(&buffer) == frame)
            #expect(buffer.readableBytes == 0)
        }
    }

    @Test func decodesAStreamFedOneByteAtATime() throws {
        let frames = sampleFrames()
        var stream = ByteBuffer()
        for frame in frames { frame.write(into: &stream) }
        var pending = ByteBuffer()
        var decoded: [Frame] = []
        for byte in stream.readableBytesView {
            pending.writeInteger(byte)
            while let frame = try parser.parse(&pending) { decoded.append(frame) }
        }
        #expect(decoded == frames)
        #expect(pending.readableBytes == 0)
    }

    @Test func refusesAnOversizedLengthBeforeAnyBodyArrives() {
        // Only the length field: a parser that waited for the body would return nil here.
        var tooManyGroups = ByteBuffer(bytes: [0xFF, 0xFF, 0xFF])
        #expect(throws: ProtocolViolation.lengthFieldTooLong) { try parser.parse(&tooManyGroups) }
        var justOver = ByteBuffer()
        justOver.writeVarint(UInt64(Frame.maximumLength + 1))
        #expect(throws: ProtocolViolation.frameTooLarge(claimed: Frame.maximumLength + 1, maximum: Frame.maximumLength)) {
            try parser.parse(&justOver)
        }
    }

    @Test func acceptsAFrameOfExactlyTheMaximumLength() throws {
        var buffer = ByteBuffer()
        buffer.writeVarint(UInt64(Frame.maximumLength))
        #expect(buffer.readableBytes == Frame.maximumLengthFieldSize)
        buffer.writeInteger(MessageType.telemetry.rawValue)
        buffer.writeBytes(Array(repeating: 0, count: Frame.maximumLength - 1))
        let frame = try #require(try parser.parse(&buffer))
        #expect(frame.payload.readableBytes == Frame.maximumLength - 1)
    }

    @Test func lengthFieldsTakeOneToThreeBytes() throws {
        for (payloadSize, fieldSize) in [(0, 1), (126, 1), (127, 2), (16_382, 2), (16_383, 3)] {
            let frame = Frame(type: .telemetry, payload: ByteBuffer(bytes: Array(repeating: 0x5A, count: payloadSize)))
            var buffer = frameBytes(frame)
            #expect(buffer.readableBytes == fieldSize + 1 + payloadSize, "payload \(payloadSize)")
            #expect(try parser.parse(&buffer) == frame)
        }
    }

    @Test func refusesALengthWithAZeroTopGroup() {
        // 0x81 0x00 is 1 written in two bytes: a second encoding of the same frame.
        var buffer = ByteBuffer(bytes: [0x81, 0x00, MessageType.proof.rawValue])
        #expect(throws: ProtocolViolation.nonMinimalLength) { try parser.parse(&buffer) }
    }

    @Test func aVersionOneFrameIsToldApartByItsFirstByte() {
        // Version 1's u32 length: its first byte is always zero, which no version-2 frame starts with.
        var buffer = ByteBuffer(bytes: [0, 0, 0, 0x45, 1, 0x01, 0])
        #expect(throws: ProtocolViolation.versionOneFrame) { try parser.parse(&buffer) }
        var justTheByte = ByteBuffer(bytes: [0])
        #expect(throws: ProtocolViolation.versionOneFrame) { try parser.parse(&justTheByte) }
    }

    @Test func helloAndChallengeCarryTheVersion() {
        var hello = ByteBuffer()
        Hello(clientNonce: Array(repeating: 7, count: 16), role: .standby, instanceID: 42, machineID: 9, agentID: "gpu-1",
              softwareVersion: "0.1.0", incarnation: 1).encode(into: &hello)
        hello.setInteger(UInt8(3), at: hello.readerIndex)
        #expect(throws: ProtocolViolation.unsupportedVersion(3)) { try Hello.decode(hello) }
        var challenge = ByteBuffer(bytes: [1] + Array(repeating: 0, count: 16))
        #expect(throws: ProtocolViolation.unsupportedVersion(1)) { try Challenge.decode(challenge) }
        challenge.setInteger(warmpoolProtocolVersion, at: 0)
        #expect(throws: Never.self) { try Challenge.decode(challenge) }
    }

    @Test func refusesAnUnknownTypeAsSoonAsItsByteArrives() {
        // The length claims a body that has not arrived; the type byte alone is enough to refuse.
        var buffer = ByteBuffer(bytes: [0x40, 0x3E])
        #expect(throws: ProtocolViolation.unknownMessageType(0x3E)) { try parser.parse(&buffer) }
    }

    @Test func refusesFlagsTheTypeDoesNotAllow() {
        var compressedHeartbeat = ByteBuffer(bytes: [1, MessageType.heartbeat.rawValue | FrameFlags.compressed.rawValue])
        #expect(throws: ProtocolViolation.unknownFlags(type: .heartbeat, flags: 0x80)) { try parser.parse(&compressedHeartbeat) }
        var statusTelemetry = ByteBuffer(bytes: [1, MessageType.telemetry.rawValue | FrameFlags.status.rawValue])
        #expect(throws: ProtocolViolation.unknownFlags(type: .telemetry, flags: 0x40)) { try parser.parse(&statusTelemetry) }
        var flaggedProof = ByteBuffer(bytes: [1, MessageType.proof.rawValue | 0xC0])
        #expect(throws: ProtocolViolation.unknownFlags(type: .proof, flags: 0xC0)) { try parser.parse(&flaggedProof) }
    }

    @Test func waitsForATruncatedFrameWithoutConsumingIt() throws {
        var buffer = frameBytes(sampleFrames()[0])
        var truncated = buffer.readSlice(length: buffer.readableBytes - 1)!
        #expect(try parser.parse(&truncated) == nil)
        #expect(truncated.readerIndex == 0)
    }

    @Test func garbageFailsWithinTheFirstHeader() {
        // ASCII from a confused client (an HTTP request): "G" claims a 71-byte frame, and "E" (0x45)
        // is type 0x05 with a flag bit Reject cannot carry.
        var buffer = ByteBuffer(string: "GET / HTTP/1.1\r\n\r\n")
        #expect(throws: ProtocolViolation.self) { try parser.parse(&buffer) }
    }

    @Test func decodersRefuseBodiesWithBytesLeftOver() {
        var body = ByteBuffer()
        Goodbye(sequence: 1, reason: .shutdown).encode(into: &body)
        body.writeInteger(UInt8(0))
        #expect(throws: ProtocolViolation.malformedBody(type: .goodbye, detail: "1 bytes left over")) {
            try Goodbye.decode(body, sequence: 1)
        }
    }

    @Test func decodersRefuseShortBodies() {
        #expect(throws: ProtocolViolation.self) {
            try Heartbeat.decode(ByteBuffer(), flags: .status, sequence: 1, after: nil)
        }
        #expect(throws: ProtocolViolation.self) {
            try Heartbeat.decode(ByteBuffer(bytes: [100, 0x4F, 4, 4]), flags: .status, sequence: 1, after: nil)
        }
        #expect(throws: ProtocolViolation.self) {
            try LeaseGrant.decode(ByteBuffer(bytes: [0, 1]), sequence: 2, lastSent: 1)
        }
        #expect(throws: ProtocolViolation.self) { try Welcome.decode(ByteBuffer()) }
        #expect(throws: ProtocolViolation.self) { try Hello.decode(ByteBuffer(bytes: [1, 2, 3])) }
    }

    @Test func helloRefusesAHostileAgentID() {
        var body = ByteBuffer()
        Hello(clientNonce: Array(repeating: 0, count: 16), role: .primary, instanceID: 1, machineID: 1,
              agentID: "../../etc/passwd", softwareVersion: "1", incarnation: 1).encode(into: &body)
        #expect(throws: ProtocolViolation.self) { try Hello.decode(body) }
    }

    @Test func varintsAreMinimalAndFitTheirField() {
        func welcome(_ bytes: [UInt8]) throws(ProtocolViolation) -> Welcome { try Welcome.decode(ByteBuffer(bytes: bytes)) }
        #expect(throws: Never.self) { try welcome([100, 0xDE, 0x02, 0xD0, 0x0F, 0xB0, 0xEA, 0x01, 3]) }
        // 100 written as 0xE4 0x00: not minimal.
        #expect(throws: ProtocolViolation.malformedBody(type: .welcome, detail: "varint is not minimally encoded")) {
            try welcome([0xE4, 0x00, 1, 1, 1, 1])
        }
        // 2^32 in a u32 field.
        #expect(throws: ProtocolViolation.malformedBody(type: .welcome, detail: "varint 4294967296 exceeds 4294967295")) {
            try welcome([0x80, 0x80, 0x80, 0x80, 0x10, 1, 1, 1, 1])
        }
        // Eleven groups: more than 64 bits.
        #expect(throws: ProtocolViolation.malformedBody(type: .welcome, detail: "varint overflows 64 bits")) {
            try welcome([1, 1, 1, 1] + Array(repeating: 0xFF, count: 10) + [1])
        }
        #expect(throws: ProtocolViolation.malformedBody(type: .welcome, detail: "body ends inside a varint")) {
            try welcome([1, 1, 1, 1, 0x80])
        }
    }

    @Test func aSteadyHeartbeatIsElevenBytesAndCarriesItsStatusOnlyWhenItChanges() throws {
        let status = AgentStatus(
            flags: [.volumeMounted, .leaseHeld], gpuCount: 8, gpuHealthyCount: 8, gpuMaxTemperatureCelsius: 60,
            gpuMaxUtilizationPercent: 97, volumeFreeMebibytes: 500_000, workload: .running)
        let first = Heartbeat(sequence: 1, sentAtMilliseconds: 864_000_000, status: status)
        let second = Heartbeat(sequence: 2, sentAtMilliseconds: 864_000_100, status: status)
        var changed = status
        changed.volumeFreeMebibytes -= 1
        let third = Heartbeat(sequence: 3, sentAtMilliseconds: 864_000_200, status: changed)
        var previous: Heartbeat?
        var sizes: [Int] = []
        for beat in [first, second, third] {
            var body = ByteBuffer()
            let flags = beat.encode(into: &body, after: previous)
            #expect(flags == (beat.status == previous?.status ? [] : .status))
            sizes.append(Frame.header(type: .heartbeat, flags: flags, payloadSize: body.readableBytes + 8).count
                + body.readableBytes + FrameAuthenticator.macSize)
            #expect(try Heartbeat.decode(body, flags: flags, sequence: beat.sequence, after: previous) == beat)
            previous = beat
        }
        #expect(sizes == [24, 11, 20])
        // Without the status flag a session's first beat has nothing to be relative to.
        #expect(throws: ProtocolViolation.malformedBody(type: .heartbeat, detail: "a session's first heartbeat must carry the status")) {
            try Heartbeat.decode(ByteBuffer(bytes: [100]), flags: [], sequence: 1, after: nil)
        }
    }

    @Test func aLeaseGrantWidensItsSixteenBitAcknowledgementToTheLatestMatchingBeat() throws {
        for (acknowledged, lastSent) in [(UInt32(7), UInt32(9)), (65_535, 65_540), (70_000, 70_000), (1, 2)] {
            var body = ByteBuffer()
            LeaseGrant(sequence: 5, acknowledgedSequence: acknowledged, leaseMilliseconds: 2_000, epoch: 3).encode(into: &body)
            #expect(body.readableBytes == 5)
            let grant = try LeaseGrant.decode(body, sequence: 5, lastSent: lastSent)
            #expect(grant == LeaseGrant(sequence: 5, acknowledgedSequence: acknowledged, leaseMilliseconds: 2_000, epoch: 3))
        }
    }

    @Test func rejectReasonLengthIsBounded() {
        var body = ByteBuffer()
        body.writeInteger(Reject.Code.protocolViolation.rawValue)
        body.writeInteger(UInt16(60_000))
        #expect(throws: ProtocolViolation.malformedBody(type: .reject, detail: "reason of 60000 bytes is too long")) {
            try Reject.decode(body)
        }
    }
}
