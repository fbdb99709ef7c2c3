import NIOCore

/// Protocol version 1. Every frame carries it; PROTOCOL.md §2 says what a peer does with another.
public let warmpoolProtocolVersion: UInt8 = 1

/// One frame as it crosses the wire:
///
///     u32 length | u8 version | u8 type | u8 flags | body ... | [16-byte MAC]
///
/// `length` counts every byte after itself (header remainder, body and MAC). The MAC, where the
/// message type carries one, stays inside `payload`: only the session layer, which holds the keys,
/// can split and check it.
public struct Frame: Hashable, Sendable {
    public var type: MessageType
    public var flags: FrameFlags
    /// Body plus trailing MAC, exactly as received or to be sent.
    public var payload: ByteBuffer

    public init(type: MessageType, flags: FrameFlags = [], payload: ByteBuffer) {
        self.type = type
        self.flags = flags
        self.payload = payload
    }

    /// Bytes between the length field and the payload: version, type, flags.
    public static let headerRemainderSize = 3
    /// Bytes of the whole header, length field included.
    public static let headerSize = 4 + headerRemainderSize
    /// The largest value the length field may hold. Checked before any body byte is buffered.
    public static let maximumLength = 65_536

    /// The seven header bytes for a payload of `payloadSize` bytes. MACs are computed over these
    /// bytes and the body, so a peer cannot change the type, flags or length without detection.
    public func headerBytes() -> [UInt8] {
        Frame.headerBytes(type: type, flags: flags, payloadSize: payload.readableBytes)
    }

    public static func headerBytes(type: MessageType, flags: FrameFlags, payloadSize: Int) -> [UInt8] {
        let length = UInt32(headerRemainderSize + payloadSize)
        return [
            UInt8(truncatingIfNeeded: length >> 24), UInt8(truncatingIfNeeded: length >> 16),
            UInt8(truncatingIfNeeded: length >> 8), UInt8(truncatingIfNeeded: length),
            warmpoolProtocolVersion, type.rawValue, flags.rawValue,
        ]
    }

    /// Appends the encoded frame to `buffer` (the header written in place: no array per frame).
    public func write(into buffer: inout ByteBuffer) {
        buffer.writeMultipleIntegers(
            UInt32(Frame.headerRemainderSize + payload.readableBytes), warmpoolProtocolVersion, type.rawValue,
            flags.rawValue)
        buffer.writeImmutableBuffer(payload)
    }
}

public enum MessageType: UInt8, Sendable, CaseIterable {
    case hello = 0x01
    case challenge = 0x02
    case proof = 0x03
    case welcome = 0x04
    case reject = 0x05
    case heartbeat = 0x10
    case lease = 0x11
    case telemetry = 0x12
    case goodbye = 0x13

    /// Types whose payload ends in a MAC under the session's direction key.
    public var isAuthenticated: Bool {
        switch self {
        case .hello, .challenge, .proof, .reject: false
        case .welcome, .heartbeat, .lease, .telemetry, .goodbye: true
        }
    }

    /// The flags each type may carry; any other bit set is a protocol violation.
    public var allowedFlags: FrameFlags {
        self == .telemetry ? .compressed : []
    }
}

public struct FrameFlags: OptionSet, Hashable, Sendable {
    public let rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }

    /// The body after the sequence number is one zstd frame (telemetry only).
    public static let compressed = FrameFlags(rawValue: 0x01)
}
