/// JSON text into a byte array, written as it goes: `object { }`, `array(elements) { }`, `key`,
/// `field`, and the scalar values. No Foundation: integers are written digit by digit, doubles by
/// their shortest round-tripping `description`. The agent writes its telemetry with it, the
/// liveness log its event lines, and `JSONValue.serialized` whole documents.
///
/// Compact by default, keys in the order given. `options` add what the Foundation writers this
/// replaces did: JSONSerialization's pretty layout and key order, JSONEncoder's key order, `\/`.
public struct JSONWriter: Sendable {
    public struct Options: OptionSet, Sendable {
        public let rawValue: Int
        public init(rawValue: Int) { self.rawValue = rawValue }

        /// Object keys of a `JSONValue` sorted by their UTF-8 bytes: JSONEncoder's `.sortedKeys`.
        /// (The streaming calls write keys in the order given, whatever the options.)
        public static let sortedKeys = Options(rawValue: 1 << 0)
        /// Object keys of a `JSONValue` sorted as JSONSerialization's `.sortedKeys` sorts them on
        /// Linux (a localized, numeric, case-insensitive comparison): see `JSONKeyOrder`.
        public static let collatedKeys = Options(rawValue: 1 << 1)
        /// JSONSerialization's `.prettyPrinted` layout: a newline and two spaces of indent per level,
        /// `"key" : value`, and an empty container as `[` newline newline indent `]`.
        public static let prettyPrinted = Options(rawValue: 1 << 2)
        /// `/` written as `\/`, as JSONEncoder (without `.withoutEscapingSlashes`) and
        /// JSONSerialization do.
        public static let escapingSlashes = Options(rawValue: 1 << 3)
        /// A double with an integral value written without its `.0` (`3.0` as `3`), as JSONEncoder
        /// and JSONSerialization write them.
        public static let integralDoublesWithoutFraction = Options(rawValue: 1 << 4)

        /// Byte for byte what `JSONSerialization.data(withJSONObject:options: [.prettyPrinted,
        /// .sortedKeys])` writes on Linux, for documents whose keys are ASCII (`JSONKeyOrder`).
        public static let jsonSerializationPrettySorted: Options =
            [.prettyPrinted, .collatedKeys, .escapingSlashes, .integralDoublesWithoutFraction]
    }

    public private(set) var bytes: [UInt8] = []
    public let options: Options
    /// Whether the next key or element in the current container needs a comma before it.
    private var needsComma = false
    /// A key was just written: the value follows it directly.
    private var afterKey = false
    private var depth = 0

    public init(options: Options = [], reservingCapacity capacity: Int = 512) {
        self.options = options
        bytes.reserveCapacity(capacity)
    }

    // MARK: Containers

    public mutating func object(_ body: (inout JSONWriter) -> Void) {
        open(UInt8(ascii: "{"))
        body(&self)
        close(UInt8(ascii: "}"))
    }

    public mutating func array(_ body: (inout JSONWriter) -> Void) {
        open(UInt8(ascii: "["))
        body(&self)
        close(UInt8(ascii: "]"))
    }

    public mutating func array<Element>(_ elements: some Sequence<Element>, _ write: (inout JSONWriter, Element) -> Void) {
        open(UInt8(ascii: "["))
        for element in elements { write(&self, element) }
        close(UInt8(ascii: "]"))
    }

    private mutating func open(_ bracket: UInt8) {
        beginValue()
        bytes.append(bracket)
        if options.contains(.prettyPrinted) { bytes.append(UInt8(ascii: "\n")) }
        depth += 1
        needsComma = false
    }

    private mutating func close(_ bracket: UInt8) {
        depth -= 1
        if options.contains(.prettyPrinted) {
            bytes.append(UInt8(ascii: "\n"))
            indent()
        }
        bytes.append(bracket)
        needsComma = true
    }

    /// The comma, newline and indent a key or an array element needs; nothing after a key.
    private mutating func beginValue() {
        if afterKey {
            afterKey = false
            return
        }
        if options.contains(.prettyPrinted) {
            if needsComma { bytes.append(UInt8(ascii: ",")); bytes.append(UInt8(ascii: "\n")) }
            indent()
        } else if needsComma {
            bytes.append(UInt8(ascii: ","))
        }
    }

    private mutating func indent() {
        for _ in 0..<depth { bytes.append(UInt8(ascii: " ")); bytes.append(UInt8(ascii: " ")) }
    }

    // MARK: Keys and fields

    public mutating func key(_ key: StaticString) {
        beginValue()
        bytes.append(UInt8(ascii: "\""))
        // Keys spelled in the source are plain ASCII names: nothing to escape.
        key.withUTF8Buffer { bytes.append(contentsOf: $0) }
        bytes.append(UInt8(ascii: "\""))
        colon()
    }

    public mutating func key(_ key: String) {
        beginValue()
        JSONEscaping.appendQuoted(key, to: &bytes, escapingSlashes: options.contains(.escapingSlashes))
        colon()
    }

    private mutating func colon() {
        if options.contains(.prettyPrinted) {
            bytes.append(UInt8(ascii: " ")); bytes.append(UInt8(ascii: ":")); bytes.append(UInt8(ascii: " "))
        } else {
            bytes.append(UInt8(ascii: ":"))
        }
        afterKey = true
        needsComma = false
    }

    /// Left out when nil.
    public mutating func field(_ key: StaticString, _ value: String?) {
        guard let value else { return }
        self.key(key)
        string(value)
    }

    public mutating func field(_ key: StaticString, _ value: Bool) {
        self.key(key)
        bool(value)
    }

    /// Left out when nil. Inlinable, as `integer`: each caller gets it for its own integer types.
    @inlinable
    public mutating func field<Value: BinaryInteger>(_ key: StaticString, _ value: Value?) {
        guard let value else { return }
        self.key(key)
        integer(value)
    }

    /// Left out when nil.
    public mutating func field(_ key: StaticString, _ value: Double?) {
        guard let value else { return }
        self.key(key)
        double(value)
    }

    // MARK: Values

    public mutating func null() {
        beginValue()
        bytes.append(contentsOf: Self.nullBytes)
        needsComma = true
    }

    public mutating func bool(_ value: Bool) {
        beginValue()
        bytes.append(contentsOf: value ? Self.trueBytes : Self.falseBytes)
        needsComma = true
    }

    public mutating func string(_ value: String) {
        beginValue()
        JSONEscaping.appendQuoted(value, to: &bytes, escapingSlashes: options.contains(.escapingSlashes))
        needsComma = true
    }

    /// Any integer whose magnitude fits 64 bits, digit by digit. Inlinable, so that a caller's
    /// integer types are specialised where it calls (unspecialised, the generic sign and magnitude
    /// cost more code than the digits); one concrete loop writes the digits.
    @inlinable
    public mutating func integer<Value: BinaryInteger>(_ value: Value) {
        integer(negative: value < 0, magnitude: UInt64(value.magnitude))
    }

    @usableFromInline
    mutating func integer(negative: Bool, magnitude: UInt64) {
        beginValue()
        needsComma = true
        if magnitude == 0 {
            bytes.append(UInt8(ascii: "0"))
            return
        }
        if negative { bytes.append(UInt8(ascii: "-")) }
        // Digits least significant first, then reversed in place.
        var magnitude = magnitude
        let start = bytes.count
        while magnitude > 0 {
            bytes.append(UInt8(ascii: "0") + UInt8(magnitude % 10))
            magnitude /= 10
        }
        bytes[start...].reverse()
    }

    /// The shortest text that reads back as the same double (Swift's `description`: `0.1`, `1e+20`,
    /// `5e-324`). JSON has no NaN or infinity: a non-finite figure is written as null (unknown).
    public mutating func double(_ value: Double) {
        guard value.isFinite else { return null() }
        beginValue()
        needsComma = true
        var text = value.description
        if options.contains(.integralDoublesWithoutFraction), text.hasSuffix(".0") { text.removeLast(2) }
        bytes.append(contentsOf: text.utf8)
    }

    private static let nullBytes: [UInt8] = Array("null".utf8)
    private static let trueBytes: [UInt8] = Array("true".utf8)
    private static let falseBytes: [UInt8] = Array("false".utf8)
}

/// The one JSON string escaper, for every writer in the project but the emulator's.
public enum JSONEscaping {
    private static let hexDigits: [UInt8] = Array("0123456789abcdef".utf8)

    /// `value` in quotes, as JSONEncoder escapes: `"` and `\` with a backslash, the C0 controls as
    /// \b \t \n \f \r or \u00xx, `/` as `\/` when asked, everything else (UTF-8 included) as is.
    public static func appendQuoted(_ value: String, to bytes: inout [UInt8], escapingSlashes: Bool = false) {
        bytes.append(UInt8(ascii: "\""))
        for byte in value.utf8 {
            switch byte {
            case UInt8(ascii: "\""), UInt8(ascii: "\\"):
                bytes.append(UInt8(ascii: "\\"))
                bytes.append(byte)
            case UInt8(ascii: "/") where escapingSlashes:
                bytes.append(UInt8(ascii: "\\"))
                bytes.append(byte)
            case 0x08: bytes.append(UInt8(ascii: "\\")); bytes.append(UInt8(ascii: "b"))
            case 0x09: bytes.append(UInt8(ascii: "\\")); bytes.append(UInt8(ascii: "t"))
            case 0x0A: bytes.append(UInt8(ascii: "\\")); bytes.append(UInt8(ascii: "n"))
            case 0x0C: bytes.append(UInt8(ascii: "\\")); bytes.append(UInt8(ascii: "f"))
            case 0x0D: bytes.append(UInt8(ascii: "\\")); bytes.append(UInt8(ascii: "r"))
            case 0x00..<0x20:
                bytes.append(UInt8(ascii: "\\")); bytes.append(UInt8(ascii: "u"))
                bytes.append(UInt8(ascii: "0")); bytes.append(UInt8(ascii: "0"))
                bytes.append(hexDigits[Int(byte >> 4)])
                bytes.append(hexDigits[Int(byte & 0xF)])
            default:
                bytes.append(byte)
            }
        }
        bytes.append(UInt8(ascii: "\""))
    }

    /// `value` quoted and escaped, as a String.
    public static func quoted(_ value: String, escapingSlashes: Bool = false) -> String {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(value.utf8.count + 2)
        appendQuoted(value, to: &bytes, escapingSlashes: escapingSlashes)
        return String(decoding: bytes, as: UTF8.self)
    }
}
