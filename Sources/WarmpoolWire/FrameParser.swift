import NIOCore

/// Splits a byte stream into frames. Pure: feed it bytes, take frames out.
///
/// The header is validated as soon as its bytes arrive, before the body is waited for: a claimed
/// length over the maximum, an unknown version, type or flag fails at once, so a hostile peer can
/// never make us hold more than one maximum-size frame in memory.
public struct FrameParser: Sendable {
    public let maximumLength: Int

    public init(maximumLength: Int = Frame.maximumLength) {
        self.maximumLength = maximumLength
    }

    /// Returns the next complete frame and consumes its bytes, or `nil` (consuming nothing) when
    /// more bytes are needed.
    public func parse(_ buffer: inout ByteBuffer) throws(ProtocolViolation) -> Frame? {
        let start = buffer.readerIndex
        guard let length = buffer.getInteger(at: start, as: UInt32.self) else { return nil }
        guard length <= maximumLength else {
            throw .frameTooLarge(claimed: Int(length), maximum: maximumLength)
        }
        guard length >= Frame.headerRemainderSize else { throw .frameTooShort(claimed: Int(length)) }

        if let version = buffer.getInteger(at: start + 4, as: UInt8.self), version != warmpoolProtocolVersion {
            throw .unsupportedVersion(version)
        }
        var type: MessageType?
        if let rawType = buffer.getInteger(at: start + 5, as: UInt8.self) {
            guard let known = MessageType(rawValue: rawType) else { throw .unknownMessageType(rawType) }
            type = known
        }
        if let rawFlags = buffer.getInteger(at: start + 6, as: UInt8.self), let type {
            let flags = FrameFlags(rawValue: rawFlags)
            guard type.allowedFlags.isSuperset(of: flags) else { throw .unknownFlags(type: type, flags: rawFlags) }
        }

        let total = 4 + Int(length)
        guard buffer.readableBytes >= total, let type else { return nil }
        let flags = FrameFlags(rawValue: buffer.getInteger(at: start + 6, as: UInt8.self)!)
        buffer.moveReaderIndex(forwardBy: Frame.headerSize)
        let payload = buffer.readSlice(length: total - Frame.headerSize)!
        return Frame(type: type, flags: flags, payload: payload)
    }
}

/// NIO's shell around `FrameParser`.
public struct FrameDecoder: NIOSingleStepByteToMessageDecoder {
    public typealias InboundOut = Frame
    private let parser: FrameParser

    public init(maximumLength: Int = Frame.maximumLength) {
        self.parser = FrameParser(maximumLength: maximumLength)
    }

    public mutating func decode(buffer: inout ByteBuffer) throws -> Frame? {
        try parser.parse(&buffer)
    }

    public mutating func decodeLast(buffer: inout ByteBuffer, seenEOF: Bool) throws -> Frame? {
        // A frame cut off by EOF is simply dropped: the connection is closing anyway, and the
        // handler logs the close.
        try decode(buffer: &buffer)
    }
}

public struct FrameEncoder: MessageToByteEncoder {
    public typealias OutboundIn = Frame
    public init() {}

    public func encode(data: Frame, out: inout ByteBuffer) throws {
        data.write(into: &out)
    }
}
