import Foundation
import WarmpoolJSON

#if canImport(FoundationNetworking)
import FoundationNetworking
#endif

/// The REST API as the CLI sees it: one request, one JSON answer, or one clear error.
struct APIClient {
    let baseURL: URL
    let apiKey: String
    /// Seconds the whole request may take, from connecting to the last byte of the answer.
    let timeout: TimeInterval

    struct Failure: Error, CustomStringConvertible {
        var description: String
        /// The HTTP status when the controller answered; nil when it did not (unreachable, no
        /// answer in time, not HTTP).
        var status: Int? = nil
    }

    func get(_ path: String, query: [String: String] = [:]) async throws -> JSONValue {
        try await send("GET", path, query: query, body: nil)
    }

    func send(_ method: String, _ path: String, query: [String: String] = [:], body: JSONValue?) async throws -> JSONValue {
        guard var components = URLComponents(url: baseURL.appendingPathComponent(path), resolvingAgainstBaseURL: false) else {
            throw Failure(description: "invalid controller URL \(baseURL)")
        }
        if !query.isEmpty { components.queryItems = query.sorted { $0.key < $1.key }.map { URLQueryItem(name: $0.key, value: $0.value) } }
        guard let url = components.url else { throw Failure(description: "invalid request path \(path)") }
        // URLSession's own timeout only limits the silence between bytes (a server that trickles, or
        // a proxy that keeps a dead upstream's connection open, would hold the CLI for ever); the
        // deadline in `perform` bounds the whole request, and answers first with its clearer message.
        var request = URLRequest(url: url, timeoutInterval: timeout + 5)
        request.httpMethod = method
        request.setValue("Bearer \(apiKey)", forHTTPHeaderField: "Authorization")
        if let body {
            request.setValue("application/json", forHTTPHeaderField: "Content-Type")
            request.httpBody = Data(body.serialized(options: .escapingSlashes))
        }
        let (data, response) = try await perform(request, method: method)
        // An object or an array, as JSONSerialization read it without `.fragmentsAllowed`.
        let json = data.isEmpty ? nil : (try? JSONValue.parse(Array(data)))?.asContainer
        guard (200..<300).contains(response.statusCode) else {
            let message = json?["message"]?.stringValue ?? String(decoding: data.prefix(200), as: UTF8.self)
            let code = json?["error"]?.stringValue ?? "error"
            throw Failure(description: "\(message) (HTTP \(response.statusCode) \(code))", status: response.statusCode)
        }
        guard let json else {
            throw Failure(description: "the controller answered \(method) \(path) with a body that is not JSON", status: response.statusCode)
        }
        return json
    }

    private func perform(_ request: URLRequest, method: String) async throws -> (Data, HTTPURLResponse) {
        let data: Data
        let response: URLResponse
        do {
            (data, response) = try await Self.withDeadline(seconds: timeout) { try await URLSession.shared.data(for: request) }
        } catch is DeadlinePassed {
            // A change may be under way on the controller even though its answer never came.
            let stillRunning = method == "GET" ? "" : "; the controller may still be carrying out the \(method): see `warmpoolctl status`"
            throw Failure(description: "no answer within \(Self.seconds(timeout)) s from the controller at \(baseURL.absoluteString) (--timeout)\(stillRunning)")
        } catch {
            throw Failure(description: "cannot reach the controller at \(baseURL.absoluteString): \(error.localizedDescription)")
        }
        guard let response = response as? HTTPURLResponse else {
            throw Failure(description: "no HTTP response from \(baseURL.absoluteString)")
        }
        return (data, response)
    }
}

extension APIClient {
    struct DeadlinePassed: Error {}

    /// `operation`'s result, or `DeadlinePassed` once `seconds` have passed: the two race, and the
    /// loser is cancelled (URLSession's data task stops at cancellation, so nothing is left behind).
    static func withDeadline<Value: Sendable>(seconds: TimeInterval, _ operation: @escaping @Sendable () async throws -> Value) async throws -> Value {
        try await withThrowingTaskGroup(of: Value?.self) { group in
            group.addTask { try await operation() }
            group.addTask {
                try await Task.sleep(for: .milliseconds(Int64((seconds * 1000).rounded(.up))))
                return nil
            }
            defer { group.cancelAll() }
            guard let first = try await group.next(), let value = first else { throw DeadlinePassed() }
            return value
        }
    }

    /// The same client with another deadline: the polls beside a long request get a short one.
    func withTimeout(_ seconds: TimeInterval) -> APIClient {
        APIClient(baseURL: baseURL, apiKey: apiKey, timeout: min(timeout, seconds))
    }

    /// 1, 1.5, 60: as an operator typed it.
    static func seconds(_ value: TimeInterval) -> String {
        value == value.rounded() && abs(value) < 1e15 ? String(Int64(value)) : String(value)
    }
}
