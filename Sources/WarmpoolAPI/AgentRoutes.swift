import Foundation
import Hummingbird
import WarmpoolJSON
import WarmpoolLiveness
import WarmpoolModel
import WarmpoolStore
import WarmpoolWire

/// Agents, their keys and their liveness. Minting a key here is how an instance gets an identity;
/// the secret is shown once, in the answer, and never logged.
struct AgentRoutes {
    let dependencies: APIDependencies

    func register(on group: RouterGroup<APIRequestContext>) {
        group.get("agents") { request, _ in
            // The keys of destroyed instances are revoked and kept (an id is never minted twice),
            // but listed only on request: the default list is the agents that can still connect.
            let withRevoked = try RequestInput.flag(request, "revoked")
            let records = try await dependencies.store.agents().filter { withRevoked || $0.revokedAt == nil }
            let snapshots = dependencies.hub?.agentSnapshots() ?? []
            let live = Dictionary(snapshots.map { ($0.identity.agentID, $0) }, uniquingKeysWith: { first, _ in first })
            let now = Date()
            let lease = dependencies.hub?.leaseMilliseconds
            // A promoted standby keeps the identity it was created with; its role is the pool's word.
            var roles: [InstanceID: String] = [:]
            for pool in try await dependencies.store.pools() {
                if let standby = pool.standbyInstanceID { roles[standby] = "standby" }
                if let primary = pool.primaryInstanceID { roles[primary] = "primary" }
            }
            var agents = records.map {
                Present.agent($0, liveness: live[$0.agentID], now: now, leaseMilliseconds: lease, role: $0.instanceID.flatMap { roles[$0] })
            }
            // Agents authenticated through the keys file have no row but are listed all the same.
            let registered = Set(records.map(\.agentID))
            for snapshot in snapshots.sorted(by: { $0.identity.agentID < $1.identity.agentID }) where !registered.contains(snapshot.identity.agentID) {
                agents.append(Present.agent(nil, liveness: snapshot, now: now, leaseMilliseconds: lease, role: roles[snapshot.identity.instanceID]))
            }
            return JSONResponse.ok(.object([("agents", .array(agents)), ("count", .int(Int64(agents.count)))]))
        }
        group.post("agents") { request, _ in
            let body = try await RequestInput.jsonObject(request)
            try PoolRoutes.refuseUnknownFields(body, allowed: ["agent_id", "machine_id", "instance_id", "role"])
            guard let agentID = try body.string("agent_id", maximumLength: 64), AgentIdentity.isValidAgentID(agentID) else {
                throw APIError.badRequest("agent_id is required: 1-64 characters of A-Z a-z 0-9 . _ -")
            }
            let role = try body.string("role")
            if let role, role != "primary", role != "standby" {
                throw APIError.badRequest("role must be primary or standby, got \"\(role)\"")
            }
            let secret = AgentSecret.random()
            let record = AgentRecord(
                agentID: AgentID(agentID), secretHex: secret.hex, poolID: try body.int("machine_id").map(PoolID.init(rawValue:)),
                instanceID: try body.int("instance_id").map(InstanceID.init(rawValue:)), role: role)
            do {
                try await dependencies.store.addAgent(record)
            } catch StoreError.duplicate {
                throw APIError.conflict("agent \(agentID) already has a key; revoke it first")
            }
            return JSONResponse.make(.created, .object([
                ("agent_id", .string(agentID)),
                ("secret", .string(secret.hex)),
                ("machine_id", .id(record.poolID)),
                ("instance_id", .id(record.instanceID)),
                ("role", .string(role)),
            ]))
        }
        group.delete("agents/:agent_id") { _, context in
            let agentID = AgentID(context.parameters.get("agent_id") ?? "")
            guard try await dependencies.store.revokeAgent(id: agentID, at: Date()) else {
                throw APIError.notFound("no active agent key \(agentID)")
            }
            return JSONResponse.ok(.object([("success", .bool(true)), ("message", .string("agent \(agentID) revoked"))]))
        }
    }
}

/// API keys, managed through the API itself (the first key comes from `warmpool-controller apikey`).
struct KeyRoutes {
    let store: any WarmpoolStore

    func register(on group: RouterGroup<APIRequestContext>) {
        group.get("") { _, _ in
            let keys = try await store.apiKeys()
            return JSONResponse.ok(.object([("keys", .array(keys.map(Present.apiKey))), ("count", .int(Int64(keys.count)))]))
        }
        group.post("") { request, _ in
            let body = try await RequestInput.jsonObject(request)
            try PoolRoutes.refuseUnknownFields(body, allowed: ["name", "scope"])
            guard let name = try body.string("name", maximumLength: 64), !name.isEmpty else {
                throw APIError.badRequest("name is required: 1-64 characters")
            }
            // Least privilege unless asked: a key for a dashboard should not destroy pools.
            let minted = APIKeys.mint(name: name, scope: try body.oneOf("scope", APIKeyRecord.Scope.self) ?? .read)
            try await store.addAPIKey(minted.record)
            var members: [(String, JSONValue)] = []
            if case .object(let fields) = Present.apiKey(minted.record) { members = fields }
            members.append(("key", .string(minted.plaintext)))
            return JSONResponse.make(.created, .object(members))
        }
        group.delete(":key_id") { _, context in
            let id = context.parameters.get("key_id") ?? ""
            // Without an admin key nothing can mint keys, register agents or change settings through
            // the API again: only `warmpool-controller apikey` on the database's own machine could.
            switch try await store.revokeAPIKeyKeepingAnAdmin(id: id, at: Date()) {
            case .revoked:
                return JSONResponse.ok(.object([("success", .bool(true)), ("message", .string("API key \(id) revoked"))]))
            case .notFound:
                throw APIError.notFound("no active API key \(id)")
            case .lastAdminKey:
                let yours = id == context.apiKeyID ? " (the key this request is made with)" : ""
                throw APIError.conflict("API key \(id)\(yours) is the last admin key: create another admin key first "
                                        + "(warmpoolctl keys create --name NAME --scope admin), then revoke this one")
            }
        }
    }
}
