#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import WarmpoolModel

/// The agent's command line (warmpool-agent), parsed by hand. swift-argument-parser imports FoundationEssentials,
/// and in a static binary that brought FoundationEssentials, its collections and the regex
/// runtime along: megabytes of code that the loader's relocations and the kernel's fault-around
/// kept partly resident in every GPU instance, for a dozen `--name value` options. The agent's
/// grammar is that small: `--name value` or `--name=value`, a repeatable `--controller`, one
/// flag, `-h`/`--help`, `--version`; anything else is a usage error (exit 64, as the parser gave).
public struct CommandLineOption: Sendable {
    /// The long name without dashes.
    public var name: String
    /// The value's placeholder in the help, nil for a flag.
    public var valueName: String?
    public var help: String
    public var repeatable: Bool

    public init(name: String, valueName: String? = nil, help: String, repeatable: Bool = false) {
        self.name = name
        self.valueName = valueName
        self.help = help
        self.repeatable = repeatable
    }
}

/// A usage error: printed with a pointer to `--help`, exit status 64 (EX_USAGE).
public struct UsageError: Error, CustomStringConvertible, Equatable {
    public var description: String
    public init(_ description: String) { self.description = description }
}

public struct ParsedCommandLine: Sendable {
    private(set) var values: [String: [String]] = [:]
    private(set) var flags: Set<String> = []
    public private(set) var wantsHelp = false
    /// `--version`: print `ParsedCommandLine.version` and exit, as swift-argument-parser does.
    public private(set) var wantsVersion = false
    /// What follows `--`: a command line of its own, not options.
    public private(set) var trailing: [String]?

    /// `arguments` without the program name.
    public init(_ arguments: [String], options: [CommandLineOption]) throws(UsageError) {
        var byName: [String: CommandLineOption] = [:]
        for option in options { byName[option.name] = option }
        var index = 0
        while index < arguments.count {
            let argument = arguments[index]
            index += 1
            if argument == "--" {
                trailing = Array(arguments[index...])
                break
            }
            if argument == "-h" || argument == "--help" {
                wantsHelp = true
                continue
            }
            if argument == "--version" {
                wantsVersion = true
                continue
            }
            guard argument.hasPrefix("--"), argument.count > 2 else {
                throw UsageError("unexpected argument '\(argument)'")
            }
            var name = String(argument.dropFirst(2))
            var inlineValue: String?
            if let equals = name.firstIndex(of: "=") {
                inlineValue = String(name[name.index(after: equals)...])
                name = String(name[..<equals])
            }
            guard let option = byName[name] else { throw UsageError("unknown option '--\(name)'") }
            guard option.valueName != nil else {
                guard inlineValue == nil else { throw UsageError("'--\(name)' takes no value") }
                flags.insert(name)
                continue
            }
            let value: String
            if let inlineValue {
                value = inlineValue
            } else {
                guard index < arguments.count, !arguments[index].hasPrefix("--") else {
                    throw UsageError("missing value for '--\(name)'")
                }
                value = arguments[index]
                index += 1
            }
            // A single-valued option given twice takes the last, as swift-argument-parser did.
            values[name, default: []].append(value)
        }
    }

    public func string(_ name: String) -> String? { values[name]?.last }

    public func strings(_ name: String) -> [String] { values[name] ?? [] }

    public func integer<Value: FixedWidthInteger>(_ name: String, as: Value.Type = Value.self) throws(UsageError) -> Value? {
        guard let text = string(name) else { return nil }
        guard let value = Value(text) else { throw UsageError("the value '\(text)' is invalid for '--\(name)'") }
        return value
    }

    public func flag(_ name: String) -> Bool { flags.contains(name) }

    /// What `--version` prints: the version every Warmpool executable prints (the agent's
    /// executable reaches WarmpoolModel through this module).
    public static var version: String { WarmpoolVersion.current }

    /// OVERVIEW, the discussion, USAGE and the options with their help, wrapped at 100 columns.
    public static func help(command: String, abstract: String, discussion: String, options: [CommandLineOption]) -> String {
        var lines = ["OVERVIEW: \(abstract)", "", discussion, "", "USAGE: \(command) [<options>] [-- <command> ...]", "", "OPTIONS:"]
        let entries = options.map { option -> (String, String) in
            let name = "--\(option.name)" + (option.valueName.map { " <\($0)>" } ?? "")
            return (option.repeatable ? name + " ..." : name, option.help)
        } + [("--version", "Show the version."), ("-h, --help", "Show help information.")]
        let width = entries.map(\.0.count).max()! + 4
        for (name, help) in entries {
            var line = "  " + name + String(repeating: " ", count: width - name.count)
            for word in help.split(separator: " ") {
                if line.count + word.count + 1 > 100 {
                    lines.append(line)
                    line = String(repeating: " ", count: width + 2)
                } else if !line.hasSuffix(" ") {
                    line += " "
                }
                line += word
            }
            lines.append(line)
        }
        return lines.joined(separator: "\n")
    }
}

/// Writes to standard error, unbuffered.
public func printToStandardError(_ text: String) {
    var bytes = Array((text + "\n").utf8)
    bytes.withUnsafeMutableBytes { buffer in
        var offset = 0
        while offset < buffer.count {
            let written = write(2, buffer.baseAddress! + offset, buffer.count - offset)
            if written <= 0 { break }
            offset += written
        }
    }
}
