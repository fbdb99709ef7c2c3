import Foundation
import Testing
import WarmpoolJSON
import WarmpoolModel
import WarmpoolTestSupport

#if canImport(Glibc)
import Glibc
#endif

/// Issue 23, the operator's view, against the real binaries: versions, a hard --timeout, watching
/// and following, progress of long commands, one name per concept, and keys that cannot lock the
/// operator out.
@Suite(.serialized) struct OperatorCLITests {
    static let executables = [
        "warmpool-agent", "warmpool-controller", "warmpool-sim", "warmpool-loadgen", "warmpool-sshcheck", "warmpool-snapshot", "warmpoolctl",
    ]

    private func ctl(_ harness: Harness, key: String, _ arguments: [String]) throws -> (status: Int32, output: String) {
        try Command.run(harness.binaries + "/warmpoolctl", arguments + ["--url", "http://\(harness.apiAddress)", "--api-key", key])
    }

    @Test func everyExecutablePrintsTheOneVersion() throws {
        let binaries = try Harness.findBinaries()
        for executable in Self.executables {
            let (status, output) = try Command.run(binaries + "/" + executable, ["--version"])
            #expect(status == 0, "\(executable) --version exited \(status): \(output)")
            #expect(output == WarmpoolVersion.current + "\n", "\(executable) --version printed \(output)")
        }
    }

    @Test func theVersionRouteAnswersAnyKeyAndConformsToOpenAPI() throws {
        let document = try OpenAPIDocument(path: try OpenAPIDocument.locate())
        let harness = try Harness()
        try harness.startController()
        let base = "http://\(harness.apiAddress)"
        let admin = try harness.adminAPIKey()
        let read = try http("POST", "\(base)/api/v1/keys", key: admin, body: #"{"name": "dashboard", "scope": "read"}"#).json["key"]?.stringValue
        let metrics = try http("POST", "\(base)/api/v1/keys", key: admin, body: #"{"name": "prometheus", "scope": "metrics"}"#).json["key"]?.stringValue
        for (key, expected) in [(admin, 200), (read, 200), (metrics, 403), (nil, 401)] {
            let answer = try http("GET", "\(base)/api/v1/version", key: key)
            #expect(answer.status == expected, "\(answer.text)")
            let problems = document.problems(method: "GET", template: "/api/v1/version", status: answer.status,
                                             contentType: answer.contentType, body: answer.body)
            #expect(problems.isEmpty, "\(answer.status): \(problems)")
            if expected == 200 {
                #expect(answer.json["version"]?.stringValue == WarmpoolVersion.current)
                #expect(answer.json["api"]?.stringValue == "v1")
            }
        }
    }

    /// URLSession's own timeout is an idle timeout; a server that accepts and never answers must
    /// still end the command at --timeout, with a message that says so.
    @Test func aServerThatNeverAnswersEndsTheCommandAtItsTimeout() throws {
        let (socket, port) = try loopbackSocket(listening: true)
        defer { close(socket) }
        let binaries = try Harness.findBinaries()
        for arguments in [["status"], ["provision", "--machine-id", "12", "--host-machine-id", "77"]] {
            let started = Date()
            let (status, output) = try Command.run(binaries + "/warmpoolctl", arguments + [
                "--url", "http://127.0.0.1:\(port)", "--api-key", "wp_00000000_" + String(repeating: "0", count: 48), "--timeout", "1",
            ])
            let took = Date().timeIntervalSince(started)
            #expect(status == 1, "\(output)")
            #expect(output.contains("no answer within 1 s"), "\(output)")
            #expect(took >= 0.9 && took < 5, "\(arguments[0]) took \(took) s")
        }
    }

    @Test func provisionShowsItsStepsBeforeItsAnswerAndEventsFollowShowsWhatHappensNext() throws {
        let lab = try WarmPoolLab(bootDelayMilliseconds: 300)
        try lab.startController()
        let key = try lab.adminKey()
        let (status, output) = try ctl(lab.harness, key: key, ["provision", "--machine-id", "12", "--host-machine-id", "77"])
        #expect(status == 0, "\(output)")
        let lines = output.split(separator: "\n").map(String.init)
        let answer = try #require(lines.firstIndex { $0.hasPrefix("state active") }, "\(output)")
        // `   +1.2 s  step  detail`: each a provisioning event the API recorded for the pool.
        let progress = lines[..<answer].filter { $0.range(of: #"^ *\+[0-9]+\.[0-9] s  "#, options: .regularExpression) != nil }
        #expect(progress.count >= 3, "\(output)")
        let kinds = Set(try lab.poolEvents().compactMap { $0["kind"]?.stringValue })
        for line in progress {
            let step = line.split(separator: " ", omittingEmptySubsequences: true)[2]
            #expect(kinds.contains(String(step)), "\(line) is not one of the pool's events \(kinds)")
        }

        let follower = try BackgroundCommand(lab.harness.binaries + "/warmpoolctl", [
            "events", "12", "--follow", "--interval", "0.2", "--url", "http://\(lab.harness.apiAddress)", "--api-key", key,
        ])
        try follower.waitForOutput(timeout: 10) { $0.split(separator: "\n").count >= 3 }
        let before = follower.output
        #expect(try http("POST", "\(lab.api)/disable/12", key: key).status == 200)
        try follower.waitForOutput(timeout: 10) { $0.count > before.count && $0.dropFirst(before.count).contains("disabled") }
        #expect(try http("POST", "\(lab.api)/enable/12", key: key).status == 200)
        try follower.waitForOutput(timeout: 10) { $0.dropFirst(before.count).contains("→ active") || $0.dropFirst(before.count).contains("enabled") }
        Thread.sleep(forTimeInterval: 1)
        let followed = follower.stop()
        // Each event once: polls overlap, lines never repeat.
        let printed = followed.split(separator: "\n")
        #expect(Set(printed).count == printed.count, "\(followed)")
        // Each line is one of the pool's events: `AT  KIND  AGENT  DETAIL`.
        let recorded = Set(try lab.poolEvents().map { "\($0["at"]?.stringValue ?? "") \($0["kind"]?.stringValue ?? "")" })
        for line in printed {
            let fields = line.split(separator: " ", omittingEmptySubsequences: true)
            #expect(fields.count >= 2 && recorded.contains("\(fields[0]) \(fields[1])"), "\(line) is not one of \(recorded)")
        }
    }

    @Test func failoverTestShowsItsTimelineAndHistoryIsTimeline() throws {
        let lab = try WarmPoolLab()
        try lab.startController()
        _ = try lab.provision()
        let key = try lab.adminKey()
        for number in 1...2 {
            try lab.harness.waitUntil("the pool is active and protected", timeout: 60) {
                (try? lab.status()["protected"]?.boolValue) == true
            }
            let (status, output) = try ctl(lab.harness, key: key, ["failover", "test", "12"])
            #expect(status == 0, "\(output)")
            let lines = output.split(separator: "\n").map(String.init)
            let answer = try #require(lines.firstIndex { $0.hasPrefix("recovered in") }, "\(output)")
            let steps = lines[..<answer].filter { $0.hasPrefix("fo-12-\(number)  +") }
            // A test has no detection: it begins by fencing the primary it stops.
            for step in ["fencing", "fenced", "standby_starting", "promoted"] {
                #expect(steps.contains { $0.contains("  \(step) ") || $0.hasSuffix("  \(step)") }, "no \(step) before the answer: \(output)")
            }
            #expect(lines[..<answer].contains { $0.hasPrefix("fo-12-\(number) began") }, "\(output)")
        }
        _ = try lab.waitForFailover(2)
        let history = try ctl(lab.harness, key: key, ["history", "12"])
        let timeline = try ctl(lab.harness, key: key, ["timeline", "12"])
        #expect(history.status == 0 && history.output == timeline.output, "\(history.output)\n---\n\(timeline.output)")
        // Newest first, as the API lists them.
        let ids = try lab.history().compactMap { $0["id"]?.stringValue }
        #expect(ids == ["fo-12-2", "fo-12-1"])
        let printed = history.output.split(separator: "\n").filter { $0.hasPrefix("fo-12-") }.map { String($0.prefix(7)) }
        #expect(printed == ids, "\(history.output)")
    }

    @Test func statusWatchPrintsABlockEachIntervalWithoutEscapeCodesAndStopsOnInterrupt() throws {
        let harness = try Harness()
        try harness.startController()
        let watcher = try BackgroundCommand(harness.binaries + "/warmpoolctl", [
            "status", "--watch", "--interval", "0.3", "--url", "http://\(harness.apiAddress)", "--api-key", try harness.adminAPIKey(),
        ])
        try watcher.waitForOutput(timeout: 10) { $0.components(separatedBy: "warmpoolctl status, every 0.3 s").count > 3 }
        kill(watcher.process.processIdentifier, SIGINT)
        try harness.waitUntil("the watch ends on SIGINT", timeout: 5) { !watcher.process.isRunning }
        let output = watcher.output
        #expect(!output.contains("\u{1B}"), "\(output)")
        #expect(output.contains("MACHINE  STATE"), "\(output)")
    }

    @Test func theLastAdminKeyCannotBeRevoked() throws {
        let document = try OpenAPIDocument(path: try OpenAPIDocument.locate())
        let harness = try Harness()
        try harness.startController()
        let base = "http://\(harness.apiAddress)"
        let first = try harness.adminAPIKey()
        let firstID = String(first.dropFirst(3).prefix(8))

        // The key the request is made with, and the last admin key.
        let refused = try http("DELETE", "\(base)/api/v1/keys/\(firstID)", key: first)
        #expect(refused.status == 409, "\(refused.text)")
        #expect(document.problems(method: "DELETE", template: "/api/v1/keys/{key_id}", status: 409,
                                  contentType: refused.contentType, body: refused.body).isEmpty)
        let message = refused.json["message"]?.stringValue ?? ""
        #expect(message.contains("last admin key") && message.contains("create another admin key first")
                && message.contains("the key this request is made with"), "\(message)")
        let viaCLI = try ctl(harness, key: first, ["keys", "revoke", firstID])
        #expect(viaCLI.status == 1 && viaCLI.output.contains("last admin key") && viaCLI.output.contains("HTTP 409"), "\(viaCLI.output)")

        // `keys create` names the id and says the key is shown once; the key alone is on stdout.
        let created = try ctl(harness, key: first, ["keys", "create", "--name", "second-admin", "--scope", "admin"])
        #expect(created.status == 0, "\(created.output)")
        let second = try #require(created.output.split(separator: "\n").first { $0.hasPrefix("wp_") }.map(String.init))
        let secondID = String(second.dropFirst(3).prefix(8))
        #expect(created.output.contains("API key \(secondID)") && created.output.contains("shown once"), "\(created.output)")

        // A read key never counts as an admin.
        let read = try ctl(harness, key: first, ["keys", "create", "--name", "dashboard"])
        let readID = String(read.output.split(separator: "\n").first { $0.hasPrefix("wp_") }?.dropFirst(3).prefix(8) ?? "")
        // Two admin keys: either may go, even the one making the request.
        let revoked = try ctl(harness, key: first, ["keys", "revoke", firstID])
        #expect(revoked.status == 0 && revoked.output.contains("API key \(firstID) revoked"), "\(revoked.output)")
        #expect(try http("GET", "\(base)/api/v1/keys", key: first).status == 401)
        // Now the second is the last one.
        let last = try http("DELETE", "\(base)/api/v1/keys/\(secondID)", key: second)
        #expect(last.status == 409, "\(last.text)")
        #expect(try ctl(harness, key: second, ["keys", "revoke", readID]).status == 0)
        #expect(try http("GET", "\(base)/api/v1/keys", key: second).status == 200)
    }
}

/// A command left running, its stdout and stderr read as they come; SIGKILLed when dropped.
final class BackgroundCommand: @unchecked Sendable {
    let process = Process()
    private let lock = NSLock()
    private var collected = Data()
    private let pipe = Pipe()

    init(_ path: String, _ arguments: [String]) throws {
        process.executableURL = URL(fileURLWithPath: path)
        process.arguments = arguments
        process.standardOutput = pipe
        process.standardError = pipe
        pipe.fileHandleForReading.readabilityHandler = { [weak self] handle in
            let data = handle.availableData
            guard let self, !data.isEmpty else { return }
            self.lock.withLock { self.collected.append(data) }
        }
        try process.run()
    }

    deinit {
        if process.isRunning { kill(process.processIdentifier, SIGKILL) }
        pipe.fileHandleForReading.readabilityHandler = nil
    }

    var output: String { lock.withLock { String(decoding: collected, as: UTF8.self) } }

    func waitForOutput(timeout: Double, _ condition: (String) -> Bool) throws {
        let deadline = Date().addingTimeInterval(timeout)
        while !condition(output) {
            guard Date() < deadline, process.isRunning else {
                throw HarnessError("\(process.executableURL?.lastPathComponent ?? "") \(process.arguments ?? []): not printed within \(timeout) s:\n\(output)")
            }
            usleep(20_000)
        }
    }

    /// Interrupts it as Ctrl-C would and returns all it printed.
    func stop() -> String {
        kill(process.processIdentifier, SIGINT)
        process.waitUntilExit()
        usleep(50_000)
        return output
    }
}
