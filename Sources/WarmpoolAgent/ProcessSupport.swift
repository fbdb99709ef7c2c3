#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import WarmpoolJSON
import WarmpoolModel

/// What the agent's command line needs of the process without Foundation: the static agent
/// linked FoundationEssentials for `ProcessInfo.environment`, one file read and the
/// `--probe-once` JSON, and every page of it that the loader touched stayed resident.
public enum ProcessEnvironment {
    /// The environment as `NAME=value` pairs; the first of duplicate names wins, as `getenv` does.
    public static func current() -> [String: String] {
        var result: [String: String] = [:]
        let start: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>? = environ
        guard var entry = start else { return result }
        while let pointer = entry.pointee {
            let pair = String(cString: pointer)
            if let equals = pair.utf8.firstIndex(of: UInt8(ascii: "=")) {
                let name = String(pair[..<equals])
                if result[name] == nil { result[name] = String(pair[pair.index(after: equals)...]) }
            }
            entry += 1
        }
        return result
    }

    /// A small text file's contents (at most `limit` bytes), or nil if it cannot be read.
    public static func readTextFile(_ path: String, limit: Int = 1 << 16) -> String? {
        readSmallFile(path, limit: limit).map { String(decoding: $0, as: UTF8.self) }
    }
}

extension ProbeReport {
    /// `--probe-once`'s output: the volume, GPU and workload as one JSON object, snake_case keys
    /// sorted, written by the same writer as the Telemetry document.
    public func json() -> String {
        var out = JSONWriter(options: .escapingSlashes)
        out.object { o in
            if let checkpoint { o.key("checkpoint"); CheckpointTelemetry(checkpoint, wallNow: SystemWallClock().now().nanosecondsSinceEpoch).write(to: &o) }
            o.key("gpu"); gpu.write(to: &o)
            o.field("ssh_host_key", sshHostKey)
            o.key("volume"); volume.write(to: &o)
            o.field("workload", "\(workload)")
        }
        return String(decoding: out.bytes, as: UTF8.self)
    }
}
