import ArgumentParser
import BaselineCommon
import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import GRPCProtobuf
import Hummingbird

/// The controller side of a baseline: receives heartbeats over gRPC or HTTP/JSON, feeds a silence
/// detector, answers with a lease every fifth beat (as often as ours renews), and writes the same
/// event lines as the real controller. Runs on NIO's default group (one thread per core), as the
/// controller does.
@main
struct BaselineServer: AsyncParsableCommand {
    enum Transport: String, ExpressibleByArgument { case grpc, http }

    @Option(help: "grpc or http.") var transport: Transport
    @Option(help: "Port on 127.0.0.1.") var port: Int
    @Option(help: "File to write HOST:PORT to once listening.") var readyFile: String
    @Option(help: "JSON-lines event file.") var events: String
    @Option(help: "Silence timeout, ms (the controller's at 100 ms beats).") var silenceTimeoutMs: Int64 = 350

    func run() async throws {
        let detector = SilenceDetector(silenceTimeoutMilliseconds: silenceTimeoutMs, eventsPath: events)
        let ticker = Task.detached {
            while !Task.isCancelled {
                try? await Task.sleep(for: .milliseconds(10))
                detector.tick()
            }
        }
        defer { ticker.cancel() }
        let (port, readyFile) = (port, readyFile)
        let ready: @Sendable () -> Void = {
            _ = try? "127.0.0.1:\(port)\n".write(toFile: readyFile, atomically: true, encoding: .utf8)
        }
        switch transport {
        case .grpc: try await serveGRPC(detector: detector, ready: ready)
        case .http: try await serveHTTP(detector: detector, ready: ready)
        }
    }

    func serveGRPC(detector: SilenceDetector, ready: @escaping @Sendable () -> Void) async throws {
        let transport = HTTP2ServerTransport.Posix(
            address: .ipv4(host: "127.0.0.1", port: port), transportSecurity: .plaintext)
        let server = GRPCServer(transport: transport, services: [LivenessService(detector: detector)])
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await server.serve() }
            _ = try await transport.listeningAddress
            ready()
            try await group.next()
        }
    }

    func serveHTTP(detector: SilenceDetector, ready: @escaping @Sendable () -> Void) async throws {
        let router = Router()
        router.post("/agents/:id/heartbeat") { request, context -> Response in
            let id = try context.parameters.require("id")
            let beat = try await request.decode(as: BeatJSON.self, context: context)
            guard detector.heard(id, sequence: beat.sequence) else { return Response(status: .noContent) }
            let lease = LeaseJSON(acknowledged_sequence: beat.sequence, lease_ms: 2_000, epoch: 1)
            return try context.responseEncoder.encode(lease, from: request, context: context)
        }
        let app = Application(
            router: router, configuration: .init(address: .hostname("127.0.0.1", port: port)),
            onServerRunning: { _ in ready() })
        try await app.runService()
    }
}

/// `warmpool.baseline.Liveness/Beats`: a bidirectional stream per agent, the agent id in the
/// call's metadata (as ours carries it once, in Hello).
struct LivenessService: RegistrableRPCService {
    static let beats = MethodDescriptor(fullyQualifiedService: "warmpool.baseline.Liveness", method: "Beats")
    let detector: SilenceDetector

    func registerMethods<Transport: ServerTransport>(with router: inout RPCRouter<Transport>) {
        let detector = self.detector
        router.registerHandler(
            forMethod: Self.beats, deserializer: ProtobufDeserializer<Warmpool_Baseline_Beat>(),
            serializer: ProtobufSerializer<Warmpool_Baseline_Lease>()
        ) { request, _ in
            let agentID = request.metadata[stringValues: "agent-id"].first(where: { _ in true }) ?? "unknown"
            return StreamingServerResponse { writer in
                for try await beat in request.messages {
                    guard detector.heard(agentID, sequence: beat.sequence) else { continue }
                    var lease = Warmpool_Baseline_Lease()
                    lease.acknowledgedSequence = beat.sequence
                    lease.leaseMs = 2_000
                    lease.epoch = 1
                    try await writer.write(lease)
                }
                return [:]
            }
        }
    }
}
