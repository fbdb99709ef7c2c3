import CEpoll
import Foundation
import NIOCore
import Synchronization
import WarmpoolModel
import WarmpoolWire

#if canImport(Glibc)
import Glibc
#endif

/// The capacity benchmark's agents: real handshakes and real MACed frames from the pure wire
/// machines, written straight to non-blocking sockets by one thread per core. The full agent
/// (`run`) carries NIO pipelines, lease timers and reconnection for every simulated agent; on the
/// 2-core machine its loops ran up to 450 ms late at 10,000 agents and the controller rightly
/// suspected the late agents. This costs about 30 % less per beat at 5,000 agents; most of what
/// is left is the kernel's loopback TCP path, which the sender pays for the receiver too.
///
/// Every 5 s each thread prints one line: agents connected, beats sent and over how long, its
/// worst lateness behind its schedule, the beats that left a silence longer than an interval plus
/// `lateThreshold` since the agent's previous beat and the agents they were for (`late=` their
/// indices, as ranges), sessions closed, and when the window ended (`at_ns`: CLOCK_MONOTONIC, as
/// the controller's events carry it, so that a verdict can be matched to its window). A silence
/// this process made is one the controller rightly judges: the bench leaves those verdicts out
/// of the controller's. An agent here connects once and never reconnects; a session the
/// controller closes is counted and stays closed. Leases are checked (grants are opened and
/// verified) but not kept: every beat reports a healthy, lease-holding primary, which is what the
/// controller's hot path sees.
final class BeatEngine: @unchecked Sendable {
    struct Agent {
        var fd: Int32
        /// Its number in the agent ids (`PREFIX<index>`): what the late list names.
        var index: Int
        var machine: AgentSessionStateMachine
        var pending = ByteBuffer()
    }

    private let address: ControllerAddress
    private let agents: [(id: String, secret: AgentSecret, index: Int)]
    private let interval: Int64
    private let rampPerSecond: Int
    private let lateThreshold: Int64
    private let name: String
    private let stop: StopFlag

    init(name: String, address: ControllerAddress, agents: [(id: String, secret: AgentSecret, index: Int)],
         interval: Int64, rampPerSecond: Int, lateThreshold: Int64, stop: StopFlag) {
        self.name = name
        self.address = address
        self.agents = agents
        self.interval = interval
        self.rampPerSecond = rampPerSecond
        self.lateThreshold = lateThreshold
        self.stop = stop
    }

    /// Runs on the calling thread until `stop` is set: handshakes new agents at the ramp rate,
    /// beats every agent once an interval (spread over it in 1 ms phases), reads grants.
    func run() {
        let epoll = epoll_create1(Int32(EPOLL_CLOEXEC))
        precondition(epoll >= 0, "epoll_create1 failed")
        defer { close(epoll) }
        var live: [Agent] = []
        live.reserveCapacity(agents.count)
        let start = MonotonicClock.now()
        var clock = PhasedClock(interval: interval, now: start)
        var next = 0  // the next agent to connect
        var closed = 0
        var failedHandshakes = 0
        var worstLateness: Int64 = 0
        var beatsSent = 0
        var lateBeats = 0
        // What the controller sees is the silence between an agent's beats, not how far behind
        // its schedule the generator runs: one uniformly 700 ms behind still beats every agent
        // once an interval. So a beat is late by how much later it came than its phase's
        // previous beat did (the silence past one interval), and each phase keeps its worst in
        // the window: an agent beats in one phase (its slot modulo the phases), so this is every
        // agent's worst at the cost of one store per phase rather than one per beat.
        var previousLateness = [Int64](repeating: 0, count: clock.phases)
        var phaseLateness = [Int64](repeating: 0, count: clock.phases)
        var windowStart = start
        var reportAt = start + 5_000_000_000
        var scratch = ByteBuffer()
        var events = [epoll_event](repeating: epoll_event(), count: 256)
        let status = AgentStatus(
            flags: [.volumeMounted, .volumeIDMatches, .volumeWritable, .leaseHeld], gpuCount: 1, gpuHealthyCount: 1,
            gpuMaxTemperatureCelsius: 61, gpuMaxUtilizationPercent: 97, volumeFreeMebibytes: 512_000,
            workload: .running)
        while !stop.isSet {
            let (phase, _, due) = clock.next()
            let now = MonotonicClock.now()

            // New agents, at the ramp rate: the controller sees a stream of handshakes, not a herd.
            let connectsDue = min(agents.count, Int((now - start) / 1_000_000 * Int64(rampPerSecond) / 1_000) + 1)
            // At most two per tick: a handshake blocks for a round trip or two, and a thread that
            // caught up on a backlog of them would beat its live agents late.
            var handshakes = 0
            while next < connectsDue, handshakes < 2 {
                handshakes += 1
                if let agent = handshake(agents[next], epoll: epoll, slot: live.count) {
                    live.append(agent)
                } else {
                    failedHandshakes += 1
                }
                next += 1
            }

            // This phase's beats, late by however long the handshakes and the sleep's overshoot
            // took past the phase's deadline (the writes themselves take microseconds).
            let sentAt = MonotonicClock.now()
            let lateness = sentAt - due
            worstLateness = max(worstLateness, lateness)
            let silencePastInterval = lateness - previousLateness[phase]
            previousLateness[phase] = lateness
            phaseLateness[phase] = max(phaseLateness[phase], silencePastInterval)
            let isLate = silencePastInterval > lateThreshold
            var index = phase
            while index < live.count {
                if live[index].fd >= 0, let sealed = live[index].machine.sealHeartbeat(sentAtNanoseconds: UInt64(sentAt), status: status) {
                    scratch.clear()
                    sealed.frame.write(into: &scratch)
                    let written = scratch.withUnsafeReadableBytes { write(live[index].fd, $0.baseAddress, $0.count) }
                    beatsSent += 1
                    if isLate { lateBeats += 1 }
                    if written != scratch.readableBytes {
                        closed += 1
                        close(live[index].fd)
                        live[index].fd = -1
                    }
                }
                index += clock.phases
            }

            // Grants (and closes) that have arrived.
            let ready = epoll_wait(epoll, &events, Int32(events.count), 0)
            if ready > 0 {
                for event in events[0..<Int(ready)] {
                    let slot = Int(event.data.u64)
                    guard live[slot].fd >= 0 else { continue }
                    if !receive(&live[slot]) {
                        closed += 1
                        close(live[slot].fd)
                        live[slot].fd = -1
                    }
                }
            }

            if now >= reportAt {
                // One machine-readable line per window: the bench checks that the agents really
                // beat at 10 Hz (a saturated machine beats them slower, and hides it).
                let connected = live.count { $0.fd >= 0 }
                let seconds = Double(now - windowStart) / 1e9
                var late: [Int] = []
                for slot in live.indices where phaseLateness[slot % clock.phases] > lateThreshold {
                    late.append(live[slot].index)
                }
                FileHandle.standardError.write(Data(
                    ("loadgen: \(name) agents=\(connected) beats=\(beatsSent) seconds=\(String(format: "%.3f", seconds)) "
                        + "late_max_ms=\(worstLateness / 1_000_000) late_beats=\(lateBeats) late_agents=\(late.count) "
                        + "closed=\(closed) failed_handshakes=\(failedHandshakes) at_ns=\(now) late=\(Self.ranges(late))\n").utf8))
                worstLateness = 0
                beatsSent = 0
                lateBeats = 0
                for phase in phaseLateness.indices { phaseLateness[phase] = 0 }
                windowStart = now
                reportAt = now + 5_000_000_000
            }
        }
        for agent in live where agent.fd >= 0 { close(agent.fd) }
    }

    /// Agent indices as "3-7,9,12" ("-" for none): at 10,000 agents a generator that fell behind
    /// has most of them late, and as ranges that line stays short.
    static func ranges(_ indices: [Int]) -> String {
        let sorted = indices.sorted()
        var parts: [String] = []
        var position = 0
        while position < sorted.count {
            var end = position
            while end + 1 < sorted.count, sorted[end + 1] == sorted[end] + 1 { end += 1 }
            parts.append(end == position ? "\(sorted[position])" : "\(sorted[position])-\(sorted[end])")
            position = end + 1
        }
        return parts.isEmpty ? "-" : parts.joined(separator: ",")
    }

    /// Connects and completes the handshake, blocking (a loopback round trip or two); returns the
    /// agent with its socket non-blocking and registered for reads under `slot`.
    private func handshake(_ agent: (id: String, secret: AgentSecret, index: Int), epoll: Int32, slot: Int) -> Agent? {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return nil }
        var one: Int32 = 1
        setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
        let connected = address.connect(fd)
        var timeout = timeval(tv_sec: 5, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        let hello = Hello(
            clientNonce: HandshakeCrypto.randomNonce(), role: agent.index % 2 == 0 ? .primary : .standby,
            instanceID: UInt64(agent.index + 1), machineID: UInt64(agent.index / 2 + 1), agentID: agent.id,
            softwareVersion: "loadgen", incarnation: Hello.newIncarnation())
        var result = Agent(fd: fd, index: agent.index, machine: AgentSessionStateMachine(hello: hello, secret: agent.secret))
        guard connected == 0, send(result.machine.start(), to: fd) else {
            close(fd)
            return nil
        }
        let parser = FrameParser()
        var buffer = ByteBuffer()
        var bytes = [UInt8](repeating: 0, count: 512)
        while result.machine.welcome == nil {
            let count = read(fd, &bytes, bytes.count)
            guard count > 0 else {
                close(fd)
                return nil
            }
            buffer.writeBytes(bytes[0..<count])
            while let frame = try? parser.parse(&buffer) {
                switch result.machine.frameReceived(frame) {
                case .send(let reply):
                    guard send(reply, to: fd) else {
                        close(fd)
                        return nil
                    }
                case .established, .none, .lease:
                    break
                case .rejected, .close:
                    close(fd)
                    return nil
                }
            }
        }
        result.pending = buffer
        _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
        var event = epoll_event()
        event.events = EPOLLIN.rawValue | EPOLLRDHUP.rawValue
        event.data.u64 = UInt64(slot)
        epoll_ctl(epoll, EPOLL_CTL_ADD, fd, &event)
        return result
    }

    /// Reads what the socket holds and opens every whole frame; false when the session is over.
    private func receive(_ agent: inout Agent) -> Bool {
        var bytes = [UInt8](repeating: 0, count: 1024)
        while true {
            let count = read(agent.fd, &bytes, bytes.count)
            if count > 0 {
                agent.pending.writeBytes(bytes[0..<count])
                continue
            }
            if count < 0, errno == EAGAIN || errno == EWOULDBLOCK { break }
            return false  // closed by the controller, or an error
        }
        let parser = FrameParser()
        while let frame = try? parser.parse(&agent.pending) {
            if case .close = agent.machine.frameReceived(frame) { return false }
        }
        return true
    }

    private func send(_ frame: Frame, to fd: Int32) -> Bool {
        var buffer = ByteBuffer()
        frame.write(into: &buffer)
        return buffer.withUnsafeReadableBytes { write(fd, $0.baseAddress, $0.count) } == buffer.readableBytes
    }
}

/// Set once, read by every beat thread.
final class StopFlag: Sendable {
    private let flag = Atomic<Bool>(false)
    var isSet: Bool { flag.load(ordering: .relaxed) }
    func set() { flag.store(true, ordering: .relaxed) }
}

extension ControllerAddress {
    /// Connects `fd` to this address, which must be IPv4; `connect`'s own result (-1 with
    /// EINPROGRESS on a non-blocking socket).
    func connect(_ fd: Int32) -> Int32 {
        var socketAddress = sockaddr_in()
        socketAddress.sin_family = sa_family_t(AF_INET)
        socketAddress.sin_port = in_port_t(UInt16(port).bigEndian)
        inet_pton(AF_INET, host, &socketAddress.sin_addr)
        return withUnsafePointer(to: &socketAddress) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
    }
}
