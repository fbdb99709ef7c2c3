/// What the emulator was asked to do, for drills that assert "exactly one start of the standby,
/// no duplicate instance" (`GET /admin/counters`). Keys of the per-instance maps are instance
/// ids as strings (JSON object keys).
public struct SimCounters: Codable, Hashable, Sendable {
    /// Calls served, per operation (search_offers, create_instance, start_instance, ...).
    public var calls: [String: Int] = [:]
    /// Calls answered with an injected 5xx, per operation.
    public var injectedFailures: [String: Int] = [:]
    /// Calls answered with an injected 429, per operation.
    public var rateLimited: [String: Int] = [:]
    /// Calls held back by the `timeout_rate` fault (then served), per operation.
    public var timedOut: [String: Int] = [:]
    /// Accepted start requests per instance.
    public var starts: [String: Int] = [:]
    /// Start requests refused by the `fail_start_instances` fault, per instance.
    public var failedStarts: [String: Int] = [:]
    public var stops: [String: Int] = [:]
    /// Times each instance's processes were launched (a boot after create or start).
    public var boots: [String: Int] = [:]
    public var creates = 0
    public var destroys = 0
    public var volumeCreates = 0
    public var volumeDeletes = 0

    public init() {}

    enum CodingKeys: String, CodingKey {
        case calls, injectedFailures = "injected_failures", rateLimited = "rate_limited", timedOut = "timed_out", starts
        case failedStarts = "failed_starts", stops, boots, creates, destroys, volumeCreates = "volume_creates"
        case volumeDeletes = "volume_deletes"
    }
}
