import Foundation
import WarmpoolJSON

extension JSONValue {
    /// Compact JSON with keys in byte order, so bodies are byte-for-byte reproducible in tests: what
    /// JSONEncoder with `[.sortedKeys, .withoutEscapingSlashes]` wrote for the client's old Codable
    /// JSON value (`WarmpoolJSONTests` keeps the two compared).
    func encoded() -> Data {
        Data(serialized(options: [.sortedKeys, .integralDoublesWithoutFraction]))
    }
}
