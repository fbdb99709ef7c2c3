import Foundation
import Hummingbird
import Logging
import WarmpoolProvider
import WarmpoolSim
import WarmpoolTestSupport

#if canImport(Glibc)
import Glibc
#endif

/// An emulator served over real HTTP on an ephemeral loopback port, with its own state
/// directory and a client ed25519 key its instances accept. `stop()` shuts it down the way
/// SIGTERM does: every instance's processes end.
final class SimFixture: @unchecked Sendable {
    let directory: String
    let clientKeyPath: String
    let simulator: Simulator
    let baseURL: String
    static let apiKey = "sim-test-key"
    private let server: Task<Void, any Error>

    static var logger: Logger {
        var logger = Logger(label: "test.sim")
        logger.logLevel = .critical
        return logger
    }

    init(hosts: [HostSpec] = [.defaultHost], bootDelay: Duration = .milliseconds(100), faults: FaultPlan = FaultPlan(),
         mountVolumes: Bool = getuid() == 0, notificationURLs: [String] = [], notificationSecret: String = "") async throws {
        directory = FileManager.default.temporaryDirectory.appendingPathComponent("warmpool-simtest-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        clientKeyPath = directory + "/client_ed25519"
        try Command.runChecked("/usr/bin/ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-C", "sim-test", "-f", clientKeyPath])
        try FileManager.default.copyItem(atPath: clientKeyPath + ".pub", toPath: directory + "/authorized_keys")
        var configuration = SimConfiguration(apiKey: Self.apiKey, hosts: hosts, stateDirectory: directory + "/state",
                                             authorizedKeysPath: directory + "/authorized_keys", bootDelay: bootDelay,
                                             stopGracePeriod: .milliseconds(500), mountVolumes: mountVolumes, faults: faults)
        configuration.notificationURLs = notificationURLs
        configuration.notificationSecret = notificationSecret
        simulator = try Simulator(configuration: configuration, logger: Self.logger)
        let (ports, continuation) = AsyncStream.makeStream(of: Int.self)
        let app = SimServer.application(simulator: simulator, port: 0, logger: Self.logger) { continuation.yield($0) }
        server = Task { try await app.runService(gracefulShutdownSignals: []) }
        var iterator = ports.makeAsyncIterator()
        guard let port = await iterator.next() else { throw HarnessError("the emulator did not start") }
        baseURL = "http://127.0.0.1:\(port)"
    }

    func client(pageSize: Int = 25, attempts: Int = 3) -> VastClient {
        VastClient(configuration: .init(baseURL: baseURL, apiKey: Self.apiKey, timeout: .seconds(10),
                                        retry: RetryPolicy(maxAttempts: attempts, initialBackoff: .milliseconds(20)),
                                        pageSize: pageSize),
                   logger: Self.logger)
    }

    func stop() async {
        server.cancel()
        await simulator.shutdown()
        try? FileManager.default.removeItem(atPath: directory)
    }

    /// An admin call (or any raw call) with the key; returns the status and the JSON body.
    func raw(_ method: String, _ path: String, body: String? = nil) async -> (Int, JSON) {
        let answer = await simulator.handle(SimRequest(
            method: method, path: path.split(separator: "?").first.map(String.init) ?? path,
            query: SimRequest.parseQuery(path.split(separator: "?").dropFirst().first.map(String.init)),
            authorization: "Bearer \(Self.apiKey)", body: Data((body ?? "").utf8)))
        return (answer.status, answer.body)
    }

    func counters() async -> SimCounters { await simulator.counters }

    /// The instance's `actual_status` as the API shows it.
    func status(of id: Int) async -> String? {
        await raw("GET", "/api/v0/instances/\(id)/?owner=me").1["instances"]?["actual_status"]?.stringValue
    }

    /// Ids of the offers the API lists now.
    func offerIDs() async -> [Int] {
        (await raw("POST", "/api/v0/bundles/", body: "{}").1["offers"]?.arrayValue ?? []).compactMap { $0["id"]?.intValue }.sorted()
    }

    /// The instance's host-side facts from GET /admin/instances/{id}.
    func processes(of id: Int) async -> (alive: Bool, pid: Int?, directory: String?) {
        let (_, body) = await raw("GET", "/admin/instances/\(id)")
        return (body["processes_alive"]?.boolValue == true, body["launcher_pid"]?.intValue, body["directory"]?.stringValue)
    }

    /// Polls `condition` every 20 ms for up to `timeout`.
    static func eventually(_ timeout: Duration = .seconds(10), _ condition: () async throws -> Bool) async rethrows -> Bool {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if try await condition() { return true }
            try? await Task.sleep(for: .milliseconds(20))
        }
        return try await condition()
    }

    /// Pids of processes whose command line mentions `text`.
    static func processes(mentioning text: String) -> [Int32] {
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
        return entries.compactMap { entry -> Int32? in
            guard let pid = Int32(entry), let data = FileManager.default.contents(atPath: "/proc/\(entry)/cmdline") else { return nil }
            let state = (try? String(contentsOfFile: "/proc/\(entry)/stat", encoding: .utf8))?.split(separator: ")").last?
                .trimmingCharacters(in: .whitespaces).first
            guard state != "Z" else { return nil }
            return String(decoding: data, as: UTF8.self).contains(text) ? pid : nil
        }
    }

    static func requireRoot() throws {
        guard getuid() == 0 else { throw HarnessError("the emulator's mount and sshd tests need root (CI runs as root)") }
    }
}
