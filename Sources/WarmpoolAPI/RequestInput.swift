import Hummingbird
import WarmpoolJSON
import WarmpoolModel

/// Reads a request's JSON body and its parameters, turning each kind of bad input into a 4xx that
/// names the field and the problem.
struct RequestInput {
    static let maximumBodyBytes = 64 * 1024

    /// The body as a JSON object. An empty body reads as `{}` (clients post to action routes bare).
    static func jsonObject(_ request: Request) async throws -> JSONObjectReader {
        let bytes = try await body(request)
        if bytes.isEmpty { return JSONObjectReader(members: []) }
        return JSONObjectReader(members: try jsonObject(bytes).objectValue ?? [])
    }

    /// The raw body, at most `maximumBodyBytes`.
    static func body(_ request: Request) async throws -> [UInt8] {
        var request = request
        do {
            return Array(try await request.collectBody(upTo: maximumBodyBytes).readableBytesView)
        } catch {
            throw APIError(.contentTooLarge, "body_too_large", "the request body exceeds \(maximumBodyBytes) bytes")
        }
    }

    /// `bytes` parsed, and a JSON object.
    static func jsonObject(_ bytes: [UInt8]) throws -> JSONValue {
        let value: JSONValue
        do {
            value = try JSONValue.parse(bytes)
        } catch {
            throw APIError(.badRequest, "malformed_json", "the body is not valid JSON: \(error)")
        }
        guard case .object = value else { throw APIError.badRequest("the body must be a JSON object, found \(value.typeName)") }
        return value
    }

    /// The path's `machine_id`: a pool's id.
    static func poolID(_ context: some RequestContext) throws -> PoolID {
        PoolID(try integerParameter("machine_id", context))
    }

    static func integerParameter(_ name: String, _ context: some RequestContext) throws -> Int64 {
        let text = context.parameters.get(name) ?? ""
        guard let value = Int64(text), value >= 0 else {
            throw APIError.badRequest("\(name) must be a non-negative integer, got \"\(text)\"")
        }
        return value
    }

    /// A boolean query parameter: `true`/`1` or `false`/`0`, in any case; `fallback` when absent.
    static func flag(_ request: Request, _ name: String, default fallback: Bool = false) throws -> Bool {
        guard let text = request.uri.queryParameters.get(name) else { return fallback }
        switch text.lowercased() {
        case "true", "1": return true
        case "false", "0": return false
        default: throw APIError.badRequest("\(name) must be true or false, got \"\(text)\"")
        }
    }

    static func limit(_ request: Request, default fallback: Int = 50, maximum: Int = 1000) throws -> Int {
        guard let text = request.uri.queryParameters.get("limit") else { return fallback }
        guard let value = Int(text), (1...maximum).contains(value) else {
            throw APIError.badRequest("limit must be an integer from 1 to \(maximum), got \"\(text)\"")
        }
        return value
    }
}

/// Typed access to the members of a JSON object body.
struct JSONObjectReader {
    let members: [(String, JSONValue)]

    private func member(_ key: String) -> JSONValue? {
        guard let value = members.first(where: { $0.0 == key })?.1, value != .null else { return nil }
        return value
    }

    func int(_ key: String) throws -> Int64? {
        guard let value = member(key) else { return nil }
        guard case .int(let integer) = value else { throw APIError.badRequest("\(key) must be an integer, found \(value.typeName)") }
        return integer
    }

    func requiredInt(_ key: String) throws -> Int64 {
        guard let value = try int(key) else { throw APIError.badRequest("\(key) is required") }
        return value
    }

    func positiveInt(_ key: String, maximum: Int64) throws -> Int64? {
        guard let value = try int(key) else { return nil }
        guard (1...maximum).contains(value) else { throw APIError.badRequest("\(key) must be from 1 to \(maximum), got \(value)") }
        return value
    }

    /// A finite number greater than zero and at most `maximum`.
    func positiveNumber(_ key: String, maximum: Double) throws -> Double? {
        guard let value = member(key) else { return nil }
        guard let number = value.doubleValue, number.isFinite, number > 0, number <= maximum else {
            throw APIError.badRequest("\(key) must be a number above 0 and at most \(maximum)")
        }
        return number
    }

    func string(_ key: String, maximumLength: Int = 256) throws -> String? {
        guard let value = member(key) else { return nil }
        guard case .string(let text) = value else { throw APIError.badRequest("\(key) must be a string, found \(value.typeName)") }
        guard text.utf8.count <= maximumLength else { throw APIError.badRequest("\(key) is longer than \(maximumLength) bytes") }
        return text
    }

    func stringArray(_ key: String, maximumCount: Int = 16) throws -> [String]? {
        guard let value = member(key) else { return nil }
        guard case .array(let values) = value, values.count <= maximumCount else {
            throw APIError.badRequest("\(key) must be an array of at most \(maximumCount) strings")
        }
        return try values.map { item in
            guard case .string(let text) = item, !text.isEmpty, text.utf8.count <= 64 else {
                throw APIError.badRequest("\(key) must hold non-empty strings of at most 64 bytes, found \(item.typeName)")
            }
            return text
        }
    }

    func oneOf<T: RawRepresentable>(_ key: String, _ type: T.Type) throws -> T? where T.RawValue == String, T: CaseIterable {
        guard let text = try string(key) else { return nil }
        guard let value = T(rawValue: text) else {
            let allowed = T.allCases.map(\.rawValue).joined(separator: ", ")
            throw APIError.badRequest("\(key) must be one of \(allowed), got \"\(text)\"")
        }
        return value
    }
}
