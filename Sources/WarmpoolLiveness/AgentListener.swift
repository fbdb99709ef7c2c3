import CEpoll
import Foundation
import Glibc
import Logging
import NIOConcurrencyHelpers
import NIOCore
import WarmpoolModel
import WarmpoolWire

/// What the hub needs of a live agent connection: a way to end it from any thread.
protocol AgentConnectionCloser: Sendable {
    func close()
}

/// The agents' TCP connections, on one thread of their own: epoll, nonblocking reads and writes,
/// and each connection's `ControllerSessionStateMachine` fed and obeyed. It owns no protocol
/// logic.
///
/// Not NIO, on purpose: this is the controller's hottest path, a read per heartbeat of every agent
/// (100,000 a second at 10,000 agents), and a profile at 5,000 agents put ~40 % of the
/// controller's CPU in user space, most of it in NIO's per-read machinery (selector registration
/// boxes, pipeline hops, the adaptive buffer allocator, retain/release around each) rather than in
/// the protocol. Here a beat costs one `read` into a buffer the loop reuses, the parse and MAC, and
/// the detector. Heartbeats, handshakes and grants behave exactly as before: the state machine
/// decides, this only carries out.
final class AgentListener: @unchecked Sendable {
    private let hub: LivenessHub
    private let logger: Logger
    private let listenFD: Int32
    private let epollFD: Int32
    /// Written to wake the loop for `commands` (closes requested by other threads, and stop).
    private let wakeFD: Int32
    /// Requests from other threads; `ended` once the loop has closed `wakeFD`, after which
    /// nothing may write to it (its number may already belong to another file).
    private let commands = NIOLockedValueBox<(pending: [Command], ended: Bool)>(([], false))
    /// The bound address, for the ready file and logs.
    let localAddress: SocketAddress

    private enum Command {
        case close(SessionID)
        case stop
    }

    private let limits: ConnectionLimits
    /// Connections in all, from the descriptor limit less the reserve; read again every scan, as
    /// the limit can be lowered under a running process (`prlimit`), and a process out of
    /// descriptors dies (libdispatch traps when it cannot open /proc files).
    private var maximumConnections: Int
    /// Held open so that, out of descriptors, one can be freed to accept and close the newest
    /// connection: level-triggered epoll would otherwise wake for the same backlog forever.
    private var reserveFD: Int32

    // Loop state, touched only by the loop's thread.
    private var connections: [Int32: Connection] = [:]
    private var sessions: [SessionID: Int32] = [:]
    /// Connections still in their handshake, to time out.
    private var handshaking: Set<Int32> = []
    /// The same in the order they were accepted, the oldest first (entries that have left the
    /// handshake are skipped and dropped lazily), and counted per source address.
    private var handshakeOrder: [Connection] = []
    private var handshakeOrderStart = 0
    private var handshakingByAddress: [String: Int] = [:]
    private var readBuffer = ByteBuffer()
    private var writeBuffer = ByteBuffer()
    private var nextIdleScanAt: Int64 = 0
    /// Unauthenticated peers are not worth a log line each: a flood would fill the disk.
    private var anonymousLog = ThrottledLog(linesPerSecond: 20)

    private static let listenTag: UInt64 = .max
    private static let wakeTag: UInt64 = .max - 1
    private static let readSize = 65_536
    private static let maximumPending = 65_536
    /// Accepts per wake-up: the rest of a backlog waits a turn, so a burst of connections
    /// cannot hold up the reads of established sessions.
    private static let acceptsPerWake = 64

    /// Binds and listens at once, so a port in use fails the start, not the first agent.
    init(host: String, port: Int, hub: LivenessHub, logger: Logger) throws {
        self.hub = hub
        self.logger = logger
        self.limits = hub.configuration.limits
        let descriptors = ConnectionLimits.raiseDescriptorLimit()
        self.maximumConnections = limits.maximumConnections(descriptors: descriptors)
        logger.info("agent connections: at most \(maximumConnections) (descriptor limit \(descriptors))")
        self.reserveFD = open("/dev/null", O_RDONLY | O_CLOEXEC)
        let address = try SocketAddress.makeAddressResolvingHost(host, port: port)
        let fd = socket(Int32(address.protocol.rawValue), Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw ListenerError("socket", errno) }
        var one: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        let bound = address.withSockAddr { pointer, size in bind(fd, pointer, socklen_t(size)) }
        guard bound == 0, listen(fd, 4096) == 0 else {
            let error = ListenerError("bind \(host):\(port)", errno)
            close(fd)
            throw error
        }
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        _ = withUnsafeMutablePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        self.localAddress = try Self.address(storage)
        self.listenFD = fd
        self.epollFD = epoll_create1(Int32(EPOLL_CLOEXEC))
        self.wakeFD = eventfd(0, Int32(EFD_NONBLOCK) | Int32(EFD_CLOEXEC))
        guard epollFD >= 0, wakeFD >= 0 else { throw ListenerError("epoll", errno) }
        watch(listenFD, tag: Self.listenTag, events: EPOLLIN.rawValue)
        watch(wakeFD, tag: Self.wakeTag, events: EPOLLIN.rawValue)
    }

    /// Set when the loop has ended; `stopped()` waits on it.
    private let finished = NIOLockedValueBox<(done: Bool, waiters: [CheckedContinuation<Void, Never>])>((false, []))

    /// Starts serving on a thread of its own, until `stop()`.
    func start() {
        Thread { [self] in
            loop()
            let waiters = finished.withLockedValue { state in
                state.done = true
                defer { state.waiters.removeAll() }
                return state.waiters
            }
            for waiter in waiters { waiter.resume() }
        }.start()
    }

    /// Returns once the loop has ended and every connection is closed.
    func stopped() async {
        await withCheckedContinuation { (waiter: CheckedContinuation<Void, Never>) in
            let done = finished.withLockedValue { state in
                if !state.done { state.waiters.append(waiter) }
                return state.done
            }
            if done { waiter.resume() }
        }
    }

    /// Stops accepting and closes every connection; safe from any thread.
    func stop() { submit(.stop) }

    private func submit(_ command: Command) {
        commands.withLockedValue { commands in
            guard !commands.ended else { return }
            commands.pending.append(command)
            var one: UInt64 = 1
            _ = write(wakeFD, &one, 8)
        }
    }

    // MARK: - The loop

    private func loop() {
        var events = [epoll_event](repeating: epoll_event(), count: 512)
        let handshakeTimeout = hub.configuration.handshakeTimeout.milliseconds
        let idleTimeout = hub.configuration.sessionIdleTimeout.nanoseconds
        while true {
            let ready = epoll_wait(epollFD, &events, Int32(events.count), wakeTimeoutMilliseconds)
            if ready < 0 {
                guard errno == EINTR else {
                    logger.critical("epoll_wait failed; the agent listener stops", metadata: ["errno": "\(errno)"])
                    break
                }
                continue
            }
            var stopping = false
            for event in events[0..<Int(ready)] {
                switch event.data.u64 {
                case Self.listenTag:
                    acceptAll()
                case Self.wakeTag:
                    stopping = drainCommands() || stopping
                default:
                    let fd = Int32(truncatingIfNeeded: event.data.u64)
                    guard let connection = connections[fd] else { continue }
                    if event.events & (EPOLLIN.rawValue | EPOLLHUP.rawValue | EPOLLERR.rawValue) != 0 {
                        readable(connection)
                    }
                    if event.events & EPOLLOUT.rawValue != 0, connections[fd] === connection {
                        flush(connection)
                    }
                }
            }
            if stopping { break }
            let now = MonotonicClock.now()
            if !handshaking.isEmpty {
                for fd in handshaking {
                    guard let connection = connections[fd], now >= connection.handshakeDeadline else { continue }
                    run(connection.machine.handshakeTimerFired(after: handshakeTimeout), on: connection)
                }
            }
            if now >= nextIdleScanAt {
                nextIdleScanAt = now + 500_000_000
                closeIdleSessions(now: now, timeout: idleTimeout)
                compactHandshakeOrder()
                maximumConnections = limits.maximumConnections(descriptors: ConnectionLimits.currentDescriptorLimit())
            }
            anonymousLog.flush(now: now, into: logger)
        }
        for connection in Array(connections.values) { closeConnection(connection) }
        if reserveFD >= 0 { close(reserveFD) }
        close(listenFD)
        commands.withLockedValue { commands in
            commands.ended = true
            close(wakeFD)
        }
        close(epollFD)
    }

    /// Handshakes are timed to the nearest 100 ms at worst, idle sessions to the nearest 500 ms;
    /// with nothing open the loop sleeps until a connection comes, or the log's summary is due.
    private var wakeTimeoutMilliseconds: Int32 {
        if !handshaking.isEmpty { return 100 }
        if !connections.isEmpty { return 500 }
        return anonymousLog.isQuiet ? -1 : 1_000
    }

    private func drainCommands() -> Bool {
        var count: UInt64 = 0
        _ = read(wakeFD, &count, 8)
        var stop = false
        let pending = commands.withLockedValue { commands in
            defer { commands.pending.removeAll() }
            return commands.pending
        }
        for command in pending {
            switch command {
            case .stop:
                stop = true
            case .close(let session):
                if let fd = sessions[session], let connection = connections[fd] {
                    connection.logger.info("closing: the agent's key was revoked or changed")
                    closeConnection(connection)
                }
            }
        }
        return stop
    }

    private func acceptAll() {
        for _ in 0..<Self.acceptsPerWake {
            var storage = sockaddr_storage()
            var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
            let fd = withUnsafeMutablePointer(to: &storage) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { accept(listenFD, $0, &length) }
            }
            guard fd >= 0 else {
                let error = errno
                if error == EINTR || error == ECONNABORTED { continue }
                if error == EAGAIN || error == EWOULDBLOCK { return }
                if error == EMFILE || error == ENFILE { shedWithReserve() }
                anonymousLog.note("accept failed: \(String(cString: strerror(error)))", now: MonotonicClock.now(), into: logger)
                return
            }
            // accept4 is not in Swift's Glibc module; two fcntls per connection do the same.
            _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
            _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
            let peer = try? Self.address(storage)
            let address = peer?.ipAddress ?? "?"
            guard makeRoom(for: address) else {
                close(fd)
                anonymousLog.note(
                    "refused a connection: \(maximumConnections) connections open, none of them unauthenticated",
                    now: MonotonicClock.now(), into: logger)
                continue
            }
            var one: Int32 = 1
            setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
            let (session, keyring, epoch) = hub.openSession()
            var connectionLogger = logger
            connectionLogger[metadataKey: "session.id"] = "\(session)"
            if let peer { connectionLogger[metadataKey: "peer"] = "\(peer)" }
            let now = MonotonicClock.now()
            let connection = Connection(
                fd: fd, session: session, address: address,
                machine: ControllerSessionStateMachine(
                    keyring: keyring, serverNonce: HandshakeCrypto.randomNonce(), terms: hub.configuration.terms,
                    epoch: epoch.rawValue),
                handshakeDeadline: now + hub.configuration.handshakeTimeout.nanoseconds,
                tokens: limits.byteBurst, now: now, logger: connectionLogger)
            connections[fd] = connection
            sessions[session] = fd
            handshaking.insert(fd)
            handshakeOrder.append(connection)
            handshakingByAddress[address, default: 0] += 1
            watch(fd, tag: UInt64(fd), events: EPOLLIN.rawValue)
        }
    }

    /// Out of descriptors: the reserve is given up to accept the newest connection and close it
    /// at once, then taken back. The backlog drains, and nothing spins.
    private func shedWithReserve() {
        guard reserveFD >= 0 else { return }
        close(reserveFD)
        let fd = accept(listenFD, nil, nil)
        if fd >= 0 { close(fd) }
        reserveFD = open("/dev/null", O_RDONLY | O_CLOEXEC)
    }

    /// Makes room for one more connection from `address` by closing the oldest unauthenticated
    /// one, of that address first, where a cap is reached; false when every connection is
    /// authenticated and none may be closed.
    private func makeRoom(for address: String) -> Bool {
        if handshakingByAddress[address, default: 0] >= limits.unauthenticatedPerAddress,
            let oldest = oldestHandshake(from: address)
        {
            evict(oldest, cap: "\(limits.unauthenticatedPerAddress) per address")
        }
        if handshaking.count >= limits.unauthenticated, let oldest = oldestHandshake(from: nil) {
            evict(oldest, cap: "\(limits.unauthenticated) in all")
        }
        guard connections.count >= maximumConnections else { return true }
        guard let oldest = oldestHandshake(from: nil) else { return false }
        evict(oldest, cap: "\(maximumConnections) connections")
        return true
    }

    private func oldestHandshake(from address: String?) -> Connection? {
        // Skip the front entries that have left the handshake; `compactHandshakeOrder` drops them.
        while handshakeOrderStart < handshakeOrder.count, !isHandshaking(handshakeOrder[handshakeOrderStart]) {
            handshakeOrderStart += 1
        }
        return handshakeOrder[handshakeOrderStart...].first { isHandshaking($0) && (address == nil || $0.address == address) }
    }

    /// Established and closed connections leave the order only lazily: drop them now and then,
    /// so it never holds more than the handshakes in flight and a bounded backlog.
    private func compactHandshakeOrder() {
        guard handshakeOrder.count - handshakeOrderStart > 2 * handshaking.count + 1_024 else { return }
        handshakeOrder = handshakeOrder[handshakeOrderStart...].filter(isHandshaking)
        handshakeOrderStart = 0
    }

    private func isHandshaking(_ connection: Connection) -> Bool {
        connections[connection.fd] === connection && handshaking.contains(connection.fd)
    }

    private func evict(_ connection: Connection, cap: String) {
        anonymousLog.note("closed the oldest unauthenticated connection: the cap of \(cap) was reached", now: MonotonicClock.now(), into: logger)
        closeConnection(connection)
    }

    /// Closes established sessions that have delivered no complete frame within `timeout`.
    private func closeIdleSessions(now: Int64, timeout: Int64) {
        for connection in connections.values where connection.registered != nil && now - connection.lastFrameAt > timeout {
            connection.logger.warning("closing connection: no complete frame for \((now - connection.lastFrameAt) / 1_000_000) ms")
            closeConnection(connection)
        }
    }

    /// One read per wake-up (epoll is level-triggered: a fuller socket wakes us again), split into
    /// frames in place; only a frame cut off at the end is copied, to wait for the rest.
    private func readable(_ connection: Connection) {
        let now = MonotonicClock.now()
        readBuffer.clear()
        if var partial = connection.partial { readBuffer.writeBuffer(&partial) }
        var readError: Int32 = 0
        let count = readBuffer.writeWithUnsafeMutableBytes(minimumWritableBytes: Self.readSize) { space in
            let count = read(connection.fd, space.baseAddress, space.count)
            if count < 0 { readError = errno }
            return max(count, 0)
        }
        guard count > 0 else {
            // EAGAIN: a spurious wake-up, and `partial` is still there. Otherwise end of stream
            // or an error: a frame cut off by it is dropped with the connection.
            if readError == EAGAIN || readError == EWOULDBLOCK || readError == EINTR { return }
            closeConnection(connection)
            return
        }
        connection.partial = nil
        guard !connection.stopped else { return }
        guard connection.spend(count, now: now, limits: limits) else {
            connection.stopped = true
            closeLogged(connection, because: "over its byte budget of \(limits.bytesPerSecond) bytes a second (burst \(limits.byteBurst))")
            return
        }
        do throws(ProtocolViolation) {
            while !connection.stopped {
                // Before authentication nothing legitimate is longer than a Hello.
                let parser = connection.registered == nil
                    ? FrameParser(maximumLength: limits.preAuthenticationFrameLength) : FrameParser()
                guard let frame = try parser.parse(&readBuffer) else { break }
                connection.lastFrameAt = now
                run(connection.machine.frameReceived(frame), on: connection)
            }
        } catch {
            connection.stopped = true
            run(connection.machine.decodeFailed(error), on: connection)
            return
        }
        if !connection.stopped, readBuffer.readableBytes > 0, connections[connection.fd] === connection {
            // A copy of its own: the shared buffer is reused for the next connection's read.
            var rest = ByteBufferAllocator().buffer(capacity: readBuffer.readableBytes)
            rest.writeBuffer(&readBuffer)
            connection.partial = rest
        }
    }

    private func run(_ action: ControllerSessionStateMachine.Action, on connection: Connection) {
        switch action {
        case .none:
            break
        case .telemetry(let telemetry):
            // What decompression produced counts against the budget too: a few hundred bytes of
            // zstd can make a megabyte, and the next such frame must not be opened.
            if telemetry.document.count > 0, !connection.spend(telemetry.document.count, now: MonotonicClock.now(), limits: limits) {
                connection.stopped = true
                closeLogged(connection, because: "over its byte budget of \(limits.bytesPerSecond) bytes a second (decompressed telemetry counts)")
                return
            }
            connection.logger.debug("telemetry received", metadata: ["telemetry.bytes": "\(telemetry.document.count)"])
            if let problem = hub.telemetryReceived(connection.session, document: telemetry.document) {
                connection.logger.warning("telemetry ignored: \(problem)")
            }
        case .send(let frame):
            send(frame, on: connection)
        case .established(let identity, let fencedAtEpoch, let welcome):
            leaveHandshake(connection)
            connection.logger[metadataKey: "agent.id"] = "\(identity.agentID)"
            switch hub.admit(
                connection.session, agent: identity, secret: connection.machine.keyring.secret(for: identity.agentID),
                fencedAtEpoch: fencedAtEpoch, closer: SessionCloser(listener: self, session: connection.session))
            {
            case .refused(let refusal):
                connection.stopped = true
                connection.logger.warning("closing connection: \(refusal)")
                closeConnection(connection)
                return
            case .admitted(let slot):
                connection.slot = slot
            }
            connection.registered = identity.agentID
            connection.logger.info(
                "agent authenticated",
                metadata: [
                    "agent.instance_id": "\(identity.instanceID)", "agent.machine_id": "\(identity.machineID)",
                    "agent.role": "\(identity.role)", "agent.version": "\(identity.softwareVersion)",
                ])
            send(welcome, on: connection)
        case .heartbeat(let heartbeat):
            guard let slot = connection.slot else { return }
            let (now, leaseEpoch) = hub.heartbeat(
                connection.session, slot: slot, sentAt: heartbeat.sentAtMilliseconds, status: heartbeat.status,
                lastGrantAt: connection.lastLeaseGrantAt)
            if let leaseEpoch,
                let grant = connection.machine.sealLease(
                    acknowledgedSequence: heartbeat.sequence, leaseMilliseconds: hub.configuration.leaseMilliseconds,
                    epoch: leaseEpoch.rawValue)
            {
                connection.lastLeaseGrantAt = now
                send(grant, on: connection)
            }
        case .goodbye(let goodbye):
            connection.saidGoodbye = true
            connection.logger.info("agent said goodbye", metadata: ["reason": "\(goodbye.reason)"])
        case .close(let reason, let reject):
            connection.stopped = true
            if let reject {
                logClose(connection, because: reason.description)
                writeBuffer.clear()
                reject.write(into: &writeBuffer)
                connection.closeWhenFlushed = true
                queue(&writeBuffer, on: connection)
            } else {
                closeLogged(connection, because: reason.description)
            }
        }
    }

    private func closeLogged(_ connection: Connection, because reason: String) {
        logClose(connection, because: reason)
        closeConnection(connection)
    }

    private func logClose(_ connection: Connection, because reason: String) {
        if connection.registered == nil {
            anonymousLog.note("closing unauthenticated connection: \(reason)", now: MonotonicClock.now(), into: connection.logger)
        } else {
            connection.logger.warning("closing connection: \(reason)")
        }
    }

    private func leaveHandshake(_ connection: Connection) {
        guard handshaking.remove(connection.fd) != nil else { return }
        if let count = handshakingByAddress[connection.address], count > 1 {
            handshakingByAddress[connection.address] = count - 1
        } else {
            handshakingByAddress[connection.address] = nil
        }
    }

    private func send(_ frame: Frame, on connection: Connection) {
        writeBuffer.clear()
        frame.write(into: &writeBuffer)
        queue(&writeBuffer, on: connection)
    }

    /// Writes at once when nothing is queued (the usual case: a grant fits any socket buffer), and
    /// queues what the socket did not take, to be written when epoll says it can.
    private func queue(_ bytes: inout ByteBuffer, on connection: Connection) {
        if connection.pending == nil {
            let written = bytes.withUnsafeReadableBytes { write(connection.fd, $0.baseAddress, $0.count) }
            if written < 0, errno != EAGAIN, errno != EWOULDBLOCK, errno != EINTR {
                closeLogged(connection, because: "write failed: \(String(cString: strerror(errno)))")
                return
            }
            bytes.moveReaderIndex(forwardBy: max(written, 0))
            if bytes.readableBytes == 0 {
                if connection.closeWhenFlushed { closeConnection(connection) }
                return
            }
            var pending = ByteBufferAllocator().buffer(capacity: bytes.readableBytes)
            pending.writeBuffer(&bytes)
            connection.pending = pending
            watch(connection.fd, tag: UInt64(connection.fd), events: EPOLLIN.rawValue | EPOLLOUT.rawValue, modify: true)
        } else {
            connection.pending?.writeBuffer(&bytes)
            // A grant is 15 bytes twice a second: a peer that lets this much pile up is not reading.
            let unsent = connection.pending?.readableBytes ?? 0
            if unsent > Self.maximumPending {
                connection.logger.warning("closing connection: the agent is not reading (\(unsent) bytes unsent)")
                closeConnection(connection)
            }
        }
    }

    private func flush(_ connection: Connection) {
        guard var pending = connection.pending else { return }
        let written = pending.withUnsafeReadableBytes { write(connection.fd, $0.baseAddress, $0.count) }
        if written < 0 {
            if errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR { return }
            closeLogged(connection, because: "write failed: \(String(cString: strerror(errno)))")
            return
        }
        pending.moveReaderIndex(forwardBy: written)
        guard pending.readableBytes == 0 else {
            connection.pending = pending
            return
        }
        connection.pending = nil
        if connection.closeWhenFlushed {
            closeConnection(connection)
        } else {
            watch(connection.fd, tag: UInt64(connection.fd), events: EPOLLIN.rawValue, modify: true)
        }
    }

    private func closeConnection(_ connection: Connection) {
        guard connections[connection.fd] === connection else { return }
        epoll_ctl(epollFD, EPOLL_CTL_DEL, connection.fd, nil)
        close(connection.fd)
        connections[connection.fd] = nil
        sessions[connection.session] = nil
        leaveHandshake(connection)
        // The one way out for every connection, whoever ends it and why: an established session
        // is unregistered here and nowhere else. The state machine forgets its identity when it
        // fails a frame, so the registration is kept on the connection, not asked of the machine.
        if let agentID = connection.registered {
            connection.logger.info("session closed", metadata: ["graceful": "\(connection.saidGoodbye)"])
            hub.sessionClosed(connection.session, agentID: agentID, graceful: connection.saidGoodbye)
        }
        connection.machine.closed()
    }

    private func watch(_ fd: Int32, tag: UInt64, events: UInt32, modify: Bool = false) {
        var event = epoll_event()
        event.events = events
        event.data.u64 = tag
        epoll_ctl(epollFD, modify ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, fd, &event)
    }

    private static func address(_ storage: sockaddr_storage) throws -> SocketAddress {
        var storage = storage
        switch Int32(storage.ss_family) {
        case AF_INET:
            return withUnsafeBytes(of: &storage) { SocketAddress($0.load(as: sockaddr_in.self), host: "") }
        case AF_INET6:
            return withUnsafeBytes(of: &storage) { SocketAddress($0.load(as: sockaddr_in6.self), host: "") }
        default:
            throw ListenerError("address family \(storage.ss_family)", 0)
        }
    }

    /// One connection's state; touched only by the loop's thread.
    private final class Connection {
        let fd: Int32
        let session: SessionID
        /// The peer's address, for the per-address cap.
        let address: String
        var machine: ControllerSessionStateMachine
        let handshakeDeadline: Int64
        var logger: Logger
        /// When the last complete frame arrived (accept time before the first).
        var lastFrameAt: Int64
        /// The byte budget's bucket, and when it was last refilled.
        var tokens: Int
        var tokensAt: Int64
        /// The start of a frame whose bytes have not all arrived; nil when the last read ended on
        /// a frame boundary, as beats almost always do.
        var partial: ByteBuffer?
        /// Bytes the socket has not taken yet.
        var pending: ByteBuffer?
        /// Set once the stream is unusable (a violation) or closing: later bytes are dropped.
        var stopped = false
        var closeWhenFlushed = false
        var lastLeaseGrantAt: Int64?
        var saidGoodbye = false
        /// The agent this session was registered for with the hub, from establishment to close.
        var registered: AgentID?
        /// Where the hub's detector keeps that agent: what each beat goes by.
        var slot: AgentSlot?

        init(
            fd: Int32, session: SessionID, address: String, machine: ControllerSessionStateMachine,
            handshakeDeadline: Int64, tokens: Int, now: Int64, logger: Logger
        ) {
            self.fd = fd
            self.session = session
            self.address = address
            self.machine = machine
            self.handshakeDeadline = handshakeDeadline
            self.tokens = tokens
            self.tokensAt = now
            self.lastFrameAt = now
            self.logger = logger
        }

        /// Takes `bytes` from the budget; false when the budget does not cover them.
        func spend(_ bytes: Int, now: Int64, limits: ConnectionLimits) -> Bool {
            let refill = Int((now - tokensAt) * Int64(limits.bytesPerSecond) / 1_000_000_000)
            if refill > 0 {
                tokens = min(limits.byteBurst, tokens + refill)
                tokensAt = now
            }
            tokens -= bytes
            return tokens >= 0
        }
    }

    /// Handed to the hub: closing goes through the loop, which owns the descriptor.
    private struct SessionCloser: AgentConnectionCloser {
        let listener: AgentListener
        let session: SessionID
        func close() { listener.submit(.close(session)) }
    }
}

struct ListenerError: Error, CustomStringConvertible {
    var description: String
    init(_ what: String, _ code: Int32) {
        description = code == 0 ? what : "\(what): \(String(cString: strerror(code)))"
    }
}
