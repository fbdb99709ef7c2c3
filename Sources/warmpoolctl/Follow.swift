import WarmpoolJSON

// What `--follow`, `provision` and `failover test` print as things happen, decided from one poll's
// answer and what earlier polls showed. Pure: the polling is in Watch.swift.

/// The events of a poll not shown before. The events route answers a pool's newest `limit`
/// events, oldest first, ordered by time rather than id (liveness events are filed in batches,
/// after engine events of the same moment), so a new event need not have the largest id: an
/// event is new when the previous answer did not hold it. Remembering only the previous answer
/// keeps this bounded; an event that has left the window of the newest never comes back.
struct NewEvents {
    private let limit: Int
    private var previous: Set<String>

    /// `baseline`: events already shown, or that happened before whatever is followed.
    init(limit: Int, baseline: [JSONValue] = []) {
        self.limit = limit
        previous = Set(baseline.map(Self.key))
    }

    /// The events of `events` (one answer, oldest first) not in the previous answer, in its order;
    /// and whether some may have been missed: a full answer without any event of the previous one
    /// means more than `limit` happened between the two polls.
    mutating func take(_ events: [JSONValue]) -> (new: [JSONValue], mayHaveMissed: Bool) {
        let keys = events.map(Self.key)
        let new = zip(events, keys).filter { !previous.contains($0.1) }.map(\.0)
        let mayHaveMissed = !previous.isEmpty && events.count >= limit && new.count == events.count
        previous = Set(keys)
        return (new, mayHaveMissed)
    }

    /// The event's id; an event without one (none the store returns) by its whole content.
    private static func key(_ event: JSONValue) -> String {
        event["id"]?.numberText ?? String(decoding: event.serialized(options: .sortedKeys), as: UTF8.self)
    }
}

/// What changed in a pool's failover history between polls: a failover that began, each step as it
/// is recorded, and the failover's end once it has a result.
struct FollowedHistory {
    enum Change: Equatable {
        case began(JSONValue)
        case step(failover: String, JSONValue)
        case ended(JSONValue)
    }

    /// Steps shown so far of each failover, by id (a failover's steps are only ever appended).
    private var stepsShown: [String: Int] = [:]
    private var ended: Set<String> = []

    /// `baseline`: one history answer, everything in it already shown (or from before).
    init(baseline failovers: [JSONValue] = []) {
        for failover in failovers {
            let id = Self.id(failover)
            stepsShown[id] = failover["timeline"]?.objects.count ?? 0
            if Self.hasEnded(failover) { ended.insert(id) }
        }
    }

    /// The changes in `failovers` (one history answer, newest first, as the API lists them),
    /// oldest first: the order they happened in.
    mutating func take(_ failovers: [JSONValue]) -> [Change] {
        var changes: [Change] = []
        for failover in failovers.reversed() {
            let id = Self.id(failover)
            if stepsShown[id] == nil { changes.append(.began(failover)) }
            let steps = failover["timeline"]?.objects ?? []
            let shown = stepsShown[id] ?? 0
            if steps.count > shown { changes += steps[shown...].map { .step(failover: id, $0) } }
            stepsShown[id] = max(shown, steps.count)
            if Self.hasEnded(failover), !ended.contains(id) {
                ended.insert(id)
                changes.append(.ended(failover))
            }
        }
        return changes
    }

    private static func id(_ failover: JSONValue) -> String { failover["id"]?.stringValue ?? "?" }

    private static func hasEnded(_ failover: JSONValue) -> Bool {
        guard let result = failover["result"]?.stringValue else { return false }
        return result != "in_progress"
    }
}
