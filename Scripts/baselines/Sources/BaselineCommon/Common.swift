#if canImport(Glibc)
import Glibc
#endif

/// CLOCK_MONOTONIC in nanoseconds: the clock the bench script and the controller's event log share.
public func monotonicNanoseconds() -> Int64 {
    var spec = timespec()
    clock_gettime(CLOCK_MONOTONIC, &spec)
    return Int64(spec.tv_sec) * 1_000_000_000 + Int64(spec.tv_nsec)
}

/// What every simulated agent reports: a healthy one-GPU primary with a mounted volume. Non-zero
/// values on purpose, so protobuf's varints and JSON's digits are paid for as they would be in
/// production; our own frame is fixed-size whatever the values.
public enum SampleStatus {
    public static let flags: UInt32 = 0b100_0111  // mounted, id matches, writable, lease held
    public static let gpuCount: UInt32 = 1
    public static let gpuHealthy: UInt32 = 1
    public static let gpuMaxTempC: UInt32 = 61
    public static let gpuMaxUtilPct: UInt32 = 97
    public static let volumeFreeMib: UInt32 = 512_000
    public static let workload: UInt32 = 2  // running

    public static func beat(sequence: UInt32) -> Warmpool_Baseline_Beat {
        var beat = Warmpool_Baseline_Beat()
        beat.sequence = sequence
        beat.sentAtNs = UInt64(monotonicNanoseconds())
        beat.flags = flags
        beat.gpuCount = gpuCount
        beat.gpuHealthy = gpuHealthy
        beat.gpuMaxTempC = gpuMaxTempC
        beat.gpuMaxUtilPct = gpuMaxUtilPct
        beat.volumeFreeMib = volumeFreeMib
        beat.workload = workload
        return beat
    }
}

/// The HTTP baseline's body: the same fields as JSON.
public struct BeatJSON: Codable, Sendable {
    public var sequence: UInt32
    public var sent_at_ns: UInt64
    public var flags: UInt32
    public var gpu_count: UInt32
    public var gpu_healthy: UInt32
    public var gpu_max_temp_c: UInt32
    public var gpu_max_util_pct: UInt32
    public var volume_free_mib: UInt32
    public var workload: UInt32

    public init(_ beat: Warmpool_Baseline_Beat) {
        sequence = beat.sequence
        sent_at_ns = beat.sentAtNs
        flags = beat.flags
        gpu_count = beat.gpuCount
        gpu_healthy = beat.gpuHealthy
        gpu_max_temp_c = beat.gpuMaxTempC
        gpu_max_util_pct = beat.gpuMaxUtilPct
        volume_free_mib = beat.volumeFreeMib
        workload = beat.workload
    }
}

public struct LeaseJSON: Codable, Sendable {
    public var acknowledged_sequence: UInt32
    public var lease_ms: UInt32
    public var epoch: UInt64
    public init(acknowledged_sequence: UInt32, lease_ms: UInt32, epoch: UInt64) {
        self.acknowledged_sequence = acknowledged_sequence
        self.lease_ms = lease_ms
        self.epoch = epoch
    }
}

/// The baselines' failure detector: a fixed silence timeout, checked on a tick, writing the same
/// JSON-lines events (`connected`, `failed`, with `monotonic_ns`) as the controller's event log, so
/// one bench script times all three. Deliberately the simplest detector: the baselines are charged
/// for their transport, not for detector arithmetic.
public final class SilenceDetector: @unchecked Sendable {
    private var lastHeard: [String: Int64] = [:]
    private var failed: Set<String> = []
    private var mutex = pthread_mutex_t()
    private let timeout: Int64
    private let events: UnsafeMutablePointer<FILE>

    public init(silenceTimeoutMilliseconds: Int64, eventsPath: String) {
        timeout = silenceTimeoutMilliseconds * 1_000_000
        pthread_mutex_init(&mutex, nil)
        guard let file = fopen(eventsPath, "a") else { fatalError("cannot open \(eventsPath)") }
        events = file
    }

    /// The lease grant is due every fifth beat (ours renews at a quarter of a 2 s lease: 500 ms).
    public func heard(_ agentID: String, sequence: UInt32) -> Bool {
        let now = monotonicNanoseconds()
        pthread_mutex_lock(&mutex)
        let fresh = lastHeard.updateValue(now, forKey: agentID) == nil
        if fresh || failed.remove(agentID) != nil { log("connected", agentID, now) }
        pthread_mutex_unlock(&mutex)
        return sequence % 5 == 0
    }

    public func tick() {
        let now = monotonicNanoseconds()
        pthread_mutex_lock(&mutex)
        for (agentID, heard) in lastHeard where now - heard > timeout && !failed.contains(agentID) {
            failed.insert(agentID)
            log("failed", agentID, now)
        }
        pthread_mutex_unlock(&mutex)
    }

    private func log(_ event: String, _ agentID: String, _ now: Int64) {
        fputs("{\"event\":\"\(event)\",\"agent_id\":\"\(agentID)\",\"monotonic_ns\":\(now)}\n", events)
        fflush(events)
    }
}
