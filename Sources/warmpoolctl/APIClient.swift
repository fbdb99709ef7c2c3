import Foundation
import WarmpoolJSON

#if canImport(FoundationNetworking)
import FoundationNetworking
#endif

/// The REST API as the CLI sees it: one request, one JSON answer, or one clear error.
struct APIClient {
    let baseURL: URL
    let apiKey: String
    let timeout: TimeInterval

    struct Failure: Error, CustomStringConvertible {
        var description: String
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
        var request = URLRequest(url: url, timeoutInterval: timeout)
        request.httpMethod = method
        request.setValue("Bearer \(apiKey)", forHTTPHeaderField: "Authorization")
        if let body {
            request.setValue("application/json", forHTTPHeaderField: "Content-Type")
            request.httpBody = Data(body.serialized(options: .escapingSlashes))
        }
        let (data, response) = try await perform(request)
        // An object or an array, as JSONSerialization read it without `.fragmentsAllowed`.
        let json = data.isEmpty ? nil : (try? JSONValue.parse(Array(data)))?.asContainer
        guard (200..<300).contains(response.statusCode) else {
            let message = json?["message"]?.stringValue ?? String(decoding: data.prefix(200), as: UTF8.self)
            let code = json?["error"]?.stringValue ?? "error"
            throw Failure(description: "\(message) (HTTP \(response.statusCode) \(code))")
        }
        guard let json else { throw Failure(description: "the controller answered \(method) \(path) with a body that is not JSON") }
        return json
    }

    private func perform(_ request: URLRequest) async throws -> (Data, HTTPURLResponse) {
        let data: Data
        let response: URLResponse
        do {
            (data, response) = try await URLSession.shared.data(for: request)
        } catch {
            throw Failure(description: "cannot reach the controller at \(baseURL.absoluteString): \(error.localizedDescription)")
        }
        guard let response = response as? HTTPURLResponse else {
            throw Failure(description: "no HTTP response from \(baseURL.absoluteString)")
        }
        return (data, response)
    }
}
