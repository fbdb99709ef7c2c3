import Foundation
import Hummingbird
import HummingbirdTesting
import Logging
import Testing
import WarmpoolAPI
import WarmpoolModel
import WarmpoolStore
import WarmpoolTestSupport

/// `/metrics` for an SRE (issue 23): HELP and TYPE on every family, per-pool series that go with
/// their pool, failover totals read from the store, and the alerting rules and dashboard in
/// Scripts/monitoring checked against a real exposition with the real promtool.
@Suite struct MetricsTests {
    static let monitoring = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent("Scripts/monitoring").path

    /// A controller showing every family it has: pools in several states, one with a finished
    /// failover and a recovery point, agents, the breaker tripped, webhooks on.
    static func everyFamilyShown() -> (metrics: ControllerMetrics, text: String) {
        let metrics = ControllerMetrics(countsWebhooks: true)
        metrics.failoverFinished(durationSeconds: 14.2)
        metrics.breaker(tripped: true, held: 3, newTrip: true)
        metrics.apply(ScrapeFigures(
            pools: [
                .init(poolID: 12, state: .active, enabled: true, protected: true, standbyAtRisk: false, failovers: 2, lastFailoverSeconds: 14.2,
                      recoveryPoint: .init(checkpointAgeSeconds: 30, snapshotAgeSeconds: 600)),
                .init(poolID: 13, state: .degraded, enabled: true, protected: false, standbyAtRisk: true, failovers: 0),
                .init(poolID: 14, state: .disabled, enabled: false, protected: false, standbyAtRisk: false, failovers: 0),
            ],
            failoversByResult: [.succeeded: 5, .failed: 1],
            agents: .init(heartbeatsReceived: 1234, connected: 4, fenced: 1, fenceCommandFailed: 0),
            webhooks: .init(pending: 2, oldestPendingAgeSeconds: 42, givenUp: 1)))
        return (metrics, String(decoding: metrics.exposition(), as: UTF8.self))
    }

    // MARK: The exposition

    @Test func everyFamilyHasAHelpAndATypeLine() throws {
        let exposition = Exposition(Self.everyFamilyShown().text)
        #expect(exposition.problems.isEmpty, "\(exposition.problems)")
        #expect(Set(exposition.types.keys) == Set(ControllerMetricFamily.all.map(\.name)), "every family the controller knows is shown")
        for family in ControllerMetricFamily.all {
            #expect(exposition.help[family.name] == family.help, "\(family.name)")
        }
    }

    @Test func promtoolFindsNoProblemInTheExposition() throws {
        let checked = try Promtool.checkMetrics(Self.everyFamilyShown().text)
        #expect(checked.status == 0 && checked.output.isEmpty, "\(checked.output)")
    }

    @Test func theRulesAndTheDashboardUseOnlyMetricsTheControllerShows() throws {
        let shown = Exposition(Self.everyFamilyShown().text).names
        var used: [String: Set<String>] = [:]
        for file in ["warmpool.rules.yml", "grafana-dashboard.json"] {
            used[file] = Exposition.metricNames(in: try String(contentsOfFile: "\(Self.monitoring)/\(file)", encoding: .utf8))
            #expect(!(used[file] ?? []).isEmpty, "\(file) names no warmpool_ metric")
            #expect((used[file] ?? []).subtracting(shown).isEmpty, "\(file) uses metrics /metrics does not have: \((used[file] ?? []).subtracting(shown).sorted())")
        }
        // The dashboard shows every family; the rules need not.
        let families = Set(ControllerMetricFamily.all.map(\.name))
        let charted = Set((used["grafana-dashboard.json"] ?? []).map { Exposition.family(of: $0, in: families) })
        #expect(families.subtracting(charted).isEmpty, "families the dashboard does not chart: \(families.subtracting(charted).sorted())")
    }

    @Test func theDashboardIsValidJSONWithAPrometheusQueryInEveryPanel() throws {
        let text = try String(contentsOfFile: "\(Self.monitoring)/grafana-dashboard.json", encoding: .utf8)
        let dashboard = try #require(try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any])
        let panels = try #require(dashboard["panels"] as? [[String: Any]])
        for panel in panels where panel["type"] as? String != "row" {
            let expressions = (panel["targets"] as? [[String: Any]] ?? []).compactMap { $0["expr"] as? String }
            #expect(!expressions.isEmpty && expressions.allSatisfy { $0.contains("warmpool_") }, "\(panel["title"] ?? "?")")
        }
    }

    @Test func theAlertingRulesAreValidAndTheirUnitTestsPass() throws {
        let checked = try Promtool.run(["check", "rules", "\(Self.monitoring)/warmpool.rules.yml"])
        #expect(checked.status == 0 && checked.output.contains("SUCCESS"), "\(checked.output)")
        let tested = try Promtool.run(["test", "rules", "\(Self.monitoring)/warmpool.rules.test.yml"])
        #expect(tested.status == 0 && tested.output.contains("SUCCESS"), "\(tested.output)")
        // Every alert has a test.
        let rules = try String(contentsOfFile: "\(Self.monitoring)/warmpool.rules.yml", encoding: .utf8)
        let tests = try String(contentsOfFile: "\(Self.monitoring)/warmpool.rules.test.yml", encoding: .utf8)
        let alerts = rules.split(separator: "\n").compactMap { line -> String? in
            let trimmed = line.trimmingCharacters(in: .whitespaces)
            return trimmed.hasPrefix("- alert: ") ? String(trimmed.dropFirst("- alert: ".count)) : nil
        }
        #expect(alerts.count >= 8)
        for alert in alerts { #expect(tests.contains("alertname: \(alert)\n"), "\(alert) has no promtool test") }
    }

    // MARK: Per-pool series

    @Test func aPoolsSeriesGoWithThePoolAndACounterFollowsItsPoolsNewIncarnation() throws {
        let metrics = ControllerMetrics()
        func pool(_ id: PoolID, incarnation: Int = 1, failovers: Int, last: Double? = nil) -> ScrapeFigures.Pool {
            .init(poolID: id, incarnation: incarnation, state: .active, enabled: true, protected: true, standbyAtRisk: false, failovers: failovers,
                  lastFailoverSeconds: last)
        }
        metrics.apply(ScrapeFigures(pools: [pool(12, failovers: 3, last: 9.5), pool(13, failovers: 1)], failoversByResult: [.succeeded: 4]))
        var text = String(decoding: metrics.exposition(), as: UTF8.self)
        for line in [#"warmpool_pool_state{machine_id="12",state="active"} 1.0"#, #"warmpool_pool_state{machine_id="12",state="error"} 0.0"#,
                     #"warmpool_pool_failovers_total{machine_id="12"} 3"#, #"warmpool_pool_last_failover_duration_seconds{machine_id="12"} 9.5"#,
                     #"warmpool_pool_protected{machine_id="13"} 1.0"#, #"warmpool_failovers_total{result="succeeded"} 4"#,
                     #"warmpool_failovers_total{result="failed"} 0"#]
        {
            #expect(text.contains(line + "\n"), "\(line)")
        }
        #expect(!text.contains(#"warmpool_pool_last_failover_duration_seconds{machine_id="13"}"#), "no failover: no figure, not a 0")

        // A scrape that read the store before the last one was applied changes no counter.
        metrics.apply(ScrapeFigures(pools: [pool(12, failovers: 2, last: 9.5), pool(13, failovers: 1)], failoversByResult: [.succeeded: 3]))
        text = String(decoding: metrics.exposition(), as: UTF8.self)
        #expect(text.contains(#"warmpool_pool_failovers_total{machine_id="12"} 3"# + "\n") && text.contains(#"warmpool_failovers_total{result="succeeded"} 4"# + "\n"))

        // 13 is cleaned up; 12 is provisioned again (a new incarnation, no failover yet).
        metrics.apply(ScrapeFigures(pools: [pool(12, incarnation: 2, failovers: 0)], failoversByResult: [.succeeded: 4]))
        text = String(decoding: metrics.exposition(), as: UTF8.self)
        #expect(!text.contains(#"machine_id="13""#), "\(text)")
        #expect(text.contains(#"warmpool_pool_failovers_total{machine_id="12"} 0"# + "\n"))
        #expect(!text.contains("warmpool_pool_last_failover_duration_seconds"))
        #expect(text.contains(#"warmpool_failovers_total{result="succeeded"} 4"# + "\n"), "removed pools' failovers stay in the totals")

        metrics.apply(ScrapeFigures(pools: [], failoversByResult: [.succeeded: 4]))
        text = String(decoding: metrics.exposition(), as: UTF8.self)
        #expect(!text.contains("machine_id"), "\(text)")
        #expect(Exposition(text).problems.isEmpty)
    }

    @Test func poolFiguresCountTheCurrentIncarnationAndTakeTheNewestFinishedFailover() {
        let t0 = Date(timeIntervalSince1970: 1_700_000_000)
        var again = PoolRecord(poolID: 12, state: .active)
        again.incarnation = 2
        let records = [again, PoolRecord(poolID: 14, state: .disabled)]
        let tallies = [
            FailoverTally(poolID: 12, incarnation: 1, result: .succeeded, count: 7, lastStartedAt: t0, lastFinishedAt: t0 + 900),
            FailoverTally(poolID: 12, incarnation: 2, result: .succeeded, count: 2, lastStartedAt: t0 + 50, lastFinishedAt: t0 + 62),
            FailoverTally(poolID: 12, incarnation: 2, result: .failed, count: 1, lastStartedAt: t0 + 10, lastFinishedAt: t0 + 40),
            FailoverTally(poolID: 12, incarnation: 2, result: .inProgress, count: 1),
            FailoverTally(poolID: 13, incarnation: 1, result: .degraded, count: 1, lastStartedAt: t0, lastFinishedAt: t0 + 5),
        ]
        let engine = PoolProtection(conditions: [
            PoolCondition(type: "Enabled", status: true, reason: "Enabled", message: "", lastTransition: nil),
            { var risk = PoolCondition(type: "StandbyAtRisk", status: true, reason: "NoFreeGPU", message: "", lastTransition: nil)
              risk.problemWhenTrue = true
              return risk }(),
        ])
        let pools = ScrapeFigures.pools(records, tallies: tallies, protections: [12: engine])
        #expect(pools == [
            .init(poolID: 12, incarnation: 2, state: .active, enabled: true, protected: false, standbyAtRisk: true, failovers: 3,
                  lastFailoverSeconds: 12),
            .init(poolID: 14, state: .disabled, enabled: false, protected: false, standbyAtRisk: false, failovers: 0),
        ])
        #expect(ScrapeFigures.failoversByResult(tallies) == [.succeeded: 9, .failed: 1, .degraded: 1])
    }

    // MARK: Through the route, over a real store

    /// A controller (its metrics and router) over the database at `path`, as a start would make it.
    private struct Controller {
        let application: Application<RouterResponder<APIRequestContext>>
        let key: String

        init(databasePath path: String) async throws {
            let store = try SQLiteStore(path: path, logger: Logger(label: "test.metrics"))
            let minted = APIKeys.mint(name: "scraper", scope: .metrics)
            try await store.addAPIKey(minted.record)
            key = minted.plaintext
            application = Application(router: APIRouter.build(APIDependencies(
                store: store, operations: ProviderlessPoolOperations(store: store), hub: nil, metrics: ControllerMetrics())))
        }

        func scrape() async throws -> String {
            var fields = HTTPFields()
            fields[.authorization] = "Bearer \(key)"
            let headers = fields
            return try await application.test(.router) { client in
                try await client.execute(uri: "/metrics", method: .get, headers: headers) { response in
                    #expect(response.status == .ok)
                    return String(decoding: response.body.readableBytesView, as: UTF8.self)
                }
            }
        }
    }

    @Test func failoverTotalsComeFromTheStoreSoARestartedControllerShowsTheSame() async throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("wp-metrics-\(UUID().uuidString)/warmpool.db").path
        let store = try SQLiteStore(path: path, logger: Logger(label: "test.metrics"))
        let t0 = Date()
        var number = 0
        func failover(_ pool: PoolID, _ result: FailoverRecord.Result, seconds: Double?) async throws {
            number += 1
            let record = FailoverRecord(id: "fo-\(pool)-\(number)", poolID: pool, reason: "test", result: result, epoch: 2,
                                        startedAt: t0 + Double(number), finishedAt: seconds.map { t0 + Double(number) + $0 })
            try await store.commit(PoolTransition(pool: PoolRecord(poolID: pool, state: .active), failover: record))
        }
        try await failover(12, .succeeded, seconds: 20)
        try await failover(12, .failed, seconds: 30)
        try await failover(12, .succeeded, seconds: 11.5)
        try await failover(12, .inProgress, seconds: nil)
        try await failover(13, .succeeded, seconds: 8)
        try await store.deletePool(id: 13)  // cleaned up: its failovers stay in the totals

        let expected = [
            #"warmpool_failovers_total{result="succeeded"} 3"#, #"warmpool_failovers_total{result="failed"} 1"#,
            #"warmpool_failovers_total{result="degraded"} 0"#, #"warmpool_pool_failovers_total{machine_id="12"} 3"#,
            #"warmpool_pool_last_failover_duration_seconds{machine_id="12"} 30.0"#,  // the failed one finished last
            #"warmpool_pool_state{machine_id="12",state="active"} 1.0"#, #"warmpool_pool_protected{machine_id="12"} 0.0"#,
        ]
        for life in ["first start", "restart"] {
            let text = try await Controller(databasePath: path).scrape()
            for line in expected { #expect(text.contains(line + "\n"), "\(life): \(line)") }
            #expect(!text.contains(#"machine_id="13""#), "\(life)")
            #expect(Exposition(text).problems.isEmpty, "\(life): \(Exposition(text).problems)")
        }

        let controller = try await Controller(databasePath: path)
        #expect(try await controller.scrape().contains(#"machine_id="12""#))
        try await store.deletePool(id: 12)
        let afterCleanup = try await controller.scrape()
        #expect(!afterCleanup.contains("machine_id"), "\(afterCleanup)")
        #expect(afterCleanup.contains(#"warmpool_failovers_total{result="succeeded"} 3"# + "\n"))
    }

    @Test func theWebhookBacklogIsShownOnlyWhereWebhooksAreDelivered() {
        let text = String(decoding: ControllerMetrics().exposition(), as: UTF8.self)
        #expect(!text.contains("warmpool_webhook"), "a controller without receivers keeps its outbox by design")
        let now = Date()
        #expect(ScrapeFigures.webhooks(OutboxBacklog(pending: 3, oldestPendingCreatedAt: now - 90, givenUp: 2), now: now)
            == .init(pending: 3, oldestPendingAgeSeconds: 90, givenUp: 2))
        #expect(ScrapeFigures.webhooks(OutboxBacklog(pending: 0, oldestPendingCreatedAt: nil, givenUp: 0), now: now)
            == .init(pending: 0, oldestPendingAgeSeconds: 0, givenUp: 0))
    }
}
