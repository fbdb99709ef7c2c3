import Foundation

/// Idle handles kept for reuse, so consecutive calls share a kept-alive connection. A handle is
/// checked out for exactly one transfer, so no two threads ever touch one handle.
final class CurlHandlePool: @unchecked Sendable {
    private let lock = NSLock()
    private var idle: [CurlEasy] = []
    private let maximumIdle: Int

    init(maximumIdle: Int = 4) { self.maximumIdle = maximumIdle }

    func withHandle<T>(_ body: (CurlEasy) throws(HTTPTransportError) -> T) throws(HTTPTransportError) -> T {
        let handle: CurlEasy
        if let reused = lock.withLock({ idle.popLast() }) {
            handle = reused
        } else {
            handle = try CurlEasy()
        }
        let result = try body(handle)
        // Only a handle whose transfer completed goes back: after a failure its connection state
        // is unknown, so it is freed with its connection.
        lock.withLock { if idle.count < maximumIdle { idle.append(handle) } }
        return result
    }
}
