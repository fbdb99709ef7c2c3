import Logging
import NIOCore
import ServiceLifecycle

/// Runs the agent until graceful shutdown, then says goodbye on every session.
public final class AgentService: Service {
    private let runtime: AgentRuntime

    public init(runtime: AgentRuntime) {
        self.runtime = runtime
    }

    public func run() async throws {
        runtime.start()
        try? await gracefulShutdown()
        try await runtime.shutdown().get()
    }
}
