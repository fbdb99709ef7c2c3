import _CryptoExtras
import Foundation
import WarmpoolJSON

/// The JWT of Google's OAuth 2.0 "server to server" flow (RFC 7523 JWT bearer grant; Protocol/GCE.md,
/// "The JWT bearer grant"): header `{"alg":"RS256","typ":"JWT","kid":…}`, claims `iss`, `scope`,
/// `aud` (the key file's `token_uri`), `iat`, `exp`, each part base64url without padding, signed
/// with RSASSA-PKCS1-v1_5 over SHA-256.
public enum GCEJWT {
    /// Read and write Compute Engine resources.
    public static let computeScope = "https://www.googleapis.com/auth/compute"
    /// Google refuses an assertion that lives longer than an hour.
    public static let maximumLifetimeSeconds: Int64 = 3600

    public struct SigningError: Error, Hashable, Sendable, CustomStringConvertible {
        public var description: String
    }

    /// The header and claims, as JSON text, in the order Google's documentation shows them.
    public static func header(key: ServiceAccountKey) -> JSONValue {
        ["alg": "RS256", "typ": "JWT", "kid": .string(key.privateKeyID)]
    }

    public static func claims(key: ServiceAccountKey, scope: String, issuedAt: Int64) -> JSONValue {
        ["iss": .string(key.clientEmail), "scope": .string(scope), "aud": .string(key.tokenURI),
         "exp": .int(issuedAt + maximumLifetimeSeconds), "iat": .int(issuedAt)]
    }

    /// `header.claims.signature`, signed now (`issuedAt`, seconds since the epoch).
    public static func assertion(key: ServiceAccountKey, scope: String = computeScope, issuedAt: Int64) throws(SigningError) -> String {
        let privateKey: _RSA.Signing.PrivateKey
        do {
            privateKey = try _RSA.Signing.PrivateKey(pemRepresentation: key.privateKeyPEM)
        } catch {
            throw SigningError(description: "service account key \(key.privateKeyID): private_key is not an RSA key of 2048 bits or more: \(error)")
        }
        return try assertion(key: key, privateKey: privateKey, scope: scope, issuedAt: issuedAt)
    }

    public static func assertion(key: ServiceAccountKey, privateKey: _RSA.Signing.PrivateKey, scope: String = computeScope,
                                 issuedAt: Int64) throws(SigningError) -> String
    {
        let signingInput = base64URL(header(key: key).serialized()) + "." + base64URL(claims(key: key, scope: scope, issuedAt: issuedAt).serialized())
        let signature: _RSA.Signing.RSASignature
        do {
            // RS256 is PKCS#1 v1.5 (RFC 7518 §3.3); swift-crypto calls it insecure only because PSS is preferred for new designs.
            signature = try privateKey.signature(for: Data(signingInput.utf8), padding: .insecurePKCS1v1_5)
        } catch {
            throw SigningError(description: "signing the JWT failed: \(error)")
        }
        return signingInput + "." + base64URL(signature.rawRepresentation)
    }

    /// RFC 4648 §5 without padding (RFC 7515 §2).
    public static func base64URL<Bytes: Sequence<UInt8>>(_ bytes: Bytes) -> String {
        var text = Data(bytes).base64EncodedString()
        text = text.replacingOccurrences(of: "+", with: "-").replacingOccurrences(of: "/", with: "_")
        while text.hasSuffix("=") { text.removeLast() }
        return text
    }

    /// The inverse, for tests and for reading tokens: nil when `text` is not base64url.
    public static func decodeBase64URL(_ text: String) -> Data? {
        guard text.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "-" || $0 == "_") }) else { return nil }
        var standard = text.replacingOccurrences(of: "-", with: "+").replacingOccurrences(of: "_", with: "/")
        while standard.count % 4 != 0 { standard += "=" }
        return Data(base64Encoded: standard)
    }
}
