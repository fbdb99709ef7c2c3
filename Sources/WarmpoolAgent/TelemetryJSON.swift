/// The Telemetry document (PROTOCOL.md §3.8) written by hand, byte for byte what Foundation's
/// `JSONEncoder` gave with `.sortedKeys` and `.convertToSnakeCase`: snake_case keys in sorted
/// order, no whitespace, absent optionals left out, `/` escaped as `\/`. The agent sends it every
/// telemetry interval; the encoder's generic Codable machinery and its key conversion kept about
/// a megabyte of code and Unicode tables resident for a document of a dozen fields.
/// `TelemetryJSONTests` checks the bytes against `JSONEncoder`.
struct TelemetryDocument: Equatable, Sendable {
    var agentID: String
    var instanceID: UInt64
    var machineID: UInt64
    var role: String
    var version: String
    var epoch: UInt64
    var fencedAtEpoch: UInt64?
    var workload: String
    var volume: VolumeReport?
    var gpu: GPUReport?

    func json() -> [UInt8] {
        var out = JSONWriter()
        out.object { o in
            o.field("agent_id", agentID)
            o.field("epoch", epoch)
            o.field("fenced_at_epoch", fencedAtEpoch)
            if let gpu { o.key("gpu"); gpu.write(to: &o) }
            o.field("instance_id", instanceID)
            o.field("machine_id", machineID)
            o.field("role", role)
            o.field("version", version)
            if let volume { o.key("volume"); volume.write(to: &o) }
            o.field("workload", workload)
        }
        return out.bytes
    }
}

extension VolumeReport {
    func write(to out: inout JSONWriter) {
        out.object { o in
            o.field("free_bytes", freeBytes)
            o.field("id_matches", idMatches)
            o.field("mounted", mounted)
            o.field("path", path)
            o.field("problem", problem)
            o.field("volume_id", volumeID)
            o.field("writable", writable)
        }
    }
}

extension GPUReport {
    func write(to out: inout JSONWriter) {
        out.object { o in
            o.field("available", available)
            o.field("driver_version", driverVersion)
            o.key("gpus")
            o.array(gpus) { o, gpu in gpu.write(to: &o) }
            o.field("problem", problem)
        }
    }
}

extension GPUInfo {
    func write(to out: inout JSONWriter) {
        out.object { o in
            o.field("ecc_uncorrected_volatile", eccUncorrectedVolatile)
            o.field("healthy", healthy)
            o.field("index", index)
            o.field("last_xid", lastXid)
            o.field("memory_total_bytes", memoryTotalBytes)
            o.field("memory_used_bytes", memoryUsedBytes)
            o.field("name", name)
            o.field("temperature_celsius", temperatureCelsius)
            o.field("utilization_percent", utilizationPercent)
            o.field("uuid", uuid)
            o.field("xid_critical_errors", xidCriticalErrors)
        }
    }
}

/// Compact JSON into a byte array. Keys are written in the order given: callers pass them sorted.
struct JSONWriter {
    private(set) var bytes: [UInt8] = []
    /// Whether the next key or element in the current container needs a comma before it.
    private var needsComma = false

    init() { bytes.reserveCapacity(512) }

    mutating func object(_ body: (inout JSONWriter) -> Void) {
        bytes.append(UInt8(ascii: "{"))
        needsComma = false
        body(&self)
        bytes.append(UInt8(ascii: "}"))
        needsComma = true
    }

    mutating func array<Element>(_ elements: [Element], _ write: (inout JSONWriter, Element) -> Void) {
        bytes.append(UInt8(ascii: "["))
        needsComma = false
        for element in elements {
            if needsComma { bytes.append(UInt8(ascii: ",")) }
            write(&self, element)
            needsComma = true
        }
        bytes.append(UInt8(ascii: "]"))
        needsComma = true
    }

    mutating func key(_ key: StaticString) {
        if needsComma { bytes.append(UInt8(ascii: ",")) }
        bytes.append(UInt8(ascii: "\""))
        key.withUTF8Buffer { bytes.append(contentsOf: $0) }
        bytes.append(UInt8(ascii: "\""))
        bytes.append(UInt8(ascii: ":"))
        needsComma = false
    }

    mutating func field(_ key: StaticString, _ value: String?) {
        guard let value else { return }
        self.key(key)
        string(value)
        needsComma = true
    }

    mutating func field(_ key: StaticString, _ value: Bool) {
        self.key(key)
        bytes.append(contentsOf: value ? Self.trueBytes : Self.falseBytes)
        needsComma = true
    }

    mutating func field<Value: BinaryInteger>(_ key: StaticString, _ value: Value?) {
        guard let value else { return }
        self.key(key)
        integer(value)
        needsComma = true
    }

    private static let trueBytes: [UInt8] = Array("true".utf8)
    private static let falseBytes: [UInt8] = Array("false".utf8)
    private static let hexDigits: [UInt8] = Array("0123456789abcdef".utf8)

    private mutating func integer<Value: BinaryInteger>(_ value: Value) {
        if value == 0 {
            bytes.append(UInt8(ascii: "0"))
            return
        }
        if value < 0 { bytes.append(UInt8(ascii: "-")) }
        // Digits least significant first, then reversed in place; the magnitude fits a UInt64.
        var magnitude = UInt64(value.magnitude)
        let start = bytes.count
        while magnitude > 0 {
            bytes.append(UInt8(ascii: "0") + UInt8(magnitude % 10))
            magnitude /= 10
        }
        bytes[start...].reverse()
    }

    /// As JSONEncoder escapes: `"` `\` and `/` with a backslash, the C0 controls as \b \t \n \f \r
    /// or \u00xx, everything else (UTF-8 included) as is.
    private mutating func string(_ value: String) {
        bytes.append(UInt8(ascii: "\""))
        for byte in value.utf8 {
            switch byte {
            case UInt8(ascii: "\""), UInt8(ascii: "\\"), UInt8(ascii: "/"):
                bytes.append(UInt8(ascii: "\\"))
                bytes.append(byte)
            case 0x08: bytes.append(UInt8(ascii: "\\")); bytes.append(UInt8(ascii: "b"))
            case 0x09: bytes.append(UInt8(ascii: "\\")); bytes.append(UInt8(ascii: "t"))
            case 0x0A: bytes.append(UInt8(ascii: "\\")); bytes.append(UInt8(ascii: "n"))
            case 0x0C: bytes.append(UInt8(ascii: "\\")); bytes.append(UInt8(ascii: "f"))
            case 0x0D: bytes.append(UInt8(ascii: "\\")); bytes.append(UInt8(ascii: "r"))
            case 0x00..<0x20:
                bytes.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "u"), UInt8(ascii: "0"), UInt8(ascii: "0")])
                bytes.append(Self.hexDigits[Int(byte >> 4)])
                bytes.append(Self.hexDigits[Int(byte & 0xF)])
            default:
                bytes.append(byte)
            }
        }
        bytes.append(UInt8(ascii: "\""))
    }
}
