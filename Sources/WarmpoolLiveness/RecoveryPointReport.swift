import WarmpoolJSON
import WarmpoolModel

/// An instance's recovery point as its agent last reported it (Telemetry's `checkpoint` and
/// `snapshot`, PROTOCOL.md §3.8). The agent sends ages measured on its own clock; they are kept
/// with the controller's monotonic time of receipt, so an age now is the age then plus the time
/// since, and no two clocks need to agree.
public struct RecoveryPointReport: Sendable, Equatable {
    public struct Checkpoint: Sendable, Equatable {
        public var pattern: String
        public var files: Int
        public var newest: String?
        /// nil when no file matched.
        public var ageMilliseconds: Int64?
        public var problem: String?
    }

    public struct Snapshots: Sendable, Equatable {
        public var intervalSeconds: Int64
        public var lastID: String?
        /// nil before the first snapshot that succeeded.
        public var lastSuccessAgeMilliseconds: Int64?
        public var lastError: String?
        public var failuresInARow: Int
        public var running: Bool
    }

    public var checkpoint: Checkpoint?
    public var snapshots: Snapshots?
    /// Controller monotonic nanoseconds.
    public var receivedAt: Int64

    public init(checkpoint: Checkpoint?, snapshots: Snapshots?, receivedAt: Int64) {
        self.checkpoint = checkpoint
        self.snapshots = snapshots
        self.receivedAt = receivedAt
    }

    /// Reads the two keys; nil when the document has neither in a usable shape (a malformed one is
    /// dropped: an age that is not a number is no age).
    init?(telemetry document: JSONValue, receivedAt: Int64) {
        var checkpoint: Checkpoint?
        if let value = document["checkpoint"], let pattern = value["pattern"]?.stringValue, let files = value["files"]?.intValue {
            let age = value["age_ms"]?.intValue
            if age.map({ $0 >= 0 }) ?? true {
                checkpoint = Checkpoint(pattern: pattern, files: Int(clamping: files), newest: value["newest"]?.stringValue,
                                        ageMilliseconds: age, problem: value["problem"]?.stringValue)
            }
        }
        var snapshots: Snapshots?
        if let value = document["snapshot"], let interval = value["interval_s"]?.intValue, let running = value["running"]?.boolValue {
            let age = value["last_success_age_ms"]?.intValue
            if age.map({ $0 >= 0 }) ?? true {
                snapshots = Snapshots(
                    intervalSeconds: interval, lastID: value["last_id"]?.stringValue, lastSuccessAgeMilliseconds: age,
                    lastError: value["last_error"]?.stringValue, failuresInARow: Int(clamping: value["failures_in_a_row"]?.intValue ?? 0),
                    running: running)
            }
        }
        guard checkpoint != nil || snapshots != nil else { return nil }
        self.init(checkpoint: checkpoint, snapshots: snapshots, receivedAt: receivedAt)
    }

    /// The newest checkpoint's age at `now` (controller monotonic), in seconds.
    public func checkpointAge(at now: Int64) -> Double? {
        checkpoint?.ageMilliseconds.map { Double($0) / 1e3 + Double(now - receivedAt) / 1e9 }
    }

    /// The newest snapshot's age at `now`, in seconds.
    public func snapshotAge(at now: Int64) -> Double? {
        snapshots?.lastSuccessAgeMilliseconds.map { Double($0) / 1e3 + Double(now - receivedAt) / 1e9 }
    }
}
