import CEpoll
import Foundation
import WarmpoolModel
import WarmpoolWire

#if canImport(Glibc)
import Glibc
#endif

/// What loopback TCP alone costs at a heartbeat load, with no protocol at all: `count` sockets,
/// each written an 11-byte frame (a steady heartbeat's size) every interval by sender threads and read by
/// one epoll receiver thread that discards the bytes. No MAC, no parsing, no detector: the floor
/// under any one-segment-per-beat protocol on this machine, to read the capacity figures against.
enum TransportFloor {
    struct Result {
        var senderCPUSeconds: Double
        var receiverCPUSeconds: Double
        var seconds: Double
        var framesSent: Int
    }

    /// `pin`: the receiver on CPU 0 and the senders on CPU 1, as the capacity bench pins the
    /// controller and the load generator, so that the floor and the controller's cost per beat
    /// are read under the same placement.
    static func measure(count: Int, senders: Int, interval: Int64, seconds: Double, pin: Bool = false) throws -> Result {
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
        let receiverCPU = Handed(0.0)
        let deadline = MonotonicClock.now() + Int64(seconds * 1e9)
        // The sender threads hand back their CPU seconds and the frames they wrote.
        let results = Handed<[(cpu: Double, frames: Int)]>([])
        let finished = DispatchGroup()
        finished.enter()
        Thread {
            if pin { pinCurrentThread(toCPU: 0) }
            let epoll = epoll_create1(0)
            for (index, fd) in accepted.enumerated() {
                var event = epoll_event()
                event.events = EPOLLIN.rawValue
                event.data.u64 = UInt64(index)
                epoll_ctl(epoll, EPOLL_CTL_ADD, fd, &event)
            }
            var events = [epoll_event](repeating: epoll_event(), count: 256)
            var buffer = [UInt8](repeating: 0, count: 4096)
            let start = threadCPUSeconds()
            while MonotonicClock.now() < deadline {
                let ready = epoll_wait(epoll, &events, Int32(events.count), 10)
                guard ready > 0 else { continue }
                for event in events[0..<Int(ready)] {
                    _ = read(accepted[Int(event.data.u64)], &buffer, buffer.count)
                }
            }
            let cpu = threadCPUSeconds() - start
            close(epoll)
            receiverCPU.set(cpu)
            finished.leave()
        }.start()

        let frame = [UInt8](repeating: 0x2a, count: 11)
        let started = MonotonicClock.now()
        for thread in 0..<senders {
            finished.enter()
            let mine = stride(from: thread, to: clients.count, by: senders).map { clients[$0] }
            Thread {
                if pin { pinCurrentThread(toCPU: 1) }
                let start = threadCPUSeconds()
                var clock = PhasedClock(interval: interval)
                var frames = 0
                while MonotonicClock.now() < deadline {
                    var index = clock.next().phase
                    while index < mine.count {
                        _ = frame.withUnsafeBytes { write(mine[index], $0.baseAddress, $0.count) }
                        frames += 1
                        index += clock.phases
                    }
                }
                let cpu = threadCPUSeconds() - start
                results.update { $0.append((cpu, frames)) }
                finished.leave()
            }.start()
        }
        finished.wait()
        let sent = results.value
        return Result(
            senderCPUSeconds: sent.reduce(0) { $0 + $1.cpu }, receiverCPUSeconds: receiverCPU.value,
            seconds: Double(MonotonicClock.now() - started) / 1e9, framesSent: sent.reduce(0) { $0 + $1.frames })
    }
}

/// A value threads hand back to the one that waits for them.
final class Handed<Value>: @unchecked Sendable {
    private let lock = NSLock()
    private var stored: Value

    init(_ value: Value) { stored = value }
    var value: Value { lock.withLock { stored } }
    func set(_ value: Value) { lock.withLock { stored = value } }
    func update(_ change: (inout Value) -> Void) { lock.withLock { change(&stored) } }
}

/// Puts the calling thread on one CPU (Linux: sched_setaffinity of thread id 0 is the caller).
/// Glibc declares it only under _GNU_SOURCE, which Swift's Glibc module is not built with, and
/// CPU_SET is a macro: the function is looked up by name and the bit set in the mask's bytes.
func pinCurrentThread(toCPU cpu: Int) {
    typealias SetAffinity = @convention(c) (pid_t, Int, UnsafeRawPointer) -> Int32
    guard let symbol = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "sched_setaffinity") else { return }
    var mask = [UInt8](repeating: 0, count: 128)  // glibc's cpu_set_t: 1,024 CPUs
    guard cpu / 8 < mask.count else { return }
    mask[cpu / 8] |= UInt8(1 << (cpu % 8))
    _ = mask.withUnsafeBytes { unsafeBitCast(symbol, to: SetAffinity.self)(0, $0.count, $0.baseAddress!) }
}

/// CPU seconds of the calling thread, user and system.
func threadCPUSeconds() -> Double {
    var spec = timespec()
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &spec)
    return Double(spec.tv_sec) + Double(spec.tv_nsec) / 1e9
}

struct ValidationErrorText: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}
