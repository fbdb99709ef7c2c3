import NIOCore

/// Protocol version 2. Hello and Challenge carry it; PROTOCOL.md §9 says what a peer does with another.
public let warmpoolProtocolVersion: UInt8 = 2

/// One frame as it crosses the wire:
///
///     varint length | u8 type+flags | body ... | [8-byte MAC]
///
/// `length` (LEB128, 1–3 bytes, minimal) counts every byte after itself: the type byte, body and
/// MAC. A steady-state heartbeat is 11 bytes, so the header is kept to two: a beat's cost on the
/// wire is mostly its header, and ten of them a second from every agent add up. The MAC, where the
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

    /// The largest value the length field may hold. Checked before any body byte is buffered.
    public static let maximumLength = 65_536
    /// 65,536 needs 17 bits: three 7-bit groups.
    public static let maximumLengthFieldSize = 3

    /// Appends the encoded frame to `buffer`.
    public func write(into buffer: inout ByteBuffer) {
        buffer.writeVarint(UInt64(1 + payload.readableBytes))
        buffer.writeInteger(type.rawValue | flags.rawValue)
        buffer.writeImmutableBuffer(payload)
    }

    /// The header of a frame with `payloadSize` bytes after its type byte, on the stack: MACs
    /// cover it, so a peer cannot change the type, flags or length without detection.
    static func header(
        type: MessageType, flags: FrameFlags, payloadSize: Int
    ) -> (bytes: (UInt8, UInt8, UInt8, UInt8), count: Int) {
        var length = UInt32(1 + payloadSize)
        var bytes: (UInt8, UInt8, UInt8, UInt8) = (0, 0, 0, 0)
        var count = 0
        withUnsafeMutableBytes(of: &bytes) { out in
            repeat {
                let low = UInt8(truncatingIfNeeded: length & 0x7F)
                length >>= 7
                out[count] = length == 0 ? low : low | 0x80
                count += 1
            } while length != 0
            out[count] = type.rawValue | flags.rawValue
        }
        return (bytes, count + 1)
    }
}

/// The low six bits of a frame's type byte; the top two are its flags.
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

    public static let mask: UInt8 = 0x3F

    /// Types whose payload ends in a MAC under the session's direction key.
    public var isAuthenticated: Bool {
        switch self {
        case .hello, .challenge, .proof, .reject: false
        case .welcome, .heartbeat, .lease, .telemetry, .goodbye: true
        }
    }

    /// The flags each type may carry; any other bit set is a protocol violation.
    public var allowedFlags: FrameFlags {
        switch self {
        case .telemetry: .compressed
        case .heartbeat: .status
        default: []
        }
    }
}

/// The top two bits of the type byte.
public struct FrameFlags: OptionSet, Hashable, Sendable {
    public let rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }

    public static let mask: UInt8 = 0xC0

    /// The document is one zstd frame (telemetry only).
    public static let compressed = FrameFlags(rawValue: 0x80)
    /// The heartbeat carries the status summary; without it the summary is the session's previous
    /// one (heartbeat only).
    public static let status = FrameFlags(rawValue: 0x40)
}

extension ByteBuffer {
    /// Unsigned LEB128: seven bits a byte, least significant group first, the high bit set on
    /// every byte but the last.
    @inlinable
    public mutating func writeVarint(_ value: UInt64) {
        var rest = value
        while rest >= 0x80 {
            writeInteger(UInt8(truncatingIfNeeded: rest) | 0x80)
            rest >>= 7
        }
        writeInteger(UInt8(truncatingIfNeeded: rest))
    }
}
