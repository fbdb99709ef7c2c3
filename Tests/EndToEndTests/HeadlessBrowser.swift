import Foundation
import WarmpoolJSON

#if canImport(Glibc)
import Glibc
#endif

/// A real Chromium (Debian's chromium-headless-shell), driven over the DevTools protocol on a
/// pipe (`--remote-debugging-pipe`: commands in on fd 3, answers and events out on fd 4, each
/// message JSON ended by a NUL). No WebDriver, no npm: the status page's tests click, type and
/// read as a user's browser would, cookies and script included.
final class HeadlessBrowser: @unchecked Sendable {  // mutable state is under `condition`
    static let executable = "/usr/bin/chromium-headless-shell"

    private let pid: pid_t
    private let commands: Int32
    private let answers: Int32
    private let profile: String
    private let condition = NSCondition()
    private var replies: [Int64: JSONValue] = [:]
    private var closed = false
    private var nextID: Int64 = 0
    private var session = ""

    init(directory: String, width: Int = 1280, height: Int = 900) throws {
        guard FileManager.default.isExecutableFile(atPath: Self.executable) else {
            throw HarnessError("\(Self.executable) is missing: run Scripts/setup (it installs Debian's chromium-headless-shell)")
        }
        profile = directory + "/chromium-profile"
        try FileManager.default.createDirectory(atPath: profile, withIntermediateDirectories: true)
        var toBrowser: [Int32] = [0, 0], fromBrowser: [Int32] = [0, 0]
        guard pipe(&toBrowser) == 0, pipe(&fromBrowser) == 0 else { throw HarnessError("pipe: \(errno)") }
        // Only the dup2'd copies may reach Chromium: a leaked write end would keep its reads open.
        for fd in toBrowser + fromBrowser { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
        let log = open(directory + "/chromium.log", O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_adddup2(&actions, log, 1)
        posix_spawn_file_actions_adddup2(&actions, log, 2)
        posix_spawn_file_actions_adddup2(&actions, toBrowser[0], 3)
        posix_spawn_file_actions_adddup2(&actions, fromBrowser[1], 4)
        let arguments = [
            Self.executable, "--remote-debugging-pipe", "--no-sandbox", "--disable-gpu", "--no-first-run", "--hide-scrollbars",
            "--disable-background-networking", "--user-data-dir=\(profile)", "--window-size=\(width),\(height)", "about:blank",
        ]
        var argv = arguments.map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        var child: pid_t = 0
        let spawned = posix_spawn(&child, Self.executable, &actions, nil, &argv, environ)
        close(log)
        close(toBrowser[0])
        close(fromBrowser[1])
        guard spawned == 0 else { throw HarnessError("cannot start \(Self.executable): \(spawned)") }
        pid = child
        commands = toBrowser[1]
        answers = fromBrowser[0]
        Thread.detachNewThread { [self] in readLoop() }
        let targets = try send("Target.getTargets")
        guard let page = targets["targetInfos"]?.arrayValue?.first(where: { $0["type"]?.stringValue == "page" })?["targetId"]?.stringValue else {
            throw HarnessError("Chromium opened no page: \(targets)")
        }
        session = try send("Target.attachToTarget", ["targetId": .string(page), "flatten": .bool(true)])["sessionId"]?.stringValue ?? ""
        _ = try send("Page.enable", session: session)
    }

    deinit {
        kill(pid, SIGKILL)
        var status: Int32 = 0
        waitpid(pid, &status, 0)
        close(commands)
        close(answers)
    }

    // MARK: The protocol

    /// Sends one command and waits for its answer; a protocol error becomes a thrown error.
    @discardableResult
    func send(_ method: String, _ parameters: [String: JSONValue] = [:], session: String? = nil, timeout: Double = 30) throws -> JSONValue {
        condition.lock()
        nextID += 1
        let id = nextID
        condition.unlock()
        var message: [(String, JSONValue)] = [("id", .int(id)), ("method", .string(method)), ("params", .object(parameters.map { ($0.key, $0.value) }))]
        if let session { message.append(("sessionId", .string(session))) }
        var bytes = JSONValue.object(message).serialized()
        bytes.append(0)
        let written = bytes.withUnsafeBytes { write(commands, $0.baseAddress, $0.count) }
        guard written == bytes.count else { throw HarnessError("cannot write to Chromium (\(errno)): has it exited? see chromium.log") }
        let deadline = Date().addingTimeInterval(timeout)
        condition.lock()
        defer { condition.unlock() }
        while replies[id] == nil {
            guard !closed, condition.wait(until: deadline) else { throw HarnessError("Chromium did not answer \(method) within \(timeout) s") }
        }
        let reply = replies.removeValue(forKey: id)!
        if let error = reply["error"] { throw HarnessError("Chromium refused \(method): \(error)") }
        return reply["result"] ?? [:]
    }

    private func readLoop() {
        var buffer: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 1 << 16)
        while true {
            let count = chunk.withUnsafeMutableBytes { read(answers, $0.baseAddress, $0.count) }
            if count <= 0 { break }
            buffer.append(contentsOf: chunk[0..<count])
            while let end = buffer.firstIndex(of: 0) {
                let message = Array(buffer[..<end])
                buffer.removeSubrange(...end)
                // Events (no id) are not needed: the tests poll the page's own state instead.
                if let value = try? JSONValue.parse(message), let id = value["id"]?.intValue {
                    condition.lock()
                    replies[id] = value
                    condition.broadcast()
                    condition.unlock()
                }
            }
        }
        condition.lock()
        closed = true
        condition.broadcast()
        condition.unlock()
    }

    // MARK: What a user does

    func navigate(_ url: String) throws {
        try send("Page.navigate", ["url": .string(url)], session: session)
        try waitFor("the page at \(url) to load", "document.readyState === 'complete' && location.href !== 'about:blank'")
    }

    /// Evaluates `expression` in the page and returns its value (JSON-serializable values only).
    func evaluate(_ expression: String) throws -> JSONValue {
        let result = try send("Runtime.evaluate", ["expression": .string(expression), "returnByValue": .bool(true), "awaitPromise": .bool(true)],
                              session: session)
        if let exception = result["exceptionDetails"] { throw HarnessError("the page threw evaluating \(expression): \(exception)") }
        return result["result"]?["value"] ?? .null
    }

    func text(_ selector: String) throws -> String {
        try evaluate("(document.querySelector(\(Self.quoted(selector))) || {innerText: ''}).innerText").stringValue ?? ""
    }

    func waitFor(_ what: String, _ condition: String, timeout: Double = 20) throws {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if (try? evaluate("!!(\(condition))"))?.boolValue == true { return }
            Thread.sleep(forTimeInterval: 0.1)
        }
        throw HarnessError("timed out after \(timeout) s waiting for \(what) (\(condition)); the page says: \((try? text("body")) ?? "")")
    }

    /// Types into a field as a keyboard would: focus it, select what is there, insert the text.
    func type(_ selector: String, _ text: String) throws {
        guard try evaluate("(function(e){ if(!e) return false; e.focus(); if (e.select) e.select(); return true })(document.querySelector(\(Self.quoted(selector))))").boolValue == true else {
            throw HarnessError("no field \(selector) on the page")
        }
        try send("Input.insertText", ["text": .string(text)], session: session)
    }

    /// A real mouse click at the element's centre.
    func click(_ selector: String) throws {
        let point = try evaluate("""
            (function(e){ if(!e) return null; e.scrollIntoView({block: 'center'}); var r = e.getBoundingClientRect();
              return {x: r.left + r.width / 2, y: r.top + r.height / 2}; })(document.querySelector(\(Self.quoted(selector))))
            """)
        guard let x = point["x"]?.doubleValue, let y = point["y"]?.doubleValue else { throw HarnessError("nothing to click at \(selector)") }
        for type in ["mousePressed", "mouseReleased"] {
            try send("Input.dispatchMouseEvent", ["type": .string(type), "x": .double(x), "y": .double(y), "button": .string("left"), "clickCount": .int(1)],
                     session: session)
        }
    }

    func screenshot(to path: String) throws {
        let shot = try send("Page.captureScreenshot", ["format": .string("png")], session: session)
        guard let base64 = shot["data"]?.stringValue, let data = Data(base64Encoded: base64) else { throw HarnessError("no screenshot data") }
        try data.write(to: URL(fileURLWithPath: path))
    }

    /// The page as a phone shows it (CSS pixels, touch, a narrow viewport).
    func emulatePhone(width: Int = 390, height: Int = 844) throws {
        try send("Emulation.setDeviceMetricsOverride", [
            "width": .int(Int64(width)), "height": .int(Int64(height)), "deviceScaleFactor": .int(2), "mobile": .bool(true),
        ], session: session)
    }

    func emulateDesktop(width: Int = 1280, height: Int = 900) throws {
        try send("Emulation.setDeviceMetricsOverride", [
            "width": .int(Int64(width)), "height": .int(Int64(height)), "deviceScaleFactor": .int(1), "mobile": .bool(false),
        ], session: session)
    }

    /// The browser's cookies, HttpOnly ones included (the page's script cannot see those).
    func cookies() throws -> [JSONValue] {
        try send("Storage.getCookies")["cookies"]?.arrayValue ?? []
    }

    static func quoted(_ text: String) -> String {
        String(decoding: JSONValue.string(text).serialized(), as: UTF8.self)
    }
}
