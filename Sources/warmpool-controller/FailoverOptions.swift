import ArgumentParser
import Foundation
import Logging
import NIOPosix
import WarmpoolModel
import WarmpoolAPI
import WarmpoolLiveness
import WarmpoolEngine
import WarmpoolFailover
import WarmpoolProvider
import WarmpoolSSH
import WarmpoolStore
import WarmpoolWire

/// The provider, the SSH verifier and the engine's timing. Without a provider API key the
/// controller still detects failures and serves the API, but does not fail over.
struct FailoverOptions: ParsableArguments {
    private static let environment = ProcessInfo.processInfo.environment

    @Option(help: "The provider's API. Env: WARMPOOL_PROVIDER_URL.")
    var providerUrl: String = environment["WARMPOOL_PROVIDER_URL"] ?? "https://console.vast.ai"

    @Option(help: "File holding the provider API key; turns the failover engine on. Env: WARMPOOL_PROVIDER_API_KEY_FILE, or the key itself in VAST_API_KEY.")
    var providerApiKeyFile: String?

    @Option(help: "Private key (ed25519) the controller logs in to instances with, to verify SSH and the volume. Env: WARMPOOL_SSH_KEY.")
    var sshKey: String?

    @Option(help: "Where an instance's SSH host key comes from: `attested` (the fingerprint its own agent reports over its authenticated session, pinned before the first SSH contact; an instance whose agent reports none is not contacted) or `first-use` (whatever answers first is pinned: for instances without our agent). Env: WARMPOOL_HOST_KEY_TRUST.")
    var hostKeyTrust: String = environment["WARMPOOL_HOST_KEY_TRUST"] ?? HostKeyTrust.attested.rawValue

    @Option(help: "HOST:PORT[,HOST:PORT] the instances' agents reach this controller at (default: --listen, which then needs a fixed port). Env: WARMPOOL_AGENT_CONTROLLERS.")
    var agentControllers: String?

    @Option(help: "Onstart script of the instances the controller creates; it runs with the agent's WARMPOOL_* environment. Env: WARMPOOL_AGENT_ONSTART.")
    var agentOnstart: String = environment["WARMPOOL_AGENT_ONSTART"] ?? AgentLaunch.defaultOnstart

    @Option(help: "Extra KEY=VALUE for every created instance's environment (repeatable), e.g. WARMPOOL_FENCE_COMMAND=...")
    var agentEnv: [String] = []

    @Option(help: "Every primary the controller creates snapshots its volume this often, in seconds (the agent runs warmpool-snapshot while it holds the lease; the store's WARMPOOL_S3_* settings and WARMPOOL_SNAPSHOT_KEY_FILE go in with --agent-env); 0: no snapshots. Env: WARMPOOL_SNAPSHOT_INTERVAL_S.")
    var snapshotIntervalS: Int = Int(environment["WARMPOOL_SNAPSHOT_INTERVAL_S"] ?? "") ?? 0

    @Option(help: "How often the engine polls the provider while it waits (ms). Env: WARMPOOL_PROVIDER_POLL_MS.")
    var providerPollMs: Int = Int(environment["WARMPOOL_PROVIDER_POLL_MS"] ?? "") ?? 500

    @Option(help: "After a restart, fail over primaries whose agent has not reconnected within this many ms. Env: WARMPOOL_RESTART_GRACE_MS.")
    var restartGraceMs: Int = Int(environment["WARMPOOL_RESTART_GRACE_MS"] ?? "") ?? 10_000

    @Option(help: "How often the provider's instances are listed (one call) and held against every pool, in seconds: a primary it shows stopped or gone is failed over, a vanished standby replaced.")
    var standbyCheckS: Int = 30

    @Option(help: "Mass-failure breaker: at least this many primaries failing within the window (and the fraction below) hold their failovers until the provider reports each instance not running; 0 disables it. Env: WARMPOOL_MASS_FAILURE_MINIMUM.")
    var massFailureMinimum: Int = Int(environment["WARMPOOL_MASS_FAILURE_MINIMUM"] ?? "") ?? 3

    @Option(help: "Mass-failure breaker: the fraction of monitored primaries (0-1). Env: WARMPOOL_MASS_FAILURE_FRACTION.")
    var massFailureFraction: Double = Double(environment["WARMPOOL_MASS_FAILURE_FRACTION"] ?? "") ?? 0.2

    @Option(help: "Mass-failure breaker: the window in ms. Env: WARMPOOL_MASS_FAILURE_WINDOW_MS.")
    var massFailureWindowMs: Int = Int(environment["WARMPOOL_MASS_FAILURE_WINDOW_MS"] ?? "") ?? 5_000

    @Option(help: "Mass-failure breaker: how long every failure waits before it reaches the engine, so that a burst can be seen (ms). Env: WARMPOOL_MASS_FAILURE_SETTLE_MS.")
    var massFailureSettleMs: Int = Int(environment["WARMPOOL_MASS_FAILURE_SETTLE_MS"] ?? "") ?? 500

    @Option(help: "How long the engine waits for the provider to confirm the old primary stopped before it asks again (ms); it never promotes without that confirmation and the end of the old lease. Env: WARMPOOL_FENCE_TIMEOUT_MS.")
    var fenceTimeoutMs: Int = Int(environment["WARMPOOL_FENCE_TIMEOUT_MS"] ?? "") ?? 30_000

    @Option(help: "How long a starting standby may wait in the provider's `scheduling` (its GPU rented by someone else) or `offline` before a new instance on a free GPU of the host takes its place, in seconds. Env: WARMPOOL_SCHEDULING_TIMEOUT_S.")
    var schedulingTimeoutS: Int = Int(environment["WARMPOOL_SCHEDULING_TIMEOUT_S"] ?? "") ?? 45

    @Option(help: "How often a degraded pool tries its next rung by itself, in seconds (`warmpoolctl repair` tries now).")
    var degradedRetryS: Int = 300

    @Option(help: "The last rung: a failover whose old primary's machine has been offline this many seconds (its lease run out) moves the pool to another host and restores the newest snapshot there; 0: never. Needs snapshots (--snapshot-interval-s and the store's settings in --agent-env). Env: WARMPOOL_HOST_LOSS_AFTER_S.")
    var hostLossAfterS: Int = Int(environment["WARMPOOL_HOST_LOSS_AFTER_S"] ?? "") ?? 0

    @Option(help: "Run over SSH on the new primary to restore the newest snapshot onto its volume; it gets WARMPOOL_VOLUME_PATH and the --agent-env entries named WARMPOOL_S3_* and WARMPOOL_SNAPSHOT_*. Env: WARMPOOL_RESTORE_COMMAND.")
    var restoreCommand: String = environment["WARMPOOL_RESTORE_COMMAND"] ?? SnapshotRestore.defaultRestoreCommand

    @Option(help: "Least spacing of the calls to one provider endpoint, OPERATION=MS (e.g. show_instance=1000, or *=200 for all; repeatable). 429s widen it by themselves.")
    var providerMinIntervalMs: [String] = []

    @Option(help: "File holding the secret Vast.ai signs its notification webhooks with; turns on POST /api/v1/provider/vast/notifications. Env: WARMPOOL_VAST_WEBHOOK_SECRET_FILE.")
    var vastWebhookSecretFile: String?

    @Option(help: "Threads for the failover's blocking work: provider calls (libcurl) and SSH verifications (libssh2), apart from webhook deliveries and the event loops.")
    var failoverThreads: Int = 8

    @Option(help: "How long provision, failover test and cleanup requests wait for the engine, in seconds.")
    var operationTimeoutS: Int = 600

    @Option(help: "Provider request timeout in seconds.")
    var providerTimeoutS: Int = 30

    @Option(help: "Google Cloud service-account key file (JSON); turns the CPU standby strategy on: a host with fewer than two free GPUs gets a CPU VM its primary keeps in sync. Env: WARMPOOL_GCE_KEY_FILE.")
    var gceKeyFile: String?

    @Option(help: "Google Cloud project of the CPU standbys (default: the key file's project_id).")
    var gceProject: String?

    @Option(help: "Google Cloud zone of the CPU standbys.")
    var gceZone: String = "us-central1-a"

    @Option(help: "Compute Engine API base URL (warmpool-sim's /compute/v1 in drills).")
    var gceUrl: String = "https://compute.googleapis.com/compute/v1"

    @Option(help: "Machine type of the CPU standbys (see Protocol/GCE.md for prices).")
    var cpuStandbyMachineType: String = "e2-small"

    @Option(help: "yes: a warm pool whose host has no free GPU left for a new standby gets a CPU standby instead of staying unprotected; no: it stays degraded until a GPU frees up.")
    var cpuStandbyFallback: String = "yes"

    @Option(help: "HOST:PORT[,HOST:PORT] the CPU standbys' agents reach this controller at (default: --agent-controllers).")
    var cpuAgentControllers: String?

    @Option(help: "Where the primaries' agents read their sync target (the agent's --sync-target-file): on the volume, beside its epoch, never synced itself.")
    var syncTargetFile: String = "/data/.warmpool/sync-target.json"

    @Option(help: "A pool whose primary's sync to its CPU standby lags more than this many seconds is not protected (condition SyncBehind). Env: WARMPOOL_SYNC_LAG_BOUND_S.")
    var syncLagBoundS: Int = Int(ProcessInfo.processInfo.environment["WARMPOOL_SYNC_LAG_BOUND_S"] ?? "") ?? 60

    mutating func validate() throws {
        for variable in ["WARMPOOL_PROVIDER_POLL_MS", "WARMPOOL_RESTART_GRACE_MS", "WARMPOOL_FENCE_TIMEOUT_MS"] {
            if let text = Self.environment[variable], Int(text) == nil { throw ValidationError("\(variable) must be an integer, got \(text)") }
        }
        guard HostKeyTrust(rawValue: hostKeyTrust) != nil else {
            throw ValidationError("--host-key-trust must be \(HostKeyTrust.allCases.map(\.rawValue).joined(separator: " or ")), got \(hostKeyTrust)")
        }
        guard providerPollMs >= 10 else { throw ValidationError("--provider-poll-ms must be at least 10") }
        guard standbyCheckS >= 1 else { throw ValidationError("--standby-check-s must be at least 1") }
        guard fenceTimeoutMs >= 100 else { throw ValidationError("--fence-timeout-ms must be at least 100") }
        guard (1...256).contains(failoverThreads) else { throw ValidationError("--failover-threads must be 1-256") }
        guard schedulingTimeoutS >= 1, degradedRetryS >= 1 else {
            throw ValidationError("--scheduling-timeout-s and --degraded-retry-s must be at least 1")
        }
        _ = try pacingFloors()
        vastWebhookSecretFile = vastWebhookSecretFile ?? Self.environment["WARMPOOL_VAST_WEBHOOK_SECRET_FILE"]
        guard massFailureMinimum >= 0, (0...1).contains(massFailureFraction), massFailureWindowMs >= 100, massFailureSettleMs >= 0 else {
            throw ValidationError("--mass-failure-minimum must be >= 0, the fraction 0-1, the window >= 100 ms, the settle >= 0 ms")
        }
        for pair in agentEnv where !pair.contains("=") { throw ValidationError("--agent-env expects KEY=VALUE, got \(pair)") }
        guard hostLossAfterS >= 0 else { throw ValidationError("--host-loss-after-s must not be negative") }
        guard snapshotIntervalS >= 0 else { throw ValidationError("--snapshot-interval-s must not be negative") }
        providerApiKeyFile = providerApiKeyFile ?? Self.environment["WARMPOOL_PROVIDER_API_KEY_FILE"]
        gceKeyFile = gceKeyFile ?? Self.environment["WARMPOOL_GCE_KEY_FILE"]
        guard ["yes", "no"].contains(cpuStandbyFallback) else { throw ValidationError("--cpu-standby-fallback must be yes or no") }
        sshKey = sshKey ?? Self.environment["WARMPOOL_SSH_KEY"]
        agentControllers = agentControllers ?? Self.environment["WARMPOOL_AGENT_CONTROLLERS"]
    }

    /// The provider client, or nil when no key is configured.
    func provider(threadPool: NIOThreadPool, logger: Logger) throws -> (any ProviderClient)? {
        var key = Self.environment["VAST_API_KEY"]
        if let providerApiKeyFile {
            guard let text = try? String(contentsOfFile: providerApiKeyFile, encoding: .utf8) else {
                throw ValidationError("cannot read --provider-api-key-file \(providerApiKeyFile)")
            }
            key = text.trimmingCharacters(in: .whitespacesAndNewlines)
        }
        guard let key, !key.isEmpty else { return nil }
        var configuration = VastClient.Configuration(apiKey: key)
        configuration.baseURL = providerUrl
        configuration.timeout = .seconds(providerTimeoutS)
        configuration.pacing = EndpointPacer.Settings(floors: try pacingFloors())
        return VastClient(configuration: configuration, threadPool: threadPool, logger: logger)
    }

    /// The CPU standbys' cloud, or nil when no key is configured (the strategy is then off).
    func cpuCloud(threadPool: NIOThreadPool, logger: Logger) throws -> (any CPUProviderClient)? {
        guard let gceKeyFile else { return nil }
        let key: ServiceAccountKey
        do { key = try ServiceAccountKey(contentsOfFile: gceKeyFile) } catch {
            throw ValidationError("cannot use --gce-key-file \(gceKeyFile): \(error)")
        }
        guard let project = gceProject ?? key.projectID else { throw ValidationError("--gce-project is needed: the key file names no project_id") }
        var configuration = GCEConfiguration(project: project, zone: gceZone, baseURL: gceUrl, key: key)
        configuration.timeout = .seconds(providerTimeoutS)
        return GCEClient(configuration: configuration, threadPool: threadPool, logger: logger)
    }

    func pacingFloors() throws -> [String: Duration] {
        var floors: [String: Duration] = [:]
        for pair in providerMinIntervalMs {
            let parts = pair.split(separator: "=", maxSplits: 1).map(String.init)
            guard parts.count == 2, !parts[0].isEmpty, let ms = Int(parts[1]), ms >= 0 else {
                throw ValidationError("--provider-min-interval-ms expects OPERATION=MS, got \(pair)")
            }
            floors[parts[0]] = .milliseconds(ms)
        }
        return floors
    }

    /// The Vast.ai webhook secret, when the receiver is configured.
    /// The snapshot store's settings among the instances' environment: `WARMPOOL_S3_*` and the
    /// snapshot key (the schedule and the command are the agent's business).
    func snapshotStore() -> [String: String] {
        agentEnvironment().filter { $0.key.hasPrefix("WARMPOOL_S3_") || $0.key.hasPrefix("WARMPOOL_SNAPSHOT_KEY") }
    }

    /// `--agent-env`'s KEY=VALUE pairs (validated at start-up).
    private func agentEnvironment() -> [String: String] {
        var environment: [String: String] = [:]
        for pair in agentEnv {
            let parts = pair.split(separator: "=", maxSplits: 1)
            environment[String(parts[0])] = parts.count > 1 ? String(parts[1]) : ""
        }
        return environment
    }

    func vastWebhookSecret() throws -> String? {
        guard let vastWebhookSecretFile else { return nil }
        guard let text = try? String(contentsOfFile: vastWebhookSecretFile, encoding: .utf8),
            case let secret = text.trimmingCharacters(in: .whitespacesAndNewlines), !secret.isEmpty
        else { throw ValidationError("cannot read a secret from --vast-webhook-secret-file \(vastWebhookSecretFile)") }
        return secret
    }

    func coordinator(
        provider: any ProviderClient, store: any WarmpoolStore, hub: LivenessHub, listen: String, metrics: ControllerMetrics,
        threadPool: NIOThreadPool, databasePath: String, logger: Logger
    ) throws -> FailoverCoordinator {
        guard let sshKey else { throw ValidationError("the failover engine needs --ssh-key (the key instances accept for root)") }
        guard FileManager.default.isReadableFile(atPath: sshKey) else { throw ValidationError("cannot read --ssh-key \(sshKey)") }
        let controllers = agentControllers ?? listen
        if agentControllers == nil, ControllerAddress(listen, allowingPortZero: true)?.port == 0 {
            throw ValidationError("with a provider, agents need a fixed address: give --listen a port, or pass --agent-controllers")
        }
        var environment = agentEnvironment()
        if snapshotIntervalS > 0 { environment["WARMPOOL_SNAPSHOT_INTERVAL_S"] = "\(snapshotIntervalS)" }
        var engine = EngineSettings()
        engine.pollInterval = .milliseconds(providerPollMs)
        engine.fenceTimeout = .milliseconds(fenceTimeoutMs)
        engine.schedulingTimeout = .seconds(schedulingTimeoutS)
        engine.degradedRetryInterval = .seconds(degradedRetryS)
        engine.hostLossTimeout = hostLossAfterS > 0 ? .seconds(hostLossAfterS) : nil
        engine.leaseDuration = .milliseconds(Int(hub.leaseMilliseconds))
        let cpuCloud = try cpuCloud(threadPool: threadPool, logger: logger)
        if cpuCloud != nil {
            engine.cpuStandby = CPUStandbySettings(machineType: cpuStandbyMachineType, replacesMissingGPUStandby: cpuStandbyFallback == "yes")
        }
        let verifier = SSHVerifier(
            credentials: SSHCredentials(privateKey: .file(path: sshKey)),
            pins: StoreHostKeyPins(store: store, attested: { hub.attestedHostKey(instanceID: $0) }, logger: logger),
            trust: HostKeyTrust(rawValue: hostKeyTrust) ?? .attested, threadPool: threadPool, logger: logger)
        var configuration = FailoverCoordinator.Configuration(
            engine: engine, restartGrace: .milliseconds(restartGraceMs), standbyCheckInterval: .seconds(standbyCheckS))
        configuration.restoreCommand = restoreCommand
        configuration.restoreEnvironment = snapshotStore()
        if let command = environment["WARMPOOL_SNAPSHOT_COMMAND"] { configuration.snapshotCommand = command }
        configuration.syncTargetFile = syncTargetFile
        configuration.cpuAgentControllers = cpuAgentControllers
        configuration.syncLagBoundSeconds = Double(syncLagBoundS)
        configuration.syncKeyDirectory = URL(fileURLWithPath: databasePath).deletingLastPathComponent().path + "/sync-keys"
        configuration.sshPublicKey = (try? String(contentsOfFile: sshKey + ".pub", encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines)
        if cpuCloud != nil, configuration.sshPublicKey == nil {
            throw ValidationError("the CPU standby needs the controller's public key beside --ssh-key (\(sshKey).pub), for the VMs' ssh-keys")
        }
        configuration.breaker = MassFailureBreaker.Settings(
            minimumFailures: massFailureMinimum, fraction: massFailureFraction, window: .milliseconds(massFailureWindowMs),
            settle: .milliseconds(massFailureSettleMs))
        return FailoverCoordinator(
            configuration: configuration,
            store: store, provider: provider,
            verifier: verifier, launch: AgentLaunch(controllers: controllers, onstart: agentOnstart, extraEnvironment: environment),
            hub: hub, logger: logger, cpuCloud: cpuCloud,
            onFailoverFinished: { _, seconds in metrics.failoverFinished(durationSeconds: seconds) },
            onBreakerChange: { tripped, held, newTrip in metrics.breaker(tripped: tripped, held: held, newTrip: newTrip) })
    }
}
