import Foundation
import Logging
import WarmpoolHTTP
import WarmpoolModel

/// What went wrong with one S3 call, after its retries.
public enum S3Error: Error, CustomStringConvertible, Equatable, Sendable {
    /// No such key (404 `NoSuchKey`) or bucket (`NoSuchBucket`).
    case notFound(key: String)
    /// The store answered with an error: status, S3's `<Code>` and `<Message>`.
    case rejected(status: Int, code: String, message: String)
    /// No answer: curl's error (refused, timed out, reset).
    case unreachable(String)
    /// An answer that is not what S3 sends (a list without keys, an upload without an id).
    case malformed(String)

    public var description: String {
        switch self {
        case .notFound(let key): "no object \(key)"
        case .rejected(let status, let code, let message): "S3 answered \(status) \(code): \(message)"
        case .unreachable(let detail): "S3 unreachable: \(detail)"
        case .malformed(let detail): "S3 answer not understood: \(detail)"
        }
    }
}

/// One object as a listing shows it.
public struct S3Object: Sendable, Hashable {
    public var key: String
    public var size: Int64
    /// The store's clock when the object was last written (nil if the listing did not say):
    /// what the snapshot locks compare, so that no host's clock decides whether a lock is stale.
    public var lastModified: Date?

    public init(key: String, size: Int64, lastModified: Date? = nil) {
        self.key = key
        self.size = size
        self.lastModified = lastModified
    }
}

/// A client for S3's object API (Amazon S3, Backblaze B2, Cloudflare R2 and other compatible
/// stores) over the shared libcurl client: SigV4 in the header, path-style or virtual-host
/// addressing, one prefix under which every key lives, multipart uploads for large objects, and
/// retries with backoff on 429, 5xx and transport errors. Every call holds at most one object or
/// part in memory.
public final class S3Client: Sendable {
    public struct Configuration: Sendable {
        /// `https://s3.us-west-004.backblazeb2.com`, `https://ACCOUNT.r2.cloudflarestorage.com`,
        /// `http://127.0.0.1:5000`: scheme, host and port, no path.
        public var endpoint: String
        public var region: String
        public var bucket: String
        /// Prepended to every key (`warmpool/pool-12/`); empty for none.
        public var prefix: String
        public var credentials: S3Credentials
        /// `bucket.host/key` instead of `host/bucket/key` (AWS's preference; B2 and R2 take both).
        public var virtualHostAddressing: Bool
        public var timeout: Duration
        /// Attempts per call, and the first wait between two (doubled each time).
        public var attempts: Int
        public var backoff: Duration

        public init(endpoint: String, region: String, bucket: String, prefix: String = "", credentials: S3Credentials,
                    virtualHostAddressing: Bool = false, timeout: Duration = .seconds(60), attempts: Int = 5,
                    backoff: Duration = .milliseconds(200))
        {
            self.endpoint = endpoint.hasSuffix("/") ? String(endpoint.dropLast()) : endpoint
            self.region = region
            self.bucket = bucket
            self.prefix = prefix
            self.credentials = credentials
            self.virtualHostAddressing = virtualHostAddressing
            self.timeout = timeout
            self.attempts = max(1, attempts)
            self.backoff = backoff
        }
    }

    public let configuration: Configuration
    private let http: HTTPClient
    private let signer: SigV4Signer
    private let logger: Logger

    public init(configuration: Configuration, http: HTTPClient, logger: Logger) {
        self.configuration = configuration
        self.http = http
        self.signer = SigV4Signer(credentials: configuration.credentials, region: configuration.region)
        self.logger = logger
    }

    // MARK: Objects

    public func put(_ key: String, _ bytes: [UInt8], contentType: String = "application/octet-stream") async throws {
        _ = try await call("PUT", key: key, headers: [("content-type", contentType)], body: Data(bytes))
    }

    /// The same, for a body that is already `Data` (a sealed chunk is): no copy on the way to curl.
    public func put(_ key: String, data: Data, contentType: String = "application/octet-stream") async throws {
        _ = try await call("PUT", key: key, headers: [("content-type", contentType)], body: data)
    }

    public func get(_ key: String) async throws -> [UInt8] {
        Array(try await call("GET", key: key).body)
    }

    /// The object as curl delivered it (no copy into an array).
    public func getData(_ key: String) async throws -> Data {
        try await call("GET", key: key).body
    }

    /// The object's size, or nil when there is none.
    public func size(of key: String) async throws -> Int64? {
        do {
            let response = try await call("GET", key: key, headers: [("range", "bytes=0-0")])
            if let range = response.headers["content-range"], let total = range.split(separator: "/").last.flatMap({ Int64($0) }) {
                return total
            }
            return Int64(response.body.count)
        } catch S3Error.notFound {
            return nil
        } catch S3Error.rejected(416, _, _) {
            return 0  // an empty object has no byte 0
        }
    }

    public func delete(_ key: String) async throws {
        _ = try await call("DELETE", key: key)
    }

    /// Every object whose key (under the configured prefix) starts with `prefix`, keys without
    /// the configured prefix, in key order.
    public func list(prefix: String = "") async throws -> [S3Object] {
        var objects: [S3Object] = []
        var token: String?
        repeat {
            var query = [("list-type", "2"), ("prefix", configuration.prefix + prefix)]
            if let token { query.append(("continuation-token", token)) }
            let response = try await call("GET", key: nil, query: query)
            let xml = String(decoding: response.body, as: UTF8.self)
            for contents in S3XML.elements("Contents", in: xml) {
                guard let key = S3XML.value("Key", in: contents), let size = S3XML.value("Size", in: contents).flatMap({ Int64($0) }) else {
                    throw S3Error.malformed("a listed object without a key or a size")
                }
                objects.append(S3Object(key: String(key.dropFirst(configuration.prefix.count)), size: size,
                                        lastModified: S3XML.value("LastModified", in: contents).flatMap(S3XML.timestamp)))
            }
            token = S3XML.value("IsTruncated", in: xml) == "true" ? S3XML.value("NextContinuationToken", in: xml) : nil
        } while token != nil
        return objects
    }

    /// Makes the bucket (for tests and first setup; `BucketAlreadyOwnedByYou` is success).
    public func createBucket() async throws {
        do {
            _ = try await call("PUT", key: nil, bucketOnly: true)
        } catch S3Error.rejected(_, "BucketAlreadyOwnedByYou", _) {}
    }

    // MARK: Multipart

    /// Uploads an object in parts (each but the last at least 5 MiB, S3's floor), pulling each
    /// part from `nextPart` as it goes: one part in memory at a time. An upload that fails is
    /// aborted, so no part is left to be billed.
    public func putMultipart(_ key: String, nextPart: () async throws -> [UInt8]?) async throws {
        let created = try await call("POST", key: key, query: [("uploads", "")])
        guard let uploadID = S3XML.value("UploadId", in: String(decoding: created.body, as: UTF8.self)) else {
            throw S3Error.malformed("CreateMultipartUpload without an UploadId")
        }
        do {
            var etags: [String] = []
            while let part = try await nextPart() {
                let number = etags.count + 1
                let response = try await call("PUT", key: key, query: [("partNumber", "\(number)"), ("uploadId", uploadID)], body: Data(part))
                guard let etag = response.headers["etag"] else { throw S3Error.malformed("part \(number) answered without an ETag") }
                etags.append(etag)
            }
            let parts = etags.enumerated().map { "<Part><PartNumber>\($0.offset + 1)</PartNumber><ETag>\(S3XML.escape($0.element))</ETag></Part>" }
            let body = Data("<CompleteMultipartUpload>\(parts.joined())</CompleteMultipartUpload>".utf8)
            let completed = try await call("POST", key: key, query: [("uploadId", uploadID)], headers: [("content-type", "application/xml")], body: body)
            // S3 may answer 200 with an error in the body when the completion fails late.
            let text = String(decoding: completed.body, as: UTF8.self)
            if text.contains("<Error>") {
                throw S3Error.rejected(status: 200, code: S3XML.value("Code", in: text) ?? "?", message: S3XML.value("Message", in: text) ?? text)
            }
        } catch {
            _ = try? await call("DELETE", key: key, query: [("uploadId", uploadID)])
            throw error
        }
    }

    // MARK: Calls

    private func call(_ method: String, key: String?, query: [(String, String)] = [], headers: [(String, String)] = [],
                      body: Data = Data(), bucketOnly: Bool = false) async throws -> HTTPResponse
    {
        let (url, host, path) = location(key: key)
        let payloadHash = body.isEmpty ? SigV4Signer.emptyPayloadHash : SigV4Signer.payloadHash(body)
        var headers = headers
        // Without one, curl labels a body a form (`application/x-www-form-urlencoded`), and a
        // server that parses forms eats the part.
        if !body.isEmpty, !headers.contains(where: { $0.0 == "content-type" }) {
            headers.append(("content-type", "application/octet-stream"))
        }
        var attempt = 0
        while true {
            attempt += 1
            let signed = signer.sign(method: method, host: host, path: path, query: query, headers: headers,
                                     payloadHash: payloadHash, date: Date())
            let queryString = query.map { $0.1.isEmpty && $0.0 == "uploads" ? "uploads" : "\(SigV4Signer.uriEncode($0.0, encodingSlash: true))=\(SigV4Signer.uriEncode($0.1, encodingSlash: true))" }
                .joined(separator: "&")
            let fullURL = queryString.isEmpty ? url : url + "?" + queryString
            let retryable: Bool
            let failure: S3Error
            do {
                let response = try await http.send(
                    method: method, url: fullURL, headers: (headers + signed).map { (name: $0.0, value: $0.1) },
                    body: method == "GET" ? nil : body, timeout: configuration.timeout)
                if response.isSuccess { return response }
                let text = String(decoding: response.body, as: UTF8.self)
                let code = S3XML.value("Code", in: text) ?? "HTTP\(response.status)"
                if response.status == 404, ["NoSuchKey", "NoSuchBucket", "HTTP404"].contains(code), !bucketOnly {
                    throw S3Error.notFound(key: key ?? "")
                }
                failure = .rejected(status: response.status, code: code, message: S3XML.value("Message", in: text) ?? text)
                retryable = response.status == 429 || response.status >= 500 || code == "SlowDown" || code == "RequestTimeout"
            } catch let error as HTTPTransportError {
                failure = .unreachable("\(error)")
                retryable = true
            }
            guard retryable, attempt < configuration.attempts else { throw failure }
            let wait = configuration.backoff * (1 << min(attempt - 1, 10))
            logger.notice("S3 call failed; retrying", metadata: [
                "s3.method": "\(method)", "s3.key": "\(key ?? "")", "s3.attempt": "\(attempt)", "s3.error": "\(failure)",
                "s3.retry_in_ms": "\(wait.components.seconds * 1000 + wait.components.attoseconds / 1_000_000_000_000_000)",
            ])
            try await Task.sleep(for: wait)
        }
    }

    /// The URL, the Host header and the decoded path for a key (nil: the bucket itself).
    private func location(key: String?) -> (url: String, host: String, path: String) {
        let schemeEnd = configuration.endpoint.range(of: "://")
        let scheme = schemeEnd.map { String(configuration.endpoint[..<$0.lowerBound]) } ?? "https"
        var host = schemeEnd.map { String(configuration.endpoint[$0.upperBound...]) } ?? configuration.endpoint
        let keyPath = key.map { "/" + configuration.prefix + $0 } ?? ""
        let path: String
        if configuration.virtualHostAddressing {
            host = configuration.bucket + "." + host
            path = keyPath.isEmpty ? "/" : keyPath
        } else {
            path = "/" + configuration.bucket + keyPath
        }
        return ("\(scheme)://\(host)\(SigV4Signer.uriEncode(path, encodingSlash: false))", host, path)
    }
}

/// Just enough XML for S3's answers: the text of an element, the bodies of repeated ones.
enum S3XML {
    static func value(_ tag: String, in xml: String) -> String? {
        guard let open = xml.range(of: "<\(tag)>"), let close = xml.range(of: "</\(tag)>", range: open.upperBound..<xml.endIndex) else {
            return nil
        }
        return unescape(String(xml[open.upperBound..<close.lowerBound]))
    }

    static func elements(_ tag: String, in xml: String) -> [String] {
        var found: [String] = []
        var rest = xml.startIndex..<xml.endIndex
        while let open = xml.range(of: "<\(tag)>", range: rest), let close = xml.range(of: "</\(tag)>", range: open.upperBound..<xml.endIndex) {
            found.append(String(xml[open.upperBound..<close.lowerBound]))
            rest = close.upperBound..<xml.endIndex
        }
        return found
    }

    static func unescape(_ text: String) -> String {
        guard text.contains("&") else { return text }
        return text.replacingOccurrences(of: "&quot;", with: "\"").replacingOccurrences(of: "&apos;", with: "'")
            .replacingOccurrences(of: "&lt;", with: "<").replacingOccurrences(of: "&gt;", with: ">")
            .replacingOccurrences(of: "&#34;", with: "\"").replacingOccurrences(of: "&amp;", with: "&")
    }

    /// `2026-12-04T12:30:00.000Z` (ListObjectsV2's LastModified; the fraction is optional), UTC.
    static func timestamp(_ text: String) -> Date? {
        let digits = Array(text.utf8)
        func number(_ range: Range<Int>) -> Int? {
            guard range.upperBound <= digits.count else { return nil }
            var value = 0
            for byte in digits[range] {
                guard byte >= UInt8(ascii: "0"), byte <= UInt8(ascii: "9") else { return nil }
                value = value * 10 + Int(byte - UInt8(ascii: "0"))
            }
            return value
        }
        guard digits.count >= 20, digits[4] == UInt8(ascii: "-"), digits[7] == UInt8(ascii: "-"), digits[10] == UInt8(ascii: "T"),
            digits[13] == UInt8(ascii: ":"), digits[16] == UInt8(ascii: ":"), digits.last == UInt8(ascii: "Z"),
            let year = number(0..<4), let month = number(5..<7), let day = number(8..<10), let hour = number(11..<13),
            let minute = number(14..<16), let second = number(17..<19)
        else { return nil }
        var fraction = 0.0
        if digits[19] == UInt8(ascii: ".") {
            let end = digits.count - 1
            guard end > 20, let value = number(20..<end) else { return nil }
            fraction = Double(value) / pow(10, Double(end - 20))
        } else if digits.count != 20 {
            return nil
        }
        guard let whole = Instant.utc(year: year, month: month, day: day, hour: hour, minute: minute, second: second) else { return nil }
        return Date(timeIntervalSince1970: whole.secondsSinceEpoch + fraction)
    }

    /// Text content: quotes stay as they are (an ETag is quoted, and S3 compares it as sent).
    static func escape(_ text: String) -> String {
        text.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;")
            .replacingOccurrences(of: ">", with: "&gt;")
    }
}
