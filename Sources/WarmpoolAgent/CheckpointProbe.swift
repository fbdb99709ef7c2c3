#if canImport(Glibc)
import Glibc
#endif

/// The newest file the workload checkpointed: what a failover of this instance would lose is the
/// work done since (its recovery point). The agent cannot see inside the workload, so "a
/// checkpoint" is any regular file matching a pattern on the volume (`/data/checkpoints/**`).
public struct CheckpointReport: Hashable, Sendable {
    public var pattern: String
    /// Regular files that matched.
    public var files: Int
    /// The newest of them, relative to the pattern's fixed directory; nil when none matched.
    public var newestPath: String?
    /// Its modification time, wall clock (CLOCK_REALTIME) nanoseconds: telemetry turns it into an
    /// age on the same clock, so the controller's and the instance's clocks need not agree.
    public var newestModifiedNanoseconds: Int64?
    /// The walk stopped at `CheckpointProbe.entryLimit` entries: the newest may be among the rest.
    public var truncated = false
    /// Why the directory could not be read (missing is not a problem: the workload has not
    /// checkpointed yet).
    public var problem: String?
}

/// A path pattern: `*` and `?` and `[...]` within one component (fnmatch(3)), `**` for any number
/// of components. The components before the first wildcard are the directory the walk starts at.
public struct CheckpointPattern: Hashable, Sendable, CustomStringConvertible {
    public let description: String
    /// The fixed directory the pattern starts in (no wildcard in it).
    let root: String
    /// The rest, one entry per component.
    let components: [String]

    /// nil for a relative pattern or one with no component after its directory.
    public init?(_ pattern: String) {
        guard pattern.hasPrefix("/") else { return nil }
        let parts = pattern.split(separator: "/", omittingEmptySubsequences: true).map(String.init)
        guard let firstWild = parts.firstIndex(where: Self.hasWildcard) ?? (parts.isEmpty ? nil : parts.count - 1) else { return nil }
        description = pattern
        root = "/" + parts[..<firstWild].joined(separator: "/")
        components = Array(parts[firstWild...])
    }

    private static func hasWildcard(_ component: String) -> Bool {
        component.contains { $0 == "*" || $0 == "?" || $0 == "[" }
    }

    /// Whether a path below `root`, split into its components, matches.
    func matches(_ path: [String]) -> Bool {
        Self.match(path[...], components[...])
    }

    private static func match(_ path: ArraySlice<String>, _ pattern: ArraySlice<String>) -> Bool {
        guard let head = pattern.first else { return path.isEmpty }
        if head == "**" {
            // Zero components, or one more and try again.
            if match(path, pattern.dropFirst()) { return true }
            return !path.isEmpty && match(path.dropFirst(), pattern)
        }
        guard let component = path.first, fnmatch(head, component, 0) == 0 else { return false }
        return match(path.dropFirst(), pattern.dropFirst())
    }
}

/// Walks the pattern's directory for the newest matching regular file. Blocking (a directory walk):
/// runs on the probe thread. Links are not followed, so a loop or a link out of the volume costs
/// nothing; the walk is bounded so that a volume of millions of files costs a bounded probe.
public struct CheckpointProbe: Sendable {
    public static let entryLimit = 20_000
    public let pattern: CheckpointPattern

    public init(pattern: CheckpointPattern) {
        self.pattern = pattern
    }

    public func probe() -> CheckpointReport {
        var report = CheckpointReport(pattern: pattern.description, files: 0)
        let ending = BoundedDirectoryWalk(root: pattern.root, entryLimit: Self.entryLimit).walk { entry in
            guard entry.type == S_IFREG, pattern.matches(entry.components) else { return }
            report.files += 1
            if entry.modifiedNanoseconds > report.newestModifiedNanoseconds ?? .min {
                report.newestModifiedNanoseconds = entry.modifiedNanoseconds
                report.newestPath = entry.components.joined(separator: "/")
            }
        }
        switch ending {
        case .complete: break
        case .truncated: report.truncated = true
        // No checkpoint directory yet is no problem: the workload has not written one.
        case .rootUnreadable(let error) where error != ENOENT:
            report.problem = "cannot read \(pattern.root): \(String(cString: strerror(error)))"
        case .rootUnreadable: break
        }
        return report
    }
}
