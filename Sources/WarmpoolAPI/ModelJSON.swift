import WarmpoolJSON
import WarmpoolModel

// The model's ids in answers: numbers (or null), as the API reference shows them.
extension JSONValue {
    static func id<ID: NumericIdentifier>(_ value: ID?) -> JSONValue { value.map { .int($0.rawValue) } ?? .null }
    static func epoch(_ value: Epoch?) -> JSONValue { value.map { .int(Int64(clamping: $0.rawValue)) } ?? .null }
    static func agentID(_ value: AgentID?) -> JSONValue { value.map { .string($0.rawValue) } ?? .null }
}
