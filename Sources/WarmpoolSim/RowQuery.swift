/// The `{field: {op: value}}` filters, `order` and `limit` of a search (reference §3), applied
/// to JSON rows. Values arrive as JSON numbers or as strings ("2", "0.98"), so comparisons are
/// numeric whenever both sides read as numbers. A filter on a field the rows do not carry is
/// ignored, as the CLI sends fields (`cpu_ram`, `duration`) the emulator does not model.
struct RowQuery {
    typealias Row = [String: JSON]

    /// Keys of a search body that are not filters.
    static let reservedKeys: Set<String> = ["order", "type", "limit", "allocated_storage", "select_cols", "q"]
    static let operators: Set<String> = ["eq", "neq", "gt", "gte", "lt", "lte", "in", "notin"]

    var filters: [(field: String, op: String, value: JSON)] = []
    var order: [(field: String, ascending: Bool)] = []
    var limit: Int?

    struct QueryError: Error, CustomStringConvertible {
        var description: String
    }

    init(body: [String: JSON]) throws {
        for (field, spec) in body where !Self.reservedKeys.contains(field) {
            guard let operations = spec.objectValue else {
                throw QueryError(description: "filter \(field) must be an object like {\"eq\": value}")
            }
            for (op, value) in operations {
                guard Self.operators.contains(op) else { throw QueryError(description: "filter \(field): unknown operator \(op)") }
                filters.append((field, op, value))
            }
        }
        for pair in body["order"]?.arrayValue ?? [] {
            guard let items = pair.arrayValue, let field = items.first?.stringValue else { continue }
            order.append((field, items.count < 2 || items[1].stringValue != "desc"))
        }
        limit = body["limit"]?.intValue
    }

    func apply(_ rows: [Row]) -> [Row] {
        var result = rows.filter { row in filters.allSatisfy { Self.matches(row[$0.field], $0.op, $0.value) } }
        if !order.isEmpty {
            result.sort { left, right in
                for (field, ascending) in order {
                    let comparison = Self.compare(left[field], right[field])
                    if comparison != 0 { return ascending ? comparison < 0 : comparison > 0 }
                }
                return false
            }
        }
        if let limit, limit >= 0 { result = Array(result.prefix(limit)) }
        return result
    }

    static func matches(_ actual: JSON?, _ op: String, _ value: JSON) -> Bool {
        guard let actual else { return true }
        switch op {
        case "eq": return equal(actual, value)
        case "neq": return !equal(actual, value)
        case "gt": return compare(actual, value) > 0
        case "gte": return compare(actual, value) >= 0
        case "lt": return compare(actual, value) < 0
        case "lte": return compare(actual, value) <= 0
        case "in": return value.arrayValue?.contains { equal(actual, $0) } ?? false
        case "notin": return !(value.arrayValue?.contains { equal(actual, $0) } ?? false)
        default: return false
        }
    }

    static func equal(_ left: JSON, _ right: JSON) -> Bool {
        if let l = left.boolValue { return l == (right.boolValue ?? right.stringValue.map { $0.lowercased() == "true" }) }
        if let l = left.numberValue, let r = right.numberValue { return l == r }
        if case .null = right { return left == .null }
        return text(left).lowercased() == text(right).lowercased()
    }

    /// -1, 0, 1. Numbers compare as numbers, anything else as text; a missing value sorts first.
    static func compare(_ left: JSON?, _ right: JSON?) -> Int {
        if let l = left?.numberValue, let r = right?.numberValue { return l < r ? -1 : (l > r ? 1 : 0) }
        guard let left else { return right == nil ? 0 : -1 }
        guard let right else { return 1 }
        let l = text(left), r = text(right)
        return l < r ? -1 : (l > r ? 1 : 0)
    }

    static func text(_ value: JSON) -> String {
        switch value {
        case .string(let s): s
        case .bool(let b): String(b)
        case .number(let n): String(n)
        case .null: "null"
        default: String(decoding: value.encoded(), as: UTF8.self)
        }
    }
}
