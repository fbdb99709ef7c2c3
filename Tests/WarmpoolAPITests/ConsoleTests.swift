import Foundation
import Testing
@testable import WarmpoolAPI
import WarmpoolModel
import WarmpoolStore

/// The status page's pure parts: rendering, forms, sessions and the cost cache. The page itself is
/// tested in a real browser against the real controller (EndToEndTests/StatusPageTests).
struct ConsoleRenderingTests {
    let now = Date(timeIntervalSince1970: 1_800_000_000)

    private func pool(_ record: PoolRecord) -> ConsolePool {
        ConsolePool(record: record, protection: PoolProtection(conditions: []), lastHeartbeat: now.addingTimeInterval(-0.4))
    }

    @Test func whatCameFromOutsideIsEscaped() {
        var record = PoolRecord(poolID: 12, state: .error, errorMessage: "<script>alert('x')</script>")
        record.gpuPreferences = ["\"><img src=x onerror=alert(1)>"]
        let viewer = ConsoleViewer(keyName: "<b>ops</b>", scope: .admin, csrfToken: "t")
        let event = PoolEvent(poolID: 12, agentID: AgentID("a<gent"), kind: "failed", at: now, detail: "a & b <i>")
        let html = ConsolePages.poolPage(ConsolePoolDetail(pool: pool(record), failovers: [], events: [event], agents: []), viewer: viewer, now: now)
        #expect(!html.contains("<script>alert") && html.contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;"))
        #expect(!html.contains("<img") && html.contains("&quot;&gt;&lt;img"))
        #expect(!html.contains("<b>ops</b>") && html.contains("&lt;b&gt;ops&lt;/b&gt;"))
        #expect(html.contains("a &amp; b &lt;i&gt;") && html.contains("a&lt;gent"))
        // The only scripts are the page's own file: the policy forbids inline ones.
        #expect(html.components(separatedBy: "<script").count == 2 && html.contains("<script src=\"/ui/assets/console.js\" defer></script>"))
    }

    @Test func theTimelineDrawsEachStepToScale() {
        let start = now
        let failover = ConsoleFailover(
            record: FailoverRecord(id: "f1", poolID: 12, reason: "primary silent", result: .succeeded, epoch: 2, startedAt: start,
                                   finishedAt: start.addingTimeInterval(3)),
            steps: [
                TimelineStep(failoverID: "f1", sequence: 1, step: "detected", at: start.addingTimeInterval(0.5)),
                TimelineStep(failoverID: "f1", sequence: 2, step: "fenced", at: start.addingTimeInterval(1.5)),
                TimelineStep(failoverID: "f1", sequence: 3, step: "promoted", at: start.addingTimeInterval(3)),
            ])
        let svg = ConsolePages.timeline(failover, now: now.addingTimeInterval(60))
        let widths = Self.attribute("width", in: svg, of: "<rect")
        let xs = Self.attribute("x", in: svg, of: "<rect")
        // 380 units for 3 s: 0.5 s, 1 s and 1.5 s, each starting where the one before ended.
        #expect(widths == [63.3, 126.7, 190.0])
        #expect(xs == [150.0, 213.3, 340.0])
        #expect(svg.contains("data-step=\"fenced\"") && svg.contains(">3.0 s</text>") && !svg.contains("running"))
    }

    @Test func aRunningFailoverGetsABarToNow() {
        let failover = ConsoleFailover(
            record: FailoverRecord(id: "f2", poolID: 12, reason: "primary silent", epoch: 2, startedAt: now),
            steps: [TimelineStep(failoverID: "f2", sequence: 1, step: "detected", at: now.addingTimeInterval(1))])
        let svg = ConsolePages.timeline(failover, now: now.addingTimeInterval(4))
        #expect(svg.contains("class=\"step running\"") && Self.attribute("width", in: svg, of: "<rect") == [95.0, 285.0])
        let html = ConsolePages.failover(failover, now: now.addingTimeInterval(4))
        #expect(html.contains("in_progress") && html.contains("running for 4.0 s"))
    }

    @Test func theListSaysHowManyPoolsAreUnprotectedAndWhy() {
        var unprotected = pool(PoolRecord(poolID: 13, state: .degraded))
        unprotected.protection = PoolProtection(conditions: [
            PoolCondition(type: "StandbyReady", status: false, reason: "NoStandby", message: "no standby", lastTransition: nil),
        ])
        let html = ConsolePages.poolListLive([pool(PoolRecord(poolID: 12, state: .active)), unprotected], now: now)
        #expect(html.contains("1 not protected") && html.contains("StandbyReady: NoStandby") && html.contains("Degraded"))
        #expect(html.contains("data-machine=\"12\"") && html.contains("data-machine=\"13\""))
    }

    @Test func costsShowTheComparisonWithTheStrategyInForceMarked() {
        let costs = PoolCosts(strategy: "gpu_warm_pool", primaryPerHour: 0.45, warmPoolPerMonth: 15, cpuStandbyPerMonth: 36,
                              items: [.init(name: "volume, 100 GB", perMonth: 10)], basis: [])
        let html = ConsolePages.costs(.quoted(costs, at: now))
        #expect(html.contains("$0.45") && html.contains("$329") && html.contains("$344") && html.contains("$365"))
        #expect(html.contains("<tr class=\"current\"><td>GPU warm pool"))
        #expect(ConsolePages.costs(.failed("curl 7", at: now)).contains("curl 7"))
        #expect(ConsolePages.costs(.pending).contains("Asking the provider"))
    }

    static func attribute(_ name: String, in svg: String, of element: String) -> [Double] {
        svg.components(separatedBy: element).dropFirst().compactMap { piece in
            guard let range = piece.range(of: " \(name)=\"") else { return nil }
            return Double(piece[range.upperBound...].prefix { $0 != "\"" })
        }
    }
}

struct ConsoleFormTests {
    @Test func formBodiesDecodeAsBrowsersEncodeThem() {
        let fields = HTML.formFields(Array("api_key=wp_1+2&next=%2Fui%2Fpools%2F12&next=other&empty=&flag".utf8))
        #expect(fields == ["api_key": "wp_1 2", "next": "/ui/pools/12", "empty": "", "flag": ""])
    }

    @Test func aSettingsFormChangesOnlyWhatItChanged() throws {
        let current = PoolRecord(poolID: 12, strategy: .gpuWarmPool, gpuPreferences: ["A100"], volumeSizeGB: 100, state: .active)
        let same = try ConsoleRoutes.settingsChange(["strategy": "gpu_warm_pool", "gpu_preferences": " A100 ", "volume_size_gb": "100"], current: current)
        #expect(same == SettingsChange())
        let changed = try ConsoleRoutes.settingsChange(["strategy": "cpu_standby", "gpu_preferences": "RTX_4090, ,A100", "volume_size_gb": "100"],
                                                       current: current)
        #expect(changed == SettingsChange(strategy: .cpuStandby, gpuPreferences: ["RTX_4090", "A100"]))
        #expect(throws: APIError.self) { try ConsoleRoutes.settingsChange(["strategy": "gpu"], current: current) }
        #expect(throws: APIError.self) { try ConsoleRoutes.settingsChange(["volume_size_gb": "0"], current: current) }
        #expect(throws: APIError.self) { try ConsoleRoutes.settingsChange(["volume_size_gb": "1e3"], current: current) }
        #expect(throws: APIError.self) {
            try ConsoleRoutes.settingsChange(["gpu_preferences": Array(repeating: "A", count: 17).joined(separator: ",")], current: current)
        }
    }

    @Test func aLoginOnlyEverLeadsBackIntoTheConsole() {
        #expect(ConsoleRoutes.safeNext("/ui/pools/12") == "/ui/pools/12")
        for hostile in ["//evil.example/ui", "https://evil.example", "/ui//evil.example", "/ui\\@evil", "/api/v1/keys", nil] {
            #expect(ConsoleRoutes.safeNext(hostile) == "/ui", "\(hostile ?? "nil")")
        }
    }

    @Test func theSessionCookieIsHttpOnlyAndStrict() {
        let cookie = ConsoleRoutes.cookie(value: "abc", maxAge: 60)
        #expect(cookie == "warmpool_session=abc; Path=/ui; Max-Age=60; HttpOnly; SameSite=Strict")
    }
}

struct ConsoleSessionTests {
    @Test func aSessionEndsWhenIdleOrOld() {
        let sessions = ConsoleSessions(idleTimeout: 10, absoluteTimeout: 25)
        let (token, opened) = sessions.open(keyID: "k1", now: 100)
        #expect(token.count == 64 && opened.csrfToken.count == 64 && token != opened.csrfToken)
        #expect(sessions.session(token: token, now: 109)?.keyID == "k1")
        #expect(sessions.session(token: token, now: 118)?.keyID == "k1", "each use restarts the idle clock")
        #expect(sessions.session(token: token, now: 126) == nil, "but not the absolute one")
        let (idle, _) = sessions.open(keyID: "k2", now: 200)
        #expect(sessions.session(token: idle, now: 210) == nil)
        #expect(sessions.session(token: "nope", now: 200) == nil)
        let (closed, _) = sessions.open(keyID: "k3", now: 300)
        sessions.close(token: closed)
        #expect(sessions.session(token: closed, now: 300) == nil)
    }

    @Test func aFloodOfLoginsEvictsTheLeastRecentlySeen() {
        let sessions = ConsoleSessions(capacity: 3)
        let first = sessions.open(keyID: "a", now: 1).token
        let second = sessions.open(keyID: "b", now: 2).token
        _ = sessions.open(keyID: "c", now: 3)
        _ = sessions.session(token: first, now: 4)
        _ = sessions.open(keyID: "d", now: 5)
        #expect(sessions.count == 3)
        #expect(sessions.session(token: second, now: 6) == nil && sessions.session(token: first, now: 6) != nil)
    }

    @Test func csrfTokensCompareExactly() {
        #expect(ConsoleSessions.tokensMatch("abc", "abc"))
        #expect(!ConsoleSessions.tokensMatch("abd", "abc") && !ConsoleSessions.tokensMatch("ab", "abc") && !ConsoleSessions.tokensMatch("", "abc"))
    }
}

struct CostQuotesTests {
    private static let costs = PoolCosts(strategy: "gpu_warm_pool", primaryPerHour: 0.5, warmPoolPerMonth: 10, cpuStandbyPerMonth: 30, items: [], basis: [])

    @Test func thePageNeverWaitsAndTheProviderIsAskedOnePoolAtATime() async throws {
        actor Calls {
            var now = 0, most = 0, total = 0
            func begin() { now += 1; most = max(most, now); total += 1 }
            func end() { now -= 1 }
        }
        let calls = Calls()
        let quotes = CostQuotes { _ in
            await calls.begin()
            try await Task.sleep(for: .milliseconds(20))
            await calls.end()
            return Self.costs
        }
        let pools = (1...5).map { PoolID(Int64($0)) }
        let first = quotes.current(pools)
        #expect(first.values.allSatisfy { $0 == .pending })
        _ = quotes.current(pools)
        // Generous: with blocking end-to-end suites beside it, the cooperative pool can be busy for seconds.
        let deadline = ContinuousClock.now + .seconds(60)
        while quotes.current(pools).values.contains(.pending), ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(10)) }
        #expect(quotes.current(pools).values.allSatisfy { if case .quoted(Self.costs, _) = $0 { true } else { false } })
        let (most, total) = (await calls.most, await calls.total)
        #expect(most == 1 && total == 5, "at most \(most) at once, \(total) in all")
    }

    @Test func aFailedQuoteIsAskedAgainAfterAMinuteAndAGoodOneAfterItsAge() {
        let now = Date()
        #expect(!CostQuotes.isStale(.failed("x", at: now), now: now.addingTimeInterval(59), maximumAge: 600))
        #expect(CostQuotes.isStale(.failed("x", at: now), now: now.addingTimeInterval(60), maximumAge: 600))
        #expect(!CostQuotes.isStale(.quoted(Self.costs, at: now), now: now.addingTimeInterval(599), maximumAge: 600))
        #expect(CostQuotes.isStale(.quoted(Self.costs, at: now), now: now.addingTimeInterval(600), maximumAge: 600))
        #expect(CostQuotes.isStale(.pending, now: now, maximumAge: 600))
    }
}
