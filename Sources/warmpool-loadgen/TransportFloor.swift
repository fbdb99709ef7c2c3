import CEpoll
import Foundation
import WarmpoolWire

#if canImport(Glibc)
import Glibc
#endif

/// What loopback TCP alone costs at a heartbeat load, with no protocol at all: `count` sockets,
/// each written a 46-byte frame (a heartbeat's size) every interval by sender threads and read by
/// one epoll receiver thread that discards the bytes. No MAC, no parsing, no detector: the floor
/// under any one-segment-per-beat protocol on this machine, to read the capacity figures against.
enum TransportFloor {
    struct Result {
        var senderCPUSeconds: Double
        var receiverCPUSeconds: Double
        var seconds: Double
        var framesSent: Int
    }

    static func measure(count: Int, senders: Int, interval: Int64, seconds: Double) throws -> Result {
        let listener = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard listener >= 0 else { throw ValidationErrorText("socket: \(errno)") }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(listener, $0, length) }
        }
        listen(listener, 4096)
        _ = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(listener, $0, &length) }
        }

        // Connect every socket first (accepting as we go), so that the window measures beats only.
        var clients: [Int32] = []
        var servers: [Int32] = []
        for _ in 0..<count {
            let client = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            var one: Int32 = 1
            setsockopt(client, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
            let connected = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(client, $0, length) }
            }
            guard connected == 0 else { throw ValidationErrorText("connect: \(errno) after \(clients.count) sockets") }
            let server = accept(listener, nil, nil)
            setsockopt(server, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
            clients.append(client)
            servers.append(server)
        }
        defer {
            for fd in clients + servers { close(fd) }
            close(listener)
        }

        let accepted = servers
        let deadline = MonotonicClock.now() + Int64(seconds * 1e9)
        let receiverCPU = ThreadCPU()
        let receiver = Thread {
            let epoll = epoll_create1(0)
            for (index, fd) in accepted.enumerated() {
                var event = epoll_event()
                event.events = EPOLLIN.rawValue
                event.data.u64 = UInt64(index)
                epoll_ctl(epoll, EPOLL_CTL_ADD, fd, &event)
            }
            var events = [epoll_event](repeating: epoll_event(), count: 256)
            var buffer = [UInt8](repeating: 0, count: 4096)
            let start = ThreadCPU.now()
            while MonotonicClock.now() < deadline {
                let ready = epoll_wait(epoll, &events, Int32(events.count), 10)
                guard ready > 0 else { continue }
                for event in events[0..<Int(ready)] {
                    _ = read(accepted[Int(event.data.u64)], &buffer, buffer.count)
                }
            }
            receiverCPU.set(ThreadCPU.now() - start)
            close(epoll)
        }
        receiver.start()

        let frame = [UInt8](repeating: 0x2a, count: 46)
        let phases = Int(max(1, interval / 1_000_000))
        let senderCPU = (0..<senders).map { _ in ThreadCPU() }
        let sent = (0..<senders).map { _ in ThreadCPU() }
        let finished = DispatchGroup()
        let started = MonotonicClock.now()
        for thread in 0..<senders {
            finished.enter()
            let mine = stride(from: thread, to: clients.count, by: senders).map { clients[$0] }
            Thread {
                let start = ThreadCPU.now()
                var nextTick = MonotonicClock.now()
                var tick = 0
                var frames = 0
                while MonotonicClock.now() < deadline {
                    let now = MonotonicClock.now()
                    if now < nextTick {
                        var pause = timespec(tv_sec: 0, tv_nsec: Int(nextTick - now))
                        nanosleep(&pause, nil)
                        continue
                    }
                    nextTick += interval / Int64(phases)
                    var index = tick % phases
                    while index < mine.count {
                        _ = frame.withUnsafeBytes { write(mine[index], $0.baseAddress, $0.count) }
                        frames += 1
                        index += phases
                    }
                    tick += 1
                }
                senderCPU[thread].set(ThreadCPU.now() - start)
                sent[thread].set(Double(frames))
                finished.leave()
            }.start()
        }
        finished.wait()
        while receiverCPU.value < 0 { usleep(10_000) }
        return Result(
            senderCPUSeconds: senderCPU.reduce(0) { $0 + $1.value }, receiverCPUSeconds: receiverCPU.value,
            seconds: Double(MonotonicClock.now() - started) / 1e9, framesSent: Int(sent.reduce(0) { $0 + $1.value }))
    }
}

/// One thread's CPU time, handed across threads once.
final class ThreadCPU: @unchecked Sendable {
    private let lock = NSLock()
    private var stored = -1.0

    var value: Double { lock.withLock { stored } }
    func set(_ value: Double) { lock.withLock { stored = value } }

    /// CPU seconds of the calling thread, user and system.
    static func now() -> Double {
        var spec = timespec()
        clock_gettime(CLOCK_THREAD_CPUTIME_ID, &spec)
        return Double(spec.tv_sec) + Double(spec.tv_nsec) / 1e9
    }
}

struct ValidationErrorText: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}
