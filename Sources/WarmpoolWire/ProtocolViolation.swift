import WarmpoolModel

/// Why a peer's bytes were refused. Each case is logged as the reason its connection was closed,
/// so each names the problem precisely.
public enum ProtocolViolation: Error, Hashable, Sendable, CustomStringConvertible {
    case frameTooLarge(claimed: Int, maximum: Int)
    case lengthFieldTooLong
    case nonMinimalLength
    case versionOneFrame
    case unsupportedVersion(UInt8)
    case unknownMessageType(UInt8)
    case unknownFlags(type: MessageType, flags: UInt8)
    case malformedBody(type: MessageType, detail: String)
    case unexpectedMessage(MessageType, state: String)
    case badMAC(MessageType)
    case unknownAgent(String)
    case badProof(agentID: String)
    /// A correct Proof, but the Hello names an instance other than the one the key was minted for.
    case instanceNotBound(agentID: String, claimed: InstanceID, bound: InstanceID)
    case handshakeTimeout(milliseconds: Int64)
    case decompressionFailed(String)
    /// The session's counter reached its last value: it must close before it wraps (§5).
    case sequenceExhausted

    public var description: String {
        switch self {
        case .frameTooLarge(let claimed, let maximum):
            "frame length \(claimed) exceeds the maximum of \(maximum) bytes"
        case .lengthFieldTooLong:
            "frame length field runs past \(Frame.maximumLengthFieldSize) bytes (more than the \(Frame.maximumLength)-byte maximum)"
        case .nonMinimalLength:
            "frame length field is not minimally encoded (ends in a zero group)"
        case .versionOneFrame:
            "a protocol version 1 frame (its length field starts with a zero byte); this side speaks \(warmpoolProtocolVersion)"
        case .unsupportedVersion(let version):
            "unsupported protocol version \(version) (this side speaks \(warmpoolProtocolVersion))"
        case .unknownMessageType(let type):
            "unknown message type 0x\(String(type, radix: 16))"
        case .unknownFlags(let type, let flags):
            "flags 0x\(String(flags, radix: 16)) are not allowed on \(type)"
        case .malformedBody(let type, let detail):
            "malformed \(type) body: \(detail)"
        case .unexpectedMessage(let type, let state):
            "\(type) is not allowed while \(state)"
        case .badMAC(let type):
            "\(type) failed MAC verification (forged, replayed, reordered or after a dropped frame)"
        case .unknownAgent(let id):
            "unknown agent id \"\(id)\""
        case .badProof(let id):
            "agent \"\(id)\" failed the challenge (wrong secret)"
        case .instanceNotBound(let id, let claimed, let bound):
            "agent \"\(id)\" is bound to instance \(bound); its Hello claims instance \(claimed)"
        case .handshakeTimeout(let ms):
            "no completed handshake within \(ms) ms"
        case .decompressionFailed(let detail):
            "telemetry decompression failed: \(detail)"
        case .sequenceExhausted:
            "the session's sequence counter is exhausted (2^32 - 1 frames); it closes before the counter wraps"
        }
    }
}
