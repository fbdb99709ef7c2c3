import Foundation
import Hummingbird
import Logging
import WarmpoolLiveness
import WarmpoolModel
import WarmpoolStore
import WarmpoolWire

/// The status page under `/ui`: the same pools, agents and failovers as the API, for a browser,
/// behind the same API keys. A key is pasted once into the login form; the browser then holds
/// only a session cookie (HttpOnly, SameSite=Strict, path /ui), and every form carries the
/// session's CSRF token. These routes answer HTML, never the API's JSON errors.
struct ConsoleRoutes {
    static let cookieName = "warmpool_session"
    static let pathPrefix = "/ui"

    let dependencies: APIDependencies
    let sessions: ConsoleSessions
    let costQuotes: CostQuotes?

    /// Whether `path` is the console's, which authenticates with its cookie instead of a bearer key.
    static func owns(_ path: String) -> Bool {
        path == "/" || path == pathPrefix || path.hasPrefix(pathPrefix + "/")
    }

    func register(on router: Router<APIRequestContext>) {
        router.get("/") { _, _ in Self.redirect(to: Self.pathPrefix) }
        router.get("/ui/assets/console.css") { _, _ in Self.asset(ConsoleAssets.stylesheet, type: "text/css; charset=utf-8") }
        router.get("/ui/assets/console.js") { _, _ in Self.asset(ConsoleAssets.script, type: "text/javascript; charset=utf-8") }
        router.get("/ui/login") { request, _ in
            Self.page(ConsolePages.login(error: nil, next: Self.safeNext(request.uri.queryParameters.get("next"))))
        }
        router.post("/ui/login") { request, context in try await login(request, context) }
        router.post("/ui/logout") { request, context in
            guard let (viewer, token) = try await viewer(request), try await formIsGenuine(request, viewer: viewer, context: context) != nil else {
                return Self.redirect(to: "/ui/login")
            }
            sessions.close(token: token)
            context.logger.info("console logout", metadata: ["key_name": "\(viewer.keyName)"])
            var response = Self.redirect(to: "/ui/login")
            response.headers[.setCookie] = Self.cookie(value: "", maxAge: 0)
            return response
        }
        router.get("/ui") { request, _ in
            guard let (viewer, _) = try await viewer(request) else { return Self.loginFirst(request) }
            let pools = try await poolViews()
            let now = Date()
            if request.uri.queryParameters.get("fragment") == "live" { return Self.page(ConsolePages.poolListLive(pools, now: now)) }
            return Self.page(ConsolePages.poolList(pools, viewer: viewer, now: now))
        }
        router.get("/ui/pools/:machine_id") { request, context in
            guard let (viewer, _) = try await viewer(request) else { return Self.loginFirst(request) }
            guard let poolID = try? RequestInput.poolID(context), let detail = try await poolDetail(poolID) else {
                return Self.page(ConsolePages.message(title: "No such pool", text: "No warm pool for that machine.", viewer: viewer), status: .notFound)
            }
            if request.uri.queryParameters.get("fragment") == "live" { return Self.page(ConsolePages.poolPageLive(detail, now: Date())) }
            let notice = request.uri.queryParameters.get("saved") == "1" ? "Settings saved." : nil
            return Self.page(ConsolePages.poolPage(detail, viewer: viewer, now: Date(), notice: notice))
        }
        router.post("/ui/pools/:machine_id/settings") { request, context in try await changeSettings(request, context) }
    }

    // MARK: Logging in and out

    private func login(_ request: Request, _ context: APIRequestContext) async throws -> Response {
        guard Self.sameOrigin(request) else {
            context.logger.notice("console login refused: cross-origin form", metadata: ["origin": "\(request.headers[.origin] ?? "")", "authority": "\(request.head.authority ?? "")"])
            return Self.page(ConsolePages.login(error: "This form must be sent from this site.", next: "/ui"), status: .forbidden)
        }
        let fields = HTML.formFields(try await RequestInput.body(request))
        let next = Self.safeNext(fields["next"])
        let token = (fields["api_key"] ?? "").trimmingCharacters(in: .whitespacesAndNewlines)
        guard let id = APIKeys.id(of: token), let record = try await dependencies.store.apiKey(id: id), APIKeys.matches(token, record) else {
            context.logger.notice("console login refused: not a valid API key")
            return Self.page(ConsolePages.login(error: "That is not a valid API key, or it was revoked.", next: next), status: .unauthorized)
        }
        guard record.scope >= .read else {
            context.logger.notice("console login refused: scope", metadata: ["key_id": "\(id)", "scope": "\(record.scope.rawValue)"])
            return Self.page(ConsolePages.login(
                error: "This key's scope is \(record.scope.rawValue); the status page needs read or more.", next: next), status: .forbidden)
        }
        try await dependencies.store.touchAPIKey(id: id, at: Date())
        let (sessionToken, _) = sessions.open(keyID: id, now: Date().timeIntervalSince1970)
        context.logger.info("console login", metadata: ["key_id": "\(id)", "key_name": "\(record.name)", "scope": "\(record.scope.rawValue)"])
        var response = Self.redirect(to: next)
        response.headers[.setCookie] = Self.cookie(value: sessionToken, maxAge: Int(sessions.absoluteTimeout))
        return response
    }

    /// The logged-in viewer, with the key's record read again: a revoked key ends its sessions.
    private func viewer(_ request: Request) async throws -> (ConsoleViewer, token: String)? {
        guard let token = Self.cookieValue(request), let session = sessions.session(token: token, now: Date().timeIntervalSince1970) else {
            return nil
        }
        guard let record = try await dependencies.store.apiKey(id: session.keyID), record.revokedAt == nil, record.scope >= .read else {
            sessions.close(token: token)
            return nil
        }
        return (ConsoleViewer(keyName: record.name, scope: record.scope, csrfToken: session.csrfToken), token)
    }

    /// A posted form's fields when it came from this site with this session's CSRF token; nil
    /// (logged) otherwise. SameSite=Strict already keeps the cookie off other sites' requests;
    /// the token and the Origin check are the second lock.
    private func formIsGenuine(_ request: Request, viewer: ConsoleViewer, context: APIRequestContext) async throws -> [String: String]? {
        let fields = HTML.formFields(try await RequestInput.body(request))
        guard Self.sameOrigin(request), ConsoleSessions.tokensMatch(fields["csrf"] ?? "", viewer.csrfToken) else {
            context.logger.notice("console form refused: CSRF token or origin", metadata: ["http.path": "\(request.uri.path)"])
            return nil
        }
        return fields
    }

    // MARK: Settings

    private func changeSettings(_ request: Request, _ context: APIRequestContext) async throws -> Response {
        guard let (viewer, _) = try await viewer(request) else { return Self.loginFirst(request) }
        guard let poolID = try? RequestInput.poolID(context) else {
            return Self.page(ConsolePages.message(title: "No such pool", text: "No warm pool for that machine.", viewer: viewer), status: .notFound)
        }
        guard let fields = try await formIsGenuine(request, viewer: viewer, context: context) else {
            return Self.page(ConsolePages.message(
                title: "Form expired", text: "This form was not sent from this page's session. Reload the page and try again.", viewer: viewer),
                status: .forbidden)
        }
        guard viewer.canChangeSettings else {
            return Self.page(ConsolePages.message(
                title: "Not allowed", text: "Changing settings needs an admin key; this one is \(viewer.scope.rawValue).", viewer: viewer),
                status: .forbidden)
        }
        guard let current = try await dependencies.store.pool(id: poolID) else {
            return Self.page(ConsolePages.message(title: "No such pool", text: "No warm pool for machine \(poolID).", viewer: viewer), status: .notFound)
        }
        let change: SettingsChange
        do {
            change = try Self.settingsChange(fields, current: current)
        } catch let error as APIError {
            return try await settingsRefused(poolID, viewer: viewer, message: error.message, status: .badRequest)
        }
        do {
            _ = try await dependencies.operations.updateSettings(poolID, change)
        } catch let error as PoolOperationError {
            let refused = JSONErrorMiddleware.apiError(error)
            return try await settingsRefused(poolID, viewer: viewer, message: refused.message, status: refused.status)
        }
        context.logger.info("console settings changed", metadata: ["machine_id": "\(poolID)", "key_name": "\(viewer.keyName)"])
        return Self.redirect(to: "/ui/pools/\(poolID)?saved=1")
    }

    private func settingsRefused(_ poolID: PoolID, viewer: ConsoleViewer, message: String, status: HTTPResponse.Status) async throws -> Response {
        guard let detail = try await poolDetail(poolID) else {
            return Self.page(ConsolePages.message(title: "No such pool", text: message, viewer: viewer), status: .notFound)
        }
        return Self.page(ConsolePages.poolPage(detail, viewer: viewer, now: Date(), error: message), status: status)
    }

    /// Only what the form changed: an untouched strategy must not re-enable or re-disable a pool.
    static func settingsChange(_ fields: [String: String], current: PoolRecord) throws -> SettingsChange {
        var change = SettingsChange()
        if let text = fields["strategy"] {
            guard let strategy = FailoverStrategy(rawValue: text) else {
                throw APIError.badRequest("strategy must be gpu_warm_pool, cpu_standby or disabled, got \"\(text)\"")
            }
            if strategy != current.strategy { change.strategy = strategy }
        }
        if let text = fields["gpu_preferences"] {
            let preferences = text.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
            guard preferences.count <= 16, preferences.allSatisfy({ $0.utf8.count <= 64 }) else {
                throw APIError.badRequest("GPU preferences: at most 16 names of at most 64 bytes each")
            }
            if preferences != current.gpuPreferences { change.gpuPreferences = preferences }
        }
        if let text = fields["volume_size_gb"] {
            guard let size = Int(text.trimmingCharacters(in: .whitespaces)), (1...65_536).contains(size) else {
                throw APIError.badRequest("volume size must be a whole number of GB from 1 to 65536, got \"\(text)\"")
            }
            if size != current.volumeSizeGB { change.volumeSizeGB = size }
        }
        return change
    }

    // MARK: What the pages show

    private func poolViews() async throws -> [ConsolePool] {
        let pools = try await dependencies.store.pools()
        let protections = await dependencies.operations.protections()
        let live = LiveReadings(hub: dependencies.hub)
        let quotes = costQuotes?.current(pools.filter { $0.state != .disabled }.map(\.poolID))
        let agents = Self.agentsByInstance(live)
        let heartbeats = live.lastHeartbeats()
        return pools.map { pool in
            Self.view(pool, protection: protections[pool.poolID], live: live, agents: agents, heartbeats: heartbeats, quote: quotes?[pool.poolID])
        }
    }

    private func poolDetail(_ poolID: PoolID) async throws -> ConsolePoolDetail? {
        let store = dependencies.store
        guard let pool = try await store.pool(id: poolID) else { return nil }
        let protection = await dependencies.operations.protections()[poolID]
        let live = LiveReadings(hub: dependencies.hub)
        let quote = pool.state == .disabled ? nil : costQuotes?.current([poolID])[poolID]
        let view = Self.view(pool, protection: protection, live: live, agents: Self.agentsByInstance(live), heartbeats: live.lastHeartbeats(), quote: quote)
        var failovers: [ConsoleFailover] = []
        for record in try await store.failovers(poolID: poolID, limit: 10) {
            failovers.append(ConsoleFailover(record: record, steps: try await store.timeline(failoverID: record.id)))
        }
        let events = try await store.events(poolID: poolID, limit: 50)
        return ConsolePoolDetail(pool: view, failovers: failovers, events: events, agents: try await agents(of: pool, live: live))
    }

    /// The pool's agents: registered to it, or connected and saying they are its, or on one of its
    /// instances now. Revoked keys of destroyed instances are left out.
    private func agents(of pool: PoolRecord, live: LiveReadings) async throws -> [ConsoleAgent] {
        let instances = Set([pool.primaryInstanceID, pool.standbyInstanceID, pool.cpuStandbyInstanceID].compactMap { $0 })
        let records = try await dependencies.store.agents().filter {
            $0.revokedAt == nil && ($0.poolID == pool.poolID || $0.instanceID.map(instances.contains) == true)
        }
        let snapshots = Dictionary(live.agents.map { ($0.identity.agentID, $0) }, uniquingKeysWith: { first, _ in first })
        func role(_ instance: InstanceID?) -> String? {
            guard let instance else { return nil }
            if instance == pool.primaryInstanceID { return "primary" }
            return instances.contains(instance) ? "standby" : nil
        }
        var agents = records.map { record in
            Self.agent(id: "\(record.agentID)", instanceID: record.instanceID, role: role(record.instanceID) ?? record.role,
                       snapshot: snapshots[record.agentID], live: live)
        }
        let registered = Set(records.map(\.agentID))
        for snapshot in live.agents where !registered.contains(snapshot.identity.agentID)
            && (snapshot.identity.machineID.rawValue == pool.poolID.rawValue || instances.contains(snapshot.identity.instanceID)) {
            agents.append(Self.agent(id: "\(snapshot.identity.agentID)", instanceID: snapshot.identity.instanceID,
                                     role: role(snapshot.identity.instanceID), snapshot: snapshot, live: live))
        }
        return agents.sorted { ($0.role ?? "~", $0.agentID) < ($1.role ?? "~", $1.agentID) }
    }

    static func agentsByInstance(_ live: LiveReadings) -> [InstanceID: AgentLivenessSnapshot] {
        // An instance with two agents (a restart overlapping) shows the one heard from last.
        Dictionary(live.agents.map { ($0.identity.instanceID, $0) }, uniquingKeysWith: { $0.silenceNanoseconds <= $1.silenceNanoseconds ? $0 : $1 })
    }

    static func view(_ pool: PoolRecord, protection: PoolProtection?, live: LiveReadings, agents: [InstanceID: AgentLivenessSnapshot],
                     heartbeats: [InstanceID: Date], quote: CostQuotes.Quote?) -> ConsolePool {
        let primary = pool.primaryInstanceID
        let recovery = live.recoveryPoint(primary: primary)
        return ConsolePool(
            record: pool, protection: protection, lastHeartbeat: primary.flatMap { heartbeats[$0] } ?? pool.lastHealthCheck,
            primaryAgent: primary.flatMap { agents[$0] }.map { agent(id: "\($0.identity.agentID)", instanceID: primary, role: "primary", snapshot: $0, live: live) },
            checkpointAge: recovery.flatMap { $0.report.checkpointAge(at: $0.monotonicNow) },
            snapshotAge: recovery.flatMap { $0.report.snapshotAge(at: $0.monotonicNow) },
            syncLag: live.sync(primary: primary).flatMap { $0.report.lag(at: $0.monotonicNow) },
            cost: quote)
    }

    static func agent(id: String, instanceID: InstanceID?, role: String?, snapshot: AgentLivenessSnapshot?, live: LiveReadings) -> ConsoleAgent {
        var agent = ConsoleAgent(
            agentID: id, instanceID: instanceID, role: role, state: snapshot?.state ?? "unseen", lastHeartbeat: snapshot.map(live.lastHeartbeat),
            leaseHeld: snapshot?.leaseEpoch != nil, leaseRevoked: snapshot?.leaseWithheld ?? false)
        if let status = snapshot?.status {
            agent.fence = status.fenceName
            agent.gpuCount = Int(status.gpuCount)
            agent.gpuHealthy = Int(status.gpuHealthyCount)
            agent.gpuErrors = status.flags.contains(.gpuErrors)
            agent.gpuProbe = status.flags.contains(.gpuProbeAvailable)
            agent.gpuTemperature = AgentStatus.known(status.gpuMaxTemperatureCelsius)
            agent.gpuUtilization = AgentStatus.known(status.gpuMaxUtilizationPercent)
            if status.flags.contains(.volumeMounted) { agent.volumeFreeMebibytes = Int(status.volumeFreeMebibytes) }
        }
        return agent
    }

    // MARK: Responses

    /// Every console answer: no caching, no framing, no inline script, nothing sent elsewhere.
    static func securityHeaders(_ headers: inout HTTPFields) {
        headers[.cacheControl] = "no-store"
        headers[.contentSecurityPolicy] =
            "default-src 'none'; style-src 'self'; script-src 'self'; connect-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
        headers[.xContentTypeOptions] = "nosniff"
        // Not no-referrer: under it a browser sends `Origin: null` with its own forms, and the origin check needs the real one.
        headers[.init("Referrer-Policy")!] = "same-origin"
        headers[.init("X-Frame-Options")!] = "DENY"
    }

    static func page(_ html: String, status: HTTPResponse.Status = .ok) -> Response {
        var headers = HTTPFields()
        headers[.contentType] = "text/html; charset=utf-8"
        securityHeaders(&headers)
        return Response(status: status, headers: headers, body: .init(byteBuffer: ByteBuffer(string: html)))
    }

    static func asset(_ text: String, type: String) -> Response {
        var headers = HTTPFields()
        headers[.contentType] = type
        securityHeaders(&headers)
        headers[.cacheControl] = "no-cache"
        return Response(status: .ok, headers: headers, body: .init(byteBuffer: ByteBuffer(string: text)))
    }

    static func redirect(to location: String) -> Response {
        var headers = HTTPFields()
        headers[.location] = location
        securityHeaders(&headers)
        return Response(status: .seeOther, headers: headers)
    }

    /// A page asked for without a session: the login form, which comes back here after. The live
    /// part's script gets a 401 and reloads the page itself.
    static func loginFirst(_ request: Request) -> Response {
        if request.uri.queryParameters.get("fragment") != nil || request.method != .get {
            return page("", status: .unauthorized)
        }
        return redirect(to: "/ui/login?next=" + HTML.queryValue(request.uri.path))
    }

    static func cookie(value: String, maxAge: Int) -> String {
        "\(cookieName)=\(value); Path=\(pathPrefix); Max-Age=\(maxAge); HttpOnly; SameSite=Strict"
    }

    static func cookieValue(_ request: Request) -> String? {
        for header in request.headers[values: .cookie] {
            for pair in header.split(separator: ";") {
                let parts = pair.split(separator: "=", maxSplits: 1)
                if parts.count == 2, parts[0].trimmingCharacters(in: .whitespaces) == cookieName {
                    return parts[1].trimmingCharacters(in: .whitespaces)
                }
            }
        }
        return nil
    }

    /// Where a login may send the browser: a console page of this site, never another site.
    static func safeNext(_ next: String?) -> String {
        guard let next, next.hasPrefix(pathPrefix), !next.contains("//"), !next.contains("\\"), next.utf8.count <= 200 else { return pathPrefix }
        return next
    }

    /// A form posted from this site: an Origin header, when the browser sends one, names this host.
    static func sameOrigin(_ request: Request) -> Bool {
        guard let origin = request.headers[.origin] else { return true }
        guard let host = request.head.authority else { return false }
        return origin == "http://\(host)" || origin == "https://\(host)"
    }
}
