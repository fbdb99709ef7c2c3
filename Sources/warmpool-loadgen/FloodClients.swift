import ArgumentParser
import Foundation
import NIOCore
import WarmpoolModel
import WarmpoolWire

#if canImport(Glibc)
import Glibc
#endif

/// The flood drill's two authenticated clients (Scripts/drill flood): new agents handshaking
/// while the agent port is flooded, and one agent sending Telemetry as fast as it can. Each is
/// one agent on one blocking socket, driven by the pure wire machine, so what it measures is the
/// controller and not a client's event loop.
extension LoadGenerator {
    struct Handshakes: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "New agents handshaking one after another: the time from connect to Welcome, one JSON line each.",
            discussion: """
                Every --every-ms the next agent (PREFIX0, PREFIX1, ... up to --count; give their keys with \
                `keys` first) connects, handshakes, sends Goodbye and closes. Each prints \
                {"agent_id", "ok", "ms", "error"}: ms from the start of the TCP connect to a verified Welcome, \
                or to the failure. An attempt gives up after --timeout-ms (the agent's own handshake timeout, \
                PROTOCOL.md §8, is 5 s). The controller must be at an IPv4 address.
                """)
        @OptionGroup var options: Options

        @OptionGroup var target: Target

        @Option(help: "One attempt every this many ms.")
        var everyMs: Int = 1_000

        @Option(help: "An attempt that has no Welcome after this many ms has failed.")
        var timeoutMs: Int = 5_000

        @Option(help: "Instance id of the first agent; the next ones count up (away from `run`'s 1, 2, ...).")
        var firstInstance: UInt64 = 1_000_000

        func run() throws {
            signal(SIGPIPE, SIG_IGN)
            let address = try target.address()
            for (index, id) in options.agentIDs().enumerated() {
                let started = MonotonicClock.now()
                var line: [String: Any] = ["agent_id": id]
                do {
                    var session = try BlockingSession(
                        address: address, agentID: id, secret: options.secret(for: id),
                        instanceID: firstInstance + UInt64(index), timeoutMs: timeoutMs)
                    line["ok"] = true
                    line["ms"] = Double(MonotonicClock.now() - started) / 1e6
                    if let goodbye = session.machine.sealGoodbye(reason: .shutdown) { _ = session.write(goodbye) }
                    session.close()
                } catch {
                    line["ok"] = false
                    line["ms"] = Double(MonotonicClock.now() - started) / 1e6
                    line["error"] = "\(error)"
                }
                printLine(line)
                let next = started + Int64(everyMs) * 1_000_000
                let wait = next - MonotonicClock.now()
                if wait > 0, index + 1 < options.count { usleep(UInt32(wait / 1_000)) }
            }
        }
    }

    struct TelemetryFlood: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "telemetry-flood",
            abstract: "One agent sending Telemetry as fast as it can, beside its heartbeats; one JSON line at the end.",
            discussion: """
                The agent PREFIX0 (its key from `keys`) handshakes, then writes Telemetry frames back to back, \
                the --kinds of document in turn, by default all four: a small one (~200 bytes, sent as it is), ~60 KiB that zstd cannot \
                shrink (sent as it is), ~60 KiB that it can (compressed), and ~1,000,000 bytes (compressed, \
                just under the 1 MiB the controller will decode). A heartbeat goes out every --interval-ms \
                between them. A session the controller closes is counted and a new one opened after 50 ms. \
                Prints {"seconds", "frames", "wire_bytes", "wire_bytes_per_s", "document_bytes_per_s", \
                "sessions", "closed_by_controller", "failed_handshakes", "kinds"}.
                """)
        @OptionGroup var options: Options

        @OptionGroup var target: Target

        @Option(help: "How long to send for.")
        var seconds: Double = 60

        @Option(help: "Heartbeat interval, ms.")
        var intervalMs: Int64 = 100

        @Option(help: "Instance id of the agent.")
        var instance: UInt64 = 2_000_000

        @Option(help: "The documents to send in turn, by name.")
        var kinds: String = TelemetryDocuments.names.joined(separator: ",")

        func run() throws {
            signal(SIGPIPE, SIG_IGN)
            // SIGTERM ends the flood early, still with its line: the drill stops it when the controller dies.
            signal(SIGTERM) { _ in telemetryFloodStopped = 1 }
            let address = try target.address()
            let id = "\(options.prefix)0"
            let chosen = kinds.split(separator: ",").map(String.init)
            guard !chosen.isEmpty, chosen.allSatisfy(TelemetryDocuments.names.contains) else {
                throw ValidationError("--kinds: a comma-separated list of \(TelemetryDocuments.names.joined(separator: ", "))")
            }
            let documents = TelemetryDocuments(agentID: id, instanceID: instance, only: chosen)
            var counts = [(frames: Int, wire: Int, document: Int)](repeating: (0, 0, 0), count: documents.kinds.count)
            var sessions = 0, closedByController = 0, failedHandshakes = 0, next = 0
            var session: BlockingSession?
            let status = AgentStatus(
                flags: [.volumeMounted, .volumeIDMatches, .volumeWritable, .leaseHeld], gpuCount: 1, gpuHealthyCount: 1,
                gpuMaxTemperatureCelsius: 61, gpuMaxUtilizationPercent: 97, volumeFreeMebibytes: 512_000,
                workload: .running)
            let started = MonotonicClock.now()
            let deadline = started + Int64(seconds * 1e9)
            var nextBeat = started
            while MonotonicClock.now() < deadline, telemetryFloodStopped == 0 {
                if session == nil {
                    do {
                        session = try BlockingSession(
                            address: address, agentID: id, secret: options.secret(for: id), instanceID: instance,
                            timeoutMs: 5_000)
                        sessions += 1
                        nextBeat = MonotonicClock.now()
                    } catch {
                        failedHandshakes += 1
                        usleep(50_000)
                        continue
                    }
                }
                var open = session!.drain()
                let now = MonotonicClock.now()
                if open, now >= nextBeat, let beat = session!.machine.sealHeartbeat(sentAtNanoseconds: UInt64(now), status: status) {
                    open = session!.write(beat.frame) > 0
                    nextBeat = max(nextBeat + intervalMs * 1_000_000, now)
                }
                let kind = next % documents.kinds.count
                if open, let frame = session!.machine.sealTelemetry(document: documents.kinds[kind].document) {
                    let written = session!.write(frame)
                    open = written > 0
                    if open {
                        counts[kind].frames += 1
                        counts[kind].wire += written
                        counts[kind].document += documents.kinds[kind].document.count
                        next += 1
                    }
                }
                if !open {
                    closedByController += 1
                    session!.close()
                    session = nil
                    usleep(50_000)
                }
            }
            if var last = session {
                if let goodbye = last.machine.sealGoodbye(reason: .shutdown) { _ = last.write(goodbye) }
                last.close()
            }
            let elapsed = Double(MonotonicClock.now() - started) / 1e9
            let wire = counts.reduce(0) { $0 + $1.wire }
            let document = counts.reduce(0) { $0 + $1.document }
            var kinds: [String: Any] = [:]
            for (index, kind) in documents.kinds.enumerated() {
                kinds[kind.name] = [
                    "frames": counts[index].frames, "wire_bytes": counts[index].wire,
                    "document_bytes": counts[index].document,
                ]
            }
            printLine([
                "seconds": elapsed, "frames": counts.reduce(0) { $0 + $1.frames }, "wire_bytes": wire,
                "wire_bytes_per_s": Double(wire) / elapsed, "document_bytes_per_s": Double(document) / elapsed,
                "sessions": sessions, "closed_by_controller": closedByController,
                "failed_handshakes": failedHandshakes, "kinds": kinds,
            ])
        }
    }
}

/// Set by SIGTERM; the telemetry flood checks it before each frame.
nonisolated(unsafe) private var telemetryFloodStopped: sig_atomic_t = 0

/// The documents the telemetry flood sends in turn, built once.
struct TelemetryDocuments {
    static let names = ["small_plain", "large_plain", "large_compressed", "huge_compressed"]
    let kinds: [(name: String, document: [UInt8])]

    init(agentID: String, instanceID: UInt64, only: [String] = names) {
        let head = "{\"agent_id\":\"\(agentID)\",\"epoch\":1,\"instance_id\":\(instanceID),\"machine_id\":\(instanceID),"
            + "\"role\":\"primary\",\"version\":\"loadgen\",\"workload\":\"running\""
        let small = head + "}"
        // Random base64 is incompressible: sealTelemetry sends it as it is, the most bytes a frame can carry.
        var random = SystemRandomNumberGenerator()
        let noise = Data((0..<45_000).map { _ in UInt8.random(in: 0...255, using: &random) }).base64EncodedString()
        let plain = head + ",\"padding\":\"\(noise)\"}"
        let gpu = "{\"healthy\":true,\"index\":0,\"memory_total_bytes\":85899345920,\"memory_used_bytes\":1073741824,"
            + "\"name\":\"NVIDIA H100 80GB HBM3\",\"temperature_celsius\":61,\"utilization_percent\":97,\"xid_critical_errors\":0}"
        let gpus = { (count: Int) in
            head + ",\"gpu\":{\"available\":true,\"gpus\":[" + Array(repeating: gpu, count: count).joined(separator: ",") + "]}}"
        }
        let all: [(name: String, document: [UInt8])] = [
            ("small_plain", Array(small.utf8)), ("large_plain", Array(plain.utf8)),
            ("large_compressed", Array(gpus(60_000 / (gpu.count + 1)).utf8)),
            ("huge_compressed", Array(gpus(1_000_000 / (gpu.count + 1)).utf8)),
        ]
        precondition(all[1].document.count <= 65_527, "a plain document must fit one frame")
        precondition(all[3].document.count < Zstd.maximumDecompressedSize)
        kinds = all.filter { only.contains($0.name) }
    }
}

/// One agent session on a blocking IPv4 socket: connect and the real handshake within a deadline,
/// then whole frames written straight to the socket.
struct BlockingSession {
    enum Failure: Error, CustomStringConvertible {
        case connect(String)
        case handshake(String)

        var description: String {
            switch self {
            case .connect(let reason): "connect: \(reason)"
            case .handshake(let reason): "handshake: \(reason)"
            }
        }
    }

    private(set) var fd: Int32
    var machine: AgentSessionStateMachine
    private var inbound = ByteBuffer()
    private var scratch = ByteBuffer()

    /// Connected and established (a verified Welcome) within `timeoutMs`, or throws.
    init(address: ControllerAddress, agentID: String, secret: AgentSecret, instanceID: UInt64, timeoutMs: Int) throws(Failure) {
        let deadline = MonotonicClock.now() + Int64(timeoutMs) * 1_000_000
        let hello = Hello(
            clientNonce: HandshakeCrypto.randomNonce(), role: .primary, instanceID: instanceID, machineID: instanceID,
            agentID: agentID, softwareVersion: "loadgen", incarnation: Hello.newIncarnation())
        machine = AgentSessionStateMachine(hello: hello, secret: secret)
        fd = try Self.connect(to: address, deadline: deadline)
        do throws(Failure) {
            try handshake(deadline: deadline)
        } catch {
            close()
            throw error
        }
        _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK)
        var timeout = timeval(tv_sec: 5, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    }

    /// A non-blocking connect, waited for until `deadline`.
    private static func connect(to address: ControllerAddress, deadline: Int64) throws(Failure) -> Int32 {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
        guard fd >= 0 else { throw .connect(String(cString: strerror(errno))) }
        var one: Int32 = 1
        setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
        let result = address.connect(fd)
        if result != 0 {
            let error = errno
            guard error == EINPROGRESS else {
                Glibc.close(fd)
                throw .connect(String(cString: strerror(error)))
            }
            guard Self.wait(fd, for: Int16(POLLOUT), until: deadline) else {
                Glibc.close(fd)
                throw .connect("timed out")
            }
            var failure: Int32 = 0
            var length = socklen_t(MemoryLayout<Int32>.size)
            getsockopt(fd, SOL_SOCKET, SO_ERROR, &failure, &length)
            if failure != 0 {
                Glibc.close(fd)
                throw .connect(String(cString: strerror(failure)))
            }
        }
        return fd
    }

    /// Hello, Challenge, Proof, Welcome, each read waited for until `deadline`.
    private mutating func handshake(deadline: Int64) throws(Failure) {
        let hello = machine.start()
        guard write(hello) > 0 else { throw .handshake("Hello not written") }
        let parser = FrameParser()
        var bytes = [UInt8](repeating: 0, count: 512)
        while machine.welcome == nil {
            guard Self.wait(fd, for: Int16(POLLIN), until: deadline) else { throw .handshake("timed out") }
            let count = read(fd, &bytes, bytes.count)
            if count < 0, errno == EAGAIN || errno == EINTR { continue }
            guard count > 0 else { throw .handshake(count == 0 ? "closed by the controller" : String(cString: strerror(errno))) }
            inbound.writeBytes(bytes[0..<count])
            while true {
                let frame: Frame?
                do { frame = try parser.parse(&inbound) } catch { throw .handshake("\(error)") }
                guard let frame else { break }
                switch machine.frameReceived(frame) {
                case .send(let reply):
                    guard write(reply) > 0 else { throw .handshake("Proof not written") }
                case .established, .none, .lease:
                    break
                case .rejected(let reject):
                    throw .handshake("rejected: \(reject.reason)")
                case .close(let reason):
                    throw .handshake("\(reason)")
                }
            }
        }
    }

    private static func wait(_ fd: Int32, for events: Int16, until deadline: Int64) -> Bool {
        while true {
            let left = (deadline - MonotonicClock.now()) / 1_000_000
            guard left > 0 else { return false }
            var entry = pollfd(fd: fd, events: events, revents: 0)
            let ready = poll(&entry, 1, Int32(clamping: left))
            if ready > 0 { return true }
            if ready < 0, errno != EINTR { return false }
        }
    }

    /// Writes the whole frame; its length on the wire, or 0 when the socket is closed or stuck.
    mutating func write(_ frame: Frame) -> Int {
        scratch.clear()
        frame.write(into: &scratch)
        var offset = 0
        let total = scratch.readableBytes
        while offset < total {
            let written = scratch.withUnsafeReadableBytes { send(fd, $0.baseAddress! + offset, total - offset, Int32(MSG_NOSIGNAL)) }
            if written < 0, errno == EINTR { continue }
            if written < 0, errno == EAGAIN, fcntl(fd, F_GETFL) & O_NONBLOCK != 0 {
                _ = Self.wait(fd, for: Int16(POLLOUT), until: MonotonicClock.now() + 5_000_000_000)
                continue
            }
            guard written > 0 else { return 0 }
            offset += written
        }
        return total
    }

    /// Reads what has arrived (lease grants) without waiting; false once the controller has closed.
    mutating func drain() -> Bool {
        var bytes = [UInt8](repeating: 0, count: 4096)
        while true {
            let count = recv(fd, &bytes, bytes.count, Int32(MSG_DONTWAIT))
            if count > 0 {
                inbound.writeBytes(bytes[0..<count])
                continue
            }
            if count < 0, errno == EAGAIN || errno == EWOULDBLOCK { break }
            return false
        }
        let parser = FrameParser()
        while let frame = try? parser.parse(&inbound) {
            if case .close = machine.frameReceived(frame) { return false }
        }
        return true
    }

    mutating func close() {
        guard fd >= 0 else { return }
        Glibc.close(fd)
        fd = -1
    }
}

/// One JSON object on its own line, flushed at once: the drill reads the lines as they come.
private func printLine(_ object: [String: Any]) {
    if let data = try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys]) {
        FileHandle.standardOutput.write(data + Data("\n".utf8))
    }
}
