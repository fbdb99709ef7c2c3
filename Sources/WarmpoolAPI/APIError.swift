import Hummingbird
import WarmpoolJSON

/// Every failure the API reports: a status, a stable machine-readable code and a sentence naming
/// the problem. The body is always `{"error": code, "message": sentence}`.
public struct APIError: Error, CustomStringConvertible, Sendable {
    public var status: HTTPResponse.Status
    public var code: String
    public var message: String

    public init(_ status: HTTPResponse.Status, _ code: String, _ message: String) {
        self.status = status
        self.code = code
        self.message = message
    }

    public var description: String { "\(status.code) \(code): \(message)" }

    public static func badRequest(_ message: String) -> APIError { APIError(.badRequest, "bad_request", message) }
    public static func notFound(_ message: String) -> APIError { APIError(.notFound, "not_found", message) }
    public static func conflict(_ message: String) -> APIError { APIError(.conflict, "conflict", message) }
    public static let unauthorized = APIError(
        .unauthorized, "unauthorized", "a valid API key is required: send `Authorization: Bearer <key>`")

    var body: JSONValue { .object([("error", .string(code)), ("message", .string(message))]) }
}
