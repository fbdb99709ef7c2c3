#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import WarmpoolModel
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Where host-key pins live: one SHA-256 fingerprint per instance, set on first successful
/// contact (trust on first use) and never silently replaced.
///
/// The durable store (the controller's database) comes later; it implements this protocol.
public protocol HostKeyPinStore: Sendable {
    /// The pinned fingerprint (`SHA256:...`), or nil when the instance has none yet.
    func pinnedFingerprint(for instanceID: InstanceID) async throws -> String?
    /// Pins `fingerprint` when the instance has no pin, atomically. Returns the pin in force
    /// afterwards: `fingerprint` itself, or the one that was already there (the caller then
    /// treats a difference as a mismatch).
    func pinIfAbsent(_ fingerprint: String, for instanceID: InstanceID) async throws -> String
    /// Forgets the pin (an operator's decision after a legitimate host change).
    func removePin(for instanceID: InstanceID) async throws
}

/// Pins in memory: for tests and for one-off checks.
public actor InMemoryHostKeyPinStore: HostKeyPinStore {
    private var pins: [InstanceID: String]

    public init(_ pins: [InstanceID: String] = [:]) {
        self.pins = pins
    }

    public func pinnedFingerprint(for instanceID: InstanceID) -> String? { pins[instanceID] }

    public func pinIfAbsent(_ fingerprint: String, for instanceID: InstanceID) -> String {
        if let existing = pins[instanceID] { return existing }
        pins[instanceID] = fingerprint
        return fingerprint
    }

    public func removePin(for instanceID: InstanceID) { pins[instanceID] = nil }

    public var all: [InstanceID: String] { pins }
}

/// Pins in a JSON file, `{"version":1,"pins":{"INSTANCE":{"fingerprint":"SHA256:...","pinned_at":"..."}}}`.
/// Every change writes a temporary file beside it (mode 0600), fsyncs it, renames it over the
/// old one and fsyncs the directory: a crash leaves the old file or the new one, never half of one.
/// The file is read once, at init; this process is its only writer.
public actor FileHostKeyPinStore: HostKeyPinStore {
    public struct Entry: Codable, Hashable, Sendable {
        public var fingerprint: String
        /// ISO 8601, UTC.
        public var pinnedAt: String

        enum CodingKeys: String, CodingKey {
            case fingerprint
            case pinnedAt = "pinned_at"
        }
    }

    struct FileContents: Codable {
        var version: Int
        var pins: [String: Entry]
    }

    public struct StoreError: Error, CustomStringConvertible {
        public var description: String
    }

    public nonisolated let path: String
    private var entries: [String: Entry]

    /// Loads `path`; a missing file is an empty store (created on the first pin).
    public init(path: String) throws {
        self.path = path
        guard let data = FileManager.default.contents(atPath: path) else {
            if access(path, F_OK) == 0 { throw StoreError(description: "cannot read \(path)") }
            entries = [:]
            return
        }
        let contents: FileContents
        do {
            contents = try JSONDecoder().decode(FileContents.self, from: data)
        } catch {
            throw StoreError(description: "\(path) is not a valid pin file: \(error)")
        }
        guard contents.version == 1 else {
            throw StoreError(description: "\(path) has version \(contents.version); this build reads version 1")
        }
        entries = contents.pins
    }

    public func pinnedFingerprint(for instanceID: InstanceID) -> String? { entries[instanceID.description]?.fingerprint }

    public func entry(for instanceID: InstanceID) -> Entry? { entries[instanceID.description] }

    public func pinIfAbsent(_ fingerprint: String, for instanceID: InstanceID) throws -> String {
        if let existing = entries[instanceID.description] { return existing.fingerprint }
        var updated = entries
        updated[instanceID.description] = Entry(fingerprint: fingerprint, pinnedAt: Self.timestamp())
        try write(updated)
        entries = updated
        return fingerprint
    }

    public func removePin(for instanceID: InstanceID) throws {
        guard entries[instanceID.description] != nil else { return }
        var updated = entries
        updated[instanceID.description] = nil
        try write(updated)
        entries = updated
    }

    private func write(_ pins: [String: Entry]) throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .prettyPrinted]
        let data = try encoder.encode(FileContents(version: 1, pins: pins)) + Data("\n".utf8)
        try Self.atomicWrite(Array(data), to: path)
    }

    /// Writes `bytes` to `path` through a temporary file, fsync and rename. Blocking.
    static func atomicWrite(_ bytes: [UInt8], to path: String) throws {
        let directory = path.lastIndex(of: "/").map { $0 == path.startIndex ? "/" : String(path[..<$0]) } ?? "."
        let temporary = path + ".tmp-\(getpid())"
        let fd = open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw StoreError(description: "cannot create \(temporary): errno \(errno)") }
        var written = 0
        while written < bytes.count {
            let count = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress! + written, $0.count - written) }
            if count < 0 {
                if errno == EINTR { continue }
                let error = errno
                close(fd)
                unlink(temporary)
                throw StoreError(description: "cannot write \(temporary): errno \(error)")
            }
            written += count
        }
        guard fsync(fd) == 0 else {
            let error = errno
            close(fd)
            unlink(temporary)
            throw StoreError(description: "cannot fsync \(temporary): errno \(error)")
        }
        close(fd)
        guard rename(temporary, path) == 0 else {
            let error = errno
            unlink(temporary)
            throw StoreError(description: "cannot rename \(temporary) to \(path): errno \(error)")
        }
        let directoryFD = open(directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if directoryFD >= 0 {
            _ = fsync(directoryFD)
            close(directoryFD)
        }
    }

    static func timestamp() -> String {
        var now = time(nil)
        var parts = tm()
        gmtime_r(&now, &parts)
        func two(_ value: Int32) -> String { value < 10 ? "0\(value)" : "\(value)" }
        return "\(parts.tm_year + 1900)-\(two(parts.tm_mon + 1))-\(two(parts.tm_mday))T\(two(parts.tm_hour)):\(two(parts.tm_min)):\(two(parts.tm_sec))Z"
    }
}
