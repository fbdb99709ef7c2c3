import Foundation
import Logging
import NIOConcurrencyHelpers
import WarmpoolWire

/// Writes every liveness event as one JSON line, so an outside harness can time detection, and
/// hands it to in-process subscribers (the failover engine). Writes happen on a serial queue: a slow
/// reader of stdout never stalls an event loop.
public final class LivenessEventLog: Sendable {
    private let handle: FileHandle
    private let queue = DispatchQueue(label: "warmpool.liveness-events")
    private let subscribers = NIOLockedValueBox<[AsyncStream<LivenessEvent>.Continuation]>([])
    private let logger: Logger

    /// `path` nil means stdout. The file is appended to.
    public init(path: String?, logger: Logger = Logger(label: "warmpool.events")) throws {
        self.logger = logger
        if let path {
            if !FileManager.default.fileExists(atPath: path) {
                _ = FileManager.default.createFile(atPath: path, contents: nil)
            }
            guard let handle = FileHandle(forWritingAtPath: path) else {
                throw CocoaError(.fileWriteNoPermission, userInfo: [NSFilePathErrorKey: path])
            }
            handle.seekToEndOfFile()
            self.handle = handle
        } else {
            self.handle = FileHandle.standardOutput
        }
    }

    /// Every event published from now on, in order. The subscriber must keep up: nothing is dropped.
    public func subscribe() -> AsyncStream<LivenessEvent> {
        let (stream, continuation) = AsyncStream.makeStream(of: LivenessEvent.self, bufferingPolicy: .unbounded)
        subscribers.withLockedValue { $0.append(continuation) }
        return stream
    }

    public func publish(_ batch: [LivenessEvent]) {
        guard !batch.isEmpty else { return }
        let wallClock = Date()
        subscribers.withLockedValue { subscribers in
            for continuation in subscribers { for event in batch { continuation.yield(event) } }
        }
        queue.async { [handle, logger] in
            var lines = Data()
            for event in batch { lines.append(Self.jsonLine(event, wallClock: wallClock)) }
            do {
                try handle.write(contentsOf: lines)
            } catch {
                // The detector goes on; the lost lines are named so the gap is explained.
                logger.error("cannot write liveness events", metadata: ["error": "\(error)", "events.lost": "\(batch.count)"])
            }
        }
    }

    /// Waits until everything published so far is written.
    public func flush() {
        queue.sync {}
    }

    public func finish() {
        subscribers.withLockedValue { subscribers in
            for continuation in subscribers { continuation.finish() }
            subscribers.removeAll()
        }
        flush()
    }

    static func jsonLine(_ event: LivenessEvent, wallClock: Date) -> Data {
        var object: [String: Any] = [
            "event": event.kind.rawValue,
            "agent_id": event.agent.agentID,
            "instance_id": event.agent.instanceID,
            "machine_id": event.agent.machineID,
            "role": event.agent.role.description,
            "time": wallClock.formatted(Date.ISO8601FormatStyle(includingFractionalSeconds: true)),
            "monotonic_ns": event.atNanoseconds,
            "reason": event.reason,
        ]
        if let silence = event.silenceNanoseconds { object["silence_ms"] = Double(silence) / 1e6 }
        if let epoch = event.fencedAtEpoch { object["fenced_at_epoch"] = epoch }
        var data = (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])) ?? Data()
        data.append(0x0A)
        return data
    }
}
