import _CryptoExtras
import Foundation
import Logging
import Synchronization
import Testing
import WarmpoolModel
@testable import WarmpoolProvider

/// One RSA-2048 service account for the whole file: key generation is the slow part.
enum TestAccount {
    static let privateKey = try! _RSA.Signing.PrivateKey(keySize: .bits2048)

    static func key(tokenURI: String = "https://oauth2.googleapis.com/token") -> ServiceAccountKey {
        ServiceAccountKey(projectID: "warmpool-test", privateKeyID: "0123456789abcdef0123456789abcdef01234567",
                          privateKeyPEM: privateKey.pkcs8PEMRepresentation,
                          clientEmail: "standby@warmpool-test.iam.gserviceaccount.com", tokenURI: tokenURI)
    }

    static func keyFile(_ fields: [String: Any]) -> Data {
        try! JSONSerialization.data(withJSONObject: fields)
    }

    static var validFields: [String: Any] {
        ["type": "service_account", "project_id": "warmpool-test", "private_key_id": "abc123",
         "private_key": privateKey.pkcs8PEMRepresentation, "client_email": "standby@warmpool-test.iam.gserviceaccount.com",
         "client_id": "1234567890", "auth_uri": "https://accounts.google.com/o/oauth2/auth",
         "token_uri": "https://oauth2.googleapis.com/token", "universe_domain": "googleapis.com"]
    }
}

/// One JWT part, base64url-decoded and read as a JSON object.
func jwtPart(_ text: String) throws -> [String: Any] {
    let bytes = try #require(GCEJWT.decodeBase64URL(text))
    return try #require(JSONSerialization.jsonObject(with: bytes) as? [String: Any])
}

final class ManualWallClock: WallClock, @unchecked Sendable {
    private let lock = NSLock()
    private var current: Instant
    init(_ start: Instant = .seconds(1_700_000_000)) { current = start }
    func now() -> Instant { lock.withLock { current } }
    func advance(_ duration: Duration) { lock.withLock { current = current + duration } }
}

@Suite struct GCEJWTTests {
    @Test func base64URLHasNoPaddingAndURLAlphabet() {
        #expect(GCEJWT.base64URL([0xFB, 0xFF]) == "-_8")
        #expect(GCEJWT.base64URL([0xFB, 0xFF, 0xBF]) == "-_-_")
        #expect(GCEJWT.base64URL(Array("a".utf8)) == "YQ")
        #expect(GCEJWT.base64URL([UInt8]()) == "")
        for length in 0..<40 {
            let bytes = (0..<length).map { _ in UInt8.random(in: 0...255) }
            let text = GCEJWT.base64URL(bytes)
            #expect(!text.contains("=") && !text.contains("+") && !text.contains("/"))
            #expect(GCEJWT.decodeBase64URL(text) == Data(bytes))
        }
        #expect(GCEJWT.decodeBase64URL("ab+c") == nil)
    }

    @Test func assertionHasGooglesHeaderAndClaimsAndVerifies() throws {
        let key = TestAccount.key()
        let jwt = try GCEJWT.assertion(key: key, scope: GCEJWT.computeScope, issuedAt: 1_700_000_000)
        let parts = jwt.split(separator: ".", omittingEmptySubsequences: false).map(String.init)
        #expect(parts.count == 3)
        let header = try jwtPart(parts[0])
        #expect(header["alg"] as? String == "RS256")
        #expect(header["typ"] as? String == "JWT")
        #expect(header["kid"] as? String == key.privateKeyID)
        let claims = try jwtPart(parts[1])
        #expect(claims["iss"] as? String == "standby@warmpool-test.iam.gserviceaccount.com")
        #expect(claims["scope"] as? String == "https://www.googleapis.com/auth/compute")
        #expect(claims["aud"] as? String == "https://oauth2.googleapis.com/token")
        #expect(claims["iat"] as? Int == 1_700_000_000)
        #expect(claims["exp"] as? Int == 1_700_003_600)
        #expect(Set(claims.keys) == ["iss", "scope", "aud", "iat", "exp"])
        let signature = _RSA.Signing.RSASignature(rawRepresentation: try #require(GCEJWT.decodeBase64URL(parts[2])))
        #expect(signature.rawRepresentation.count == 256)
        let publicKey = TestAccount.privateKey.publicKey
        #expect(publicKey.isValidSignature(signature, for: Data((parts[0] + "." + parts[1]).utf8), padding: .insecurePKCS1v1_5))
        // Not PSS, and not over anything else.
        #expect(!publicKey.isValidSignature(signature, for: Data((parts[0] + "." + parts[1]).utf8), padding: .PSS))
        #expect(!publicKey.isValidSignature(signature, for: Data((parts[0] + "." + parts[1] + "x").utf8), padding: .insecurePKCS1v1_5))
        let other = try _RSA.Signing.PrivateKey(keySize: .bits2048).publicKey
        #expect(!other.isValidSignature(signature, for: Data((parts[0] + "." + parts[1]).utf8), padding: .insecurePKCS1v1_5))
    }

    @Test func aKeyThatIsNotRSAIsASigningError() {
        var key = TestAccount.key()
        key.privateKeyPEM = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"
        #expect(throws: GCEJWT.SigningError.self) { try GCEJWT.assertion(key: key, issuedAt: 0) }
    }
}

@Suite struct ServiceAccountKeyTests {
    @Test func parsesAConsoleKeyFile() throws {
        let key = try ServiceAccountKey(json: TestAccount.keyFile(TestAccount.validFields))
        #expect(key.projectID == "warmpool-test")
        #expect(key.privateKeyID == "abc123")
        #expect(key.clientEmail == "standby@warmpool-test.iam.gserviceaccount.com")
        #expect(key.tokenURI == "https://oauth2.googleapis.com/token")
        #expect(key.privateKeyPEM.hasPrefix("-----BEGIN PRIVATE KEY-----"))
    }

    @Test func eachDefectHasItsOwnError() {
        func parse(_ change: (inout [String: Any]) -> Void) -> ServiceAccountKey.ParseError? {
            var fields = TestAccount.validFields
            change(&fields)
            do {
                _ = try ServiceAccountKey(json: TestAccount.keyFile(fields))
                return nil
            } catch {
                return error
            }
        }
        #expect(parse { $0["type"] = "authorized_user" } == .wrongType("authorized_user"))
        #expect(parse { $0["type"] = nil } == .wrongType(nil))
        #expect(parse { $0["client_email"] = nil } == .missingField("client_email"))
        #expect(parse { $0["private_key_id"] = "" } == .missingField("private_key_id"))
        #expect(parse { $0["token_uri"] = nil } == .missingField("token_uri"))
        #expect(parse { $0["private_key"] = 42 } == .fieldNotAString("private_key"))
        #expect(parse { $0["private_key"] = "not a key" } == .invalidPrivateKey("no \"-----BEGIN PRIVATE KEY-----\" block"))
        #expect(parse { $0["token_uri"] = "oauth2.googleapis.com/token" } == .invalidTokenURI("oauth2.googleapis.com/token"))
        #expect(throws: ServiceAccountKey.ParseError.notAnObject) { try ServiceAccountKey(json: Data("[1]".utf8)) }
        #expect(throws: ServiceAccountKey.ParseError.self) { try ServiceAccountKey(json: Data("{\"type\":".utf8)) }
        #expect(throws: ServiceAccountKey.ParseError.self) { try ServiceAccountKey(contentsOfFile: "/nonexistent/key.json") }
        #expect(ServiceAccountKey.ParseError.wrongType("authorized_user").description.contains("expected \"service_account\""))
    }
}

@Suite struct GCEShapesTests {
    @Test func googleErrorBodies() {
        func body(_ status: Int, _ reason: String?, _ message: String, _ text: String) -> Data {
            let errors = reason.map { #"[{"message": "\#(message)", "domain": "usageLimits", "reason": "\#($0)"}]"# } ?? "[]"
            return Data(#"{"error": {"code": \#(status), "message": "\#(message)", "errors": \#(errors), "status": "\#(text)"}}"#.utf8)
        }
        let limited = GoogleErrorBody(body: body(403, "rateLimitExceeded", "Rate Limit Exceeded", "PERMISSION_DENIED"))
        #expect(limited.reason == "rateLimitExceeded")
        #expect(limited.retryStatus(403) == 429)
        #expect(limited.providerError(status: 403).isTransient)
        let denied = GoogleErrorBody(body: body(403, "forbidden", "Required 'compute.instances.create' permission", "PERMISSION_DENIED"))
        #expect(denied.retryStatus(403) == 403)
        #expect(denied.providerError(status: 403) == .http(status: 403, message: "Required 'compute.instances.create' permission [forbidden, PERMISSION_DENIED]"))
        #expect(!denied.providerError(status: 403).isTransient)
        let missing = GoogleErrorBody(body: body(404, "notFound", "The resource 'projects/p/zones/z/instances/x' was not found", "NOT_FOUND"))
        #expect(missing.providerError(status: 404) == .notFound(what: "The resource 'projects/p/zones/z/instances/x' was not found [notFound, NOT_FOUND]"))
        let exists = GoogleErrorBody(body: body(409, "alreadyExists", "The resource 'projects/p/zones/z/instances/x' already exists", "ALREADY_EXISTS"))
        #expect(exists.reason == "alreadyExists")
        let backend = GoogleErrorBody(body: body(500, "backendError", "Internal error", "INTERNAL"))
        #expect(backend.retryStatus(500) == 503)
        #expect(backend.providerError(status: 500).isTransient)
        let plain = GoogleErrorBody(body: Data("<html>Bad Gateway</html>".utf8))
        #expect(plain.message == "<html>Bad Gateway</html>")
        #expect(GoogleErrorBody(body: Data()).message == "(no detail message supplied)")
    }

    static let instanceJSON = #"""
        {"kind": "compute#instance", "id": "18446744073709551557", "name": "wp-standby-12", "status": "TERMINATED",
         "machineType": "https://www.googleapis.com/compute/v1/projects/p/zones/us-central1-a/machineTypes/e2-small",
         "labels": {"warmpool-pool": "12"},
         "networkInterfaces": [{"networkIP": "10.128.0.7", "accessConfigs": [{"type": "ONE_TO_ONE_NAT", "name": "External NAT"}]}]}
        """#

    @Test func instanceAndStatuses() throws {
        let instance = try GCEClient.decodeInstance(try .parse(Self.instanceJSON))
        #expect(instance.id == 18_446_744_073_709_551_557)
        #expect(instance.status == .terminated && instance.status.isStopped)
        #expect(instance.machineType == "e2-small")
        #expect(instance.internalIP == "10.128.0.7")
        #expect(instance.externalIP == nil)  // a stopped VM's ephemeral address is released
        #expect(instance.labels == ["warmpool-pool": "12"])
        for raw in ["PROVISIONING", "STAGING", "RUNNING", "STOPPING", "SUSPENDING", "SUSPENDED", "REPAIRING", "TERMINATED", "PENDING"] {
            #expect(CPUInstanceStatus(rawValue: raw).rawValue == raw)
        }
        #expect(CPUInstanceStatus(rawValue: "PENDING") == .other("PENDING"))
        #expect(!CPUInstanceStatus.running.isStopped)
        #expect(throws: ProviderError.self) { try GCEClient.decodeInstance(try .parse(#"{"name": "x", "id": "-1", "status": "RUNNING"}"#)) }
    }

    @Test func operationErrorsAreRejections() throws {
        try GCEClient.checkOperation(try .parse(#"{"kind": "compute#operation", "status": "RUNNING"}"#))
        let failed = #"{"status": "DONE", "targetLink": "https://x/instances/wp-1", "error": {"errors": [{"code": "ZONE_RESOURCE_POOL_EXHAUSTED", "message": "The zone does not have enough resources"}]}}"#
        #expect(throws: ProviderError.rejected(message: "ZONE_RESOURCE_POOL_EXHAUSTED: The zone does not have enough resources (wp-1)")) {
            try GCEClient.checkOperation(try .parse(failed))
        }
    }

    @Test func insertBodyHasGooglesShape() throws {
        let configuration = GCEConfiguration(project: "p", zone: "us-central1-a", key: TestAccount.key())
        let spec = CPUInstanceSpec(name: "wp-1", machineType: "e2-small", diskSizeGB: 20, labels: ["warmpool-pool": "12"],
                                   metadata: [.init(key: "startup-script", value: "echo hi"), .init(key: "ssh-keys", value: "root:ssh-ed25519 AAAA x")])
        let body = GCEClient.insertBody(spec, configuration)
        #expect(body["machineType"] == "zones/us-central1-a/machineTypes/e2-small")
        let disk = body["disks"]?.arrayValue?.first
        #expect(disk?["boot"] == true && disk?["autoDelete"] == true)
        #expect(disk?["initializeParams"]?["diskSizeGb"] == "20")
        #expect(disk?["initializeParams"]?["sourceImage"] == "projects/debian-cloud/global/images/family/debian-12")
        #expect(body["networkInterfaces"]?.arrayValue?.first?["accessConfigs"]?.arrayValue?.first?["type"] == "ONE_TO_ONE_NAT")
        #expect(body["metadata"]?["items"]?.arrayValue?.map { $0["key"]?.stringValue ?? "" } == ["startup-script", "ssh-keys"])
        #expect(body["labels"]?["warmpool-pool"] == "12")
        #expect(GCEClient.percentEncode("labels.warmpool-pool=12") == "labels.warmpool-pool%3D12")
    }

    @Test func prices() throws {
        let prices = GCEPrices.usCentral1
        #expect(abs(try prices.monthlyStopped(diskGB: 20) - 2.0) < 1e-9)
        #expect(abs(try prices.monthlyStopped(diskGB: 20, diskType: "pd-standard") - 0.8) < 1e-9)
        #expect(abs(try prices.monthlyRunning(machineType: "e2-small", diskGB: 10) - ((0.016751 + 0.005) * 730 + 1.0)) < 1e-9)
        #expect(try prices.monthlyRunning(machineType: "e2-micro", diskGB: 10) < (try prices.monthlyRunning(machineType: "e2-medium", diskGB: 10)))
        #expect(throws: GCEPrices.UnknownPrice(what: "machine type n2-standard-64")) {
            try prices.monthlyRunning(machineType: "n2-standard-64", diskGB: 10)
        }
    }
}

@Suite struct GCETokenSourceTests {
    actor Exchanges {
        var assertions: [String] = []
        func record(_ assertion: String) -> Int {
            assertions.append(assertion)
            return assertions.count
        }
    }

    @Test func cachesRefreshesAheadAndSharesOneExchange() async throws {
        let clock = ManualWallClock()
        let exchanges = Exchanges()
        let source = GCETokenSource(key: TestAccount.key(), clock: clock) { assertion, tokenURI in
            #expect(tokenURI == "https://oauth2.googleapis.com/token")
            let n = await exchanges.record(assertion)
            try await Task.sleep(for: .milliseconds(50))
            return GCEAccessToken(value: "ya29.token-\(n)", lifetimeSeconds: 3600)
        }
        // Ten callers at once: one exchange.
        let tokens = try await withThrowingTaskGroup(of: String.self) { group in
            for _ in 0..<10 { group.addTask { try await source.token() } }
            return try await group.reduce(into: [String]()) { $0.append($1) }
        }
        #expect(Set(tokens) == ["ya29.token-1"])
        #expect(await exchanges.assertions.count == 1)
        clock.advance(.seconds(3000))
        #expect(try await source.token() == "ya29.token-1")
        // Five minutes before expiry it is replaced.
        clock.advance(.seconds(301))
        #expect(try await source.token() == "ya29.token-2")
        // The assertion carries the clock's time.
        let second = await exchanges.assertions[1].split(separator: ".")[1]
        let claims = try jwtPart(String(second))
        #expect(claims["iat"] as? Int == 1_700_003_301)
        // A 401's token is dropped; a stale invalidation of an older one is not.
        await source.invalidate("ya29.token-1")
        #expect(try await source.token() == "ya29.token-2")
        await source.invalidate("ya29.token-2")
        #expect(try await source.token() == "ya29.token-3")
    }

    @Test func aShortLivedTokenIsKeptForHalfItsLife() async throws {
        let clock = ManualWallClock()
        let count = Mutex(0)
        let source = GCETokenSource(key: TestAccount.key(), clock: clock) { _, _ in
            let n = count.withLock { $0 += 1; return $0 }
            return GCEAccessToken(value: "t\(n)", lifetimeSeconds: 10)
        }
        #expect(try await source.token() == "t1")
        clock.advance(.seconds(4))
        #expect(try await source.token() == "t1")
        clock.advance(.seconds(1))
        #expect(try await source.token() == "t2")
    }
}

/// The client against a real HTTP server on loopback, the token endpoint included.
@Suite struct GCEClientTransportTests {
    static func client(_ baseURL: String, attempts: Int = 3) -> GCEClient {
        var logger = Logger(label: "test.gce")
        logger.logLevel = .critical
        return GCEClient(configuration: GCEConfiguration(
            project: "p", zone: "us-central1-a", baseURL: baseURL + "/compute/v1", key: TestAccount.key(tokenURI: baseURL + "/token"),
            timeout: .seconds(5), connectTimeout: .seconds(2), retry: RetryPolicy(maxAttempts: attempts, initialBackoff: .milliseconds(10))),
            logger: logger)
    }

    static func token(_ n: Int) -> ScriptedAnswer { ScriptedAnswer(body: #"{"access_token": "ya29.t\#(n)", "expires_in": 3599, "token_type": "Bearer"}"#) }
    static let operation = ScriptedAnswer(body: #"{"kind": "compute#operation", "name": "operation-1", "status": "RUNNING"}"#)
    static func googleError(_ status: Int, _ reason: String, _ message: String) -> ScriptedAnswer {
        ScriptedAnswer(status: status, body: #"{"error": {"code": \#(status), "message": "\#(message)", "errors": [{"message": "\#(message)", "domain": "global", "reason": "\#(reason)"}], "status": "X"}}"#)
    }

    @Test func aRefusedTokenIsRefreshedOnceAndTheCallRetried() async throws {
        let tokens = Mutex(0)
        _ = try await ScriptedServer.with({ request, _ in
            if request.path == "/token" {
                #expect(request.contentType == "application/x-www-form-urlencoded")
                #expect(request.body.hasPrefix("grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&assertion=ey"))
                return Self.token(tokens.withLock { $0 += 1; return $0 })
            }
            if request.authorization == "Bearer ya29.t1" {
                return Self.googleError(401, "authError", "Request had invalid authentication credentials.")
            }
            return ScriptedAnswer(body: GCEShapesTests.instanceJSON)
        }) { base, server in
            let instance = try await Self.client(base).instance(named: "wp-standby-12")
            #expect(instance?.status == .terminated)
            #expect(server.requests.map(\.path) == ["/token", "/compute/v1/projects/p/zones/us-central1-a/instances/wp-standby-12", "/token",
                                                    "/compute/v1/projects/p/zones/us-central1-a/instances/wp-standby-12"])
        }
    }

    @Test func aSecond401IsAnError() async throws {
        _ = try await ScriptedServer.with({ request, attempt in
            request.path == "/token" ? Self.token(attempt) : Self.googleError(401, "authError", "Request had invalid authentication credentials.")
        }) { base, _ in
            await #expect(throws: ProviderError.http(status: 401, message: "Request had invalid authentication credentials. [authError, X]")) {
                try await Self.client(base).startInstance(named: "wp-1")
            }
        }
    }

    @Test func idempotentInsertAndDelete() async throws {
        _ = try await ScriptedServer.with({ request, _ in
            if request.path == "/token" { return Self.token(1) }
            if request.path.hasSuffix("/instances") { return Self.googleError(409, "alreadyExists", "The resource 'projects/p/zones/us-central1-a/instances/wp-1' already exists") }
            return Self.googleError(404, "notFound", "The resource 'projects/p/zones/us-central1-a/instances/wp-1' was not found")
        }) { base, server in
            let client = Self.client(base)
            try await client.insertInstance(CPUInstanceSpec(name: "wp-1", machineType: "e2-small", diskSizeGB: 10))
            try await client.deleteInstance(named: "wp-1")
            #expect(try await client.instance(named: "wp-1") == nil)
            await #expect(throws: ProviderError.self) { try await client.stopInstance(named: "wp-1") }
            #expect(server.requests.filter { $0.path == "/token" }.count == 1)
            let insert = try #require(server.requests.first { $0.method == "POST" && $0.path.hasSuffix("/instances") })
            #expect(insert.contentType == "application/json")
            #expect(insert.body.contains(#""name":"wp-1""#))
        }
    }

    @Test func operationErrorRateLimitsAndListFilter() async throws {
        let stops = Mutex(0)
        _ = try await ScriptedServer.with({ request, _ in
            if request.path == "/token" { return Self.token(1) }
            if request.path.hasSuffix("/start") {
                return ScriptedAnswer(body: #"{"kind": "compute#operation", "status": "DONE", "error": {"errors": [{"code": "ZONE_RESOURCE_POOL_EXHAUSTED", "message": "no capacity"}]}}"#)
            }
            if request.path.hasSuffix("/stop") {
                return stops.withLock { $0 += 1; return $0 } < 3 ? Self.googleError(403, "rateLimitExceeded", "Rate Limit Exceeded") : Self.operation
            }
            #expect(request.query?.hasPrefix("filter=labels.warmpool-pool%3D12") == true)
            return ScriptedAnswer(body: #"{"kind": "compute#instanceList", "items": [\#(GCEShapesTests.instanceJSON)]}"#)
        }) { base, server in
            let client = Self.client(base)
            await #expect(throws: ProviderError.rejected(message: "ZONE_RESOURCE_POOL_EXHAUSTED: no capacity")) {
                try await client.startInstance(named: "wp-1")
            }
            try await client.stopInstance(named: "wp-1")  // two 403 rateLimitExceeded, then served
            #expect(server.requests.filter { $0.path.hasSuffix("/stop") }.count == 3)
            // "The request body must be empty."
            #expect(server.requests.filter { $0.path.hasSuffix("/stop") }.allSatisfy { $0.body.isEmpty && $0.contentType == nil })
            let listed = try await client.listInstances(labelKey: "warmpool-pool", value: "12")
            #expect(listed.map(\.name) == ["wp-standby-12"])
        }
    }

    @Test func tokenEndpointRefusalIsPrecise() async throws {
        _ = try await ScriptedServer.with({ _, _ in
            ScriptedAnswer(status: 400, body: #"{"error": "invalid_grant", "error_description": "Invalid JWT Signature."}"#)
        }) { base, _ in
            await #expect(throws: ProviderError.http(status: 400, message: "token endpoint refused the service account's JWT: invalid_grant: Invalid JWT Signature.")) {
                try await Self.client(base).instance(named: "wp-1")
            }
        }
    }
}
