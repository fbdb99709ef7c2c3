import Foundation
import WarmpoolModel
import WarmpoolStore

/// Who is looking: the API key a browser logged in with.
struct ConsoleViewer {
    var keyName: String
    var scope: APIKeyRecord.Scope
    var csrfToken: String
    var canChangeSettings: Bool { scope >= .admin }
}

/// An agent as the page shows it: its registration joined with what the detector sees now.
struct ConsoleAgent {
    var agentID: String
    var instanceID: InstanceID?
    var role: String?
    /// alive, suspected, failed, left, or unseen.
    var state: String
    var lastHeartbeat: Date?
    var leaseHeld: Bool
    var leaseRevoked: Bool
    /// none, frozen or final; nil before the agent's first status.
    var fence: String?
    var gpuCount: Int?
    var gpuHealthy: Int?
    var gpuErrors = false
    /// False where the agent runs without NVML (a CPU VM, a test): its GPU counts mean nothing.
    var gpuProbe = false
    var gpuTemperature: Int?
    var gpuUtilization: Int?
    var volumeFreeMebibytes: Int?
}

/// One pool with what the page shows beside its record.
struct ConsolePool {
    var record: PoolRecord
    var protection: PoolProtection?
    var lastHeartbeat: Date?
    var primaryAgent: ConsoleAgent?
    var checkpointAge: Double?
    var snapshotAge: Double?
    var syncLag: Double?
    var cost: CostQuotes.Quote?
}

struct ConsoleFailover {
    var record: FailoverRecord
    var steps: [TimelineStep]
}

struct ConsolePoolDetail {
    var pool: ConsolePool
    var failovers: [ConsoleFailover]
    var events: [PoolEvent]
    var agents: [ConsoleAgent]
}

/// The status page, rendered on the server: HTML and one stylesheet, and a script whose only job
/// is to fetch the live part again every second. Without the script the pages still work; they
/// just do not move.
enum ConsolePages {
    static let livePollMilliseconds = 1000

    // MARK: Documents

    static func document(title: String, viewer: ConsoleViewer?, body: String) -> String {
        var html = """
            <!doctype html>
            <html lang="en"><head><meta charset="utf-8">
            <meta name="viewport" content="width=device-width, initial-scale=1">
            <title>\(HTML.escape(title)) · Warmpool</title>
            <link rel="stylesheet" href="/ui/assets/console.css">
            <script src="/ui/assets/console.js" defer></script>
            </head><body><header class="top"><a class="brand" href="/ui">Warmpool</a>
            """
        if let viewer {
            html += """
                <nav><a href="/ui">Pools</a><span class="who" title="the API key this browser logged in with">\(HTML.escape(viewer.keyName)) \
                (\(viewer.scope.rawValue))</span><form method="post" action="/ui/logout" class="inline">\
                <input type="hidden" name="csrf" value="\(viewer.csrfToken)"><button type="submit" class="link">Log out</button></form></nav>
                """
        }
        html += "</header>\n<main>\(body)</main></body></html>\n"
        return html
    }

    static func login(error: String?, next: String) -> String {
        document(title: "Log in", viewer: nil, body: """
            <section class="card narrow"><h1>Log in</h1>
            <p>Paste an API key (<code>warmpoolctl keys create</code>, or <code>admin-api-key</code> beside the controller's database). \
            The key is checked once; this browser then keeps a session cookie only.</p>
            \(error.map { "<p class=\"error\" role=\"alert\">\(HTML.escape($0))</p>" } ?? "")
            <form method="post" action="/ui/login">
            <input type="hidden" name="next" value="\(HTML.escape(next))">
            <label for="api_key">API key</label>
            <input id="api_key" name="api_key" type="password" autocomplete="current-password" required autofocus>
            <button type="submit" id="login">Log in</button>
            </form></section>
            """)
    }

    static func message(title: String, text: String, viewer: ConsoleViewer?) -> String {
        document(title: title, viewer: viewer, body: "<section class=\"card narrow\"><h1>\(HTML.escape(title))</h1><p>\(HTML.escape(text))</p><p><a href=\"/ui\">All pools</a></p></section>")
    }

    // MARK: The pool list

    static func poolList(_ pools: [ConsolePool], viewer: ConsoleViewer, now: Date) -> String {
        document(title: "Pools", viewer: viewer, body: """
            <div id="live" data-live="/ui?fragment=live" data-every="\(livePollMilliseconds)">\(poolListLive(pools, now: now))</div>
            """)
    }

    static func poolListLive(_ pools: [ConsolePool], now: Date) -> String {
        let enabled = pools.filter { $0.record.state != .disabled }
        let unprotected = enabled.filter { $0.protection?.protected != true }
        var html = "<h1>Pools</h1><p class=\"summary\">\(pools.count) pool(s), \(enabled.count) enabled, "
        html += unprotected.isEmpty ? HTML.badge("all protected", tone: "ok") : HTML.badge("\(unprotected.count) not protected", tone: "bad")
        html += " <span class=\"muted\">updated \(HTML.ago(now, now: now))</span></p>"
        if pools.isEmpty {
            return html + "<p class=\"card\">No pools yet: <code>warmpoolctl provision MACHINE --host HOST</code> makes one.</p>"
        }
        html += "<div class=\"grid\">"
        for pool in pools { html += poolCard(pool, now: now) }
        return html + "</div>"
    }

    static func poolCard(_ pool: ConsolePool, now: Date) -> String {
        let record = pool.record
        return """
            <article class="card pool" data-machine="\(record.poolID)">
            <h2><a href="/ui/pools/\(record.poolID)">Machine \(record.poolID)</a> \(stateBadge(record.state)) \(protectionBadge(pool))</h2>
            <dl>
            <dt>Strategy</dt><dd>\(strategyName(record))</dd>
            <dt>Primary GPU</dt><dd>\(primary(pool))</dd>
            <dt>Standby</dt><dd>\(standby(record))</dd>
            <dt>Volume</dt><dd>\(volume(pool))</dd>
            <dt>Failovers</dt><dd>\(record.failoverCount)\(record.lastFailoverAt.map { ", last " + HTML.ago($0, now: now) } ?? "")</dd>
            <dt>Heartbeat</dt><dd>\(HTML.ago(pool.lastHeartbeat, now: now))</dd>
            <dt>Recovery point</dt><dd>\(recoveryPoint(pool))</dd>
            <dt>Cost / month</dt><dd>\(monthlyCost(pool.cost))</dd>
            </dl></article>
            """
    }

    // MARK: A pool's page

    static func poolPage(_ detail: ConsolePoolDetail, viewer: ConsoleViewer, now: Date, notice: String? = nil, error: String? = nil) -> String {
        let id = detail.pool.record.poolID
        var body = "<p class=\"crumbs\"><a href=\"/ui\">Pools</a> › Machine \(id)</p>"
        if let notice { body += "<p class=\"notice\" role=\"status\">\(HTML.escape(notice))</p>" }
        if let error { body += "<p class=\"error\" role=\"alert\">\(HTML.escape(error))</p>" }
        body += "<div id=\"live\" data-live=\"/ui/pools/\(id)?fragment=live\" data-every=\"\(livePollMilliseconds)\">\(poolPageLive(detail, now: now))</div>"
        body += settings(detail.pool.record, viewer: viewer)
        return document(title: "Machine \(id)", viewer: viewer, body: body)
    }

    static func poolPageLive(_ detail: ConsolePoolDetail, now: Date) -> String {
        let pool = detail.pool, record = pool.record
        var html = """
            <h1>Machine \(record.poolID) \(stateBadge(record.state)) \(protectionBadge(pool))</h1>
            <section class="grid facts">
            <div class="card"><h3>Primary GPU</h3><p>\(primary(pool))</p><p class="muted">host \(HTML.text(record.hostMachineID)), \
            ssh \(HTML.text(record.primarySSHHost))\(record.primarySSHPort.map { ":\($0)" } ?? "")</p></div>
            <div class="card"><h3>Standby</h3><p>\(standby(record))</p><p class="muted">\(strategyName(record))</p></div>
            <div class="card"><h3>Volume</h3><p>\(volume(pool))</p><p class="muted">epoch \(record.epoch.rawValue)</p></div>
            <div class="card"><h3>Failovers</h3><p class="big">\(record.failoverCount)</p><p class="muted">\
            \(record.lastFailoverAt.map { "last " + HTML.ago($0, now: now) } ?? "none yet")</p></div>
            <div class="card"><h3>Recovery point</h3><p>\(recoveryPoint(pool))</p>\
            <p class="muted">\(pool.snapshotAge.map { "snapshot \(HTML.duration($0)) old" } ?? "no snapshot reported")\
            \(pool.syncLag.map { ", sync \(HTML.duration($0)) behind" } ?? "")</p></div>
            <div class="card"><h3>Heartbeat</h3><p>\(HTML.ago(pool.lastHeartbeat, now: now))</p>\
            <p class="muted">\(record.errorMessage.map(HTML.escape) ?? "")</p></div>
            </section>
            """
        html += "<section><h2>Failovers</h2>"
        if detail.failovers.isEmpty { html += "<p class=\"muted\">No failovers yet.</p>" }
        for failover in detail.failovers { html += self.failover(failover, now: now) }
        html += "</section>"
        html += conditions(pool)
        html += costs(pool.cost)
        html += agents(detail.agents, now: now)
        html += events(detail.events, now: now)
        return html
    }

    static func conditions(_ pool: ConsolePool) -> String {
        guard let protection = pool.protection else {
            return "<section><h2>Protection</h2><p class=\"muted\">No failover engine manages this pool (the controller has no provider).</p></section>"
        }
        var html = "<section><h2>Protection</h2><div class=\"scroll\"><table><thead><tr><th>Condition</th><th>Status</th><th>Reason</th><th>Message</th></tr></thead><tbody>"
        for condition in protection.conditions {
            let tone = condition.ok ? "ok" : condition.affectsProtection ? "bad" : "warn"
            html += "<tr class=\"condition\" data-type=\"\(HTML.escape(condition.type))\"><td>\(HTML.escape(condition.type))</td>"
            html += "<td>\(HTML.badge(condition.status ? "True" : "False", tone: tone))</td><td>\(HTML.escape(condition.reason))</td><td>\(HTML.escape(condition.message))</td></tr>"
        }
        html += "</tbody></table></div>"
        if let remediation = protection.remediation {
            html += "<p>Remediation: <strong>\(HTML.escape(remediation.rung))</strong>; <code>warmpoolctl repair \(pool.record.poolID)</code> tries now.</p>"
        }
        return html + "</section>"
    }

    /// The product page's comparison, with this pool's prices.
    static func costs(_ quote: CostQuotes.Quote?) -> String {
        var html = "<section><h2>Costs</h2>"
        switch quote {
        case nil:
            return html + "<p class=\"muted\">No provider: no prices to quote.</p></section>"
        case .pending?:
            return html + "<p class=\"muted\">Asking the provider for prices…</p></section>"
        case .failed(let reason, _)?:
            return html + "<p class=\"error\">The provider's prices could not be read: \(HTML.escape(reason))</p></section>"
        case .quoted(let costs, _)?:
            let primaryMonth = costs.primaryPerHour.map { $0 * PoolCosts.hoursPerMonth }
            html += "<div class=\"scroll\"><table class=\"costs\"><thead><tr><th>Item</th><th>Per hour</th><th>Per month</th></tr></thead><tbody>"
            html += "<tr><td>Running primary</td><td>\(HTML.money(costs.primaryPerHour))</td><td>\(HTML.money(primaryMonth))</td></tr>"
            for item in costs.items {
                html += "<tr><td>\(HTML.escape(item.name))</td><td>—</td><td>\(HTML.money(item.perMonth))</td></tr>"
            }
            html += "<tr class=\"total\"><td>Total</td><td></td><td>\(HTML.money(total(costs)))</td></tr></tbody></table></div>"
            html += "<h3>The same primary, protected otherwise</h3><div class=\"scroll\"><table class=\"costs\"><thead><tr><th>Protection</th><th>Extra per month</th><th>Total per month</th><th>Recovery</th></tr></thead><tbody>"
            let rows: [(String, String, Double?, String)] = [
                ("gpu_warm_pool", "GPU warm pool (stopped standby, same host)", costs.warmPoolPerMonth, "seconds, nothing lost on the volume"),
                ("cpu_standby", "CPU standby (running VM, synced)", costs.cpuStandbyPerMonth, "seconds, on a CPU until a GPU frees"),
                ("none", "No failover", 0, "by hand: a new instance, the volume re-created"),
            ]
            for (strategy, name, extra, recovery) in rows {
                let current = strategy == costs.strategy ? " class=\"current\"" : ""
                html += "<tr\(current)><td>\(name)</td><td>\(HTML.money(extra))</td><td>\(HTML.money(primaryMonth.flatMap { p in extra.map { p + $0 } }))</td><td>\(recovery)</td></tr>"
            }
            return html + "</tbody></table></div></section>"
        }
    }

    static func total(_ costs: PoolCosts) -> Double? {
        let protection = costs.strategy == "cpu_standby" ? costs.cpuStandbyPerMonth : costs.warmPoolPerMonth
        return costs.primaryPerHour.flatMap { hourly in protection.map { hourly * PoolCosts.hoursPerMonth + $0 } }
    }

    static func failover(_ failover: ConsoleFailover, now: Date) -> String {
        let record = failover.record
        let tone = switch record.result {
        case .succeeded: "ok"
        case .inProgress: "info"
        default: "bad"
        }
        let took = record.durationSeconds.map { "in \(HTML.duration($0))" } ?? "running for \(HTML.duration(now.timeIntervalSince(record.startedAt)))"
        var html = """
            <article class="card failover" data-failover="\(HTML.escape(record.id))">
            <h3>\(HTML.badge(record.result.rawValue, tone: tone)) \(HTML.escape(record.reason)) <span class="muted">\(took), \
            \(HTML.ago(record.startedAt, now: now))</span></h3>
            <p class="muted">epoch \(record.epoch.rawValue), primary \(HTML.text(record.oldPrimaryInstanceID)) → \(HTML.text(record.newPrimaryInstanceID))\
            \(record.workLostSeconds.map { ", work lost \(HTML.duration($0))" } ?? "")\
            \(record.errorMessage.map { ": " + HTML.escape($0) } ?? "")</p>
            """
        html += timeline(failover, now: now)
        return html + "</article>"
    }

    /// The failover's steps as bars to scale: each bar spans from the step before to this one, so
    /// the long bar is where the time went. A failover still running gets a dashed bar to now.
    static func timeline(_ failover: ConsoleFailover, now: Date) -> String {
        let start = failover.record.startedAt
        let end = failover.record.finishedAt ?? (failover.record.result == .inProgress ? now : failover.steps.last?.at ?? start)
        let total = max(end.timeIntervalSince(start), 0.001)
        let labelWidth = 150.0, barsWidth = 380.0, valueWidth = 70.0, row = 20.0
        let running = failover.record.finishedAt == nil && failover.record.result == .inProgress
        let rows = failover.steps.count + (running ? 1 : 0)
        let height = Double(rows) * row + 22
        var svg = "<svg class=\"timeline\" viewBox=\"0 0 \(Int(labelWidth + barsWidth + valueWidth)) \(Int(height))\" role=\"img\" "
        svg += "aria-label=\"timeline of failover \(HTML.escape(failover.record.id)): \(failover.steps.count) steps over \(HTML.duration(total))\">"
        var previous = start
        func bar(_ index: Int, label: String, from: Date, to: Date, detail: String?, dashed: Bool) -> String {
            let y = Double(index) * row
            let x = labelWidth + from.timeIntervalSince(start) / total * barsWidth
            let width = max(2, to.timeIntervalSince(from) / total * barsWidth)
            var piece = "<g class=\"step\(dashed ? " running" : "")\" data-step=\"\(HTML.escape(label))\">"
            piece += "<title>\(HTML.escape(label)): \(HTML.duration(to.timeIntervalSince(from)))\(detail.map { ", " + HTML.escape($0) } ?? "")</title>"
            piece += "<text x=\"0\" y=\"\(format(y + 14))\">\(HTML.escape(label))</text>"
            piece += "<rect x=\"\(format(x))\" y=\"\(format(y + 4))\" width=\"\(format(width))\" height=\"12\" rx=\"2\"></rect>"
            piece += "<text class=\"value\" x=\"\(format(labelWidth + barsWidth + 6))\" y=\"\(format(y + 14))\">\(HTML.duration(to.timeIntervalSince(from)))</text></g>"
            return piece
        }
        for (index, step) in failover.steps.enumerated() {
            svg += bar(index, label: step.step, from: previous, to: step.at, detail: step.detail, dashed: false)
            previous = step.at
        }
        if running { svg += bar(failover.steps.count, label: "…", from: previous, to: now, detail: "in progress", dashed: true) }
        let axis = Double(rows) * row + 4
        svg += "<line class=\"axis\" x1=\"\(format(labelWidth))\" y1=\"\(format(axis))\" x2=\"\(format(labelWidth + barsWidth))\" y2=\"\(format(axis))\"></line>"
        svg += "<text class=\"value\" x=\"\(format(labelWidth))\" y=\"\(format(axis + 14))\">0</text>"
        svg += "<text class=\"value\" text-anchor=\"end\" x=\"\(format(labelWidth + barsWidth))\" y=\"\(format(axis + 14))\">\(HTML.duration(total))</text>"
        return svg + "</svg>"
    }

    static func agents(_ agents: [ConsoleAgent], now: Date) -> String {
        var html = "<section><h2>Agents</h2>"
        guard !agents.isEmpty else { return html + "<p class=\"muted\">No agent of this pool is registered or connected.</p></section>" }
        html += "<div class=\"scroll\"><table><thead><tr><th>Agent</th><th>Role</th><th>Instance</th><th>State</th><th>Last heartbeat</th><th>Lease</th><th>Fence</th><th>GPU</th><th>Volume free</th></tr></thead><tbody>"
        for agent in agents {
            let lease = agent.leaseRevoked ? HTML.badge("withheld", tone: "warn") : agent.leaseHeld ? HTML.badge("held", tone: "ok") : "none"
            let fence = agent.fence.map { $0 == "none" ? "none" : HTML.badge($0, tone: "bad") } ?? "—"
            html += "<tr class=\"agent\" data-agent=\"\(HTML.escape(agent.agentID))\"><td>\(HTML.escape(agent.agentID))</td><td>\(HTML.text(agent.role))</td>"
            html += "<td>\(HTML.text(agent.instanceID))</td><td>\(HTML.badge(agent.state, tone: agentTone(agent.state)))</td>"
            html += "<td>\(HTML.ago(agent.lastHeartbeat, now: now))</td><td>\(lease)</td><td>\(fence)</td><td>\(gpuSummary(agent))</td>"
            html += "<td>\(agent.volumeFreeMebibytes.map { HTML.gibibytes(mebibytes: $0) } ?? "—")</td></tr>"
        }
        return html + "</tbody></table></div></section>"
    }

    static func events(_ events: [PoolEvent], now: Date) -> String {
        var html = "<section><h2>Events</h2>"
        guard !events.isEmpty else { return html + "<p class=\"muted\">No events.</p></section>" }
        html += "<div class=\"scroll\"><table class=\"events\"><thead><tr><th>When</th><th>Event</th><th>Agent</th><th>Detail</th></tr></thead><tbody>"
        for event in events {
            html += "<tr class=\"event\"><td>\(HTML.ago(event.at, now: now))</td><td>\(HTML.escape(event.kind))</td>"
            html += "<td>\(HTML.text(event.agentID.map { "\($0)" }))</td><td>\(HTML.text(event.detail))</td></tr>"
        }
        return html + "</tbody></table></div></section>"
    }

    static func settings(_ record: PoolRecord, viewer: ConsoleViewer) -> String {
        let preferences = HTML.escape(record.gpuPreferences.joined(separator: ", "))
        guard viewer.canChangeSettings else {
            return """
                <section class="card"><h2>Settings</h2><p>Strategy \(strategyName(record)), GPU preferences \(preferences.isEmpty ? "none" : preferences), \
                volume \(record.volumeSizeGB) GB.</p><p class="muted">Changing them needs an admin key; this one is \(viewer.scope.rawValue).</p></section>
                """
        }
        func option(_ strategy: FailoverStrategy, _ label: String) -> String {
            "<option value=\"\(strategy.rawValue)\"\(record.strategy == strategy ? " selected" : "")>\(label)</option>"
        }
        return """
            <section class="card"><h2>Settings</h2>
            <form method="post" action="/ui/pools/\(record.poolID)/settings" id="settings">
            <input type="hidden" name="csrf" value="\(viewer.csrfToken)">
            <label for="strategy">Strategy</label>
            <select id="strategy" name="strategy">\(option(.gpuWarmPool, "GPU warm pool"))\(option(.cpuStandby, "CPU standby"))\(option(.disabled, "Disabled"))</select>
            <label for="gpu_preferences">GPU preferences (comma-separated, best first)</label>
            <input id="gpu_preferences" name="gpu_preferences" value="\(preferences)" placeholder="RTX_4090, A100">
            <label for="volume_size_gb">Volume size (GB)</label>
            <input id="volume_size_gb" name="volume_size_gb" type="number" min="1" max="65536" value="\(record.volumeSizeGB)" required>
            <button type="submit" id="save">Save settings</button>
            </form></section>
            """
    }

    // MARK: Pieces

    static func stateBadge(_ state: PoolState) -> String {
        let tone = switch state {
        case .active: "ok"
        case .degraded: "warn"
        case .error: "bad"
        case .disabled: "muted"
        case .searching, .provisioning, .failover, .recovering: "info"
        }
        return HTML.badge(state.rawValue.prefix(1).uppercased() + state.rawValue.dropFirst(), tone: tone)
    }

    static func protectionBadge(_ pool: ConsolePool) -> String {
        if pool.record.state == .disabled { return HTML.badge("not managed", tone: "muted") }
        if pool.protection?.protected == true { return HTML.badge("protected", tone: "ok") }
        let reason = pool.protection?.firstProblem.map { "\($0.type): \($0.reason)" } ?? "no engine"
        return "<span class=\"badge bad\" title=\"\(HTML.escape(reason))\">not protected</span> <span class=\"reason\">\(HTML.escape(reason))</span>"
    }

    static func strategyName(_ record: PoolRecord) -> String {
        switch record.strategy {
        case .gpuWarmPool: "GPU warm pool"
        case .cpuStandby: "CPU standby"
        case .disabled: "disabled"
        }
    }

    static func primary(_ pool: ConsolePool) -> String {
        if let name = pool.record.cpuPrimaryName { return "CPU VM \(HTML.escape(name)) " + agentState(pool.primaryAgent) }
        guard let id = pool.record.primaryInstanceID else { return "none" }
        var text = "#\(id) " + agentState(pool.primaryAgent)
        if let agent = pool.primaryAgent, agent.gpuCount != nil { text += " · " + gpuSummary(agent) }
        return text
    }

    static func agentState(_ agent: ConsoleAgent?) -> String {
        let state = agent?.state ?? "unseen"
        return HTML.badge(state, tone: agentTone(state))
    }

    static func agentTone(_ state: String) -> String {
        switch state {
        case "alive": "ok"
        case "suspected": "warn"
        case "failed": "bad"
        default: "muted"
        }
    }

    static func standby(_ record: PoolRecord) -> String {
        if let name = record.cpuStandbyName { return "CPU VM \(HTML.escape(name))" }
        guard let id = record.standbyInstanceID else { return "none" }
        let tone = record.standbyState == .stopped ? "ok" : "info"
        return "#\(id) " + HTML.badge(record.standbyState.rawValue, tone: tone)
    }

    static func volume(_ pool: ConsolePool) -> String {
        guard let id = pool.record.volumeID else { return "none" }
        var text = "#\(id) · \(pool.record.volumeSizeGB) GB"
        if let free = pool.primaryAgent?.volumeFreeMebibytes {
            let sizeMiB = Double(pool.record.volumeSizeGB) * 1e9 / 1_048_576
            let used = max(0, min(100, Int(((sizeMiB - Double(free)) / sizeMiB * 100).rounded())))
            text += " · \(HTML.gibibytes(mebibytes: free)) free (\(used) % used)"
        }
        return text
    }

    static func recoveryPoint(_ pool: ConsolePool) -> String {
        pool.checkpointAge.map { "checkpoint \(HTML.duration($0)) old" } ?? "no checkpoint reported"
    }

    static func monthlyCost(_ quote: CostQuotes.Quote?) -> String {
        switch quote {
        case nil: "—"
        case .pending?: "<span class=\"muted\">quoting…</span>"
        case .failed?: "<span class=\"muted\">unavailable</span>"
        case .quoted(let costs, _)?: HTML.money(total(costs))
        }
    }

    static func gpuSummary(_ agent: ConsoleAgent) -> String {
        guard let count = agent.gpuCount else { return "—" }
        guard agent.gpuProbe else { return "no GPU probe" }
        var text = "\(agent.gpuHealthy ?? 0)/\(count) healthy"
        if let temperature = agent.gpuTemperature { text += ", \(temperature) °C" }
        if let utilization = agent.gpuUtilization { text += ", \(utilization) %" }
        if agent.gpuErrors { text += " " + HTML.badge("errors", tone: "bad") }
        return text
    }

    private static func format(_ value: Double) -> String { String(format: "%.1f", value) }
}
