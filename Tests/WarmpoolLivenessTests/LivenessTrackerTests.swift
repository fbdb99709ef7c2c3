import Testing
import WarmpoolModel
import WarmpoolWire
@testable import WarmpoolLiveness

/// The detector with time passed in: every test is exact, nothing sleeps.
@Suite struct LivenessTrackerTests {
    static let ms: Int64 = 1_000_000
    let agent = AgentIdentity(agentID: "gpu-1", instanceID: 11, machineID: 7, role: .primary, softwareVersion: "t", incarnation: 1)

    func tracker(interval: Int64 = 100 * ms) -> LivenessTracker {
        LivenessTracker(configuration: DetectorConfiguration(heartbeatInterval: .nanoseconds(interval)))
    }

    func kinds(_ events: [LivenessEvent]) -> [LivenessEvent.Kind] { events.map(\.kind) }

    /// Beats on `sessions` every `interval` from `start` up to `end` (exclusive), ticking every 10 ms.
    func run(_ tracker: inout LivenessTracker, sessions: [SessionID], from start: Int64, to end: Int64,
             interval: Int64 = 100 * ms, skip: (SessionID, Int64) -> Bool = { _, _ in false }) -> [LivenessEvent] {
        var events: [LivenessEvent] = []
        var now = start
        while now < end {
            if (now - start) % interval == 0 {
                for session in sessions where !skip(session, now) {
                    events += tracker.heartbeat(session, agentID: "gpu-1", sentAt: UInt64(now), status: AgentStatus(), now: now)
                }
            }
            events += tracker.tick(now: now)
            now += 10 * Self.ms
        }
        return events
    }

    @Test func defaultTimeoutIsThreeIntervalsPlus50ms() {
        #expect(DetectorConfiguration(heartbeatInterval: .milliseconds(100)).silenceTimeout == .milliseconds(350))
        #expect(DetectorConfiguration(heartbeatInterval: .milliseconds(50)).silenceTimeout == .milliseconds(200))
    }

    @Test func steadyBeatsRaiseNothing() {
        var tracker = tracker()
        #expect(kinds(tracker.sessionEstablished(1, agent: agent, fencedAtEpoch: nil, now: 0)) == [.connected])
        #expect(run(&tracker, sessions: [1], from: 0, to: 60_000 * Self.ms).isEmpty)
    }

    @Test func silenceIsSuspectedThenFailedAtTheTimeout() {
        var tracker = tracker()
        _ = tracker.sessionEstablished(1, agent: agent, fencedAtEpoch: nil, now: 0)
        #expect(run(&tracker, sessions: [1], from: 0, to: 1_001 * Self.ms).isEmpty)
        #expect(tracker.tick(now: 1_200 * Self.ms).isEmpty)
        #expect(kinds(tracker.tick(now: 1_201 * Self.ms)) == [.suspected])
        #expect(tracker.tick(now: 1_350 * Self.ms).isEmpty)
        let failed = tracker.tick(now: 1_351 * Self.ms)
        #expect(kinds(failed) == [.failed])
        #expect(failed.first?.silenceNanoseconds == 351 * Self.ms)
        #expect(failed.first?.agent == agent)
        #expect(tracker.tick(now: 5_000 * Self.ms).isEmpty, "a failure is reported once")
        #expect(!tracker.isLive(agentID: "gpu-1"))
    }

    @Test func aBeatAfterFailureRecovers() {
        var tracker = tracker()
        _ = tracker.sessionEstablished(1, agent: agent, fencedAtEpoch: nil, now: 0)
        _ = tracker.tick(now: 400 * Self.ms)
        let events = tracker.heartbeat(1, agentID: "gpu-1", sentAt: UInt64(900 * Self.ms), status: AgentStatus(), now: 900 * Self.ms)
        #expect(kinds(events) == [.recovered])
        #expect(events.first?.silenceNanoseconds == 900 * Self.ms)
        #expect(tracker.isLive(agentID: "gpu-1"), "whether the lease follows is the lease authority's call")
        #expect(!tracker.isLive(agentID: "ghost"))
    }

    @Test func aCrashIsNotLiveUntilANewSessionRecoversIt() {
        var tracker = tracker()
        _ = tracker.sessionEstablished(1, agent: agent, fencedAtEpoch: nil, now: 0)
        #expect(tracker.isLive(agentID: "gpu-1"))
        _ = tracker.sessionClosed(1, agentID: "gpu-1", graceful: false, now: 10 * Self.ms)
        #expect(!tracker.isLive(agentID: "gpu-1"))
        #expect(kinds(tracker.sessionEstablished(2, agent: agent, fencedAtEpoch: nil, now: 500 * Self.ms)) == [.recovered])
        #expect(tracker.isLive(agentID: "gpu-1"))
    }

    @Test func aCleanRestartKeepsTheLease() {
        var tracker = tracker()
        _ = tracker.sessionEstablished(1, agent: agent, fencedAtEpoch: nil, now: 0)
        _ = tracker.sessionClosed(1, agentID: "gpu-1", graceful: true, now: 10 * Self.ms)
        _ = tracker.sessionEstablished(2, agent: agent, fencedAtEpoch: nil, now: 500 * Self.ms)
        #expect(tracker.isLive(agentID: "gpu-1"))
    }

    @Test func closingEverySessionWithoutGoodbyeFailsAtOnce() {
        var tracker = tracker()
        _ = tracker.sessionEstablished(1, agent: agent, fencedAtEpoch: nil, now: 0)
        _ = tracker.sessionEstablished(2, agent: agent, fencedAtEpoch: nil, now: 0)
        #expect(tracker.sessionClosed(1, agentID: "gpu-1", graceful: false, now: 50 * Self.ms).isEmpty,
                "one session of two closing is not a failure")
        #expect(kinds(tracker.sessionClosed(2, agentID: "gpu-1", graceful: false, now: 51 * Self.ms)) == [.failed])
    }

    @Test func goodbyeLeavesInsteadOfFailing() {
        var tracker = tracker()
        _ = tracker.sessionEstablished(1, agent: agent, fencedAtEpoch: nil, now: 0)
        #expect(kinds(tracker.sessionClosed(1, agentID: "gpu-1", graceful: true, now: 10 * Self.ms)) == [.left])
        #expect(tracker.tick(now: 10_000 * Self.ms).isEmpty)
        #expect(kinds(tracker.sessionEstablished(3, agent: agent, fencedAtEpoch: nil, now: 20_000 * Self.ms)) == [.connected])
    }

    @Test func aStallOnOneOfTwoSessionsIsCoveredByTheOther() {
        var tracker = tracker()
        _ = tracker.sessionEstablished(1, agent: agent, fencedAtEpoch: nil, now: 0)
        _ = tracker.sessionEstablished(2, agent: agent, fencedAtEpoch: nil, now: 0)
        // Session 1 loses 1.5 s to retransmission backoff (its beats arrive late, all at once).
        let events = run(&tracker, sessions: [1, 2], from: 0, to: 5_000 * Self.ms) { session, now in
            session == 1 && now >= 1_000 * Self.ms && now < 2_500 * Self.ms
        }
        #expect(events.isEmpty)
    }

    @Test func aStallPutsTheAgentOnTheLossyTimeoutForAWhile() {
        var tracker = tracker()
        _ = tracker.sessionEstablished(1, agent: agent, fencedAtEpoch: nil, now: 0)
        _ = tracker.sessionEstablished(2, agent: agent, fencedAtEpoch: nil, now: 0)
        #expect(tracker.currentSilenceTimeout(agentID: "gpu-1", now: 0) == 350 * Self.ms)
        _ = run(&tracker, sessions: [1, 2], from: 0, to: 2_000 * Self.ms) { session, now in
            session == 1 && now >= 1_000 * Self.ms && now < 1_400 * Self.ms
        }
        // Session 1 was silent 500 ms while session 2 delivered: a stall, recorded at 1400 ms.
        #expect(tracker.currentSilenceTimeout(agentID: "gpu-1", now: 2_000 * Self.ms) == 900 * Self.ms)
        #expect(tracker.currentSilenceTimeout(agentID: "gpu-1", now: 61_400 * Self.ms) == 900 * Self.ms)
        #expect(tracker.currentSilenceTimeout(agentID: "gpu-1", now: 61_401 * Self.ms) == 350 * Self.ms)
    }

    @Test func aShortGapIsJitterNotAStall() {
        var tracker = tracker()
        _ = tracker.sessionEstablished(1, agent: agent, fencedAtEpoch: nil, now: 0)
        _ = tracker.sessionEstablished(2, agent: agent, fencedAtEpoch: nil, now: 0)
        // One beat lost on session 1: a 200 ms gap stays under the 250 ms stall threshold.
        _ = run(&tracker, sessions: [1, 2], from: 0, to: 2_000 * Self.ms) { session, now in
            session == 1 && now == 1_000 * Self.ms
        }
        #expect(tracker.currentSilenceTimeout(agentID: "gpu-1", now: 2_000 * Self.ms) == 350 * Self.ms)
    }

    @Test func onTheLossyTimeoutALongDoubleStallIsNotAFailure() {
        var tracker = tracker()
        _ = tracker.sessionEstablished(1, agent: agent, fencedAtEpoch: nil, now: 0)
        _ = tracker.sessionEstablished(2, agent: agent, fencedAtEpoch: nil, now: 0)
        // First a stall on one session, then both sessions held back 700 ms by retransmission.
        let events = run(&tracker, sessions: [1, 2], from: 0, to: 5_000 * Self.ms) { session, now in
            (session == 1 && now >= 1_000 * Self.ms && now < 1_400 * Self.ms)
                || (now >= 3_000 * Self.ms && now < 3_700 * Self.ms)
        }
        #expect(!kinds(events).contains(.failed))
    }

    /// The drill's case: a stopped agent whose last beats were held back on one session was failed
    /// a stall's length late, because the late copies counted as hearing from it.
    @Test func aLateCopyOfABeatAlreadyHeardDoesNotPutOffTheFailure() {
        var tracker = tracker()
        _ = tracker.sessionEstablished(1, agent: agent, fencedAtEpoch: nil, now: 0)
        _ = tracker.sessionEstablished(2, agent: agent, fencedAtEpoch: nil, now: 0)
        // An early stall on session 1 puts the agent on the 900 ms timeout; from 4,800 ms session 1
        // is held back again. The agent stops right after its beat at 5,000 ms.
        var events = run(&tracker, sessions: [1, 2], from: 0, to: 5_000 * Self.ms) { session, now in
            session == 1 && ((now >= 1_000 * Self.ms && now < 1_400 * Self.ms) || now >= 4_800 * Self.ms)
        }
        events += tracker.heartbeat(2, agentID: "gpu-1", sentAt: UInt64(5_000 * Self.ms), status: AgentStatus(),
                                    now: 5_000 * Self.ms)
        var now = 5_000 * Self.ms
        while now < 7_000 * Self.ms {
            now += 10 * Self.ms
            if now == 5_250 * Self.ms {
                // Session 1's retransmission delivers the copies session 2 already brought.
                for sent: Int64 in [4_800, 4_900, 5_000] {
                    events += tracker.heartbeat(1, agentID: "gpu-1", sentAt: UInt64(sent * Self.ms),
                                                status: AgentStatus(), now: now)
                }
            }
            events += tracker.tick(now: now)
        }
        #expect(tracker.currentSilenceTimeout(agentID: "gpu-1", now: now) == 900 * Self.ms)
        let failed = events.filter { $0.kind == .failed }
        #expect(failed.count == 1)
        #expect(failed.first?.atNanoseconds == 5_910 * Self.ms, "900 ms after the last beat, not after its late copy")
    }

    @Test func aNewIncarnationComparesBeatsAfresh() {
        var tracker = tracker()
        _ = tracker.sessionEstablished(1, agent: agent, fencedAtEpoch: nil, now: 0)
        _ = tracker.heartbeat(1, agentID: "gpu-1", sentAt: 9_000_000 * UInt64(Self.ms), status: AgentStatus(),
                              now: 100 * Self.ms)
        _ = tracker.sessionClosed(1, agentID: "gpu-1", graceful: true, now: 150 * Self.ms)
        // A restarted agent on another host: its clock reads less than the old one's did.
        var restarted = agent
        restarted.incarnation = 2
        _ = tracker.sessionEstablished(2, agent: restarted, fencedAtEpoch: nil, now: 200 * Self.ms)
        var events: [LivenessEvent] = []
        for step: Int64 in 3...20 {
            events += tracker.heartbeat(2, agentID: "gpu-1", sentAt: UInt64(step * 100 * Self.ms), status: AgentStatus(),
                                        now: step * 100 * Self.ms)
            events += tracker.tick(now: step * 100 * Self.ms + 50 * Self.ms)
        }
        #expect(events.isEmpty, "its beats count although they look older than the old process's")
    }

    /// The outside client's finding: a stalled agent was failed 2,420 ms after its last real beat,
    /// because a session opened beside the stalled one reset the comparison and its stale copies
    /// counted as news. Another session of the same process compares against the same beats.
    @Test func aNewSessionOfTheSameIncarnationDoesNotMakeLateCopiesNews() {
        var tracker = tracker()
        _ = tracker.sessionEstablished(1, agent: agent, fencedAtEpoch: nil, now: 0)
        var events = run(&tracker, sessions: [1], from: 0, to: 1_000 * Self.ms)
        // The agent's last real beat went out at 900 ms; it stops. A second session opens at
        // 1,000 ms and delivers copies of beats already heard (a stalled queue flushing).
        events += tracker.sessionEstablished(2, agent: agent, fencedAtEpoch: nil, now: 1_000 * Self.ms)
        for sent: Int64 in [700, 800, 900] {
            events += tracker.heartbeat(2, agentID: "gpu-1", sentAt: UInt64(sent * Self.ms), status: AgentStatus(),
                                        now: 1_100 * Self.ms)
        }
        var now = 1_000 * Self.ms
        while now < 3_000 * Self.ms {
            now += 10 * Self.ms
            events += tracker.tick(now: now)
        }
        let failed = events.filter { $0.kind == .failed }
        #expect(failed.count == 1)
        #expect(failed.first.map { $0.atNanoseconds <= 1_360 * Self.ms } == true,
                "failed within the timeout of the session opening, not put off by the copies: \(failed)")
    }

    @Test func aHangThatFailedTheAgentDoesNotRaiseTheTimeout() {
        var tracker = tracker()
        _ = tracker.sessionEstablished(1, agent: agent, fencedAtEpoch: nil, now: 0)
        _ = tracker.sessionEstablished(2, agent: agent, fencedAtEpoch: nil, now: 0)
        let events = run(&tracker, sessions: [1, 2], from: 0, to: 3_000 * Self.ms) { _, now in
            now >= 1_000 * Self.ms && now < 2_000 * Self.ms
        }
        #expect(kinds(events) == [.suspected, .failed, .recovered])
        #expect(tracker.currentSilenceTimeout(agentID: "gpu-1", now: 3_000 * Self.ms) == 350 * Self.ms)
    }

    @Test func fencingIsReportedOnceWithItsEpoch() {
        var tracker = tracker()
        var fenced = AgentStatus()
        fenced.flags.insert(.fenced)
        _ = tracker.sessionEstablished(1, agent: agent, fencedAtEpoch: nil, now: 0)
        let fromBeat = tracker.heartbeat(1, agentID: "gpu-1", sentAt: UInt64(100 * Self.ms), status: fenced, now: 100 * Self.ms)
        #expect(kinds(fromBeat) == [.fenced])
        #expect(fromBeat.first?.fencedAtEpoch == nil)
        #expect(tracker.heartbeat(1, agentID: "gpu-1", sentAt: UInt64(200 * Self.ms), status: fenced, now: 200 * Self.ms).isEmpty)
        let fromHello = tracker.sessionEstablished(2, agent: agent, fencedAtEpoch: 9, now: 300 * Self.ms)
        #expect(kinds(fromHello) == [.fenced])
        #expect(fromHello.first?.fencedAtEpoch == 9)
        // A restarted process that fences again is reported again.
        _ = tracker.sessionClosed(1, agentID: "gpu-1", graceful: false, now: 400 * Self.ms)
        _ = tracker.sessionClosed(2, agentID: "gpu-1", graceful: false, now: 400 * Self.ms)
        _ = tracker.sessionEstablished(3, agent: agent, fencedAtEpoch: nil, now: 500 * Self.ms)
        #expect(kinds(tracker.heartbeat(3, agentID: "gpu-1", sentAt: UInt64(600 * Self.ms), status: fenced, now: 600 * Self.ms)) == [.fenced])
    }

    @Test func theLatestHeartbeatSummaryIsKept() {
        var tracker = tracker()
        _ = tracker.sessionEstablished(1, agent: agent, fencedAtEpoch: nil, now: 0)
        #expect(tracker.status(agentID: "gpu-1") == nil)
        var status = AgentStatus(flags: [.volumeMounted], gpuCount: 4, gpuHealthyCount: 3)
        _ = tracker.heartbeat(1, agentID: "gpu-1", sentAt: UInt64(100 * Self.ms), status: status, now: 100 * Self.ms)
        status.gpuHealthyCount = 4
        _ = tracker.heartbeat(1, agentID: "gpu-1", sentAt: UInt64(200 * Self.ms), status: status, now: 200 * Self.ms)
        #expect(tracker.status(agentID: "gpu-1") == status)
    }

    @Test func beatsFromAnUnknownSessionAreIgnored() {
        var tracker = tracker()
        #expect(tracker.heartbeat(99, agentID: "ghost", sentAt: UInt64(0), status: AgentStatus(), now: 0).isEmpty)
        #expect(tracker.sessionClosed(99, agentID: "ghost", graceful: false, now: 0).isEmpty)
        #expect(!tracker.isLive(agentID: "ghost"))
    }

    /// Entries are forgotten when their instance is destroyed, unless an agent still holds a
    /// session: without this the detector keeps every agent it ever saw.
    @Test func forgettingAnInstanceDropsItsIdleAgentsOnly() {
        var tracker = tracker()
        var other = agent
        other.agentID = "gpu-2"
        other.instanceID = 12
        _ = tracker.sessionEstablished(1, agent: agent, fencedAtEpoch: nil, now: 0)
        _ = tracker.sessionEstablished(2, agent: other, fencedAtEpoch: nil, now: 0)
        tracker.forget(instanceID: 11)
        #expect(tracker.snapshots(now: 0).count == 2, "a connected agent is kept")
        _ = tracker.sessionClosed(1, agentID: "gpu-1", graceful: true, now: 10 * Self.ms)
        tracker.forget(instanceID: 11)
        #expect(tracker.snapshots(now: 0).map(\.identity.agentID) == ["gpu-2"])
    }

    /// A session's beats go by its agent's slot: the same verdicts as by id.
    @Test func beatsBySlotAreBeatsByID() throws {
        var bySlot = tracker()
        var byID = tracker()
        _ = bySlot.sessionEstablished(1, agent: agent, fencedAtEpoch: nil, now: 0)
        _ = byID.sessionEstablished(1, agent: agent, fencedAtEpoch: nil, now: 0)
        let slot = try #require(bySlot.slot(agentID: "gpu-1"))
        var events: (slot: [LivenessEvent], id: [LivenessEvent]) = ([], [])
        // Beats, a silence that fails the agent, beats again (a recovery).
        for step in Int64(1)...30 {
            let now = step * 100 * Self.ms
            if !(8...14).contains(step) {
                events.slot += bySlot.heartbeat(1, slot: slot, sentAt: UInt64(now), status: AgentStatus(), now: now)
                events.id += byID.heartbeat(1, agentID: "gpu-1", sentAt: UInt64(now), status: AgentStatus(), now: now)
            }
            events.slot += bySlot.tick(now: now + 50 * Self.ms)
            events.id += byID.tick(now: now + 50 * Self.ms)
        }
        #expect(kinds(events.slot) == [.suspected, .failed, .recovered])
        #expect(events.slot == events.id)
        #expect(bySlot.identity(slot: slot)?.identity == agent)
        #expect(bySlot.identity(slot: slot)?.isLive == true)
    }

    /// A forgotten agent's slot goes to the next new agent; a beat naming the old session there is
    /// ignored (session ids are never reused), and each id still finds its own agent.
    @Test func aForgottenAgentsSlotIsReusedSafely() throws {
        var tracker = tracker()
        _ = tracker.sessionEstablished(1, agent: agent, fencedAtEpoch: nil, now: 0)
        let old = try #require(tracker.slot(agentID: "gpu-1"))
        _ = tracker.sessionClosed(1, agentID: "gpu-1", graceful: true, now: 10 * Self.ms)
        tracker.forget(instanceID: 11)
        #expect(tracker.slot(agentID: "gpu-1") == nil)
        #expect(tracker.identity(slot: old) == nil)
        let other = AgentIdentity(agentID: "gpu-2", instanceID: 12, machineID: 7, role: .standby, softwareVersion: "t")
        _ = tracker.sessionEstablished(2, agent: other, fencedAtEpoch: nil, now: 20 * Self.ms)
        #expect(tracker.slot(agentID: "gpu-2") == old, "the free slot is reused")
        #expect(tracker.heartbeat(1, slot: old, sentAt: 30, status: AgentStatus(), now: 30 * Self.ms).isEmpty)
        #expect(tracker.identity(agentID: "gpu-1") == nil)
        #expect(tracker.identity(agentID: "gpu-2") == other)
        #expect(tracker.snapshots(now: 40 * Self.ms).map(\.identity.agentID) == ["gpu-2"])
        #expect(tracker.connectedAgentCount == 1)
        // The old agent back: a slot of its own, beside gpu-2's.
        _ = tracker.sessionEstablished(3, agent: agent, fencedAtEpoch: nil, now: 50 * Self.ms)
        #expect(tracker.slot(agentID: "gpu-1") != old)
        #expect(Set(tracker.snapshots(now: 60 * Self.ms).map(\.identity.agentID)) == ["gpu-1", "gpu-2"])
    }

    @Test func oneAgentsFailureLeavesOthersAlone() {
        var tracker = tracker()
        let other = AgentIdentity(agentID: "gpu-2", instanceID: 12, machineID: 7, role: .standby, softwareVersion: "t")
        _ = tracker.sessionEstablished(1, agent: agent, fencedAtEpoch: nil, now: 0)
        _ = tracker.sessionEstablished(2, agent: other, fencedAtEpoch: nil, now: 0)
        var events: [LivenessEvent] = []
        for step in Int64(1)...20 {
            events += tracker.heartbeat(2, agentID: "gpu-2", sentAt: UInt64(step * 100 * Self.ms), status: AgentStatus(), now: step * 100 * Self.ms)
            events += tracker.tick(now: step * 100 * Self.ms)
        }
        #expect(events.map(\.agent.agentID) == ["gpu-1", "gpu-1"])
        #expect(kinds(events) == [.suspected, .failed])
    }
}

@Suite struct KeyFileTests {
    @Test func parsesCommentsAndBlankLines() throws {
        let secret = AgentSecret.random()
        let keyring = try KeyFile.parse("# agents\n\ngpu-1 \(secret.hex)  # the first\n")
        #expect(keyring.secret(for: "gpu-1") == secret)
        #expect(keyring.count == 1)
    }

    @Test func namesTheBadLine() {
        let secret = AgentSecret.random().hex
        #expect(throws: KeyFile.ParseError.self) { try KeyFile.parse("gpu-1 \(secret)\ngpu-2\n") }
        do {
            _ = try KeyFile.parse("gpu-1 \(secret)\ngpu-1 \(secret)\n")
            Issue.record("duplicate accepted")
        } catch let error as KeyFile.ParseError {
            #expect(error.line == 2)
            #expect(error.problem == "agent gpu-1 appears twice")
        } catch {
            Issue.record("unexpected \(error)")
        }
        #expect(throws: KeyFile.ParseError.self) { try KeyFile.parse("bad/id \(secret)\n") }
        #expect(throws: KeyFile.ParseError.self) { try KeyFile.parse("gpu-1 abc\n") }
    }
}
