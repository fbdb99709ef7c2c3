import Foundation
import Testing
@testable import WarmpoolSim

/// The emulator's logic through `handle`, without HTTP: routes, auth, offers, faults.
@Suite(.serialized) struct SimulatorTests {
    @Test func everyCallButTheGPUNamesNeedsTheKey() async throws {
        let fixture = try await SimFixture()
        let simulator = fixture.simulator
        let anonymous = await simulator.handle(SimRequest(method: "GET", path: "/api/v0/users/current"))
        #expect(anonymous.status == 401)
        let wrong = await simulator.handle(SimRequest(method: "POST", path: "/api/v0/bundles/", authorization: "Bearer nope"))
        #expect(wrong.status == 401 && wrong.body["msg"] == "Invalid user key")
        let names = await simulator.handle(SimRequest(method: "GET", path: "/api/v0/gpu_names/unique/"))
        #expect(names.status == 200 && names.body == ["gpu_names": ["RTX 4090"]])
        let legacy = await simulator.handle(SimRequest(method: "GET", path: "/api/v0/volumes", query: ["api_key": SimFixture.apiKey]))
        #expect(legacy.status == 200)
        let (status, body) = await fixture.raw("GET", "/api/v0/nothing/here/")
        #expect(status == 404 && body["error"] == "not_found")
        await fixture.stop()
    }

    @Test func offersAreTheFreeGPUsAndFollowTheCLIsQueryLanguage() async throws {
        let fixture = try await SimFixture(hosts: [.defaultHost, try HostSpec(parsing: "88:2:A100:1.20:DE")], bootDelay: .seconds(3600))
        // The CLI sends numbers as strings and gpu_name with spaces.
        let (_, all) = await fixture.raw("POST", "/api/v0/bundles/", body: #"""
            {"verified": {"eq": true}, "external": {"eq": false}, "rentable": {"eq": true}, "num_gpus": {"gte": "1"},
             "order": [["dph_total", "desc"], ["id", "asc"]], "type": "on-demand", "allocated_storage": 5.0}
            """#)
        // Each free GPU, and each machine's free GPUs together (slot 0), as Vast.ai lists chunks.
        #expect(all["offers"]?.arrayValue?.compactMap { $0["id"]?.intValue } == [8800, 7700, 8801, 8802, 7701, 7702, 7703, 7704])
        let (_, multi) = await fixture.raw("POST", "/api/v0/bundles/", body: #"{"num_gpus": {"gte": "2"}, "order": [["id", "asc"]]}"#)
        #expect(multi["offers"]?.arrayValue?.compactMap { $0["num_gpus"]?.intValue } == [4, 2])
        let (_, cheap) = await fixture.raw("POST", "/api/v0/bundles/", body: #"{"dph_total": {"lte": "0.5"}, "machine_id": {"in": ["77"]}, "limit": 2}"#)
        #expect(cheap["offers"]?.arrayValue?.compactMap { $0["id"]?.intValue } == [7701, 7702])
        let (status, _) = await fixture.raw("PUT", "/api/v0/asks/7702/", body: #"{"image": "img"}"#)
        #expect(status == 200)
        let (_, after) = await fixture.raw("POST", "/api/v0/bundles/", body: #"{"gpu_name": {"eq": "RTX 4090"}}"#)
        #expect(after["offers"]?.arrayValue?.compactMap { $0["id"]?.intValue } == [7701, 7703, 7704, 7700])
        #expect(after["offers"]?.arrayValue?.last?["num_gpus"] == 3, "the chunk shrinks with the rented GPU")
        let (again, body) = await fixture.raw("PUT", "/api/v0/asks/7702/", body: #"{"image": "img"}"#)
        #expect(again == 404 && body["error"] == "no_such_ask", "an offer rents once")
        #expect(await fixture.raw("DELETE", "/api/v0/instances/1001/").0 == 200)
        let (_, freed) = await fixture.raw("POST", "/api/v0/bundles/", body: #"{"gpu_name": {"eq": "RTX 4090"}}"#)
        #expect(freed["offers"]?.arrayValue?.count == 5)
        await fixture.stop()
    }

    @Test func injectedFailuresRateLimitsAndCounters() async throws {
        let fixture = try await SimFixture(bootDelay: .seconds(3600))
        let (set, plan) = await fixture.raw("POST", "/admin/faults", body: #"{"fail_next": 2, "rate_limit_next": 1, "retry_after_seconds": 7}"#)
        #expect(set == 200 && plan["fail_next"] == 2)
        let limited = await fixture.simulator.handle(SimRequest(method: "GET", path: "/api/v0/volumes",
                                                                authorization: "Bearer \(SimFixture.apiKey)"))
        #expect(limited.status == 429 && limited.retryAfterSeconds == 7)
        #expect(await fixture.raw("GET", "/api/v0/volumes").0 == 503)
        #expect(await fixture.raw("GET", "/api/v0/volumes").0 == 503)
        #expect(await fixture.raw("GET", "/api/v0/volumes").0 == 200)
        // Hidden CLI requests and admin calls are never failed.
        #expect(await fixture.raw("POST", "/admin/faults", body: #"{"failure_rate": 1}"#).0 == 200)
        #expect(await fixture.raw("GET", "/api/v0/users/current").0 == 200)
        #expect(await fixture.raw("GET", "/api/v0/volumes").0 == 503)
        #expect(await fixture.raw("POST", "/admin/faults", body: #"{"failure_rate": 2}"#).0 == 400)
        #expect(await fixture.raw("POST", "/admin/faults", body: "{}").0 == 200)
        let counters = await fixture.counters()
        #expect(counters.rateLimited == ["list_volumes": 1])
        #expect(counters.injectedFailures == ["list_volumes": 3])
        #expect(counters.calls == ["list_volumes": 1])
        #expect(await fixture.raw("DELETE", "/admin/counters").0 == 200)
        #expect(await fixture.counters() == SimCounters())
        await fixture.stop()
    }

    @Test func putOnAnInstanceDispatchesOnTheBody() async throws {
        let fixture = try await SimFixture(bootDelay: .seconds(3600))
        #expect(await fixture.raw("PUT", "/api/v0/asks/7701/", body: #"{"image": "img", "label": "a"}"#).0 == 200)
        #expect(await fixture.raw("PUT", "/api/v0/instances/1001/", body: #"{"label": "renamed"}"#).0 == 200)
        #expect(await fixture.raw("PUT", "/api/v0/instances/1001/", body: #"{"state": "stopped"}"#).0 == 200)
        #expect(await fixture.raw("PUT", "/api/v0/instances/1001/", body: #"{"state": "paused"}"#).0 == 400)
        let (_, shown) = await fixture.raw("GET", "/api/v0/instances/1001/?owner=me")
        #expect(shown["instances"]?["label"] == "renamed")
        // Stopped during its (hour-long) boot: accepted, but the boot carries on, as on Vast.ai;
        // it exits once the boot has landed (LifecycleTests.aStopDuringTheBootIsNotACancel).
        #expect(shown["instances"]?["actual_status"] == "loading" && shown["instances"]?["intended_status"] == "stopped")
        let (_, missing) = await fixture.raw("GET", "/api/v0/instances/4242/?owner=me")
        #expect(missing == ["instances": nil])
        #expect(await fixture.raw("POST", "/admin/faults", body: #"{"fail_start_instances": [1001]}"#).0 == 200)
        let (status, refused) = await fixture.raw("PUT", "/api/v0/instances/1001/", body: #"{"state": "running"}"#)
        #expect(status == 200 && refused["success"] == false)
        let counters = await fixture.counters()
        #expect(counters.failedStarts == ["1001": 1] && counters.starts.isEmpty && counters.stops == ["1001": 1])
        await fixture.stop()
    }

    @Test func hostSpecs() throws {
        let host = try HostSpec(parsing: "42:8:H100_SXM:2.5:FI")
        #expect(host.machineID == 42 && host.gpuCount == 8 && host.gpuName == "H100 SXM" && host.pricePerGPUHour == 2.5)
        #expect(host.geolocation == "FI" && host.offerID(slot: 3) == 4203)
        for bad in ["42:8:H100", "x:8:H100:1", "42:0:H100:1", "42:8::1", "42:8:H100:-1"] {
            #expect(throws: HostSpec.ParseError.self, "\(bad)") { try HostSpec(parsing: bad) }
        }
    }
}
