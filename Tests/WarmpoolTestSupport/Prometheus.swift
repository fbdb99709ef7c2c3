import Foundation

/// The Prometheus text format as far as these checks need it.
public struct Exposition {
    public var help: [String: String] = [:]
    public var types: [String: String] = [:]
    public var sampleNames: Set<String> = []
    /// Samples whose family has no HELP or no TYPE line.
    public var problems: [String] = []

    public init(_ text: String) {
        for line in text.split(separator: "\n").map(String.init) {
            let words = line.split(separator: " ", maxSplits: 3).map(String.init)
            if line.hasPrefix("# HELP "), words.count >= 4 {
                help[words[2]] = words[3]
            } else if line.hasPrefix("# TYPE "), words.count >= 4 {
                types[words[2]] = words[3]
            } else if !line.hasPrefix("#") {
                sampleNames.insert(String(line.prefix { $0 != "{" && $0 != " " }))
            }
        }
        let families = Set(types.keys)
        for sample in sampleNames.sorted() {
            let family = Self.family(of: sample, in: families)
            if help[family] == nil || types[family] == nil { problems.append("\(sample): no HELP or TYPE for \(family)") }
        }
    }

    /// What a query may name: every family and every sample name (a histogram's `_bucket`...).
    public var names: Set<String> { sampleNames.union(types.keys) }

    /// A histogram's `_bucket`, `_sum` and `_count` samples belong to its family.
    public static func family(of sample: String, in families: Set<String>) -> String {
        for suffix in ["_bucket", "_sum", "_count"] where sample.hasSuffix(suffix) {
            let base = String(sample.dropLast(suffix.count))
            if families.contains(base) { return base }
        }
        return sample
    }

    /// The `warmpool_...` metric names a rules file or dashboard uses.
    public static func metricNames(in text: String) -> Set<String> {
        let pattern = try! Regex("warmpool_[a-z0-9_]+")
        return Set(text.matches(of: pattern).map { String(text[$0.range]) })
    }
}

/// The real promtool, as CI installs it (Scripts/setup). Missing is a failure, not a skip.
public enum Promtool {
    public static func path() throws -> String {
        let directories = ["/usr/bin", "/usr/local/bin"] + (ProcessInfo.processInfo.environment["PATH"] ?? "").split(separator: ":").map(String.init)
        guard let found = directories.map({ "\($0)/promtool" }).first(where: FileManager.default.isExecutableFile(atPath:)) else {
            throw MissingPromtool()
        }
        return found
    }

    public struct MissingPromtool: Error, CustomStringConvertible {
        public var description: String { "promtool is not installed: run Scripts/setup (Debian's prometheus package provides it)" }
    }

    public static func run(_ arguments: [String], input: String? = nil) throws -> (status: Int32, output: String) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: try path())
        process.arguments = arguments
        let output = Pipe()
        process.standardOutput = output
        process.standardError = output
        let stdin = Pipe()
        process.standardInput = stdin
        try process.run()
        if let input { stdin.fileHandleForWriting.write(Data(input.utf8)) }
        try stdin.fileHandleForWriting.close()
        let text = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        return (process.terminationStatus, text)
    }

    /// `promtool check metrics` lints an exposition read from stdin; it prints nothing when it finds no problem.
    public static func checkMetrics(_ exposition: String) throws -> (status: Int32, output: String) {
        try run(["check", "metrics"], input: exposition)
    }
}
