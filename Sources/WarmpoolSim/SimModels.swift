import Foundation

/// One rented instance. It holds GPUs of its machine (`gpuSlots`) only while it is meant to run:
/// a stopped instance reserves nothing (reference/vastai-marketplace.md), and a start waits in
/// `scheduling` until `gpuCount` GPUs of its machine are free. Its `seat` (with instance networks,
/// its namespace and address) is its own from create to destroy.
struct SimInstance {
    let id: Int
    let host: HostSpec
    /// GPUs it rents when it runs.
    let gpuCount: Int
    /// GPUs it holds now: empty while stopped, scheduling or paused by a higher bid.
    var gpuSlots: [Int]
    /// The GPUs it was created on, or that a higher bid took from it: a restart with
    /// `own_gpu_restart` (and a resume after outbid) waits for these.
    var homeSlots: [Int]
    let seat: Int
    let offerID: Int
    /// Created with a bid price (`price` not null): a higher bid can pause it (outbid).
    let interruptible: Bool
    var label: String?
    let image: String
    /// `[key, value]` pairs in the order given; values may be secrets and are never logged.
    let env: [(String, String)]
    let onstart: String?
    let volumeID: Int?
    let mountPath: String
    let diskGB: Double
    let runtype: String
    let sshPort: Int
    /// Where its sshd listens and what the API reports as its address.
    let sshAddress: String
    /// The network namespace its processes run in; nil for the emulator's own.
    let netns: String?
    let directory: String
    let startDate: Double
    /// CONTAINER_API_KEY: the instance's own key for the API, made at create.
    let apiKey: String

    /// "running" or "stopped": what the user asked for last.
    var intendedStatus = "running"
    /// nil, "loading", "running", "exited": what the instance does.
    var actualStatus: String? = "loading"
    var statusMessage = "Creating instance"
    /// A boot is under way (scheduled, not yet landed). Nothing but a destroy cancels it: a stop
    /// meanwhile takes effect once it has launched the processes (see `Simulator`, "Power").
    var booting = false
    /// A destroy is ending its processes: no start, stop or boot touches it any more.
    var destroying = false
    var processes: InstanceProcesses?
    /// A stop in progress: the next boot waits for it, so two sshds never race for one port.
    var termination: Task<Void, Never>?
    var frozen = false
    /// Paused by a higher bid: processes stopped, GPU given away, resumed when one is free.
    var outbid = false
    /// Its machine was offline when the boot came due: it lands once the machine is back.
    var bootDeferred = false

    var isStopped: Bool { intendedStatus == "stopped" }
    /// Meant to run but holding no GPU: a start (or a resume after outbid) waiting for one.
    var isScheduling: Bool { !isStopped && !destroying && gpuSlots.isEmpty }
    /// HOME of its processes: a directory of its own, empty at create. (A container's HOME comes
    /// from its image; the emulator has no image filesystem to take one from.)
    var home: String { directory + "/home" }

    /// `offline`: its machine lost contact with the provider, which then shows every instance on
    /// it `offline` whatever it was doing.
    func row(volume: SimVolume?, offline: Bool = false) -> [String: JSON] {
        let hostPort = JSON.string(String(sshPort))
        let actualStatus = offline ? "offline" : self.actualStatus
        return [
            "id": JSON(id), "machine_id": JSON(host.machineID), "host_id": JSON(host.machineID), "label": JSON(label),
            "actual_status": JSON(actualStatus), "intended_status": .string(intendedStatus),
            "cur_state": .string(actualStatus == "running" || actualStatus == "loading" ? "running" : "stopped"),
            "is_bid": .bool(interruptible),
            "next_state": .string(intendedStatus), "status_msg": .string(statusMessage),
            "image_uuid": .string(image), "image_args": [], "image_runtype": .string(runtype),
            "num_gpus": JSON(gpuCount), "gpu_name": .string(host.gpuName), "gpu_util": 0, "gpu_arch": "nvidia", "gpu_temp": 40,
            "gpu_ram": 24564, "gpu_totalram": 24564, "cuda_max_good": 12.4, "driver_version": "550.54.15",
            "cpu_cores_effective": 8, "cpu_util": 0, "cpu_ram": 64000, "disk_space": .number(diskGB), "disk_util": 0,
            "disk_usage": 0, "mem_usage": 0, "mem_limit": 64000, "vmem_usage": 0, "inet_up": 1000, "inet_down": 1000,
            "ssh_host": .string(sshAddress), "ssh_port": JSON(sshPort), "ssh_idx": "0", "public_ipaddr": .string(sshAddress),
            "local_ipaddrs": .string(sshAddress), "direct_port_start": JSON(sshPort), "direct_port_end": JSON(sshPort),
            "ports": ["22/tcp": [["HostIp": "0.0.0.0", "HostPort": hostPort]]], "jupyter_token": nil,
            "extra_env": .array(env.map { [.string($0.0), .string($0.1)] }), "onstart": JSON(onstart),
            "uptime_mins": .number(max(0, (Date().timeIntervalSince1970 - startDate) / 60).rounded()),
            "start_date": .number(startDate), "end_date": nil, "reliability2": .number(host.reliability),
            "dph_total": .number(host.pricePerGPUHour * Double(gpuCount)), "verification": host.verified ? "verified" : "unverified",
            "geolocation": .string(host.geolocation), "template_id": nil, "template_hash_id": nil, "template_name": nil,
            "volume_info": volume.map { [["id": JSON($0.id), "mount_path": .string(mountPath),
                                           "avail_space": .number($0.sizeGB), "total_space": .number($0.sizeGB)]] } ?? [],
        ]
    }
}

/// A volume: one directory under the state directory, on one machine.
struct SimVolume {
    let id: Int
    let host: HostSpec
    let name: String?
    let sizeGB: Double
    let directory: String
    let startDate: Double

    func row(instances: [Int]) -> [String: JSON] {
        [
            "id": JSON(id), "cluster_id": nil, "label": JSON(name), "disk_space": .number(sizeGB),
            "status": instances.isEmpty ? "available" : "in_use", "disk_name": "warmpool-sim", "driver_version": "550.54.15",
            "inet_up": 1000, "inet_down": 1000, "reliability2": .number(host.reliability), "start_date": .number(startDate),
            "machine_id": JSON(host.machineID), "verification": host.verified ? "verified" : "unverified",
            "host_id": JSON(host.machineID), "geolocation": .string(host.geolocation),
            "instances": .array(instances.map { JSON($0) }),
        ]
    }
}

extension HostSpec {
    /// The offer for all `gpus` free GPUs of this machine at once, as Vast.ai lists multi-GPU
    /// chunks beside the single GPUs (so `num_gpus>=2` finds the host). Its slot is 0.
    func bundleOfferRow(gpus: Int) -> [String: JSON] {
        var row = offerRow(slot: 0)
        let price = pricePerGPUHour * Double(gpus)
        row["num_gpus"] = JSON(gpus)
        row["gpu_frac"] = .number(Double(gpus) / Double(gpuCount))
        row["gpu_total_ram"] = JSON(24564 * gpus)
        row["cpu_cores_effective"] = .number(32 * Double(gpus) / Double(gpuCount))
        row["dph_base"] = .number(price)
        row["dph_total"] = .number(price)
        row["min_bid"] = .number(price / 2)
        return row
    }

    /// The offer row for one free GPU: a 1-GPU slice of this machine.
    func offerRow(slot: Int) -> [String: JSON] {
        [
            "id": JSON(offerID(slot: slot)), "ask_contract_id": JSON(offerID(slot: slot)), "machine_id": JSON(machineID),
            "host_id": JSON(machineID), "bundle_id": nil, "num_gpus": 1, "gpu_name": .string(gpuName),
            "gpu_ram": 24564, "gpu_total_ram": 24564, "gpu_frac": .number(1 / Double(gpuCount)), "gpu_arch": "nvidia",
            "cpu_cores": 32, "cpu_cores_effective": .number(32 / Double(gpuCount)), "cpu_ram": 128000, "cpu_ghz": 3.5,
            "cpu_name": "Simulated CPU", "disk_space": 500, "disk_bw": 2000, "disk_name": "warmpool-sim",
            "inet_up": 1000, "inet_down": 1000, "dph_base": .number(pricePerGPUHour), "dph_total": .number(pricePerGPUHour),
            "min_bid": .number(pricePerGPUHour / 2), "reliability": .number(reliability), "reliability2": .number(reliability),
            "verified": .bool(verified), "verification": verified ? "verified" : "unverified", "rentable": true, "rented": false,
            "external": false, "is_bid": false, "geolocation": .string(geolocation), "public_ipaddr": "127.0.0.1",
            "hostname": .string("sim-\(machineID)"), "cuda_max_good": 12.4, "driver_version": "550.54.15",
            "compute_cap": 890, "total_flops": 82.6, "dlperf": 70, "dlperf_per_dphtotal": .number(70 / max(pricePerGPUHour, 0.01)),
            "score": .number(100 - pricePerGPUHour), "pcie_bw": 25, "pci_gen": 4, "direct_port_count": 10,
            "duration": 2_592_000, "start_date": 1_700_000_000, "end_date": nil, "static_ip": true,
            "avail_vol_ask_id": JSON(volumeOfferID), "avail_vol_dph": 0.0001, "avail_vol_size": 1000,
        ]
    }

    func volumeOfferRow() -> [String: JSON] {
        [
            "id": JSON(volumeOfferID), "machine_id": JSON(machineID), "host_id": JSON(machineID), "disk_space": 1000,
            "disk_bw": 2000, "disk_name": "warmpool-sim", "storage_cost": 0.1, "cuda_max_good": 12.4, "cpu_ghz": 3.5,
            "driver_version": "550.54.15", "inet_up": 1000, "inet_down": 1000, "reliability": .number(reliability),
            "duration": 2_592_000, "verification": verified ? "verified" : "unverified", "verified": .bool(verified),
            "external": false, "geolocation": .string(geolocation), "score": 100,
        ]
    }
}
