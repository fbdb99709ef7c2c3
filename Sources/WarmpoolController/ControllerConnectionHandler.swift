import Logging
import NIOCore
import WarmpoolWire

/// Carries out what one connection's `ControllerSessionStateMachine` decides. It owns no protocol
/// logic: decode, feed the machine, run the action.
final class ControllerConnectionHandler: ChannelInboundHandler {
    typealias InboundIn = Frame
    typealias OutboundOut = Frame

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
        run(machine.frameReceived(unwrapInboundIn(data)), context: context)
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
            context.writeAndFlush(wrapOutboundOut(frame), promise: nil)
        case .established(let identity, let fencedAtEpoch, let welcome):
            handshakeTimer?.cancel()
            logger[metadataKey: "agent.id"] = "\(identity.agentID)"
            logger.info(
                "agent authenticated",
                metadata: [
                    "agent.instance_id": "\(identity.instanceID)", "agent.machine_id": "\(identity.machineID)",
                    "agent.role": "\(identity.role)", "agent.version": "\(identity.softwareVersion)",
                ])
            context.writeAndFlush(wrapOutboundOut(welcome), promise: nil)
            hub.sessionEstablished(session, agent: identity, fencedAtEpoch: fencedAtEpoch, channel: context.channel)
        case .heartbeat(let heartbeat):
            guard let identity = machine.identity else { return }
            let (now, leaseEpoch) = hub.heartbeat(
                session, agentID: identity.agentID, status: heartbeat.status, lastGrantAt: lastLeaseGrantAt)
            if let leaseEpoch,
                let grant = machine.sealLease(
                    acknowledgedSequence: heartbeat.sequence, leaseMilliseconds: hub.configuration.leaseMilliseconds,
                    epoch: leaseEpoch)
            {
                lastLeaseGrantAt = now
                context.writeAndFlush(wrapOutboundOut(grant), promise: nil)
            }
        case .goodbye(let goodbye):
            saidGoodbye = true
            logger.info("agent said goodbye", metadata: ["reason": "\(goodbye.reason)"])
        case .close(let reason, let reject):
            logger.warning("closing connection: \(reason)")
            if let reject {
                let loopBoundContext = NIOLoopBound(context, eventLoop: context.eventLoop)
                context.writeAndFlush(wrapOutboundOut(reject)).whenComplete { _ in
                    loopBoundContext.value.close(promise: nil)
                }
            } else {
                context.close(promise: nil)
            }
        }
    }
}
