import Foundation

/// The provider sends numbers as JSON numbers or as strings ("0.45", "77"), booleans as
/// true/false or 0/1, and leaves fields out or null freely. These helpers accept every such
/// form for one key and say precisely which key was wrong when none fits.
extension KeyedDecodingContainer {
    func lenientDouble(_ key: Key) throws -> Double? {
        guard contains(key), try !decodeNil(forKey: key) else { return nil }
        if let value = try? decode(Double.self, forKey: key) { return value }
        if let text = try? decode(String.self, forKey: key) {
            if let value = Double(text.trimmingCharacters(in: .whitespaces)) { return value }
            if text.isEmpty { return nil }
        }
        throw DecodingError.dataCorruptedError(forKey: key, in: self, debugDescription: "expected a number or a numeric string")
    }

    func lenientInt(_ key: Key) throws -> Int? {
        guard let value = try lenientDouble(key) else { return nil }
        guard value.rounded() == value, let integer = Int(exactly: value) else {
            throw DecodingError.dataCorruptedError(forKey: key, in: self, debugDescription: "expected an integer, got \(value)")
        }
        return integer
    }

    func requiredInt(_ key: Key) throws -> Int {
        guard let value = try lenientInt(key) else {
            throw DecodingError.keyNotFound(key, .init(codingPath: codingPath, debugDescription: "required integer is missing"))
        }
        return value
    }

    func lenientBool(_ key: Key) throws -> Bool? {
        guard contains(key), try !decodeNil(forKey: key) else { return nil }
        if let value = try? decode(Bool.self, forKey: key) { return value }
        if let value = try? decode(Int.self, forKey: key) { return value != 0 }
        if let text = try? decode(String.self, forKey: key) {
            switch text.lowercased() {
            case "true", "1", "yes": return true
            case "false", "0", "no", "": return false
            default: break
            }
        }
        throw DecodingError.dataCorruptedError(forKey: key, in: self, debugDescription: "expected a boolean")
    }

    func lenientString(_ key: Key) throws -> String? {
        guard contains(key), try !decodeNil(forKey: key) else { return nil }
        if let value = try? decode(String.self, forKey: key) { return value }
        if let value = try? decode(Int.self, forKey: key) { return String(value) }
        if let value = try? decode(Double.self, forKey: key) { return String(value) }
        throw DecodingError.dataCorruptedError(forKey: key, in: self, debugDescription: "expected a string")
    }
}
