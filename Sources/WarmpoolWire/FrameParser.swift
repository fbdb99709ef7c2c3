import NIOCore

/// Splits a byte stream into frames. Pure: feed it bytes, take frames out.
///
/// The header is validated as soon as its bytes arrive, before the body is waited for: a claimed
/// length over the maximum, an unknown type or flag fails at once, so a hostile peer can never
/// make us hold more than one maximum-size frame in memory.
public struct FrameParser: Sendable {
    public let maximumLength: Int

    private enum LengthField {
        case incomplete
        case runsOn
        case notMinimal
        case value(Int, size: Int)
    }

    private static func lengthField(in buffer: ByteBuffer, at start: Int) -> LengthField {
        var length = 0
        for size in 1...Frame.maximumLengthFieldSize {
            guard let byte = buffer.getInteger(at: start + size - 1, as: UInt8.self) else { return .incomplete }
            length |= Int(byte & 0x7F) << (7 * (size - 1))
            if byte & 0x80 == 0 { return size > 1 && byte == 0 ? .notMinimal : .value(length, size: size) }
        }
        return .runsOn
    }

    public init(maximumLength: Int = Frame.maximumLength) {
        self.maximumLength = maximumLength
    }

    /// Returns the next complete frame and consumes its bytes, or `nil` (consuming nothing) when
    /// more bytes are needed.
    public func parse(_ buffer: inout ByteBuffer) throws(ProtocolViolation) -> Frame? {
        let start = buffer.readerIndex
        let length: Int
        let fieldSize: Int
        switch Self.lengthField(in: buffer, at: start) {
        case .incomplete: return nil
        case .runsOn: throw .lengthFieldTooLong
        // A length field is minimal, so every frame has exactly one encoding: a trailing zero
        // group would be a second one.
        case .notMinimal: throw .nonMinimalLength
        case .value(let value, let size):
            length = value
            fieldSize = size
        }
        guard length <= maximumLength else { throw .frameTooLarge(claimed: length, maximum: maximumLength) }
        // Version 1's u32 length field always starts with a zero byte; no version-2 frame does.
        guard length > 0 else { throw .versionOneFrame }

        guard let typeByte = buffer.getInteger(at: start + fieldSize, as: UInt8.self) else { return nil }
        guard let type = MessageType(rawValue: typeByte & MessageType.mask) else {
            throw .unknownMessageType(typeByte & MessageType.mask)
        }
        let flags = FrameFlags(rawValue: typeByte & FrameFlags.mask)
        guard type.allowedFlags.isSuperset(of: flags) else { throw .unknownFlags(type: type, flags: flags.rawValue) }

        let total = fieldSize + length
        guard buffer.readableBytes >= total else { return nil }
        buffer.moveReaderIndex(forwardBy: fieldSize + 1)
        let payload = buffer.readSlice(length: length - 1)!
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
