import Crypto
import Foundation

/// An access key pair for an S3-compatible store (AWS S3, Backblaze B2, Cloudflare R2, ...).
public struct S3Credentials: Sendable, Hashable {
    public var accessKeyID: String
    public var secretAccessKey: String
    /// Only for temporary credentials (STS); sent as `x-amz-security-token`.
    public var sessionToken: String?

    public init(accessKeyID: String, secretAccessKey: String, sessionToken: String? = nil) {
        self.accessKeyID = accessKeyID
        self.secretAccessKey = secretAccessKey
        self.sessionToken = sessionToken
    }
}

/// AWS Signature Version 4 for S3 requests, header form (AWS docs: "Authenticating Requests:
/// Using the Authorization Header"). Pure: the time is passed in. Checked against the documented
/// S3 examples and, on random requests, against botocore's signer.
public struct SigV4Signer: Sendable {
    public var credentials: S3Credentials
    public var region: String
    public var service: String

    public init(credentials: S3Credentials, region: String, service: String = "s3") {
        self.credentials = credentials
        self.region = region
        self.service = service
    }

    /// The SHA-256 of an empty payload, as S3 wants it for bodiless requests.
    public static let emptyPayloadHash = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"

    public static func payloadHash(_ bytes: some DataProtocol) -> String { hex(SHA256.hash(data: bytes)) }

    /// The headers to send with the request: `x-amz-date`, `x-amz-content-sha256`,
    /// `x-amz-security-token` (with a session token) and `authorization`. `path` is the decoded
    /// path (`/bucket/key with spaces`); `headers` are the other headers to sign (`host` is
    /// added from `host`).
    public func sign(method: String, host: String, path: String, query: [(String, String)], headers: [(String, String)] = [],
                     payloadHash: String, date: Date) -> [(String, String)]
    {
        let (amzDate, day) = Self.timestamps(date)
        var signed: [(String, String)] = headers + [("host", host), ("x-amz-date", amzDate), ("x-amz-content-sha256", payloadHash)]
        if let token = credentials.sessionToken { signed.append(("x-amz-security-token", token)) }
        let canonical = Self.canonicalRequest(method: method, path: path, query: query, headers: signed, payloadHash: payloadHash)
        let scope = "\(day)/\(region)/\(service)/aws4_request"
        let stringToSign = "AWS4-HMAC-SHA256\n\(amzDate)\n\(scope)\n\(Self.hex(SHA256.hash(data: Array(canonical.request.utf8))))"
        var key = SymmetricKey(data: Array("AWS4\(credentials.secretAccessKey)".utf8))
        for part in [day, region, service, "aws4_request"] {
            key = SymmetricKey(data: Data(HMAC<SHA256>.authenticationCode(for: Array(part.utf8), using: key)))
        }
        let signature = Self.hex(HMAC<SHA256>.authenticationCode(for: Array(stringToSign.utf8), using: key))
        let authorization = "AWS4-HMAC-SHA256 Credential=\(credentials.accessKeyID)/\(scope),SignedHeaders=\(canonical.signedHeaders),Signature=\(signature)"
        return signed.filter { $0.0 != "host" && !headers.map(\.0).contains($0.0) } + [("authorization", authorization)]
    }

    /// The canonical request and its signed header list.
    static func canonicalRequest(method: String, path: String, query: [(String, String)], headers: [(String, String)],
                                 payloadHash: String) -> (request: String, signedHeaders: String)
    {
        let encoded: [(name: String, value: String)] = query.map { pair in
            (uriEncode(pair.0, encodingSlash: true), uriEncode(pair.1, encodingSlash: true))
        }
        let sorted = encoded.sorted { a, b in a.name != b.name ? a.name < b.name : a.value < b.value }
        let canonicalQuery = sorted.map { pair in pair.name + "=" + pair.value }.joined(separator: "&")
        var merged: [String: [String]] = [:]
        for (name, value) in headers {
            let trimmed = value.split(whereSeparator: { $0 == " " || $0 == "\t" }).joined(separator: " ")
            merged[name.lowercased(), default: []].append(trimmed)
        }
        let names = merged.keys.sorted()
        let canonicalHeaders = names.map { "\($0):\(merged[$0]!.joined(separator: ","))\n" }.joined()
        let signedHeaders = names.joined(separator: ";")
        let canonicalPath = uriEncode(path.isEmpty ? "/" : path, encodingSlash: false)
        let lines: [String] = [method, canonicalPath, canonicalQuery, canonicalHeaders, signedHeaders, payloadHash]
        let request = lines.joined(separator: "\n")
        return (request, signedHeaders)
    }

    /// RFC 3986 percent-encoding of everything but the unreserved characters (`/` kept in paths):
    /// S3 encodes each path once, unlike other services.
    public static func uriEncode(_ text: String, encodingSlash: Bool) -> String {
        var out = ""
        out.reserveCapacity(text.utf8.count)
        for byte in text.utf8 {
            switch byte {
            case UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "0")...UInt8(ascii: "9"),
                UInt8(ascii: "-"), UInt8(ascii: "."), UInt8(ascii: "_"), UInt8(ascii: "~"):
                out.unicodeScalars.append(UnicodeScalar(byte))
            case UInt8(ascii: "/") where !encodingSlash:
                out += "/"
            default:
                out += "%" + String(byte, radix: 16, uppercase: true).leftPadded(to: 2)
            }
        }
        return out
    }

    /// `20130524T000000Z` and `20130524`, UTC.
    static func timestamps(_ date: Date) -> (String, String) {
        var seconds = time_t(date.timeIntervalSince1970.rounded(.down))
        var parts = tm()
        gmtime_r(&seconds, &parts)
        func two(_ value: Int32) -> String { String(value).leftPadded(to: 2) }
        let day = "\(parts.tm_year + 1900)\(two(parts.tm_mon + 1))\(two(parts.tm_mday))"
        return ("\(day)T\(two(parts.tm_hour))\(two(parts.tm_min))\(two(parts.tm_sec))Z", day)
    }

    static func hex(_ bytes: some Sequence<UInt8>) -> String {
        let digits = Array("0123456789abcdef".utf8)
        var out: [UInt8] = []
        for byte in bytes { out += [digits[Int(byte >> 4)], digits[Int(byte & 15)]] }
        return String(decoding: out, as: UTF8.self)
    }
}

extension String {
    fileprivate func leftPadded(to width: Int) -> String {
        count >= width ? self : String(repeating: "0", count: width - count) + self
    }
}
