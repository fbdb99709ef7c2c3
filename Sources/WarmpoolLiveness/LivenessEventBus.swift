import NIOConcurrencyHelpers

/// Hands the detector's events to in-process subscribers (the failover engine, the store's event
/// recorder, the JSON-lines log), in the order they were made.
///
/// The hub publishes under its lock, so the order holds across the listener's and the ticker's
/// threads; publishing only hands each batch to the subscribers' streams, so no subscriber's work
/// (a file write, a store transaction) ever runs under that lock.
public final class LivenessEventBus: Sendable {
    private let subscribers = NIOLockedValueBox<[AsyncStream<[LivenessEvent]>.Continuation]>([])

    public init() {}

    /// Every batch published from now on, in order. The subscriber must keep up: nothing is dropped.
    public func subscribe() -> AsyncStream<[LivenessEvent]> {
        let (stream, continuation) = AsyncStream.makeStream(of: [LivenessEvent].self, bufferingPolicy: .unbounded)
        subscribers.withLockedValue { $0.append(continuation) }
        return stream
    }

    public func publish(_ batch: [LivenessEvent]) {
        guard !batch.isEmpty else { return }
        subscribers.withLockedValue { subscribers in
            for continuation in subscribers { continuation.yield(batch) }
        }
    }

    /// Ends every subscriber's stream (after the last publisher stopped).
    public func finish() {
        let ended = subscribers.withLockedValue { subscribers in
            defer { subscribers.removeAll() }
            return subscribers
        }
        for continuation in ended { continuation.finish() }
    }
}
