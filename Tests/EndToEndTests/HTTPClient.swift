import Foundation
import WarmpoolJSON

#if canImport(FoundationNetworking)
import FoundationNetworking
#endif

/// A blocking HTTP call for tests: status, content type and body.
struct HTTPAnswer {
    var status: Int
    var contentType: String?
    var body: [UInt8]
    var text: String { String(decoding: body, as: UTF8.self) }

    /// The body as a JSON object; an empty one when it is not one.
    var json: JSONValue {
        (try? JSONValue.parse(body)).flatMap { value in value.objectValue.map { _ in value } } ?? [:]
    }
}

func http(_ method: String, _ url: String, key: String?, body: String? = nil, scheme: String = "Bearer",
          headers: [String: String] = [:]) throws -> HTTPAnswer {
    guard let target = URL(string: url) else { throw HarnessError("bad URL \(url)") }
    var request = URLRequest(url: target, timeoutInterval: 30)
    request.httpMethod = method
    for (name, value) in headers { request.setValue(value, forHTTPHeaderField: name) }
    if let key { request.setValue("\(scheme) \(key)", forHTTPHeaderField: "Authorization") }
    if let body {
        request.httpBody = Data(body.utf8)
        request.setValue("application/json", forHTTPHeaderField: "Content-Type")
    }
    let semaphore = DispatchSemaphore(value: 0)
    nonisolated(unsafe) var result: Result<HTTPAnswer, Error>?
    URLSession.shared.dataTask(with: request) { data, response, error in
        if let error {
            result = .failure(error)
        } else if let response = response as? HTTPURLResponse {
            result = .success(HTTPAnswer(
                status: response.statusCode, contentType: response.value(forHTTPHeaderField: "Content-Type"),
                body: Array(data ?? Data())))
        } else {
            result = .failure(HarnessError("no HTTP response from \(url)"))
        }
        semaphore.signal()
    }.resume()
    semaphore.wait()
    return try result!.get()
}
