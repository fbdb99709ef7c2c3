import Foundation
import Hummingbird
import Logging
import NIOConcurrencyHelpers
import WarmpoolJSON
import WarmpoolLiveness
import WarmpoolModel
import WarmpoolStore

public struct APIRequestContext: RequestContext {
    public var coreContext: CoreRequestContextStorage
    /// The id of the API key that authenticated the request.
    public var apiKeyID: String?

    public init(source: ApplicationRequestContextSource) {
        coreContext = .init(source: source)
    }

    /// Bodies are read with `RequestInput.maximumBodyBytes`; this is Hummingbird's own ceiling.
    public var maxUploadSize: Int { RequestInput.maximumBodyBytes }
}

/// Everything the routes need, passed in: nothing here reaches for globals.
public struct APIDependencies: Sendable {
    public var store: any WarmpoolStore
    public var operations: any PoolOperations
    public var hub: LivenessHub?
    public var metrics: ControllerMetrics
    /// The secret Vast.ai signs its notification webhooks with; nil: the receiver is off (404).
    public var vastWebhookSecret: String?
    /// How long a request's body may take to arrive, from the moment its route is reached.
    public var bodyTimeout: Duration
    /// Snapshots of pools' volumes; nil: no store configured (the snapshot routes answer 409).
    public var snapshots: (any SnapshotOperations)?
    /// A pool's costs per strategy, from the providers' prices; nil: no provider (409).
    public var costs: (@Sendable (PoolID) async throws -> PoolCosts)?
    /// The status page's logins; in memory, so a restart asks browsers for the key again.
    public var consoleSessions = ConsoleSessions()

    public init(store: any WarmpoolStore, operations: any PoolOperations, hub: LivenessHub?, metrics: ControllerMetrics,
                vastWebhookSecret: String? = nil, bodyTimeout: Duration = .seconds(10))
    {
        self.vastWebhookSecret = vastWebhookSecret
        self.bodyTimeout = bodyTimeout
        self.store = store
        self.operations = operations
        self.hub = hub
        self.metrics = metrics
    }
}

public enum APIRouter {
    public static let prefix = "/api/v1"

    public static func build(_ dependencies: APIDependencies) -> Router<APIRequestContext> {
        let router = Router(context: APIRequestContext.self)
        let known = KnownRoutes()
        router.add(middleware: ServerTimingMiddleware())
        router.add(middleware: JSONErrorMiddleware(known: known))
        router.add(middleware: APIKeyMiddleware(store: dependencies.store))
        router.add(middleware: BodyDeadlineMiddleware(timeout: dependencies.bodyTimeout))
        router.get("/healthz") { _, _ in
            JSONResponse.ok(.object([("status", .string("ok"))]))
        }
        // The contract this server is tested against, for client generators and readers.
        router.get("/openapi.yaml") { _, _ in
            var headers = HTTPFields()
            headers[.contentType] = "application/yaml; charset=utf-8"
            return Response(status: .ok, headers: headers, body: .init(byteBuffer: ByteBuffer(string: OpenAPIDocument.text)))
        }
        router.get("/metrics") { _, _ in
            let exposition = try await dependencies.metrics.scrape(
                store: dependencies.store, operations: dependencies.operations, hub: dependencies.hub)
            var headers = HTTPFields()
            headers[.contentType] = "text/plain; version=0.0.4; charset=utf-8"
            return Response(status: .ok, headers: headers, body: .init(byteBuffer: ByteBuffer(bytes: exposition)))
        }
        PoolRoutes(dependencies: dependencies).register(on: router.group("\(prefix)/warmpool"))
        AgentRoutes(dependencies: dependencies).register(on: router.group("\(prefix)/warmpool"))
        SnapshotRoutes(dependencies: dependencies).register(on: router.group("\(prefix)/warmpool"))
        CostRoutes(dependencies: dependencies).register(on: router.group("\(prefix)/warmpool"))
        KeyRoutes(store: dependencies.store).register(on: router.group("\(prefix)/keys"))
        VersionRoutes(startedAt: Date()).register(on: router)
        ConsoleRoutes(dependencies: dependencies, sessions: dependencies.consoleSessions, costQuotes: dependencies.costs.map { CostQuotes(quote: $0) })
            .register(on: router)
        if let secret = dependencies.vastWebhookSecret {
            ProviderNoticeRoutes(operations: dependencies.operations, secret: secret).register(on: router)
        }
        known.set(router.routes.map { ($0.method, "\($0.path)") })
        return router
    }
}

/// Every error leaves as `{"error": code, "message": ...}` with a 4xx, or a 5xx that says what
/// failed on our side; nothing escapes as Hummingbird's default body.
struct JSONErrorMiddleware: RouterMiddleware {
    typealias Context = APIRequestContext
    let known: KnownRoutes

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        do {
            return try await next(request, context)
        } catch let error as APIError {
            if error.status.code >= 500 {
                context.logger.error("request failed", metadata: ["http.path": "\(request.uri.path)", "error": "\(error)"])
            }
            return JSONResponse.error(error)
        } catch let error as PoolOperationError {
            let apiError = Self.apiError(error)
            context.logger.warning("operation refused", metadata: ["http.path": "\(request.uri.path)", "error": "\(error)"])
            return JSONResponse.error(apiError)
        } catch let error as HTTPError {
            // A path that exists under other methods is a 405 with the methods it has, not a 404.
            if error.status == .notFound, case let allowed = known.methods(for: request.uri.path), !allowed.isEmpty {
                let names = allowed.map(\.rawValue).sorted().joined(separator: ", ")
                var response = JSONResponse.error(APIError(
                    .methodNotAllowed, "method_not_allowed", "\(request.method) is not allowed on \(request.uri.path); allowed: \(names)"))
                response.headers[.allow] = names
                return response
            }
            let code = error.status == .notFound ? "not_found" : "http_error"
            let message = error.status == .notFound ? "no route for \(request.method) \(request.uri.path)" : (error.body ?? "\(error.status)")
            return JSONResponse.error(APIError(error.status, code, message))
        } catch {
            context.logger.error("request failed", metadata: ["http.path": "\(request.uri.path)", "error": "\(error)"])
            return JSONResponse.error(APIError(.internalServerError, "internal", "the controller failed: \(error)"))
        }
    }

    static func apiError(_ error: PoolOperationError) -> APIError {
        switch error {
        case .unknownPool: APIError.notFound(error.description)
        case .conflict: APIError.conflict(error.description)
        case .providerFailed: APIError(.badGateway, "provider_failed", error.description)
        case .providerNotConfigured: APIError(.serviceUnavailable, "provider_not_configured", error.description)
        }
    }
}

/// The routes the router has, by method and path pattern; filled once, after they are registered
/// and before the server starts.
final class KnownRoutes: Sendable {
    private let routes = NIOLockedValueBox<[(method: HTTPRequest.Method, segments: [Substring])]>([])

    func set(_ routes: [(HTTPRequest.Method, String)]) {
        self.routes.withLockedValue { $0 = routes.map { ($0.0, $0.1.split(separator: "/")) } }
    }

    /// The methods registered for a path matching `path`.
    func methods(for path: String) -> Set<HTTPRequest.Method> {
        let segments = path.split(separator: "/")
        let routes = self.routes.withLockedValue { $0 }
        var methods: Set<HTTPRequest.Method> = []
        for route in routes where route.segments.count == segments.count && Self.matches(route.segments, segments) {
            methods.insert(route.method)
        }
        return methods
    }

    private static func matches(_ pattern: [Substring], _ segments: [Substring]) -> Bool {
        for (expected, segment) in zip(pattern, segments) where !expected.hasPrefix("{") && expected != "*" && expected != segment {
            return false
        }
        return true
    }
}

/// Bearer API keys (the scheme's name is case-insensitive, RFC 9110). Only `/healthz` is open:
/// metrics and every API route need a key.
struct APIKeyMiddleware: RouterMiddleware {
    typealias Context = APIRequestContext
    let store: any WarmpoolStore

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        // The provider's notifications carry its signature instead of a key (ProviderNoticeRoutes).
        // The status page authenticates with its session cookie (ConsoleRoutes); the OpenAPI
        // document is the public contract.
        let path = request.uri.path
        if path == "/healthz" || path == "/openapi.yaml" || path == ProviderNoticeRoutes.path || ConsoleRoutes.owns(path) {
            return try await next(request, context)
        }
        guard let header = request.headers[.authorization], header.count > 7, header.prefix(7).lowercased() == "bearer " else {
            throw APIError.unauthorized
        }
        let token = String(header.dropFirst(7)).trimmingCharacters(in: .whitespaces)
        guard let id = APIKeys.id(of: token), let record = try await store.apiKey(id: id), APIKeys.matches(token, record) else {
            context.logger.notice("rejected API key", metadata: ["http.path": "\(request.uri.path)"])
            throw APIError.unauthorized
        }
        // Stamped at most once a minute: a busy dashboard must not write on every poll.
        if record.lastUsedAt.map({ Date().timeIntervalSince($0) > 60 }) ?? true {
            try await store.touchAPIKey(id: id, at: Date())
        }
        let required = Self.requiredScope(method: request.method, path: request.uri.path)
        guard record.scope >= required else {
            throw APIError(.forbidden, "forbidden",
                           "this key's scope is \(record.scope.rawValue); \(request.method) \(request.uri.path) needs \(required.rawValue)")
        }
        var context = context
        context.apiKeyID = id
        return try await next(request, context)
    }

    /// The least scope a route needs. Reading is `read` (metrics alone: `metrics`); acting on a
    /// pool's instances through the failover engine is `operate`; what can destroy data or hand out
    /// credentials (cleanup, settings, agent secrets, API keys) is `admin`, and so is anything
    /// not listed here.
    static func requiredScope(method: HTTPRequest.Method, path: String) -> APIKeyRecord.Scope {
        if path == "/metrics" { return .metrics }
        if path == VersionRoutes.path { return .read }
        if path.hasPrefix(APIRouter.prefix + "/keys") { return .admin }
        guard path.hasPrefix(APIRouter.prefix + "/warmpool/") else { return .admin }
        if method == .get || method == .head { return .read }
        let first = path.dropFirst((APIRouter.prefix + "/warmpool/").count).split(separator: "/").first.map(String.init) ?? ""
        switch (method, first) {
        case (.post, "provision"), (.post, "enable"), (.post, "disable"), (.post, "failover"), (.post, "repair"), (.post, "breaker"):
            return .operate
        default:
            return .admin
        }
    }
}

enum JSONResponse {
    static func ok(_ value: JSONValue) -> Response { make(.ok, value) }

    static func error(_ error: APIError) -> Response { make(error.status, error.body) }

    static func make(_ status: HTTPResponse.Status, _ value: JSONValue) -> Response {
        var headers = HTTPFields()
        headers[.contentType] = "application/json"
        return Response(status: status, headers: headers, body: .init(byteBuffer: ByteBuffer(bytes: value.serialized())))
    }
}
