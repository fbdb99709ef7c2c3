import ArgumentParser
import Crypto
import Foundation
import Logging
import NIOPosix
import UnixSignals
import WarmpoolAgent
import WarmpoolWire

/// Many real agents in one process: real handshakes, real frames, real sockets. The soak and
/// capacity benchmarks use it; secrets derive from a seed so `keys` and `run` agree without
/// sharing a file.
@main
struct LoadGenerator: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "warmpool-loadgen",
        abstract: "Simulated agents for benchmarks: writes their keys, then runs them.",
        subcommands: [Keys.self, Run.self])

    struct Options: ParsableArguments {
        @Option(help: "How many agents.")
        var count: Int = 1_000

        @Option(help: "Agent id prefix; ids are PREFIX0, PREFIX1, ...")
        var prefix: String = "load-"

        @Option(help: "Seed the agents' secrets derive from (benchmarks only: never for real agents).")
        var seed: String = "warmpool-loadgen"

        func secret(for agentID: String) -> AgentSecret {
            let mac = HMAC<SHA256>.authenticationCode(for: Array(agentID.utf8), using: SymmetricKey(data: Array(seed.utf8)))
            return try! AgentSecret(bytes: Array(mac))
        }

        func agentIDs() -> [String] { (0..<count).map { "\(prefix)\($0)" } }
    }

    struct Keys: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Append the agents' keys to a controller keys file.")
        @OptionGroup var options: Options
        @Option(help: "Keys file to append to.")
        var keysFile: String

        func run() throws {
            var lines = ""
            for id in options.agentIDs() { lines += "\(id) \(options.secret(for: id).hex)\n" }
            let handle: FileHandle
            if FileManager.default.fileExists(atPath: keysFile) {
                handle = try FileHandle(forWritingTo: URL(fileURLWithPath: keysFile))
                handle.seekToEndOfFile()
            } else {
                _ = FileManager.default.createFile(atPath: keysFile, contents: nil, attributes: [.posixPermissions: 0o600])
                handle = try FileHandle(forWritingTo: URL(fileURLWithPath: keysFile))
            }
            handle.write(Data(lines.utf8))
            try handle.close()
        }
    }

    struct Run: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Run the agents until SIGTERM/SIGINT or --seconds.")
        @OptionGroup var options: Options

        @Option(name: .customLong("controller"), help: "Controller HOST:PORT.")
        var controller: String = "127.0.0.1:7070"

        @Option(help: "Sessions per agent.")
        var connections: Int = 2

        @Option(help: "Event-loop threads.")
        var threads: Int = 1

        @Option(help: "Stop after this many seconds (0: run until signalled).")
        var seconds: Int = 0

        @Option(help: "New agents started per second, so the controller is not hit by a thundering herd.")
        var rampPerSecond: Int = 2_000

        func run() async throws {
            LoggingSystem.bootstrap { label in
                var handler = StreamLogHandler.standardError(label: label)
                handler.logLevel = .warning
                return handler
            }
            guard let address = ControllerAddress(controller) else { throw ValidationError("bad --controller") }
            let group = MultiThreadedEventLoopGroup(numberOfThreads: threads)
            let logger = Logger(label: "warmpool.loadgen")
            var runtimes: [AgentRuntime] = []
            let batch = max(1, rampPerSecond / 10)
            for (index, id) in options.agentIDs().enumerated() {
                var configuration = AgentConfiguration(
                    controllers: [address], agentID: id, instanceID: UInt64(index + 1), machineID: UInt64(index / 2 + 1),
                    role: index % 2 == 0 ? .primary : .standby, secret: options.secret(for: id),
                    connections: connections, nvmlLibrary: nil)
                configuration.probesEnabled = false
                let runtime = AgentRuntime(configuration: configuration, loop: group.next(), logger: logger)
                runtime.start()
                runtimes.append(runtime)
                if (index + 1) % batch == 0 { try await Task.sleep(for: .milliseconds(100)) }
            }
            FileHandle.standardError.write(Data("loadgen: \(runtimes.count) agents started\n".utf8))
            if seconds > 0 {
                try? await Task.sleep(for: .seconds(seconds))
            } else {
                for await _ in await UnixSignalsSequence(trapping: .sigterm, .sigint) { break }
            }
            for runtime in runtimes { try? await runtime.shutdown().get() }
            try await group.shutdownGracefully()
        }
    }
}
