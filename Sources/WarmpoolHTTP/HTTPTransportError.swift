import CCurl

/// A transfer that got no HTTP response: libcurl's code and its error-buffer text, which names
/// the cause precisely ("Failed to connect to 127.0.0.1 port 9 after 0 ms: Connection refused").
/// A response with any status, 5xx included, is not an error at this level.
public struct HTTPTransportError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The `CURLcode` (see libcurl-errors(3)); -1 when no handle could be made.
    public var curlCode: Int
    public var message: String

    public init(curlCode: Int, message: String) {
        self.curlCode = curlCode
        self.message = message
    }

    /// The whole-transfer or connect limit ran out (CURLE_OPERATION_TIMEDOUT).
    public var isTimeout: Bool { curlCode == Int(CURLE_OPERATION_TIMEDOUT.rawValue) }

    /// Nothing accepted the connection (CURLE_COULDNT_CONNECT): refused, or unreachable.
    public var isConnectFailure: Bool { curlCode == Int(CURLE_COULDNT_CONNECT.rawValue) }

    public var description: String { "curl error \(curlCode): \(message)" }
}
