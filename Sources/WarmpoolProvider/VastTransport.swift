import Foundation
import Logging
import Synchronization
import NIOPosix
import WarmpoolHTTP
import WarmpoolJSON
import WarmpoolModel

/// Sends one API call with the CLI's retry rules and turns every outcome into either the
/// response's JSON object or a precise `ProviderError`. The blocking libcurl transfer runs on a
/// `NIOThreadPool` thread (`HTTPClient`); the waits between attempts are `Task.sleep`, which holds
/// no thread.
final class VastTransport: Sendable {
    let configuration: VastClient.Configuration
    private let client: HTTPClient
    private let logger: Logger
    private let pacer: Mutex<EndpointPacer>

    init(configuration: VastClient.Configuration, threadPool: NIOThreadPool, logger: Logger) {
        self.configuration = configuration
        pacer = Mutex(EndpointPacer(settings: configuration.pacing))
        client = HTTPClient(threadPool: threadPool)
        self.logger = logger
    }

    /// Calls `method path?query` and returns the body of a 2xx answer, checked to be a JSON
    /// object without `success: false`.
    /// `operation` names the call in logs (bodies are never logged: they can hold secrets).
    func call(_ operation: String, method: String, path: String, query: [(name: String, value: JSONValue)] = [],
              body: JSONValue? = nil, idempotent: Bool = true) async throws -> Data
    {
        let url = configuration.baseURL + path + (query.isEmpty ? "" : "?" + QueryEncoding.encode(query))
        var headers: [(name: String, value: String)] = [
            ("Authorization", "Bearer \(configuration.apiKey)"), ("Accept", "application/json"),
            ("User-Agent", configuration.userAgent),
        ]
        // The CLI sends a JSON body (default `{}`) with every method but GET.
        let payload: Data? = method == "GET" ? nil : (body ?? [:]).encoded()
        if payload != nil { headers.append(("Content-Type", "application/json")) }
        let requestHeaders = headers

        var attempt = 0
        while true {
            attempt += 1
            let asked = ContinuousClock.now
            let patience = configuration.retry.maxRetryAfter
            let (reserved, available) = pacer.withLock { pacer in
                (pacer.reserve(operation, now: asked, patience: patience), pacer.nextAvailable(operation, now: asked))
            }
            guard let slot = reserved else {
                let wait = (available - asked).formatted(.units(allowed: [.hours, .minutes, .seconds], width: .narrow))
                throw ProviderError.http(status: 429, message: "rate limited: the provider asked us to wait, no \(operation) call for another \(wait)")
            }
            if slot > asked {
                logger.debug("provider call paced", metadata: ["provider.operation": "\(operation)", "provider.wait_ms": "\((slot - asked).milliseconds)"])
                try await Task.sleep(until: slot)
            }
            let started = ContinuousClock.now
            let result: Result<HTTPResponse, HTTPTransportError>
            do {
                let response = try await client.send(method: method, url: url, headers: requestHeaders, body: payload,
                                                     timeout: configuration.timeout,
                                                     connectTimeout: configuration.connectTimeout)
                result = .success(response)
            } catch let failure as HTTPTransportError {
                result = .failure(failure)
            }
            let elapsed = ContinuousClock.now - started
            let outcome: RetryPolicy.Outcome
            switch result {
            case .success(let response):
                logger.debug("provider call", metadata: [
                    "provider.operation": "\(operation)", "provider.status": "\(response.status)",
                    "provider.attempt": "\(attempt)", "provider.ms": "\(elapsed.milliseconds)",
                ])
                if (200..<300).contains(response.status) {
                    pacer.withLock { $0.served(operation) }
                    return try Self.successBody(response)
                }
                if response.status == 429 {
                    let now = ContinuousClock.now
                    let retryAfter = Self.retryAfterSeconds(response).map { Duration.seconds($0) }
                    pacer.withLock { $0.rateLimited(operation, now: now, retryAfter: retryAfter) }
                }
                outcome = .response(status: response.status, retryAfter: response.headers["retry-after"],
                                    quotaExceeded: Self.isQuotaExceeded(response))
                if case .retry(let wait) = configuration.retry.decide(after: attempt, outcome: outcome, idempotent: idempotent) {
                    logger.warning("provider call will be retried", metadata: [
                        "provider.operation": "\(operation)", "provider.status": "\(response.status)",
                        "provider.attempt": "\(attempt)", "provider.wait_ms": "\(wait.milliseconds)",
                    ])
                    try await Task.sleep(for: wait)
                    continue
                }
                if response.status == 429, let seconds = Self.retryAfterSeconds(response), .seconds(seconds) > configuration.retry.maxRetryAfter {
                    let until = Date(timeIntervalSinceNow: seconds)
                    throw ProviderError.http(status: 429, message: "\(Self.httpError(response).message); the provider asks to wait "
                                             + "\(Int(seconds)) s (Retry-After), until \(until.formatted(.iso8601))")
                }
                throw Self.httpError(response)
            case .failure(let failure):
                outcome = .transportFailure(curlCode: failure.curlCode)
                if case .retry(let wait) = configuration.retry.decide(after: attempt, outcome: outcome, idempotent: idempotent) {
                    logger.warning("provider call will be retried", metadata: [
                        "provider.operation": "\(operation)", "provider.curl_code": "\(failure.curlCode)",
                        "provider.error": "\(failure.message)", "provider.attempt": "\(attempt)",
                        "provider.wait_ms": "\(wait.milliseconds)",
                    ])
                    try await Task.sleep(for: wait)
                    continue
                }
                throw ProviderError.transport(curlCode: failure.curlCode, message: failure.message)
            }
        }
    }

    /// A 2xx body must be a JSON object; `success: false` in it is a refusal.
    static func successBody(_ response: HTTPResponse) throws -> Data {
        guard let object = jsonObject(response.body) else {
            throw ProviderError.malformedResponse(what: "HTTP \(response.status) body is not a JSON object: \(preview(response.body))")
        }
        if object["success"]?.boolValue == false {
            throw ProviderError.rejected(message: message(in: object) ?? "(no detail message supplied)")
        }
        return response.body
    }

    static func httpError(_ response: HTTPResponse) -> ProviderError {
        let text = jsonObject(response.body).flatMap(message(in:)) ?? (response.body.isEmpty ? "(no detail message supplied)" : preview(response.body))
        return response.status == 404 ? .notFound(what: text) : .http(status: response.status, message: text)
    }

    static func retryAfterSeconds(_ response: HTTPResponse) -> Double? { RetryPolicy.seconds(retryAfter: response.headers["retry-after"]) }

    var rateLimited: [String: Int] { pacer.withLock { $0.rateLimited } }

    static func isQuotaExceeded(_ response: HTTPResponse) -> Bool {
        response.status == 429 && jsonObject(response.body)?["error"]?.stringValue == "search_quota_exceeded"
    }

    /// The body when it is a JSON object, else nil.
    static func jsonObject(_ body: Data) -> JSONValue? {
        guard let value = try? JSONValue.parse([UInt8](body)), value.objectValue != nil else { return nil }
        return value
    }

    /// The provider puts its explanation in `msg`, sometimes `error` or `detail`.
    static func message(in object: JSONValue) -> String? {
        for key in ["msg", "message", "error", "detail"] {
            if let text = object[key]?.stringValue, !text.isEmpty { return text }
        }
        return nil
    }

    static func preview(_ body: Data) -> String {
        let text = String(decoding: body.prefix(200), as: UTF8.self)
        return body.count > 200 ? text + "…" : text
    }
}
