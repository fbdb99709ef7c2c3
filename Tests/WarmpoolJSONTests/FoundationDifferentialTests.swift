import Foundation
import Testing
import WarmpoolJSON

/// The toolkit replaced Foundation's JSONSerialization and JSONEncoder: it keeps agreeing with them
/// on random documents (DESIGN.md, house style 10). Each test prints its seed; set
/// WARMPOOL_JSON_SEED to replay one.
@Suite struct FoundationDifferentialTests {
    static let documentCount = 3000

    static func seed() -> UInt64 {
        if let text = ProcessInfo.processInfo.environment["WARMPOOL_JSON_SEED"], let seed = UInt64(text) { return seed }
        return UInt64.random(in: 1...UInt64.max)
    }

    /// Our text, read by JSONSerialization, is the same document.
    @Test func foundationReadsWhatWeWrite() throws {
        let seed = Self.seed()
        print("FoundationDifferentialTests.foundationReadsWhatWeWrite seed \(seed)")
        var random = SplitMix64(seed: seed)
        for _ in 0..<Self.documentCount {
            let value = RandomJSON.document(&random, keys: RandomJSON.anyKey)
            for options: JSONWriter.Options in [[], .escapingSlashes, .jsonSerializationPrettySorted] {
                let bytes = value.serialized(options: options)
                let parsed = try JSONSerialization.jsonObject(with: Data(bytes))
                let problem = Self.mismatch(parsed, value)
                #expect(problem == nil, "seed \(seed): \(problem ?? "") in \(String(decoding: bytes, as: UTF8.self))")
            }
        }
    }

    /// JSONSerialization's text, read by us, is the same document.
    @Test func weReadWhatFoundationWrites() throws {
        let seed = Self.seed()
        print("FoundationDifferentialTests.weReadWhatFoundationWrites seed \(seed)")
        var random = SplitMix64(seed: seed)
        for _ in 0..<Self.documentCount {
            let value = RandomJSON.document(&random, keys: RandomJSON.anyKey)
            for options: JSONSerialization.WritingOptions in [[], [.prettyPrinted, .sortedKeys]] {
                let data = try JSONSerialization.data(withJSONObject: Self.foundationObject(value), options: options)
                let parsed = try JSONValue.parse(Array(data))
                let problem = Self.mismatch(Self.foundationObject(value), parsed)
                #expect(problem == nil, "seed \(seed): \(problem ?? "") in \(String(decoding: data, as: UTF8.self))")
            }
        }
    }

    /// warmpoolctl's `--json`: byte for byte what JSONSerialization's `[.prettyPrinted, .sortedKeys]`
    /// wrote, over the keys an API answer can have (ASCII letters, digits, `_` `-` `.`).
    @Test func prettySortedBytesMatchJSONSerialization() throws {
        let seed = Self.seed()
        print("FoundationDifferentialTests.prettySortedBytesMatchJSONSerialization seed \(seed)")
        var random = SplitMix64(seed: seed)
        for _ in 0..<Self.documentCount {
            let value = RandomJSON.document(&random, keys: RandomJSON.asciiKey)
            let theirs = try JSONSerialization.data(withJSONObject: Self.foundationObject(value), options: [.prettyPrinted, .sortedKeys])
            let ours = value.serialized(options: .jsonSerializationPrettySorted)
            #expect(String(decoding: ours, as: UTF8.self) == String(decoding: theirs, as: UTF8.self), "seed \(seed)")
        }
    }

    /// The provider's request bodies: byte for byte what JSONEncoder with `[.sortedKeys,
    /// .withoutEscapingSlashes]` wrote for its old Codable JSON value.
    @Test func sortedKeysMatchJSONEncoder() throws {
        let seed = Self.seed()
        print("FoundationDifferentialTests.sortedKeysMatchJSONEncoder seed \(seed)")
        var random = SplitMix64(seed: seed)
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        for _ in 0..<Self.documentCount {
            let value = RandomJSON.document(&random, keys: RandomJSON.anyKey)
            let theirs = try encoder.encode(EncodableJSON(value))
            let ours = value.serialized(options: [.sortedKeys, .integralDoublesWithoutFraction])
            #expect(String(decoding: ours, as: UTF8.self) == String(decoding: theirs, as: UTF8.self), "seed \(seed)")
        }
    }

    @Test func collatedKeyOrderMatchesJSONSerialization() throws {
        let seed = Self.seed()
        print("FoundationDifferentialTests.collatedKeyOrderMatchesJSONSerialization seed \(seed)")
        var random = SplitMix64(seed: seed)
        for _ in 0..<300 {
            var keys = Set<String>()
            for _ in 0..<20 { keys.insert(RandomJSON.asciiKey(&random)) }
            let object = Dictionary(uniqueKeysWithValues: keys.map { ($0, 0) })
            let data = try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])
            guard case .object(let members) = try JSONValue.parse(Array(data)) else { Issue.record("not an object"); continue }
            let theirs = members.map(\.0)
            let ours = keys.sorted(by: JSONKeyOrder.collatedPrecedes)
            #expect(ours == theirs, "seed \(seed)")
        }
    }

    // MARK: Comparing with Foundation's values

    static func foundationObject(_ value: JSONValue) -> Any {
        switch value {
        case .null: NSNull()
        case .bool(let flag): flag
        case .int(let number): Int(number)
        case .double(let number): number
        case .string(let text): text
        case .array(let values): values.map(foundationObject)
        case .object(let members): Dictionary(uniqueKeysWithValues: members.map { ($0.0, foundationObject($0.1)) })
        }
    }

    static func matches(_ object: Any, _ value: JSONValue) -> Bool { mismatch(object, value) == nil }

    /// Where `object` and `value` first differ, or nil.
    static func mismatch(_ object: Any, _ value: JSONValue, at path: String = "$") -> String? {
        switch value {
        case .array(let values):
            guard let array = object as? [Any], array.count == values.count else { return "\(path): \(object) is not \(value)" }
            for (index, (element, expected)) in zip(array, values).enumerated() {
                if let found = mismatch(element, expected, at: "\(path)[\(index)]") { return found }
            }
            return nil
        case .object(let members):
            guard let dictionary = object as? [String: Any], dictionary.count == members.count else {
                return "\(path): \(object) is not \(value)"
            }
            for (key, member) in members {
                guard let element = dictionary[key] else { return "\(path): no key \(key.debugDescription)" }
                if let found = mismatch(element, member, at: "\(path).\(key.debugDescription)") { return found }
            }
            return nil
        default:
            return scalarMatches(object, value) ? nil : "\(path): \(object) (\(type(of: object))) is not \(value)"
        }
    }

    static func scalarMatches(_ object: Any, _ value: JSONValue) -> Bool {
        switch value {
        case .null: return object is NSNull
        case .bool(let flag):
            guard let number = object as? NSNumber, isBoolean(number) else { return false }
            return number.boolValue == flag
        case .int(let integer):
            guard let number = object as? NSNumber, !isBoolean(number) else { return false }
            // JSONSerialization reads long numbers as NSDecimalNumber, whose int64Value and
            // doubleValue round: compare its digits.
            if let decimal = number as? NSDecimalNumber {
                return Int64(decimal.stringValue) == integer || Double(decimal.stringValue) == Double(integer)
            }
            return isDouble(number) ? number.doubleValue == Double(integer) : number.int64Value == integer
        case .double(let double):
            guard let number = object as? NSNumber, !isBoolean(number) else { return false }
            if let decimal = number as? NSDecimalNumber { return Double(decimal.stringValue) == double }
            return number.doubleValue == double
        case .string(let text): return object as? String == text
        case .array(let values):
            guard let array = object as? [Any], array.count == values.count else { return false }
            return zip(array, values).allSatisfy { matches($0, $1) }
        case .object(let members):
            guard let dictionary = object as? [String: Any], dictionary.count == members.count else { return false }
            return members.allSatisfy { key, member in dictionary[key].map { matches($0, member) } ?? false }
        }
    }

    static func isBoolean(_ number: NSNumber) -> Bool { String(cString: number.objCType) == "c" }
    static func isDouble(_ number: NSNumber) -> Bool { ["d", "f"].contains(String(cString: number.objCType)) }
}

/// The provider's old JSON value, as Codable encoded it.
private struct EncodableJSON: Encodable {
    let value: JSONValue
    init(_ value: JSONValue) { self.value = value }

    func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        switch value {
        case .null: try container.encodeNil()
        case .bool(let flag): try container.encode(flag)
        case .int(let number): try container.encode(number)
        case .double(let number): try container.encode(number)
        case .string(let text): try container.encode(text)
        case .array(let values): try container.encode(values.map(EncodableJSON.init))
        case .object(let members):
            try container.encode(Dictionary(uniqueKeysWithValues: members.map { ($0.0, EncodableJSON($0.1)) }))
        }
    }
}

struct SplitMix64: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

/// Random documents: every kind of value, nested, with awkward strings and numbers.
enum RandomJSON {
    /// No U+FEFF: JSONSerialization on Linux drops it from strings it reads.
    static let awkward: [Character] = [
        "\"", "\\", "/", "\u{0}", "\u{1}", "\u{8}", "\u{9}", "\u{A}", "\u{C}", "\u{D}", "\u{1F}", "\u{7F}", "\u{80}", "é",
        "\u{2028}", "\u{FFFF}", "日", "🎉", "e\u{301}", " ", "a", "Z", "0",
    ]

    static func string(_ random: inout SplitMix64) -> String {
        String((0..<Int.random(in: 0...12, using: &random)).map { _ in
            Bool.random(using: &random)
                ? awkward.randomElement(using: &random)!
                : Character(Unicode.Scalar(UInt8.random(in: 0x20...0x7E, using: &random)))
        })
    }

    static func anyKey(_ random: inout SplitMix64) -> String { string(&random) }

    static let keyCharacters = Array("abcxyzABXZ0129_-.")
    static func asciiKey(_ random: inout SplitMix64) -> String {
        String((0..<Int.random(in: 1...6, using: &random)).map { _ in keyCharacters.randomElement(using: &random)! })
    }

    static func double(_ random: inout SplitMix64) -> Double {
        switch Int.random(in: 0..<5, using: &random) {
        case 0: return Double(Int.random(in: -1000...1000, using: &random))
        case 1: return Double.random(in: -1...1, using: &random)
        case 2: return Double.random(in: -1e6...1e6, using: &random).rounded() / 100
        case 3:
            let value = Double(bitPattern: random.next())
            return value.isFinite ? value : 0.5
        default: return [0.1, 1e20, 1e-7, Double.leastNonzeroMagnitude, Double.greatestFiniteMagnitude, 123456789.123, 1e16, 2e-5].randomElement(using: &random)!
        }
    }

    static func document(_ random: inout SplitMix64, keys: (inout SplitMix64) -> String) -> JSONValue {
        // JSONSerialization wants a container at the top.
        Bool.random(using: &random) ? object(&random, depth: 0, keys: keys) : array(&random, depth: 0, keys: keys)
    }

    static func value(_ random: inout SplitMix64, depth: Int, keys: (inout SplitMix64) -> String) -> JSONValue {
        switch Int.random(in: 0..<(depth < 4 ? 9 : 7), using: &random) {
        case 0: return .null
        case 1: return .bool(Bool.random(using: &random))
        case 2: return .int(Int64.random(in: -1000...1000, using: &random))
        case 3: return .int(Int64(bitPattern: random.next()))
        case 4: return .double(double(&random))
        case 5, 6: return .string(string(&random))
        case 7: return array(&random, depth: depth + 1, keys: keys)
        default: return object(&random, depth: depth + 1, keys: keys)
        }
    }

    static func array(_ random: inout SplitMix64, depth: Int, keys: (inout SplitMix64) -> String) -> JSONValue {
        .array((0..<Int.random(in: 0...5, using: &random)).map { _ in value(&random, depth: depth, keys: keys) })
    }

    static func object(_ random: inout SplitMix64, depth: Int, keys: (inout SplitMix64) -> String) -> JSONValue {
        var members: [(String, JSONValue)] = []
        for _ in 0..<Int.random(in: 0...5, using: &random) {
            let key = keys(&random)
            if members.contains(where: { $0.0 == key }) { continue }
            members.append((key, value(&random, depth: depth, keys: keys)))
        }
        return .object(members)
    }
}
