import Foundation
import WarmpoolJSON

/// Plain-text tables for people and `--json` for scripts.
enum Output {
    /// Pretty-printed with sorted keys, byte for byte as JSONSerialization's `[.prettyPrinted,
    /// .sortedKeys]` wrote it (which took only an object or an array).
    static func json(_ value: JSONValue) {
        guard value.isContainer else { return }
        print(String(decoding: value.serialized(options: .jsonSerializationPrettySorted), as: UTF8.self))
    }

    /// The API's JSON with `--json`; otherwise the one field of it a person wants.
    static func field(_ name: String, of answer: JSONValue, json: Bool) {
        if json { return Output.json(answer) }
        print(cell(answer[name]))
    }

    static func table(_ header: [String], _ rows: [[String]]) {
        var widths = header.map(\.count)
        for row in rows {
            for (index, cell) in row.enumerated() where index < widths.count { widths[index] = max(widths[index], cell.count) }
        }
        func line(_ cells: [String]) -> String {
            cells.enumerated().map { index, cell in
                index == cells.count - 1 ? cell : cell.padding(toLength: widths[index], withPad: " ", startingAt: 0)
            }.joined(separator: "  ")
        }
        print(line(header))
        for row in rows { print(line(row)) }
        if rows.isEmpty { print("(none)") }
    }

    /// A cell: missing and null values show as a dash.
    static func cell(_ value: JSONValue?) -> String {
        switch value {
        case nil, .null?: "-"
        case .string(let string)?: string
        case .bool(let bool)?: bool ? "yes" : "no"
        case .int(let integer)?: String(integer)
        // What NSNumber's stringValue gave: 1.5, 3.0.
        case .double(let number)?: number.description
        // No answer puts a container in a cell; were one to, it shows as compact JSON.
        case .array?, .object?: String(decoding: value!.serialized(), as: UTF8.self)
        }
    }

    /// "3.2s ago" from an ISO-8601 timestamp, or "-".
    static func ago(_ value: JSONValue?) -> String {
        guard let text = value?.stringValue, let date = parseDate(text) else { return "-" }
        let seconds = Date().timeIntervalSince(date)
        if seconds < 120 { return String(format: "%.1fs ago", seconds) }
        if seconds < 7200 { return "\(Int(seconds / 60))m ago" }
        return text
    }

    static func parseDate(_ text: String) -> Date? {
        try? Date(text, strategy: Date.ISO8601FormatStyle(includingFractionalSeconds: true))
    }

    /// A line on stderr: progress and remarks, which a script reading stdout (the answer, the
    /// key, the JSON) does not want. What stdout holds so far is written first, so on a terminal
    /// the two come out in the order they were printed.
    static func note(_ text: String) {
        flush()
        FileHandle.standardError.write(Data((text + "\n").utf8))
    }

    /// Writes out what `print` buffered: stdout into a pipe is written only when its buffer fills,
    /// and a watch or a follow must show each round as it comes. (`fflush(nil)`: every stream,
    /// without naming the C global `stdout`, which strict concurrency cannot vouch for.)
    static func flush() {
        fflush(nil)
    }

    /// `  +3.2 s  primary_running  instance 1001`: a step of a long command, `seconds` after its first
    /// step, both as the controller dated them (the CLI's clock may be set otherwise).
    static func progressLine(seconds: Double, _ step: String, _ detail: String) -> String {
        String(format: "%+7.1f s  ", seconds) + step.padding(toLength: max(step.count, 20), withPad: " ", startingAt: 0) + "  " + detail
    }

    /// One event as `events --follow` prints it: when, what, which agent, detail.
    static func eventLine(_ event: JSONValue) -> String {
        let kind = cell(event["kind"])
        return "\(cell(event["at"]))  \(kind.padding(toLength: max(kind.count, 20), withPad: " ", startingAt: 0))  \(cell(event["agent_id"]))  \(cell(event["detail"]))"
    }

    /// A failover's beginning, one of its steps, or its end, as `history --follow` and
    /// `failover test` print them as they happen.
    static func historyLine(_ change: FollowedHistory.Change) -> String {
        switch change {
        case .began(let failover):
            return "\(cell(failover["id"])) began: \(cell(failover["reason"]))"
        case .step(let id, let step):
            let name = cell(step["step"])
            let since = step["since_start_ms"]?.doubleValue.map { String(format: "%5.0f", $0) } ?? "-"
            return "\(id)  +\(since) ms  \(name.padding(toLength: max(name.count, 20), withPad: " ", startingAt: 0))  \(cell(step["detail"]))"
        case .ended(let failover):
            let error = failover["error_message"]?.stringValue.map { ": \($0)" } ?? ""
            return "\(cell(failover["id"])) \(cell(failover["result"])) in \(cell(failover["duration_seconds"])) s, epoch \(cell(failover["epoch"])), "
                + "primary \(cell(failover["old_primary_gpu_id"])) -> \(cell(failover["new_primary_gpu_id"]))\(error)"
        }
    }

    /// A change as one line of JSON, for `--follow --json`.
    static func historyJSON(_ change: FollowedHistory.Change) -> JSONValue {
        switch change {
        case .began(let failover): .object([("change", "began"), ("failover", failover)])
        case .step(let id, let step): .object([("change", "step"), ("failover_id", .string(id)), ("step", step)])
        case .ended(let failover): .object([("change", "ended"), ("failover", failover)])
        }
    }

    /// One compact line of JSON (JSON Lines), for what `--follow --json` streams.
    static func jsonLine(_ value: JSONValue) {
        print(String(decoding: value.serialized(options: .sortedKeys), as: UTF8.self))
    }
}

/// What the commands read of an answer, as the `as?` casts on JSONSerialization's objects did.
extension JSONValue {
    var isContainer: Bool {
        switch self {
        case .array, .object: true
        default: false
        }
    }

    var isObject: Bool { objectValue != nil }

    /// `self` when it is an object (`as? [String: Any]`).
    var asObject: JSONValue? { isObject ? self : nil }

    /// `self` when it is an object or an array.
    var asContainer: JSONValue? { isContainer ? self : nil }

    /// `self` when it is an object, else an empty one (`as? [String: Any] ?? [:]`).
    var objectOrEmpty: JSONValue { isObject ? self : .object([]) }

    /// The elements of an array of objects; none when it is not one (`as? [[String: Any]] ?? []`).
    var objects: [JSONValue] {
        guard case .array(let values) = self, values.allSatisfy(\.isObject) else { return [] }
        return values
    }

    /// The elements of an array of strings, or nil (`as? [String]`).
    var strings: [String]? {
        guard let values = arrayValue else { return nil }
        let strings = values.compactMap(\.stringValue)
        return strings.count == values.count ? strings : nil
    }

    /// A number as NSNumber's description wrote it, or nil for anything else (`as? NSNumber`).
    var numberText: String? {
        switch self {
        case .int(let integer): String(integer)
        case .double(let number): number.description
        default: nil
        }
    }
}
