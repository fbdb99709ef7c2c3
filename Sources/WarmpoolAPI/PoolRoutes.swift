import Foundation
import Hummingbird
import WarmpoolJSON
import WarmpoolModel
import WarmpoolProvider
import WarmpoolStore

/// The seven routes existing clients call, plus what operators need: the pool list, settings,
/// failover history with timelines, and events.
struct PoolRoutes {
    let dependencies: APIDependencies
    private var store: any WarmpoolStore { dependencies.store }
    private var operations: any PoolOperations { dependencies.operations }

    func register(on group: RouterGroup<APIRequestContext>) {
        group.get("status/:machine_id") { _, context in
            let pool = try await requirePool(try RequestInput.poolID(context))
            let protection = await operations.protections()[pool.poolID]
            let live = LiveReadings(hub: dependencies.hub)
            return JSONResponse.ok(Present.poolStatus(
                pool, lastHeartbeat: pool.primaryInstanceID.flatMap { live.lastHeartbeats()[$0] }, protection: protection,
                recoveryPoint: live.recoveryPoint(primary: pool.primaryInstanceID), sync: live.sync(primary: pool.primaryInstanceID)))
        }
        group.get("pools") { _, _ in
            let pools = try await store.pools()
            let live = LiveReadings(hub: dependencies.hub)
            let heartbeats = live.lastHeartbeats()
            let protections = await operations.protections()
            return JSONResponse.ok(.object([
                ("pools", .array(pools.map {
                    Present.poolStatus($0, lastHeartbeat: $0.primaryInstanceID.flatMap { heartbeats[$0] }, protection: protections[$0.poolID],
                                       recoveryPoint: live.recoveryPoint(primary: $0.primaryInstanceID), sync: live.sync(primary: $0.primaryInstanceID))
                })),
                ("count", .int(Int64(pools.count))),
            ]))
        }
        group.get("hosts") { request, _ in
            let hosts = try await operations.hosts(try Self.hostFilter(request))
            return JSONResponse.ok(.object([("hosts", .array(hosts.map(Present.host))), ("count", .int(Int64(hosts.count)))]))
        }
        group.post("provision") { request, _ in
            let provision = try Self.provisionRequest(try await RequestInput.jsonObject(request))
            let pool = try await operations.provision(provision)
            return JSONResponse.ok(.object([
                ("success", .bool(true)),
                ("message", .string("warm pool provisioned on host \(provision.hostMachineID)")),
                ("status", Present.provisionStatus(pool)),
            ]))
        }
        group.post("enable/:machine_id") { request, context in
            let poolID = try RequestInput.poolID(context)
            _ = try await RequestInput.jsonObject(request)
            let pool = try await operations.enable(poolID)
            return JSONResponse.ok(.object([
                ("status", .string("enabled")),
                ("message", .string("warm pool enabled for machine \(poolID); state \(pool.state.rawValue)")),
            ]))
        }
        group.post("disable/:machine_id") { request, context in
            let poolID = try RequestInput.poolID(context)
            _ = try await RequestInput.jsonObject(request)
            _ = try await operations.disable(poolID)
            return JSONResponse.ok(.object([
                ("status", .string("disabled")),
                ("message", .string("warm pool disabled for machine \(poolID); CPU standby in force")),
                ("fallback", .string("cpu_standby")),
            ]))
        }
        group.post("failover/test/:machine_id") { request, context in
            let poolID = try RequestInput.poolID(context)
            _ = try await RequestInput.jsonObject(request)
            let outcome = try await operations.failoverTest(poolID)
            return JSONResponse.ok(.object([
                ("success", .bool(outcome.success)),
                ("message", .string(outcome.message)),
                ("recovery_time_seconds", outcome.recoverySeconds.map { .double(($0 * 10).rounded() / 10) } ?? .null),
                ("new_primary_gpu_id", .id(outcome.newPrimaryInstanceID)),
            ]))
        }
        group.post("repair/:machine_id") { request, context in
            let poolID = try RequestInput.poolID(context)
            _ = try await RequestInput.jsonObject(request)
            let pool = try await operations.repair(poolID)
            let protection = await operations.protections()[poolID]
            return JSONResponse.ok(.object([
                ("success", .bool(true)),
                ("message", .string("machine \(poolID): the next rung is being tried now")),
                ("status", Present.poolStatus(pool, lastHeartbeat: nil, protection: protection)),
            ]))
        }
        group.delete("cleanup/:machine_id") { _, context in
            let poolID = try RequestInput.poolID(context)
            let message = switch try await operations.cleanup(poolID) {
            case .removed: "primary, standby and volume of machine \(poolID) destroyed"
            case .nothingToRemove: "machine \(poolID) has no warm pool any more: nothing to remove"
            }
            return JSONResponse.ok(.object([("success", .bool(true)), ("message", .string(message))]))
        }
        group.get("breaker") { _, _ in
            let status = try await operations.breaker()
            return JSONResponse.ok(.object([
                ("tripped", .bool(status.tripped)),
                ("since", .date(status.since)),
                ("held", .array(status.held.map { held in
                    .object([("machine_id", .int(held.poolID.rawValue)), ("instance_id", .int(held.instanceID.rawValue)),
                             ("failed_at", .date(held.failedAt))])
                })),
            ]))
        }
        group.post("breaker/release") { request, _ in
            _ = try await RequestInput.jsonObject(request)
            let released = try await operations.releaseBreaker()
            return JSONResponse.ok(.object([
                ("success", .bool(true)),
                ("released", .int(Int64(released))),
                ("message", .string("\(released) held failover(s) released")),
            ]))
        }
        group.get("settings/:machine_id") { _, context in
            JSONResponse.ok(Present.settings(try await requirePool(try RequestInput.poolID(context))))
        }
        group.put("settings/:machine_id") { request, context in
            let poolID = try RequestInput.poolID(context)
            let body = try await RequestInput.jsonObject(request)
            try Self.refuseUnknownFields(body, allowed: ["strategy", "gpu_preferences", "volume_size_gb"])
            let change = SettingsChange(
                strategy: try body.oneOf("strategy", FailoverStrategy.self), gpuPreferences: try body.stringArray("gpu_preferences"),
                volumeSizeGB: try body.positiveInt("volume_size_gb", maximum: 65_536).map { Int($0) })
            // A machine can be configured before its pool is provisioned: the row starts disabled.
            let pool = try await operations.updateSettings(poolID, change)
            return JSONResponse.ok(Present.settings(pool))
        }
        group.get("history/:machine_id") { request, context in
            let poolID = try RequestInput.poolID(context)
            // A cleaned-up pool's history stays readable; each failover names its incarnation.
            let records = try await store.failovers(poolID: poolID, limit: try RequestInput.limit(request, default: 20))
            if records.isEmpty { _ = try await requirePool(poolID) }
            var failovers: [JSONValue] = []
            for failover in records {
                failovers.append(Present.failover(failover, timeline: try await store.timeline(failoverID: failover.id)))
            }
            return JSONResponse.ok(.object([("machine_id", .id(poolID)), ("failovers", .array(failovers))]))
        }
        group.get("events/:machine_id") { request, context in
            let poolID = try RequestInput.poolID(context)
            let events = try await store.events(poolID: poolID, limit: try RequestInput.limit(request, default: 100))
            if events.isEmpty { _ = try await requirePool(poolID) }
            return JSONResponse.ok(.object([("machine_id", .id(poolID)), ("events", .array(events.map(Present.event)))]))
        }
    }

    private func requirePool(_ poolID: PoolID) async throws -> PoolRecord {
        guard let pool = try await store.pool(id: poolID) else {
            throw APIError.notFound("no warm pool for machine \(poolID)")
        }
        return pool
    }

    static func hostFilter(_ request: Request) throws -> WarmPoolHosts.Filter {
        let parameters = request.uri.queryParameters
        var query = WarmPoolHosts.Filter()
        if let name = parameters.get("gpu_name") {
            guard !name.isEmpty, name.utf8.count <= 64 else { throw APIError.badRequest("gpu_name must be 1-64 characters") }
            query.gpuName = name
        }
        if let text = parameters.get("min_gpus") {
            guard let value = Int(text), (1...64).contains(value) else {
                throw APIError.badRequest("min_gpus must be an integer from 1 to 64, got \"\(text)\"")
            }
            query.minGPUs = value
        }
        if let text = parameters.get("max_price") {
            guard let value = Double(text), value.isFinite, value > 0 else {
                throw APIError.badRequest("max_price must be a positive number, got \"\(text)\"")
            }
            query.maxPrice = value
        }
        query.verified = try RequestInput.flag(request, "verified", default: query.verified)
        return query
    }

    static func provisionRequest(_ body: JSONObjectReader) throws -> ProvisionRequest {
        // Unknown fields are tolerated here: existing clients of this route must keep working.
        let poolID = try body.requiredInt("machine_id"), host = try body.requiredInt("host_machine_id")
        guard poolID >= 0, host >= 0 else {
            throw APIError.badRequest("machine_id and host_machine_id must be non-negative")
        }
        var request = ProvisionRequest(poolID: PoolID(poolID), hostMachineID: HostMachineID(host))
        request.gpuName = try body.string("gpu_name", maximumLength: 64)
        if let image = try body.string("image", maximumLength: 512) {
            guard !image.isEmpty, !image.contains(where: { $0.isWhitespace }) else {
                throw APIError.badRequest("image must be a non-empty image reference without spaces")
            }
            request.image = image
        }
        if let disk = try body.positiveInt("disk_size", maximum: 65_536) { request.diskSizeGB = Int(disk) }
        if let volume = try body.positiveInt("volume_size", maximum: 65_536) { request.volumeSizeGB = Int(volume) }
        request.bidPricePerHour = try body.positiveNumber("bid_price", maximum: 1000)
        switch try body.oneOf("strategy", FailoverStrategy.self) {
        case .cpuStandby: request.prefersCPUStandby = true
        case .disabled: throw APIError.badRequest("strategy must be gpu_warm_pool (the default: a CPU standby where the host has one free GPU) or cpu_standby")
        case .gpuWarmPool, nil: break
        }
        return request
    }

    /// A misspelt field would otherwise be silently ignored and its default used.
    static func refuseUnknownFields(_ body: JSONObjectReader, allowed: Set<String>) throws {
        if let unknown = body.members.map(\.0).first(where: { !allowed.contains($0) }) {
            throw APIError.badRequest("unknown field \"\(unknown)\"; expected one of \(allowed.sorted().joined(separator: ", "))")
        }
    }
}
