import ArgumentParser
import Crypto
import Foundation
import Logging
import NIOCore
import NIOPosix
import UnixSignals
import WarmpoolAgent
import WarmpoolModel
import WarmpoolWire

/// Many real agents in one process: real handshakes, real frames, real sockets. The soak and
/// capacity benchmarks use it; secrets derive from a seed so `keys` and `run` agree without
/// sharing a file.
@main
struct LoadGenerator: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "warmpool-loadgen",
        abstract: "Simulated agents for benchmarks: writes their keys, then runs them.",
        version: WarmpoolVersion.current,
        subcommands: [Keys.self, Run.self, Beats.self, Floor.self, Handshakes.self, TelemetryFlood.self])

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

    /// The controller every subcommand connects to.
    struct Target: ParsableArguments {
        @Option(name: .customLong("controller"), help: "Controller HOST:PORT.")
        var controller: String = "127.0.0.1:7070"

        func address() throws -> ControllerAddress {
            guard let address = ControllerAddress(controller) else { throw ValidationError("bad --controller") }
            return address
        }
    }

    /// Where the agents go, how fast they arrive and beat, and for how long.
    struct Pace: ParsableArguments {
        @OptionGroup var target: Target

        @Option(help: "Stop after this many seconds (0: run until signalled).")
        var seconds: Int = 0

        @Option(help: "New agents started per second, so the controller is not hit by a thundering herd.")
        var rampPerSecond: Int = 2_000

        @Option(help: "Heartbeat interval, ms: the controller's (--heartbeat-interval-ms) for a faithful load.")
        var intervalMs: Int64 = 100

        func address() throws -> ControllerAddress { try target.address() }

        /// Until --seconds have passed, or SIGTERM/SIGINT without them.
        func waitForTheEnd() async {
            if seconds > 0 {
                try? await Task.sleep(for: .seconds(seconds))
            } else {
                for await _ in await UnixSignalsSequence(trapping: .sigterm, .sigint) { break }
            }
        }
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

        @OptionGroup var pace: Pace

        @Option(help: "Sessions per agent.")
        var connections: Int = 2

        @Option(help: "Event-loop threads.")
        var threads: Int = 1

        func run() async throws {
            LoggingSystem.bootstrap { label in
                var handler = StreamLogHandler.standardError(label: label)
                handler.logLevel = .warning
                return handler
            }
            let address = try pace.address()
            let group = MultiThreadedEventLoopGroup(numberOfThreads: threads)
            let logger = Logger(label: "warmpool.loadgen")
            var runtimes: [AgentRuntime] = []
            // One beat timer per loop, not one per agent: every millisecond it beats the agents of
            // one phase, so each agent still beats once an interval and the beats stay spread
            // over it as independent agents' would be. A per-agent timer spent a third of this
            // process's CPU in NIO's timer heap, on the cores the controller under test needs.
            let phases = Int(max(1, pace.intervalMs))
            let loops = Array(group.makeIterator())
            let clocks = loops.enumerated().map { index, loop in
                let clock = LoopClock(loop: loop, phases: phases)
                clock.name = "loop \(index)"
                return clock
            }
            for clock in clocks { clock.start(tick: .nanoseconds(pace.intervalMs * 1_000_000 / Int64(phases))) }
            let batch = max(1, pace.rampPerSecond / 10)
            for (index, id) in options.agentIDs().enumerated() {
                var configuration = AgentConfiguration(
                    controllers: [address], agentID: id, instanceID: UInt64(index + 1), machineID: UInt64(index / 2 + 1),
                    role: index % 2 == 0 ? .primary : .standby, secret: options.secret(for: id),
                    connections: connections, nvmlLibrary: nil)
                configuration.probesEnabled = false
                configuration.externalHeartbeatClock = true
                let clock = clocks[index % clocks.count]
                let runtime = AgentRuntime(configuration: configuration, loop: clock.loop, logger: logger)
                clock.add(runtime, phase: (index / clocks.count) % phases)
                runtime.start()
                runtimes.append(runtime)
                if (index + 1) % batch == 0 { try await Task.sleep(for: .milliseconds(100)) }
            }
            FileHandle.standardError.write(Data("loadgen: \(runtimes.count) agents started\n".utf8))
            await pace.waitForTheEnd()
            for clock in clocks { clock.stop() }
            for runtime in runtimes { try? await runtime.shutdown().get() }
            try await group.shutdownGracefully()
        }
    }
}

extension LoadGenerator {
    struct Beats: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Lean agents for capacity runs: real handshakes and frames, one session each, no reconnection.",
            discussion: """
                Each thread handshakes its share of the agents at the ramp rate and beats them straight to \
                their sockets: no NIO pipelines, timers or probes, about 30 % less CPU per beat than `run` at \
                5,000 agents (most of what is left is the kernel's loopback TCP path). Every 5 s each thread prints \
                one line: agents, beats sent and in how many seconds, worst lateness behind the schedule, the beats \
                that left a silence longer than an interval plus --late-threshold-ms and the agents they were for \
                (late=, agent indices as ranges), sessions closed, the window's end (at_ns, CLOCK_MONOTONIC). \
                The controller must be at an IPv4 address.
                """)
        @OptionGroup var options: Options

        @OptionGroup var pace: Pace

        @Option(help: "Beat threads.")
        var threads: Int = 2

        @Option(help: """
            A beat that comes more than this many ms later than one interval after its agent's previous beat is late: \
            its agent is named on the report's late= list (default: one interval; a silence of two intervals is \
            the controller's suspicion threshold).
            """)
        var lateThresholdMs: Int64?

        func run() async throws {
            let address = try pace.address()
            let threads = max(1, self.threads)
            let stop = StopFlag()
            let ids = options.agentIDs()
            var workers: [Thread] = []
            for thread in 0..<threads {
                let share = stride(from: thread, to: ids.count, by: threads).map { (id: ids[$0], secret: options.secret(for: ids[$0]), index: $0) }
                let engine = BeatEngine(
                    name: "thread \(thread)", address: address, agents: share, interval: pace.intervalMs * 1_000_000,
                    rampPerSecond: max(1, pace.rampPerSecond / threads),
                    lateThreshold: (lateThresholdMs ?? pace.intervalMs) * 1_000_000, stop: stop)
                let worker = Thread { engine.run() }
                worker.start()
                workers.append(worker)
            }
            FileHandle.standardError.write(Data("loadgen: \(ids.count) lean agents on \(threads) threads\n".utf8))
            await pace.waitForTheEnd()
            stop.set()
            try? await Task.sleep(for: .milliseconds(200))
        }
    }
}

extension LoadGenerator {
    struct Floor: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "What loopback TCP alone costs at a heartbeat load: 11-byte writes (a steady heartbeat), epoll reads, no protocol.",
            discussion: """
                Opens COUNT socket pairs on 127.0.0.1, writes one 11-byte frame per socket every interval from \
                the sender threads and reads them in one epoll thread that discards them. Prints the CPU each \
                side spent per frame and in all: the floor under any protocol that sends a beat as a segment.
                """)
        @Option(help: "Socket pairs.")
        var count: Int = 10_000

        @Option(help: "Sender threads.")
        var senders: Int = 1

        @Option(help: "Interval per socket, ms.")
        var intervalMs: Int64 = 100

        @Option(help: "Seconds to measure.")
        var seconds: Double = 20

        @Flag(help: "The receiver thread on CPU 0 and the senders on CPU 1 (as `bench capacity` pins the controller and the load generator).")
        var pin = false

        @Flag(help: "One JSON object instead of the line.")
        var json = false

        func run() throws {
            let result = try TransportFloor.measure(
                count: count, senders: max(1, senders), interval: intervalMs * 1_000_000, seconds: seconds, pin: pin)
            let frames = Double(max(1, result.framesSent))
            let fields: [(String, String)] = [
                ("sockets", "\(count)"), ("pinned", "\(pin)"), ("frames_per_second", String(format: "%.0f", frames / result.seconds)),
                ("sender_us_per_frame", String(format: "%.2f", result.senderCPUSeconds * 1e6 / frames)),
                ("receiver_us_per_frame", String(format: "%.2f", result.receiverCPUSeconds * 1e6 / frames)),
                ("cpu_pct_of_a_core", String(format: "%.1f", 100 * (result.senderCPUSeconds + result.receiverCPUSeconds) / result.seconds)),
            ]
            if json {
                print("{" + fields.map { "\"\($0.0)\": \($0.1)" }.joined(separator: ", ") + "}")
            } else {
                print(fields.map { "\($0.0)=\($0.1)" }.joined(separator: " "))
            }
        }
    }
}

/// The beat timer of one event loop's simulated agents, split into phases. Fixed rate: each tick
/// is scheduled at an absolute deadline and a late loop catches up, so every agent beats once an
/// interval (NIO's repeated tasks wait their delay after each run, which drifts).
final class LoopClock: @unchecked Sendable {
    let loop: EventLoop
    private var phases: [[AgentRuntime]]
    private var next = 0
    private var deadline = NIODeadline.now()
    private var tick = TimeAmount.milliseconds(1)
    private var scheduled: Scheduled<Void>?
    private var stopped = false

    init(loop: EventLoop, phases: Int) {
        self.loop = loop
        self.phases = Array(repeating: [], count: phases)
    }

    func add(_ runtime: AgentRuntime, phase: Int) {
        loop.execute { self.phases[phase].append(runtime) }
    }

    func start(tick: TimeAmount) {
        loop.execute {
            self.tick = tick
            self.deadline = .now() + tick
            self.schedule()
        }
    }

    func stop() {
        loop.execute {
            self.stopped = true
            self.scheduled?.cancel()
        }
    }

    private func schedule() {
        guard !stopped else { return }
        scheduled = loop.scheduleTask(deadline: deadline) { self.fire() }
    }

    /// The latest the clock fired in the current report window: a loop that fires late beats its
    /// agents late, so the controller's suspicions are the load generator's, not the controller's.
    private var worstLateness = TimeAmount.zero
    private var windowEndsAt = NIODeadline.now() + .seconds(5)
    var name = "loop"

    private func fire() {
        let now = NIODeadline.now()
        worstLateness = max(worstLateness, now - deadline)
        if now >= windowEndsAt {
            if worstLateness > .milliseconds(50) {
                let agents = phases.reduce(0) { $0 + $1.count }
                FileHandle.standardError.write(Data(
                    "loadgen: \(name) (\(agents) agents) beat up to \(worstLateness.nanoseconds / 1_000_000) ms late in the last 5 s\n".utf8))
            }
            worstLateness = .zero
            windowEndsAt = now + .seconds(5)
        }
        while deadline <= now, !stopped {
            for runtime in phases[next] { runtime.heartbeatTick() }
            next = (next + 1) % phases.count
            deadline = deadline + tick
        }
        schedule()
    }
}
