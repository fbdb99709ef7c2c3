import Foundation
import Logging
import NIOPosix
import WarmpoolHTTP
import WarmpoolJSON
import WarmpoolModel

/// `CPUProviderClient` over Compute Engine's REST API v1 (Protocol/GCE.md): zonal instances by
/// name, OAuth 2.0 access tokens from a service account's JWT bearer grant, Google's error body
/// turned into `ProviderError`. Retries follow `RetryPolicy` as `VastClient` does; a 401 gets one
/// fresh token and one more try.
public final class GCEClient: CPUProviderClient {
    public let configuration: GCEConfiguration
    public let tokens: GCETokenSource
    private let http: HTTPClient
    private let logger: Logger

    public init(configuration: GCEConfiguration, threadPool: NIOThreadPool = .singleton, clock: any WallClock = SystemWallClock(),
                logger: Logger)
    {
        self.configuration = configuration
        let http = HTTPClient(threadPool: threadPool)
        self.http = http
        self.logger = logger
        let timeout = configuration.timeout
        let retry = configuration.retry
        let userAgent = configuration.userAgent
        tokens = GCETokenSource(key: configuration.key, clock: clock) { assertion, tokenURI in
            try await Self.exchange(assertion: assertion, tokenURI: tokenURI, http: http, timeout: timeout, retry: retry,
                                    userAgent: userAgent, logger: logger)
        }
    }

    /// `…/projects/P/zones/Z/instances`.
    var instancesPath: String {
        "\(configuration.baseURL)/projects/\(Self.pathSegment(configuration.project))/zones/\(Self.pathSegment(configuration.zone))/instances"
    }

    // MARK: CPUProviderClient

    public func insertInstance(_ spec: CPUInstanceSpec) async throws {
        logger.info("inserting GCE instance", metadata: [
            "gce.instance": "\(spec.name)", "gce.machine_type": "\(spec.machineType)", "gce.disk_gb": "\(spec.diskSizeGB)",
        ])
        do {
            // Names are unique in a zone, so a retried insert cannot make a second VM: it meets
            // 409 alreadyExists, which is success here.
            let operation = try await call("insert", method: "POST", url: instancesPath, body: Self.insertBody(spec, configuration))
            try Self.checkOperation(operation)
        } catch GCEError.alreadyExists {
            logger.info("GCE instance already exists", metadata: ["gce.instance": "\(spec.name)"])
        }
    }

    public func instance(named name: String) async throws -> CPUInstance? {
        do {
            return try Self.decodeInstance(try await call("get", method: "GET", url: instanceURL(name)))
        } catch ProviderError.notFound {
            return nil
        }
    }

    public func listInstances(labelKey key: String, value: String?) async throws -> [CPUInstance] {
        let filter = value.map { "labels.\(key)=\($0)" } ?? "labels.\(key):*"
        var result: [CPUInstance] = []
        var pageToken: String?
        var seen: Set<String> = []
        repeat {
            var query = "filter=" + Self.percentEncode(filter) + "&maxResults=500"
            if let pageToken { query += "&pageToken=" + Self.percentEncode(pageToken) }
            let page = try await call("list", method: "GET", url: instancesPath + "?" + query)
            for item in page["items"]?.arrayValue ?? [] { result.append(try Self.decodeInstance(item)) }
            pageToken = page["nextPageToken"]?.stringValue.flatMap { $0.isEmpty ? nil : $0 }
            if let pageToken, !seen.insert(pageToken).inserted {
                throw ProviderError.malformedResponse(what: "nextPageToken \(pageToken) repeated")
            }
        } while pageToken != nil
        return result
    }

    public func startInstance(named name: String) async throws {
        try Self.checkOperation(try await call("start", method: "POST", url: instanceURL(name) + "/start"))
    }

    public func stopInstance(named name: String) async throws {
        try Self.checkOperation(try await call("stop", method: "POST", url: instanceURL(name) + "/stop"))
    }

    public func deleteInstance(named name: String) async throws {
        do {
            try Self.checkOperation(try await call("delete", method: "DELETE", url: instanceURL(name)))
        } catch ProviderError.notFound {
            logger.info("GCE instance already gone", metadata: ["gce.instance": "\(name)"])
        }
    }

    private func instanceURL(_ name: String) -> String { instancesPath + "/" + Self.pathSegment(name) }

    // MARK: Requests

    /// Internal: a 409 alreadyExists, which only insert turns into success.
    enum GCEError: Error {
        case alreadyExists
    }

    /// One call with the retry rules; returns the 2xx body as JSON.
    func call(_ operation: String, method: String, url: String, body: JSONValue? = nil) async throws -> JSONValue {
        // start, stop and delete take no body ("The request body must be empty").
        let payload = body.map { Data($0.serialized()) }
        var attempt = 0
        var refreshedAfter401 = false
        while true {
            attempt += 1
            let token = try await tokens.token()
            var headers: [(name: String, value: String)] = [
                ("Authorization", "Bearer \(token)"), ("Accept", "application/json"), ("User-Agent", configuration.userAgent),
            ]
            // An empty value stops libcurl adding its form Content-Type to a bodiless POST.
            headers.append(("Content-Type", payload == nil ? "" : "application/json"))
            let outcome: RetryPolicy.Outcome
            let failure: any Error
            do {
                let response = try await http.send(method: method, url: url, headers: headers, body: payload,
                                                   timeout: configuration.timeout, connectTimeout: configuration.connectTimeout)
                logger.debug("GCE call", metadata: [
                    "gce.operation": "\(operation)", "gce.status": "\(response.status)", "gce.attempt": "\(attempt)",
                ])
                if response.isSuccess {
                    guard let value = try? JSONValue.parse([UInt8](response.body)), value.objectValue != nil else {
                        throw ProviderError.malformedResponse(what: "GCE \(operation): HTTP \(response.status) body is not a JSON object")
                    }
                    return value
                }
                let error = GoogleErrorBody(response)
                if response.status == 401, !refreshedAfter401 {
                    // An expired or revoked token: one new token, one more try.
                    refreshedAfter401 = true
                    await tokens.invalidate(token)
                    attempt -= 1
                    logger.notice("GCE refused the access token; refreshing it", metadata: ["gce.operation": "\(operation)", "gce.error": "\(error.message)"])
                    continue
                }
                if operation == "insert", response.status == 409, error.reason == "alreadyExists" { throw GCEError.alreadyExists }
                outcome = .response(status: error.retryStatus(response.status), retryAfter: response.headers["retry-after"], quotaExceeded: false)
                failure = error.providerError(status: response.status)
            } catch let transport as HTTPTransportError {
                outcome = .transportFailure(curlCode: transport.curlCode)
                failure = ProviderError.transport(curlCode: transport.curlCode, message: transport.message)
            }
            guard case .retry(let wait) = configuration.retry.decide(after: attempt, outcome: outcome, idempotent: true) else {
                throw failure
            }
            logger.warning("GCE call will be retried", metadata: [
                "gce.operation": "\(operation)", "gce.attempt": "\(attempt)", "gce.wait_ms": "\(wait.milliseconds)", "gce.error": "\(failure)",
            ])
            try await Task.sleep(for: wait)
        }
    }

    /// The JWT bearer grant: `POST token_uri` with the form `grant_type=…jwt-bearer&assertion=…`.
    static func exchange(assertion: String, tokenURI: String, http: HTTPClient, timeout: Duration, retry: RetryPolicy, userAgent: String,
                         logger: Logger) async throws -> GCEAccessToken
    {
        let form = "grant_type=" + percentEncode("urn:ietf:params:oauth:grant-type:jwt-bearer") + "&assertion=" + percentEncode(assertion)
        var attempt = 0
        while true {
            attempt += 1
            let outcome: RetryPolicy.Outcome
            let failure: any Error
            do {
                let response = try await http.send(method: "POST", url: tokenURI, headers: [
                    ("Content-Type", "application/x-www-form-urlencoded"), ("Accept", "application/json"), ("User-Agent", userAgent),
                ], body: Data(form.utf8), timeout: timeout)
                let value = try? JSONValue.parse([UInt8](response.body))
                if response.isSuccess {
                    guard let token = value?["access_token"]?.stringValue, !token.isEmpty,
                        let lifetime = value?["expires_in"]?.intValue, lifetime > 0
                    else {
                        throw ProviderError.malformedResponse(what: "token endpoint: expected access_token and expires_in")
                    }
                    logger.debug("GCE access token obtained", metadata: ["gce.expires_in_s": "\(lifetime)"])
                    return GCEAccessToken(value: token, lifetimeSeconds: lifetime)
                }
                // OAuth's error shape (RFC 6749 §5.2): {"error": code, "error_description": text}.
                let code = value?["error"]?.stringValue ?? "HTTP \(response.status)"
                let detail = value?["error_description"]?.stringValue.map { ": \($0)" } ?? ""
                outcome = .response(status: response.status, retryAfter: response.headers["retry-after"], quotaExceeded: false)
                failure = ProviderError.http(status: response.status, message: "token endpoint refused the service account's JWT: \(code)\(detail)")
            } catch let transport as HTTPTransportError {
                outcome = .transportFailure(curlCode: transport.curlCode)
                failure = ProviderError.transport(curlCode: transport.curlCode, message: transport.message)
            }
            guard case .retry(let wait) = retry.decide(after: attempt, outcome: outcome, idempotent: true) else { throw failure }
            try await Task.sleep(for: wait)
        }
    }

    // MARK: Shapes

    static func insertBody(_ spec: CPUInstanceSpec, _ configuration: GCEConfiguration) -> JSONValue {
        let zone = configuration.zone
        return [
            "name": .string(spec.name),
            "machineType": .string("zones/\(zone)/machineTypes/\(spec.machineType)"),
            "disks": [[
                "boot": true, "autoDelete": true,
                "initializeParams": [
                    // int64 fields travel as JSON strings in Google's APIs.
                    "diskSizeGb": .string(String(spec.diskSizeGB)), "sourceImage": .string(configuration.sourceImage),
                    "diskType": .string("zones/\(zone)/diskTypes/\(configuration.diskType)"),
                ],
            ]],
            "networkInterfaces": [[
                "network": "global/networks/default",
                "accessConfigs": [["type": "ONE_TO_ONE_NAT", "name": "External NAT"]],
            ]],
            "metadata": ["items": .array(spec.metadata.map { ["key": .string($0.key), "value": .string($0.value)] })],
            "labels": .object(spec.labels.sorted { $0.key < $1.key }.map { ($0.key, .string($0.value)) }),
        ]
    }

    static func decodeInstance(_ value: JSONValue) throws -> CPUInstance {
        guard let name = value["name"]?.stringValue else { throw ProviderError.malformedResponse(what: "instance: missing name") }
        // uint64 travels as a decimal string.
        guard let idText = value["id"]?.stringValue ?? value["id"]?.intValue.map(String.init), let id = UInt64(idText) else {
            throw ProviderError.malformedResponse(what: "instance \(name): id is not a uint64")
        }
        guard let status = value["status"]?.stringValue else { throw ProviderError.malformedResponse(what: "instance \(name): missing status") }
        let interface = value["networkInterfaces"]?.arrayValue?.first
        var labels: [String: String] = [:]
        for (key, label) in value["labels"]?.objectValue ?? [] { labels[key] = label.stringValue }
        let machineType = value["machineType"]?.stringValue.map { String($0.split(separator: "/").last ?? "") } ?? ""
        return CPUInstance(
            name: name, id: id, status: CPUInstanceStatus(rawValue: status),
            externalIP: interface?["accessConfigs"]?.arrayValue?.first?["natIP"]?.stringValue,
            internalIP: interface?["networkIP"]?.stringValue, machineType: machineType, labels: labels)
    }

    /// An Operation that finished with `error` failed, whatever its HTTP status was.
    static func checkOperation(_ operation: JSONValue) throws {
        guard let error = operation["error"], error != .null else { return }
        let messages = (error["errors"]?.arrayValue ?? []).compactMap { item -> String? in
            let text = item["message"]?.stringValue
            let code = item["code"]?.stringValue
            return [code, text].compactMap { $0 }.joined(separator: ": ")
        }
        let target = operation["targetLink"]?.stringValue.map { " (\($0.split(separator: "/").last ?? ""))" } ?? ""
        throw ProviderError.rejected(message: (messages.isEmpty ? "operation failed" : messages.joined(separator: "; ")) + target)
    }

    /// RFC 3986 unreserved characters pass; every other byte is `%XX`.
    static func percentEncode(_ text: String) -> String {
        var result = ""
        for byte in text.utf8 {
            switch byte {
            case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "0")...UInt8(ascii: "9"),
                UInt8(ascii: "-"), UInt8(ascii: "."), UInt8(ascii: "_"), UInt8(ascii: "~"):
                result.unicodeScalars.append(Unicode.Scalar(byte))
            default:
                let hex = Array("0123456789ABCDEF".utf8)
                result += "%" + String(decoding: [hex[Int(byte >> 4)], hex[Int(byte & 0x0F)]], as: UTF8.self)
            }
        }
        return result
    }

    static func pathSegment(_ text: String) -> String { percentEncode(text) }
}

/// Google's error body: `{"error": {"code", "message", "errors": [{"reason", …}], "status"}}`.
struct GoogleErrorBody: Hashable, Sendable {
    var code: Int?
    var message: String
    var reason: String?
    var status: String?

    init(code: Int?, message: String, reason: String?, status: String?) {
        self.code = code
        self.message = message
        self.reason = reason
        self.status = status
    }

    init(_ response: HTTPResponse) { self.init(body: response.body) }

    init(body: Data) {
        let error = (try? JSONValue.parse([UInt8](body)))?["error"]
        let text = error?["message"]?.stringValue
        if let text, !text.isEmpty {
            message = text
        } else {
            let text = String(decoding: body.prefix(200), as: UTF8.self)
            message = text.isEmpty ? "(no detail message supplied)" : text
        }
        code = error?["code"]?.intValue.map(Int.init)
        reason = error?["errors"]?.arrayValue?.first?["reason"]?.stringValue
        status = error?["status"]?.stringValue
    }

    /// Rate limits come as 403 `rateLimitExceeded`/`userRateLimitExceeded` as well as 429, and a
    /// 500 is Google's "backendError, retry with backoff": both are retried as the 429 and 503
    /// they mean.
    var isRateLimit: Bool { reason == "rateLimitExceeded" || reason == "userRateLimitExceeded" }

    func retryStatus(_ status: Int) -> Int {
        if status == 403 && isRateLimit { return 429 }
        if status == 500 { return 503 }
        return status
    }

    func providerError(status httpStatus: Int) -> ProviderError {
        let detail = [reason, status].compactMap { $0 }.joined(separator: ", ")
        let text = detail.isEmpty ? message : "\(message) [\(detail)]"
        if httpStatus == 404 { return .notFound(what: text) }
        // A rate limit is transient whichever status carried it.
        if httpStatus == 403 && isRateLimit { return .http(status: 429, message: "HTTP 403 " + text) }
        return .http(status: httpStatus, message: text)
    }
}
