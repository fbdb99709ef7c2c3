import Foundation
import WarmpoolJSON
import WarmpoolModel

/// What the failover engine needs from a GPU marketplace. `VastClient` speaks Vast.ai's REST
/// API; tests and drills point it at `warmpool-sim`.
public protocol ProviderClient: Sendable {
    /// Offers matching `query`, in the order the provider ranks them.
    func searchOffers(_ query: OfferQuery) async throws -> [Offer]
    /// Storage offers, optionally on one machine only.
    func searchVolumeOffers(machineID: HostMachineID?) async throws -> [VolumeOffer]

    /// Every instance of this account (all pages).
    func listInstances() async throws -> [Instance]
    /// One instance, or nil when the provider does not know it.
    func instance(id: InstanceID) async throws -> Instance?
    /// Rents `offerID` and returns the new instance's id.
    func createInstance(offerID: OfferID, _ request: CreateInstanceRequest) async throws -> InstanceID
    func startInstance(id: InstanceID) async throws
    func stopInstance(id: InstanceID) async throws
    func destroyInstance(id: InstanceID) async throws

    /// Creates a volume from a storage offer and returns its id.
    func createVolume(offerID: OfferID, sizeGB: Int, name: String?) async throws -> VolumeID
    func listVolumes() async throws -> [Volume]
    func deleteVolume(id: VolumeID) async throws
}

/// A search for GPU offers; it becomes the `{field: {op: value}}` dict of the reference's §3.
public struct OfferQuery: Hashable, Sendable {
    /// e.g. "RTX 4090" (underscores are taken as spaces, as the CLI does).
    public var gpuName: String?
    /// Only offers with at least this many GPUs.
    public var minGPUs: Int?
    /// Only offers at most this price, $/hour (`dph_total`).
    public var maxPricePerHour: Double?
    /// true: verified hosts only; nil: no filter.
    public var verified: Bool?
    /// true: only offers that can be rented now.
    public var rentable: Bool?
    public var machineID: HostMachineID?
    /// Any of these machines (`machine_id in [...]`): one search for many hosts.
    public var machineIDs: [HostMachineID]?
    /// `[[field, "asc"|"desc"]]`; the provider ranks by score when empty.
    public var order: [(field: String, ascending: Bool)]
    /// "on-demand", "reserved" or "bid".
    public var type: String
    public var limit: Int?
    /// GiB the instance will ask for; it changes the storage part of `dph_total`.
    public var allocatedStorageGB: Double

    public init(gpuName: String? = nil, minGPUs: Int? = nil, maxPricePerHour: Double? = nil, verified: Bool? = true,
                rentable: Bool? = true, machineID: HostMachineID? = nil, order: [(field: String, ascending: Bool)] = [("dph_total", true)],
                type: String = "on-demand", limit: Int? = nil, allocatedStorageGB: Double = 5, machineIDs: [HostMachineID]? = nil)
    {
        self.machineIDs = machineIDs
        self.gpuName = gpuName
        self.minGPUs = minGPUs
        self.maxPricePerHour = maxPricePerHour
        self.verified = verified
        self.rentable = rentable
        self.machineID = machineID
        self.order = order
        self.type = type
        self.limit = limit
        self.allocatedStorageGB = allocatedStorageGB
    }

    /// The request body for `POST /api/v0/bundles/`.
    public var body: JSONValue {
        var body: [String: JSONValue] = ["external": ["eq": false]]
        if let verified { body["verified"] = ["eq": .bool(verified)] }
        if let rentable { body["rentable"] = ["eq": .bool(rentable)] }
        if let gpuName { body["gpu_name"] = ["eq": .string(gpuName.replacingOccurrences(of: "_", with: " "))] }
        if let minGPUs { body["num_gpus"] = ["gte": .int(minGPUs)] }
        if let maxPricePerHour { body["dph_total"] = ["lte": .double(maxPricePerHour)] }
        if let machineID { body["machine_id"] = ["eq": .int(machineID.rawValue)] }
        if let machineIDs, machineID == nil { body["machine_id"] = ["in": .array(machineIDs.map { .int($0.rawValue) })] }
        body["order"] = .array(order.map { [.string($0.field), .string($0.ascending ? "asc" : "desc")] })
        body["type"] = .string(type)
        if let limit { body["limit"] = .int(limit) }
        body["allocated_storage"] = .double(allocatedStorageGB)
        return .object(body)
    }

    public static func == (lhs: OfferQuery, rhs: OfferQuery) -> Bool { lhs.body == rhs.body }
    public func hash(into hasher: inout Hasher) { hasher.combine(body) }
}

/// What to run on a rented offer (`PUT /api/v0/asks/{offer_id}/`, the reference's §5).
public struct CreateInstanceRequest: Hashable, Sendable, CustomStringConvertible {
    public var image: String
    public var diskGB: Double
    public var label: String?
    /// Environment of the instance. Holds secrets (the agent key): never logged, only its keys.
    public var env: [String: String]
    /// Shell text the instance runs at every start.
    public var onstart: String?
    /// An existing volume to link, and where the instance sees it.
    public var volume: VolumeLink?
    /// "ssh_direc ssh_proxy" gives direct SSH to the instance, which the verifier needs.
    public var runtype: String
    /// true: fail when the machine cannot run it now, rather than create it stopped.
    public var cancelUnavailable: Bool
    /// An interruptible rental at this bid ($/hour, the CLI's `--bid_price`); nil: on-demand.
    public var bidPrice: Double?

    public struct VolumeLink: Hashable, Sendable {
        public var volumeID: VolumeID
        public var mountPath: String
        public init(volumeID: VolumeID, mountPath: String = "/data") {
            self.volumeID = volumeID
            self.mountPath = mountPath
        }
    }

    public init(image: String, diskGB: Double = 10, label: String? = nil, env: [String: String] = [:], onstart: String? = nil,
                volume: VolumeLink? = nil, runtype: String = "ssh_direc ssh_proxy", cancelUnavailable: Bool = false,
                bidPrice: Double? = nil)
    {
        self.bidPrice = bidPrice
        self.image = image
        self.diskGB = diskGB
        self.label = label
        self.env = env
        self.onstart = onstart
        self.volume = volume
        self.runtype = runtype
        self.cancelUnavailable = cancelUnavailable
    }

    /// Names the env keys only: values may be secrets.
    public var description: String {
        "CreateInstanceRequest(image: \(image), disk: \(diskGB) GB, label: \(label ?? "-"), env keys: \(env.keys.sorted()), "
            + "volume: \(volume.map { "\($0.volumeID) at \($0.mountPath)" } ?? "-"))"
    }

    /// The request body, with every key the CLI always sends.
    public var body: JSONValue {
        var body: [String: JSONValue] = [
            "client_id": "me", "image": .string(image), "env": .object(env.mapValues { .string($0) }), "price": bidPrice.map { .double($0) } ?? .null,
            "disk": .double(diskGB), "label": .string(label), "extra": .null,
            "onstart": .string(onstart), "image_login": .null, "python_utf8": false, "lang_utf8": false,
            "use_jupyter_lab": false, "jupyter_dir": .null, "force": false, "cancel_unavail": .bool(cancelUnavailable),
            "template_hash_id": .null, "user": .null, "runtype": .string(runtype),
        ]
        if let volume {
            body["volume_info"] = [
                "mount_path": .string(volume.mountPath), "create_new": false, "volume_id": .int(volume.volumeID.rawValue),
            ]
        }
        return .object(body)
    }
}

extension ProviderClient {
    /// The rentable single-GPU offers on `host`, for any of `gpuNames` (any GPU when empty): what
    /// a warm pool places its primary and standby on, one GPU each. The provisioning engine and the
    /// API's "not enough free GPUs" answer both count with this one query.
    /// Free one-GPU offers on any machine but `excluding`, best first: where a pool whose host is
    /// lost can go.
    public func freeSingleGPUOffersAnywhere(gpuNames: [String], excluding: Set<HostMachineID>) async throws -> [Offer] {
        var offers: [Offer] = []
        for name in gpuNames.isEmpty ? [nil] : gpuNames.map(Optional.some) {
            let query = OfferQuery(gpuName: name, verified: nil, rentable: true)
            offers += try await searchOffers(query).filter { !excluding.contains($0.machineID) && $0.numGPUs == 1 }
        }
        return offers
    }

    public func freeSingleGPUOffers(host: HostMachineID, gpuNames: [String]) async throws -> [Offer] {
        var offers: [Offer] = []
        for name in gpuNames.isEmpty ? [nil] : gpuNames.map(Optional.some) {
            let query = OfferQuery(gpuName: name, verified: nil, rentable: true, machineID: host)
            offers += try await searchOffers(query).filter { $0.machineID == host && $0.numGPUs == 1 }
        }
        return offers
    }
}
