import WarmpoolModel

/// A rented instance, as `GET /api/v1/instances/` and `GET /api/v0/instances/{id}/` return it.
public struct Instance: Hashable, Sendable, Decodable {
    public var id: InstanceID
    public var machineID: HostMachineID?
    public var hostID: Int?
    /// What the instance is doing now: nil while provisioning, then `created`, `loading`,
    /// `running`, `stopped`, `exited`, `frozen`, `offline`, ... (see the reference's §4).
    public var actualStatus: String?
    /// What it was asked to be: `running` or `stopped`.
    public var intendedStatus: String?
    public var currentState: String?
    public var statusMessage: String?
    public var label: String?
    public var gpuName: String?
    public var numGPUs: Int?
    public var sshHost: String?
    public var sshPort: Int?
    public var publicIPAddress: String?
    /// Ids of the volumes linked to the instance (from `volume_info`).
    public var volumeIDs: [VolumeID]
    /// Seconds since the epoch.
    public var startDate: Double?
    public var pricePerHour: Double?

    public var isRunning: Bool { actualStatus == "running" }
    /// Stopped as far as the provider is concerned: it will not run until started again.
    public var isStopped: Bool { actualStatus == "stopped" || actualStatus == "exited" }

    enum CodingKeys: String, CodingKey {
        case id, machineID = "machine_id", hostID = "host_id", actualStatus = "actual_status"
        case intendedStatus = "intended_status", currentState = "cur_state", statusMessage = "status_msg", label
        case gpuName = "gpu_name", numGPUs = "num_gpus", sshHost = "ssh_host", sshPort = "ssh_port"
        case publicIPAddress = "public_ipaddr", volumeInfo = "volume_info", startDate = "start_date"
        case pricePerHour = "dph_total"
    }

    struct LinkedVolume: Decodable {
        var id: VolumeID
        enum CodingKeys: String, CodingKey { case id }
        init(from decoder: any Decoder) throws {
            id = VolumeID(Int64(try decoder.container(keyedBy: CodingKeys.self).requiredInt(.id)))
        }
    }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        id = InstanceID(Int64(try c.requiredInt(.id)))
        machineID = try c.lenientInt(.machineID).map { HostMachineID(Int64($0)) }
        hostID = try c.lenientInt(.hostID)
        actualStatus = try c.lenientString(.actualStatus)
        intendedStatus = try c.lenientString(.intendedStatus)
        currentState = try c.lenientString(.currentState)
        statusMessage = try c.lenientString(.statusMessage)
        label = try c.lenientString(.label)
        gpuName = try c.lenientString(.gpuName)
        numGPUs = try c.lenientInt(.numGPUs)
        sshHost = try c.lenientString(.sshHost)
        sshPort = try c.lenientInt(.sshPort)
        publicIPAddress = try c.lenientString(.publicIPAddress)
        volumeIDs = try c.decodeIfPresent([LinkedVolume].self, forKey: .volumeInfo)?.map(\.id) ?? []
        startDate = try c.lenientDouble(.startDate)
        pricePerHour = try c.lenientDouble(.pricePerHour)
    }
}

/// A storage volume (`GET /api/v0/volumes?owner=me`).
public struct Volume: Hashable, Sendable, Decodable {
    public var id: VolumeID
    public var machineID: HostMachineID?
    public var label: String?
    public var status: String?
    public var diskSpaceGB: Double?
    public var startDate: Double?
    /// Instances the volume is linked to.
    public var instanceIDs: [InstanceID]

    enum CodingKeys: String, CodingKey {
        case id, machineID = "machine_id", label, status, diskSpace = "disk_space", startDate = "start_date", instances
    }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        id = VolumeID(Int64(try c.requiredInt(.id)))
        machineID = try c.lenientInt(.machineID).map { HostMachineID(Int64($0)) }
        label = try c.lenientString(.label)
        status = try c.lenientString(.status)
        diskSpaceGB = try c.lenientDouble(.diskSpace)
        startDate = try c.lenientDouble(.startDate)
        instanceIDs = (try? c.decodeIfPresent([InstanceID].self, forKey: .instances)) ?? []
    }
}
