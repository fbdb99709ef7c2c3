import WarmpoolModel
import WarmpoolWire

/// Identifies one TCP session; an agent may hold several at once (see PROTOCOL.md §6).
public typealias SessionID = UInt64

/// Where the tracker keeps an agent: a session learns it once, when it is established, and its
/// beats reach the agent by position instead of hashing the agent's String id every time (the
/// lookups were 3.8 % of the controller's CPU at 10,000 agents). Stable while the agent holds a
/// session: only an agent without sessions is forgotten and its slot reused.
public struct AgentSlot: Hashable, Sendable {
    let index: Int
}

/// What the failure detector concluded, with the moment it did (monotonic nanoseconds).
public struct LivenessEvent: Hashable, Sendable {
    public enum Kind: String, Hashable, Sendable, CaseIterable {
        /// The agent's first session opened (again, after it left or before it was ever seen).
        case connected
        /// Silent for longer than the suspicion threshold; nothing is done yet.
        case suspected
        /// Silent past its timeout, or every connection closed without a Goodbye.
        case failed
        /// A suspected or failed agent was heard again.
        case recovered
        /// The agent reports that it fenced itself on lease loss: its workload is frozen.
        case fenced
        /// A fenced agent was granted again at the same epoch: its workload runs on.
        case thawed
        /// The agent learnt of a newer epoch and killed its workload: the fence is final.
        case fenceFinal = "fence_final"
        /// The agent's fence command exited non-zero.
        case fenceFailed = "fence_failed"
        /// Every connection closed after a Goodbye: a clean shutdown, not a failure.
        case left
        /// The agent reported its sshd's host key for the first time, or a different one
        /// (Telemetry's `ssh_host_key`): what the controller pins for its instance.
        case hostKeyReported = "host_key_reported"
    }

    public var kind: Kind
    public var agent: AgentIdentity
    public var atNanoseconds: Int64
    public var reason: String
    /// How long the agent had been silent when the event was raised, where that means something.
    public var silenceNanoseconds: Int64?
    public var fencedAtEpoch: UInt64?

    public init(
        kind: Kind, agent: AgentIdentity, atNanoseconds: Int64, reason: String, silenceNanoseconds: Int64? = nil,
        fencedAtEpoch: UInt64? = nil
    ) {
        self.kind = kind
        self.agent = agent
        self.atNanoseconds = atNanoseconds
        self.reason = reason
        self.silenceNanoseconds = silenceNanoseconds
        self.fencedAtEpoch = fencedAtEpoch
    }
}

/// The detector's tuning. All durations in nanoseconds of the controller's monotonic clock.
/// One agent as the detector sees it now.
public struct AgentLivenessSnapshot: Sendable, Equatable {
    public var identity: AgentIdentity
    /// alive, suspected, failed or left.
    public var state: String
    public var openSessions: Int
    /// Time since the newest frame on any session.
    public var silenceNanoseconds: Int64
    /// The epoch the agent's grants carry now; nil while it is granted none. Filled in by the
    /// hub, the one lease authority.
    public var leaseEpoch: Epoch?
    /// True while the failover engine withholds the agent's lease (revoked, or held after a
    /// failure until the engine rules).
    public var leaseWithheld: Bool
    public var silenceTimeoutNanoseconds: Int64
    public var status: AgentStatus?
}

public struct DetectorConfiguration: Hashable, Sendable {
    public var heartbeatInterval: Duration
    /// Silence that fails an agent on a link that has shown no retransmission stalls.
    public var silenceTimeout: Duration
    /// Silence that fails an agent whose link has stalled within `stallMemory`: long enough to
    /// outlast TCP retransmission backoff on both sessions at once, short enough to keep
    /// detection under a second.
    public var lossySilenceTimeout: Duration
    /// How long one stall keeps an agent on the lossy timeout.
    public var stallMemory: Duration

    public init(heartbeatInterval: Duration, silenceTimeout: Duration? = nil, lossySilenceTimeout: Duration? = nil,
                stallMemory: Duration = .seconds(60)) {
        self.heartbeatInterval = heartbeatInterval
        let base = silenceTimeout ?? DetectorConfiguration.defaultSilenceTimeout(interval: heartbeatInterval)
        self.silenceTimeout = base
        self.lossySilenceTimeout = max(base, lossySilenceTimeout ?? .milliseconds(900))
        self.stallMemory = stallMemory
    }

    /// Three intervals plus 50 ms: two beats may go missing and a third be late without a failure.
    public static func defaultSilenceTimeout(interval: Duration) -> Duration { interval * 3 + .milliseconds(50) }
}

/// The configuration in nanoseconds of the monotonic clock, worked out once: the detector's
/// arithmetic runs for every beat.
struct DetectorLimits: Hashable, Sendable {
    let heartbeatInterval: Int64
    let silenceTimeout: Int64
    let lossySilenceTimeout: Int64
    let stallMemory: Int64
    /// A gap on one session longer than this is a retransmission stall, not scheduling jitter.
    let stallThreshold: Int64

    init(_ configuration: DetectorConfiguration) {
        heartbeatInterval = configuration.heartbeatInterval.nanoseconds
        silenceTimeout = configuration.silenceTimeout.nanoseconds
        lossySilenceTimeout = configuration.lossySilenceTimeout.nanoseconds
        stallMemory = configuration.stallMemory.nanoseconds
        stallThreshold = 2 * heartbeatInterval + heartbeatInterval / 2
    }
}

/// The failure detector for every agent. Pure: the caller passes the time in and publishes the
/// events it returns.
///
/// Per agent: `alive -> suspected -> failed`, back to `alive` with `recovered`, or `left` after a
/// Goodbye. An agent's silence is measured across all of its sessions (the newest beat from any of
/// them counts), so a retransmission stall on one connection is covered by the other. A stall seen
/// on any single session is evidence of a lossy link and puts that agent on the lossy timeout for
/// a while (PROTOCOL.md §6).
public struct LivenessTracker: Sendable {
    private enum State: Hashable {
        case alive
        case suspected
        case failed
        case left

        var name: String {
            switch self {
            case .alive: "alive"
            case .suspected: "suspected"
            case .failed: "failed"
            case .left: "left"
            }
        }
    }

    private struct Agent {
        var identity: AgentIdentity
        var state: State
        /// Last accepted frame per open session.
        var sessions: [SessionID: Int64]
        var lastHeard: Int64
        /// The agent's send time (`sent_at_ms`, its own clock) of the newest beat accepted from its
        /// current incarnation: a copy no newer than this is one the agent already got through.
        var newestBeatSentAt: UInt64?
        /// When a session last stalled while the agent lived (retransmission evidence).
        var lastStallAt: Int64?
        var lastFailedAt: Int64?
        var reportedFence: UInt64?
        var status: AgentStatus?
    }

    public let configuration: DetectorConfiguration
    private let limits: DetectorLimits
    /// Every agent seen, by slot (nil: a slot freed by `forget`, in `freeSlots`), and the slot of
    /// each id: the hot path goes by slot (`AgentSlot`), everything else by id.
    private var agents: [Agent?] = []
    private var slots: [AgentID: Int] = [:]
    private var freeSlots: [Int] = []
    /// No alive or suspected agent can cross a threshold before this time, so `tick` skips its
    /// scan until then: with 10,000 agents at 10 Hz the scan ran 100 times a second for nothing.
    /// Computed with the base timeout, the shortest, so it is never late; beats only move
    /// deadlines later, so it stays a lower bound without being touched on the hot path. Lowered
    /// wherever an agent becomes alive (a new session, a recovery).
    private var nextScanAt: Int64 = .min

    public init(configuration: DetectorConfiguration) {
        self.configuration = configuration
        self.limits = DetectorLimits(configuration)
    }

    public mutating func sessionEstablished(
        _ session: SessionID, agent identity: AgentIdentity, fencedAtEpoch: UInt64?, now: Int64
    ) -> [LivenessEvent] {
        var events: [LivenessEvent] = []
        let slot = slots[identity.agentID] ?? newSlot(for: identity.agentID)
        var agent = agents[slot] ?? Agent(identity: identity, state: .left, sessions: [:], lastHeard: now)
        let hadSessions = !agent.sessions.isEmpty
        // A fresh process that is not fenced starts a new fence history.
        if !hadSessions, fencedAtEpoch == nil { agent.reportedFence = nil }
        // Only a new process (a new incarnation) has a clock of its own whose beats are compared
        // afresh. Another session of the same process sends the same beats: were the comparison
        // reset for it, a copy held back on it would count as news and put a failure off.
        if agent.identity.incarnation != identity.incarnation { agent.newestBeatSentAt = nil }
        agent.identity = identity
        agent.sessions[session] = now
        let silence = now - agent.lastHeard
        agent.lastHeard = now
        switch agent.state {
        case .failed, .suspected:
            events.append(LivenessEvent(
                kind: .recovered, agent: identity, atNanoseconds: now, reason: "new session after \(Self.ms(silence)) ms",
                silenceNanoseconds: silence))
        case .left where !hadSessions:
            events.append(LivenessEvent(kind: .connected, agent: identity, atNanoseconds: now, reason: "session opened"))
        case .left, .alive:
            break
        }
        agent.state = .alive
        nextScanAt = min(nextScanAt, now + suspicionThreshold(limits.silenceTimeout))
        if let epoch = fencedAtEpoch { Self.noteFence(epoch, &agent, now: now, into: &events) }
        agents[slot] = agent
        return events
    }

    /// The slot of an agent seen (for its sessions' `heartbeat(_:slot:...)`).
    public func slot(agentID: AgentID) -> AgentSlot? { slots[agentID].map(AgentSlot.init) }

    private mutating func newSlot(for agentID: AgentID) -> Int {
        let slot: Int
        if let free = freeSlots.popLast() {
            slot = free
        } else {
            slot = agents.count
            agents.append(nil)
        }
        slots[agentID] = slot
        return slot
    }

    private func agent(_ agentID: AgentID) -> Agent? { slots[agentID].flatMap { agents[$0] } }

    /// `sentAt` is the beat's `sent_at_ms`: the same beat carries the same value on every session.
    public mutating func heartbeat(
        _ session: SessionID, agentID: AgentID, sentAt: UInt64, status: AgentStatus, now: Int64
    ) -> [LivenessEvent] {
        guard let slot = slots[agentID] else { return [] }
        return heartbeat(session, slot: AgentSlot(index: slot), sentAt: sentAt, status: status, now: now)
    }

    /// The hot path: `heartbeat(_:agentID:...)` for a session that knows its agent's slot. A
    /// session the slot's agent does not hold (closed, or the slot reused) is ignored, as an
    /// unknown one is: session ids are never reused.
    public mutating func heartbeat(
        _ session: SessionID, slot: AgentSlot, sentAt: UInt64, status: AgentStatus, now: Int64
    ) -> [LivenessEvent] {
        // Mutate the agent where it lies: copying it out and back would copy its sessions
        // dictionary on every beat.
        guard slot.index < agents.count, agents[slot.index] != nil else { return [] }
        let events = Self.recordHeartbeat(&agents[slot.index]!, session: session, sentAt: sentAt, status: status,
                                          now: now, limits: limits)
        // A recovery makes the agent alive again, with a deadline the scan has not seen.
        if !events.isEmpty { nextScanAt = min(nextScanAt, now + suspicionThreshold(limits.silenceTimeout)) }
        return events
    }

    private static func recordHeartbeat(
        _ agent: inout Agent, session: SessionID, sentAt: UInt64, status: AgentStatus, now: Int64,
        limits: DetectorLimits
    ) -> [LivenessEvent] {
        // One lookup of the session for the read and the write.
        guard let sessionIndex = agent.sessions.index(forKey: session) else { return [] }
        let previous = agent.sessions.values[sessionIndex]
        var events: [LivenessEvent] = []
        let sessionGap = now - previous
        // A long gap on one session that the agent was not failed during is a retransmission
        // stall: the agent was alive (another session delivered, or the gap stayed under the
        // timeout). A gap that failed the agent is a hang or a partition and says nothing about the link.
        let failedDuringGap = agent.lastFailedAt.map { $0 >= previous } ?? false
        if sessionGap > limits.stallThreshold, !failedDuringGap {
            agent.lastStallAt = now
        }
        agent.sessions.values[sessionIndex] = now
        // Only the first copy of a beat is news. A copy that a stall held back on one session,
        // arriving after the other session delivered the same beat, proves nothing about the
        // agent now: it may have stopped since, and counting the late arrival as hearing from it
        // would put its failure off by the length of the stall (PROTOCOL.md §6).
        if let newest = agent.newestBeatSentAt, sentAt <= newest {
            return events
        }
        agent.newestBeatSentAt = sentAt
        let silence = now - agent.lastHeard
        agent.lastHeard = max(agent.lastHeard, now)
        if agent.state == .suspected || agent.state == .failed {
            events.append(LivenessEvent(
                kind: .recovered, agent: agent.identity, atNanoseconds: now,
                reason: "heartbeat after \(ms(silence)) ms of silence", silenceNanoseconds: silence))
            agent.state = .alive
        }
        let before = agent.status?.flags ?? []
        agent.status = status
        if status.flags.contains(.fenced), agent.reportedFence == nil {
            // The epoch is not in the heartbeat; Hello carries it on the next connection.
            noteFence(0, &agent, now: now, into: &events)
        } else if !status.flags.contains(.fenced), agent.reportedFence != nil, before.contains(.fenced) {
            let epoch = agent.reportedFence
            agent.reportedFence = nil
            events.append(LivenessEvent(
                kind: .thawed, agent: agent.identity, atNanoseconds: now, reason: "granted again: the workload runs on",
                fencedAtEpoch: epoch == 0 ? nil : epoch))
        }
        if status.flags.contains(.fenceFinal), !before.contains(.fenceFinal) {
            events.append(LivenessEvent(
                kind: .fenceFinal, agent: agent.identity, atNanoseconds: now,
                reason: "a newer epoch exists: the agent killed its workload", fencedAtEpoch: agent.reportedFence.flatMap { $0 == 0 ? nil : $0 }))
        }
        if status.flags.contains(.fenceCommandFailed), !before.contains(.fenceCommandFailed) {
            events.append(LivenessEvent(
                kind: .fenceFailed, agent: agent.identity, atNanoseconds: now, reason: "the agent's fence command failed"))
        }
        return events
    }

    /// A session ended. `graceful` means the agent said Goodbye on it first.
    public mutating func sessionClosed(_ session: SessionID, agentID: AgentID, graceful: Bool, now: Int64) -> [LivenessEvent] {
        guard let slot = slots[agentID], var agent = agents[slot], agent.sessions.removeValue(forKey: session) != nil else {
            return []
        }
        var events: [LivenessEvent] = []
        if agent.sessions.isEmpty {
            if graceful {
                agent.state = .left
                events.append(LivenessEvent(kind: .left, agent: agent.identity, atNanoseconds: now, reason: "goodbye"))
            } else if agent.state != .failed {
                agent.state = .failed
                agent.lastFailedAt = now
                events.append(LivenessEvent(
                    kind: .failed, agent: agent.identity, atNanoseconds: now,
                    reason: "every connection closed without a goodbye", silenceNanoseconds: now - agent.lastHeard))
            }
        }
        agents[slot] = agent
        return events
    }

    /// Call often (every interval / 5 or so): raises suspicions and failures on silence.
    public mutating func tick(now: Int64) -> [LivenessEvent] {
        guard now >= nextScanAt else { return [] }
        var events: [LivenessEvent] = []
        var earliest = Int64.max
        let baseTimeout = limits.silenceTimeout
        let baseSuspicion = suspicionThreshold(baseTimeout)
        // Fields are read in place, not copied out (a copy of an agent retains its identity,
        // sessions and status); the rare transitions are applied after the scan, by slot.
        var failed: [Int] = []
        var suspected: [Int] = []
        for index in agents.indices {
            guard let state = agents[index]?.state, state == .alive || state == .suspected else { continue }
            let lastHeard = agents[index]!.lastHeard
            let silence = now - lastHeard
            let timeout = silenceTimeout(lastStallAt: agents[index]!.lastStallAt, now: now)
            if silence > timeout {
                failed.append(index)
                events.append(LivenessEvent(
                    kind: .failed, agent: agents[index]!.identity, atNanoseconds: now,
                    reason: "silent \(Self.ms(silence)) ms, timeout \(Self.ms(timeout)) ms", silenceNanoseconds: silence))
            } else if state == .alive, silence > suspicionThreshold(timeout) {
                suspected.append(index)
                events.append(LivenessEvent(
                    kind: .suspected, agent: agents[index]!.identity, atNanoseconds: now,
                    reason: "silent \(Self.ms(silence)) ms, timeout \(Self.ms(timeout)) ms", silenceNanoseconds: silence))
                earliest = min(earliest, lastHeard + baseTimeout)
            } else {
                earliest = min(earliest, lastHeard + (state == .alive ? baseSuspicion : baseTimeout))
            }
        }
        for index in failed {
            agents[index]!.state = .failed
            agents[index]!.lastFailedAt = now
        }
        for index in suspected { agents[index]!.state = .suspected }
        nextScanAt = earliest
        return events
    }

    /// The detector's half of a lease decision: only an agent heard from lately (alive or
    /// suspected) may be granted one. The other half, whether a failover withholds it, is the
    /// hub's (`LivenessHub.LeasePosture`).
    public func isLive(agentID: AgentID) -> Bool {
        guard let agent = agent(agentID) else { return false }
        return agent.state == .alive || agent.state == .suspected
    }

    /// The timeout in force for an agent now: the base, or the lossy timeout after a recent stall.
    public func currentSilenceTimeout(agentID: AgentID, now: Int64) -> Int64? {
        agent(agentID).map { silenceTimeout($0, now: now) }
    }

    public func instanceID(agentID: AgentID) -> InstanceID? { agent(agentID)?.identity.instanceID }

    public func identity(agentID: AgentID) -> AgentIdentity? { agent(agentID)?.identity }

    /// The identity and liveness of the agent in `slot`, for a lease decision on its session's
    /// beat without a lookup by id.
    public func identity(slot: AgentSlot) -> (identity: AgentIdentity, isLive: Bool)? {
        // Field by field, in place: a copy of the agent would retain its sessions and status.
        guard slot.index < agents.count, let identity = agents[slot.index]?.identity,
            let state = agents[slot.index]?.state
        else { return nil }
        return (identity, state == .alive || state == .suspected)
    }

    public func agentIDs(instanceID: InstanceID) -> [AgentID] {
        agents.compactMap { $0 }.filter { $0.identity.instanceID == instanceID }.map(\.identity.agentID)
    }

    public func openSessions(agentID: AgentID) -> Int { agent(agentID)?.sessions.count ?? 0 }

    /// Forgets the agents of an instance that is gone, unless one still holds a session: without
    /// this an entry lives as long as the controller, for every instance it ever saw.
    public mutating func forget(instanceID: InstanceID) {
        for index in agents.indices {
            guard let agent = agents[index], agent.identity.instanceID == instanceID, agent.sessions.isEmpty else { continue }
            agents[index] = nil
            slots[agent.identity.agentID] = nil
            freeSlots.append(index)
        }
    }

    /// The summary from the agent's latest heartbeat (for the control plane's agent listing).
    public func status(agentID: AgentID) -> AgentStatus? { agent(agentID)?.status }

    /// What the control plane lists for each agent seen since the controller started.
    public func snapshots(now: Int64) -> [AgentLivenessSnapshot] {
        agents.compactMap { $0 }.map { agent in
            AgentLivenessSnapshot(
                identity: agent.identity, state: agent.state.name, openSessions: agent.sessions.count,
                silenceNanoseconds: now - agent.lastHeard, leaseEpoch: nil, leaseWithheld: false,
                silenceTimeoutNanoseconds: silenceTimeout(agent, now: now), status: agent.status)
        }
    }

    public var connectedAgentCount: Int { agents.count { $0.map { !$0.sessions.isEmpty } ?? false } }

    private func silenceTimeout(_ agent: Agent, now: Int64) -> Int64 {
        silenceTimeout(lastStallAt: agent.lastStallAt, now: now)
    }

    private func silenceTimeout(lastStallAt: Int64?, now: Int64) -> Int64 {
        guard let lastStall = lastStallAt, now - lastStall <= limits.stallMemory else {
            return limits.silenceTimeout
        }
        return limits.lossySilenceTimeout
    }

    private func suspicionThreshold(_ timeout: Int64) -> Int64 {
        max(2 * limits.heartbeatInterval, timeout / 2)
    }

    private static func noteFence(_ epoch: UInt64, _ agent: inout Agent, now: Int64, into events: inout [LivenessEvent]) {
        // Hello names the epoch; a heartbeat's fenced bit alone reports 0 until then.
        guard agent.reportedFence == nil || (agent.reportedFence == 0 && epoch != 0) else { return }
        agent.reportedFence = epoch
        events.append(LivenessEvent(
            kind: .fenced, agent: agent.identity, atNanoseconds: now, reason: "agent fenced itself on lease loss",
            fencedAtEpoch: epoch == 0 ? nil : epoch))
    }

    static func ms(_ nanoseconds: Int64) -> Int64 { nanoseconds / 1_000_000 }
}
