import Foundation

/// The few pieces every page of the console is written with. Everything that came from a pool, an
/// agent or an operator goes through `escape`: provider messages and agent ids are not ours.
enum HTML {
    static func escape(_ text: String) -> String {
        var escaped = ""
        escaped.reserveCapacity(text.utf8.count)
        for character in text.unicodeScalars {
            switch character {
            case "&": escaped += "&amp;"
            case "<": escaped += "&lt;"
            case ">": escaped += "&gt;"
            case "\"": escaped += "&quot;"
            case "'": escaped += "&#39;"
            default: escaped.unicodeScalars.append(character)
            }
        }
        return escaped
    }

    /// A value or an em dash, escaped.
    static func text(_ value: CustomStringConvertible?) -> String {
        value.map { escape($0.description) } ?? "—"
    }

    /// A moment as "12 s ago", with the exact time on hover and for machines.
    static func ago(_ date: Date?, now: Date) -> String {
        guard let date else { return "—" }
        return "<time datetime=\"\(ISO8601.format(date))\" title=\"\(ISO8601.format(date))\">\(duration(now.timeIntervalSince(date))) ago</time>"
    }

    /// "850 ms", "12 s", "4 min", "3 h", "2 d": the unit an operator reads at a glance.
    static func duration(_ seconds: Double) -> String {
        let seconds = max(0, seconds)
        switch seconds {
        case ..<1: return "\(Int((seconds * 1000).rounded())) ms"
        case ..<10: return String(format: "%.1f s", seconds)
        case ..<120: return "\(Int(seconds.rounded())) s"
        case ..<7200: return "\(Int((seconds / 60).rounded())) min"
        case ..<172_800: return "\(Int((seconds / 3600).rounded())) h"
        default: return "\(Int((seconds / 86400).rounded())) d"
        }
    }

    static func money(_ value: Double?) -> String {
        guard let value else { return "—" }
        return value < 10 ? String(format: "$%.2f", value) : "$\(Int(value.rounded()))"
    }

    /// A GiB figure from MiB, one decimal under 10.
    static func gibibytes(mebibytes: Int) -> String {
        let gib = Double(mebibytes) / 1024
        return gib < 10 ? String(format: "%.1f GiB", gib) : "\(Int(gib.rounded())) GiB"
    }

    /// A coloured label: `tone` is one of the stylesheet's badge classes.
    static func badge(_ label: String, tone: String) -> String {
        "<span class=\"badge \(tone)\">\(escape(label))</span>"
    }

    /// An `application/x-www-form-urlencoded` body: each name's first value.
    static func formFields(_ body: [UInt8]) -> [String: String] {
        var fields: [String: String] = [:]
        for pair in String(decoding: body, as: UTF8.self).split(separator: "&", omittingEmptySubsequences: true) {
            let parts = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            func decode(_ part: Substring) -> String {
                String(part).replacingOccurrences(of: "+", with: " ").removingPercentEncoding ?? ""
            }
            let name = decode(parts[0])
            if fields[name] == nil { fields[name] = parts.count > 1 ? decode(parts[1]) : "" }
        }
        return fields
    }

    /// Percent-encodes a query value (the login page's `next`).
    static func queryValue(_ text: String) -> String {
        var allowed = CharacterSet.alphanumerics
        allowed.insert(charactersIn: "-._~/")
        return text.addingPercentEncoding(withAllowedCharacters: allowed) ?? ""
    }
}
