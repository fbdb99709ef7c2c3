#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Dispatch
import Logging
import NIOPosix
import ServiceLifecycle
import WarmpoolAgent
import WarmpoolWire

@main
struct WarmpoolAgentCommand {
    static let abstract = "Heartbeats this GPU instance to the Warmpool controller, runs its workload while it holds a lease, and fences it when the lease runs out."
    static let discussion = """
        Every option can also come from the environment variable named in its help; a flag wins.
        The heartbeat interval, silence timeout and lease are set by the controller.
        With `-- COMMAND [ARGS...]` (or WARMPOOL_WORKLOAD, run with /bin/sh -c) the agent supervises
        the workload: it starts it on its first lease grant (never as a standby, never before a
        grant), freezes it when the lease runs out, thaws it when the lease is granted again at the
        same epoch, and kills it when a newer epoch exists (a grant, the controller, or the
        volume's .warmpool/epoch). The workload gets WARMPOOL_EPOCH and WARMPOOL_EPOCH_FILE.
        """

    static let options: [CommandLineOption] = [
        CommandLineOption(name: "controller", valueName: "controller", help: "Controller address HOST:PORT; repeat for several. Env: WARMPOOL_CONTROLLERS (comma-separated).", repeatable: true),
        CommandLineOption(name: "agent-id", valueName: "agent-id", help: "This agent's id, as in the controller's keys file. Env: WARMPOOL_AGENT_ID."),
        CommandLineOption(name: "secret-file", valueName: "secret-file", help: "File holding the agent's 64-hex-character secret. Env: WARMPOOL_AGENT_SECRET_FILE, or the secret itself in WARMPOOL_AGENT_SECRET."),
        CommandLineOption(name: "instance-id", valueName: "instance-id", help: "The provider's instance id for this machine. Env: WARMPOOL_INSTANCE_ID, else Vast.ai's CONTAINER_ID."),
        CommandLineOption(name: "machine-id", valueName: "machine-id", help: "The provider's physical machine id. Env: WARMPOOL_MACHINE_ID."),
        CommandLineOption(name: "role", valueName: "role", help: "primary or standby. Env: WARMPOOL_ROLE. Default: primary."),
        CommandLineOption(name: "connections", valueName: "connections", help: "Parallel sessions to the controller; each carries every beat. Env: WARMPOOL_CONNECTIONS. Default: 2."),
        CommandLineOption(name: "volume-path", valueName: "volume-path", help: "The shared volume's mount point. Env: WARMPOOL_VOLUME_PATH. Default: /data."),
        CommandLineOption(name: "volume-id", valueName: "volume-id", help: "The volume id its marker file must hold (any id if unset). Env: WARMPOOL_VOLUME_ID."),
        CommandLineOption(name: "volume-marker", valueName: "volume-marker", help: "Name of the volume-id marker file in the volume's root. Env: WARMPOOL_VOLUME_MARKER. Default: .warmpool-volume-id."),
        CommandLineOption(name: "nvml-library", valueName: "nvml-library", help: "NVML library to dlopen, or `none` to skip the GPU probe. Env: WARMPOOL_NVML_LIBRARY. Default: libnvidia-ml.so.1."),
        CommandLineOption(name: "workload-pidfile", valueName: "workload-pidfile", help: "Pid file of the workload, to report whether it runs. Env: WARMPOOL_WORKLOAD_PIDFILE."),
        CommandLineOption(name: "ssh-host-key", valueName: "ssh-host-key", help: "sshd's ed25519 public host key, whose fingerprint the controller pins for this instance before its first SSH contact, or `none`. Env: WARMPOOL_SSH_HOST_KEY. Default: /etc/ssh/ssh_host_ed25519_key.pub."),
        CommandLineOption(name: "checkpoint-pattern", valueName: "checkpoint-pattern", help: "Files the workload's checkpoints match (`*`, `?`, `[...]` within a component, `**` for any depth), or `none`; telemetry reports the newest one's age, the work a failover would lose. Env: WARMPOOL_CHECKPOINT_PATTERN. Default: VOLUME-PATH/checkpoints/**."),
        CommandLineOption(name: "snapshot-interval-s", valueName: "snapshot-interval-s", help: "Run the snapshot command this often while this instance holds the lease; 0: never. Env: WARMPOOL_SNAPSHOT_INTERVAL_S (the controller's --snapshot-interval-s sets it). Default: 0."),
        CommandLineOption(name: "snapshot-command", valueName: "snapshot-command", help: "Shell command that snapshots the volume (it gets WARMPOOL_SNAPSHOT_SOURCE, the volume's path, and WARMPOOL_EPOCH; the S3 settings come from its own WARMPOOL_S3_* environment). Env: WARMPOOL_SNAPSHOT_COMMAND. Default: warmpool-snapshot create --source \"$WARMPOOL_SNAPSHOT_SOURCE\"."),
        CommandLineOption(name: "sync-target-file", valueName: "sync-target-file", help: "The CPU standby this primary copies its volume to (JSON the controller writes: name, host, port, user, path, identity, host_key, epoch, bwlimit_kib), read again when it changes; absent: no sync; `none`: never. Passes run only while this instance holds an unexpired lease at the target's epoch. Env: WARMPOOL_SYNC_TARGET_FILE. Default: VOLUME/.warmpool/sync-target.json."),
        CommandLineOption(name: "sync-gap-ms", valueName: "sync-gap-ms", help: "Pause between one completed sync pass and the next, in ms. Env: WARMPOOL_SYNC_GAP_MS. Default: 1000."),
        CommandLineOption(name: "fence-command", valueName: "fence-command", help: "Shell command run when the lease expires, for a workload the agent does not start (it gets WARMPOOL_FENCED_EPOCH). Env: WARMPOOL_FENCE_COMMAND."),
        CommandLineOption(name: "thaw-command", valueName: "thaw-command", help: "Shell command run when an expired lease is granted again at the same epoch (it gets WARMPOOL_FENCED_EPOCH). Env: WARMPOOL_THAW_COMMAND."),
        CommandLineOption(name: "state-dir", valueName: "state-dir", help: "Where the agent remembers its workload's process group across its own restarts. Env: WARMPOOL_STATE_DIR. Default: /run/warmpool-agent."),
        CommandLineOption(name: "probe-interval-ms", valueName: "probe-interval-ms", help: "How often the volume, GPU and workload are probed, in ms. Env: WARMPOOL_PROBE_INTERVAL_MS. Default: 1000."),
        CommandLineOption(name: "log-level", valueName: "log-level", help: "trace, debug, info, notice, warning, error or critical. Env: WARMPOOL_LOG_LEVEL. Default: info."),
        CommandLineOption(name: "probe-once", help: "Run the volume and GPU probes once, print them as JSON and exit."),
    ]

    var controllers: [String] = []
    var agentId: String?
    var secretFile: String?
    var instanceId: UInt64?
    var machineId: UInt64?
    var role: String?
    var connections: Int?
    var volumePath: String?
    var volumeId: String?
    var volumeMarker: String?
    var nvmlLibrary: String?
    var workloadPidfile: String?
    var sshHostKey: String?
    var checkpointPattern: String?
    var snapshotIntervalS: Int?
    var snapshotCommand: String?
    var syncTargetFile: String?
    var syncGapMs: Int?
    var fenceCommand: String?
    var thawCommand: String?
    var stateDir: String?
    var workloadCommand: [String]?
    var probeIntervalMs: Int?
    var logLevel: String?
    var probeOnce = false

    init(_ parsed: ParsedCommandLine) throws(UsageError) {
        controllers = parsed.strings("controller")
        agentId = parsed.string("agent-id")
        secretFile = parsed.string("secret-file")
        instanceId = try parsed.integer("instance-id")
        machineId = try parsed.integer("machine-id")
        role = parsed.string("role")
        connections = try parsed.integer("connections")
        volumePath = parsed.string("volume-path")
        volumeId = parsed.string("volume-id")
        volumeMarker = parsed.string("volume-marker")
        nvmlLibrary = parsed.string("nvml-library")
        workloadPidfile = parsed.string("workload-pidfile")
        sshHostKey = parsed.string("ssh-host-key")
        checkpointPattern = parsed.string("checkpoint-pattern")
        snapshotIntervalS = try parsed.integer("snapshot-interval-s")
        snapshotCommand = parsed.string("snapshot-command")
        syncTargetFile = parsed.string("sync-target-file")
        syncGapMs = try parsed.integer("sync-gap-ms")
        fenceCommand = parsed.string("fence-command")
        thawCommand = parsed.string("thaw-command")
        stateDir = parsed.string("state-dir")
        if let trailing = parsed.trailing {
            guard !trailing.isEmpty else { throw UsageError("'--' must be followed by the workload's command") }
            workloadCommand = trailing
        }
        probeIntervalMs = try parsed.integer("probe-interval-ms")
        logLevel = parsed.string("log-level")
        probeOnce = parsed.flag("probe-once")
    }

    /// A synchronous main that waits for the command on a semaphore. An `async` main ends in
    /// dispatch_main(), which pthread_exit()s the main thread, and glibc unwinds its stack through
    /// the unwind tables: half a megabyte of .eh_frame and .eh_frame_hdr (and libgcc_s's
    /// unwinder) was paged in for that and stayed resident. Nothing in the agent runs on the
    /// main actor, so nothing needs the main queue drained.
    static func main() {
        let finished = DispatchSemaphore(value: 0)
        let status = ExitStatus()
        Task.detached {
            status.value = await runCommandLine()
            finished.signal()
        }
        finished.wait()
        exit(status.value)
    }

    /// Written before the semaphore is signalled and read after it is waited for.
    private final class ExitStatus: @unchecked Sendable {
        var value: Int32 = 0
    }

    /// The command's exit status: 0, 64 for a usage error, 1 for any other error.
    private static func runCommandLine() async -> Int32 {
        do {
            let parsed = try ParsedCommandLine(Array(CommandLine.arguments.dropFirst()), options: options)
            if parsed.wantsHelp {
                print(ParsedCommandLine.help(command: "warmpool-agent", abstract: abstract, discussion: discussion, options: options))
                return 0
            }
            if parsed.wantsVersion {
                print(ParsedCommandLine.version)
                return 0
            }
            try await WarmpoolAgentCommand(parsed).run()
            return 0
        } catch let error as UsageError {
            printToStandardError("Error: \(error)\nUsage: warmpool-agent <options>\n  See 'warmpool-agent --help' for more information.")
            return 64
        } catch {
            printToStandardError("Error: \(error)")
            return 1
        }
    }

    private static let environment = ProcessEnvironment.current()

    private func value(_ flag: String?, _ variable: String) -> String? { flag ?? Self.environment[variable] }

    private func integer(_ flag: Int?, _ variable: String, default fallback: Int) throws -> Int {
        if let flag { return flag }
        guard let text = Self.environment[variable] else { return fallback }
        guard let parsed = Int(text) else { throw UsageError("\(variable) must be an integer, got \(text)") }
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
        guard let level = Logger.Level(rawValue: levelName) else { throw UsageError("unknown log level \(levelName)") }
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        let probeInterval = try integer(probeIntervalMs, "WARMPOOL_PROBE_INTERVAL_MS", default: 1_000)
        guard probeInterval >= 10 else { throw UsageError("the probe interval must be at least 10 ms") }

        if probeOnce {
            let hostKey = value(sshHostKey, "WARMPOOL_SSH_HOST_KEY") ?? "/etc/ssh/ssh_host_ed25519_key.pub"
            let report = HostProbes(volume: volumeProbe, nvmlLibrary: nvml, workloadPIDFile: value(workloadPidfile, "WARMPOOL_WORKLOAD_PIDFILE"),
                                    sshHostKeyPath: hostKey == "none" ? nil : hostKey, checkpointPattern: try checkpoints).probe()
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

    /// The checkpoint pattern: under the volume unless told otherwise; `none` for no report.
    private var checkpoints: CheckpointPattern? {
        get throws(UsageError) {
            let text = value(checkpointPattern, "WARMPOOL_CHECKPOINT_PATTERN") ?? volumeProbe.path + "/checkpoints/**"
            guard text != "none" else { return nil }
            guard let pattern = CheckpointPattern(text) else {
                throw UsageError("--checkpoint-pattern must be an absolute path pattern, got \(text)")
            }
            return pattern
        }
    }

    private func makeConfiguration(probeIntervalMilliseconds: Int) throws -> AgentConfiguration {
        var addresses = controllers
        if addresses.isEmpty, let fromEnvironment = Self.environment["WARMPOOL_CONTROLLERS"] {
            addresses = fromEnvironment.split(separator: ",").map { String($0.filter { !$0.isWhitespace }) }
        }
        if addresses.isEmpty { addresses = ["127.0.0.1:7070"] }
        let parsed = try addresses.map { text in
            guard let address = ControllerAddress(text) else { throw UsageError("bad controller address \(text), expected HOST:PORT") }
            return address
        }
        guard let agentID = value(agentId, "WARMPOOL_AGENT_ID"), AgentIdentity.isValidAgentID(agentID) else {
            throw UsageError("--agent-id (or WARMPOOL_AGENT_ID) is required: 1-64 characters of A-Z a-z 0-9 . _ -")
        }
        let secret: AgentSecret
        do {
            if let path = value(secretFile, "WARMPOOL_AGENT_SECRET_FILE") {
                guard let contents = ProcessEnvironment.readTextFile(path) else {
                    throw UsageError("cannot read the secret file \(path)")
                }
                secret = try AgentSecret(hex: contents)
            } else if let hex = Self.environment["WARMPOOL_AGENT_SECRET"] {
                secret = try AgentSecret(hex: hex)
            } else {
                throw UsageError("--secret-file (or WARMPOOL_AGENT_SECRET_FILE / WARMPOOL_AGENT_SECRET) is required")
            }
        } catch let error as AgentSecret.SecretError {
            throw UsageError("agent secret: \(error)")
        }
        let roleName = value(role, "WARMPOOL_ROLE") ?? "primary"
        guard let parsedRole = AgentRole.allCases.first(where: { $0.description == roleName }) else {
            throw UsageError("--role must be primary or standby, got \(roleName)")
        }
        let connectionCount = try integer(connections, "WARMPOOL_CONNECTIONS", default: 2)
        guard (1...8).contains(connectionCount) else { throw UsageError("--connections must be 1 to 8") }
        func id(_ flag: UInt64?, _ variables: String...) throws -> UInt64 {
            if let flag { return flag }
            guard let (variable, text) = variables.lazy.compactMap({ name in Self.environment[name].map { (name, $0) } }).first
            else { return 0 }
            guard let parsed = UInt64(text) else { throw UsageError("\(variable) must be an unsigned integer, got \(text)") }
            return parsed
        }
        var configuration = AgentConfiguration(
            controllers: parsed, agentID: agentID, instanceID: try id(instanceId, "WARMPOOL_INSTANCE_ID", "CONTAINER_ID"),
            machineID: try id(machineId, "WARMPOOL_MACHINE_ID"), role: parsedRole, secret: secret,
            connections: connectionCount, volume: volumeProbe, nvmlLibrary: nvml,
            workloadPIDFile: value(workloadPidfile, "WARMPOOL_WORKLOAD_PIDFILE"),
            fenceCommand: value(fenceCommand, "WARMPOOL_FENCE_COMMAND"),
            probeIntervalNanoseconds: Int64(probeIntervalMilliseconds) * 1_000_000)
        configuration.thawCommand = value(thawCommand, "WARMPOOL_THAW_COMMAND")
        let hostKey = value(sshHostKey, "WARMPOOL_SSH_HOST_KEY") ?? "/etc/ssh/ssh_host_ed25519_key.pub"
        configuration.sshHostKeyPath = hostKey == "none" ? nil : hostKey
        configuration.checkpointPattern = try checkpoints
        let snapshotInterval = try integer(snapshotIntervalS, "WARMPOOL_SNAPSHOT_INTERVAL_S", default: 0)
        guard snapshotInterval >= 0 else { throw UsageError("--snapshot-interval-s must not be negative") }
        configuration.snapshotIntervalNanoseconds = Int64(snapshotInterval) * 1_000_000_000
        configuration.snapshotCommand = value(snapshotCommand, "WARMPOOL_SNAPSHOT_COMMAND") ?? configuration.snapshotCommand
        configuration.stateDirectory = value(stateDir, "WARMPOOL_STATE_DIR") ?? configuration.stateDirectory
        // On the volume, beside its epoch (the sync never copies `.warmpool/`): written through the
        // primary, it names the epoch it is for, so no other instance of the volume acts on it.
        let volume = value(volumePath, "WARMPOOL_VOLUME_PATH") ?? "/data"
        let syncTarget = value(syncTargetFile, "WARMPOOL_SYNC_TARGET_FILE") ?? volume + "/.warmpool/sync-target.json"
        configuration.syncTargetFile = syncTarget == "none" ? nil : syncTarget
        let syncGap = try integer(syncGapMs, "WARMPOOL_SYNC_GAP_MS", default: 1_000)
        guard syncGap >= 0 else { throw UsageError("--sync-gap-ms must not be negative") }
        configuration.syncGapNanoseconds = Int64(syncGap) * 1_000_000
        configuration.workloadCommand = workloadCommand ?? Self.environment["WARMPOOL_WORKLOAD"].map { ["/bin/sh", "-c", $0] }
        return configuration
    }
}
