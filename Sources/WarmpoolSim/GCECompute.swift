import Foundation
import Logging

#if canImport(Glibc)
import Glibc
#endif

/// The emulated Compute Engine zone: the REST API v1 instances and zonal operations of one project
/// and zone, with Google's OAuth token endpoint in front (`GCEServiceAccount`). A VM is real, as a
/// GPU instance of the sim is: a network namespace of its own whose `natIP` the sim routes to,
/// sshd on port 22 there, its `startup-script` run by bash as root at every boot, its disk a
/// directory mounted at `/data` (`GCEMachine`). What it follows and where it guesses:
/// Protocol/GCE.md, "What warmpool-sim emulates".
actor GCECompute {
    let configuration: GCESimConfiguration
    private let bootDelay: Duration
    private let stopGrace: Duration
    private let stateDirectory: String
    private let sshdPath: String
    private let keygenPath: String
    private let logger: Logger
    private var account: GCEServiceAccount
    private var machines: [String: GCEMachine] = [:]
    private var operations: [String: [String: JSON]] = [:]
    private var nextSerial = 1
    private var nextLink = 1
    /// GPU instances' network namespaces and addresses (`--instance-netns`), which get a route to
    /// the external addresses.
    private let instanceNamespaces: [(namespace: String, address: String)]
    /// The form Google writes every resource's own URL in.
    static let selfLinkBase = "https://www.googleapis.com/compute/v1"

    init(configuration: GCESimConfiguration, stateDirectory: String, bootDelay: Duration, stopGrace: Duration, sshdPath: String,
         keygenPath: String, logger: Logger, instanceNamespaces: [(String, String)] = []) throws
    {
        self.instanceNamespaces = instanceNamespaces.map { (namespace: $0.0, address: $0.1) }
        self.configuration = configuration
        self.bootDelay = bootDelay
        self.stopGrace = stopGrace
        self.stateDirectory = stateDirectory + "/gce"
        self.sshdPath = sshdPath
        self.keygenPath = keygenPath
        self.logger = logger
        account = try GCEServiceAccount(project: configuration.project, tokenLifetime: configuration.tokenLifetime)
        try FileManager.default.createDirectory(atPath: self.stateDirectory, withIntermediateDirectories: true)
    }

    /// The server is bound: the token endpoint's address is known, so the key file can be written.
    func listening(host: String, port: Int) throws {
        account.tokenURI = "http://\(host):\(port)/token"
        if let path = configuration.keyOutPath {
            let data = account.keyFile()
            // A key file is a secret: 0600, as gcloud writes one.
            _ = FileManager.default.createFile(atPath: path, contents: data, attributes: [.posixPermissions: 0o600])
            guard FileManager.default.fileExists(atPath: path) else {
                throw InstanceFiles.SetupError(description: "cannot write the GCE key file \(path)")
            }
        }
        routeInstanceNetworks()
        logger.notice("GCE emulation ready", metadata: [
            "gce.project": "\(configuration.project)", "gce.zone": "\(configuration.zone)", "gce.token_uri": "\(account.tokenURI)",
            "gce.key_file": "\(configuration.keyOutPath ?? "-")",
        ])
    }

    /// Answers the request when it is Google's (`/token`, `/compute/v1/…`), else nil.
    func handle(_ request: SimRequest, unavailable: Bool) async -> SimResponse? {
        let path = request.components
        if path == ["token"] {
            guard request.method == "POST" else { return GCEErrors.error(405, "Method Not Allowed", reason: "badRequest", status: "INVALID_ARGUMENT") }
            return account.token(form: request.body, now: .now, wallSeconds: Int64(Date().timeIntervalSince1970))
        }
        guard path.count >= 2, path[0] == "compute", path[1] == "v1" else { return nil }
        if let refusal = account.refusal(authorization: request.authorization, now: .now) { return refusal }
        if unavailable {
            return GCEErrors.error(503, "The service is currently unavailable.", reason: "backendError", status: "UNAVAILABLE")
        }
        let rest = Array(path.dropFirst(2))
        guard rest.count >= 5, rest[0] == "projects", rest[2] == "zones" else {
            return GCEErrors.error(404, "The requested URL /\(path.joined(separator: "/")) was not found on this server.", reason: "notFound", status: "NOT_FOUND")
        }
        let (project, zone) = (rest[1], rest[3])
        guard project == configuration.project else {
            return GCEErrors.error(403, "Permission denied on resource project \(project).", reason: "forbidden", status: "PERMISSION_DENIED")
        }
        guard zone == configuration.zone else {
            return GCEErrors.invalid("Invalid value for field 'zone': '\(zone)'. Unknown zone.")
        }
        switch (request.method, Array(rest.dropFirst(4))) {
        case ("POST", ["instances"]): return insert(request.body)
        case ("GET", ["instances"]): return list(request.query)
        case ("GET", let p) where p.count == 2 && p[0] == "instances":
            return machines[p[1]].map { .ok(.object(resource($0))) } ?? GCEErrors.notFound(instancePath(p[1]))
        case ("DELETE", let p) where p.count == 2 && p[0] == "instances": return delete(p[1])
        case ("POST", let p) where p.count == 3 && p[0] == "instances" && p[2] == "start": return start(p[1])
        case ("POST", let p) where p.count == 3 && p[0] == "instances" && p[2] == "stop": return stop(p[1])
        case ("GET", let p) where p.count == 2 && p[0] == "operations":
            return operations[p[1]].map { .ok(.object($0)) } ?? GCEErrors.notFound("projects/\(project)/zones/\(zone)/operations/\(p[1])")
        default:
            return GCEErrors.error(404, "The requested URL /\(path.joined(separator: "/")) was not found on this server.", reason: "notFound", status: "NOT_FOUND")
        }
    }

    /// GPU instances in lab namespaces (`--instance-netns`) have no route off their network, so
    /// no path to a VM's external address, which the real internet gives a Vast.ai host. The lab's
    /// namespaces get one route, to `--gce-nat-prefix`.0.0/16 via this sim's address on their
    /// network, and this sim's namespace forwards; nothing else of theirs changes.
    private func routeInstanceNetworks() {
        guard !instanceNamespaces.isEmpty else { return }
        let log = stateDirectory + "/network.log"
        if (try? InstanceFiles.run("/sbin/sysctl", ["-q", "-w", "net.ipv4.ip_forward=1"], log: log)) != 0 {
            logger.warning("GCE: cannot enable forwarding; GPU instances will not reach natIPs", metadata: ["gce.log": "\(log)"])
        }
        for (namespace, address) in instanceNamespaces {
            guard let gateway = Self.sourceAddress(toward: address, log: log) else {
                logger.warning("GCE: no route to a GPU instance network", metadata: ["gce.namespace": "\(namespace)", "gce.address": "\(address)"])
                continue
            }
            do {
                try GCEMachine.ip(["-n", namespace, "route", "replace", "\(configuration.natPrefix).0.0/16", "via", gateway], log: log)
            } catch {
                logger.warning("GCE: cannot route a GPU instance network to the VMs", metadata: ["gce.namespace": "\(namespace)", "gce.error": "\(error)"])
            }
        }
    }

    /// This namespace's own address on the way to `address` (`ip route get`'s `src`).
    static func sourceAddress(toward address: String, log: String) -> String? {
        let output = log + ".route"
        guard (try? InstanceFiles.run("/bin/sh", ["-c", "/bin/ip -o -4 route get \"$1\" > \"$2\"", "sh", address, output], log: log)) == 0,
            let text = try? String(contentsOfFile: output, encoding: .utf8)
        else { return nil }
        let words = text.split(whereSeparator: \.isWhitespace).map(String.init)
        guard let index = words.firstIndex(of: "src"), index + 1 < words.count else { return nil }
        return words[index + 1]
    }

    // MARK: instances.insert

    private func insert(_ body: Data) -> SimResponse {
        guard let fields = try? JSON.parse(body).objectValue else { return GCEErrors.invalid("Invalid JSON payload received.") }
        guard let name = fields["name"]?.stringValue, Self.isValidName(name) else {
            return GCEErrors.invalid("Invalid value for field 'resource.name': '\(fields["name"]?.stringValue ?? "")'. Must be a match of regex '(?:[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?|[1-9][0-9]{0,19})'")
        }
        if machines[name] != nil {
            return GCEErrors.error(409, "The resource '\(instancePath(name))' already exists", reason: "alreadyExists", status: "ALREADY_EXISTS")
        }
        let typeField = fields["machineType"]?.stringValue ?? ""
        let typeName = String(typeField.split(separator: "/").last ?? "")
        guard typeField.hasSuffix("zones/\(configuration.zone)/machineTypes/\(typeName)"), Self.machineTypes.contains(typeName) else {
            return GCEErrors.invalid("Invalid value for field 'resource.machineType': '\(typeField)'. Machine type with name '\(typeName)' does not exist in zone '\(configuration.zone)'.")
        }
        guard let disks = fields["disks"]?.arrayValue, disks.count == 1, disks[0]["boot"]?.boolValue == true,
            let initialize = disks[0]["initializeParams"]?.objectValue, initialize["sourceImage"]?.stringValue != nil
        else {
            return GCEErrors.invalid("Invalid value for field 'resource.disks': ''. Boot disk must be specified.")
        }
        let size = initialize["diskSizeGb"]?.intValue ?? 10
        guard size >= 10 else {
            return GCEErrors.invalid("Invalid value for field 'resource.disks[0].initializeParams.diskSizeGb': '\(size)'. Requested disk size cannot be smaller than the image size (10 GB)")
        }
        guard let interfaces = fields["networkInterfaces"]?.arrayValue, !interfaces.isEmpty else {
            return GCEErrors.invalid("Invalid value for field 'resource.networkInterfaces': ''. At least one network interface is required.")
        }
        let external = interfaces[0]["accessConfigs"]?.arrayValue?.contains { $0["type"]?.stringValue == "ONE_TO_ONE_NAT" } == true
        var labels: [String: String] = [:]
        for (key, value) in fields["labels"]?.objectValue ?? [:] {
            guard Self.isValidLabel(key, key: true), let text = value.stringValue, Self.isValidLabel(text, key: false) else {
                return GCEErrors.invalid("Invalid value for field 'resource.labels': '\(key)'. Label keys and values must be lowercase letters, digits, '-' and '_', at most 63 characters.")
            }
            labels[key] = text
        }
        var metadata: [(String, String)] = []
        for item in fields["metadata"]?["items"]?.arrayValue ?? [] {
            guard let key = item["key"]?.stringValue, let value = item["value"]?.stringValue else {
                return GCEErrors.invalid("Invalid value for field 'resource.metadata.items': every item needs a key and a string value.")
            }
            metadata.append((key, value))
        }
        let serial = nextSerial
        nextSerial += 1
        let machine: GCEMachine
        do {
            machine = try GCEMachine(
                name: name, serial: serial, id: UInt64.random(in: 1_000_000_000_000_000_000...9_000_000_000_000_000_000),
                machineType: typeName, diskSizeGB: size, labels: labels, metadata: metadata, external: external,
                networkIP: "10.128.\(serial / 250).\(serial % 250 + 2)", directory: stateDirectory + "/\(name)-\(serial)",
                keygen: keygenPath)
        } catch {
            return GCEErrors.error(500, "Internal error. warmpool-sim could not prepare the VM: \(error)", reason: "backendError", status: "INTERNAL")
        }
        machines[name] = machine
        logger.info("GCE instance inserted", metadata: ["gce.instance": "\(name)", "gce.machine_type": "\(typeName)", "gce.disk_gb": "\(size)"])
        let operation = newOperation("insert", machine)
        schedule(name, operation: operation, from: "PROVISIONING")
        return .ok(.object(operations[operation]!))
    }

    // MARK: Power

    private func start(_ name: String) -> SimResponse {
        guard let machine = machines[name] else { return GCEErrors.notFound(instancePath(name)) }
        let operation = newOperation("start", machine)
        switch machine.status {
        case "TERMINATED":
            schedule(name, operation: operation, from: "STAGING")
        case "STOPPING":
            operations[operation] = nil
            return GCEErrors.error(400, "The resource '\(instancePath(name))' is not ready", reason: "resourceNotReady", status: "FAILED_PRECONDITION")
        default:
            finish(operation)  // already running or on its way: nothing to do
        }
        return .ok(.object(operations[operation]!))
    }

    private func stop(_ name: String) -> SimResponse {
        guard let machine = machines[name] else { return GCEErrors.notFound(instancePath(name)) }
        let operation = newOperation("stop", machine)
        if machine.status == "TERMINATED" {
            finish(operation)
        } else if machine.status != "STOPPING" {
            cancelBoot(name)
            machines[name]?.status = "STOPPING"
            let generation = machines[name]!.generation
            Task {
                await self.halt(name)
                self.stopped(name, generation: generation, operation: operation)
            }
        } else {
            finish(operation)
        }
        return .ok(.object(operations[operation]!))
    }

    private func delete(_ name: String) -> SimResponse {
        guard let machine = machines[name] else { return GCEErrors.notFound(instancePath(name)) }
        let operation = newOperation("delete", machine)
        cancelBoot(name)
        machines[name]?.status = "STOPPING"
        machines[name]?.deleting = true
        Task {
            await self.halt(name)
            self.remove(name, operation: operation)
        }
        return .ok(.object(operations[operation]!))
    }

    /// PROVISIONING (insert only), STAGING, then RUNNING once the boot delay has passed: the VM's
    /// link comes up with a new external address, and the guest starts sshd and the startup script.
    private func schedule(_ name: String, operation: String, from status: String) {
        machines[name]?.generation += 1
        machines[name]?.status = status
        machines[name]?.bootOperation = operation
        guard let generation = machines[name]?.generation else { return }
        let delay = bootDelay
        Task {
            if status == "PROVISIONING" {
                try? await Task.sleep(for: delay / 3)
                guard self.advance(name, generation: generation, to: "STAGING") else { return }
            }
            try? await Task.sleep(for: status == "PROVISIONING" ? delay - delay / 3 : delay)
            self.boot(name, generation: generation, operation: operation)
        }
    }

    /// A boot under way lands nowhere; the insert or start it belonged to is done (the VM exists,
    /// or existed: what it leads to is read back with get).
    private func cancelBoot(_ name: String) {
        machines[name]?.generation += 1
        if let operation = machines[name]?.bootOperation { finish(operation) }
        machines[name]?.bootOperation = nil
    }

    private func advance(_ name: String, generation: Int, to status: String) -> Bool {
        guard machines[name]?.generation == generation else { return false }
        machines[name]?.status = status
        return true
    }

    private func boot(_ name: String, generation: Int, operation: String) {
        guard let machine = machines[name], machine.generation == generation, !isShutDown else { return }
        machines[name]?.bootOperation = nil
        do {
            var booted = machine
            try booted.boot(link: nextLink, natPrefix: configuration.natPrefix, sshd: sshdPath)
            nextLink += 1
            booted.status = "RUNNING"
            booted.lastStart = Date()
            machines[name] = booted
            logger.info("GCE instance running", metadata: ["gce.instance": "\(name)", "gce.nat_ip": "\(booted.natIP ?? "-")"])
            finish(operation)
        } catch {
            logger.error("GCE instance boot failed", metadata: ["gce.instance": "\(name)", "gce.error": "\(error)"])
            machines[name]?.status = "TERMINATED"
            finish(operation, error: ("INTERNAL_ERROR", "warmpool-sim could not boot the VM: \(error)"))
        }
    }

    /// Every process of the VM ends (SIGTERM, then SIGKILL after the grace), its link goes down
    /// and its external address is released.
    private func halt(_ name: String) async {
        guard let machine = machines[name] else { return }
        await machine.halt(grace: stopGrace)
        machines[name]?.natIP = nil
        machines[name]?.processes = nil
    }

    private func stopped(_ name: String, generation: Int, operation: String) {
        if machines[name]?.generation == generation {
            machines[name]?.status = "TERMINATED"
            machines[name]?.lastStop = Date()
            logger.info("GCE instance stopped", metadata: ["gce.instance": "\(name)"])
        }
        finish(operation)
    }

    private func remove(_ name: String, operation: String) {
        machines[name]?.destroy()
        machines[name] = nil
        logger.info("GCE instance deleted", metadata: ["gce.instance": "\(name)"])
        finish(operation)
    }

    private var isShutDown = false

    /// Every VM's processes end and its namespace goes; the disks stay for inspection.
    func shutdown() async {
        isShutDown = true
        for name in machines.keys.sorted() {
            guard let machine = machines[name] else { continue }
            await machine.halt(grace: stopGrace)
            machine.removeNamespace()
        }
    }

    // MARK: Listing

    /// For tests and drills, not Google's API: each VM's name, status, address and disk directory.
    func adminListing() -> [JSON] {
        machines.values.sorted { $0.serial < $1.serial }.map { machine in
            ["name": .string(machine.name), "status": .string(machine.status), "nat_ip": machine.natIP.map { .string($0) } ?? .null,
             "disk_directory": .string(machine.diskDirectory)]
        }
    }

    /// `filter` in the forms the client sends: `labels.KEY=VALUE` (or `labels.KEY = "VALUE"`) and
    /// `labels.KEY:*`; pages of `maxResults` (at most 500), `pageToken` an offset.
    private func list(_ query: [String: String]) -> SimResponse {
        var selected = machines.values.sorted { $0.serial < $1.serial }
        if let filter = query["filter"], !filter.isEmpty {
            guard let (key, value) = Self.parseLabelFilter(filter) else {
                return GCEErrors.invalid("Invalid value for field 'filter': '\(filter)'. Invalid list filter expression.")
            }
            selected = selected.filter { value == nil ? $0.labels[key] != nil : $0.labels[key] == value }
        }
        let limit = min(500, max(1, query["maxResults"].flatMap { Int($0) } ?? 500))
        let offset = query["pageToken"].flatMap { Int($0) } ?? 0
        let page = Array(selected.dropFirst(offset).prefix(limit))
        var body: [String: JSON] = [
            "kind": "compute#instanceList", "id": .string("projects/\(configuration.project)/zones/\(configuration.zone)/instances"),
            "selfLink": .string(Self.selfLinkBase + "/" + instancesPath),
        ]
        // Google leaves `items` out of an empty list.
        if !page.isEmpty { body["items"] = .array(page.map { .object(resource($0)) }) }
        if offset + limit < selected.count { body["nextPageToken"] = .string(String(offset + limit)) }
        return .ok(.object(body))
    }

    static func parseLabelFilter(_ filter: String) -> (String, String?)? {
        let text = filter.trimmingCharacters(in: .whitespaces)
        guard text.hasPrefix("labels.") else { return nil }
        let rest = text.dropFirst("labels.".count)
        if rest.hasSuffix(":*") { return (String(rest.dropLast(2)).trimmingCharacters(in: .whitespaces), nil) }
        let parts = rest.split(separator: "=", maxSplits: 1).map { $0.trimmingCharacters(in: .whitespaces) }
        guard parts.count == 2, !parts[0].isEmpty else { return nil }
        var value = parts[1]
        if value.count >= 2, value.hasPrefix("\""), value.hasSuffix("\"") { value = String(value.dropFirst().dropLast()) }
        return (parts[0], value)
    }

    // MARK: Resources

    private var zonePath: String { "projects/\(configuration.project)/zones/\(configuration.zone)" }
    private var instancesPath: String { zonePath + "/instances" }
    private func instancePath(_ name: String) -> String { instancesPath + "/" + name }

    private func resource(_ machine: GCEMachine) -> [String: JSON] {
        var access: [String: JSON] = ["kind": "compute#accessConfig", "type": "ONE_TO_ONE_NAT", "name": "External NAT", "networkTier": "PREMIUM"]
        if let ip = machine.natIP { access["natIP"] = .string(ip) }
        var resource: [String: JSON] = [
            "kind": "compute#instance", "id": .string(String(machine.id)), "name": .string(machine.name),
            "creationTimestamp": .string(Self.timestamp(machine.created)), "description": "",
            "status": .string(machine.status),
            "zone": .string(Self.selfLinkBase + "/" + zonePath),
            "machineType": .string(Self.selfLinkBase + "/" + zonePath + "/machineTypes/" + machine.machineType),
            "labels": .object(machine.labels.mapValues { .string($0) }),
            "metadata": ["kind": "compute#metadata", "items": .array(machine.metadata.map { ["key": .string($0.0), "value": .string($0.1)] })],
            "networkInterfaces": [.object([
                "kind": "compute#networkInterface", "name": "nic0", "networkIP": .string(machine.networkIP),
                "network": .string(Self.selfLinkBase + "/projects/\(configuration.project)/global/networks/default"),
                "accessConfigs": .array(machine.external ? [.object(access)] : []),
            ])],
            "disks": [[
                "kind": "compute#attachedDisk", "type": "PERSISTENT", "mode": "READ_WRITE", "boot": true, "autoDelete": true,
                "deviceName": "persistent-disk-0", "index": 0, "diskSizeGb": .string(String(machine.diskSizeGB)),
                "source": .string(Self.selfLinkBase + "/" + zonePath + "/disks/" + machine.name),
            ]],
            "selfLink": .string(Self.selfLinkBase + "/" + instancePath(machine.name)),
        ]
        if let start = machine.lastStart { resource["lastStartTimestamp"] = .string(Self.timestamp(start)) }
        if let stop = machine.lastStop { resource["lastStopTimestamp"] = .string(Self.timestamp(stop)) }
        return resource
    }

    private func newOperation(_ type: String, _ machine: GCEMachine) -> String {
        let now = Date()
        let name = "operation-\(Int64(now.timeIntervalSince1970 * 1000))-\(GCEServiceAccount.hex(bytes: 6))-\(GCEServiceAccount.hex(bytes: 4))"
        operations[name] = [
            "kind": "compute#operation", "id": .string(String(UInt64.random(in: 1_000_000_000_000_000_000...9_000_000_000_000_000_000))),
            "name": .string(name), "zone": .string(Self.selfLinkBase + "/" + zonePath), "operationType": .string(type),
            "targetLink": .string(Self.selfLinkBase + "/" + instancePath(machine.name)), "targetId": .string(String(machine.id)),
            "status": "RUNNING", "user": .string(account.email), "progress": 0,
            "insertTime": .string(Self.timestamp(now)), "startTime": .string(Self.timestamp(now)),
            "selfLink": .string(Self.selfLinkBase + "/" + zonePath + "/operations/" + name),
        ]
        return name
    }

    private func finish(_ operation: String, error: (code: String, message: String)? = nil) {
        guard operations[operation] != nil else { return }
        operations[operation]?["status"] = "DONE"
        operations[operation]?["progress"] = 100
        operations[operation]?["endTime"] = .string(Self.timestamp(Date()))
        if let error {
            operations[operation]?["error"] = ["errors": [["code": .string(error.code), "message": .string(error.message)]]]
        }
    }

    // MARK: Validation

    /// e2 shared-core and standard types, the ones Protocol/GCE.md prices (and a few larger).
    static let machineTypes: Set<String> = ["e2-micro", "e2-small", "e2-medium", "e2-standard-2", "e2-standard-4", "e2-standard-8"]

    /// RFC 1035, as Compute Engine requires of instance names.
    static func isValidName(_ name: String) -> Bool {
        let bytes = Array(name.utf8)
        guard (1...63).contains(bytes.count), (UInt8(ascii: "a")...UInt8(ascii: "z")).contains(bytes[0]), bytes.last != UInt8(ascii: "-") else { return false }
        return bytes.allSatisfy { (UInt8(ascii: "a")...UInt8(ascii: "z")).contains($0) || (UInt8(ascii: "0")...UInt8(ascii: "9")).contains($0) || $0 == UInt8(ascii: "-") }
    }

    static func isValidLabel(_ text: String, key: Bool) -> Bool {
        let bytes = Array(text.utf8)
        guard bytes.count <= 63, !key || !bytes.isEmpty else { return false }
        if key, !(UInt8(ascii: "a")...UInt8(ascii: "z")).contains(bytes[0]) { return false }
        return bytes.allSatisfy { (UInt8(ascii: "a")...UInt8(ascii: "z")).contains($0) || (UInt8(ascii: "0")...UInt8(ascii: "9")).contains($0) || $0 == UInt8(ascii: "-") || $0 == UInt8(ascii: "_") }
    }

    static func timestamp(_ date: Date) -> String {
        // RFC 3339 with the offset written out, as Compute Engine writes it (e.g. 2024-01-02T03:04:05.678-08:00).
        let formatter = DateFormatter()
        formatter.locale = Locale(identifier: "en_US_POSIX")
        formatter.timeZone = TimeZone(identifier: "UTC")
        formatter.dateFormat = "yyyy-MM-dd'T'HH:mm:ss.SSSxxx"
        return formatter.string(from: date)
    }
}
