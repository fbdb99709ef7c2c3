import Dispatch
import WarmpoolModel

#if canImport(Glibc)
import Glibc
#endif

/// getaddrinfo with a deadline. glibc's resolver has none of ours (5 s per nameserver and try by
/// default, so a dead DNS server holds a call for 10 s or more): the lookup runs on a thread of
/// its own and the caller waits for it only until its deadline. A lookup that overruns is
/// abandoned, not cancelled (getaddrinfo cannot be): its thread finishes by itself and frees what
/// it got. A numeric address never leaves the calling thread.
enum Resolver {
    /// One address to connect to, copied out of the addrinfo list.
    struct Address: Sendable {
        var family: Int32
        var socketProtocol: Int32
        /// The sockaddr's bytes.
        var bytes: [UInt8]
    }

    static func resolve(host: String, port: Int, deadline: Int64) -> Result<[Address], SSHFailure> {
        if let numeric = lookup(host: host, port: port, numericOnly: true), case .success = numeric { return numeric }
        let remaining = deadline - MonotonicClock.now()
        guard remaining > 0 else { return .failure(timeout(host)) }
        let answer = Answer()
        DispatchQueue.global().async {
            answer.deliver(lookup(host: host, port: port, numericOnly: false) ?? .failure(unresolved(host, "no address")))
        }
        guard answer.ready.wait(timeout: .now() + .nanoseconds(Int(remaining))) == .success else { return .failure(timeout(host)) }
        return answer.result ?? .failure(timeout(host))
    }

    /// nil when `numericOnly` and `host` is no numeric address.
    private static func lookup(host: String, port: Int, numericOnly: Bool) -> Result<[Address], SSHFailure>? {
        var hints = addrinfo()
        hints.ai_family = AF_UNSPEC
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        hints.ai_flags = AI_NUMERICSERV | AI_ADDRCONFIG | (numericOnly ? AI_NUMERICHOST : 0)
        var list: UnsafeMutablePointer<addrinfo>?
        let status = getaddrinfo(host, String(port), &hints, &list)
        if numericOnly, status == EAI_NONAME { return nil }
        guard status == 0, let first = list else {
            return .failure(unresolved(host, status == 0 ? "no address" : String(cString: gai_strerror(status))))
        }
        defer { freeaddrinfo(list) }
        var addresses: [Address] = []
        var cursor: UnsafeMutablePointer<addrinfo>? = first
        while let info = cursor {
            cursor = info.pointee.ai_next
            guard let address = info.pointee.ai_addr else { continue }
            let bytes = UnsafeRawBufferPointer(start: address, count: Int(info.pointee.ai_addrlen))
            addresses.append(Address(family: info.pointee.ai_family, socketProtocol: info.pointee.ai_protocol, bytes: Array(bytes)))
        }
        return addresses.isEmpty ? .failure(unresolved(host, "no address")) : .success(addresses)
    }

    private static func unresolved(_ host: String, _ message: String) -> SSHFailure {
        SSHFailure(.unreachable, phase: .connect, "cannot resolve \(host): \(message)")
    }

    private static func timeout(_ host: String) -> SSHFailure {
        SSHFailure(.timeout, phase: .connect, "resolving \(host) did not finish in time")
    }

    /// Handed from the lookup's thread to the waiting one; the semaphore orders the write
    /// before the read.
    private final class Answer: @unchecked Sendable {
        let ready = DispatchSemaphore(value: 0)
        private(set) var result: Result<[Address], SSHFailure>?

        func deliver(_ result: Result<[Address], SSHFailure>) {
            self.result = result
            ready.signal()
        }
    }
}
