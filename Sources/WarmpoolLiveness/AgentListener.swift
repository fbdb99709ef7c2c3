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

    // Loop state, touched only by the loop's thread.
    private var connections: [Int32: Connection] = [:]
    private var sessions: [SessionID: Int32] = [:]
    /// Connections still in their handshake, to time out.
    private var handshaking: Set<Int32> = []
    private var readBuffer = ByteBuffer()
    private var writeBuffer = ByteBuffer()

    private static let listenTag: UInt64 = .max
    private static let wakeTag: UInt64 = .max - 1
    private static let readSize = 65_536
    private static let maximumPending = 65_536

    /// Binds and listens at once, so a port in use fails the start, not the first agent.
    init(host: String, port: Int, hub: LivenessHub, logger: Logger) throws {
        self.hub = hub
        self.logger = logger
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
        while true {
            // Handshakes are timed to the nearest 100 ms at worst; established sessions need no timer.
            let ready = epoll_wait(epollFD, &events, Int32(events.count), handshaking.isEmpty ? -1 : 100)
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
            if !handshaking.isEmpty {
                let now = MonotonicClock.now()
                for fd in handshaking {
                    guard let connection = connections[fd], now >= connection.handshakeDeadline else { continue }
                    run(connection.machine.handshakeTimerFired(after: handshakeTimeout), on: connection)
                }
            }
        }
        for connection in Array(connections.values) { closeConnection(connection) }
        close(listenFD)
        commands.withLockedValue { commands in
            commands.ended = true
            close(wakeFD)
        }
        close(epollFD)
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
        while true {
            var storage = sockaddr_storage()
            var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
            let fd = withUnsafeMutablePointer(to: &storage) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { accept(listenFD, $0, &length) }
            }
            guard fd >= 0 else {
                if errno == EINTR || errno == ECONNABORTED { continue }
                if errno != EAGAIN && errno != EWOULDBLOCK {
                    // Out of descriptors, most likely: the backlog waits, and the next wake retries.
                    logger.error("accept failed", metadata: ["errno": "\(errno)"])
                }
                return
            }
            // accept4 is not in Swift's Glibc module; two fcntls per connection do the same.
            _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
            _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
            var one: Int32 = 1
            setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
            let (session, keyring, epoch) = hub.openSession()
            var connectionLogger = logger
            connectionLogger[metadataKey: "session.id"] = "\(session)"
            if let peer = try? Self.address(storage) { connectionLogger[metadataKey: "peer"] = "\(peer)" }
            let connection = Connection(
                fd: fd, session: session,
                machine: ControllerSessionStateMachine(
                    keyring: keyring, serverNonce: HandshakeCrypto.randomNonce(), terms: hub.configuration.terms,
                    epoch: epoch.rawValue),
                handshakeDeadline: MonotonicClock.now() + hub.configuration.handshakeTimeout.nanoseconds,
                logger: connectionLogger)
            connections[fd] = connection
            sessions[session] = fd
            handshaking.insert(fd)
            watch(fd, tag: UInt64(fd), events: EPOLLIN.rawValue)
        }
    }

    /// One read per wake-up (epoll is level-triggered: a fuller socket wakes us again), split into
    /// frames in place; only a frame cut off at the end is copied, to wait for the rest.
    private func readable(_ connection: Connection) {
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
        do throws(ProtocolViolation) {
            while !connection.stopped, let frame = try FrameParser().parse(&readBuffer) {
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
            // Authenticated and decompressed; the store that keeps it comes with the control plane.
            connection.logger.debug("telemetry received", metadata: ["telemetry.bytes": "\(telemetry.document.count)"])
        case .send(let frame):
            send(frame, on: connection)
        case .established(let identity, let fencedAtEpoch, let welcome):
            handshaking.remove(connection.fd)
            connection.logger[metadataKey: "agent.id"] = "\(identity.agentID)"
            connection.logger.info(
                "agent authenticated",
                metadata: [
                    "agent.instance_id": "\(identity.instanceID)", "agent.machine_id": "\(identity.machineID)",
                    "agent.role": "\(identity.role)", "agent.version": "\(identity.softwareVersion)",
                ])
            send(welcome, on: connection)
            hub.sessionEstablished(
                connection.session, agent: identity, fencedAtEpoch: fencedAtEpoch,
                closer: SessionCloser(listener: self, session: connection.session))
        case .heartbeat(let heartbeat):
            guard let agentID = connection.machine.agentID else { return }
            let (now, leaseEpoch) = hub.heartbeat(
                connection.session, agentID: agentID, sentAt: heartbeat.sentAtMilliseconds, status: heartbeat.status,
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
            connection.logger.warning("closing connection: \(reason)")
            if let reject {
                writeBuffer.clear()
                reject.write(into: &writeBuffer)
                connection.closeWhenFlushed = true
                queue(&writeBuffer, on: connection)
            } else {
                closeConnection(connection)
            }
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
                connection.logger.info("write failed, closing", metadata: ["errno": "\(errno)"])
                closeConnection(connection)
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
            connection.pending!.writeBuffer(&bytes)
            // A grant is 15 bytes twice a second: a peer that lets this much pile up is not reading.
            if connection.pending!.readableBytes > Self.maximumPending {
                connection.logger.warning("closing connection: the agent is not reading (\(connection.pending!.readableBytes) bytes unsent)")
                closeConnection(connection)
            }
        }
    }

    private func flush(_ connection: Connection) {
        guard var pending = connection.pending else { return }
        let written = pending.withUnsafeReadableBytes { write(connection.fd, $0.baseAddress, $0.count) }
        if written < 0 {
            if errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR { return }
            connection.logger.info("write failed, closing", metadata: ["errno": "\(errno)"])
            closeConnection(connection)
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
        handshaking.remove(connection.fd)
        if let identity = connection.machine.identity {
            connection.logger.debug("session closed", metadata: ["graceful": "\(connection.saidGoodbye)"])
            hub.sessionClosed(connection.session, agentID: identity.agentID, graceful: connection.saidGoodbye)
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
        var machine: ControllerSessionStateMachine
        let handshakeDeadline: Int64
        var logger: Logger
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

        init(fd: Int32, session: SessionID, machine: ControllerSessionStateMachine, handshakeDeadline: Int64, logger: Logger) {
            self.fd = fd
            self.session = session
            self.machine = machine
            self.handshakeDeadline = handshakeDeadline
            self.logger = logger
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
