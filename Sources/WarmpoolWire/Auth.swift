import NIOCore

/// An agent's 32-byte shared secret. It never crosses the wire: the handshake proves it with an
/// HMAC over both sides' nonces, and the session's MAC keys are derived from it.
public struct AgentSecret: Hashable, Sendable {
    public static let size = 32
    public let bytes: [UInt8]

    public init(bytes: [UInt8]) throws(SecretError) {
        guard bytes.count == Self.size else { throw .wrongLength(bytes.count) }
        self.bytes = bytes
    }

    /// Parses 64 hex characters; surrounding whitespace (a trailing newline in a file) is ignored.
    public init(hex: String) throws(SecretError) {
        let trimmed = hex.trimmingASCIIWhitespace()
        guard let bytes = [UInt8](hexString: trimmed) else { throw .notHex }
        try self.init(bytes: bytes)
    }

    public static func random() -> AgentSecret {
        var generator = SystemRandomNumberGenerator()
        return try! AgentSecret(bytes: (0..<size).map { _ in UInt8.random(in: .min ... .max, using: &generator) })
    }

    public var hex: String { bytes.hexString }

    public enum SecretError: Error, Hashable, CustomStringConvertible {
        case wrongLength(Int)
        case notHex

        public var description: String {
            switch self {
            case .wrongLength(let count): "an agent secret is 32 bytes (64 hex characters), got \(count) bytes"
            case .notHex: "an agent secret must be 64 hex characters"
            }
        }
    }
}

/// The handshake's cryptography, in one place so that PROTOCOL.md §4 can be checked against it.
public enum HandshakeCrypto {
    static let proofLabel = Array("warmpool/2 proof".utf8)
    static let sessionLabel = Array("warmpool/2 session".utf8)
    static let agentToControllerLabel = Array("warmpool/2 agent->controller".utf8)
    static let controllerToAgentLabel = Array("warmpool/2 controller->agent".utf8)

    /// HMAC-SHA256(secret, "warmpool/2 proof" || Hello body || server nonce).
    public static func proof(secret: AgentSecret, helloBody: [UInt8], serverNonce: [UInt8]) -> [UInt8] {
        var hmac = HMACSHA256(key: secret.bytes)
        hmac.update(proofLabel)
        hmac.update(helloBody)
        hmac.update(serverNonce)
        return hmac.finalize().bytes
    }

    /// One key per direction, so a frame can never be reflected back at its sender.
    public static func sessionKeys(secret: AgentSecret, clientNonce: [UInt8], serverNonce: [UInt8]) -> SessionKeys {
        var hmac = HMACSHA256(key: secret.bytes)
        hmac.update(sessionLabel)
        hmac.update(clientNonce)
        hmac.update(serverNonce)
        let sessionKey = hmac.finalize().bytes
        func derive(_ label: [UInt8]) -> [UInt8] {
            HMACSHA256.authenticationCode(for: label, key: sessionKey).bytes
        }
        return SessionKeys(
            agentToController: FrameAuthenticator(key: derive(agentToControllerLabel)),
            controllerToAgent: FrameAuthenticator(key: derive(controllerToAgentLabel)))
    }

    public static func randomNonce() -> [UInt8] {
        var generator = SystemRandomNumberGenerator()
        return (0..<Hello.nonceSize).map { _ in UInt8.random(in: .min ... .max, using: &generator) }
    }
}

public struct SessionKeys: Sendable {
    public let agentToController: FrameAuthenticator
    public let controllerToAgent: FrameAuthenticator
}

/// Appends and checks the 8-byte MAC of authenticated frames: the first 8 bytes of
/// HMAC-SHA256(direction key, u32 sequence || frame header || body).
///
/// The sequence number is the frame's place in its direction of the session. It is never sent: both
/// ends count, so a replayed, reordered or dropped frame fails the MAC and closes the session. Eight
/// bytes are enough because a wrong MAC ends the session: a forger gets one 2⁻⁶⁴ guess per
/// handshake (NIST SP 800-107 §5.3.3), and a beat carrying 16 would spend more on its MAC than on
/// everything else together.
public struct FrameAuthenticator: Sendable {
    public static let macSize = 8
    /// Keyed once per session (the padded key blocks absorbed); each frame hashes on a copy, so the
    /// key is not set up again on every frame of every agent.
    private let keyed: HMACSHA256

    public init(key: [UInt8]) {
        keyed = HMACSHA256(key: key)
    }

    /// The frame carrying `body` as the `sequence`-th frame of its direction.
    public func seal(sequence: UInt32, type: MessageType, flags: FrameFlags = [], body: ByteBuffer) -> Frame {
        let code = authenticationCode(
            sequence: sequence, type: type, flags: flags, payloadSize: body.readableBytes + Self.macSize, body: body)
        var payload = body
        _ = code.withUnsafeBytes { payload.writeBytes(UnsafeRawBufferPointer(rebasing: $0.prefix(Self.macSize))) }
        return Frame(type: type, flags: flags, payload: payload)
    }

    /// The body of an authenticated frame, MAC removed, or `badMAC` if it is not the
    /// `sequence`-th frame of its direction. Allocation-free: it runs for every heartbeat the
    /// controller receives.
    public func open(_ frame: Frame, sequence: UInt32) throws(ProtocolViolation) -> ByteBuffer {
        let bodySize = frame.payload.readableBytes - Self.macSize
        guard bodySize >= 0 else { throw .badMAC(frame.type) }
        let body = frame.payload.getSlice(at: frame.payload.readerIndex, length: bodySize)!
        let code = authenticationCode(
            sequence: sequence, type: frame.type, flags: frame.flags, payloadSize: frame.payload.readableBytes,
            body: body)
        let matches = code.withUnsafeBytes { expected in
            frame.payload.withUnsafeReadableBytes { payload in
                var difference: UInt8 = 0
                for index in 0..<Self.macSize { difference |= payload[bodySize + index] ^ expected[index] }
                return difference == 0
            }
        }
        guard matches else { throw .badMAC(frame.type) }
        return body
    }

    /// HMAC-SHA256(direction key, sequence || header || body), sequence and header on the stack.
    private func authenticationCode(
        sequence: UInt32, type: MessageType, flags: FrameFlags, payloadSize: Int, body: ByteBuffer
    ) -> SHA256Hasher.Digest {
        var header = Frame.header(type: type, flags: flags, payloadSize: payloadSize)
        var sequenceBytes = sequence.bigEndian
        var hmac = keyed
        withUnsafeBytes(of: &sequenceBytes) { hmac.update($0) }
        withUnsafeBytes(of: &header.bytes) { hmac.update(UnsafeRawBufferPointer(rebasing: $0.prefix(header.count))) }
        body.withUnsafeReadableBytes { hmac.update($0) }
        return hmac.finalize()
    }
}

/// Compares without an early exit, so timing tells an attacker nothing about how much matched.
public func constantTimeEquals(_ lhs: [UInt8], _ rhs: [UInt8]) -> Bool {
    guard lhs.count == rhs.count else { return false }
    var difference: UInt8 = 0
    for index in lhs.indices { difference |= lhs[index] ^ rhs[index] }
    return difference == 0
}

extension [UInt8] {
    public init?(hexString: String) {
        let digits = Array(hexString.utf8)
        guard digits.count % 2 == 0 else { return nil }
        func value(_ digit: UInt8) -> UInt8? {
            switch digit {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): digit - UInt8(ascii: "0")
            case UInt8(ascii: "a")...UInt8(ascii: "f"): digit - UInt8(ascii: "a") + 10
            case UInt8(ascii: "A")...UInt8(ascii: "F"): digit - UInt8(ascii: "A") + 10
            default: nil
            }
        }
        var bytes: [UInt8] = []
        bytes.reserveCapacity(digits.count / 2)
        var index = 0
        while index < digits.count {
            guard let high = value(digits[index]), let low = value(digits[index + 1]) else { return nil }
            bytes.append(high << 4 | low)
            index += 2
        }
        self = bytes
    }

    public var hexString: String {
        let alphabet = Array("0123456789abcdef".utf8)
        var out: [UInt8] = []
        out.reserveCapacity(count * 2)
        for byte in self {
            out.append(alphabet[Int(byte >> 4)])
            out.append(alphabet[Int(byte & 0x0F)])
        }
        return String(decoding: out, as: UTF8.self)
    }
}

extension String {
    func trimmingASCIIWhitespace() -> String {
        let isSpace: (UInt8) -> Bool = { $0 == 0x20 || $0 == 0x09 || $0 == 0x0A || $0 == 0x0D }
        let bytes = Array(utf8)
        guard let first = bytes.firstIndex(where: { !isSpace($0) }) else { return "" }
        let last = bytes.lastIndex(where: { !isSpace($0) })!
        return String(decoding: bytes[first...last], as: UTF8.self)
    }
}
