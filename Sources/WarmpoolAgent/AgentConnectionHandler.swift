import Logging
import NIOCore
import WarmpoolModel
import WarmpoolWire

/// One connection to a controller. Carries out what its `AgentSessionStateMachine` decides and
/// reports to the runtime; it keeps the send time of recent beats, which anchor lease grants.
final class AgentConnectionHandler: ChannelInboundHandler {
    typealias InboundIn = Frame
    typealias OutboundOut = Frame

    private var machine: AgentSessionStateMachine
    private unowned let runtime: AgentRuntime
    private let slot: Int
    private var logger: Logger
    private var context: ChannelHandlerContext?
    /// Grants answer one of the last few beats; older ones are not worth keeping.
    private var sentTimes = HeartbeatSendTimes()
    private(set) var lastInboundAt: Int64 = MonotonicClock.now()
    /// A LeaseGrant arrived on this session: the controller renews here, so its silence is news.
    private(set) var hasBeenGranted = false

    init(hello: Hello, secret: AgentSecret, runtime: AgentRuntime, slot: Int, logger: Logger) {
        self.machine = AgentSessionStateMachine(hello: hello, secret: secret)
        self.runtime = runtime
        self.slot = slot
        self.logger = logger
    }

    var isEstablished: Bool { machine.welcome != nil }

    func handlerAdded(context: ChannelHandlerContext) { self.context = context }
    func handlerRemoved(context: ChannelHandlerContext) { self.context = nil }

    /// A controller that accepts TCP but never finishes the handshake must not hold a slot forever.
    static let handshakeTimeout = TimeAmount.seconds(5)
    private var handshakeTimer: Scheduled<Void>?

    func channelActive(context: ChannelHandlerContext) {
        context.writeAndFlush(wrapOutboundOut(machine.start()), promise: nil)
        let loopBoundSelf = NIOLoopBound(self, eventLoop: context.eventLoop)
        handshakeTimer = context.eventLoop.scheduleTask(in: Self.handshakeTimeout) {
            let handler = loopBoundSelf.value
            if !handler.isEstablished { handler.close(reason: "no Welcome within \(Self.handshakeTimeout)") }
        }
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        lastInboundAt = MonotonicClock.now()
        run(machine.frameReceived(unwrapInboundIn(data)), context: context)
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        if let violation = error as? ProtocolViolation {
            run(machine.decodeFailed(violation), context: context)
        } else {
            logger.notice("connection error", metadata: ["error": "\(error)"])
            context.close(promise: nil)
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        handshakeTimer?.cancel()
        machine.closed()
        runtime.connectionClosed(slot: slot, handler: self)
        context.fireChannelInactive()
    }

    /// `stamp`: the beat's `sent_at` (at or after `now`); a lease is anchored at `now`, the real
    /// send time, whatever the stamp says.
    func sendHeartbeat(status: AgentStatus, now: Int64, stamp: Int64) {
        guard let context, let (sequence, frame) = machine.sealHeartbeat(sentAtNanoseconds: UInt64(stamp), status: status)
        else { return }
        sentTimes.record(sequence: sequence, at: now)
        context.writeAndFlush(wrapOutboundOut(frame), promise: nil)
    }

    func sendTelemetry(document: [UInt8]) {
        guard let context, let frame = machine.sealTelemetry(document: document) else { return }
        context.writeAndFlush(wrapOutboundOut(frame), promise: nil)
    }

    /// Says goodbye and closes once the frame is written.
    func sayGoodbye(reason: Goodbye.Reason) -> EventLoopFuture<Void>? {
        guard let context, let frame = machine.sealGoodbye(reason: reason) else { return nil }
        let channel = context.channel
        return context.writeAndFlush(wrapOutboundOut(frame)).flatMap { channel.close() }
    }

    func close(reason: String) {
        logger.notice("closing connection: \(reason)")
        context?.close(promise: nil)
    }

    private func run(_ action: AgentSessionStateMachine.Action, context: ChannelHandlerContext) {
        switch action {
        case .none:
            break
        case .send(let frame):
            context.writeAndFlush(wrapOutboundOut(frame), promise: nil)
        case .established(let welcome):
            runtime.established(slot: slot, handler: self, welcome: welcome)
        case .lease(let grant):
            hasBeenGranted = true
            guard let anchor = sentTimes.sentAt(grant.acknowledgedSequence) else {
                // A grant for a beat we no longer remember cannot be anchored safely: ignore it.
                logger.debug("lease grant for an unknown beat", metadata: ["sequence": "\(grant.acknowledgedSequence)"])
                return
            }
            runtime.leaseGranted(grant, anchor: anchor)
        case .rejected(let reject):
            logger.error("controller rejected us: \(reject.reason)", metadata: ["code": "\(reject.code)"])
            runtime.rejected(slot: slot, code: reject.code)
            context.close(promise: nil)
        case .close(let reason):
            logger.warning("closing connection: \(reason)")
            context.close(promise: nil)
        }
    }
}
