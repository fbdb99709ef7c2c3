import ArgumentParser
import Foundation
import Hummingbird
import Logging
import ServiceLifecycle
import WarmpoolModel
import WarmpoolSim

#if canImport(Glibc)
import Glibc
#endif

/// A local Vast.ai stand-in that runs real instances: see README "warmpool-sim".
@main
struct WarmpoolSimCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "warmpool-sim",
        abstract: "A local Vast.ai API emulator whose instances are real sshd + onstart processes.",
        version: WarmpoolVersion.current)

    @Option(help: "HOST:PORT to serve the API on (port 0 picks one).")
    var listen = "127.0.0.1:0"

    @Option(help: "The Bearer key clients must send (env WARMPOOL_SIM_API_KEY).")
    var apiKey = ProcessInfo.processInfo.environment["WARMPOOL_SIM_API_KEY"] ?? ""

    @Option(name: .customLong("host"), help: "A machine: MACHINE_ID:GPUS:GPU_NAME:PRICE[:GEO], repeatable (default 77:4:RTX_4090:0.45).")
    var hosts: [String] = []

    @Option(help: "Directory for volumes and instance files (default: a new temporary directory).")
    var stateDir: String?

    @Option(help: "authorized_keys file every instance's sshd accepts for root.")
    var authorizedKeys: String?

    @Option(help: "Milliseconds from create/start to running.")
    var bootDelayMs = 500

    @Option(help: "Milliseconds between SIGTERM and SIGKILL when stopping an instance.")
    var stopGraceMs = 1000

    @Flag(help: "Never bind-mount volumes (the default as non-root): a linked volume is then not attached at all, nothing is at its mount path.")
    var noMounts = false

    @Option(help: "Share of API calls (0-1) failed with a 503.")
    var failureRate = 0.0

    @Option(help: "Share of API calls (0-1) answered 429.")
    var rateLimitRate = 0.0

    @Option(help: "Retry-After seconds sent with injected 429s (default: no Retry-After, as Vast.ai sends none).")
    var retryAfter: Int?

    @Option(help: "Milliseconds added to every API call.")
    var latencyMs = 0

    @Option(help: "An instance id that never gets sshd (repeatable).")
    var noSshInstance: [Int] = []

    @Option(help: "An instance id whose SSH address an impostor answers: an sshd with another host key (repeatable).")
    var impostorSshInstance: [Int] = []

    @Option(help: "An instance id whose start is refused (repeatable).")
    var failStartInstance: [Int] = []

    @Option(help: "A machine id with no free GPU: it offers nothing and refuses creates (repeatable).")
    var fullHost: [Int] = []

    @Option(help: "Run each instance in its own network namespace, named by this pattern of {machine} and {slot} (its GPU), e.g. wplab-{machine}-{slot}; made beforehand (Scripts/lab). Needs --instance-address.")
    var instanceNetns: String?

    @Option(help: "The address of each instance in its namespace, a pattern of {machine} and {slot}, e.g. 10.214.{slot}.{machine}: reported as ssh_host, where its sshd listens on port 22.")
    var instanceAddress: String?

    @Option(help: "A URL Vast.ai's notification webhooks are sent to (repeatable, at most 4).")
    var notifyURL: [String] = []

    @Option(help: "The webhook secret notifications are signed with (env WARMPOOL_SIM_NOTIFY_SECRET).")
    var notifySecret = ProcessInfo.processInfo.environment["WARMPOOL_SIM_NOTIFY_SECRET"] ?? ""

    @Option(help: "A rate limit, OPERATION=MS: the least time between two calls of it (* for every operation; repeatable).")
    var minIntervalMs: [String] = []

    @Option(help: "Emulate Compute Engine too (Protocol/GCE.md): write its service account's JSON key file here once listening (token_uri: this server's /token).")
    var gceKeyOut: String?

    @Option(help: "The emulated GCE project.")
    var gceProject = "warmpool-sim"

    @Option(help: "The emulated GCE zone.")
    var gceZone = "us-central1-a"

    @Option(help: "Lifetime (expires_in) of the emulated GCE access tokens, seconds.")
    var gceTokenTtlS = 3600

    @Option(help: "First two octets of the external addresses (natIP) of GCE VMs.")
    var gceNatPrefix = "10.216"

    @Flag(help: "Start with Compute Engine unavailable (every compute call 503; fault gce_unavailable).")
    var gceUnavailable = false

    @Option(help: "Write the bound HOST:PORT here once listening.")
    var readyFile: String?

    @Option(help: "trace, debug, info, notice, warning, error, critical.")
    var logLevel = "info"

    func run() async throws {
        guard !apiKey.isEmpty else { throw ValidationError("--api-key (or WARMPOOL_SIM_API_KEY) is required") }
        let (host, port) = try Self.parseListen(listen)
        guard (instanceNetns == nil) == (instanceAddress == nil) else {
            throw ValidationError("--instance-netns and --instance-address go together")
        }
        var faults = FaultPlan()
        faults.failureRate = failureRate
        faults.rateLimitRate = rateLimitRate
        faults.retryAfterSeconds = retryAfter
        faults.latencyMs = latencyMs
        faults.noSSHInstances = noSshInstance
        faults.failStartInstances = failStartInstance
        faults.impostorSSHInstances = impostorSshInstance
        faults.fullHosts = fullHost
        faults.gceUnavailable = gceUnavailable
        for limit in minIntervalMs {
            let parts = limit.split(separator: "=", maxSplits: 1).map(String.init)
            guard parts.count == 2, !parts[0].isEmpty, let ms = Int(parts[1]), ms >= 0 else {
                throw ValidationError("--min-interval-ms takes OPERATION=MS, e.g. start_instance=2000 or *=500")
            }
            faults.minIntervalMs[parts[0]] = ms
        }
        guard notifyURL.count <= 4 else { throw ValidationError("Vast.ai takes at most 4 notification URLs") }
        guard notifyURL.isEmpty || !notifySecret.isEmpty else {
            throw ValidationError("--notify-url needs --notify-secret (or WARMPOOL_SIM_NOTIFY_SECRET)")
        }
        let state = stateDir ?? FileManager.default.temporaryDirectory.appendingPathComponent("warmpool-sim-\(UUID().uuidString)").path
        var configuration = SimConfiguration(
            apiKey: apiKey, hosts: try hosts.isEmpty ? [.defaultHost] : hosts.map(HostSpec.init(parsing:)),
            stateDirectory: state, authorizedKeysPath: authorizedKeys, bootDelay: .milliseconds(bootDelayMs),
            stopGracePeriod: .milliseconds(stopGraceMs), mountVolumes: getuid() == 0 && !noMounts, faults: faults,
            instanceNetwork: instanceNetns.map { InstanceNetwork(namespacePattern: $0, addressPattern: instanceAddress ?? "") })
        configuration.notificationURLs = notifyURL
        configuration.notificationSecret = notifySecret
        if let gceKeyOut {
            guard getuid() == 0 else { throw ValidationError("--gce-key-out: GCE VMs are network namespaces, which need root") }
            guard gceTokenTtlS > 0 else { throw ValidationError("--gce-token-ttl-s must be positive") }
            let octets = gceNatPrefix.split(separator: ".")
            guard octets.count == 2, octets.allSatisfy({ UInt8($0) != nil }) else { throw ValidationError("--gce-nat-prefix takes two octets, e.g. 10.216") }
            configuration.gce = GCESimConfiguration(project: gceProject, zone: gceZone, keyOutPath: gceKeyOut,
                                                    tokenLifetime: .seconds(gceTokenTtlS), natPrefix: gceNatPrefix)
        }
        let mounts = configuration.mountVolumes

        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = Logger.Level(rawValue: logLevel) ?? .info
            return handler
        }
        let logger = Logger(label: "warmpool.sim")
        let simulator = try Simulator(configuration: configuration, logger: logger)
        let readyFile = self.readyFile
        let app = SimServer.application(simulator: simulator, host: host, port: port, logger: logger) { bound in
            logger.notice("warmpool-sim listening", metadata: [
                "sim.address": "\(host):\(bound)", "sim.state_dir": "\(state)", "sim.mounts": "\(mounts)",
            ])
            do {
                try await simulator.listening(host: host, port: bound)
            } catch {
                logger.critical("cannot write the GCE key file", metadata: ["sim.error": "\(error)"])
            }
            // Written last: a test that sees it may read the key file.
            if let readyFile { try? "\(host):\(bound)\n".write(toFile: readyFile, atomically: true, encoding: .utf8) }
        }
        let group = ServiceGroup(configuration: .init(
            services: [.init(service: SimulatorService(simulator: simulator)), .init(service: app)],
            gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
        try await group.run()
    }

    static func parseListen(_ text: String) throws -> (String, Int) {
        guard let colon = text.lastIndex(of: ":"), let port = Int(text[text.index(after: colon)...]), (0...65_535).contains(port)
        else { throw ValidationError("--listen must be HOST:PORT") }
        return (String(text[..<colon]), port)
    }
}
