import Foundation
import Testing
import WarmpoolJSON
import WarmpoolTestSupport

/// The operator's view (issue 23) against the real controller, the emulator's real instances and a
/// real S3 server: what `/metrics` shows with a pool that has failed over, checked with the real
/// promtool; the alerting rules and dashboard in Scripts/monitoring name only what it shows; the
/// failover totals survive a controller restart; a cleaned-up pool's series go.
@Suite(.serialized) struct MonitoringTests {
    static let monitoring = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent("Scripts/monitoring").path

    private func scrape(_ lab: WarmPoolLab) throws -> String {
        let answer = try http("GET", "http://\(lab.harness.apiAddress)/metrics", key: try lab.adminKey())
        #expect(answer.status == 200, "\(answer.text)")
        return answer.text
    }

    /// The `warmpool_...` names Scripts/monitoring's rules and dashboard use.
    private func namesUsedByMonitoring() throws -> Set<String> {
        var names: Set<String> = []
        for file in ["warmpool.rules.yml", "grafana-dashboard.json"] {
            let text = try String(contentsOfFile: "\(Self.monitoring)/\(file)", encoding: .utf8)
            names.formUnion(text.matches(of: try Regex("warmpool_[a-z0-9_]+")).map { String(text[$0.range]) })
        }
        return names
    }

    @Test func aRealExpositionHasEveryMetricTheRulesAndDashboardUseAndItsTotalsSurviveARestart() throws {
        let lab = try WarmPoolLab()
        let snapshots = try SnapshotStore(lab: lab)
        let directory = lab.harness.directory
        try "webhook-secret\n".write(toFile: directory + "/notify-secret", atomically: true, encoding: .utf8)
        // Nothing listens there: deliveries fail and the outbox backs up, as with a receiver that is down.
        let receiver = "http://127.0.0.1:\(try freeLoopbackPort())/hook"
        let flags = ["--snapshot-interval-s", "2", "--notify-url", receiver, "--notify-secret-file", directory + "/notify-secret"]
            + snapshots.agentFlags
        try lab.startController(extra: flags)
        _ = try lab.provision()
        try lab.harness.waitUntil("pool 12 is protected", timeout: 30) { (try? lab.status()["protected"]?.boolValue) == true }
        let failover = try http("POST", "\(lab.api)/failover/test/12", key: try lab.adminKey())
        #expect(failover.json["success"]?.boolValue == true, "\(failover.text)")

        // The new primary reports a checkpoint and a snapshot: every figure has a value.
        let port = Int(try lab.status()["primary_ssh_port"]?.intValue ?? 0)
        _ = try lab.ssh(port: port, "mkdir -p /data/checkpoints/run-1 && head -c 1000 /dev/urandom > /data/checkpoints/run-1/step_1.pt")
        let wanted = try namesUsedByMonitoring()
        var text = ""
        try lab.harness.waitUntil("the scrape shows every metric the rules and dashboard use", timeout: 60) {
            text = (try? scrape(lab)) ?? ""
            return wanted.isSubset(of: Exposition(text).names) && text.contains(#"warmpool_pool_protected{machine_id="12"} 1"#)
        }
        let exposition = Exposition(text)
        #expect(wanted.subtracting(exposition.names).isEmpty, "missing: \(wanted.subtracting(exposition.names).sorted())")
        #expect(exposition.problems.isEmpty, "\(exposition.problems)")
        #expect(exposition.types.count >= 20 && exposition.types.keys.allSatisfy { exposition.help[$0]?.isEmpty == false })
        let linted = try Promtool.checkMetrics(text)
        #expect(linted.status == 0 && linted.output.isEmpty, "\(linted.output)")
        let totals = [
            #"warmpool_failovers_total{result="succeeded"} 1"#, #"warmpool_pool_failovers_total{machine_id="12"} 1"#,
            #"warmpool_pool_state{machine_id="12",state="active"} 1.0"#, #"warmpool_pool_enabled{machine_id="12"} 1.0"#,
        ]
        for line in totals { #expect(text.contains(line + "\n"), "\(line)") }
        #expect(text.contains("warmpool_failover_duration_seconds_count 1\n"))

        // SIGKILL and start again: the totals are the store's, not a fresh process's zeros.
        lab.harness.killController()
        try lab.startController(extra: flags)
        let restarted = try scrape(lab)
        for line in totals { #expect(restarted.contains(line + "\n"), "after the restart: \(line)") }
        #expect(restarted.contains("warmpool_failover_duration_seconds_count 0\n"), "durations are this process's own")

        // A cleaned-up pool's series go; the totals keep its failovers.
        let cleanup = try http("DELETE", "\(lab.api)/cleanup/12", key: try lab.adminKey())
        #expect(cleanup.status == 200, "\(cleanup.text)")
        let after = try scrape(lab)
        #expect(!after.contains(#"machine_id="12""#), "\(after)")
        #expect(after.contains(#"warmpool_failovers_total{result="succeeded"} 1"# + "\n"))
        #expect(Exposition(after).problems.isEmpty)
    }
}
