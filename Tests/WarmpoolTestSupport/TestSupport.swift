import Foundation
import NIOCore
import WarmpoolWire

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
    /// `environment`: `NAME=value` entries added to this process's.
    public static func run(_ path: String, _ arguments: [String], environment: [String] = []) throws -> (status: Int32, output: String) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: path)
        process.arguments = arguments
        if !environment.isEmpty {
            var merged = ProcessInfo.processInfo.environment
            for entry in environment {
                let parts = entry.split(separator: "=", maxSplits: 1)
                merged[String(parts[0])] = parts.count > 1 ? String(parts[1]) : ""
            }
            process.environment = merged
        }
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

/// A raw, blocking TCP client for sending the controller bytes no agent would, and reading what
/// it answers.
public final class RawClient {
    public let fd: Int32

    /// `address` is HOST:PORT; reads give up after `receiveTimeout` seconds.
    public init(_ address: String, receiveTimeout: Double = 5) throws {
        let colon = address.lastIndex(of: ":")!
        let port = UInt16(address[address.index(after: colon)...])!
        fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = port.bigEndian
        addr.sin_addr.s_addr = inet_addr(String(address[..<colon]))
        var timeout = timeval(tv_sec: Int(receiveTimeout), tv_usec: Int((receiveTimeout - receiveTimeout.rounded(.down)) * 1_000_000))
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        let result = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard result == 0 else { throw HarnessError("connect failed: errno \(errno)") }
    }

    deinit { close(fd) }

    public func send(_ bytes: [UInt8]) {
        _ = bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
    }

    public func send(_ frame: Frame) {
        var buffer = ByteBuffer()
        frame.write(into: &buffer)
        send(Array(buffer: buffer))
    }

    /// Reads until EOF (or the receive timeout); returns what came and whether the peer closed.
    public func readUntilClosed() -> (bytes: [UInt8], closed: Bool) {
        var all: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        while true {
            let count = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if count > 0 { all += chunk[0..<count]; continue }
            return (all, count == 0 || errno == ECONNRESET)
        }
    }

    /// Reads exactly one frame (blocking up to the timeout).
    public func readFrame() throws -> Frame {
        var pending = [UInt8]()
        var chunk = [UInt8](repeating: 0, count: 1)
        while true {
            var buffer = ByteBuffer(bytes: pending)
            if let frame = try FrameParser().parse(&buffer) { return frame }
            let count = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            guard count > 0 else { throw HarnessError("connection closed while reading a frame") }
            pending += chunk[0..<count]
        }
    }
}
