import ArgumentParser
import Foundation
import Logging
import NIOCore
import NIOPosix
import Hummingbird
import ServiceLifecycle
import WarmpoolModel
import WarmpoolAPI
import WarmpoolLiveness
import WarmpoolEngine
import WarmpoolFailover
import WarmpoolProvider
import WarmpoolSSH
import WarmpoolStore
import WarmpoolWire

@main
struct WarmpoolControllerCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "warmpool-controller",
        abstract: "The Warmpool control plane: agents' liveness, the REST API and the store.",
        version: WarmpoolVersion.current,
        subcommands: [Serve.self, Keygen.self, APIKey.self],
        defaultSubcommand: Serve.self)
}

struct Serve: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Listen for agents and serve the REST API (the default command).")

    @Option(help: "Address to listen on for agents, HOST:PORT. Env: WARMPOOL_LISTEN.")
    var listen: String = ProcessInfo.processInfo.environment["WARMPOOL_LISTEN"] ?? "127.0.0.1:7070"

    @Option(help: "Optional agent keys file, one `agent-id hex-secret` per line, re-read when it changes; agents registered through the API live in the database. Env: WARMPOOL_KEYS_FILE.")
    var keysFile: String?

    @Option(help: "The SQLite database (created with mode 0600 when missing). Env: WARMPOOL_DB.")
    var db: String = ProcessInfo.processInfo.environment["WARMPOOL_DB"] ?? "/var/lib/warmpool/warmpool.db"

    @Option(help: "Address the REST API listens on, HOST:PORT. Env: WARMPOOL_API_LISTEN.")
    var apiListen: String = ProcessInfo.processInfo.environment["WARMPOOL_API_LISTEN"] ?? "127.0.0.1:8080"

    @Option(help: "Close an API connection idle this many seconds (nothing sent, or a request's headers left unfinished).")
    var apiIdleTimeoutS: Int = 30

    @Option(help: "Answer 408 to a request whose body has not all arrived this many seconds after its headers (a client dripping bytes is never idle).")
    var apiBodyTimeoutS: Int = 10

    @Option(help: "Once the API listens, write its bound HOST:PORT to this file. Env: WARMPOOL_API_READY_FILE.")
    var apiReadyFile: String?

    @OptionGroup(title: "Provider and failover") var failover: FailoverOptions

    // Webhook notifications (--notify-url, --notify-secret-file): NotifyOptions.swift.
    @OptionGroup var notify: NotifyOptions

    @Option(help: "Heartbeat interval agents are told to use, in ms. Env: WARMPOOL_HEARTBEAT_INTERVAL_MS.")
    var heartbeatIntervalMs: Int = envInt("WARMPOOL_HEARTBEAT_INTERVAL_MS") ?? 100

    @Option(help: "Silence that fails an agent on a clean link, in ms (default 3 intervals + 50). Env: WARMPOOL_SILENCE_TIMEOUT_MS.")
    var silenceTimeoutMs: Int?

    @Option(help: "Silence timeout for an agent whose link stalled in the last minute, in ms (default 900). Env: WARMPOOL_LOSSY_SILENCE_TIMEOUT_MS.")
    var lossySilenceTimeoutMs: Int?

    @Option(help: "Lease granted to agents, in ms (default 10000); an agent freezes its workload when it runs out, and a failover waits for it. Detection does not depend on it (PROTOCOL.md §7, Lease length). Env: WARMPOOL_LEASE_MS.")
    var leaseMs: Int = envInt("WARMPOOL_LEASE_MS") ?? 10_000

    @Option(help: "How often agents send their full telemetry, in ms. Env: WARMPOOL_TELEMETRY_INTERVAL_MS.")
    var telemetryIntervalMs: Int = envInt("WARMPOOL_TELEMETRY_INTERVAL_MS") ?? 30_000

    @Option(help: "Close connections that have not authenticated within this many ms. Env: WARMPOOL_HANDSHAKE_TIMEOUT_MS.")
    var handshakeTimeoutMs: Int = envInt("WARMPOOL_HANDSHAKE_TIMEOUT_MS") ?? 2_000

    @Option(help: "The current epoch (fencing token) handed to agents. Env: WARMPOOL_EPOCH.")
    var epoch: UInt64 = UInt64(ProcessInfo.processInfo.environment["WARMPOOL_EPOCH"] ?? "") ?? 1

    @Option(help: "Append liveness events as JSON lines to this file instead of stdout. Env: WARMPOOL_EVENTS.")
    var events: String?

    @Option(help: "Once listening, write the bound HOST:PORT to this file (useful with port 0). Env: WARMPOOL_READY_FILE.")
    var readyFile: String?

    @Option(help: "Event-loop threads (default: one per core). Env: WARMPOOL_THREADS.")
    var threads: Int = envInt("WARMPOOL_THREADS") ?? System.coreCount

    @Option(help: "trace, debug, info, notice, warning, error or critical. Env: WARMPOOL_LOG_LEVEL.")
    var logLevel: String = ProcessInfo.processInfo.environment["WARMPOOL_LOG_LEVEL"] ?? "info"

    /// Flags win over the environment for the options that have no fixed default.
    mutating func resolveEnvironment() {
        silenceTimeoutMs = silenceTimeoutMs ?? envInt("WARMPOOL_SILENCE_TIMEOUT_MS")
        lossySilenceTimeoutMs = lossySilenceTimeoutMs ?? envInt("WARMPOOL_LOSSY_SILENCE_TIMEOUT_MS")
        events = events ?? ProcessInfo.processInfo.environment["WARMPOOL_EVENTS"]
        readyFile = readyFile ?? ProcessInfo.processInfo.environment["WARMPOOL_READY_FILE"]
        apiReadyFile = apiReadyFile ?? ProcessInfo.processInfo.environment["WARMPOOL_API_READY_FILE"]
        keysFile = keysFile ?? ProcessInfo.processInfo.environment["WARMPOOL_KEYS_FILE"]
    }

    mutating func validate() throws {
        // A malformed number in the environment is an error, never a silent fallback to the default.
        for name in [
            "WARMPOOL_HEARTBEAT_INTERVAL_MS", "WARMPOOL_SILENCE_TIMEOUT_MS", "WARMPOOL_LOSSY_SILENCE_TIMEOUT_MS",
            "WARMPOOL_LEASE_MS", "WARMPOOL_TELEMETRY_INTERVAL_MS", "WARMPOOL_HANDSHAKE_TIMEOUT_MS", "WARMPOOL_THREADS",
            "WARMPOOL_EPOCH",
        ] {
            if let text = ProcessInfo.processInfo.environment[name], UInt64(text) == nil {
                throw ValidationError("\(name) must be a non-negative integer, got \(text)")
            }
        }
        resolveEnvironment()
        guard heartbeatIntervalMs >= 10 else { throw ValidationError("--heartbeat-interval-ms must be at least 10") }
        guard apiIdleTimeoutS >= 1, apiBodyTimeoutS >= 1 else { throw ValidationError("--api-idle-timeout-s and --api-body-timeout-s must be at least 1") }
        if let silenceTimeoutMs, silenceTimeoutMs <= heartbeatIntervalMs {
            throw ValidationError("--silence-timeout-ms must exceed the heartbeat interval")
        }
        guard leaseMs > heartbeatIntervalMs else { throw ValidationError("--lease-ms must exceed the heartbeat interval") }
        guard Logger.Level(rawValue: logLevel) != nil else { throw ValidationError("unknown --log-level \(logLevel)") }
        guard ControllerAddress(listen, allowingPortZero: true) != nil else {
            throw ValidationError("--listen expects HOST:PORT, got \(listen)")
        }
        guard ControllerAddress(apiListen, allowingPortZero: true) != nil else {
            throw ValidationError("--api-listen expects HOST:PORT, got \(apiListen)")
        }
    }

    func run() async throws {
        // Everything the controller writes (the store, its WAL, key files, pins) is its own.
        umask(0o077)
        let level = Logger.Level(rawValue: logLevel)!
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        let logger = Logger(label: "warmpool.controller")
        // Event lines go to stdout by default; a reader that goes away must not kill the controller.
        signal(SIGPIPE, SIG_IGN)
        let address = ControllerAddress(listen, allowingPortZero: true)!
        let detector = DetectorConfiguration(
            heartbeatInterval: .milliseconds(heartbeatIntervalMs),
            silenceTimeout: silenceTimeoutMs.map { .milliseconds($0) },
            lossySilenceTimeout: lossySilenceTimeoutMs.map { .milliseconds($0) })
        let group = MultiThreadedEventLoopGroup(numberOfThreads: max(1, threads))
        // Before anything else touches the store: a second controller on it must not start.
        let storeLock: StoreLock
        do {
            storeLock = try StoreLock(databasePath: db)
        } catch let held as StoreLock.Held {
            logger.critical("refusing to start", metadata: ["reason": "\(held)"])
            throw held
        }
        defer { withExtendedLifetime(storeLock) {} }
        let bus = LivenessEventBus()
        let eventLog = try LivenessEventLog(path: events, bus: bus)
        let store = try SQLiteStore(path: db, logger: logger)
        try await AdminKey.ensure(store: store, databasePath: db, logger: logger)
        let service = try LivenessService(
            configuration: .init(
                host: address.host, port: address.port, keysFile: keysFile,
                hub: .init(
                    detector: detector, lease: .milliseconds(leaseMs), telemetryInterval: .milliseconds(telemetryIntervalMs),
                    handshakeTimeout: .milliseconds(handshakeTimeoutMs))),
            epoch: Epoch(epoch), bus: bus, group: group, logger: logger,
            storedKeys: { try await AdminKey.storedKeyring(store) }
        ) { [readyFile] bound in
            writeReadyFile(readyFile, bound)
        }
        // Every committed change to an agent's key, from the API or the failover engine, reaches
        // the listener's keyring before the change returns.
        store.observeAgentKeys { await service.reloadKeys() }
        let metrics = ControllerMetrics(countsWebhooks: !notify.urls.isEmpty)
        var services: [any Service] = [service]
        // Blocking work on pools of its own, so that one kind cannot starve another: a blackholed
        // webhook receiver holds a delivery thread for its whole timeout, exactly when a failover
        // emits failure_detected and needs the provider and SSH at once.
        let failoverThreads = NIOThreadPool(numberOfThreads: failover.failoverThreads)
        let webhookThreads = NIOThreadPool(numberOfThreads: notify.webhookThreads)
        failoverThreads.start()
        webhookThreads.start()
        let operations: any PoolOperations
        var snapshots: (any SnapshotOperations)?
        var costs: (@Sendable (PoolID) async throws -> PoolCosts)?
        if let provider = try failover.provider(threadPool: failoverThreads, logger: logger) {
            let coordinator = try failover.coordinator(
                provider: provider, store: store, hub: service.hub, listen: listen, metrics: metrics, threadPool: failoverThreads, databasePath: db,
                logger: logger)
            services.append(coordinator)
            snapshots = EngineSnapshotOperations(
                coordinator: coordinator, environment: failover.snapshotStore(), timeout: .seconds(failover.operationTimeoutS), logger: logger)
            operations = EnginePoolOperations(
                coordinator: coordinator, provider: provider, timeout: .seconds(failover.operationTimeoutS))
            costs = { poolID in
                try await coordinatorErrorsMapped {
                    do { return try await coordinator.costs(poolID) } catch let error as ProviderError { throw PoolOperationError.providerFailed(error.description) }
                }
            }
            logger.info("failover engine on", metadata: ["provider.url": "\(failover.providerUrl)"])
        } else {
            operations = ProviderlessPoolOperations(store: store)
            logger.notice("no provider API key: the failover engine is off (see --provider-api-key-file)")
        }
        var dependencies = APIDependencies(store: store, operations: operations, hub: service.hub, metrics: metrics,
                                           vastWebhookSecret: try failover.vastWebhookSecret(), bodyTimeout: .seconds(apiBodyTimeoutS))
        dependencies.snapshots = snapshots
        dependencies.costs = costs
        let router = APIRouter.build(dependencies)
        let apiAddress = ControllerAddress(apiListen, allowingPortZero: true)!
        let api = Application(
            router: router,
            // A connection that sends nothing, or never finishes its request's headers, is closed:
            // it would otherwise hold a socket (and a descriptor) for ever.
            server: .http1(configuration: .init(idleTimeout: .seconds(Int64(apiIdleTimeoutS)))),
            configuration: .init(address: .hostname(apiAddress.host, port: apiAddress.port), serverName: "warmpool-controller"),
            onServerRunning: { [apiReadyFile] channel in
                if let bound = channel.localAddress {
                    logger.info("REST API listening", metadata: ["address": "\(bound)"])
                    writeReadyFile(apiReadyFile, bound)
                }
            },
            eventLoopGroupProvider: .shared(group),
            logger: logger)
        let recorder = LivenessEventRecorder(bus: bus, store: store, metrics: metrics, logger: logger)
        logger.info(
            "detector configured",
            metadata: [
                "interval_ms": "\(heartbeatIntervalMs)", "silence_timeout_ms": "\(detector.silenceTimeout.milliseconds)",
                "lossy_silence_timeout_ms": "\(detector.lossySilenceTimeout.milliseconds)", "lease_ms": "\(leaseMs)",
            ])
        // The outbox delivered as signed webhooks, when --notify-url is set.
        let notifyServices = try notify.services(store: store, threadPool: webhookThreads, logger: logger)
        let serviceGroup = ServiceGroup(
            configuration: .init(services: services + [api, recorder] + notifyServices, gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
        try await serviceGroup.run()
        bus.finish()
        await eventLog.close()
        try? await webhookThreads.shutdownGracefully()
        try? await failoverThreads.shutdownGracefully()
        try await group.shutdownGracefully()
    }
}

struct Keygen: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Mint a secret for a new agent, append it to the keys file and print it.")

    @Option(help: "The new agent's id: 1-64 characters of A-Z a-z 0-9 . _ -")
    var agentId: String

    @Option(help: "Agent keys file (created with mode 0600 when missing). Env: WARMPOOL_KEYS_FILE.")
    var keysFile: String = ProcessInfo.processInfo.environment["WARMPOOL_KEYS_FILE"] ?? "/etc/warmpool/agent-keys"

    @Option(help: "Also write the secret, alone, to this file (mode 0600) for the agent's --secret-file.")
    var secretOut: String?

    func run() throws {
        umask(0o077)
        let secret = try KeyFile.addAgent(agentId, path: keysFile)
        if let secretOut {
            try SecretFile.write(secret.hex + "\n", to: secretOut)
        } else {
            print(secret.hex)
        }
    }
}

/// Written whole, then renamed: a reader never sees half an address.
func writeReadyFile(_ path: String?, _ bound: SocketAddress) {
    guard let path, let port = bound.port else { return }
    let host = bound.ipAddress.map { $0.contains(":") ? "[\($0)]" : $0 } ?? "127.0.0.1"
    let partial = path + ".partial"
    _ = FileManager.default.createFile(atPath: partial, contents: Data("\(host):\(port)\n".utf8))
    _ = rename(partial, path)
}

struct APIKey: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "apikey",
        abstract: "Mint an API key directly in the database and print it (for the first key, or a lost one).")

    @Option(help: "A name for the key, e.g. who uses it.")
    var name: String

    @Option(help: "metrics, read, operate or admin (the default here: this is the way in when no admin key is left).")
    var scope: String = "admin"

    @Option(help: "The SQLite database. Env: WARMPOOL_DB.")
    var db: String = ProcessInfo.processInfo.environment["WARMPOOL_DB"] ?? "/var/lib/warmpool/warmpool.db"

    func run() async throws {
        umask(0o077)
        let store = try SQLiteStore(path: db, logger: Logger(label: "warmpool.controller"))
        guard let scope = APIKeyRecord.Scope(rawValue: scope) else {
            throw ValidationError("--scope must be one of \(APIKeyRecord.Scope.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        let minted = APIKeys.mint(name: name, scope: scope)
        try await store.addAPIKey(minted.record)
        print(minted.plaintext)
    }
}

func envInt(_ name: String) -> Int? { ProcessInfo.processInfo.environment[name].flatMap { Int($0) } }

