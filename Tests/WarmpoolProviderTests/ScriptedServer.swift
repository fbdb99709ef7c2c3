import Foundation
import Hummingbird
import Logging
import NIOCore

/// One request as the scripted server saw it.
struct RecordedRequest: Sendable {
    var method: String
    var path: String
    var query: String?
    var authorization: String?
    var contentType: String?
    var body: String
}

/// What the scripted server answers to request number `attempt` (1-based).
struct ScriptedAnswer: Sendable {
    var status: Int = 200
    var body: String
    var retryAfter: String?
    var contentType = "application/json"
    /// Wait this long before answering (to trip the client's timeout).
    var delay: Duration = .zero
}

/// A real HTTP server on 127.0.0.1 (ephemeral port) whose answers a test scripts; it records
/// every request, so tests assert what went over the wire and how many attempts were made.
final class ScriptedServer: @unchecked Sendable {
    private let lock = NSLock()
    private var _requests: [RecordedRequest] = []
    var requests: [RecordedRequest] { lock.withLock { _requests } }

    /// Runs `body` with the server's base URL, then stops the server.
    static func with<T: Sendable>(_ answer: @escaping @Sendable (RecordedRequest, Int) -> ScriptedAnswer,
                                  _ body: @Sendable (String, ScriptedServer) async throws -> T) async throws -> T
    {
        let server = ScriptedServer()
        let responder = CallbackResponder<BasicRequestContext> { request, _ in
            var bytes = try await request.body.collect(upTo: 1 << 20)
            let recorded = RecordedRequest(
                method: request.method.rawValue, path: request.uri.path, query: request.uri.query,
                authorization: request.headers[.authorization], contentType: request.headers[.contentType],
                body: bytes.readString(length: bytes.readableBytes) ?? "")
            let attempt = server.lock.withLock {
                server._requests.append(recorded)
                return server._requests.count
            }
            let scripted = answer(recorded, attempt)
            if scripted.delay > .zero { try await Task.sleep(for: scripted.delay) }
            var headers = HTTPFields()
            headers[.contentType] = scripted.contentType
            if let retryAfter = scripted.retryAfter { headers[.retryAfter] = retryAfter }
            return Response(status: .init(code: scripted.status), headers: headers,
                            body: .init(byteBuffer: ByteBuffer(string: scripted.body)))
        }
        let (ports, portContinuation) = AsyncStream.makeStream(of: Int.self)
        var logger = Logger(label: "scripted-server")
        // Cancelling the server at the end of each test logs errors that say nothing.
        logger.logLevel = .critical
        let app = Application(responder: responder, configuration: .init(address: .hostname("127.0.0.1", port: 0)),
                              onServerRunning: { portContinuation.yield($0.localAddress?.port ?? 0) }, logger: logger)
        return try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await app.runService(gracefulShutdownSignals: []) }
            var iterator = ports.makeAsyncIterator()
            guard let port = await iterator.next() else { throw CancellationError() }
            defer { group.cancelAll() }
            return try await body("http://127.0.0.1:\(port)", server)
        }
    }
}
