import ArgumentParser
import BaselineCommon
import GRPCCore
import GRPCNIOTransportHTTP2
import GRPCProtobuf
import NIOCore
import NIOHTTP1
import NIOPosix

/// Simulated agents for the baselines: one connection per agent, one beat per interval, the same
/// fields and values for gRPC and HTTP/JSON. Runs until killed.
@main
struct BaselineLoadGenerator: AsyncParsableCommand {
    enum Transport: String, ExpressibleByArgument { case grpc, http }

    @Option(help: "grpc or http.") var transport: Transport
    @Option(help: "Server HOST:PORT.") var server: String
    @Option(help: "How many agents.") var count: Int = 1_000
    @Option(help: "Agent id prefix; ids are PREFIX0, PREFIX1, ...") var prefix: String = "load-"
    @Option(help: "One agent with exactly this id (the bench's frozen agent); overrides --count.") var agentId: String?
    @Option(help: "Heartbeat interval, ms.") var intervalMs: Int64 = 100
    @Option(help: "Event-loop threads.") var threads: Int = 1
    @Option(help: "New agents per second.") var rampPerSecond: Int = 2_000

    func run() async throws {
        let parts = server.split(separator: ":")
        guard parts.count == 2, let port = Int(parts[1]) else { throw ValidationError("bad --server") }
        let host = String(parts[0])
        let group = MultiThreadedEventLoopGroup(numberOfThreads: threads)
        let batch = max(1, rampPerSecond / 10)
        let ids = agentId.map { [$0] } ?? (0..<count).map { "\(prefix)\($0)" }
        switch transport {
        case .http:
            for (index, id) in ids.enumerated() {
                startHTTPAgent(id: id, host: host, port: port, loop: group.next())
                if (index + 1) % batch == 0 { try await Task.sleep(for: .milliseconds(100)) }
            }
            try await Task.sleep(for: .seconds(365 * 86_400))
        case .grpc:
            try await withThrowingTaskGroup(of: Void.self) { tasks in
                for (index, id) in ids.enumerated() {
                    let client = GRPCClient(
                        transport: try HTTP2ClientTransport.Posix(
                            target: .ipv4(address: host, port: port), transportSecurity: .plaintext,
                            eventLoopGroup: group))
                    let interval = intervalMs
                    tasks.addTask { try await client.runConnections() }
                    tasks.addTask { try await Self.beatOverGRPC(client: client, id: id, intervalMs: interval) }
                    if (index + 1) % batch == 0 { try await Task.sleep(for: .milliseconds(100)) }
                }
                try await tasks.next()
            }
        }
    }

    static func beatOverGRPC(client: GRPCClient<HTTP2ClientTransport.Posix>, id: String, intervalMs: Int64) async throws {
        let request = StreamingClientRequest(of: Warmpool_Baseline_Beat.self, metadata: ["agent-id": .string(id)]) { writer in
            let clock = ContinuousClock()
            let start = clock.now
            var sequence: UInt32 = 0
            while true {
                sequence += 1
                try await writer.write(SampleStatus.beat(sequence: sequence))
                try await Task.sleep(until: start + .milliseconds(intervalMs * Int64(sequence)), clock: clock)
            }
        }
        try await client.bidirectionalStreaming(
            request: request, descriptor: LivenessDescriptor.beats,
            serializer: ProtobufSerializer<Warmpool_Baseline_Beat>(),
            deserializer: ProtobufDeserializer<Warmpool_Baseline_Lease>(), options: .defaults
        ) { response in
            for try await _ in response.messages {}
        }
    }

    func startHTTPAgent(id: String, host: String, port: Int, loop: EventLoop) {
        let interval = intervalMs
        let path = "/agents/\(id)/heartbeat"
        ClientBootstrap(group: loop)
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHTTPClientHandlers()
                    try channel.pipeline.syncOperations.addHandler(DiscardResponses())
                }
            }
            .connect(host: host, port: port)
            .whenSuccess { channel in
                var sequence: UInt32 = 0
                channel.eventLoop.scheduleRepeatedTask(initialDelay: .zero, delay: .milliseconds(interval)) { _ in
                    sequence += 1
                    let body = HTTPJSONBody.encode(BeatJSON(SampleStatus.beat(sequence: sequence)))
                    var head = HTTPRequestHead(version: .http1_1, method: .POST, uri: path)
                    head.headers.add(name: "Host", value: "\(host):\(port)")
                    head.headers.add(name: "Content-Type", value: "application/json")
                    head.headers.add(name: "Content-Length", value: "\(body.count)")
                    channel.write(HTTPClientRequestPart.head(head), promise: nil)
                    channel.write(HTTPClientRequestPart.body(.byteBuffer(ByteBuffer(bytes: body))), promise: nil)
                    channel.writeAndFlush(HTTPClientRequestPart.end(nil), promise: nil)
                }
            }
    }
}

enum LivenessDescriptor {
    static let beats = MethodDescriptor(fullyQualifiedService: "warmpool.baseline.Liveness", method: "Beats")
}

/// The same bytes JSONEncoder writes for `BeatJSON` (keys in declaration order, no spaces),
/// without paying Foundation's encoder on the load generator, which shares the cores.
enum HTTPJSONBody {
    static func encode(_ beat: BeatJSON) -> [UInt8] {
        Array(("{\"sequence\":\(beat.sequence),\"sent_at_ns\":\(beat.sent_at_ns),\"flags\":\(beat.flags),"
            + "\"gpu_count\":\(beat.gpu_count),\"gpu_healthy\":\(beat.gpu_healthy),"
            + "\"gpu_max_temp_c\":\(beat.gpu_max_temp_c),\"gpu_max_util_pct\":\(beat.gpu_max_util_pct),"
            + "\"volume_free_mib\":\(beat.volume_free_mib),\"workload\":\(beat.workload)}").utf8)
    }
}

final class DiscardResponses: ChannelInboundHandler {
    typealias InboundIn = HTTPClientResponsePart
    func channelRead(context: ChannelHandlerContext, data: NIOAny) {}
}
