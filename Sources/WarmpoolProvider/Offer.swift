import WarmpoolModel

/// One rentable slice of a physical machine, as `POST /api/v0/bundles/` returns it. `id` is the
/// ask id that `PUT /api/v0/asks/{id}/` rents; several offers share a `machineID`.
public struct Offer: Hashable, Sendable, Decodable {
    public var id: OfferID
    public var machineID: HostMachineID
    public var hostID: Int?
    public var gpuName: String
    /// GPUs in this offer (not in the machine).
    public var numGPUs: Int
    /// This offer's share of the machine's GPUs (`gpu_frac`), when the provider says.
    public var gpuFraction: Double?
    /// Total price in $/hour (`dph_total`).
    public var pricePerHour: Double
    /// 0...1.
    public var reliability: Double?
    public var verified: Bool
    public var rentable: Bool?
    public var rented: Bool?
    public var geolocation: String?
    public var diskSpaceGB: Double?
    public var gpuRAMMB: Double?

    public init(id: OfferID, machineID: HostMachineID, hostID: Int? = nil, gpuName: String, numGPUs: Int, gpuFraction: Double? = nil,
                pricePerHour: Double, reliability: Double? = nil, verified: Bool = true, rentable: Bool? = true,
                rented: Bool? = false, geolocation: String? = nil, diskSpaceGB: Double? = nil, gpuRAMMB: Double? = nil)
    {
        self.id = id
        self.machineID = machineID
        self.hostID = hostID
        self.gpuName = gpuName
        self.numGPUs = numGPUs
        self.gpuFraction = gpuFraction
        self.pricePerHour = pricePerHour
        self.reliability = reliability
        self.verified = verified
        self.rentable = rentable
        self.rented = rented
        self.geolocation = geolocation
        self.diskSpaceGB = diskSpaceGB
        self.gpuRAMMB = gpuRAMMB
    }

    enum CodingKeys: String, CodingKey {
        case id, machineID = "machine_id", hostID = "host_id", gpuName = "gpu_name", numGPUs = "num_gpus"
        case gpuFraction = "gpu_frac", pricePerHour = "dph_total", reliability, reliability2, verified, verification
        case rentable, rented, geolocation, diskSpace = "disk_space", gpuRAM = "gpu_ram"
    }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        id = OfferID(Int64(try c.requiredInt(.id)))
        machineID = HostMachineID(Int64(try c.requiredInt(.machineID)))
        hostID = try c.lenientInt(.hostID)
        gpuName = try c.lenientString(.gpuName) ?? ""
        numGPUs = try c.lenientInt(.numGPUs) ?? 0
        gpuFraction = try c.lenientDouble(.gpuFraction)
        pricePerHour = try c.lenientDouble(.pricePerHour) ?? 0
        reliability = try c.lenientDouble(.reliability) ?? c.lenientDouble(.reliability2)
        // Older rows carry only `verification: "verified"`.
        verified = try c.lenientBool(.verified) ?? (c.lenientString(.verification) == "verified")
        rentable = try c.lenientBool(.rentable)
        rented = try c.lenientBool(.rented)
        geolocation = try c.lenientString(.geolocation)
        diskSpaceGB = try c.lenientDouble(.diskSpace)
        gpuRAMMB = try c.lenientDouble(.gpuRAM)
    }
}

/// A storage offer on one machine (`POST /api/v0/volumes/search/`): its id goes into
/// `PUT /api/v0/volumes/` to create a volume there.
public struct VolumeOffer: Hashable, Sendable, Decodable {
    public var id: OfferID
    public var machineID: HostMachineID
    public var diskSpaceGB: Double?
    public var storageCost: Double?
    public var geolocation: String?

    enum CodingKeys: String, CodingKey {
        case id, machineID = "machine_id", diskSpace = "disk_space", storageCost = "storage_cost", geolocation
    }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        id = OfferID(Int64(try c.requiredInt(.id)))
        machineID = HostMachineID(Int64(try c.requiredInt(.machineID)))
        diskSpaceGB = try c.lenientDouble(.diskSpace)
        storageCost = try c.lenientDouble(.storageCost)
        geolocation = try c.lenientString(.geolocation)
    }
}
