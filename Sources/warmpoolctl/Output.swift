import Foundation

/// Plain-text tables for people and `--json` for scripts.
enum Output {
    static func json(_ value: Any) {
        guard let data = try? JSONSerialization.data(withJSONObject: value, options: [.prettyPrinted, .sortedKeys]) else { return }
        print(String(decoding: data, as: UTF8.self))
    }

    /// The API's JSON with `--json`; otherwise the one field of it a person wants.
    static func field(_ name: String, of answer: Any, json: Bool) {
        if json { return Output.json(answer) }
        print(cell((answer as? [String: Any])?[name]))
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
    static func cell(_ value: Any?) -> String {
        switch value {
        case nil, is NSNull: return "-"
        case let string as String: return string
        // An exact type test: `as Bool` would also take the numbers 0 and 1.
        case let bool as Bool where type(of: value!) == Bool.self: return bool ? "yes" : "no"
        case let integer as Int where type(of: value!) == Int.self: return String(integer)
        // Foundation on Linux hands JSON booleans over as NSNumbers of type "c".
        case let number as NSNumber where String(cString: number.objCType) == "c": return number.boolValue ? "yes" : "no"
        case let number as NSNumber: return number.stringValue
        default: return "\(value!)"
        }
    }

    /// "3.2s ago" from an ISO-8601 timestamp, or "-".
    static func ago(_ value: Any?) -> String {
        guard let text = value as? String, let date = parseDate(text) else { return "-" }
        let seconds = Date().timeIntervalSince(date)
        if seconds < 120 { return String(format: "%.1fs ago", seconds) }
        if seconds < 7200 { return "\(Int(seconds / 60))m ago" }
        return text
    }

    static func parseDate(_ text: String) -> Date? {
        try? Date(text, strategy: Date.ISO8601FormatStyle(includingFractionalSeconds: true))
    }
}
