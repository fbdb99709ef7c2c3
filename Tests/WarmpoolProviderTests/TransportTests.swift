import Foundation
import Logging
import Testing
@testable import WarmpoolProvider

#if canImport(Glibc)
import Glibc
#endif

/// VastClient against a real HTTP server on loopback: every failure mode gives its precise error.
@Suite struct TransportTests {
    static let offerJSON = #"{"offers": [{"id": 7701, "machine_id": 77, "gpu_name": "RTX 4090", "num_gpus": 1, "dph_total": 0.45, "reliability": 0.99, "verified": true, "geolocation": "US"}]}"#

    static func client(_ baseURL: String, attempts: Int = 3, timeout: Duration = .seconds(5)) -> VastClient {
        var logger = Logger(label: "test.provider")
        logger.logLevel = .critical
        return VastClient(
            configuration: .init(baseURL: baseURL, apiKey: "test-key", timeout: timeout, connectTimeout: .seconds(2),
                                 retry: RetryPolicy(maxAttempts: attempts, initialBackoff: .milliseconds(20))),
            logger: logger)
    }

    static func expectError(_ expected: ProviderError, _ body: () async throws -> Void) async {
        do {
            try await body()
            Issue.record("expected \(expected), got success")
        } catch let error as ProviderError {
            #expect(error == expected)
        } catch {
            Issue.record("expected \(expected), got \(error)")
        }
    }

    @Test func a429WithRetryAfterIsWaitedOutThenRetried() async throws {
        try await ScriptedServer.with({ _, attempt in
            attempt == 1 ? ScriptedAnswer(status: 429, body: #"{"msg": "slow down"}"#, retryAfter: "1") : ScriptedAnswer(body: Self.offerJSON)
        }) { url, server in
            let started = ContinuousClock.now
            let offers = try await Self.client(url).searchOffers(OfferQuery())
            let elapsed = ContinuousClock.now - started
            #expect(offers.map(\.id) == [7701])
            #expect(server.requests.count == 2)
            #expect(elapsed >= .milliseconds(950), "Retry-After: 1 must be honoured, waited \(elapsed)")
            #expect(elapsed < .seconds(3))
        }
    }

    @Test func aRetryAfterOverSixtySecondsEndsTheRetriesAtOnce() async throws {
        try await ScriptedServer.with({ _, _ in ScriptedAnswer(status: 429, body: #"{"msg": "come back tomorrow"}"#, retryAfter: "120") }) {
            url, server in
            let client = Self.client(url)
            do {
                _ = try await client.searchOffers(OfferQuery())
                Issue.record("expected a 429")
            } catch let error as ProviderError {
                guard case .http(429, let message) = error else { Issue.record("\(error)"); return }
                #expect(message.hasPrefix("come back tomorrow; the provider asks to wait 120 s (Retry-After), until "), "\(message)")
            }
            #expect(server.requests.count == 1)
            // Nothing more is sent to that endpoint before the provider's time: the next call says so at once.
            do {
                _ = try await client.searchOffers(OfferQuery())
                Issue.record("expected a refusal without a request")
            } catch let error as ProviderError {
                #expect(error.message.hasPrefix("rate limited: the provider asked us to wait, no search_offers call for another"), "\(error)")
            }
            #expect(server.requests.count == 1, "held back, not sent")
            #expect(client.rateLimited == ["search_offers": 1])
        }
    }

    @Test func fourTwentyNinesWithoutRetryAfterWidenTheSpacingOfThatEndpoint() async throws {
        try await ScriptedServer.with({ _, attempt in
            attempt <= 2 ? ScriptedAnswer(status: 429, body: "API requests too frequent: endpoint threshold=0.5") : ScriptedAnswer(body: Self.offerJSON)
        }) { url, server in
            let client = Self.client(url, attempts: 3)
            let started = ContinuousClock.now
            let offers = try await client.searchOffers(OfferQuery())
            #expect(offers.map(\.id) == [7701])
            let elapsed = ContinuousClock.now - started
            #expect(server.requests.count == 3)
            // Spacing after the first 429: 500 ms, after the second: 1 s (the backoff runs inside it).
            #expect(elapsed >= .milliseconds(1400), "paced: \(elapsed)")
            #expect(client.rateLimited == ["search_offers": 2])
        }
    }

    @Test func fiveHundredsAreRetriedUntilTheAttemptsRunOut() async throws {
        try await ScriptedServer.with({ _, _ in ScriptedAnswer(status: 503, body: #"{"error": "unavailable", "msg": "maintenance"}"#) }) {
            url, server in
            await Self.expectError(.http(status: 503, message: "maintenance")) {
                try await Self.client(url, attempts: 4).startInstance(id: 1001)
            }
            #expect(server.requests.count == 4)
        }
    }

    @Test func aCreateIsNotResentAfterAFiveHundred() async throws {
        // The server may have rented the offer before failing: a second PUT could rent two.
        try await ScriptedServer.with({ _, _ in ScriptedAnswer(status: 502, body: "<html>bad gateway</html>", contentType: "text/html") }) {
            url, server in
            await Self.expectError(.http(status: 502, message: "<html>bad gateway</html>")) {
                _ = try await Self.client(url).createInstance(offerID: 7701, CreateInstanceRequest(image: "img"))
            }
            #expect(server.requests.count == 1)
        }
    }

    @Test func successFalseIsARejectionCarryingTheMessage() async throws {
        try await ScriptedServer.with({ _, _ in ScriptedAnswer(body: #"{"success": false, "msg": "Instance 1001 is not stopped."}"#) }) {
            url, server in
            await Self.expectError(.rejected(message: "Instance 1001 is not stopped.")) {
                try await Self.client(url).startInstance(id: 1001)
            }
            #expect(server.requests.count == 1)
        }
    }

    @Test func malformedBodiesNameWhatWasWrong() async throws {
        try await ScriptedServer.with({ request, _ in
            switch request.path {
            case "/api/v0/bundles/": ScriptedAnswer(body: #"{"offers": [{"id": 1, "gpu_name": "x"}]}"#)
            case "/api/v0/volumes": ScriptedAnswer(body: #"{"volumes": "#)
            default: ScriptedAnswer(body: #"{"instances": {"id": "not a number"}}"#)
            }
        }) { url, _ in
            let client = Self.client(url)
            await Self.expectError(.malformedResponse(what: "offers: missing offers[0].machine_id")) {
                _ = try await client.searchOffers(OfferQuery())
            }
            await Self.expectError(.malformedResponse(what: #"HTTP 200 body is not a JSON object: {"volumes": "#)) {
                _ = try await client.listVolumes()
            }
            await Self.expectError(.malformedResponse(what: "instance 5: instances.id: expected a number or a numeric string")) {
                _ = try await client.instance(id: 5)
            }
        }
    }

    @Test func numbersAndBooleansMayArriveAsStrings() async throws {
        let body = #"{"offers": [{"id": "7702", "machine_id": "77", "gpu_name": "RTX 4090", "num_gpus": "2", "gpu_frac": "0.5", "dph_total": "0.90", "reliability2": "0.985", "verified": "true", "rentable": 1, "geolocation": "DE"}]}"#
        try await ScriptedServer.with({ _, _ in ScriptedAnswer(body: body) }) { url, _ in
            let offer = try #require(try await Self.client(url).searchOffers(OfferQuery()).first)
            #expect(offer == Offer(id: 7702, machineID: 77, gpuName: "RTX 4090", numGPUs: 2, gpuFraction: 0.5, pricePerHour: 0.9,
                                   reliability: 0.985, verified: true, rentable: true, rented: nil, geolocation: "DE"))
        }
    }

    @Test func aSlowServerTimesOut() async throws {
        try await ScriptedServer.with({ _, _ in ScriptedAnswer(body: "{}", delay: .seconds(2)) }) { url, server in
            let started = ContinuousClock.now
            do {
                _ = try await Self.client(url, attempts: 2, timeout: .milliseconds(300)).listVolumes()
                Issue.record("expected a timeout")
            } catch let ProviderError.transport(code, message) {
                #expect(code == ProviderError.curlTimeout, "\(message)")
            }
            #expect(server.requests.count == 2, "a timed-out GET is retried")
            #expect(ContinuousClock.now - started < .seconds(2))
        }
    }

    @Test func aClosedPortIsConnectionRefused() async throws {
        let port = try Self.closedPort()
        do {
            _ = try await Self.client("http://127.0.0.1:\(port)").listInstances()
            Issue.record("expected connection refused")
        } catch let ProviderError.transport(code, message) {
            #expect(code == ProviderError.curlCouldNotConnect, "\(message)")
            #expect(ProviderError.transport(curlCode: code, message: message).description.contains("curl 7"))
        }
    }

    @Test func requestsCarryTheCLIsShapes() async throws {
        try await ScriptedServer.with({ request, _ in
            switch (request.method, request.path) {
            case ("PUT", "/api/v0/asks/7701/"): ScriptedAnswer(body: #"{"success": true, "new_contract": "1001"}"#)
            case ("GET", "/api/v1/instances/"): ScriptedAnswer(body: #"{"instances": [], "next_token": null}"#)
            default: ScriptedAnswer(body: #"{"success": true}"#)
            }
        }) { url, server in
            let client = Self.client(url)
            let request = CreateInstanceRequest(image: "pytorch/pytorch", diskGB: 40, label: "wp-77-standby",
                                                env: ["WARMPOOL_AGENT_SECRET": "s3cr3t"], onstart: "echo hi",
                                                volume: .init(volumeID: 5001))
            #expect(try await client.createInstance(offerID: 7701, request) == 1001)
            try await client.destroyInstance(id: 1001)
            try await client.deleteVolume(id: 5001)
            _ = try await client.listInstances()
            let recorded = server.requests
            #expect(recorded.allSatisfy { $0.authorization == "Bearer test-key" })
            let create = try #require(recorded.first)
            #expect(create.contentType == "application/json")
            let body = try #require(try JSONSerialization.jsonObject(with: Data(create.body.utf8)) as? [String: Any])
            #expect(body["client_id"] as? String == "me")
            #expect((body["env"] as? [String: String]) == ["WARMPOOL_AGENT_SECRET": "s3cr3t"])
            let volume = try #require(body["volume_info"] as? [String: Any])
            #expect(volume["mount_path"] as? String == "/data" && volume["volume_id"] as? Int == 5001)
            #expect(volume["create_new"] as? Bool == false)
            #expect(recorded[1].method == "DELETE" && recorded[1].path == "/api/v0/instances/1001/" && recorded[1].body == "{}")
            #expect(recorded[2].path == "/api/v0/volumes/" && recorded[2].query == "id=5001" && recorded[2].body == "{}")
            #expect(recorded[3].query == "select_filters=%7B%7D&order_by=%5B%7B%22col%22%3A%22id%22%2C%22dir%22%3A%22asc%22%7D%5D&limit=25")
            #expect(recorded[3].contentType == nil, "GET carries no body")
            // The secret is in the body only, never in what the request says of itself.
            #expect(!request.description.contains("s3cr3t") && request.description.contains("WARMPOOL_AGENT_SECRET"))
        }
    }

    @Test func aMissingInstanceIsNil() async throws {
        try await ScriptedServer.with({ request, _ in
            request.path.hasPrefix("/api/v0/instances/404") ? ScriptedAnswer(status: 404, body: #"{"msg": "no such instance"}"#)
                : ScriptedAnswer(body: #"{"instances": null}"#)
        }) { url, _ in
            let missing = try await Self.client(url).instance(id: 77)
            let gone = try await Self.client(url).instance(id: 404)
            #expect(missing == nil && gone == nil)
        }
    }

    /// A loopback port nothing listens on.
    static func closedPort() throws -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        _ = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        return Int(UInt16(bigEndian: address.sin_port))
    }
}
