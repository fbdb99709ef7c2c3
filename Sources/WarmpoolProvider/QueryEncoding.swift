import WarmpoolJSON

/// Query strings as the `vastai` CLI builds them (reference §1): a string value is
/// `quote_plus`-encoded as is, any other value as its JSON text; spaces become `+`.
enum QueryEncoding {
    static func encode(_ items: [(name: String, value: JSONValue)]) -> String {
        items.map { name, value in
            let text: String
            if case .string(let string) = value {
                text = string
            } else {
                text = String(decoding: value.encoded(), as: UTF8.self)
            }
            return quotePlus(name) + "=" + quotePlus(text)
        }.joined(separator: "&")
    }

    /// Python's `urllib.parse.quote_plus`: letters, digits and `_.-~` pass; space is `+`;
    /// every other byte is `%XX`.
    static func quotePlus(_ text: String) -> String {
        var result = ""
        for byte in text.utf8 {
            switch byte {
            case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"),
                UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "_"), UInt8(ascii: "."), UInt8(ascii: "-"),
                UInt8(ascii: "~"):
                result.unicodeScalars.append(Unicode.Scalar(byte))
            case UInt8(ascii: " "):
                result += "+"
            default:
                let hex = Array("0123456789ABCDEF".utf8)
                result += "%" + String(decoding: [hex[Int(byte >> 4)], hex[Int(byte & 0x0F)]], as: UTF8.self)
            }
        }
        return result
    }
}
