import Logging
import NIOCore
import WarmpoolWire

/// Carries out what one connection's `ControllerSessionStateMachine` decides. It owns no protocol
/// logic: split frames, feed the machine, run the action.
///
/// The whole pipeline of an agent connection, bytes in and bytes out: it splits frames with
/// `FrameParser` itself and writes encoded frames, rather than sitting behind
/// `ByteToMessageHandler` and `MessageToByteHandler`. Every heartbeat the controller receives
/// crosses this handler, and the two extra pipeline hops cost a boxed `Frame` and a dynamic cast
/// per frame, and a buffer per grant.
final class ControllerConnectionHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private let parser = FrameParser()
    /// The start of a frame whose bytes have not all arrived; nil when the last read ended on a
    /// frame boundary, as beats almost always do.
    private var partial: ByteBuffer?
    /// Set once the stream is unusable (a framing violation) or the connection is closing: later
    /// bytes are dropped.
    private var stopped = false

    private let hub: LivenessHub
    private let session: SessionID
    private var machine: ControllerSessionStateMachine
    private var logger: Logger
    private var handshakeTimer: Scheduled<Void>?
    private var lastLeaseGrantAt: Int64?
    private var saidGoodbye = false

    init(hub: LivenessHub, logger: Logger) {
        let (session, keyring, epoch) = hub.openSession()
        self.hub = hub
        self.session = session
        self.machine = ControllerSessionStateMachine(
            keyring: keyring, serverNonce: HandshakeCrypto.randomNonce(), terms: hub.configuration.terms, epoch: epoch)
        self.logger = logger
        self.logger[metadataKey: "session.id"] = "\(session)"
    }

    func channelActive(context: ChannelHandlerContext) {
        if let peer = context.remoteAddress { logger[metadataKey: "peer"] = "\(peer)" }
        let milliseconds = hub.configuration.handshakeTimeoutMilliseconds
        let loopBoundContext = NIOLoopBound(context, eventLoop: context.eventLoop)
        let loopBoundSelf = NIOLoopBound(self, eventLoop: context.eventLoop)
        handshakeTimer = context.eventLoop.scheduleTask(in: .milliseconds(milliseconds)) {
            let handler = loopBoundSelf.value
            handler.run(handler.machine.handshakeTimerFired(after: milliseconds), context: loopBoundContext.value)
        }
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !stopped else { return }
        var buffer = unwrapInboundIn(data)
        if var partial = self.partial {
            self.partial = nil
            partial.writeBuffer(&buffer)
            buffer = partial
        }
        do throws(ProtocolViolation) {
            while !stopped, let frame = try parser.parse(&buffer) {
                run(machine.frameReceived(frame), context: context)
            }
        } catch {
            stopped = true
            run(machine.decodeFailed(error), context: context)
            return
        }
        if !stopped, buffer.readableBytes > 0 { partial = buffer }
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        if let violation = error as? ProtocolViolation {
            run(machine.decodeFailed(violation), context: context)
        } else {
            logger.notice("connection error, closing", metadata: ["error": "\(error)"])
            context.close(promise: nil)
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        handshakeTimer?.cancel()
        if let identity = machine.identity {
            logger.debug("session closed", metadata: ["graceful": "\(saidGoodbye)"])
            hub.sessionClosed(session, agentID: identity.agentID, graceful: saidGoodbye)
        }
        machine.closed()
        context.fireChannelInactive()
    }

    private func run(_ action: ControllerSessionStateMachine.Action, context: ChannelHandlerContext) {
        switch action {
        case .none:
            break
        case .telemetry(let telemetry):
            // Authenticated and decompressed; the store that keeps it comes with the control plane.
            logger.debug("telemetry received", metadata: ["telemetry.bytes": "\(telemetry.document.count)"])
        case .send(let frame):
            context.writeAndFlush(encode(frame, context: context), promise: nil)
        case .established(let identity, let fencedAtEpoch, let welcome):
            handshakeTimer?.cancel()
            logger[metadataKey: "agent.id"] = "\(identity.agentID)"
            logger.info(
                "agent authenticated",
                metadata: [
                    "agent.instance_id": "\(identity.instanceID)", "agent.machine_id": "\(identity.machineID)",
                    "agent.role": "\(identity.role)", "agent.version": "\(identity.softwareVersion)",
                ])
            context.writeAndFlush(encode(welcome, context: context), promise: nil)
            hub.sessionEstablished(session, agent: identity, fencedAtEpoch: fencedAtEpoch, channel: context.channel)
        case .heartbeat(let heartbeat):
            guard let agentID = machine.agentID else { return }
            let (now, leaseEpoch) = hub.heartbeat(
                session, agentID: agentID, sentAt: heartbeat.sentAtMilliseconds, status: heartbeat.status,
                lastGrantAt: lastLeaseGrantAt)
            if let leaseEpoch,
                let grant = machine.sealLease(
                    acknowledgedSequence: heartbeat.sequence, leaseMilliseconds: hub.configuration.leaseMilliseconds,
                    epoch: leaseEpoch)
            {
                lastLeaseGrantAt = now
                context.writeAndFlush(encode(grant, context: context), promise: nil)
            }
        case .goodbye(let goodbye):
            saidGoodbye = true
            logger.info("agent said goodbye", metadata: ["reason": "\(goodbye.reason)"])
        case .close(let reason, let reject):
            stopped = true
            logger.warning("closing connection: \(reason)")
            if let reject {
                let loopBoundContext = NIOLoopBound(context, eventLoop: context.eventLoop)
                var buffer = context.channel.allocator.buffer(capacity: 64)
                reject.write(into: &buffer)
                context.writeAndFlush(wrapOutboundOut(buffer)).whenComplete { _ in
                    loopBoundContext.value.close(promise: nil)
                }
            } else {
                context.close(promise: nil)
            }
        }
    }

    private func encode(_ frame: Frame, context: ChannelHandlerContext) -> NIOAny {
        var buffer = context.channel.allocator.buffer(capacity: Frame.maximumHeaderSize + frame.payload.readableBytes)
        frame.write(into: &buffer)
        return wrapOutboundOut(buffer)
    }
}
