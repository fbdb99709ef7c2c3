import Foundation
import Logging
import NIOConcurrencyHelpers
import WarmpoolJSON
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

    /// One event as a JSON object with sorted keys and a newline. Written field by field with the
    /// toolkit's streaming writer: under a storm of events (a network blip fails thousands of agents
    /// at once) JSONSerialization's sorted keys (ICU collation) and the ISO 8601 formatter cost more
    /// than the detector itself, on the cores that must keep reading heartbeats.
    static func jsonLine(_ event: LivenessEvent, wallClock: Date) -> Data {
        var out = JSONWriter(reservingCapacity: 256)
        out.object { o in
            o.field("agent_id", event.agent.agentID)
            o.field("event", event.kind.rawValue)
            o.field("fenced_at_epoch", event.fencedAtEpoch)
            o.field("instance_id", event.agent.instanceID)
            o.field("machine_id", event.agent.machineID)
            o.field("monotonic_ns", event.atNanoseconds)
            o.field("reason", event.reason)
            o.field("role", event.agent.role.description)
            if let silence = event.silenceNanoseconds { o.field("silence_ms", Double(silence) / 1e6) }
            o.field("time", iso8601(wallClock))
        }
        var line = out.bytes
        line.append(UInt8(ascii: "\n"))
        return Data(line)
    }

    /// UTC, milliseconds: 2026-11-29T05:31:55.123Z (what ISO8601FormatStyle with fractional seconds writes).
    static func iso8601(_ date: Date) -> String {
        let milliseconds = Int64((date.timeIntervalSince1970 * 1000).rounded(.down))
        var seconds = time_t(milliseconds / 1000)
        var parts = tm()
        gmtime_r(&seconds, &parts)
        func pad(_ value: Int32, _ width: Int) -> String {
            let digits = String(value)
            return String(repeating: "0", count: max(0, width - digits.count)) + digits
        }
        return "\(pad(parts.tm_year + 1900, 4))-\(pad(parts.tm_mon + 1, 2))-\(pad(parts.tm_mday, 2))T"
            + "\(pad(parts.tm_hour, 2)):\(pad(parts.tm_min, 2)):\(pad(parts.tm_sec, 2)).\(pad(Int32(milliseconds % 1000), 3))Z"
    }
}
