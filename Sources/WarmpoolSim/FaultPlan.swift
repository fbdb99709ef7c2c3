/// Faults the emulator injects, set by flags at start and replaced by `POST /admin/faults`
/// (fields left out take their defaults, so `{}` clears every fault). JSON keys are snake_case.
public struct FaultPlan: Codable, Hashable, Sendable {
    /// Share of API calls (0...1) answered with `failure_status` instead of being served.
    public var failureRate: Double = 0
    /// The next N API calls fail, whatever the rate: deterministic drills.
    public var failNext: Int = 0
    public var failureStatus: Int = 503
    /// Share of API calls answered 429 "API requests too frequent".
    public var rateLimitRate: Double = 0
    public var rateLimitNext: Int = 0
    /// Sent as `Retry-After` with those 429s when set. Unset by default: Vast.ai "does not
    /// currently set standard rate-limit headers (for example `Retry-After`)" (docs.vast.ai,
    /// Rate Limits and Errors); only its daily search quota does.
    public var retryAfterSeconds: Int?
    /// Added to every API call before it is served.
    public var latencyMs: Int = 0
    /// Share of API calls served only after `timeout_ms`: a client with a shorter timeout has
    /// given up by then, not knowing that the call took effect.
    public var timeoutRate: Double = 0
    public var timeoutMs: Int = 3000
    /// Overrides the configured delay between "start" and the instance running.
    public var bootDelayMs: Int?
    /// Instances that run but never get sshd (the onstart still runs).
    public var noSSHInstances: [Int] = []
    /// Instances whose SSH address someone else answers (a hijacked address, a man in the middle):
    /// an sshd with a host key of its own, accepting the same logins, while the instance itself
    /// (its /etc/ssh, its agent) is untouched.
    public var impostorSSHInstances: [Int] = []
    /// Instances whose start is refused: `200 {"success": false}`.
    public var failStartInstances: [Int] = []
    /// Machines whose every GPU other renters take as soon as it is free: they offer nothing,
    /// refuse creates, and a start there waits in `scheduling` (their running instances run on).
    public var fullHosts: [Int] = []
    /// GPUs other renters hold on each machine (keys are machine ids): they take free GPUs at
    /// once and the next ones that free up (a stopped standby's, say) until they hold this many;
    /// lowering it gives GPUs back, to whatever waits in `scheduling` first.
    public var rentedGPUs: [String: Int] = [:]
    /// Machines that lost contact with the provider: every instance on them is `offline`,
    /// unreachable (its processes paused, its volume with it); stops, starts and destroys are
    /// recorded and take effect when the machine is back. Nothing on them is offered.
    public var offlineMachines: [Int] = []
    /// Machines gone for good (a dead host, a disk that will not come back): offline as above,
    /// and never back. Their instances' processes are dead, not paused, and their volumes' contents
    /// are lost; a destroy of their instances takes effect at once (there is nothing left to
    /// end). Sticky: a later plan that leaves a machine out does not bring it back.
    public var lostMachines: [Int] = []
    /// The provider's rate limits: the least time between two calls of one operation (keys are
    /// operation names, `*` for every operation without a key of its own). A call sooner than
    /// that is answered 429 and does not count (Vast.ai: a minimum interval per endpoint).
    public var minIntervalMs: [String: Int] = [:]
    /// A start (or a resume) waits for the very GPUs the instance was created on, even when others
    /// of its machine are free (the reading of "scheduling" in which a container is bound to its
    /// GPUs); off: any free GPU of the machine will do, as the marketplace notes say.
    public var ownGPURestart = false
    /// Deliver each Vast.ai notification twice: "at least once" made visible.
    public var duplicateNotifications = false
    /// Instances the provider cannot reach (their host is cut off): a stop is accepted but the
    /// instance keeps running; a destroy drops it from the API while its processes live on.
    /// Lifting the fault lets those destroys take effect. Drills use it so that only the lease
    /// keeps a partitioned primary off the volume.
    public var unreachableInstances: [Int] = []
    /// Instances whose stop is answered from the provider's intention, not the host: accepted and
    /// then shown `exited` while the instance goes on running. The stale or eventually consistent
    /// answer a fencing controller must not trust alone (issue 17); drills pair it with
    /// `unreachable_instances`.
    public var staleStopInstances: [Int] = []
    /// Compute Engine's API answers every call 503 UNAVAILABLE (its token endpoint still works):
    /// a regional outage, in the shape Google documents for 503.
    public var gceUnavailable = false

    public init() {}

    enum CodingKeys: String, CodingKey {
        case failureRate = "failure_rate", failNext = "fail_next", failureStatus = "failure_status"
        case rateLimitRate = "rate_limit_rate", rateLimitNext = "rate_limit_next", retryAfterSeconds = "retry_after_seconds"
        case latencyMs = "latency_ms", timeoutRate = "timeout_rate", timeoutMs = "timeout_ms", bootDelayMs = "boot_delay_ms", noSSHInstances = "no_ssh_instances"
        case impostorSSHInstances = "impostor_ssh_instances"
        case failStartInstances = "fail_start_instances", fullHosts = "full_hosts", unreachableInstances = "unreachable_instances"
        case staleStopInstances = "stale_stop_instances", rentedGPUs = "rented_gpus", offlineMachines = "offline_machines"
        case lostMachines = "lost_machines"
        case minIntervalMs = "min_interval_ms", duplicateNotifications = "duplicate_notifications", ownGPURestart = "own_gpu_restart"
        case gceUnavailable = "gce_unavailable"
    }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        let defaults = FaultPlan()
        failureRate = try c.decodeIfPresent(Double.self, forKey: .failureRate) ?? defaults.failureRate
        failNext = try c.decodeIfPresent(Int.self, forKey: .failNext) ?? defaults.failNext
        failureStatus = try c.decodeIfPresent(Int.self, forKey: .failureStatus) ?? defaults.failureStatus
        rateLimitRate = try c.decodeIfPresent(Double.self, forKey: .rateLimitRate) ?? defaults.rateLimitRate
        rateLimitNext = try c.decodeIfPresent(Int.self, forKey: .rateLimitNext) ?? defaults.rateLimitNext
        retryAfterSeconds = try c.decodeIfPresent(Int.self, forKey: .retryAfterSeconds)
        latencyMs = try c.decodeIfPresent(Int.self, forKey: .latencyMs) ?? defaults.latencyMs
        timeoutRate = try c.decodeIfPresent(Double.self, forKey: .timeoutRate) ?? defaults.timeoutRate
        timeoutMs = try c.decodeIfPresent(Int.self, forKey: .timeoutMs) ?? defaults.timeoutMs
        bootDelayMs = try c.decodeIfPresent(Int.self, forKey: .bootDelayMs)
        noSSHInstances = try c.decodeIfPresent([Int].self, forKey: .noSSHInstances) ?? []
        failStartInstances = try c.decodeIfPresent([Int].self, forKey: .failStartInstances) ?? []
        impostorSSHInstances = try c.decodeIfPresent([Int].self, forKey: .impostorSSHInstances) ?? []
        fullHosts = try c.decodeIfPresent([Int].self, forKey: .fullHosts) ?? []
        unreachableInstances = try c.decodeIfPresent([Int].self, forKey: .unreachableInstances) ?? []
        staleStopInstances = try c.decodeIfPresent([Int].self, forKey: .staleStopInstances) ?? []
        rentedGPUs = try c.decodeIfPresent([String: Int].self, forKey: .rentedGPUs) ?? [:]
        offlineMachines = try c.decodeIfPresent([Int].self, forKey: .offlineMachines) ?? []
        lostMachines = try c.decodeIfPresent([Int].self, forKey: .lostMachines) ?? []
        minIntervalMs = try c.decodeIfPresent([String: Int].self, forKey: .minIntervalMs) ?? [:]
        duplicateNotifications = try c.decodeIfPresent(Bool.self, forKey: .duplicateNotifications) ?? false
        ownGPURestart = try c.decodeIfPresent(Bool.self, forKey: .ownGPURestart) ?? false
        gceUnavailable = try c.decodeIfPresent(Bool.self, forKey: .gceUnavailable) ?? false
        guard rentedGPUs.allSatisfy({ Int($0.key) != nil && $0.value >= 0 }), minIntervalMs.values.allSatisfy({ $0 >= 0 }) else {
            throw DecodingError.dataCorrupted(.init(codingPath: [], debugDescription:
                "rented_gpus maps machine ids to counts >= 0; min_interval_ms maps operations to milliseconds >= 0"))
        }
        guard (0...1).contains(failureRate), (0...1).contains(rateLimitRate), (0...1).contains(timeoutRate), timeoutMs >= 0, (400...599).contains(failureStatus),
            failNext >= 0, rateLimitNext >= 0, (retryAfterSeconds ?? 0) >= 0, latencyMs >= 0, (bootDelayMs ?? 0) >= 0
        else {
            throw DecodingError.dataCorrupted(.init(codingPath: [], debugDescription:
                "rates must be 0...1, failure_status 400...599, counts and delays >= 0"))
        }
    }

    /// What happens to the next API call; consumes the one-shot counts.
    enum Verdict: Equatable {
        case serve
        case fail(status: Int)
        case rateLimit(retryAfterSeconds: Int?)
    }

    /// GPUs other renters want on `machine` (a full host: all of them).
    func rentedDemand(machine: Int, gpuCount: Int) -> Int {
        fullHosts.contains(machine) ? gpuCount : min(gpuCount, rentedGPUs[String(machine)] ?? 0)
    }

    /// The least interval between two calls of `operation`, if any.
    func minimumInterval(_ operation: String) -> Duration? {
        (minIntervalMs[operation] ?? minIntervalMs["*"]).flatMap { $0 > 0 ? Duration.milliseconds($0) : nil }
    }

    mutating func nextVerdict(random: () -> Double) -> Verdict {
        if rateLimitNext > 0 {
            rateLimitNext -= 1
            return .rateLimit(retryAfterSeconds: retryAfterSeconds)
        }
        if failNext > 0 {
            failNext -= 1
            return .fail(status: failureStatus)
        }
        if rateLimitRate > 0, random() < rateLimitRate { return .rateLimit(retryAfterSeconds: retryAfterSeconds) }
        if failureRate > 0, random() < failureRate { return .fail(status: failureStatus) }
        return .serve
    }
}
