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
              softwareVersion: "0.1.0").encode(into: &hello)
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
        // Only the four length bytes: a parser that waited for the body would return nil here.
        var buffer = ByteBuffer(bytes: [0xFF, 0xFF, 0xFF, 0xFF])
        #expect(throws: ProtocolViolation.frameTooLarge(claimed: Int(UInt32.max), maximum: Frame.maximumLength)) {
            try parser.parse(&buffer)
        }
        var justOver = ByteBuffer()
        justOver.writeInteger(UInt32(Frame.maximumLength + 1))
        #expect(throws: ProtocolViolation.frameTooLarge(claimed: Frame.maximumLength + 1, maximum: Frame.maximumLength)) {
            try parser.parse(&justOver)
        }
    }

    @Test func acceptsAFrameOfExactlyTheMaximumLength() throws {
        var buffer = ByteBuffer()
        buffer.writeInteger(UInt32(Frame.maximumLength))
        buffer.writeBytes([warmpoolProtocolVersion, MessageType.telemetry.rawValue, 0])
        buffer.writeBytes(Array(repeating: 0, count: Frame.maximumLength - 3))
        let frame = try #require(try parser.parse(&buffer))
        #expect(frame.payload.readableBytes == Frame.maximumLength - 3)
    }

    @Test func refusesALengthShorterThanTheHeader() {
        var buffer = ByteBuffer(bytes: [0, 0, 0, 2, 1, 0x10])
        #expect(throws: ProtocolViolation.frameTooShort(claimed: 2)) { try parser.parse(&buffer) }
    }

    @Test func refusesAnUnknownVersionAsSoonAsItsByteArrives() {
        var buffer = ByteBuffer(bytes: [0, 0, 0x10, 0, 2])
        #expect(throws: ProtocolViolation.unsupportedVersion(2)) { try parser.parse(&buffer) }
    }

    @Test func refusesAnUnknownType() {
        var buffer = ByteBuffer(bytes: [0, 0, 0, 3, 1, 0x7E, 0])
        #expect(throws: ProtocolViolation.unknownMessageType(0x7E)) { try parser.parse(&buffer) }
    }

    @Test func refusesFlagsTheTypeDoesNotAllow() {
        var compressedHeartbeat = ByteBuffer(bytes: [0, 0, 0, 3, 1, MessageType.heartbeat.rawValue, 0x01])
        #expect(throws: ProtocolViolation.unknownFlags(type: .heartbeat, flags: 0x01)) { try parser.parse(&compressedHeartbeat) }
        var unknownBit = ByteBuffer(bytes: [0, 0, 0, 3, 1, MessageType.telemetry.rawValue, 0x80])
        #expect(throws: ProtocolViolation.unknownFlags(type: .telemetry, flags: 0x80)) { try parser.parse(&unknownBit) }
    }

    @Test func waitsForATruncatedFrameWithoutConsumingIt() throws {
        var buffer = frameBytes(sampleFrames()[0])
        var truncated = buffer.readSlice(length: buffer.readableBytes - 1)!
        #expect(try parser.parse(&truncated) == nil)
        #expect(truncated.readerIndex == 0)
    }

    @Test func garbageFailsWithinTheFirstHeader() {
        // ASCII from a confused client (an HTTP request) reads as a ~1.2 GB length.
        var buffer = ByteBuffer(string: "GET / HTTP/1.1\r\n\r\n")
        #expect(throws: ProtocolViolation.self) { try parser.parse(&buffer) }
    }

    @Test func decodersRefuseBodiesWithBytesLeftOver() {
        var body = ByteBuffer()
        Goodbye(sequence: 1, reason: .shutdown).encode(into: &body)
        body.writeInteger(UInt8(0))
        #expect(throws: ProtocolViolation.malformedBody(type: .goodbye, detail: "1 bytes left over")) {
            try Goodbye.decode(body)
        }
    }

    @Test func decodersRefuseShortBodies() {
        var body = ByteBuffer()
        body.writeInteger(UInt32(1))
        #expect(throws: ProtocolViolation.self) { try Heartbeat.decode(body) }
        #expect(throws: ProtocolViolation.self) { try Welcome.decode(ByteBuffer()) }
        #expect(throws: ProtocolViolation.self) { try Hello.decode(ByteBuffer(bytes: [1, 2, 3])) }
    }

    @Test func helloRefusesAHostileAgentID() {
        var body = ByteBuffer()
        Hello(clientNonce: Array(repeating: 0, count: 16), role: .primary, instanceID: 1, machineID: 1,
              agentID: "../../etc/passwd", softwareVersion: "1").encode(into: &body)
        #expect(throws: ProtocolViolation.self) { try Hello.decode(body) }
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
