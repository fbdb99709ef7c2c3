import Testing
import WarmpoolJSON

/// The toolkit on its own: round trips, the strict parser's refusals with their byte offsets, the
/// escaper, and the writer's layouts.
@Suite struct JSONValueTests {
    static let documents: [JSONValue] = [
        .null, .bool(true), .bool(false), .int(0), .int(-1), .int(.max), .int(.min), .double(0.5), .double(-1e-7),
        .double(1e300), .double(3.0), .string(""), .string("a\"b\\c/d\u{0}\u{1F}\u{7F}é🎉"), .array([]), .object([]),
        .object([("b", .int(1)), ("a", .array([.null, .object([("x", .string("y"))])]))]),
    ]

    @Test(arguments: documents)
    func roundTrips(_ value: JSONValue) throws {
        #expect(try JSONValue.parse(value.serialized()) == value)
        #expect(try JSONValue.parse(value.serialized(options: .jsonSerializationPrettySorted)).isNumericallyEqual(to: value))
    }

    @Test func parsesWhatItShould() throws {
        #expect(try JSONValue.parse(" {\"a\" : [1, 2.5, -0, 1E2, 1e-2, true, false, null, \"\\u00e9\\ud83c\\udf89\\/\"]}\r\n") == .object([
            ("a", .array([.int(1), .double(2.5), .int(0), .double(100), .double(0.01), .bool(true), .bool(false), .null, .string("é🎉/")])),
        ]))
        // Out of Int64's range: a double.
        #expect(try JSONValue.parse("9223372036854775808") == .double(9_223_372_036_854_775_808))
        #expect(try JSONValue.parse("-9223372036854775808") == .int(.min))
        // Keys keep their order.
        #expect(try JSONValue.parse(#"{"z":1,"a":2}"#)["z"] == .int(1))
        if case .object(let members) = try JSONValue.parse(#"{"z":1,"a":2}"#) { #expect(members.map(\.0) == ["z", "a"]) }
    }

    static let refusals: [(String, String)] = [
        ("", "unexpected end of input at byte 0"),
        ("  ", "unexpected end of input at byte 2"),
        ("[1] x", "unexpected data after the JSON value at byte 4"),
        ("{}{}", "unexpected data after the JSON value at byte 2"),
        ("01", "leading zero in a number at byte 0"),
        ("[-007]", "leading zero in a number at byte 2"),
        ("1.", "invalid number at byte 2"),
        ("1e", "invalid number at byte 2"),
        ("-", "invalid value at byte 1"),
        ("+1", "invalid value at byte 0"),
        (".5", "invalid value at byte 0"),
        ("1e400", "number out of range at byte 5"),
        ("NaN", "invalid value at byte 0"),
        ("tru", "invalid literal at byte 0"),
        ("nul", "invalid literal at byte 0"),
        (#""\ud800""#, "unpaired surrogate at byte 7"),
        (#""\ud800\u0041""#, "unpaired surrogate at byte 13"),
        (#""\udc00""#, "unpaired surrogate at byte 7"),
        (#""\u12G4""#, "invalid \u{5C}u escape at byte 5"),
        (#""\u12""#, "short \u{5C}u escape at byte 3"),
        (#""\x""#, "invalid escape at byte 3"),
        ("\"a\u{01}b\"", "control character in a string at byte 2"),
        ("\"tab\there\"", "control character in a string at byte 4"),
        ("\"new\nline\"", "control character in a string at byte 4"),
        ("\"open", "unterminated string at byte 5"),
        ("[1,]", "invalid value at byte 3"),
        ("[1 2]", "expected ',' or ']' at byte 3"),
        ("{\"a\" 1}", "expected ':' at byte 5"),
        ("{\"a\":1,}", "expected a string key at byte 7"),
        ("{a:1}", "expected a string key at byte 1"),
        (#"{"a":1,"a":2}"#, "duplicate key \"a\" at byte 10"),
        ("{\"a\":1", "unexpected end of input at byte 6"),
        (String(repeating: "[", count: 65) + String(repeating: "]", count: 65), "nesting deeper than 64 at byte 64"),
    ]

    @Test func refusesWithThePlaceAndTheReason() {
        for (text, message) in Self.refusals {
            do {
                let value = try JSONValue.parse(text)
                Issue.record("\(text.debugDescription) parsed as \(value)")
            } catch {
                #expect(error.description == message, "\(text.debugDescription)")
            }
        }
        // Invalid UTF-8 inside a string.
        #expect(throws: JSONValue.ParseError.self) { try JSONValue.parse([0x22, 0xC3, 0x28, 0x22]) }
        #expect(throws: JSONValue.ParseError.self) { try JSONValue.parse([0x22, 0xED, 0xA0, 0x80, 0x22]) }
        // 64 levels are fine, 65 are not.
        let deepest = String(repeating: "[", count: 64) + String(repeating: "]", count: 64)
        #expect((try? JSONValue.parse(deepest)) != nil)
    }

    @Test func escapesEveryControlCharacter() {
        for byte in UInt8(0)..<0x20 {
            let text = JSONEscaping.quoted(String(decoding: [byte], as: UTF8.self))
            let expected: String = switch byte {
            case 0x08: #""\b""#
            case 0x09: #""\t""#
            case 0x0A: #""\n""#
            case 0x0C: #""\f""#
            case 0x0D: #""\r""#
            default: "\"\\u00" + (byte < 0x10 ? "0" : "1") + String(byte & 0xF, radix: 16) + "\""
            }
            #expect(text == expected)
        }
        #expect(JSONEscaping.quoted(#"a"b\c/d"#) == #""a\"b\\c/d""#)
        #expect(JSONEscaping.quoted("a/b", escapingSlashes: true) == #""a\/b""#)
        #expect(JSONEscaping.quoted("\u{7F}é\u{2028}🎉") == "\"\u{7F}é\u{2028}🎉\"")
        // The writer and JSONValue use the same escaper.
        #expect(JSONValue.string("x/\u{8}").serialized() == Array(JSONEscaping.quoted("x/\u{8}").utf8))
    }

    @Test func writesNumbersWithoutFoundation() {
        func text(_ value: JSONValue, _ options: JSONWriter.Options = []) -> String {
            String(decoding: value.serialized(options: options), as: UTF8.self)
        }
        #expect(text(.int(.min)) == "-9223372036854775808")
        #expect(text(.int(.max)) == "9223372036854775807")
        #expect(text(.double(3)) == "3.0")
        #expect(text(.double(3), .integralDoublesWithoutFraction) == "3")
        #expect(text(.double(-0.0), .integralDoublesWithoutFraction) == "-0")
        #expect(text(.double(0.1)) == "0.1")
        #expect(text(.double(1e20)) == "1e+20")
        #expect(text(.double(.nan)) == "null")
        #expect(text(.array([.double(.infinity), .double(-.infinity)])) == "[null,null]")
        var writer = JSONWriter()
        writer.array { w in
            w.integer(UInt64.max)
            w.integer(Int8.min)
            w.integer(0 as UInt8)
        }
        #expect(writer.bytes == Array("[18446744073709551615,-128,0]".utf8))
    }

    @Test func streamsObjectsAndArrays() {
        var writer = JSONWriter()
        writer.object { o in
            o.field("a", "x")
            o.field("skipped", nil as String?)
            o.field("b", true)
            o.field("c", 7 as Int?)
            o.field("d", 1.5)
            o.key("e")
            o.array([1, 2]) { w, n in w.integer(n) }
            o.key("f")
            o.object { _ in }
            o.key("dynamic \"key\"")
            o.null()
        }
        #expect(String(decoding: writer.bytes, as: UTF8.self) == #"{"a":"x","b":true,"c":7,"d":1.5,"e":[1,2],"f":{},"dynamic \"key\"":null}"#)
    }

    @Test func prettyPrintsAsJSONSerializationDoes() {
        let value: JSONValue = ["b": [], "a": ["x": 1, "y": [true, .null, "s/t"]], "c": [:]]
        let expected = """
            {
              "a" : {
                "x" : 1,
                "y" : [
                  true,
                  null,
                  "s\\/t"
                ]
              },
              "b" : [

              ],
              "c" : {

              }
            }
            """
        #expect(String(decoding: value.serialized(options: .jsonSerializationPrettySorted), as: UTF8.self) == expected)
        #expect(String(decoding: JSONValue.array([]).serialized(options: .prettyPrinted), as: UTF8.self) == "[\n\n]")
    }

    @Test func sortsKeys() throws {
        let value: JSONValue = ["b": 1, "B": 2, "a10": 3, "a9": 4, "_x": 5, "a_b": 6, "a1": 7]
        func keys(_ options: JSONWriter.Options) throws -> [String] {
            guard case .object(let members) = try JSONValue.parse(value.serialized(options: options)) else { return [] }
            return members.map(\.0)
        }
        #expect(try keys([]) == ["b", "B", "a10", "a9", "_x", "a_b", "a1"])
        #expect(try keys(.sortedKeys) == ["B", "_x", "a1", "a10", "a9", "a_b", "b"])
        #expect(try keys(.collatedKeys) == ["_x", "a_b", "a1", "a9", "a10", "b", "B"])
        // A dictionary becomes an object in byte order, whatever its iteration order.
        #expect(JSONValue.object(["b": 1, "a": 2, "c": 3]) == ["a": 2, "b": 1, "c": 3])
    }

    @Test func equalValuesHashEqually() {
        let a: JSONValue = ["x": [1, 2.5, "s"], "y": .null]
        let b = try? JSONValue.parse(a.serialized())
        #expect(a == b)
        #expect(a.hashValue == b?.hashValue)
        #expect(Set([a, b!]).count == 1)
        #expect(a != ["y": .null, "x": [1, 2.5, "s"]])
    }

    @Test func convenience() {
        #expect(JSONValue.int(nil as Int?) == .null)
        #expect(JSONValue.int(5 as Int?) == .int(5))
        #expect(JSONValue.string(nil as String?) == .null)
        #expect(JSONValue.object([("a", .int(1))])["a"] == .int(1))
        #expect(JSONValue.array([])["a"] == nil)
        #expect(JSONValue.double(1).typeName == "a number")
    }
}

extension JSONValue {
    /// Equal, where an integral double may have come back as an integer.
    func isNumericallyEqual(to other: JSONValue) -> Bool {
        switch (self, other) {
        case (.int(let a), .double(let b)), (.double(let b), .int(let a)): Double(a) == b
        case (.array(let a), .array(let b)): a.count == b.count && zip(a, b).allSatisfy { $0.isNumericallyEqual(to: $1) }
        case (.object(let a), .object(let b)):
            a.count == b.count && a.allSatisfy { key, value in b.first { $0.0 == key }.map { value.isNumericallyEqual(to: $0.1) } ?? false }
        default: self == other
        }
    }
}
