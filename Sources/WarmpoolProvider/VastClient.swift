import Foundation
import Logging
import NIOPosix
import WarmpoolJSON
import WarmpoolModel

/// `ProviderClient` over Vast.ai's REST API, with the exact requests of the `vastai` 1.9.1 CLI
/// (see /work/shared/reference/vastai-api.md). Every call goes through `VastTransport`:
/// libcurl on a thread pool, Bearer auth, the CLI's retry rules, precise errors.
public final class VastClient: ProviderClient {
    public struct Configuration: Sendable {
        /// No trailing slash: the path is appended as is, like the CLI does.
        public var baseURL: String
        public var apiKey: String
        /// Whole-transfer limit per attempt.
        public var timeout: Duration
        public var connectTimeout: Duration
        public var retry: RetryPolicy
        public var userAgent: String
        /// Rows per page of the v1 instance list (the API allows 1-25).
        public var pageSize: Int
        /// Spacing of the calls per endpoint (`EndpointPacer`).
        public var pacing: EndpointPacer.Settings

        public init(baseURL: String = "https://console.vast.ai", apiKey: String, timeout: Duration = .seconds(30),
                    connectTimeout: Duration = .seconds(10), retry: RetryPolicy = RetryPolicy(),
                    userAgent: String = "warmpool/1", pageSize: Int = 25, pacing: EndpointPacer.Settings = .init())
        {
            self.pacing = pacing
            self.baseURL = baseURL
            self.apiKey = apiKey
            self.timeout = timeout
            self.connectTimeout = connectTimeout
            self.retry = retry
            self.userAgent = userAgent
            self.pageSize = min(25, max(1, pageSize))
        }
    }

    private let transport: VastTransport
    private let logger: Logger

    public init(configuration: Configuration, threadPool: NIOThreadPool = .singleton, logger: Logger) {
        transport = VastTransport(configuration: configuration, threadPool: threadPool, logger: logger)
        self.logger = logger
    }

    public var configuration: Configuration { transport.configuration }

    /// 429s answered so far, per operation.
    public var rateLimited: [String: Int] { transport.rateLimited }

    // MARK: Offers

    public func searchOffers(_ query: OfferQuery) async throws -> [Offer] {
        let body = try await transport.call("search_offers", method: "POST", path: "/api/v0/bundles/", body: query.body)
        return try decode(OffersEnvelope<Offer>.self, from: body, what: "offers").offers
    }

    public func searchVolumeOffers(machineID: HostMachineID?) async throws -> [VolumeOffer] {
        var query: [String: JSONValue] = [
            "verified": ["eq": true], "external": ["eq": false], "disk_space": ["gte": 1],
            "order": [["score", "desc"]], "allocated_storage": 1.0,
        ]
        if let machineID { query["machine_id"] = ["eq": .int(machineID.rawValue)] }
        let body = try await transport.call("search_volume_offers", method: "POST", path: "/api/v0/volumes/search/",
                                            body: .object(query))
        return try decode(OffersEnvelope<VolumeOffer>.self, from: body, what: "volume offers").offers
    }

    // MARK: Instances

    /// Follows `next_token` (sent back as `after_token`) until it is null.
    public func listInstances() async throws -> [Instance] {
        var instances: [Instance] = []
        var token: String?
        var seenTokens: Set<String> = []
        repeat {
            var query: [(name: String, value: JSONValue)] = [
                ("select_filters", [:]), ("order_by", [["col": "id", "dir": "asc"]]), ("limit", .int(configuration.pageSize)),
            ]
            if let token { query.append(("after_token", .string(token))) }
            let body = try await transport.call("list_instances", method: "GET", path: "/api/v1/instances/", query: query)
            let page = try decode(InstancePage.self, from: body, what: "instance page")
            instances += page.instances
            token = page.nextToken
            // A server that hands back a token twice would page forever.
            if let token, !seenTokens.insert(token).inserted {
                throw ProviderError.malformedResponse(what: "next_token \(token) repeated")
            }
        } while token != nil
        return instances
    }

    public func instance(id: InstanceID) async throws -> Instance? {
        let body: Data
        do {
            body = try await transport.call("show_instance", method: "GET", path: "/api/v0/instances/\(id)/",
                                            query: [("owner", "me")])
        } catch ProviderError.notFound {
            return nil
        }
        return try decode(ShowEnvelope.self, from: body, what: "instance \(id)").instances
    }

    public func createInstance(offerID: OfferID, _ request: CreateInstanceRequest) async throws -> InstanceID {
        logger.info("creating instance", metadata: [
            "provider.offer_id": "\(offerID)", "provider.image": "\(request.image)",
            "provider.env_keys": "\(request.env.keys.sorted().joined(separator: ","))",
            "provider.volume_id": "\(request.volume.map { $0.volumeID.description } ?? "-")",
        ])
        let body = try await transport.call("create_instance", method: "PUT", path: "/api/v0/asks/\(offerID)/",
                                            body: request.body, idempotent: false)
        let created = try decode(CreatedInstance.self, from: body, what: "create instance answer")
        return InstanceID(Int64(created.newContract))
    }

    public func startInstance(id: InstanceID) async throws {
        _ = try await transport.call("start_instance", method: "PUT", path: "/api/v0/instances/\(id)/", body: ["state": "running"])
    }

    public func stopInstance(id: InstanceID) async throws {
        _ = try await transport.call("stop_instance", method: "PUT", path: "/api/v0/instances/\(id)/", body: ["state": "stopped"])
    }

    public func destroyInstance(id: InstanceID) async throws {
        _ = try await transport.call("destroy_instance", method: "DELETE", path: "/api/v0/instances/\(id)/")
    }

    // MARK: Volumes

    public func createVolume(offerID: OfferID, sizeGB: Int, name: String?) async throws -> VolumeID {
        var request: [String: JSONValue] = ["size": .int(sizeGB), "id": .int(offerID.rawValue)]
        if let name { request["name"] = .string(name) }
        let body = try await transport.call("create_volume", method: "PUT", path: "/api/v0/volumes/", body: .object(request),
                                            idempotent: false)
        return try decode(CreatedVolume.self, from: body, what: "create volume answer").volumeID
    }

    public func listVolumes() async throws -> [Volume] {
        // No trailing slash on this path, as the CLI sends it.
        let body = try await transport.call("list_volumes", method: "GET", path: "/api/v0/volumes",
                                            query: [("owner", "me"), ("type", "all_volume")])
        return try decode(VolumesEnvelope.self, from: body, what: "volumes").volumes
    }

    public func deleteVolume(id: VolumeID) async throws {
        _ = try await transport.call("delete_volume", method: "DELETE", path: "/api/v0/volumes/", query: [("id", .int(id.rawValue))])
    }

    // MARK: Decoding

    private func decode<T: Decodable>(_ type: T.Type, from body: Data, what: String) throws -> T {
        do {
            return try JSONDecoder().decode(type, from: body)
        } catch let error as DecodingError {
            throw ProviderError.malformedResponse(what: "\(what): \(Self.describe(error))")
        }
    }

    static func describe(_ error: DecodingError) -> String {
        func path(_ context: DecodingError.Context) -> String {
            let keys = context.codingPath.map { $0.intValue.map { "[\($0)]" } ?? ".\($0.stringValue)" }.joined()
            return keys.isEmpty ? "body" : String(keys.drop(while: { $0 == "." }))
        }
        switch error {
        case .keyNotFound(let key, let context):
            let parent = path(context)
            return "missing \(parent == "body" ? key.stringValue : parent + "." + key.stringValue)"
        case .typeMismatch(let type, let context): return "\(path(context)): expected \(type)"
        case .valueNotFound(let type, let context): return "\(path(context)): expected \(type), got null"
        case .dataCorrupted(let context): return "\(path(context)): \(context.debugDescription)"
        @unknown default: return "\(error)"
        }
    }
}

private struct OffersEnvelope<Element: Decodable>: Decodable {
    var offers: [Element]
}

private struct InstancePage: Decodable {
    var instances: [Instance]
    var nextToken: String?
    enum CodingKeys: String, CodingKey { case instances, nextToken = "next_token" }
    init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        instances = try c.decode([Instance].self, forKey: .instances)
        nextToken = try c.lenientString(.nextToken)
    }
}

/// `{"instances": {...}}`: one object under a plural key; null means not found.
private struct ShowEnvelope: Decodable {
    var instances: Instance?
}

private struct CreatedInstance: Decodable {
    var newContract: Int
    enum CodingKeys: String, CodingKey { case newContract = "new_contract" }
    init(from decoder: any Decoder) throws {
        newContract = try decoder.container(keyedBy: CodingKeys.self).requiredInt(.newContract)
    }
}

/// The reference does not pin this answer's shape; `volume_id`, then `id`, are accepted.
private struct CreatedVolume: Decodable {
    var id: Int
    var volumeID: VolumeID { VolumeID(Int64(id)) }
    enum CodingKeys: String, CodingKey { case volumeID = "volume_id", id }
    init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        if let id = try c.lenientInt(.volumeID) {
            self.id = id
        } else {
            id = try c.requiredInt(.id)
        }
    }
}

private struct VolumesEnvelope: Decodable {
    var volumes: [Volume]
}
