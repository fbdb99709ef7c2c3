import Foundation
import Hummingbird
import Logging
import NIOCore
import ServiceLifecycle

/// The HTTP side, kept thin: bytes in, `Simulator.handle`, bytes out.
public enum SimServer {
    /// Largest request body read (a create request is ~1 KiB).
    static let maximumBody = 1 << 20

    /// An Application serving `simulator` on `host:port` (port 0 picks one; `onListening` gets
    /// the bound port).
    public static func application(simulator: Simulator, host: String = "127.0.0.1", port: Int, logger: Logger,
                                   onListening: @escaping @Sendable (Int) async -> Void = { _ in })
        -> some ApplicationProtocol
    {
        let responder = CallbackResponder<BasicRequestContext> { request, context in
            var body = try await request.body.collect(upTo: maximumBody)
            let simRequest = SimRequest(
                method: request.method.rawValue, path: request.uri.path, query: SimRequest.parseQuery(request.uri.query),
                authorization: request.headers[.authorization], body: Data(body.readBytes(length: body.readableBytes) ?? []))
            let answer = await simulator.handle(simRequest)
            var headers = HTTPFields()
            // Exactly this value: the CLI refuses "application/json; charset=utf-8".
            headers[.contentType] = answer.text == nil ? "application/json" : "text/plain"
            if let seconds = answer.retryAfterSeconds { headers[.retryAfter] = String(seconds) }
            let bytes = answer.text.map { Data($0.utf8) } ?? answer.body.encoded()
            return Response(status: .init(code: answer.status), headers: headers, body: .init(byteBuffer: ByteBuffer(data: bytes)))
        }
        return Application(
            responder: responder, configuration: .init(address: .hostname(host, port: port), serverName: nil),
            onServerRunning: { channel in await onListening(channel.localAddress?.port ?? 0) }, logger: logger)
    }
}

/// Runs until graceful shutdown (SIGTERM/SIGINT), then stops every instance. Listed before the
/// HTTP server in a ServiceGroup, it is shut down after it: no request arrives mid-cleanup.
public struct SimulatorService: Service {
    let simulator: Simulator

    public init(simulator: Simulator) { self.simulator = simulator }

    public func run() async throws {
        try? await gracefulShutdown()
        await simulator.shutdown()
    }
}
