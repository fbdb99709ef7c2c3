import Foundation

/// An HTTP request as the emulator's logic sees it: no server types, so the logic is testable
/// without a socket.
public struct SimRequest: Sendable {
    public var method: String
    /// Path without the query, e.g. `/api/v0/instances/1001/`.
    public var path: String
    public var query: [String: String]
    public var authorization: String?
    public var body: Data

    public init(method: String, path: String, query: [String: String] = [:], authorization: String? = nil, body: Data = Data()) {
        self.method = method
        self.path = path
        self.query = query
        self.authorization = authorization
        self.body = body
    }

    /// Path components without empty ones: trailing slashes do not matter.
    var components: [String] { path.split(separator: "/").map(String.init) }

    /// Parses `a=1&b=x+y` as the CLI encodes it (`+` is a space).
    public static func parseQuery(_ query: String?) -> [String: String] {
        var result: [String: String] = [:]
        for pair in (query ?? "").split(separator: "&") {
            let parts = pair.split(separator: "=", maxSplits: 1).map {
                String($0).replacingOccurrences(of: "+", with: " ").removingPercentEncoding ?? String($0)
            }
            if let name = parts.first { result[name] = parts.count > 1 ? parts[1] : "" }
        }
        return result
    }
}

/// What the logic answers. Every body is JSON, served with exactly `Content-Type: application/json`
/// (the CLI refuses `application/json; charset=utf-8`).
public struct SimResponse: Sendable {
    public var status: Int
    public var body: JSON
    /// Sent as `Retry-After` (seconds) with a 429.
    public var retryAfterSeconds: Int?
    /// A plain-text body instead of `body` (Vast.ai's 429s mostly come so).
    public var text: String?

    public init(status: Int = 200, body: JSON, retryAfterSeconds: Int? = nil) {
        self.status = status
        self.body = body
        self.retryAfterSeconds = retryAfterSeconds
    }

    static func ok(_ body: JSON) -> SimResponse { SimResponse(body: body) }

    static func plainText(_ status: Int, _ text: String) -> SimResponse {
        var response = SimResponse(status: status, body: nil)
        response.text = text
        return response
    }

    /// The provider's error shape: `{"success": false, "error": kind, "msg": text}`.
    static func error(_ status: Int, _ kind: String, _ message: String) -> SimResponse {
        SimResponse(status: status, body: ["success": false, "error": .string(kind), "msg": .string(message)])
    }

    /// A refusal the CLI prints: 200 with `success: false`.
    static func refused(_ message: String) -> SimResponse {
        SimResponse(body: ["success": false, "msg": .string(message)])
    }
}
