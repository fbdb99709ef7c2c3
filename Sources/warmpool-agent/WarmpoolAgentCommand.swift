import ArgumentParser
import Logging
import NIOPosix
import ServiceLifecycle
import WarmpoolAgent
import WarmpoolWire

@main
struct WarmpoolAgentCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "warmpool-agent",
        abstract: "Heartbeats this GPU instance to the Warmpool controller and fences it when its lease runs out.",
        discussion: """
            Every option can also come from the environment variable named in its help; a flag wins.
            The heartbeat interval, silence timeout and lease are set by the controller.
            """)

    @Option(name: .customLong("controller"),
            help: "Controller address HOST:PORT; repeat for several. Env: WARMPOOL_CONTROLLERS (comma-separated).")
    var controllers: [String] = []

    @Option(help: "This agent's id, as in the controller's keys file. Env: WARMPOOL_AGENT_ID.")
    var agentId: String?

    @Option(help: "File holding the agent's 64-hex-character secret. Env: WARMPOOL_AGENT_SECRET_FILE, or the secret itself in WARMPOOL_AGENT_SECRET.")
    var secretFile: String?

    @Option(help: "The provider's instance id for this machine. Env: WARMPOOL_INSTANCE_ID.")
    var instanceId: UInt64?

    @Option(help: "The provider's physical machine id. Env: WARMPOOL_MACHINE_ID.")
    var machineId: UInt64?

    @Option(help: "primary or standby. Env: WARMPOOL_ROLE. Default: primary.")
    var role: String?

    @Option(help: "Parallel sessions to the controller; each carries every beat. Env: WARMPOOL_CONNECTIONS. Default: 2.")
    var connections: Int?

    @Option(help: "The shared volume's mount point. Env: WARMPOOL_VOLUME_PATH. Default: /data.")
    var volumePath: String?

    @Option(help: "The volume id its marker file must hold (any id if unset). Env: WARMPOOL_VOLUME_ID.")
    var volumeId: String?

    @Option(help: "Name of the volume-id marker file in the volume's root. Env: WARMPOOL_VOLUME_MARKER. Default: .warmpool-volume-id.")
    var volumeMarker: String?

    @Option(help: "NVML library to dlopen, or `none` to skip the GPU probe. Env: WARMPOOL_NVML_LIBRARY. Default: libnvidia-ml.so.1.")
    var nvmlLibrary: String?

    @Option(help: "Pid file of the workload, to report whether it runs. Env: WARMPOOL_WORKLOAD_PIDFILE.")
    var workloadPidfile: String?

    @Option(help: "Shell command run when the lease expires (it gets WARMPOOL_FENCED_EPOCH). Env: WARMPOOL_FENCE_COMMAND.")
    var fenceCommand: String?

    @Option(help: "How often the volume, GPU and workload are probed, in ms. Env: WARMPOOL_PROBE_INTERVAL_MS. Default: 1000.")
    var probeIntervalMs: Int?

    @Option(help: "trace, debug, info, notice, warning, error or critical. Env: WARMPOOL_LOG_LEVEL. Default: info.")
    var logLevel: String?

    @Flag(help: "Run the volume and GPU probes once, print them as JSON and exit.")
    var probeOnce = false

    private static let environment = ProcessEnvironment.current()

    private func value(_ flag: String?, _ variable: String) -> String? { flag ?? Self.environment[variable] }

    private func integer(_ flag: Int?, _ variable: String, default fallback: Int) throws -> Int {
        if let flag { return flag }
        guard let text = Self.environment[variable] else { return fallback }
        guard let parsed = Int(text) else { throw ValidationError("\(variable) must be an integer, got \(text)") }
        return parsed
    }

    private var volumeProbe: VolumeProbe {
        VolumeProbe(
            path: value(volumePath, "WARMPOOL_VOLUME_PATH") ?? "/data",
            markerName: value(volumeMarker, "WARMPOOL_VOLUME_MARKER") ?? ".warmpool-volume-id",
            expectedID: value(volumeId, "WARMPOOL_VOLUME_ID"))
    }

    private var nvml: String? {
        let library = value(nvmlLibrary, "WARMPOOL_NVML_LIBRARY") ?? "libnvidia-ml.so.1"
        return library == "none" ? nil : library
    }

    func run() async throws {
        let levelName = value(logLevel, "WARMPOOL_LOG_LEVEL") ?? "info"
        guard let level = Logger.Level(rawValue: levelName) else { throw ValidationError("unknown log level \(levelName)") }
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        let probeInterval = try integer(probeIntervalMs, "WARMPOOL_PROBE_INTERVAL_MS", default: 1_000)
        guard probeInterval >= 10 else { throw ValidationError("the probe interval must be at least 10 ms") }

        if probeOnce {
            let report = HostProbes(volume: volumeProbe, nvmlLibrary: nvml, workloadPIDFile: value(workloadPidfile, "WARMPOOL_WORKLOAD_PIDFILE")).probe()
            print(report.json())
            return
        }

        let configuration = try makeConfiguration(probeIntervalMilliseconds: probeInterval)
        var logger = Logger(label: "warmpool.agent")
        logger[metadataKey: "agent.id"] = "\(configuration.agentID)"
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let runtime = AgentRuntime(configuration: configuration, loop: group.next(), logger: logger)
        logger.info(
            "starting",
            metadata: [
                "controllers": "\(configuration.controllers.map(\.description).joined(separator: ","))",
                "role": "\(configuration.role)", "connections": "\(configuration.connections)",
                "volume": "\(configuration.volume.path)",
            ])
        let serviceGroup = ServiceGroup(
            configuration: .init(
                services: [AgentService(runtime: runtime)], gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
        try await serviceGroup.run()
        try await group.shutdownGracefully()
    }

    private func makeConfiguration(probeIntervalMilliseconds: Int) throws -> AgentConfiguration {
        var addresses = controllers
        if addresses.isEmpty, let fromEnvironment = Self.environment["WARMPOOL_CONTROLLERS"] {
            addresses = fromEnvironment.split(separator: ",").map { String($0.filter { !$0.isWhitespace }) }
        }
        if addresses.isEmpty { addresses = ["127.0.0.1:7070"] }
        let parsed = try addresses.map { text in
            guard let address = ControllerAddress(text) else { throw ValidationError("bad controller address \(text), expected HOST:PORT") }
            return address
        }
        guard let agentID = value(agentId, "WARMPOOL_AGENT_ID"), AgentIdentity.isValidAgentID(agentID) else {
            throw ValidationError("--agent-id (or WARMPOOL_AGENT_ID) is required: 1-64 characters of A-Z a-z 0-9 . _ -")
        }
        let secret: AgentSecret
        do {
            if let path = value(secretFile, "WARMPOOL_AGENT_SECRET_FILE") {
                guard let contents = ProcessEnvironment.readTextFile(path) else {
                    throw ValidationError("cannot read the secret file \(path)")
                }
                secret = try AgentSecret(hex: contents)
            } else if let hex = Self.environment["WARMPOOL_AGENT_SECRET"] {
                secret = try AgentSecret(hex: hex)
            } else {
                throw ValidationError("--secret-file (or WARMPOOL_AGENT_SECRET_FILE / WARMPOOL_AGENT_SECRET) is required")
            }
        } catch let error as AgentSecret.SecretError {
            throw ValidationError("agent secret: \(error)")
        }
        let roleName = value(role, "WARMPOOL_ROLE") ?? "primary"
        guard let parsedRole = AgentRole.allCases.first(where: { $0.description == roleName }) else {
            throw ValidationError("--role must be primary or standby, got \(roleName)")
        }
        let connectionCount = try integer(connections, "WARMPOOL_CONNECTIONS", default: 2)
        guard (1...8).contains(connectionCount) else { throw ValidationError("--connections must be 1 to 8") }
        func id(_ flag: UInt64?, _ variable: String) throws -> UInt64 {
            if let flag { return flag }
            guard let text = Self.environment[variable] else { return 0 }
            guard let parsed = UInt64(text) else { throw ValidationError("\(variable) must be an unsigned integer") }
            return parsed
        }
        return AgentConfiguration(
            controllers: parsed, agentID: agentID, instanceID: try id(instanceId, "WARMPOOL_INSTANCE_ID"),
            machineID: try id(machineId, "WARMPOOL_MACHINE_ID"), role: parsedRole, secret: secret,
            connections: connectionCount, volume: volumeProbe, nvmlLibrary: nvml,
            workloadPIDFile: value(workloadPidfile, "WARMPOOL_WORKLOAD_PIDFILE"),
            fenceCommand: value(fenceCommand, "WARMPOOL_FENCE_COMMAND"),
            probeIntervalNanoseconds: Int64(probeIntervalMilliseconds) * 1_000_000)
    }
}
