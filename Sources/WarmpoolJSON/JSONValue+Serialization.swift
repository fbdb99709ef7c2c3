// Whole documents, kept apart from the streaming writer (JSONWriter.swift) and the parser: in
// release builds each source file's code lands in one section, and the linker keeps or drops a
// section whole. The agent streams its telemetry and links neither the value's serialisation nor
// the parser (Scripts/bench agent footprint).

extension JSONValue {
    // MARK: Serialising

    /// The document's text; compact, keys in the order given, unless `options` say otherwise.
    public func serialized(options: JSONWriter.Options = []) -> [UInt8] {
        var writer = JSONWriter(options: options)
        writer.value(self)
        return writer.bytes
    }
}

extension JSONWriter {
    /// A whole document or part of one.
    public mutating func value(_ value: JSONValue) {
        switch value {
        case .null: null()
        case .bool(let flag): bool(flag)
        case .int(let number): integer(number)
        case .double(let number): double(number)
        case .string(let text): string(text)
        case .array(let values): array(values) { writer, element in writer.value(element) }
        case .object(let members):
            let ordered: [(String, JSONValue)]
            if options.contains(.collatedKeys) {
                ordered = members.sorted { JSONKeyOrder.collatedPrecedes($0.0, $1.0) }
            } else if options.contains(.sortedKeys) {
                ordered = members.sorted { $0.0.utf8.lexicographicallyPrecedes($1.0.utf8) }
            } else {
                ordered = members
            }
            object { writer in
                for (key, member) in ordered {
                    writer.key(key)
                    writer.value(member)
                }
            }
        }
    }
}

/// The key order of JSONSerialization's `.sortedKeys` on Linux, which compares keys with
/// `[.numeric, .caseInsensitive, .forcedOrdering]` in the system locale (ICU root collation).
/// Reproduced for ASCII keys: punctuation (`_` `-` `,` `;` `:` `!` `?` `.` ...) before digits before
/// letters; a run of digits compared by its value (`a9` before `a10`); letters without case, then
/// lowercase before uppercase at the first difference; then shorter first, then bytes. Other
/// characters sort after ASCII by their bytes (Foundation would put `é` beside `e`).
/// `WarmpoolJSONTests` checks it against JSONSerialization on random keys.
public enum JSONKeyOrder {
    /// ICU root order of the ASCII punctuation and symbols, after space and the controls.
    private static let punctuation: [UInt8] = Array("_-,;:!?.'\"()[]{}@*/\\&#%`^+<=>|~$".utf8)

    private static let weights: [UInt16] = {
        var table = [UInt16](repeating: 0, count: 256)
        for byte in 0..<256 {
            switch UInt8(byte) {
            case 0..<0x21: table[byte] = UInt16(byte)  // controls and space first
            case UInt8(ascii: "0")...UInt8(ascii: "9"): table[byte] = 200
            case UInt8(ascii: "a")...UInt8(ascii: "z"): table[byte] = 300 + UInt16(byte) - 0x61
            case UInt8(ascii: "A")...UInt8(ascii: "Z"): table[byte] = 300 + UInt16(byte) - 0x41
            case 0x80...: table[byte] = 400 + UInt16(byte)
            default: table[byte] = 100 + UInt16(punctuation.firstIndex(of: UInt8(byte)) ?? 90)
            }
        }
        return table
    }()

    private static func isDigit(_ byte: UInt8) -> Bool { byte >= UInt8(ascii: "0") && byte <= UInt8(ascii: "9") }

    public static func collatedPrecedes(_ lhs: String, _ rhs: String) -> Bool {
        let a = Array(lhs.utf8), b = Array(rhs.utf8)
        var i = 0, j = 0
        // Primary: characters without case, digit runs by value.
        while i < a.count, j < b.count {
            if isDigit(a[i]), isDigit(b[j]) {
                var iEnd = i, jEnd = j
                while iEnd < a.count, isDigit(a[iEnd]) { iEnd += 1 }
                while jEnd < b.count, isDigit(b[jEnd]) { jEnd += 1 }
                var iStart = i, jStart = j
                while iStart < iEnd - 1, a[iStart] == UInt8(ascii: "0") { iStart += 1 }
                while jStart < jEnd - 1, b[jStart] == UInt8(ascii: "0") { jStart += 1 }
                if iEnd - iStart != jEnd - jStart { return iEnd - iStart < jEnd - jStart }
                if !a[iStart..<iEnd].elementsEqual(b[jStart..<jEnd]) {
                    return a[iStart..<iEnd].lexicographicallyPrecedes(b[jStart..<jEnd])
                }
                i = iEnd
                j = jEnd
                continue
            }
            let wa = weights[Int(a[i])], wb = weights[Int(b[j])]
            if wa != wb { return wa < wb }
            i += 1
            j += 1
        }
        if (i < a.count) != (j < b.count) { return j < b.count }
        // Tertiary: lowercase before uppercase at the first difference of case.
        for (x, y) in zip(a, b) where x != y && weights[Int(x)] == weights[Int(y)] && !isDigit(x) {
            return x > y  // 'a' (0x61) before 'A' (0x41)
        }
        if a.count != b.count { return a.count < b.count }
        return a.lexicographicallyPrecedes(b)
    }
}
