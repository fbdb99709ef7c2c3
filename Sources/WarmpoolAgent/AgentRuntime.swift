#if canImport(Glibc)
import Glibc
#endif
import Dispatch
import Logging
import NIOCore
import NIOPosix
import WarmpoolModel
import WarmpoolWire

public struct AgentConfiguration: Sendable {
    public var controllers: [ControllerAddress]
    public var agentID: String
    public var instanceID: UInt64
    public var machineID: UInt64
    public var role: AgentRole
    public var secret: AgentSecret
    /// Parallel sessions to the controller(s); every beat goes out on each (PROTOCOL.md §6).
    public var connections: Int
    public var volume: VolumeProbe
    /// nil disables the GPU probe.
    public var nvmlLibrary: String?
    public var workloadPIDFile: String?
    /// The sshd host key's public half, whose fingerprint telemetry reports; nil reports none.
    public var sshHostKeyPath: String? = "/etc/ssh/ssh_host_ed25519_key.pub"
    /// Files the workload's checkpoints match (`/data/checkpoints/**`): telemetry reports the newest
    /// one's age, the work a failover now would lose. nil reports none.
    public var checkpointPattern: CheckpointPattern? = CheckpointPattern("/data/checkpoints/**")
    /// Run through /bin/sh every `snapshotIntervalNanoseconds` while this instance holds the lease
    /// (`SnapshotSchedule`), with `WARMPOOL_SNAPSHOT_SOURCE` set to the volume's path.
    public var snapshotCommand = #"warmpool-snapshot create --source "$WARMPOOL_SNAPSHOT_SOURCE""#
    /// 0: no snapshots.
    public var snapshotIntervalNanoseconds: Int64 = 0
    /// Where the controller writes the CPU standby this primary pushes its volume to (`SyncTarget`,
    /// read again at each probe when it changed); nil: never sync.
    public var syncTargetFile: String? = "/data/.warmpool/sync-target.json"
    /// Between one completed sync pass and the next.
    public var syncGapNanoseconds: Int64 = 1_000_000_000
    /// rsync and ssh, looked up in PATH unless absolute.
    public var rsyncCommand = "rsync"
    public var sshCommand = "ssh"
    /// Run through /bin/sh when the lease expires (for a workload the agent does not start).
    public var fenceCommand: String?
    /// Run through /bin/sh when a lease that ran out is granted again at the same epoch.
    public var thawCommand: String?
    /// The workload the agent supervises (`-- COMMAND`, or `/bin/sh -c $WARMPOOL_WORKLOAD`): started
    /// on the first grant, frozen when the lease runs out, killed when a newer epoch exists.
    public var workloadCommand: [String]?
    /// Where the agent remembers its workload's process group, for the next run after a crash.
    public var stateDirectory = "/run/warmpool-agent"
    public var probeIntervalNanoseconds: Int64
    public var connectTimeoutNanoseconds: Int64
    /// Off only for load generation, where thousands of simulated agents share one host.
    public var probesEnabled = true
    /// On only for load generation: the runtime schedules no heartbeat timer of its own and the
    /// caller calls `heartbeatTick()` on the runtime's loop every interval. Thousands of agents
    /// with a timer each spent a third of the load generator's CPU in NIO's timer heap.
    public var externalHeartbeatClock = false

    public init(
        controllers: [ControllerAddress], agentID: String, instanceID: UInt64, machineID: UInt64, role: AgentRole,
        secret: AgentSecret, connections: Int = 2, volume: VolumeProbe = VolumeProbe(),
        nvmlLibrary: String? = "libnvidia-ml.so.1", workloadPIDFile: String? = nil, fenceCommand: String? = nil,
        probeIntervalNanoseconds: Int64 = 1_000_000_000, connectTimeoutNanoseconds: Int64 = 1_000_000_000
    ) {
        self.controllers = controllers
        self.agentID = agentID
        self.instanceID = instanceID
        self.machineID = machineID
        self.role = role
        self.secret = secret
        self.connections = connections
        self.volume = volume
        self.nvmlLibrary = nvmlLibrary
        self.workloadPIDFile = workloadPIDFile
        self.fenceCommand = fenceCommand
        self.probeIntervalNanoseconds = probeIntervalNanoseconds
        self.connectTimeoutNanoseconds = connectTimeoutNanoseconds
    }
}

public let warmpoolAgentVersion = WarmpoolVersion.current

/// The agent's I/O shell. Everything here runs on `loop` (hence `@unchecked Sendable`: the state
/// is confined to that one thread); blocking probes and the fence command run on their own queues.
public final class AgentRuntime: @unchecked Sendable {
    /// Sent in every Hello of this runtime: its sessions are one process's, with one clock.
    private let incarnation = Hello.newIncarnation()
    private struct Slot {
        var handler: AgentConnectionHandler?
        var attempt = 0
        var backoff = Backoff()
        var reconnect: Scheduled<Void>?
    }

    public let configuration: AgentConfiguration
    public let loop: EventLoop
    private let logger: Logger
    private var slots: [Slot]
    private var supervisor: WorkloadSupervisor
    private var workload: WorkloadProcess?
    /// Where this agent remembers its workload's process group (`--state-dir`, one file per agent id).
    private let workloadStateFile: String
    /// The fence command's last run failed (exit status != 0): reported until one succeeds.
    private var fenceCommandFailed = false
    private var terms: Welcome?
    private var heartbeatTask: RepeatedTask?
    /// Fires at the lease's expiry, so the fence never waits for the next heartbeat tick. Grants
    /// only move the expiry later, so one timer stays pending and moves itself on when it fires
    /// early, instead of being cancelled and rescheduled on every grant: NIO cancels a scheduled
    /// task by a linear search of the loop's timer heap, which the load generator, with
    /// thousands of agents per loop, paid twice a second per agent.
    private var leaseTimer: Scheduled<Void>?
    private var nextTelemetryAt: Int64 = 0
    /// The last beat's `sent_at` stamp. The controller takes a beat whose millisecond stamp is not
    /// newer than the newest it has as a late copy (PROTOCOL.md §6), so two beats in one
    /// millisecond (a fence and the thaw a queued grant brings right after it) would lose the
    /// second: every beat is stamped at least a millisecond after the one before.
    private var lastBeatStamp: Int64 = 0
    private var probeReport: ProbeReport?
    private var snapshots: SnapshotSchedule?
    private var snapshotRun: SnapshotProcess?
    private var sync: SyncSchedule?
    private var syncRun: SyncPass?
    private var syncTimer: Scheduled<Void>?
    /// When `syncTimer` fires: it is moved only when that changes, not at every grant (NIO
    /// cancels a timer by a linear search of the loop's timer heap).
    private var syncTimerAt: Int64?
    /// The target file's last reading: an unreadable file is read again at every probe, and says
    /// so once.
    private var syncReading: SyncTargetReading?
    /// Read on the probe queue only.
    private let syncTargetFile: SyncTargetFile?
    private let syncSetup: SyncSetup?
    /// When Telemetry last went out: while syncing it goes at least every 2 s, so that a lag
    /// percentile measured from the controller's status sees the lag move.
    private var lastTelemetryAt: Int64 = 0
    private var stopping = false
    private let probeQueue = DispatchQueue(label: "warmpool.agent.probes")
    private let fenceQueue = DispatchQueue(label: "warmpool.agent.fence")
    private var generator = SystemRandomNumberGenerator()

    public init(configuration: AgentConfiguration, loop: EventLoop, logger: Logger) {
        precondition(!configuration.controllers.isEmpty && configuration.connections >= 1)
        self.configuration = configuration
        self.loop = loop
        self.logger = logger
        self.slots = Array(repeating: Slot(), count: configuration.connections)
        self.supervisor = WorkloadSupervisor(supervises: configuration.workloadCommand != nil)
        if configuration.snapshotIntervalNanoseconds > 0 {
            self.snapshots = SnapshotSchedule(intervalNanoseconds: configuration.snapshotIntervalNanoseconds)
        }
        let fileName = configuration.agentID.map { $0.isLetter || $0.isNumber || $0 == "-" || $0 == "_" ? $0 : "_" }
        self.workloadStateFile = configuration.stateDirectory + "/" + fileName + ".workload"
        // Without probes nothing reads the target file (load generation).
        if let path = configuration.syncTargetFile, configuration.probesEnabled {
            let file = SyncTargetFile(path: path, stateDirectory: configuration.stateDirectory, fileStem: String(fileName))
            self.syncTargetFile = file
            self.syncSetup = SyncSetup(
                volumePath: configuration.volume.path, identityPath: file.identityPath, knownHostsPath: file.knownHostsPath,
                manifestDirectory: configuration.stateDirectory + "/" + fileName + ".sync-manifest", source: configuration.agentID,
                instanceID: configuration.instanceID, rsync: configuration.rsyncCommand, ssh: configuration.sshCommand)
            self.sync = SyncSchedule(gapNanoseconds: configuration.syncGapNanoseconds)
        } else {
            self.syncTargetFile = nil
            self.syncSetup = nil
        }
    }

    /// The shell hooks the fence runs, for workloads the agent does not start.
    private enum Hook: String {
        case fence = "fence command"
        case thaw = "thaw command"
    }

    // MARK: Lifecycle

    public func start() {
        loop.execute {
            self.adoptLeftoverWorkload()
            if self.configuration.probesEnabled { self.startProbing() }
            for slot in self.slots.indices { self.connect(slot: slot) }
        }
    }

    /// Says goodbye on every established session, so the controller does not fail us over.
    public func shutdown() -> EventLoopFuture<Void> {
        loop.flatSubmit {
            self.stopping = true
            self.heartbeatTask?.cancel()
            self.leaseTimer?.cancel()
            self.stopWorkload()
            self.snapshotRun?.cancel()
            self.syncTimer?.cancel()
            self.syncRun?.cancel()
            var closing: [EventLoopFuture<Void>] = []
            for index in self.slots.indices {
                self.slots[index].reconnect?.cancel()
                guard let handler = self.slots[index].handler else { continue }
                if let goodbye = handler.sayGoodbye(reason: .shutdown) {
                    closing.append(goodbye.recover { _ in })
                } else {
                    handler.close(reason: "shutting down")
                }
            }
            return EventLoopFuture.andAllComplete(closing, on: self.loop)
        }
    }

    // MARK: Connections

    private func connect(slot index: Int) {
        guard !stopping else { return }
        let controllers = configuration.controllers
        // Slots start on different controllers and move on after each failed attempt.
        let address = controllers[(index + slots[index].attempt) % controllers.count]
        slots[index].attempt += 1
        let hello = Hello(
            clientNonce: HandshakeCrypto.randomNonce(), role: configuration.role, instanceID: configuration.instanceID,
            machineID: configuration.machineID, knownEpoch: supervisor.knownEpoch, fencedAtEpoch: supervisor.fencedAtEpoch,
            agentID: configuration.agentID, softwareVersion: warmpoolAgentVersion, incarnation: incarnation)
        var connectionLogger = logger
        connectionLogger[metadataKey: "controller"] = "\(address)"
        connectionLogger[metadataKey: "slot"] = "\(index)"
        let handlerLogger = connectionLogger
        let secret = configuration.secret
        ClientBootstrap(group: loop)
            .connectTimeout(.nanoseconds(configuration.connectTimeoutNanoseconds))
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            // A session the controller grants nothing on (a standby it withholds, §7) hears
            // nothing for as long as it is withheld: TCP's keepalive, not the silence watchdog,
            // finds a controller that vanished under it (about 11 s).
            .channelOption(.socketOption(.so_keepalive), value: 1)
            .channelOption(ChannelOptions.Types.SocketOption(level: .tcp, name: .init(rawValue: TCP_KEEPIDLE)), value: 5)
            .channelOption(ChannelOptions.Types.SocketOption(level: .tcp, name: .init(rawValue: TCP_KEEPINTVL)), value: 2)
            .channelOption(ChannelOptions.Types.SocketOption(level: .tcp, name: .init(rawValue: TCP_KEEPCNT)), value: 3)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    let handler = AgentConnectionHandler(
                        hello: hello, secret: secret, runtime: self, slot: index, logger: handlerLogger)
                    try channel.pipeline.syncOperations.addHandlers([
                        ByteToMessageHandler(FrameDecoder()), MessageToByteHandler(FrameEncoder()), handler,
                    ])
                    self.slots[index].handler = handler
                }
            }
            .connect(host: address.host, port: address.port)
            .whenFailure { error in
                handlerLogger.notice("connect failed", metadata: ["error": "\(error)"])
                self.scheduleReconnect(slot: index)
            }
    }

    private func scheduleReconnect(slot index: Int) {
        guard !stopping else { return }
        slots[index].handler = nil
        let delay = slots[index].backoff.nextDelay(unit: Double.random(in: 0...1, using: &generator))
        slots[index].reconnect = loop.scheduleTask(in: .nanoseconds(delay)) { self.connect(slot: index) }
    }

    func connectionClosed(slot index: Int, handler: AgentConnectionHandler) {
        guard slots[index].handler === handler else { return }
        logger.info("connection closed", metadata: ["slot": "\(index)"])
        scheduleReconnect(slot: index)
    }

    func established(slot index: Int, handler: AgentConnectionHandler, welcome: Welcome) {
        slots[index].backoff.reset()
        slots[index].attempt -= 1  // stay on the controller that answered
        carryOut(supervisor.learned(epoch: welcome.epoch, from: .welcome, now: MonotonicClock.now()))
        logger.info(
            "session established",
            metadata: [
                "slot": "\(index)", "epoch": "\(welcome.epoch)", "interval_ms": "\(welcome.heartbeatIntervalMilliseconds)",
                "lease_ms": "\(welcome.leaseMilliseconds)",
            ])
        if !configuration.externalHeartbeatClock, terms?.heartbeatIntervalMilliseconds != welcome.heartbeatIntervalMilliseconds {
            heartbeatTask?.cancel()
            let interval = TimeAmount.milliseconds(Int64(welcome.heartbeatIntervalMilliseconds))
            heartbeatTask = loop.scheduleRepeatedTask(initialDelay: .zero, delay: interval) { _ in self.heartbeatTick() }
        }
        terms = welcome
        // Every new session gets the full picture at once.
        if let document = telemetryDocument() {
            handler.sendTelemetry(document: document)
            nextTelemetryAt = MonotonicClock.now() + Int64(welcome.telemetryIntervalMilliseconds) * 1_000_000
        }
    }

    func rejected(slot index: Int, code: Reject.Code) {
        // A refused key will not become right by retrying fast: back off to the ceiling.
        if code == .authenticationFailed { for _ in 0..<8 { _ = slots[index].backoff.nextDelay(unit: 1) } }
    }

    // MARK: Heartbeats and the lease

    /// Sends a beat on every established session. Runs on `loop`: from the runtime's own timer,
    /// or from the caller's under `externalHeartbeatClock`.
    public func heartbeatTick() {
        loop.preconditionInEventLoop()
        let now = MonotonicClock.now()
        guard let terms else { return }
        var status = AgentStatus(
            report: probeReport, now: now, staleAfter: 3 * configuration.probeIntervalNanoseconds + 1_000_000_000,
            holdsLease: supervisor.holdsLease(now: now), fenced: supervisor.fencedAtEpoch != nil)
        if supervisor.fenceIsFinal { status.flags.insert(.fenceFinal) }
        if fenceCommandFailed { status.flags.insert(.fenceCommandFailed) }
        if configuration.workloadCommand != nil { status.workload = reportedWorkload }
        let inboundTimeout = max(2 * Int64(terms.leaseMilliseconds) * 1_000_000, 2_000_000_000)
        let stamp = max(now, (lastBeatStamp / 1_000_000 + 1) * 1_000_000)
        lastBeatStamp = stamp
        var telemetrySent = false
        for slot in slots {
            guard let handler = slot.handler else { continue }
            // Only where the controller grants: it renews every quarter lease there, so silence
            // means a dead session; a withheld one is silent by design.
            if handler.hasBeenGranted, now - handler.lastInboundAt > inboundTimeout {
                handler.close(reason: "nothing from the controller for \((now - handler.lastInboundAt) / 1_000_000) ms")
                continue
            }
            guard handler.isEstablished else { continue }
            handler.sendHeartbeat(status: status, now: now, stamp: stamp)
            if !telemetrySent, now >= nextTelemetryAt || syncWantsTelemetry(now: now), let document = telemetryDocument() {
                handler.sendTelemetry(document: document)
                telemetrySent = true
            }
        }
        if telemetrySent {
            nextTelemetryAt = now + Int64(terms.telemetryIntervalMilliseconds) * 1_000_000
            lastTelemetryAt = now
        }
    }

    func leaseGranted(_ grant: LeaseGrant, anchor: Int64) {
        let now = MonotonicClock.now()
        carryOut(supervisor.granted(
            anchor: anchor, leaseNanoseconds: Int64(grant.leaseMilliseconds) * 1_000_000, epoch: grant.epoch, now: now))
        if leaseTimer == nil { scheduleLeaseCheck(now: now) }
        runSyncSchedule()  // the first grant starts the sync without waiting for a probe
    }

    private func scheduleLeaseCheck(now: Int64) {
        guard let expiresAt = supervisor.expiresAt, !stopping else {
            leaseTimer = nil
            return
        }
        leaseTimer = loop.scheduleTask(in: .nanoseconds(max(0, expiresAt - now))) {
            let now = MonotonicClock.now()
            self.carryOut(self.supervisor.tick(now: now))
            self.runSyncSchedule()  // at the expiry itself, fence or not: no push past the lease
            self.scheduleLeaseCheck(now: now)
        }
    }

    // MARK: The workload and its fence

    /// Carries out the supervisor's decisions. On the loop; signals are cheap, the shell commands
    /// run on the fence queue.
    private func carryOut(_ actions: [WorkloadSupervisor.Action]) {
        // A fence that is thawed within one heartbeat interval would never show in a beat: every
        // change of the fence goes out in a beat of its own, at once.
        let fenceChanged = actions.contains { action in
            switch action {
            case .freeze, .thaw, .kill: true
            case .start, .refuseGrant: false
            }
        }
        defer {
            if fenceChanged {
                heartbeatTick()
                runSnapshotSchedule()  // a snapshot in progress stops with the right to write
                runSyncSchedule()  // so does a sync pass: a fenced primary must not push
            }
        }
        for action in actions {
            switch action {
            case .start(let epoch):
                startWorkload(epoch: epoch)
            case .freeze(let epoch):
                let started = MonotonicClock.now()
                let frozen = workload?.freeze()
                logger.critical("lease expired: fencing this instance (reversible)", metadata: [
                    "epoch": "\(epoch)", "workload": "\(frozen.map { $0 ? "frozen" : "freeze failed" } ?? "none")",
                    "freeze_us": "\((MonotonicClock.now() - started) / 1_000)", "command": "\(configuration.fenceCommand ?? "-")",
                ])
                run(.fence, configuration.fenceCommand, epoch: epoch)
            case .thaw(let epoch, let frozenFor):
                let thawed = workload?.thaw()
                logger.notice("lease granted again at the same epoch: thawed", metadata: [
                    "epoch": "\(epoch)", "frozen_ms": "\(frozenFor / 1_000_000)",
                    "workload": "\(thawed.map { $0 ? "thawed" : "thaw failed" } ?? "none")",
                ])
                run(.thaw, configuration.thawCommand, epoch: epoch)
            case .kill(let epoch, let reason):
                let killed = workload?.killGroup()
                logger.critical("final fence: a newer epoch exists, the workload is killed", metadata: [
                    "epoch": "\(epoch)", "reason": "\(reason)", "workload": "\(killed.map { $0 ? "killed" : "gone" } ?? "none")",
                ])
                workload = nil
                WorkloadProcess.remember(nil, at: workloadStateFile)
            case .refuseGrant(let epoch, let highest):
                logger.warning("refused a lease grant below the highest epoch seen", metadata: [
                    "epoch": "\(epoch)", "highest_epoch": "\(highest)",
                ])
            }
        }
    }

    private func startWorkload(epoch: UInt64) {
        guard let command = configuration.workloadCommand, !command.isEmpty else { return }
        let environment = [
            "WARMPOOL_EPOCH=\(epoch)", "WARMPOOL_EPOCH_FILE=\(configuration.volume.path)/\(VolumeProbe.epochFile)",
        ]
        switch WorkloadProcess.start(command, environment: environment, epoch: epoch, exited: { [weak self] status in
            guard let self else { return }
            self.loop.execute { self.workloadExited(status: status, epoch: epoch) }
        }) {
        case .success(let process):
            workload = process
            mkdir(configuration.stateDirectory, 0o700)
            WorkloadProcess.remember(process, at: workloadStateFile)
            logger.notice("workload started", metadata: ["epoch": "\(epoch)", "pid": "\(process.group)"])
        case .failure(let error):
            logger.error("workload did not start", metadata: ["error": "\(error)"])
            supervisor.workloadExited(status: 127)
        }
    }

    private func workloadExited(status: Int32, epoch: UInt64) {
        guard let current = workload, current.epoch == epoch else { return }
        logger.notice("workload exited", metadata: ["epoch": "\(epoch)", "exit_status": "\(status)"])
        supervisor.workloadExited(status: status)
        workload = nil
        WorkloadProcess.remember(nil, at: workloadStateFile)
    }

    /// A workload a previous run of this agent started and left running (the agent crashed or was
    /// killed): frozen now, since this run holds no lease; thawed by a grant at its epoch.
    private func adoptLeftoverWorkload() {
        guard configuration.workloadCommand != nil, let (group, epoch) = WorkloadProcess.remembered(at: workloadStateFile) else { return }
        guard let process = WorkloadProcess.adopt(group: group, epoch: epoch) else {
            WorkloadProcess.remember(nil, at: workloadStateFile)
            return
        }
        let frozen = process.freeze()
        workload = process
        supervisor.adopted(epoch: epoch, now: MonotonicClock.now())
        logger.warning("found the workload of a previous run: frozen until a lease is granted", metadata: [
            "pid": "\(group)", "epoch": "\(epoch)", "frozen": "\(frozen)",
        ])
    }

    /// On shutdown: the workload goes with its agent (SIGTERM, then SIGKILL after 5 s).
    private func stopWorkload() {
        guard let process = workload else { return }
        workload = nil
        WorkloadProcess.remember(nil, at: workloadStateFile)
        process.signal(SIGTERM)
        process.signal(SIGCONT)
        fenceQueue.async {
            for _ in 0..<50 where process.isAlive { usleep(100_000) }
            if process.isAlive { _ = process.killGroup() }
        }
    }

    /// The workload as heartbeats and telemetry report it: fenced while fenced; else the supervised
    /// workload's state when the agent runs one; else what the probe saw.
    private var reportedWorkload: WorkloadState {
        if supervisor.fencedAtEpoch != nil { return .fenced }
        guard configuration.workloadCommand != nil else { return probeReport?.workload ?? .unknown }
        switch supervisor.workload {
        case .waiting: return .idle
        case .running: return .running
        case .frozen, .killed: return .fenced
        case .exited: return .stopped
        }
    }

    private func run(_ hook: Hook, _ command: String?, epoch: UInt64) {
        guard let command else { return }
        let logger = self.logger
        fenceQueue.async {
            let status = runShell(command, environment: ["WARMPOOL_FENCED_EPOCH=\(epoch)"])
            if status == 0 {
                logger.notice("\(hook.rawValue) finished")
            } else {
                logger.error("\(hook.rawValue) failed", metadata: ["exit_status": "\(status)"])
            }
            if hook == .fence { self.loop.execute { self.fenceCommandFailed = status != 0 } }
        }
    }

    // MARK: Probes and telemetry

    private func startProbing() {
        let configuration = self.configuration
        let queue = probeQueue
        let targetFile = UncheckedBox(syncTargetFile)
        @Sendable func probeForever(_ probes: UncheckedBox<HostProbes>) {
            let report = probes.value.probe()
            let reading = targetFile.value?.check()
            loop.execute {
                if let reading { self.syncTargetRead(reading) }
                self.received(report)
            }
            queue.asyncAfter(deadline: .now() + .nanoseconds(Int(configuration.probeIntervalNanoseconds))) {
                probeForever(probes)
            }
        }
        // Loading NVML can block too: it happens on the probe queue as well.
        queue.async {
            probeForever(UncheckedBox(HostProbes(
                volume: configuration.volume, nvmlLibrary: configuration.nvmlLibrary,
                workloadPIDFile: configuration.workloadPIDFile, sshHostKeyPath: configuration.sshHostKeyPath,
                checkpointPattern: configuration.checkpointPattern)))
        }
    }

    private func received(_ report: ProbeReport) {
        if let epoch = report.volume.epoch { carryOut(supervisor.learned(epoch: epoch, from: .volume, now: MonotonicClock.now())) }
        // A workload adopted from a previous run is not our child: its end is seen here.
        if let workload, !workload.isAlive {
            workloadExited(status: -1, epoch: workload.epoch)
        }
        if probeReport == nil || probeReport?.volume.problem != report.volume.problem {
            logger.info("volume probe", metadata: ["volume.problem": "\(report.volume.problem ?? "none")"])
        }
        if probeReport == nil {
            logger.info(
                "GPU probe", metadata: ["gpu.count": "\(report.gpu.gpus.count)", "gpu.problem": "\(report.gpu.problem ?? "none")"])
        }
        if probeReport == nil || probeReport?.sshHostKey != report.sshHostKey {
            logger.info("SSH host key", metadata: [
                "ssh.fingerprint": "\(report.sshHostKey ?? "none")", "ssh.key_file": "\(configuration.sshHostKeyPath ?? "none")",
            ])
            // The controller waits for it before its first SSH contact: tell it at the next beat,
            // not at the next telemetry interval (30 s by default).
            if report.sshHostKey != nil { nextTelemetryAt = 0 }
        }
        if let checkpoint = report.checkpoint, checkpoint.newestModifiedNanoseconds != probeReport?.checkpoint?.newestModifiedNanoseconds {
            // The recovery point moved: the controller's figure of the work a failover would lose
            // is only as fresh as its last telemetry.
            if checkpoint.newestModifiedNanoseconds != nil { nextTelemetryAt = 0 }
        }
        probeReport = report
        runSnapshotSchedule()
        runSyncSchedule()
    }

    // MARK: Snapshots

    private func runSnapshotSchedule() {
        guard var schedule = snapshots, !stopping else { return }
        let now = MonotonicClock.now()
        let mayWrite = supervisor.holdsLease(now: now) && supervisor.fencedAtEpoch == nil
        let decision = schedule.tick(now: now, mayWrite: mayWrite)
        snapshots = schedule
        switch decision {
        case .none:
            return
        case .cancel:
            logger.warning("snapshot cancelled: this instance no longer holds the lease", metadata: [
                "snapshot.pid": "\(snapshotRun.map { "\($0.group)" } ?? "-")",
            ])
            snapshotRun?.cancel()
        case .start:
            let environment = [
                "WARMPOOL_SNAPSHOT_SOURCE=\(configuration.volume.path)", "WARMPOOL_EPOCH=\(supervisor.knownEpoch)",
            ]
            let started = SnapshotProcess.start(configuration.snapshotCommand, environment: environment) { [weak self] (outcome: SnapshotSchedule.Outcome) in
                guard let self else { return }
                self.loop.execute { self.snapshotFinished(outcome) }
            }
            switch started {
            case .success(let process):
                snapshotRun = process
                logger.info("snapshot started", metadata: ["snapshot.pid": "\(process.group)"])
            case .failure(let error):
                snapshotFinished(.failed("did not start: \(error)"))
            }
        }
    }

    private func snapshotFinished(_ outcome: SnapshotSchedule.Outcome) {
        snapshotRun = nil
        snapshots?.finished(outcome, now: MonotonicClock.now())
        switch outcome {
        case .succeeded(let id):
            logger.notice("snapshot taken", metadata: ["snapshot.id": "\(id ?? "-")"])
        case .failed(let reason):
            logger.error("snapshot failed", metadata: [
                "snapshot.error": "\(reason)", "snapshot.failures_in_a_row": "\(snapshots?.failuresInARow ?? 0)",
            ])
        }
        nextTelemetryAt = 0  // the controller's view of the recovery point changes now
    }

    // MARK: Sync to the CPU standby

    private func syncTargetRead(_ reading: SyncTargetReading) {
        guard var schedule = sync, !stopping, reading != syncReading else { return }
        let previous = syncReading
        syncReading = reading
        let action = schedule.targetRead(reading, now: MonotonicClock.now())
        sync = schedule
        switch reading {
        case .absent where previous == nil: break  // no target at start: the usual case, nothing to say
        case .absent: logger.notice("sync target removed: sync off", metadata: ["sync.file": "\(configuration.syncTargetFile ?? "-")"])
        case .malformed(let reason): logger.error("sync target unusable: sync off", metadata: ["sync.error": "\(reason)"])
        case .target(let target):
            logger.notice("sync target", metadata: [
                "sync.target": "\(target.name)", "sync.destination": "\(target.destination)", "sync.epoch": "\(target.epoch)",
            ])
        }
        carryOut(action)
        nextTelemetryAt = 0
        runSyncSchedule()
    }

    private func runSyncSchedule() {
        guard var schedule = sync, !stopping else { return }
        let now = MonotonicClock.now()
        let leaseEpoch = supervisor.holdsLease(now: now) && supervisor.fencedAtEpoch == nil ? supervisor.knownEpoch : nil
        let before = schedule.state
        let action = schedule.tick(now: now, leaseEpoch: leaseEpoch)
        sync = schedule
        carryOut(action)
        if schedule.state != before { nextTelemetryAt = 0 }
        let wakeAt = schedule.running == nil && schedule.mayPush ? schedule.nextAt.flatMap { $0 > now ? $0 : nil } : nil
        guard wakeAt != syncTimerAt else { return }
        syncTimer?.cancel()
        syncTimer = nil
        syncTimerAt = wakeAt
        if let wakeAt {
            syncTimer = loop.scheduleTask(in: .nanoseconds(wakeAt - now)) {
                self.syncTimerAt = nil
                self.runSyncSchedule()
            }
        }
    }

    private func carryOut(_ action: SyncSchedule.Action) {
        switch action {
        case .none:
            return
        case .cancel(let pass):
            logger.warning("sync pass cancelled: the lease or the target changed", metadata: [
                "sync.pass": "\(pass)", "sync.pid": "\(syncRun?.group.map { "\($0)" } ?? "-")",
            ])
            syncRun?.cancel()
            syncRun = nil
        case .start(let pass, let target):
            guard let setup = syncSetup else { return }
            syncRun = SyncPass.start(pass: pass, target: target, epoch: target.epoch, setup: setup) { [weak self] run, outcome in
                guard let self else { return }
                self.loop.execute { self.syncFinished(run, outcome) }
            }
            logger.debug("sync pass started", metadata: ["sync.pass": "\(pass)", "sync.target": "\(target.name)"])
        }
    }

    /// A pass ended. One cancelled meanwhile (its end was already on its way here) is not counted.
    private func syncFinished(_ run: SyncPass, _ outcome: SyncSchedule.Outcome) {
        guard syncRun === run, var schedule = sync else { return }
        syncRun = nil
        let pass = run.pass
        let failuresBefore = schedule.failuresInARow
        schedule.finished(pass: pass, outcome, now: MonotonicClock.now())
        sync = schedule
        switch outcome {
        case .succeeded(let result):
            if failuresBefore > 0 { logger.notice("sync recovered", metadata: ["sync.pass": "\(pass)"]) }
            logger.debug("sync pass done", metadata: [
                "sync.pass": "\(pass)", "sync.sent_bytes": "\(result.sentBytes ?? -1)", "sync.files_pending": "\(result.pendingFiles)",
            ])
        case .failed(let reason):
            // Every failure while it keeps failing would flood the log at one line a second.
            if failuresBefore == 0 || schedule.failuresInARow.nonzeroBitCount == 1 {
                logger.error("sync pass failed", metadata: ["sync.error": "\(reason)", "sync.failures": "\(schedule.failuresInARow)"])
            }
        }
        nextTelemetryAt = 0
        runSyncSchedule()
    }

    private func syncWantsTelemetry(now: Int64) -> Bool {
        guard let sync, sync.target != nil, sync.mayPush else { return false }
        return now - lastTelemetryAt >= 2_000_000_000
    }

    private func telemetryDocument() -> [UInt8]? {
        TelemetryDocument(
            agentID: configuration.agentID, instanceID: configuration.instanceID, machineID: configuration.machineID,
            role: configuration.role.description, version: warmpoolAgentVersion, epoch: supervisor.knownEpoch,
            fencedAtEpoch: supervisor.fencedAtEpoch,
            fence: supervisor.fenceIsFinal ? "final" : supervisor.fencedAtEpoch != nil ? "frozen" : nil,
            workload: "\(reportedWorkload)",
            volume: probeReport?.volume, gpu: probeReport?.gpu, sshHostKey: probeReport?.sshHostKey,
            checkpoint: probeReport?.checkpoint.map { CheckpointTelemetry($0, wallNow: SystemWallClock().now().nanosecondsSinceEpoch) },
            snapshot: snapshots.map { SnapshotTelemetry($0, now: MonotonicClock.now()) },
            sync: sync.flatMap { $0.target != nil || $0.targetProblem != nil ? SyncTelemetry($0, now: MonotonicClock.now()) : nil }
        ).json()
    }
}

/// Hands a non-Sendable value to the one serial queue that uses it.
private final class UncheckedBox<Value>: @unchecked Sendable {
    let value: Value
    init(_ value: Value) { self.value = value }
}
