import Foundation
@_exported import WarmpoolTestSupport
import Testing
import NIOCore
import WarmpoolJSON
import WarmpoolModel
import WarmpoolWire

#if canImport(Glibc)
import Glibc
#endif

/// Starts the real `warmpool-controller` and `warmpool-agent` binaries from this build, in a
/// temporary directory, and reads the controller's JSON event lines.
final class Harness {
    let directory: String
    let binaries: String
    private(set) var controller: Process?
    private(set) var agents: [String: Process] = [:]
    var controllerAddress = ""
    var apiAddress = ""

    init() throws {
        directory = FileManager.default.temporaryDirectory.appendingPathComponent("warmpool-e2e-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        binaries = try Self.findBinaries()
    }

    deinit {
        for process in agents.values { stop(process) }
        if let controller { stop(controller) }
        // WARMPOOL_KEEP_E2E=1 keeps the logs of a failing run to read.
        if ProcessInfo.processInfo.environment["WARMPOOL_KEEP_E2E"] == nil { try? FileManager.default.removeItem(atPath: directory) }
    }

    /// WARMPOOL_BIN_DIR, else the directory of the test bundle (where SwiftPM puts executables).
    static func findBinaries() throws -> String {
        var candidates: [String] = []
        if let configured = ProcessInfo.processInfo.environment["WARMPOOL_BIN_DIR"] { candidates.append(configured) }
        var bundle = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath()
        while bundle.pathComponents.count > 1 {
            bundle.deleteLastPathComponent()
            candidates.append(bundle.path)
        }
        for candidate in candidates where FileManager.default.isExecutableFile(atPath: candidate + "/warmpool-controller") {
            return candidate
        }
        throw HarnessError("warmpool-controller not found next to the tests; run `swift build` first or set WARMPOOL_BIN_DIR")
    }

    var eventsPath: String { directory + "/events.jsonl" }
    var keysPath: String { directory + "/agent-keys" }
    var databasePath: String { directory + "/db/warmpool.db" }
    var apiReadyPath: String { directory + "/api-ready" }
    func logPath(_ name: String) -> String { directory + "/\(name).log" }

    @discardableResult
    func run(_ executable: String, _ arguments: [String]) throws -> String {
        try Command.runChecked(binaries + "/" + executable, arguments)
    }

    /// Mints a key for `agentID` in the controller's keys file; returns the secret file's path.
    func addAgentKey(_ agentID: String) throws -> String {
        let secretFile = directory + "/\(agentID).secret"
        try run("warmpool-controller", ["keygen", "--agent-id", agentID, "--keys-file", keysPath, "--secret-out", secretFile])
        return secretFile
    }

    /// `listen` is the agents' address; a restart passes the old one, as a real deployment would.
    func startController(intervalMilliseconds: Int = 50, listen: String = "127.0.0.1:0", extra: [String] = []) throws {
        if !FileManager.default.fileExists(atPath: keysPath) {
            _ = FileManager.default.createFile(atPath: keysPath, contents: nil)
        }
        let ready = directory + "/ready"
        // A restart must wait for the new process's addresses, not read the old ones.
        try? FileManager.default.removeItem(atPath: ready)
        try? FileManager.default.removeItem(atPath: apiReadyPath)
        controller = try spawn("warmpool-controller", [
            "--listen", listen, "--keys-file", keysPath, "--events", eventsPath, "--ready-file", ready,
            "--db", databasePath, "--api-listen", "127.0.0.1:0", "--api-ready-file", apiReadyPath,
            "--heartbeat-interval-ms", "\(intervalMilliseconds)", "--threads", "2", "--log-level", "debug",
        ] + extra, log: logPath("controller"))
        try waitUntil("the controller listens", timeout: 20) { FileManager.default.fileExists(atPath: ready) }
        controllerAddress = try String(contentsOfFile: ready, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
        try waitUntil("the API listens", timeout: 20) { FileManager.default.fileExists(atPath: apiReadyPath) }
        apiAddress = try String(contentsOfFile: apiReadyPath, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// The key a new database's first start writes beside it.
    func adminAPIKey() throws -> String {
        try String(contentsOfFile: directory + "/db/admin-api-key", encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// SIGKILL, as a crash or an OOM kill would: no graceful shutdown, no final flush.
    func killController() {
        if let controller { stop(controller) }
        controller = nil
    }

    func startAgent(_ agentID: String, secretFile: String, instanceID: Int = 4242, extra: [String] = []) throws -> Process {
        let process = try spawn("warmpool-agent", [
            "--controller", controllerAddress, "--agent-id", agentID, "--secret-file", secretFile,
            "--instance-id", "\(instanceID)", "--machine-id", "77", "--nvml-library", "none", "--volume-path", directory,
        ] + extra, log: logPath(agentID))
        agents[agentID] = process
        return process
    }

    func spawn(_ executable: String, _ arguments: [String], log: String) throws -> Process {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: binaries + "/" + executable)
        process.arguments = arguments
        _ = FileManager.default.createFile(atPath: log, contents: nil)
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: log))
        process.standardOutput = handle
        process.standardError = handle
        try process.run()
        return process
    }

    func stop(_ process: Process) {
        guard process.isRunning else { return }
        kill(process.processIdentifier, SIGCONT)
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
    }

    struct Event {
        var kind: String
        var agentID: String
        var instanceID: Int64
        var monotonicNanoseconds: Int64
        var reason: String
    }

    func events() -> [Event] {
        guard let text = try? String(contentsOfFile: eventsPath, encoding: .utf8) else { return [] }
        return text.split(separator: "\n").compactMap { line in
            guard let object = try? JSONValue.parse(String(line)),
                let kind = object["event"]?.stringValue, let agent = object["agent_id"]?.stringValue,
                let monotonic = object["monotonic_ns"]?.intValue
            else { return nil }
            return Event(kind: kind, agentID: agent, instanceID: object["instance_id"]?.intValue ?? 0, monotonicNanoseconds: monotonic,
                         reason: object["reason"]?.stringValue ?? "")
        }
    }

    func events(_ kind: String, for agentID: String) -> [Event] {
        events().filter { $0.kind == kind && $0.agentID == agentID }
    }

    /// Waits for the `count`-th event of a kind for an agent and returns it.
    func waitForEvent(_ kind: String, for agentID: String, count: Int = 1, timeout: Double = 10) throws -> Event {
        try waitUntil("\(kind) #\(count) for \(agentID)", timeout: timeout) { events(kind, for: agentID).count >= count }
        return events(kind, for: agentID)[count - 1]
    }

    func log(_ name: String) -> String { (try? String(contentsOfFile: logPath(name), encoding: .utf8)) ?? "" }

    func waitUntil(_ what: String, timeout: Double, _ condition: () -> Bool) throws {
        let deadline = Date().addingTimeInterval(timeout)
        while !condition() {
            guard Date() < deadline else {
                throw HarnessError("timed out after \(timeout) s waiting for \(what)\n--- controller log ---\n\(log("controller").suffix(3_000))")
            }
            usleep(10_000)
        }
    }
}

func monotonicNow() -> Int64 { MonotonicClock.now() }

