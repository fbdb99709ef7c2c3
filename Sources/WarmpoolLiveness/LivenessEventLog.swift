import Foundation
import Logging
import NIOConcurrencyHelpers
import WarmpoolJSON
import WarmpoolModel
import WarmpoolWire

/// Writes every liveness event as one JSON line, so an outside harness can time detection. One
/// subscriber of the event bus among others: it writes from a task of its own, so a slow reader of
/// stdout stalls neither the detector nor the other subscribers.
public final class LivenessEventLog: Sendable {
    private let writer: Task<Void, Never>

    /// `path` nil means stdout. The file is appended to. Subscribes now: nothing published after
    /// this returns is missed.
    public init(path: String?, bus: LivenessEventBus, logger: Logger = Logger(label: "warmpool.events")) throws {
        let handle: FileHandle
        if let path {
            if !FileManager.default.fileExists(atPath: path) {
                _ = FileManager.default.createFile(atPath: path, contents: nil)
            }
            guard let opened = FileHandle(forWritingAtPath: path) else {
                throw CocoaError(.fileWriteNoPermission, userInfo: [NSFilePathErrorKey: path])
            }
            opened.seekToEndOfFile()
            handle = opened
        } else {
            handle = FileHandle.standardOutput
        }
        let batches = bus.subscribe()
        writer = Task {
            for await batch in batches {
                // Each event's wall-clock time is when it happened: now, less the monotonic time since.
                let wallNow = Date(), monotonicNow = MonotonicClock.now()
                var lines = Data()
                for event in batch {
                    let age = Double(monotonicNow - event.atNanoseconds) / 1e9
                    lines.append(Self.jsonLine(event, wallClock: wallNow.addingTimeInterval(-max(0, age))))
                }
                do {
                    try handle.write(contentsOf: lines)
                } catch {
                    // The detector goes on; the lost lines are named so the gap is explained.
                    logger.error("cannot write liveness events", metadata: ["error": "\(error)", "events.lost": "\(batch.count)"])
                }
            }
        }
    }

    /// Returns once every event published before the bus finished is written.
    public func close() async {
        await writer.value
    }

    /// One event as a JSON object with sorted keys and a newline. Written field by field with the
    /// toolkit's streaming writer: under a storm of events (a network blip fails thousands of agents
    /// at once) JSONSerialization's sorted keys (ICU collation) and the ISO 8601 formatter cost more
    /// than the detector itself, on the cores that must keep reading heartbeats.
    static func jsonLine(_ event: LivenessEvent, wallClock: Date) -> Data {
        var out = JSONWriter(reservingCapacity: 256)
        out.object { o in
            o.field("agent_id", event.agent.agentID.rawValue)
            o.field("event", event.kind.rawValue)
            o.field("fenced_at_epoch", event.fencedAtEpoch)
            o.field("instance_id", event.agent.instanceID.rawValue)
            o.field("machine_id", event.agent.machineID.rawValue)
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
