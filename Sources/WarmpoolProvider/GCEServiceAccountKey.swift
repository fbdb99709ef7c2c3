import Foundation
import WarmpoolJSON

/// A Google service account's JSON key file, as the console or `gcloud iam service-accounts keys
/// create` hands it out (Protocol/GCE.md, "The service-account key file"). Only the fields the
/// JWT bearer grant needs are kept; the private key stays a PEM string so that it can be handed to
/// swift-crypto as is.
public struct ServiceAccountKey: Hashable, Sendable {
    public var projectID: String?
    /// Sent as the JWT header's `kid`, so Google knows which of the account's keys signed.
    public var privateKeyID: String
    /// PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`).
    public var privateKeyPEM: String
    /// The account's e-mail: the JWT's `iss`.
    public var clientEmail: String
    /// Where the signed JWT is exchanged for an access token; also the JWT's `aud`.
    public var tokenURI: String

    public init(projectID: String?, privateKeyID: String, privateKeyPEM: String, clientEmail: String, tokenURI: String) {
        self.projectID = projectID
        self.privateKeyID = privateKeyID
        self.privateKeyPEM = privateKeyPEM
        self.clientEmail = clientEmail
        self.tokenURI = tokenURI
    }

    /// Every way a key file can be unusable, each naming what is wrong, so an operator who pasted
    /// the wrong file (an OAuth client secret, a user credential) learns it at start.
    public enum ParseError: Error, Hashable, Sendable, CustomStringConvertible {
        case unreadable(path: String, reason: String)
        case notJSON(String)
        case notAnObject
        /// `type` is not `service_account` (nil: absent).
        case wrongType(String?)
        case missingField(String)
        case fieldNotAString(String)
        case invalidPrivateKey(String)
        case invalidTokenURI(String)

        public var description: String {
            switch self {
            case .unreadable(let path, let reason): "service account key \(path): cannot read it: \(reason)"
            case .notJSON(let detail): "service account key: not JSON: \(detail)"
            case .notAnObject: "service account key: the file must hold one JSON object"
            case .wrongType(let type):
                "service account key: \"type\" is \(type.map { "\"\($0)\"" } ?? "missing"), expected \"service_account\" "
                    + "(a user or OAuth client credential cannot sign a JWT bearer grant)"
            case .missingField(let name): "service account key: \"\(name)\" is missing or empty"
            case .fieldNotAString(let name): "service account key: \"\(name)\" must be a string"
            case .invalidPrivateKey(let detail): "service account key: \"private_key\" is not a PEM private key: \(detail)"
            case .invalidTokenURI(let uri): "service account key: \"token_uri\" \(uri) is not an http(s) URL"
            }
        }
    }

    public init(contentsOfFile path: String) throws(ParseError) {
        let data: Data
        do {
            data = try Data(contentsOf: URL(fileURLWithPath: path))
        } catch {
            throw .unreadable(path: path, reason: "\(error.localizedDescription)")
        }
        try self.init(json: data)
    }

    public init(json data: Data) throws(ParseError) {
        let value: JSONValue
        do {
            value = try JSONValue.parse([UInt8](data))
        } catch {
            throw .notJSON("\(error)")
        }
        guard value.objectValue != nil else { throw .notAnObject }
        func string(_ name: String, required: Bool = true) throws(ParseError) -> String? {
            guard let member = value[name], member != .null else {
                if required { throw .missingField(name) }
                return nil
            }
            guard let text = member.stringValue else { throw .fieldNotAString(name) }
            if required && text.isEmpty { throw .missingField(name) }
            return text
        }
        let type = try string("type", required: false)
        guard type == "service_account" else { throw .wrongType(type) }
        projectID = try string("project_id", required: false)
        privateKeyID = try string("private_key_id")!
        privateKeyPEM = try string("private_key")!
        clientEmail = try string("client_email")!
        tokenURI = try string("token_uri")!
        guard privateKeyPEM.contains("-----BEGIN PRIVATE KEY-----") || privateKeyPEM.contains("-----BEGIN RSA PRIVATE KEY-----") else {
            throw .invalidPrivateKey("no \"-----BEGIN PRIVATE KEY-----\" block")
        }
        guard let url = URL(string: tokenURI), url.scheme == "https" || url.scheme == "http", url.host != nil else {
            throw .invalidTokenURI(tokenURI)
        }
    }
}
