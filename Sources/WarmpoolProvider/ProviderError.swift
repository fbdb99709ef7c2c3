/// Why a provider call failed. Each case says what the caller can do about it: a transport error
/// or a 5xx may pass on retry (the client already retried), a rejection will not.
public enum ProviderError: Error, Hashable, Sendable, CustomStringConvertible {
    /// libcurl could not complete the transfer: connection refused, timeout, DNS, TLS.
    case transport(curlCode: Int, message: String)
    /// The server answered with a non-2xx status; `message` is the body's `msg`/`error` when it
    /// was JSON, else the start of the body.
    case http(status: Int, message: String)
    /// The server answered 2xx with `{"success": false, "msg": ...}`.
    case rejected(message: String)
    /// The body was not the JSON shape the operation needs; `what` names the part that was wrong.
    case malformedResponse(what: String)
    /// The instance, volume or offer does not exist (a `null` show, or a 404).
    case notFound(what: String)

    /// curl's code for "operation timed out" (CURLE_OPERATION_TIMEDOUT).
    public static let curlTimeout = 28
    /// curl's code for "could not connect" (CURLE_COULDNT_CONNECT).
    public static let curlCouldNotConnect = 7

    public var description: String {
        switch self {
        case .transport(let code, let message): "transport error (curl \(code)): \(message)"
        case .http(let status, let message): "HTTP \(status): \(message)"
        case .rejected(let message): "rejected by the provider: \(message)"
        case .malformedResponse(let what): "malformed response: \(what)"
        case .notFound(let what): "not found: \(what)"
        }
    }

    /// Whether the same call may succeed if made again later (the client has already retried
    /// these as often as it was configured to).
    /// The detail message, without the kind.
    public var message: String {
        switch self {
        case .transport(_, let message), .http(_, let message), .rejected(let message), .notFound(let message): message
        case .malformedResponse(let what): what
        }
    }

    public var isTransient: Bool {
        switch self {
        case .transport: true
        case .http(let status, _): status == 429 || status >= 500
        case .rejected, .malformedResponse, .notFound: false
        }
    }
}
