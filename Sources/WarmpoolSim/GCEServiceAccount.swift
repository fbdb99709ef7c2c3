import _CryptoExtras
import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// The one service account of the emulated project, made at start (RSA-2048), and Google's OAuth
/// 2.0 token endpoint for it: the JWT bearer grant checked as Google documents it (Protocol/GCE.md,
/// "The JWT bearer grant"), access tokens handed out and checked on every Compute Engine call.
/// Written apart from the client's JWT code, so that the two check each other.
struct GCEServiceAccount {
    let project: String
    let email: String
    let keyID: String
    let clientID: String
    private let privateKey: _RSA.Signing.PrivateKey
    let tokenLifetime: Duration
    /// Set once the server is bound (the key file's `token_uri`, the JWT's expected `aud`).
    var tokenURI = ""
    /// Access tokens handed out, and when each ends (the sim's monotonic clock).
    private var tokens: [String: ContinuousClock.Instant] = [:]
    /// How far the JWT's `iat` may be ahead of our clock. Google documents none: a guess.
    static let clockSkew: Int64 = 300

    init(project: String, tokenLifetime: Duration) throws {
        self.project = project
        email = "warmpool-sim@\(project).iam.gserviceaccount.com"
        keyID = Self.hex(bytes: 20)
        // 21 decimal digits, as Google's are.
        clientID = "1" + (0..<20).map { _ in String(Int.random(in: 0...9)) }.joined()
        privateKey = try _RSA.Signing.PrivateKey(keySize: .bits2048)
        self.tokenLifetime = tokenLifetime
    }

    /// The key file, with the fields and layout of one the console hands out.
    func keyFile() -> Data {
        let fields: [(String, String)] = [
            ("type", "service_account"), ("project_id", project), ("private_key_id", keyID),
            ("private_key", privateKey.pkcs8PEMRepresentation), ("client_email", email), ("client_id", clientID),
            ("auth_uri", "https://accounts.google.com/o/oauth2/auth"), ("token_uri", tokenURI),
            ("auth_provider_x509_cert_url", "https://www.googleapis.com/oauth2/v1/certs"),
            ("client_x509_cert_url", "https://www.googleapis.com/robot/v1/metadata/x509/" + email.replacingOccurrences(of: "@", with: "%40")),
            ("universe_domain", "googleapis.com"),
        ]
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.withoutEscapingSlashes]
        let lines = fields.map { key, value in
            "  \"\(key)\": " + String(decoding: (try? encoder.encode(value)) ?? Data(), as: UTF8.self)
        }
        return Data(("{\n" + lines.joined(separator: ",\n") + "\n}\n").utf8)
    }

    // MARK: The token endpoint

    /// `POST /token` with `grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer&assertion=JWT`.
    /// Refusals are OAuth's shape (RFC 6749 §5.2), `400 {"error", "error_description"}`, with the
    /// descriptions Google gives.
    mutating func token(form body: Data, now: ContinuousClock.Instant, wallSeconds: Int64) -> SimResponse {
        let form = SimRequest.parseQuery(String(decoding: body, as: UTF8.self))
        guard let grant = form["grant_type"], !grant.isEmpty else {
            return Self.oauthError("invalid_request", "Required parameter is missing: grant_type")
        }
        guard grant == "urn:ietf:params:oauth:grant-type:jwt-bearer" else {
            return Self.oauthError("unsupported_grant_type", "Invalid grant_type: \(grant)")
        }
        guard let assertion = form["assertion"], !assertion.isEmpty else {
            return Self.oauthError("invalid_request", "Required parameter is missing: assertion")
        }
        switch verify(assertion, wallSeconds: wallSeconds) {
        case .failure(let refusal):
            return Self.oauthError(refusal.error, refusal.description)
        case .success:
            let token = "ya29." + Self.base64URL(Data((0..<48).map { _ in UInt8.random(in: 0...255) }))
            tokens = tokens.filter { $0.value > now }
            tokens[token] = now + tokenLifetime
            let seconds = tokenLifetime.components.seconds
            return .ok(["access_token": .string(token), "expires_in": JSON(Int(seconds)), "token_type": "Bearer"])
        }
    }

    struct Refusal: Error {
        var error: String
        var description: String
    }

    /// The checks Google documents for the assertion: RS256 over `header.claims` with the account's
    /// key, `iss` the account, `aud` the token endpoint, `scope` present, `exp` at most an hour
    /// after `iat`, and now between the two.
    func verify(_ assertion: String, wallSeconds: Int64) -> Result<Void, Refusal> {
        let parts = assertion.split(separator: ".", omittingEmptySubsequences: false).map(String.init)
        guard parts.count == 3, let headerBytes = Self.decodeBase64URL(parts[0]), let claimBytes = Self.decodeBase64URL(parts[1]),
            let signatureBytes = Self.decodeBase64URL(parts[2]),
            let header = try? JSON.parse(headerBytes).objectValue, let claims = try? JSON.parse(claimBytes).objectValue
        else {
            return .failure(Refusal(error: "invalid_grant", description: "Invalid JWT: the assertion is not three base64url parts of JSON"))
        }
        guard header["alg"]?.stringValue == "RS256" else {
            return .failure(Refusal(error: "invalid_grant", description: "Invalid JWT Signature."))
        }
        let signed = Data((parts[0] + "." + parts[1]).utf8)
        guard privateKey.publicKey.isValidSignature(_RSA.Signing.RSASignature(rawRepresentation: signatureBytes), for: signed,
                                                    padding: .insecurePKCS1v1_5)
        else {
            return .failure(Refusal(error: "invalid_grant", description: "Invalid JWT Signature."))
        }
        guard claims["iss"]?.stringValue == email else {
            return .failure(Refusal(error: "invalid_grant", description: "Invalid grant: account not found"))
        }
        guard claims["aud"]?.stringValue == tokenURI else {
            return .failure(Refusal(error: "invalid_grant", description: "Invalid JWT: audience must be \(tokenURI)"))
        }
        guard let scope = claims["scope"]?.stringValue, !scope.isEmpty else {
            return .failure(Refusal(error: "invalid_scope", description: "Invalid OAuth scope or ID token audience provided."))
        }
        guard let iat = claims["iat"]?.intValue, let exp = claims["exp"]?.intValue, exp > iat, exp - iat <= 3600,
            Int64(iat) <= wallSeconds + Self.clockSkew, Int64(exp) > wallSeconds
        else {
            return .failure(Refusal(error: "invalid_grant", description:
                "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe. Check your iat and exp values in the JWT claim."))
        }
        return .success(())
    }

    // MARK: Bearer tokens

    /// nil when `authorization` carries a live token of ours; else Google's 401, saying why in
    /// Google's words.
    func refusal(authorization: String?, now: ContinuousClock.Instant) -> SimResponse? {
        guard let authorization, authorization.hasPrefix("Bearer "), authorization.count > 7 else {
            return GCEErrors.error(401, "Request is missing required authentication credential. Expected OAuth 2 access token, login cookie or other valid authentication credential. See https://developers.google.com/identity/sign-in/web/devconsole-project.",
                                   reason: "required", status: "UNAUTHENTICATED", itemMessage: "Login Required.", location: ("Authorization", "header"))
        }
        let token = String(authorization.dropFirst(7))
        guard let end = tokens[token], end > now else {
            return GCEErrors.error(401, "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other valid authentication credential. See https://developers.google.com/identity/sign-in/web/devconsole-project.",
                                   reason: "authError", status: "UNAUTHENTICATED", itemMessage: "Invalid Credentials", location: ("Authorization", "header"))
        }
        return nil
    }

    // MARK: Encoding

    static func oauthError(_ error: String, _ description: String) -> SimResponse {
        SimResponse(status: 400, body: ["error": .string(error), "error_description": .string(description)])
    }

    static func base64URL(_ data: Data) -> String {
        data.base64EncodedString().replacingOccurrences(of: "+", with: "-").replacingOccurrences(of: "/", with: "_")
            .replacingOccurrences(of: "=", with: "")
    }

    /// Unpadded base64url only, as RFC 7515 §2 requires: padding or the standard alphabet is refused.
    static func decodeBase64URL(_ text: String) -> Data? {
        guard text.utf8.allSatisfy({ isalnum(Int32($0)) != 0 || $0 == UInt8(ascii: "-") || $0 == UInt8(ascii: "_") }) else { return nil }
        var standard = text.replacingOccurrences(of: "-", with: "+").replacingOccurrences(of: "_", with: "/")
        while standard.utf8.count % 4 != 0 { standard += "=" }
        return Data(base64Encoded: standard)
    }

    static func hex(bytes: Int) -> String {
        (0..<bytes).map { _ in String(format: "%02x", UInt8.random(in: 0...255)) }.joined()
    }
}

/// Google's error body, `{"error": {"code", "message", "errors": [{"message", "domain", "reason"}], "status"}}`.
enum GCEErrors {
    static func error(_ code: Int, _ message: String, reason: String, status: String, itemMessage: String? = nil,
                      location: (String, String)? = nil) -> SimResponse
    {
        var item: [String: JSON] = ["message": .string(itemMessage ?? message), "domain": "global", "reason": .string(reason)]
        if let location {
            item["location"] = .string(location.0)
            item["locationType"] = .string(location.1)
        }
        return SimResponse(status: code, body: ["error": ["code": JSON(code), "message": .string(message), "errors": [.object(item)],
                                                          "status": .string(status)]])
    }

    static func notFound(_ resource: String) -> SimResponse {
        error(404, "The resource '\(resource)' was not found", reason: "notFound", status: "NOT_FOUND")
    }

    static func invalid(_ message: String) -> SimResponse {
        error(400, message, reason: "invalid", status: "INVALID_ARGUMENT")
    }
}
