import WarmpoolJSON

/// The Telemetry document (PROTOCOL.md §3.8) written by hand, byte for byte what Foundation's
/// `JSONEncoder` gave with `.sortedKeys` and `.convertToSnakeCase`: snake_case keys in sorted
/// order, no whitespace, absent optionals left out, `/` escaped as `\/`. The agent sends it every
/// telemetry interval; the encoder's generic Codable machinery and its key conversion kept about
/// a megabyte of code and Unicode tables resident for a document of a dozen fields.
/// `TelemetryJSONTests` checks the bytes against `JSONEncoder`. The writer is the toolkit's, with
/// JSONEncoder's `\/`.
struct TelemetryDocument: Equatable, Sendable {
    var agentID: String
    var instanceID: UInt64
    var machineID: UInt64
    var role: String
    var version: String
    var epoch: UInt64
    var fencedAtEpoch: UInt64?
    /// "frozen" (the lease ran out: reversible) or "final" (a newer epoch exists); nil when not fenced.
    var fence: String? = nil
    var workload: String
    var volume: VolumeReport?
    var gpu: GPUReport?
    /// The sshd ed25519 host key's fingerprint (`SHA256:...`), which the controller pins.
    var sshHostKey: String? = nil
    /// The workload's newest checkpoint: a failover now would lose the work since.
    var checkpoint: CheckpointTelemetry? = nil
    /// The snapshot schedule's last results (only when snapshots are configured).
    var snapshot: SnapshotTelemetry? = nil
    /// The continuous copy to the CPU standby (only while a sync target file is present).
    var sync: SyncTelemetry? = nil

    func json() -> [UInt8] {
        var out = JSONWriter(options: .escapingSlashes)
        out.object { o in
            o.field("agent_id", agentID)
            if let checkpoint { o.key("checkpoint"); checkpoint.write(to: &o) }
            o.field("epoch", epoch)
            o.field("fence", fence)
            o.field("fenced_at_epoch", fencedAtEpoch)
            if let gpu { o.key("gpu"); gpu.write(to: &o) }
            o.field("instance_id", instanceID)
            o.field("machine_id", machineID)
            o.field("role", role)
            if let snapshot { o.key("snapshot"); snapshot.write(to: &o) }
            o.field("ssh_host_key", sshHostKey)
            if let sync { o.key("sync"); sync.write(to: &o) }
            o.field("version", version)
            if let volume { o.key("volume"); volume.write(to: &o) }
            o.field("workload", workload)
        }
        return out.bytes
    }
}

/// Telemetry's `checkpoint` (PROTOCOL.md §3.8). Ages, not times: each is measured on the
/// instance's own clock when the document is written, so the controller needs no clock agreement.
struct CheckpointTelemetry: Equatable, Sendable, Encodable {
    /// Since the newest matching file was last modified, ms; nil when none matched.
    var ageMs: Int64?
    var files: Int
    var newest: String?
    var pattern: String
    var problem: String?
    /// Present (true) only when the walk was cut short.
    var truncated: Bool?

    init(_ report: CheckpointReport, wallNow: Int64) {
        ageMs = report.newestModifiedNanoseconds.map { max(0, wallNow - $0) / 1_000_000 }
        files = report.files
        newest = report.newestPath
        pattern = report.pattern
        problem = report.problem
        truncated = report.truncated ? true : nil
    }

    func write(to out: inout JSONWriter) {
        out.object { o in
            o.field("age_ms", ageMs)
            o.field("files", files)
            o.field("newest", newest)
            o.field("pattern", pattern)
            o.field("problem", problem)
            if let truncated { o.field("truncated", truncated) }
        }
    }
}

/// Telemetry's `snapshot` (PROTOCOL.md §3.8).
struct SnapshotTelemetry: Equatable, Sendable, Encodable {
    var failuresInARow: Int
    var intervalS: Int64
    var lastError: String?
    var lastId: String?
    /// Since the last snapshot that succeeded finished, ms (agent monotonic clock); nil before one.
    var lastSuccessAgeMs: Int64?
    var running: Bool

    init(_ schedule: SnapshotSchedule, now: Int64) {
        failuresInARow = schedule.failuresInARow
        intervalS = schedule.interval / 1_000_000_000
        lastError = schedule.lastError
        lastId = schedule.lastID
        lastSuccessAgeMs = schedule.lastSucceededAt.map { max(0, now - $0) / 1_000_000 }
        running = schedule.running
    }

    func write(to out: inout JSONWriter) {
        out.object { o in
            o.field("failures_in_a_row", failuresInARow)
            o.field("interval_s", intervalS)
            o.field("last_error", lastError)
            o.field("last_id", lastId)
            o.field("last_success_age_ms", lastSuccessAgeMs)
            o.field("running", running)
        }
    }
}

/// Telemetry's `sync` (PROTOCOL.md §3.8). Durations, not times, except the manifest's start,
/// which is the wall-clock stamp written into the target's manifest for the controller to match.
struct SyncTelemetry: Equatable, Sendable, Encodable {
    struct Manifest: Equatable, Sendable, Encodable {
        var pass: Int
        var startedAtMs: Int64
    }

    var bytesPending: Int64?
    var error: String?
    var failures: Int
    var filesPending: Int64?
    /// How many seconds of the volume's writes the copy lacks, ms (agent monotonic clock).
    var lagMs: Int64?
    var lastPassMs: Int64?
    var lastSentBytes: Int64?
    var manifest: Manifest?
    var passes: Int
    /// Present (true) only when the pending walk was cut short.
    var pendingTruncated: Bool?
    var state: String
    var target: String?

    init(_ schedule: SyncSchedule, now: Int64) {
        let last = schedule.lastPass
        bytesPending = last?.result.pendingBytes
        error = schedule.lastError ?? schedule.targetProblem
        failures = schedule.failuresInARow
        filesPending = last?.result.pendingFiles
        lagMs = schedule.lag(now: now).map { $0 / 1_000_000 }
        lastPassMs = last.map { $0.duration / 1_000_000 }
        lastSentBytes = last?.result.sentBytes
        manifest = last.map { Manifest(pass: $0.pass, startedAtMs: $0.result.startedAtWallMilliseconds) }
        passes = schedule.passes
        pendingTruncated = last?.result.pendingTruncated == true ? true : nil
        state = schedule.state.rawValue
        target = schedule.target?.name
    }

    func write(to out: inout JSONWriter) {
        out.object { o in
            o.field("bytes_pending", bytesPending)
            o.field("error", error)
            o.field("failures", failures)
            o.field("files_pending", filesPending)
            o.field("lag_ms", lagMs)
            o.field("last_pass_ms", lastPassMs)
            o.field("last_sent_bytes", lastSentBytes)
            if let manifest {
                o.key("manifest")
                o.object { m in
                    m.field("pass", manifest.pass)
                    m.field("started_at_ms", manifest.startedAtMs)
                }
            }
            o.field("passes", passes)
            if let pendingTruncated { o.field("pending_truncated", pendingTruncated) }
            o.field("state", state)
            o.field("target", target)
        }
    }
}

extension VolumeReport {
    func write(to out: inout JSONWriter) {
        out.object { o in
            o.field("epoch", epoch)
            o.field("free_bytes", freeBytes)
            o.field("id_matches", idMatches)
            o.field("mounted", mounted)
            o.field("path", path)
            o.field("problem", problem)
            o.field("volume_id", volumeID)
            o.field("writable", writable)
        }
    }
}

extension GPUReport {
    func write(to out: inout JSONWriter) {
        out.object { o in
            o.field("available", available)
            o.field("driver_version", driverVersion)
            o.key("gpus")
            o.array(gpus) { o, gpu in gpu.write(to: &o) }
            o.field("problem", problem)
        }
    }
}

extension GPUInfo {
    func write(to out: inout JSONWriter) {
        out.object { o in
            o.field("ecc_uncorrected_volatile", eccUncorrectedVolatile)
            o.field("healthy", healthy)
            o.field("index", index)
            o.field("last_xid", lastXid)
            o.field("memory_total_bytes", memoryTotalBytes)
            o.field("memory_used_bytes", memoryUsedBytes)
            o.field("name", name)
            o.field("temperature_celsius", temperatureCelsius)
            o.field("utilization_percent", utilizationPercent)
            o.field("uuid", uuid)
            o.field("xid_critical_errors", xidCriticalErrors)
        }
    }
}
