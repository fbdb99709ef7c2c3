import Foundation

/// Which API call a request is: method, path (trailing slashes ignored) and, for
/// `PUT /instances/{id}/`, the body's keys (the provider dispatches start, stop and label there).
enum Route {
    case gpuNames, currentUser, instanceFilters
    case searchOffers([String: JSON])
    case searchVolumeOffers([String: JSON])
    case listInstances([String: String])
    case listInstancesV0
    case showInstance(Int)
    case createInstance(offerID: Int, body: [String: JSON])
    case startInstance(Int), stopInstance(Int), rebootInstance(Int), destroyInstance(Int)
    case labelInstance(Int, String)
    case createVolume([String: JSON])
    case listVolumes
    case deleteVolume(Int)
    case admin(AdminAction)

    enum AdminAction {
        case counters, resetCounters, faults
        case setFaults(FaultPlan)
        case instance(Int), crash(Int), freeze(Int), thaw(Int), outbid(Int)
        /// Send a notification about every instance of a machine (maintenance, downtime, ...).
        case notify(kind: VastNotificationKind, machine: Int, data: [String: JSON])
        case notifications
        /// The emulated Compute Engine's VMs, for tests and drills (not Google's API).
        case gceInstances
    }

    struct BadRequest: Error {
        var status: Int
        var kind: String
        var message: String
    }

    /// The operation name counters and faults use; nil for the CLI's hidden requests and the
    /// admin endpoints, which faults never touch.
    var operation: String? {
        switch self {
        case .gpuNames, .currentUser, .instanceFilters, .admin: nil
        case .searchOffers: "search_offers"
        case .searchVolumeOffers: "search_volume_offers"
        case .listInstances, .listInstancesV0: "list_instances"
        case .showInstance: "show_instance"
        case .createInstance: "create_instance"
        case .startInstance: "start_instance"
        case .stopInstance: "stop_instance"
        case .rebootInstance: "reboot_instance"
        case .labelInstance: "label_instance"
        case .destroyInstance: "destroy_instance"
        case .createVolume: "create_volume"
        case .listVolumes: "list_volumes"
        case .deleteVolume: "delete_volume"
        }
    }

    init(_ request: SimRequest) throws {
        let path = request.components
        let method = request.method
        func id(_ text: String) throws -> Int {
            guard let value = Int(text) else { throw BadRequest(status: 400, kind: "invalid_args", message: "\(text) is not an id") }
            return value
        }
        func body() throws -> [String: JSON] {
            if request.body.isEmpty { return [:] }
            guard let object = try? JSON.parse(request.body).objectValue else {
                throw BadRequest(status: 400, kind: "invalid_json", message: "the body must be a JSON object")
            }
            return object
        }
        switch (method, path) {
        case ("GET", ["api", "v0", "gpu_names", "unique"]): self = .gpuNames
        case ("GET", ["api", "v0", "users", "current"]): self = .currentUser
        case ("GET", ["api", "v0", "instances", "filters"]): self = .instanceFilters
        case ("POST", ["api", "v0", "bundles"]): self = .searchOffers(try body())
        case ("PUT", ["api", "v0", "search", "asks"]): self = .searchOffers(try body()["q"]?.objectValue ?? [:])
        case ("POST", ["api", "v0", "volumes", "search"]): self = .searchVolumeOffers(try body())
        case ("GET", ["api", "v1", "instances"]): self = .listInstances(request.query)
        case ("GET", ["api", "v0", "instances"]): self = .listInstancesV0
        case ("GET", let p) where p.count == 4 && p.starts(with: ["api", "v0", "instances"]): self = .showInstance(try id(p[3]))
        case ("PUT", let p) where p.count == 5 && p.starts(with: ["api", "v0", "instances", "reboot"]):
            self = .rebootInstance(try id(p[4]))
        case ("PUT", let p) where p.count == 4 && p.starts(with: ["api", "v0", "instances"]):
            let instance = try id(p[3])
            let fields = try body()
            if let state = fields["state"]?.stringValue {
                switch state {
                case "running": self = .startInstance(instance)
                case "stopped": self = .stopInstance(instance)
                default: throw BadRequest(status: 400, kind: "invalid_args", message: "state must be running or stopped")
                }
            } else if let label = fields["label"]?.stringValue {
                self = .labelInstance(instance, label)
            } else {
                throw BadRequest(status: 400, kind: "invalid_args", message: "expected {\"state\": ...} or {\"label\": ...}")
            }
        case ("DELETE", let p) where p.count == 4 && p.starts(with: ["api", "v0", "instances"]):
            self = .destroyInstance(try id(p[3]))
        case ("PUT", let p) where p.count == 4 && p.starts(with: ["api", "v0", "asks"]):
            self = .createInstance(offerID: try id(p[3]), body: try body())
        case ("PUT", ["api", "v0", "volumes"]): self = .createVolume(try body())
        case ("GET", ["api", "v0", "volumes"]): self = .listVolumes
        case ("DELETE", ["api", "v0", "volumes"]): self = .deleteVolume(try id(request.query["id"] ?? ""))
        case ("GET", ["admin", "counters"]): self = .admin(.counters)
        case ("DELETE", ["admin", "counters"]): self = .admin(.resetCounters)
        case ("GET", ["admin", "faults"]): self = .admin(.faults)
        case ("POST", ["admin", "faults"]):
            do {
                self = .admin(.setFaults(try JSONDecoder().decode(FaultPlan.self, from: request.body.isEmpty ? Data("{}".utf8) : request.body)))
            } catch {
                throw BadRequest(status: 400, kind: "invalid_faults", message: "\(error)")
            }
        case ("GET", let p) where p.count == 3 && p.starts(with: ["admin", "instances"]): self = .admin(.instance(try id(p[2])))
        case ("POST", let p) where p.count == 4 && p.starts(with: ["admin", "instances"]):
            let instance = try id(p[2])
            switch p[3] {
            case "crash": self = .admin(.crash(instance))
            case "freeze": self = .admin(.freeze(instance))
            case "thaw": self = .admin(.thaw(instance))
            case "outbid": self = .admin(.outbid(instance))
            default: throw BadRequest(status: 404, kind: "not_found", message: "admin actions: crash, freeze, thaw, outbid")
            }
        case ("GET", ["admin", "notifications"]): self = .admin(.notifications)
        case ("GET", ["admin", "gce", "instances"]): self = .admin(.gceInstances)
        case ("POST", ["admin", "notifications"]):
            let fields = try body()
            let kinds = VastNotificationKind.allCases.map(\.rawValue)
            guard let slug = fields["notif_type"]?.stringValue, let kind = VastNotificationKind(rawValue: slug) else {
                throw BadRequest(status: 400, kind: "invalid_args", message: "notif_type must be one of \(kinds)")
            }
            guard let machine = fields["machine_id"]?.intValue else {
                throw BadRequest(status: 400, kind: "invalid_args", message: "machine_id is required")
            }
            self = .admin(.notify(kind: kind, machine: machine, data: fields["data"]?.objectValue ?? [:]))
        default:
            throw BadRequest(status: 404, kind: "not_found", message: "warmpool-sim does not serve \(method) \(request.path)")
        }
    }
}
