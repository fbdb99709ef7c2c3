import WarmpoolJSON
import WarmpoolModel

/// A primary's continuous copy to its CPU standby as its agent last reported it (Telemetry's
/// `sync`, PROTOCOL.md §3.8). The lag is an age measured on the agent's clock; it is kept with the
/// controller's monotonic time of receipt, so the lag now is the lag then plus the time since: an
/// upper bound (writes since the report may or may not be in the copy yet) that keeps growing
/// when the agent falls silent, as the copy's age does.
public struct SyncReport: Sendable, Equatable {
    public struct Manifest: Sendable, Equatable {
        public var pass: Int
        /// Wall clock, ms since the epoch, as written in the target's manifest.
        public var startedAtMilliseconds: Int64
    }

    public var target: String?
    /// `off`, `waiting`, `syncing`, `idle` or `failing` (another word is kept as said).
    public var state: String
    /// nil before the sync has begun.
    public var lagMilliseconds: Int64?
    public var bytesPending: Int64?
    public var filesPending: Int64?
    public var passes: Int
    public var failuresInARow: Int
    public var error: String?
    public var lastPassMilliseconds: Int64?
    public var lastSentBytes: Int64?
    /// The last completed pass: what the target's `.warmpool-sync/manifest.json` must say (or later).
    public var manifest: Manifest?
    /// Controller monotonic nanoseconds.
    public var receivedAt: Int64

    public init(target: String?, state: String, lagMilliseconds: Int64?, bytesPending: Int64? = nil, filesPending: Int64? = nil,
                passes: Int = 0, failuresInARow: Int = 0, error: String? = nil, lastPassMilliseconds: Int64? = nil,
                lastSentBytes: Int64? = nil, manifest: Manifest? = nil, receivedAt: Int64) {
        self.target = target
        self.state = state
        self.lagMilliseconds = lagMilliseconds
        self.bytesPending = bytesPending
        self.filesPending = filesPending
        self.passes = passes
        self.failuresInARow = failuresInARow
        self.error = error
        self.lastPassMilliseconds = lastPassMilliseconds
        self.lastSentBytes = lastSentBytes
        self.manifest = manifest
        self.receivedAt = receivedAt
    }

    /// Reads the `sync` key; nil when it is absent or malformed (a state that is no string, a lag
    /// that is no non-negative integer: a lag that cannot be read is no lag). Optional fields of
    /// the wrong type are dropped alone.
    init?(telemetry document: JSONValue, receivedAt: Int64) {
        guard let value = document["sync"], value.objectValue != nil, let state = value["state"]?.stringValue else { return nil }
        func count(_ key: String) -> Int64? { value[key]?.intValue.flatMap { $0 >= 0 ? $0 : nil } }
        let lag = value["lag_ms"]
        guard lag == nil || count("lag_ms") != nil else { return nil }
        var manifest: Manifest?
        if let pass = value["manifest"]?["pass"]?.intValue, let started = value["manifest"]?["started_at_ms"]?.intValue, pass >= 0 {
            manifest = Manifest(pass: Int(clamping: pass), startedAtMilliseconds: started)
        }
        self.init(
            target: value["target"]?.stringValue, state: state, lagMilliseconds: count("lag_ms"), bytesPending: count("bytes_pending"),
            filesPending: count("files_pending"), passes: Int(clamping: count("passes") ?? 0),
            failuresInARow: Int(clamping: count("failures") ?? 0), error: value["error"]?.stringValue,
            lastPassMilliseconds: count("last_pass_ms"), lastSentBytes: count("last_sent_bytes"), manifest: manifest,
            receivedAt: receivedAt)
    }

    /// The lag at `now` (controller monotonic), in seconds; nil before the sync began.
    public func lag(at now: Int64) -> Double? {
        guard let lagMilliseconds else { return nil }
        return Double(lagMilliseconds) / 1e3 + Double(max(0, now - receivedAt)) / 1e9
    }
}
