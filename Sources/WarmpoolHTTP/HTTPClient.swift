import Foundation
import NIOPosix
import WarmpoolModel

/// A small async HTTP/1.1 client over libcurl. Each transfer blocks a `NIOThreadPool` thread
/// (never an event loop); finished handles are kept, so consecutive calls to one host reuse a
/// kept-alive connection. No retries and no redirects: callers own their retry rules.
public final class HTTPClient: Sendable {
    private let threadPool: NIOThreadPool
    private let handles: CurlHandlePool

    /// `maximumIdleHandles` bounds the kept-alive connections (one per idle handle).
    public init(threadPool: NIOThreadPool = .singleton, maximumIdleHandles: Int = 4) {
        self.threadPool = threadPool
        handles = CurlHandlePool(maximumIdle: maximumIdleHandles)
    }

    /// Sends one request and returns whatever response came back, whatever its status.
    ///
    /// `body` is sent for every method but GET. `timeout` bounds the whole transfer,
    /// `connectTimeout` (default: `timeout`) the TCP and TLS setup. Header names and values must
    /// not contain CR or LF.
    ///
    /// - Throws: `HTTPTransportError` when no response arrived (refused, timed out, reset, DNS),
    ///   or `NIOThreadPoolError.ThreadPoolInactive` when the pool has been shut down.
    public func send(method: String, url: String, headers: [(name: String, value: String)] = [], body: Data? = nil,
                     timeout: Duration, connectTimeout: Duration? = nil) async throws -> HTTPResponse
    {
        let lines = headers.map { "\($0.name): \($0.value)" }
        // At least 1: curl reads 0 as "no limit".
        let timeoutMilliseconds = max(1, Int(timeout.milliseconds))
        let connectMilliseconds = max(1, Int((connectTimeout ?? timeout).milliseconds))
        return try await threadPool.runIfActive { [handles] in
            try handles.withHandle { (handle) throws(HTTPTransportError) in
                try handle.perform(method: method, url: url, headers: lines, body: body,
                                   timeoutMilliseconds: timeoutMilliseconds, connectTimeoutMilliseconds: connectMilliseconds)
            }
        }
    }
}
