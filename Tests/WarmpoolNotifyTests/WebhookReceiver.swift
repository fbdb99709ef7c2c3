import Foundation
import Hummingbird
import Logging
import NIOCore

#if canImport(Glibc)
import Glibc
#endif

/// One webhook request as the receiver saw it.
struct ReceivedWebhook: Sendable {
    var path: String
    var contentType: String?
    var event: String?
    var delivery: String?
    var timestamp: String?
    var signature: String?
    var body: Data
    var at: ContinuousClock.Instant
}

/// What the receiver answers to its request number `attempt` (1-based).
struct ReceiverAnswer: Sendable {
    var status = 200
    var body = ""
    /// Wait this long before answering (to trip the notifier's timeout).
    var delay: Duration = .zero
}

/// A real HTTP server on 127.0.0.1 that records every webhook and answers as the test scripts.
final class WebhookReceiver: @unchecked Sendable {
    private let lock = NSLock()
    private var _received: [ReceivedWebhook] = []
    var received: [ReceivedWebhook] { lock.withLock { _received } }

    /// Runs a receiver on `port` (0: any free one) while `body` runs, then stops it.
    static func with<T: Sendable>(port: Int = 0, _ answer: @escaping @Sendable (ReceivedWebhook, Int) -> ReceiverAnswer,
                                  _ body: @Sendable (_ url: String, WebhookReceiver) async throws -> T) async throws -> T
    {
        let receiver = WebhookReceiver()
        let responder = CallbackResponder<BasicRequestContext> { request, _ in
            var bytes = try await request.body.collect(upTo: 1 << 20)
            // Header names are case-insensitive on the wire: match them lowercased.
            func header(_ name: String) -> String? {
                request.headers.first { $0.name.canonicalName == name.lowercased() }?.value
            }
            let webhook = ReceivedWebhook(
                path: request.uri.path, contentType: header("Content-Type"), event: header("X-Warmpool-Event"),
                delivery: header("X-Warmpool-Delivery"), timestamp: header("X-Warmpool-Timestamp"),
                signature: header("X-Warmpool-Signature"),
                body: Data(bytes.readBytes(length: bytes.readableBytes) ?? []), at: .now)
            let attempt = receiver.lock.withLock {
                receiver._received.append(webhook)
                return receiver._received.count
            }
            let scripted = answer(webhook, attempt)
            if scripted.delay > .zero { try await Task.sleep(for: scripted.delay) }
            return Response(status: .init(code: scripted.status), body: .init(byteBuffer: ByteBuffer(string: scripted.body)))
        }
        let (ports, portContinuation) = AsyncStream.makeStream(of: Int.self)
        var logger = Logger(label: "webhook-receiver")
        // Stopping the server at the end of each test logs errors that say nothing.
        logger.logLevel = .critical
        let app = Application(responder: responder, configuration: .init(address: .hostname("127.0.0.1", port: port)),
                              onServerRunning: { portContinuation.yield($0.localAddress?.port ?? 0) }, logger: logger)
        return try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await app.runService(gracefulShutdownSignals: []) }
            var iterator = ports.makeAsyncIterator()
            guard let bound = await iterator.next() else { throw CancellationError() }
            defer { group.cancelAll() }
            return try await body("http://127.0.0.1:\(bound)/hooks/warmpool", receiver)
        }
    }
}

/// A loopback port nothing listens on (bound, read, released): connecting to it is refused
/// until a receiver is started on it.
func unusedLoopbackPort() throws -> Int {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { throw POSIXError(.EMFILE) }
    defer { close(fd) }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    let ok = withUnsafeMutablePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
            bind(fd, $0, length) == 0 && getsockname(fd, $0, &length) == 0
        }
    }
    guard ok else { throw POSIXError(.EADDRNOTAVAIL) }
    return Int(UInt16(bigEndian: address.sin_port))
}
