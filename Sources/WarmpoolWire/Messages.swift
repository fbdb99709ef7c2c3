import NIOCore
import WarmpoolModel

/// What an agent does on its host. Sent in Hello; the controller answers with the epoch.
public enum AgentRole: UInt8, Sendable, Hashable, CaseIterable, CustomStringConvertible {
    case primary = 1
    case standby = 2

    public var description: String { self == .primary ? "primary" : "standby" }
}

/// Agent -> controller, first frame of every connection. Unauthenticated: it names the agent
/// and carries the agent's nonce for the challenge.
public struct Hello: Hashable, Sendable {
    public static let nonceSize = 16

    public var clientNonce: [UInt8]
    public var role: AgentRole
    public var instanceID: UInt64
    public var machineID: UInt64
    /// The last epoch this agent was told, 0 if none yet.
    public var knownEpoch: UInt64
    /// Set when the agent fenced itself on lease loss: the epoch it held then.
    public var fencedAtEpoch: UInt64?
    public var agentID: String
    public var softwareVersion: String
    /// Random, drawn once per agent process and sent on each of its sessions: the controller
    /// tells a new session of the same process (same clock, same beats) from a restarted one.
    public var incarnation: UInt64

    public init(
        clientNonce: [UInt8], role: AgentRole, instanceID: UInt64, machineID: UInt64, knownEpoch: UInt64 = 0,
        fencedAtEpoch: UInt64? = nil, agentID: String, softwareVersion: String, incarnation: UInt64
    ) {
        self.clientNonce = clientNonce
        self.role = role
        self.instanceID = instanceID
        self.machineID = machineID
        self.knownEpoch = knownEpoch
        self.fencedAtEpoch = fencedAtEpoch
        self.agentID = agentID
        self.softwareVersion = softwareVersion
        self.incarnation = incarnation
    }

    /// A fresh incarnation id for a starting agent process; never 0.
    public static func newIncarnation() -> UInt64 { UInt64.random(in: 1...UInt64.max) }

    public func encode(into buffer: inout ByteBuffer) {
        buffer.writeInteger(warmpoolProtocolVersion)
        buffer.writeBytes(clientNonce)
        buffer.writeInteger(role.rawValue)
        buffer.writeInteger(instanceID)
        buffer.writeInteger(machineID)
        buffer.writeInteger(knownEpoch)
        buffer.writeInteger(UInt8(fencedAtEpoch == nil ? 0 : 1))
        buffer.writeInteger(fencedAtEpoch ?? 0)
        buffer.writeShortString(agentID)
        buffer.writeShortString(softwareVersion)
        buffer.writeInteger(incarnation)
    }

    public static func decode(_ body: ByteBuffer) throws(ProtocolViolation) -> Hello {
        var reader = BodyReader(body, type: .hello)
        try reader.version()
        let nonce = try reader.bytes(nonceSize)
        let rawRole = try reader.integer(UInt8.self)
        guard let role = AgentRole(rawValue: rawRole) else { throw reader.malformed("unknown role \(rawRole)") }
        let instanceID = try reader.integer(UInt64.self)
        let machineID = try reader.integer(UInt64.self)
        let knownEpoch = try reader.integer(UInt64.self)
        let fencedFlag = try reader.integer(UInt8.self)
        let fencedEpoch = try reader.integer(UInt64.self)
        guard fencedFlag <= 1 else { throw reader.malformed("fenced flag must be 0 or 1, got \(fencedFlag)") }
        let agentID = try reader.shortString()
        guard AgentIdentity.isValidAgentID(agentID) else {
            throw reader.malformed("agent id must be 1-64 characters of A-Z a-z 0-9 . _ -")
        }
        let version = try reader.shortString()
        guard version.utf8.count <= 64, version.utf8.allSatisfy({ $0 >= 0x20 && $0 < 0x7F }) else {
            throw reader.malformed("software version must be at most 64 printable ASCII characters")
        }
        let incarnation = try reader.integer(UInt64.self)
        try reader.finish()
        return Hello(
            clientNonce: nonce, role: role, instanceID: instanceID, machineID: machineID, knownEpoch: knownEpoch,
            fencedAtEpoch: fencedFlag == 1 ? fencedEpoch : nil, agentID: agentID, softwareVersion: version,
            incarnation: incarnation)
    }
}

/// Controller -> agent, unauthenticated: the controller's fresh nonce.
public struct Challenge: Hashable, Sendable {
    public var serverNonce: [UInt8]
    public init(serverNonce: [UInt8]) { self.serverNonce = serverNonce }

    public func encode(into buffer: inout ByteBuffer) {
        buffer.writeInteger(warmpoolProtocolVersion)
        buffer.writeBytes(serverNonce)
    }

    public static func decode(_ body: ByteBuffer) throws(ProtocolViolation) -> Challenge {
        var reader = BodyReader(body, type: .challenge)
        try reader.version()
        let nonce = try reader.bytes(Hello.nonceSize)
        try reader.finish()
        return Challenge(serverNonce: nonce)
    }
}

/// Agent -> controller: HMAC-SHA256 over the handshake transcript, proving the secret.
public struct Proof: Hashable, Sendable {
    public static let size = 32
    public var mac: [UInt8]
    public init(mac: [UInt8]) { self.mac = mac }

    public func encode(into buffer: inout ByteBuffer) { buffer.writeBytes(mac) }

    public static func decode(_ body: ByteBuffer) throws(ProtocolViolation) -> Proof {
        var reader = BodyReader(body, type: .proof)
        let mac = try reader.bytes(size)
        try reader.finish()
        return Proof(mac: mac)
    }
}

/// Controller -> agent, authenticated, frame 1 of the controller's direction: the session's terms.
public struct Welcome: Hashable, Sendable {
    public var heartbeatIntervalMilliseconds: UInt32
    public var silenceTimeoutMilliseconds: UInt32
    public var leaseMilliseconds: UInt32
    public var telemetryIntervalMilliseconds: UInt32
    public var epoch: UInt64

    public init(
        heartbeatIntervalMilliseconds: UInt32, silenceTimeoutMilliseconds: UInt32, leaseMilliseconds: UInt32,
        telemetryIntervalMilliseconds: UInt32, epoch: UInt64
    ) {
        self.heartbeatIntervalMilliseconds = heartbeatIntervalMilliseconds
        self.silenceTimeoutMilliseconds = silenceTimeoutMilliseconds
        self.leaseMilliseconds = leaseMilliseconds
        self.telemetryIntervalMilliseconds = telemetryIntervalMilliseconds
        self.epoch = epoch
    }

    public func encode(into buffer: inout ByteBuffer) {
        buffer.writeVarint(UInt64(heartbeatIntervalMilliseconds))
        buffer.writeVarint(UInt64(silenceTimeoutMilliseconds))
        buffer.writeVarint(UInt64(leaseMilliseconds))
        buffer.writeVarint(UInt64(telemetryIntervalMilliseconds))
        buffer.writeVarint(epoch)
    }

    public static func decode(_ body: ByteBuffer) throws(ProtocolViolation) -> Welcome {
        var reader = BodyReader(body, type: .welcome)
        let welcome = Welcome(
            heartbeatIntervalMilliseconds: try reader.varint(UInt32.self),
            silenceTimeoutMilliseconds: try reader.varint(UInt32.self),
            leaseMilliseconds: try reader.varint(UInt32.self),
            telemetryIntervalMilliseconds: try reader.varint(UInt32.self),
            epoch: try reader.varint(UInt64.self))
        guard welcome.heartbeatIntervalMilliseconds > 0, welcome.leaseMilliseconds > 0 else {
            throw reader.malformed("heartbeat interval and lease must be positive")
        }
        try reader.finish()
        return welcome
    }
}

/// Controller -> agent, unauthenticated, then the controller closes. The agent logs it.
public struct Reject: Hashable, Sendable {
    public enum Code: UInt16, Sendable, Hashable {
        case unsupportedVersion = 1
        case authenticationFailed = 2
        case protocolViolation = 3
        case handshakeTimeout = 4
        case shuttingDown = 5
    }

    public static let maximumReasonBytes = 512
    public var code: Code
    public var reason: String

    /// Reasons over the limit are cut at a character boundary, so the wire never carries half a character.
    public init(code: Code, reason: String) {
        self.code = code
        var kept = String.UnicodeScalarView()
        var size = 0
        for scalar in reason.unicodeScalars {
            size += String(scalar).utf8.count
            guard size <= Reject.maximumReasonBytes else { break }
            kept.append(scalar)
        }
        self.reason = String(kept)
    }

    public func encode(into buffer: inout ByteBuffer) {
        buffer.writeInteger(code.rawValue)
        let bytes = Array(reason.utf8)
        buffer.writeInteger(UInt16(bytes.count))
        buffer.writeBytes(bytes)
    }

    /// This Reject framed as version 1 framed it (u32 length, version 1, type, flags, body), the
    /// one frame a version-2 controller still writes in the old framing (§9).
    public func versionOneFrame() -> ByteBuffer {
        var body = ByteBuffer()
        encode(into: &body)
        var frame = ByteBuffer()
        frame.writeMultipleIntegers(UInt32(3 + body.readableBytes), UInt8(1), MessageType.reject.rawValue, UInt8(0))
        frame.writeBuffer(&body)
        return frame
    }

    public static func decode(_ body: ByteBuffer) throws(ProtocolViolation) -> Reject {
        var reader = BodyReader(body, type: .reject)
        let rawCode = try reader.integer(UInt16.self)
        guard let code = Code(rawValue: rawCode) else { throw reader.malformed("unknown reject code \(rawCode)") }
        let length = Int(try reader.integer(UInt16.self))
        guard length <= maximumReasonBytes else { throw reader.malformed("reason of \(length) bytes is too long") }
        let reason = String(decoding: try reader.bytes(length), as: UTF8.self)
        try reader.finish()
        return Reject(code: code, reason: reason)
    }
}

/// Agent -> controller, authenticated. In the steady state 11 bytes on the wire: header, the time
/// since the session's previous beat, MAC. The status summary rides along (flag `status`) only when
/// it differs from the one the session last carried, and always on a session's first beat.
public struct Heartbeat: Hashable, Sendable {
    /// The frame's place in the agent's direction of its session (never on the wire: §5).
    public var sequence: UInt32
    /// The agent's monotonic clock when it sent this beat, in milliseconds. The same beat carries
    /// the same value on every session, which is how the controller tells a late copy (§6).
    public var sentAtMilliseconds: UInt64
    public var status: AgentStatus

    public init(sequence: UInt32, sentAtMilliseconds: UInt64, status: AgentStatus) {
        self.sequence = sequence
        self.sentAtMilliseconds = sentAtMilliseconds
        self.status = status
    }

    /// Writes the body after `previous`, the beat sent before on the same session (nil for its
    /// first), and returns the frame's flags.
    public func encode(into buffer: inout ByteBuffer, after previous: Heartbeat?) -> FrameFlags {
        let previousSentAt = previous?.sentAtMilliseconds ?? 0
        precondition(sentAtMilliseconds >= previousSentAt, "a monotonic clock went back")
        buffer.writeVarint(sentAtMilliseconds - previousSentAt)
        guard status != previous?.status else { return [] }
        buffer.writeVarint(UInt64(status.flags.rawValue))
        buffer.writeMultipleIntegers(
            status.gpuCount, status.gpuHealthyCount, status.gpuMaxTemperatureCelsius, status.gpuMaxUtilizationPercent)
        buffer.writeVarint(UInt64(status.volumeFreeMebibytes))
        buffer.writeInteger(status.workload.rawValue)
        return .status
    }

    /// Reads the body of the `sequence`-th frame, after `previous` on the same session.
    public static func decode(
        _ body: ByteBuffer, flags: FrameFlags, sequence: UInt32, after previous: Heartbeat?
    ) throws(ProtocolViolation) -> Heartbeat {
        var reader = BodyReader(body, type: .heartbeat)
        let elapsed = try reader.varint(UInt64.self)
        let (sentAt, overflow) = (previous?.sentAtMilliseconds ?? 0).addingReportingOverflow(elapsed)
        guard !overflow else { throw reader.malformed("sent-at time overflows 64 bits") }
        guard flags.contains(.status) else {
            guard let previous else { throw reader.malformed("a session's first heartbeat must carry the status") }
            try reader.finish()
            return Heartbeat(sequence: sequence, sentAtMilliseconds: sentAt, status: previous.status)
        }
        // Reserved status bits are ignored on receipt so that later agents can add bits.
        let rawFlags = try reader.varint(UInt64.self)
        let flags = AgentStatus.Flags(rawValue: UInt16(truncatingIfNeeded: rawFlags)).intersection(.all)
        let gpuCount = try reader.integer(UInt8.self)
        let gpuHealthy = try reader.integer(UInt8.self)
        let temperature = try reader.integer(UInt8.self)
        let utilization = try reader.integer(UInt8.self)
        let freeMiB = try reader.varint(UInt32.self)
        let rawWorkload = try reader.integer(UInt8.self)
        try reader.finish()
        guard gpuHealthy <= gpuCount else { throw reader.malformed("\(gpuHealthy) healthy GPUs of \(gpuCount)") }
        guard utilization <= 100 || utilization == AgentStatus.unknownByte else {
            throw reader.malformed("GPU utilisation \(utilization)% is over 100")
        }
        return Heartbeat(
            sequence: sequence, sentAtMilliseconds: sentAt,
            status: AgentStatus(
                flags: flags, gpuCount: gpuCount, gpuHealthyCount: gpuHealthy, gpuMaxTemperatureCelsius: temperature,
                gpuMaxUtilizationPercent: utilization, volumeFreeMebibytes: freeMiB,
                workload: WorkloadState(rawValue: rawWorkload) ?? .unknown))
    }
}

/// The summary every heartbeat carries: what the controller needs to decide on a failover.
public struct AgentStatus: Hashable, Sendable {
    /// 255 in a one-byte GPU reading means "not known".
    public static let unknownByte: UInt8 = 0xFF

    public struct Flags: OptionSet, Hashable, Sendable {
        public let rawValue: UInt16
        public init(rawValue: UInt16) { self.rawValue = rawValue }

        public static let volumeMounted = Flags(rawValue: 1 << 0)
        public static let volumeIDMatches = Flags(rawValue: 1 << 1)
        public static let volumeWritable = Flags(rawValue: 1 << 2)
        public static let gpuProbeAvailable = Flags(rawValue: 1 << 3)
        public static let gpuErrors = Flags(rawValue: 1 << 4)
        public static let fenced = Flags(rawValue: 1 << 5)
        public static let leaseHeld = Flags(rawValue: 1 << 6)
        /// The fence is final: the agent learnt of a newer epoch and killed its workload.
        public static let fenceFinal = Flags(rawValue: 1 << 7)
        /// The agent's fence command exited non-zero the last time it ran.
        public static let fenceCommandFailed = Flags(rawValue: 1 << 8)
        public static let all: Flags = [
            .volumeMounted, .volumeIDMatches, .volumeWritable, .gpuProbeAvailable, .gpuErrors, .fenced, .leaseHeld,
            .fenceFinal, .fenceCommandFailed,
        ]
    }

    public var flags: Flags
    public var gpuCount: UInt8
    public var gpuHealthyCount: UInt8
    public var gpuMaxTemperatureCelsius: UInt8
    public var gpuMaxUtilizationPercent: UInt8
    /// Free space on the volume in MiB, saturating at UInt32.max.
    public var volumeFreeMebibytes: UInt32
    public var workload: WorkloadState

    public init(
        flags: Flags = [], gpuCount: UInt8 = 0, gpuHealthyCount: UInt8 = 0,
        gpuMaxTemperatureCelsius: UInt8 = AgentStatus.unknownByte,
        gpuMaxUtilizationPercent: UInt8 = AgentStatus.unknownByte, volumeFreeMebibytes: UInt32 = 0,
        workload: WorkloadState = .unknown
    ) {
        self.flags = flags
        self.gpuCount = gpuCount
        self.gpuHealthyCount = gpuHealthyCount
        self.gpuMaxTemperatureCelsius = gpuMaxTemperatureCelsius
        self.gpuMaxUtilizationPercent = gpuMaxUtilizationPercent
        self.volumeFreeMebibytes = volumeFreeMebibytes
        self.workload = workload
    }
}

public enum WorkloadState: UInt8, Sendable, Hashable, CaseIterable {
    case unknown = 0
    case idle = 1
    case running = 2
    case stopped = 3
    case fenced = 4
}

/// Controller -> agent, authenticated: the agent may act as its role until
/// (its own send time of heartbeat `acknowledgedSequence`) + `leaseMilliseconds`.
public struct LeaseGrant: Hashable, Sendable {
    /// The frame's place in the controller's direction of its session (never on the wire: §5).
    public var sequence: UInt32
    /// The heartbeat this grant answers. Only its low 16 bits cross the wire; the agent takes the
    /// latest frame it sent with those bits, since the controller answers beats as they arrive.
    public var acknowledgedSequence: UInt32
    public var leaseMilliseconds: UInt32
    public var epoch: UInt64

    public init(sequence: UInt32, acknowledgedSequence: UInt32, leaseMilliseconds: UInt32, epoch: UInt64) {
        self.sequence = sequence
        self.acknowledgedSequence = acknowledgedSequence
        self.leaseMilliseconds = leaseMilliseconds
        self.epoch = epoch
    }

    public func encode(into buffer: inout ByteBuffer) {
        buffer.writeInteger(UInt16(truncatingIfNeeded: acknowledgedSequence))
        buffer.writeVarint(UInt64(leaseMilliseconds))
        buffer.writeVarint(epoch)
    }

    /// Reads the body of the `sequence`-th frame; `lastSent` is the agent's latest outbound
    /// sequence on the session, against which the acknowledged one is widened back to 32 bits.
    public static func decode(
        _ body: ByteBuffer, sequence: UInt32, lastSent: UInt32
    ) throws(ProtocolViolation) -> LeaseGrant {
        var reader = BodyReader(body, type: .lease)
        let acknowledgedLow = try reader.integer(UInt16.self)
        let lease = try reader.varint(UInt32.self)
        let epoch = try reader.varint(UInt64.self)
        guard lease > 0 else { throw reader.malformed("lease must be positive") }
        try reader.finish()
        let behind = UInt16(truncatingIfNeeded: lastSent) &- acknowledgedLow
        return LeaseGrant(
            sequence: sequence, acknowledgedSequence: lastSent &- UInt32(behind), leaseMilliseconds: lease,
            epoch: epoch)
    }
}

/// Agent -> controller, authenticated: the full inventory as JSON, zstd-compressed when that pays
/// (the frame's `compressed` flag says which).
public struct Telemetry: Hashable, Sendable {
    /// The frame's place in the agent's direction of its session (never on the wire: §5).
    public var sequence: UInt32
    /// The JSON document, always uncompressed here: compression is a property of the frame.
    public var document: [UInt8]

    public init(sequence: UInt32, document: [UInt8]) {
        self.sequence = sequence
        self.document = document
    }
}

/// Agent -> controller, authenticated: a clean shutdown, so the controller does not fail it over.
public struct Goodbye: Hashable, Sendable {
    public enum Reason: UInt8, Sendable, Hashable {
        case shutdown = 0
        case restarting = 1
    }

    public var sequence: UInt32
    public var reason: Reason

    public init(sequence: UInt32, reason: Reason) {
        self.sequence = sequence
        self.reason = reason
    }

    public func encode(into buffer: inout ByteBuffer) {
        buffer.writeInteger(reason.rawValue)
    }

    public static func decode(_ body: ByteBuffer, sequence: UInt32) throws(ProtocolViolation) -> Goodbye {
        var reader = BodyReader(body, type: .goodbye)
        let rawReason = try reader.integer(UInt8.self)
        guard let reason = Reason(rawValue: rawReason) else { throw reader.malformed("unknown reason \(rawReason)") }
        try reader.finish()
        return Goodbye(sequence: sequence, reason: reason)
    }
}

/// Who an established session belongs to.
///
/// The Hello's fields as the control plane names them: its u64 ids become the model's types here,
/// once (0 stays 0: "unknown", as in the Hello).
public struct AgentIdentity: Hashable, Sendable {
    public var agentID: AgentID
    public var instanceID: InstanceID
    public var machineID: HostMachineID
    public var role: AgentRole
    public var softwareVersion: String
    /// The agent process's incarnation id from Hello.
    public var incarnation: UInt64

    public init(
        agentID: AgentID, instanceID: InstanceID, machineID: HostMachineID, role: AgentRole, softwareVersion: String,
        incarnation: UInt64 = 0
    ) {
        self.agentID = agentID
        self.instanceID = instanceID
        self.machineID = machineID
        self.role = role
        self.softwareVersion = softwareVersion
        self.incarnation = incarnation
    }

    public init(_ hello: Hello) {
        self.init(
            agentID: AgentID(hello.agentID), instanceID: InstanceID(Int64(truncatingIfNeeded: hello.instanceID)),
            machineID: HostMachineID(Int64(truncatingIfNeeded: hello.machineID)), role: hello.role,
            softwareVersion: hello.softwareVersion, incarnation: hello.incarnation)
    }

    /// Agent ids appear in logs, files and shell-free contexts: keep them to a safe alphabet.
    public static func isValidAgentID(_ id: String) -> Bool {
        let bytes = id.utf8
        return (1...64).contains(bytes.count)
            && bytes.allSatisfy { byte in
                (byte >= UInt8(ascii: "a") && byte <= UInt8(ascii: "z"))
                    || (byte >= UInt8(ascii: "A") && byte <= UInt8(ascii: "Z"))
                    || (byte >= UInt8(ascii: "0") && byte <= UInt8(ascii: "9"))
                    || byte == UInt8(ascii: ".") || byte == UInt8(ascii: "_") || byte == UInt8(ascii: "-")
            }
    }
}

/// Reads a message body field by field; a short body or bytes left over are malformed.
struct BodyReader {
    private var buffer: ByteBuffer
    private let type: MessageType

    init(_ buffer: ByteBuffer, type: MessageType) {
        self.buffer = buffer
        self.type = type
    }

    func malformed(_ detail: String) -> ProtocolViolation { .malformedBody(type: type, detail: detail) }

    mutating func integer<T: FixedWidthInteger>(_: T.Type) throws(ProtocolViolation) -> T {
        guard let value = buffer.readInteger(as: T.self) else {
            throw malformed("body ends before a \(MemoryLayout<T>.size)-byte field")
        }
        return value
    }

    /// An unsigned LEB128 value that must fit `T` and be minimally encoded (one encoding per
    /// value, so a MACed body has exactly one form).
    mutating func varint<T: FixedWidthInteger & UnsignedInteger>(_: T.Type) throws(ProtocolViolation) -> T {
        var value: UInt64 = 0
        var shift: UInt64 = 0
        while true {
            guard let byte = buffer.readInteger(as: UInt8.self) else { throw malformed("body ends inside a varint") }
            let group = UInt64(byte & 0x7F)
            guard shift < 64, (group << shift) >> shift == group else { throw malformed("varint overflows 64 bits") }
            value |= group << shift
            if byte & 0x80 == 0 {
                guard shift == 0 || byte != 0 else { throw malformed("varint is not minimally encoded") }
                break
            }
            shift += 7
        }
        guard let fitting = T(exactly: value) else { throw malformed("varint \(value) exceeds \(T.max)") }
        return fitting
    }

    /// The protocol version that opens Hello and Challenge.
    mutating func version() throws(ProtocolViolation) {
        let version = try integer(UInt8.self)
        guard version == warmpoolProtocolVersion else { throw .unsupportedVersion(version) }
    }

    mutating func bytes(_ count: Int) throws(ProtocolViolation) -> [UInt8] {
        guard let bytes = buffer.readBytes(length: count) else {
            throw malformed("body ends before a \(count)-byte field")
        }
        return bytes
    }

    mutating func shortString() throws(ProtocolViolation) -> String {
        let length = Int(try integer(UInt8.self))
        let bytes = try bytes(length)
        guard let string = String(validating: bytes, as: UTF8.self) else { throw malformed("string is not UTF-8") }
        return string
    }

    func finish() throws(ProtocolViolation) {
        guard buffer.readableBytes == 0 else { throw malformed("\(buffer.readableBytes) bytes left over") }
    }
}

extension ByteBuffer {
    /// A u8 length and at most 255 UTF-8 bytes. Callers validate lengths before sending.
    mutating func writeShortString(_ string: String) {
        let bytes = Array(string.utf8.prefix(255))
        writeInteger(UInt8(bytes.count))
        writeBytes(bytes)
    }
}
