import Foundation

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

    func get(_ path: String, query: [String: String] = [:]) throws -> Any {
        try send("GET", path, query: query, body: nil)
    }

    func send(_ method: String, _ path: String, query: [String: String] = [:], body: [String: Any]?) throws -> Any {
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
            request.httpBody = try JSONSerialization.data(withJSONObject: body)
        }
        let (data, response) = try perform(request)
        let json = data.isEmpty ? nil : try? JSONSerialization.jsonObject(with: data)
        guard (200..<300).contains(response.statusCode) else {
            let object = json as? [String: Any]
            let message = object?["message"] as? String ?? String(decoding: data.prefix(200), as: UTF8.self)
            let code = object?["error"] as? String ?? "error"
            throw Failure(description: "\(message) (HTTP \(response.statusCode) \(code))")
        }
        guard let json else { throw Failure(description: "the controller answered \(method) \(path) with a body that is not JSON") }
        return json
    }

    private func perform(_ request: URLRequest) throws -> (Data, HTTPURLResponse) {
        let semaphore = DispatchSemaphore(value: 0)
        nonisolated(unsafe) var outcome: Result<(Data, HTTPURLResponse), Error>?
        let task = URLSession.shared.dataTask(with: request) { data, response, error in
            if let error {
                outcome = .failure(Failure(description: "cannot reach the controller at \(baseURL.absoluteString): \(error.localizedDescription)"))
            } else if let response = response as? HTTPURLResponse {
                outcome = .success((data ?? Data(), response))
            } else {
                outcome = .failure(Failure(description: "no HTTP response from \(baseURL.absoluteString)"))
            }
            semaphore.signal()
        }
        task.resume()
        semaphore.wait()
        return try outcome!.get()
    }
}
