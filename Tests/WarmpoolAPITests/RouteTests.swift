import Foundation
import Hummingbird
import HummingbirdTesting
import Testing
import WarmpoolAPI
import WarmpoolStore

/// Every route, and every kind of bad input, through the router without a network.
@Suite struct AuthTests {
    static let protectedRoutes: [(HTTPRequest.Method, String)] = [
        (.get, "/api/v1/warmpool/status/1"), (.get, "/api/v1/warmpool/hosts"), (.post, "/api/v1/warmpool/provision"),
        (.post, "/api/v1/warmpool/enable/1"), (.post, "/api/v1/warmpool/disable/1"),
        (.post, "/api/v1/warmpool/failover/test/1"), (.delete, "/api/v1/warmpool/cleanup/1"),
        (.get, "/api/v1/warmpool/pools"), (.get, "/api/v1/warmpool/history/1"), (.get, "/api/v1/warmpool/events/1"),
        (.get, "/api/v1/warmpool/settings/1"), (.put, "/api/v1/warmpool/settings/1"), (.get, "/api/v1/warmpool/agents"),
        (.post, "/api/v1/warmpool/agents"), (.delete, "/api/v1/warmpool/agents/a"), (.get, "/api/v1/keys"),
        (.post, "/api/v1/keys"), (.delete, "/api/v1/keys/abcd0123"), (.get, "/metrics"), (.post, "/api/v1/warmpool/repair/1"),
    ]

    @Test func healthzNeedsNoKey() async throws {
        let fixture = try await APIFixture()
        try await fixture.application.test(.router) { client in
            try await client.execute(uri: "/healthz", method: .get) { response in
                #expect(response.status == .ok)
                #expect(response.json == .object([("status", .string("ok"))]))
            }
        }
    }

    @Test func everyOtherRouteRefusesMissingWrongAndRevokedKeys() async throws {
        let fixture = try await APIFixture()
        let revoked = APIKeys.mint(name: "old")
        try await fixture.store.addAPIKey(revoked.record)
        _ = try await fixture.store.revokeAPIKey(id: revoked.record.id, at: Date())
        let wrong = APIKeys.mint(name: "never stored").plaintext
        let headers: [String?] = [nil, "Bearer", "Bearer ", "Basic \(fixture.key)", "Bearer \(wrong)", "Bearer \(revoked.plaintext)", "Bearer \(fixture.key)x"]
        try await fixture.application.test(.router) { client in
            for (method, path) in Self.protectedRoutes {
                for header in headers {
                    var fields = HTTPFields()
                    if let header { fields[.authorization] = header }
                    try await client.execute(uri: path, method: method, headers: fields) { response in
                        #expect(response.status == .unauthorized, "\(method) \(path) with \(header ?? "no header")")
                        #expect(response.json["error"] == .string("unauthorized"))
                        #expect(response.headers[.contentType] == "application/json")
                    }
                }
            }
        }
    }

    @Test func unknownRoutesAnswerAJSON404() async throws {
        let fixture = try await APIFixture()
        try await fixture.application.test(.router) { client in
            try await client.execute(uri: "/api/v1/warmpool/nothing-here", method: .get, headers: fixture.auth) { response in
                #expect(response.status == .notFound)
                #expect(response.json["error"] == .string("not_found"))
            }
        }
    }
}

@Suite struct PoolRouteTests {
    @Test func statusHasEveryFieldOfTheReference() async throws {
        let fixture = try await APIFixture()
        let failedAt = Date(timeIntervalSince1970: 1_800_000_000)
        try await fixture.store.savePool(PoolRecord(
            poolID: 12, hostMachineID: 77, state: .active, volumeID: 5, primaryInstanceID: 456790, standbyInstanceID: 456791,
            standbyState: .stopped, primarySSHHost: "10.1.2.3", primarySSHPort: 22022, failoverCount: 1, lastFailoverAt: failedAt, epoch: 2))
        try await fixture.application.test(.router) { client in
            try await client.execute(uri: "/api/v1/warmpool/status/12", method: .get, headers: fixture.auth) { response in
                #expect(response.status == .ok)
                let json = response.json
                #expect(json["machine_id"] == .int(12))
                #expect(json["state"] == .string("active"))
                #expect(json["host_machine_id"] == .int(77))
                #expect(json["volume_id"] == .int(5))
                #expect(json["primary_gpu_id"] == .int(456790))
                #expect(json["standby_gpu_id"] == .int(456791))
                #expect(json["standby_state"] == .string("stopped"))
                #expect(json["primary_ssh_host"] == .string("10.1.2.3"))
                #expect(json["primary_ssh_port"] == .int(22022))
                #expect(json["last_health_check"] == .null)
                #expect(json["failover_count"] == .int(1))
                #expect(json["last_failover_at"] == .string("2027-01-15T08:00:00.000Z"))
                #expect(json["error_message"] == .null)
            }
        }
    }

    @Test(arguments: ["abc", "-1", "1.5", "99999999999999999999"])
    func aMalformedMachineIDIsA400(_ id: String) async throws {
        let fixture = try await APIFixture()
        try await fixture.application.test(.router) { client in
            try await client.execute(uri: "/api/v1/warmpool/status/\(id)", method: .get, headers: fixture.auth) { response in
                #expect(response.status == .badRequest)
                #expect(response.json["message"] == .string("machine_id must be a non-negative integer, got \"\(id)\""))
            }
        }
    }

    @Test func unknownMachinesAre404EverywhereAndListsStartEmpty() async throws {
        let fixture = try await APIFixture()
        try await fixture.application.test(.router) { client in
            for (method, path) in [
                (HTTPRequest.Method.get, "status/9"), (.post, "enable/9"), (.post, "disable/9"), (.post, "failover/test/9"),
                (.delete, "cleanup/9"), (.get, "settings/9"), (.get, "history/9"), (.get, "events/9"),
            ] {
                try await client.execute(uri: "/api/v1/warmpool/\(path)", method: method, headers: fixture.auth) { response in
                    #expect(response.status == .notFound, "\(method) \(path)")
                    #expect(response.json["error"] == .string("not_found"))
                }
            }
            try await client.execute(uri: "/api/v1/warmpool/pools", method: .get, headers: fixture.auth) { response in
                #expect(response.json == .object([("pools", .array([])), ("count", .int(0))]))
            }
        }
    }

    @Test func enableAndDisableAnswerTheReferenceShapesAndSwitchTheStrategy() async throws {
        let fixture = try await APIFixture()
        try await fixture.store.savePool(PoolRecord(poolID: 3, state: .active, primaryInstanceID: 1, standbyInstanceID: 2, standbyState: .stopped))
        try await fixture.application.test(.router) { client in
            try await client.execute(uri: "/api/v1/warmpool/disable/3", method: .post, headers: fixture.auth) { response in
                #expect(response.status == .ok)
                let json = response.json
                #expect(json["status"] == .string("disabled"))
                #expect(json["fallback"] == .string("cpu_standby"))
                if case .string = json["message"] {} else { Issue.record("message missing") }
            }
            #expect(try await fixture.store.pool(id: 3)?.strategy == .cpuStandby)
            #expect(try await fixture.store.pool(id: 3)?.state == .disabled)
            try await client.execute(uri: "/api/v1/warmpool/enable/3", method: .post, headers: fixture.auth) { response in
                #expect(response.status == .ok)
                #expect(response.json["status"] == .string("enabled"))
            }
            #expect(try await fixture.store.pool(id: 3)?.state == .active)
        }
    }

    @Test func routesThatNeedTheProviderSayItIsNotConfigured() async throws {
        let fixture = try await APIFixture()
        try await fixture.store.savePool(PoolRecord(poolID: 3, state: .active))
        try await fixture.application.test(.router) { client in
            for (method, path, payload) in [
                (HTTPRequest.Method.get, "hosts", ""), (.post, "provision", #"{"machine_id": 3, "host_machine_id": 77}"#),
                (.post, "failover/test/3", ""), (.delete, "cleanup/3", ""),
            ] {
                try await client.execute(uri: "/api/v1/warmpool/\(path)", method: method, headers: fixture.authWith(), body: body(payload)) { response in
                    #expect(response.status == .serviceUnavailable, "\(path)")
                    #expect(response.json["error"] == .string("provider_not_configured"))
                }
            }
        }
    }

    @Test(arguments: [
        ("{", "malformed_json"),
        ("[1,2]", "bad_request"),
        (#"{"host_machine_id": 77}"#, "bad_request"),
        (#"{"machine_id": "12", "host_machine_id": 77}"#, "bad_request"),
        (#"{"machine_id": 12.5, "host_machine_id": 77}"#, "bad_request"),
        (#"{"machine_id": 12, "host_machine_id": 77, "disk_size": 0}"#, "bad_request"),
        (#"{"machine_id": 12, "host_machine_id": 77, "volume_size": true}"#, "bad_request"),
        (#"{"machine_id": 12, "host_machine_id": 77, "image": "two words"}"#, "bad_request"),
        (#"{"machine_id": 12, "machine_id": 13, "host_machine_id": 77}"#, "malformed_json"),
        (String(repeating: "[", count: 100_000), "body_too_large"),
        (String(repeating: "[", count: 1000), "malformed_json"),
    ])
    func provisionRefusesBadBodiesWithA4xxNamingTheProblem(_ payload: String, _ code: String) async throws {
        let fixture = try await APIFixture()
        try await fixture.application.test(.router) { client in
            try await client.execute(uri: "/api/v1/warmpool/provision", method: .post, headers: fixture.authWith(), body: body(payload)) { response in
                #expect((400..<500).contains(response.status.code), "\(payload.prefix(60))")
                #expect(response.json["error"] == .string(code), "\(payload.prefix(60))")
            }
        }
    }

    @Test(arguments: [
        "min_gpus=0", "min_gpus=two", "max_price=-1", "max_price=nan", "verified=maybe", "gpu_name=",
    ])
    func hostsRefusesBadQueries(_ query: String) async throws {
        let fixture = try await APIFixture()
        try await fixture.application.test(.router) { client in
            try await client.execute(uri: "/api/v1/warmpool/hosts?\(query)", method: .get, headers: fixture.auth) { response in
                #expect(response.status == .badRequest, "\(query)")
            }
        }
    }

    @Test func settingsCanBeReadAndChangedAndBadValuesAreRefused() async throws {
        let fixture = try await APIFixture()
        try await fixture.application.test(.router) { client in
            try await client.execute(
                uri: "/api/v1/warmpool/settings/5", method: .put, headers: fixture.authWith(),
                body: body(#"{"strategy": "cpu_standby", "gpu_preferences": ["RTX 4090", "A100"], "volume_size_gb": 200}"#)
            ) { response in
                #expect(response.status == .ok)
                #expect(response.json == .object([
                    ("machine_id", .int(5)), ("strategy", .string("cpu_standby")),
                    ("gpu_preferences", .array([.string("RTX 4090"), .string("A100")])), ("volume_size_gb", .int(200)),
                ]))
            }
            for (payload, message) in [
                (#"{"strategy": "gpu_cold_pool"}"#, "strategy must be one of gpu_warm_pool, cpu_standby, disabled, got \"gpu_cold_pool\""),
                (#"{"volume_size_gb": 0}"#, "volume_size_gb must be from 1 to 65536, got 0"),
                (#"{"volume_size_gb": "100"}"#, "volume_size_gb must be an integer, found a string"),
                (#"{"gpu_preferences": "A100"}"#, "gpu_preferences must be an array of at most 16 strings"),
                (#"{"strategy": "disabled", "colour": "blue"}"#, "unknown field \"colour\"; expected one of gpu_preferences, strategy, volume_size_gb"),
            ] {
                try await client.execute(uri: "/api/v1/warmpool/settings/5", method: .put, headers: fixture.authWith(), body: body(payload)) { response in
                    #expect(response.status == .badRequest)
                    #expect(response.json["message"] == .string(message))
                }
            }
            try await client.execute(uri: "/api/v1/warmpool/settings/5", method: .get, headers: fixture.auth) { response in
                #expect(response.json["strategy"] == .string("cpu_standby"))
                #expect(response.json["volume_size_gb"] == .int(200))
            }
        }
    }

    @Test func historyCarriesEachFailoverWithItsTimedSteps() async throws {
        let fixture = try await APIFixture()
        let start = Date(timeIntervalSince1970: 1_800_000_000)
        var failover = FailoverRecord(id: "fo-12-1", poolID: 12, reason: "primary failed: silent 350 ms", oldPrimaryInstanceID: 1, epoch: 2, startedAt: start)
        failover.result = .succeeded
        failover.newPrimaryInstanceID = 2
        failover.finishedAt = start.addingTimeInterval(14.2)
        try await fixture.store.commit(PoolTransition(
            pool: PoolRecord(poolID: 12, state: .active), failover: failover,
            steps: [
                TimelineStep(failoverID: "fo-12-1", sequence: 1, step: "detected", at: start),
                TimelineStep(failoverID: "fo-12-1", sequence: 2, step: "fenced", at: start.addingTimeInterval(0.4)),
                TimelineStep(failoverID: "fo-12-1", sequence: 3, step: "promoted", at: start.addingTimeInterval(14.2), detail: "epoch 2"),
            ]))
        try await fixture.application.test(.router) { client in
            try await client.execute(uri: "/api/v1/warmpool/history/12", method: .get, headers: fixture.auth) { response in
                #expect(response.status == .ok)
                guard case .array(let failovers) = response.json["failovers"], let first = failovers.first,
                    case .array(let steps) = first["timeline"]
                else { Issue.record("no failovers"); return }
                #expect(first["result"] == .string("succeeded"))
                #expect(first["duration_seconds"] == .double(14.2))
                #expect(steps.map { $0["step"] } == [.string("detected"), .string("fenced"), .string("promoted")])
                #expect(steps[1]["duration_ms"] == .double(400))
                #expect(steps[2]["since_start_ms"] == .double(14200))
                #expect(steps[2]["detail"] == .string("epoch 2"))
            }
            try await client.execute(uri: "/api/v1/warmpool/history/12?limit=0", method: .get, headers: fixture.auth) { response in
                #expect(response.status == .badRequest)
            }
        }
    }

    @Test func eventsListThePoolsRecentEvents() async throws {
        let fixture = try await APIFixture()
        try await fixture.store.savePool(PoolRecord(poolID: 4))
        try await fixture.store.recordEvents([
            PoolEvent(poolID: 4, agentID: "a", kind: "connected", at: Date()),
            PoolEvent(poolID: 5, agentID: "b", kind: "connected", at: Date()),
            PoolEvent(poolID: 4, agentID: "a", kind: "failed", at: Date(), detail: "silent 350 ms"),
        ])
        try await fixture.application.test(.router) { client in
            try await client.execute(uri: "/api/v1/warmpool/events/4", method: .get, headers: fixture.auth) { response in
                guard case .array(let events) = response.json["events"] else { Issue.record("no events"); return }
                #expect(events.map { $0["kind"] } == [.string("connected"), .string("failed")])
                #expect(events[1]["detail"] == .string("silent 350 ms"))
            }
        }
    }
}

@Suite struct AgentAndKeyRouteTests {
    @Test func agentKeysAreMintedOnceListedAndRevoked() async throws {
        let fixture = try await APIFixture()
        try await fixture.application.test(.router) { client in
            var secret = ""
            try await client.execute(
                uri: "/api/v1/warmpool/agents", method: .post, headers: fixture.authWith(),
                body: body(#"{"agent_id": "gpu-12-a", "machine_id": 12, "instance_id": 456790, "role": "primary"}"#)
            ) { response in
                #expect(response.status == .created)
                guard case .string(let text) = response.json["secret"] else { Issue.record("no secret"); return }
                secret = text
            }
            #expect(secret.utf8.count == 64)
            #expect(try await fixture.store.agent(id: "gpu-12-a")?.secretHex == secret)
            try await client.execute(
                uri: "/api/v1/warmpool/agents", method: .post, headers: fixture.authWith(), body: body(#"{"agent_id": "gpu-12-a"}"#)
            ) { response in
                #expect(response.status == .conflict)
            }
            for payload in [#"{"agent_id": "has space"}"#, #"{"agent_id": "ok", "role": "leader"}"#, #"{}"#, #"{"agent_id": 5}"#] {
                try await client.execute(uri: "/api/v1/warmpool/agents", method: .post, headers: fixture.authWith(), body: body(payload)) { response in
                    #expect(response.status == .badRequest, "\(payload)")
                }
            }
            try await client.execute(uri: "/api/v1/warmpool/agents", method: .get, headers: fixture.auth) { response in
                let json = response.json
                #expect(json["count"] == .int(1))
                guard case .array(let agents) = json["agents"], let agent = agents.first else { Issue.record("no agents"); return }
                #expect(agent["agent_id"] == .string("gpu-12-a"))
                #expect(agent["state"] == .string("unseen"))
                #expect(agent["secret"] == nil)
                #expect(!String(decoding: response.body.readableBytesView, as: UTF8.self).contains(secret))
            }
            try await client.execute(uri: "/api/v1/warmpool/agents/gpu-12-a", method: .delete, headers: fixture.auth) { response in
                #expect(response.status == .ok)
            }
            try await client.execute(uri: "/api/v1/warmpool/agents/gpu-12-a", method: .delete, headers: fixture.auth) { response in
                #expect(response.status == .notFound)
            }
        }
    }

    @Test func apiKeysCreatedThroughTheAPIWorkUntilRevoked() async throws {
        let fixture = try await APIFixture()
        try await fixture.application.test(.router) { client in
            var newKey = ""
            var newID = ""
            try await client.execute(uri: "/api/v1/keys", method: .post, headers: fixture.authWith(), body: body(#"{"name": "dashboard", "scope": "admin"}"#)) { response in
                #expect(response.status == .created)
                #expect(response.json["scope"] == "admin")
                guard case .string(let key) = response.json["key"], case .string(let id) = response.json["id"] else {
                    Issue.record("no key"); return
                }
                newKey = key
                newID = id
            }
            var headers = HTTPFields()
            headers[.authorization] = "Bearer \(newKey)"
            try await client.execute(uri: "/api/v1/keys", method: .get, headers: headers) { response in
                #expect(response.status == .ok)
                #expect(response.json["count"] == .int(2))
                #expect(!String(decoding: response.body.readableBytesView, as: UTF8.self).contains(newKey))
            }
            try await client.execute(uri: "/api/v1/keys/\(newID)", method: .delete, headers: fixture.auth) { response in
                #expect(response.status == .ok)
            }
            try await client.execute(uri: "/api/v1/keys", method: .get, headers: headers) { response in
                #expect(response.status == .unauthorized)
            }
            try await client.execute(uri: "/api/v1/keys", method: .post, headers: fixture.authWith(), body: body(#"{"name": ""}"#)) { response in
                #expect(response.status == .badRequest)
            }
        }
    }

    /// metrics < read < operate < admin: a key reaches the routes of its scope and those below, and
    /// every other route answers 403 naming what it needs. With a read key, every mutating route
    /// answers 403.
    @Test func eachScopeReachesItsRoutesAndNoMore() async throws {
        let fixture = try await APIFixture()
        var minting: [APIKeyRecord.Scope: String] = [:]
        for scope in APIKeyRecord.Scope.allCases {
            let minted = APIKeys.mint(name: scope.rawValue, scope: scope)
            try await fixture.store.addAPIKey(minted.record)
            minting[scope] = minted.plaintext
        }
        let keys = minting
        let needs: [(HTTPRequest.Method, String, APIKeyRecord.Scope)] = [
            (.get, "/metrics", .metrics), (.get, "/api/v1/warmpool/pools", .read), (.get, "/api/v1/warmpool/status/1", .read),
            (.get, "/api/v1/warmpool/agents", .read), (.get, "/api/v1/warmpool/settings/1", .read),
            (.post, "/api/v1/warmpool/provision", .operate), (.post, "/api/v1/warmpool/enable/1", .operate),
            (.post, "/api/v1/warmpool/failover/test/1", .operate), (.post, "/api/v1/warmpool/repair/1", .operate),
            (.delete, "/api/v1/warmpool/cleanup/1", .admin), (.put, "/api/v1/warmpool/settings/1", .admin),
            (.post, "/api/v1/warmpool/agents", .admin), (.get, "/api/v1/keys", .admin), (.post, "/api/v1/keys", .admin),
        ]
        try await fixture.application.test(.router) { client in
            for (method, path, needed) in needs {
                for (scope, key) in keys {
                    var headers = HTTPFields()
                    headers[.authorization] = "Bearer \(key)"
                    headers[.contentType] = "application/json"
                    try await client.execute(uri: path, method: method, headers: headers, body: body("{}")) { response in
                        if scope < needed {
                            #expect(response.status == .forbidden, "\(scope) \(method) \(path)")
                            #expect(response.json["message"] == .string(
                                "this key's scope is \(scope.rawValue); \(method) \(path) needs \(needed.rawValue)"))
                        } else {
                            #expect(response.status != .forbidden && response.status != .unauthorized, "\(scope) \(method) \(path)")
                        }
                    }
                }
            }
            var read = HTTPFields()
            read[.authorization] = "Bearer \(keys[.read] ?? "")"
            for (method, path) in AuthTests.protectedRoutes where method != .get {
                try await client.execute(uri: path, method: method, headers: read, body: body("{}")) { response in
                    #expect(response.status == .forbidden, "a read key: \(method) \(path)")
                }
            }
        }
    }

    @Test func metricsAreExposedInThePrometheusTextFormat() async throws {
        let fixture = try await APIFixture()
        fixture.metrics.failoverFinished(durationSeconds: 14.2)
        try await fixture.application.test(.router) { client in
            try await client.execute(uri: "/metrics", method: .get, headers: fixture.auth) { response in
                #expect(response.status == .ok)
                #expect(response.headers[.contentType]?.hasPrefix("text/plain; version=0.0.4") == true)
                let text = String(decoding: response.body.readableBytesView, as: UTF8.self)
                for name in [
                    "warmpool_heartbeats_received_total", "warmpool_agents_connected", "warmpool_detection_latency_seconds_bucket",
                    // Failovers are counted from the store: an empty one has none, whatever was timed.
                    "warmpool_failovers_total{result=\"succeeded\"} 0", "warmpool_failover_duration_seconds_count 1",
                ] {
                    #expect(text.contains(name), "\(name)")
                }
            }
        }
    }
}
