import Foundation
import Logging
import NIOCore
import NIOPosix
import ServiceLifecycle
import Synchronization
import WarmpoolModel
import WarmpoolWire

/// The agent-facing listener and the detector's clock, as one service: binds, ticks the detector,
/// re-reads the agent keys (keys file and store) when they change, and on graceful shutdown stops
/// accepting and closes.
public final class LivenessService: Service {
    public struct Configuration: Sendable {
        public var host: String
        public var port: Int
        /// Optional: agents can also be registered in the store only.
        public var keysFile: String?
        public var hub: LivenessHub.Configuration

        public init(host: String, port: Int, keysFile: String?, hub: LivenessHub.Configuration) {
            self.host = host
            self.port = port
            self.keysFile = keysFile
            self.hub = hub
        }
    }

    public let hub: LivenessHub
    private let configuration: Configuration
    private let group: MultiThreadedEventLoopGroup
    private let logger: Logger
    private let onListening: @Sendable (SocketAddress) -> Void
    private let storedKeys: @Sendable () async throws -> Keyring
    /// Reloads numbered as they begin, and the newest one applied: a reload that read the
    /// sources before another must never replace what that one installed (it could drop a key
    /// minted in between).
    private let reloads = Mutex<(started: UInt64, applied: UInt64)>((0, 0))

    /// `storedKeys` reads the agents registered in the store; they are merged with the keys file.
    public init(
        configuration: Configuration, epoch: Epoch, bus: LivenessEventBus, group: MultiThreadedEventLoopGroup,
        logger: Logger, storedKeys: @escaping @Sendable () async throws -> Keyring = { Keyring() },
        onListening: @escaping @Sendable (SocketAddress) -> Void = { _ in }
    ) throws {
        self.configuration = configuration
        self.group = group
        self.logger = logger
        self.onListening = onListening
        self.storedKeys = storedKeys
        let keyring = try configuration.keysFile.map { try KeyFile.load(path: $0) } ?? Keyring()
        self.hub = LivenessHub(configuration: configuration.hub, keyring: keyring, epoch: epoch, bus: bus)
        logger.info("loaded agent keys", metadata: ["keys.file": "\(configuration.keysFile ?? "none")", "keys.count": "\(keyring.count)"])
    }

    /// Rebuilds the keyring from the keys file and the store. A source that fails to read keeps
    /// the previous keyring in force, with an error logged: a typo must not lock every agent out.
    public func reloadKeys() async {
        let generation = reloads.withLock { state -> UInt64 in
            state.started += 1
            return state.started
        }
        do {
            let fromFile = try configuration.keysFile.map { try KeyFile.load(path: $0) } ?? Keyring()
            let fromStore = try await storedKeys()
            let overlap = fromFile.agentIDs.intersection(fromStore.agentIDs)
            if !overlap.isEmpty {
                logger.warning("agents in both the keys file and the store; the store's key wins", metadata: ["agents": "\(overlap.sorted())"])
            }
            let keyring = fromFile.merging(fromStore)
            let installed = reloads.withLock { state -> Bool in
                guard generation > state.applied else { return false }
                state.applied = generation
                hub.replaceKeyring(keyring)
                return true
            }
            guard installed else {
                logger.debug("agent keys read by a reload older than the one in force: dropped", metadata: ["reload": "\(generation)"])
                return
            }
            logger.info("agent keys loaded", metadata: ["keys.count": "\(keyring.count)"])
        } catch {
            logger.error("agent keys unreadable, keeping the previous keys", metadata: ["error": "\(error)"])
        }
    }

    public func run() async throws {
        await reloadKeys()
        let hub = self.hub
        let logger = self.logger
        let listener = try AgentListener(
            host: configuration.host, port: configuration.port, hub: hub, logger: logger)
        listener.start()
        logger.info("listening for agents", metadata: ["address": "\(listener.localAddress)"])
        onListening(listener.localAddress)

        // The tick bounds how late a failure is noticed: a fifth of an interval, at most 10 ms.
        let tickNanoseconds = min(10_000_000, configuration.hub.detector.heartbeatInterval.nanoseconds / 5)
        let lateness = TickLateness(logger: logger, period: tickNanoseconds)
        let ticker = group.next().scheduleRepeatedTask(
            initialDelay: .nanoseconds(tickNanoseconds), delay: .nanoseconds(tickNanoseconds)
        ) { _ in
            lateness.ticked()
            hub.tick()
        }

        await withGracefulShutdownHandler {
            await withTaskGroup(of: Void.self) { tasks in
                tasks.addTask { await listener.stopped() }
                tasks.addTask { await self.watchKeysFile() }
                await tasks.next()
                listener.stop()
            }
        } onGracefulShutdown: {
            logger.info("shutting down: closing the agent listener")
            ticker.cancel()
            listener.stop()
        }
    }

    /// Agents can be added without a restart: the keys file is re-read when its mtime changes.
    private func watchKeysFile() async {
        guard let path = configuration.keysFile else {
            try? await gracefulShutdown()
            return
        }
        var lastModified = Self.modificationDate(path)
        while !Task.isCancelled, !Task.isShuttingDownGracefully {
            try? await Task.sleep(for: .seconds(1))
            let modified = Self.modificationDate(path)
            guard modified != lastModified else { continue }
            lastModified = modified
            await reloadKeys()
        }
    }

    private static func modificationDate(_ path: String) -> Date? {
        (try? FileManager.default.attributesOfItem(atPath: path))?[.modificationDate] as? Date
    }
}

/// Notices when the detector's tick runs late: an overloaded event loop delays heartbeats and the
/// verdicts on them alike, and a false failure under load is then the controller's own doing.
/// Logs the worst delay of each 5-second window that had one over 50 ms. Used on the ticker's
/// event loop only.
private final class TickLateness: @unchecked Sendable {
    private let logger: Logger
    private let period: Int64
    private var previous = MonotonicClock.now()
    private var worst: Int64 = 0
    private var windowEndsAt = MonotonicClock.now() + 5_000_000_000

    init(logger: Logger, period: Int64) {
        self.logger = logger
        self.period = period
    }

    func ticked() {
        let now = MonotonicClock.now()
        worst = max(worst, now - previous - period)
        previous = now
        guard now >= windowEndsAt else { return }
        if worst > 50_000_000 {
            logger.warning("detector tick ran late: the event loop is overloaded", metadata: ["late_ms": "\(worst / 1_000_000)"])
        }
        worst = 0
        windowEndsAt = now + 5_000_000_000
    }
}
