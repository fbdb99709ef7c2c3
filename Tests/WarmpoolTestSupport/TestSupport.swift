import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// What the test harnesses share: running commands, and real volumes to probe (tmpfs mounts need
/// root, as CI has).
public struct HarnessError: Error, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
}

public enum Command {
    /// Runs a command to completion; returns its exit status and its stdout and stderr together.
    public static func run(_ path: String, _ arguments: [String]) throws -> (status: Int32, output: String) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: path)
        process.arguments = arguments
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = pipe
        try process.run()
        let output = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        return (process.terminationStatus, output)
    }

    /// Like `run`, but a non-zero exit is an error naming the command and its output.
    @discardableResult
    public static func runChecked(_ path: String, _ arguments: [String]) throws -> String {
        let (status, output) = try run(path, arguments)
        guard status == 0 else {
            throw HarnessError("\(path) \(arguments.joined(separator: " ")) exited \(status): \(output)")
        }
        return output
    }
}

/// A tmpfs mounted on a fresh temporary directory, with an optional volume-id marker; unmounted
/// and removed on deinit.
public final class TmpfsVolume {
    public let path: String

    public init(markerID: String? = "vol-42", markerName: String = ".warmpool-volume-id", readOnly: Bool = false,
                sizeMiB: Int = 8) throws {
        path = FileManager.default.temporaryDirectory.appendingPathComponent("warmpool-vol-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        guard mount("tmpfs", path, "tmpfs", 0, "size=\(sizeMiB)m") == 0 else {
            throw HarnessError("mount tmpfs on \(path): errno \(errno)")
        }
        if let markerID {
            try "\(markerID)\n".write(toFile: path + "/" + markerName, atomically: false, encoding: .utf8)
        }
        if readOnly {
            guard mount("none", path, nil, UInt(MS_REMOUNT | MS_RDONLY), nil) == 0 else {
                throw HarnessError("remount read-only: errno \(errno)")
            }
        }
    }

    deinit {
        umount2(path, Int32(MNT_DETACH))
        try? FileManager.default.removeItem(atPath: path)
    }
}

/// A plain directory (not a mount point), removed on deinit.
public final class PlainDirectory {
    public let path: String

    public init() throws {
        path = FileManager.default.temporaryDirectory.appendingPathComponent("warmpool-dir-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    }

    deinit { try? FileManager.default.removeItem(atPath: path) }
}
