import Foundation
import Logging

#if canImport(Glibc)
import Glibc
#endif

/// The emulator's state and logic: hosts, offers, instances (with their real processes),
/// volumes, faults and counters. HTTP-free: `handle(_:)` takes a `SimRequest` and answers a
/// `SimResponse`, so it is tested without a socket; `SimServer` only carries bytes to it.
public actor Simulator {
    public let configuration: SimConfiguration
    private let logger: Logger
    private var faults: FaultPlan
    public private(set) var counters = SimCounters()
    private var instances: [Int: SimInstance] = [:]
    /// Destroyed while unreachable: gone from the API, their processes still running on the
    /// cut-off host until `unreachable_instances` no longer names them.
    /// The GPU stays busy meanwhile.
    private var orphans: [Int: (processes: InstanceProcesses, machineID: Int, gpuSlots: [Int], seat: Int)] = [:]
    /// GPUs other renters hold, per machine (`rented_gpus`, `full_hosts`, and higher bids).
    private var othersHeld: [Int: [Int]] = [:]
    /// When each operation was last served: the `min_interval_ms` rate limits count from there.
    private var lastServed: [String: ContinuousClock.Instant] = [:]
    private var rateLimitAnswers = 0
    /// Vast.ai's notification webhooks, when any URL is configured.
    private let notifications: VastNotifications?
    private var volumes: [Int: SimVolume] = [:]
    private var nextInstanceID = 1001
    private var nextVolumeID = 5001
    private let authorizedKeysPath: String
    /// Set by `shutdown`: a boot that lands afterwards launches nothing.
    private var isShutDown = false
    /// Compute Engine, when emulated (`configuration.gce`).
    private let gce: GCECompute?

    public init(configuration: SimConfiguration, logger: Logger) throws {
        self.configuration = configuration
        self.logger = logger
        faults = configuration.faults
        notifications = configuration.notificationURLs.isEmpty ? nil
            : VastNotifications(urls: configuration.notificationURLs, secret: configuration.notificationSecret, logger: logger)
        let state = configuration.stateDirectory
        for directory in [state + "/volumes", state + "/instances"] {
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        }
        if let path = configuration.authorizedKeysPath {
            authorizedKeysPath = URL(fileURLWithPath: path).standardizedFileURL.path
        } else {
            // No keys given: sshd still runs (readiness checks see a banner) but nobody can log in.
            authorizedKeysPath = state + "/authorized_keys"
            if !FileManager.default.fileExists(atPath: authorizedKeysPath) {
                _ = FileManager.default.createFile(atPath: authorizedKeysPath, contents: Data())
            }
        }
        // sshd refuses to start without its privilege-separation directory.
        try? FileManager.default.createDirectory(atPath: "/run/sshd", withIntermediateDirectories: true)
        gce = try configuration.gce.map {
            try GCECompute(configuration: $0, stateDirectory: state, bootDelay: configuration.bootDelay,
                           stopGrace: configuration.stopGracePeriod, sshdPath: configuration.sshdPath,
                           keygenPath: configuration.sshKeygenPath, logger: logger,
                           instanceNamespaces: configuration.instanceNetwork.map { network in
                               configuration.hosts.flatMap { host in
                                   (1...host.gpuCount).map { (network.namespace(machine: host.machineID, slot: $0), network.address(machine: host.machineID, slot: $0)) }
                               }
                           } ?? [])
        }
        let machines = Set(configuration.hosts.map(\.machineID))
        guard machines.count == configuration.hosts.count else {
            throw InstanceFiles.SetupError(description: "two hosts share a machine id")
        }
    }

    // MARK: Requests

    public func handle(_ request: SimRequest) async -> SimResponse {
        // Google's paths (`/token`, `/compute/v1/…`) are not Vast.ai's, and Google's own auth applies.
        if let gce, let answer = await gce.handle(request, unavailable: faults.gceUnavailable) { return answer }
        reapExitedInstances()
        let route: Route
        do {
            route = try Route(request)
        } catch let error as Route.BadRequest {
            return .error(error.status, error.kind, error.message)
        } catch {
            return .error(400, "invalid_request", "\(error)")
        }
        // The CLI's import-time GET carries no key (reference §1, hidden requests).
        if case .gpuNames = route { return .ok(["gpu_names": .array(Set(configuration.hosts.map(\.gpuName)).sorted().map { .string($0) })]) }
        guard let caller = caller(of: request) else { return .error(401, "auth_error", "Invalid user key") }
        if case .admin(let action) = route {
            // Test controls: the account's key only, never an instance's CONTAINER_API_KEY.
            guard case .account = caller else { return .error(401, "auth_error", "Invalid user key") }
            return await admin(action)
        }

        if let operation = route.operation {
            if faults.latencyMs > 0 { try? await Task.sleep(for: .milliseconds(faults.latencyMs)) }
            switch faults.nextVerdict(random: { Double.random(in: 0..<1) }) {
            case .serve:
                break
            case .fail(let status):
                counters.injectedFailures[operation, default: 0] += 1
                return .error(status, "simulated_failure", "warmpool-sim injected a failure")
            case .rateLimit(let seconds):
                counters.rateLimited[operation, default: 0] += 1
                var response = rateLimitAnswer(threshold: nil)
                response.retryAfterSeconds = seconds
                return response
            }
            if let interval = faults.minimumInterval(operation) {
                let now = ContinuousClock.now
                if let last = lastServed[operation], now - last < interval {
                    counters.rateLimited[operation, default: 0] += 1
                    return rateLimitAnswer(threshold: interval)
                }
                lastServed[operation] = now
            }
            if faults.timeoutRate > 0, Double.random(in: 0..<1) < faults.timeoutRate {
                counters.timedOut[operation, default: 0] += 1
                try? await Task.sleep(for: .milliseconds(faults.timeoutMs))
            }
            counters.calls[operation, default: 0] += 1
        }
        return await serve(route)
    }

    /// Vast.ai's 429, in its documented forms: mostly plain text (`API requests too frequent`,
    /// with the endpoint's threshold when one applies), one in three the JSON error shape; never a
    /// `Retry-After` (a fault may add one).
    private func rateLimitAnswer(threshold: Duration?) -> SimResponse {
        rateLimitAnswers += 1
        let text = threshold.map { "API requests too frequent: endpoint threshold=\(Double($0.components.seconds) + Double($0.components.attoseconds) / 1e18)" }
            ?? "API requests too frequent"
        if rateLimitAnswers % 3 == 0 { return .error(429, "too_many_requests", text) }
        return .plainText(429, text)
    }

    private enum Caller {
        case account
        case instance(Int)
    }

    /// Whose key the request carries: the account's, or an instance's CONTAINER_API_KEY ("a
    /// per-instance API key for CLI commands from inside the container", docs.vast.ai, Docker
    /// Execution Environment). What an instance key may do is not documented; the guess here is
    /// every API call the account may make, for as long as the instance exists.
    private func caller(of request: SimRequest) -> Caller? {
        // Old CLIs (0.3.x) send the key as a query parameter as well.
        func carries(_ key: String) -> Bool { request.authorization == "Bearer \(key)" || request.query["api_key"] == key }
        if carries(configuration.apiKey) { return .account }
        return instances.values.first { !$0.destroying && carries($0.apiKey) }.map { Caller.instance($0.id) }
    }

    private func serve(_ route: Route) async -> SimResponse {
        switch route {
        case .currentUser:
            return .ok(["id": 1, "username": "warmpool-sim", "email": "sim@localhost", "host_agreement_accepted": false,
                        "balance": 1000, "credit": 1000, "ssh_key": nil])
        case .instanceFilters:
            return .ok(["filters": .array(instances.values.map {
                ["actual_status": JSON($0.actualStatus), "verification": "verified", "gpu_name": .string($0.host.gpuName)]
            })])
        case .searchOffers(let body):
            do {
                return .ok(["offers": .array(try RowQuery(body: body).apply(offerRows()).map { .object($0) })])
            } catch {
                return .error(400, "invalid_query", "\(error)")
            }
        case .searchVolumeOffers(let body):
            do {
                let rows = try RowQuery(body: body).apply(configuration.hosts.map { $0.volumeOfferRow() })
                return .ok(["offers": .array(rows.map { .object($0) })])
            } catch {
                return .error(400, "invalid_query", "\(error)")
            }
        case .listInstances(let query):
            return listInstances(query)
        case .listInstancesV0:
            return .ok(["instances": .array(sortedInstances().map { .object(row($0)) })])
        case .showInstance(let id):
            return .ok(["instances": instances[id].map { .object(row($0)) } ?? .null])
        case .createInstance(let offerID, let body):
            return createInstance(offerID: offerID, body: body)
        case .startInstance(let id):
            return startInstance(id)
        case .stopInstance(let id):
            return await stopInstance(id)
        case .rebootInstance(let id):
            guard instances[id] != nil else { return .error(404, "no_such_instance", "Instance \(id) not found.") }
            _ = await stopInstance(id)
            return startInstance(id)
        case .labelInstance(let id, let label):
            guard instances[id] != nil else { return .error(404, "no_such_instance", "Instance \(id) not found.") }
            instances[id]?.label = label
            return .ok(["success": true])
        case .destroyInstance(let id):
            return await destroyInstance(id)
        case .createVolume(let body):
            return createVolume(body)
        case .listVolumes:
            return .ok(["volumes": .array(volumes.keys.sorted().compactMap { id in
                volumes[id].map { volume in .object(volume.row(instances: instanceIDs(linkedTo: volume.id))) }
            })])
        case .deleteVolume(let id):
            return deleteVolume(id)
        case .gpuNames, .admin:
            return .error(500, "internal", "unreachable route")
        }
    }

    // MARK: Offers

    /// One 1-GPU offer per free GPU, and one offer of all of a machine's free GPUs when it has two
    /// or more; an offline machine offers nothing.
    private func offerRows() -> [[String: JSON]] {
        configuration.hosts.filter { !isOffline($0.machineID) }.flatMap { host in
            let free = freeSlots(host)
            return free.map { host.offerRow(slot: $0) } + (free.count >= 2 ? [host.bundleOfferRow(gpus: free.count)] : [])
        }
    }

    private func freeSlots(_ host: HostSpec) -> [Int] {
        // An orphan (destroyed while unreachable) keeps its GPUs until its processes are gone.
        let held = Set(instances.values.filter { $0.host.machineID == host.machineID }.flatMap(\.gpuSlots)
            + orphans.values.filter { $0.machineID == host.machineID }.flatMap(\.gpuSlots) + (othersHeld[host.machineID] ?? []))
        return (1...host.gpuCount).filter { !held.contains($0) }
    }

    /// The GPUs a start (or a resume) of `instance` would take now, nil if it must wait. An
    /// outbid instance waits for its own GPUs, which the higher bid holds.
    private func startableSlots(_ instance: SimInstance) -> [Int]? {
        let free = freeSlots(instance.host)
        if instance.outbid || faults.ownGPURestart { return instance.homeSlots.allSatisfy(free.contains) ? instance.homeSlots : nil }
        return free.count >= instance.gpuCount ? Array(free.prefix(instance.gpuCount)) : nil
    }

    /// Seats (with instance networks: namespaces and addresses, one per GPU) not used by an
    /// instance of the machine, stopped ones included.
    private func freeSeats(_ host: HostSpec) -> [Int] {
        let used = Set(instances.values.filter { $0.host.machineID == host.machineID }.map(\.seat)
            + orphans.values.filter { $0.machineID == host.machineID }.map(\.seat))
        return (1...host.gpuCount).filter { !used.contains($0) }
    }

    /// The market moves: other renters take free GPUs up to what they want (or give back what
    /// they no longer want), then starts waiting in `scheduling` get the GPUs left, oldest
    /// instance first. Called after anything that frees or wants a GPU.
    private func settleMarket() {
        for host in configuration.hosts {
            let machine = host.machineID
            let demand = faults.rentedDemand(machine: machine, gpuCount: host.gpuCount)
            var held = othersHeld[machine] ?? []
            if held.count > demand { held.removeLast(held.count - demand) }
            othersHeld[machine] = held
            if held.count < demand { othersHeld[machine] = held + freeSlots(host).prefix(demand - held.count) }
            guard !isOffline(machine) else { continue }
            for id in instances.keys.sorted() {
                guard let instance = instances[id], instance.host.machineID == machine, instance.isScheduling else { continue }
                guard let slots = startableSlots(instance) else { continue }
                if instance.outbid {
                    resumeOutbid(id, slots: slots)
                } else {
                    instances[id]?.gpuSlots = slots
                    instances[id]?.actualStatus = "loading"
                    instances[id]?.statusMessage = "Starting instance (a GPU was free after scheduling)"
                    logger.info("scheduled start got a GPU", metadata: ["sim.instance_id": "\(id)"])
                    scheduleBoot(id)
                }
            }
        }
    }

    // MARK: Instances

    private func sortedInstances() -> [SimInstance] { instances.keys.sorted().compactMap { instances[$0] } }

    private func row(_ instance: SimInstance) -> [String: JSON] {
        instance.row(volume: instance.volumeID.flatMap { volumes[$0] }, offline: isOffline(instance.host.machineID))
    }

    private func isOffline(_ machine: Int) -> Bool { faults.offlineMachines.contains(machine) || isLost(machine) }

    private func isLost(_ machine: Int) -> Bool { faults.lostMachines.contains(machine) }

    private func instanceIDs(linkedTo volumeID: Int) -> [Int] {
        instances.values.filter { $0.volumeID == volumeID }.map(\.id).sorted()
    }

    /// `GET /api/v1/instances/`: pages of `limit` rows (1-25) in id order; `next_token` is the
    /// last id of the page while rows remain, sent back as `after_token`.
    private func listInstances(_ query: [String: String]) -> SimResponse {
        let limit = min(25, max(1, query["limit"].flatMap { Int($0) } ?? 25))
        var rows = sortedInstances().map(row)
        if let text = query["select_filters"], let filters = try? JSON.parse(Data(text.utf8)).objectValue {
            guard let filter = try? RowQuery(body: filters) else {
                return .error(400, "invalid_query", "select_filters: expected {field: {op: value}}")
            }
            rows = filter.apply(rows)
        }
        let total = rows.count
        if let token = query["after_token"], !token.isEmpty {
            guard let after = Int(token) else { return .error(400, "invalid_token", "after_token \(token) is not one of ours") }
            rows = rows.filter { ($0["id"]?.intValue ?? 0) > after }
        }
        let page = Array(rows.prefix(limit))
        let next: JSON = rows.count > limit ? .string(String(page.last?["id"]?.intValue ?? 0)) : .null
        var labels: [String: JSON] = [:]
        for instance in instances.values { if let label = instance.label { labels[label] = .number((labels[label]?.numberValue ?? 0) + 1) } }
        return .ok(["instances": .array(page.map { .object($0) }), "next_token": next, "total_instances": JSON(total),
                    "label_counts": .object(labels)])
    }

    private func createInstance(offerID: Int, body: [String: JSON]) -> SimResponse {
        guard let host = configuration.hosts.first(where: { offerID / 100 == $0.machineID }),
            !isOffline(host.machineID), case let free = freeSlots(host), case let slot = offerID % 100,
            slot == 0 ? free.count >= 2 : free.contains(slot)
        else {
            return .error(404, "no_such_ask", "Instance type by id \(offerID) is not available.")
        }
        let slots = slot == 0 ? free : [slot]
        // A stopped instance keeps its seat, not its GPU: a GPU's own address may be taken.
        let seats = freeSeats(host)
        let seat = seats.contains(slots[0]) ? slots[0] : seats.first ?? (configuration.instanceNetwork == nil ? slots[0] : 0)
        guard seat > 0 else {
            return .error(500, "host_error", "warmpool-sim: machine \(host.machineID) has no free instance network (one per GPU) for another instance")
        }
        guard let image = body["image"]?.stringValue, !image.isEmpty else {
            return .error(400, "invalid_args", "image is required")
        }
        var volumeID: Int?
        var mountPath = "/data"
        if let info = body["volume_info"]?.objectValue {
            guard info["create_new"]?.boolValue != true else {
                return .error(400, "invalid_args", "warmpool-sim links existing volumes only (create_new: false)")
            }
            guard let id = info["volume_id"]?.intValue, let volume = volumes[id] else {
                return .error(404, "no_such_volume", "volume_info.volume_id names no volume of yours")
            }
            guard volume.host.machineID == host.machineID else {
                return .error(400, "invalid_args", "volume \(id) is on machine \(volume.host.machineID), the offer on \(host.machineID)")
            }
            mountPath = info["mount_path"]?.stringValue ?? ""
            guard InstanceFiles.isValidMountPath(mountPath) else {
                return .error(400, "invalid_args", "volume_info.mount_path must be an absolute path")
            }
            volumeID = id
        }
        var env: [(String, String)] = []
        for (key, value) in (body["env"]?.objectValue ?? [:]).sorted(by: { $0.key < $1.key }) {
            env.append((key, value.stringValue ?? RowQuery.text(value)))
        }
        let id = nextInstanceID
        let directory = configuration.stateDirectory + "/instances/\(id)"
        // With a network of its own the instance's sshd has port 22 on its own address, as on a host.
        let network = configuration.instanceNetwork
        let address = network?.address(machine: host.machineID, slot: seat) ?? configuration.sshAddress
        let port: Int
        do {
            port = network == nil ? try InstanceFiles.freePort() : 22
            try InstanceFiles.create(directory: directory, sshPort: port, address: address,
                                     authorizedKeys: authorizedKeysPath, onstart: body["onstart"]?.stringValue,
                                     keygen: configuration.sshKeygenPath)
        } catch {
            return .error(500, "host_error", "cannot prepare instance: \(error)")
        }
        nextInstanceID += 1
        instances[id] = SimInstance(
            id: id, host: host, gpuCount: slots.count, gpuSlots: slots, homeSlots: slots, seat: seat, offerID: offerID,
            interruptible: body["price"]?.numberValue != nil, label: body["label"]?.stringValue, image: image, env: env,
            onstart: body["onstart"]?.stringValue, volumeID: volumeID, mountPath: mountPath,
            diskGB: body["disk"]?.numberValue ?? 10, runtype: body["runtype"]?.stringValue ?? "ssh",
            sshPort: port, sshAddress: address, netns: network?.namespace(machine: host.machineID, slot: seat),
            directory: directory, startDate: Date().timeIntervalSince1970, apiKey: InstanceEnvironment.newAPIKey())
        counters.creates += 1
        logger.info("instance created", metadata: [
            "sim.instance_id": "\(id)", "sim.machine_id": "\(host.machineID)", "sim.ssh_port": "\(port)",
            "sim.volume_id": "\(volumeID.map(String.init) ?? "-")", "sim.env_keys": "\(env.map(\.0).joined(separator: ","))",
        ])
        if volumeID != nil, !configuration.mountVolumes {
            logger.warning("the linked volume will not be attached: this emulator cannot mount (not root, or --no-mounts)",
                           metadata: ["sim.instance_id": "\(id)", "sim.volume_id": "\(volumeID.map(String.init) ?? "-")"])
        }
        scheduleBoot(id)
        return .ok(["success": true, "new_contract": JSON(id)])
    }

    // MARK: Power
    //
    // How create, start, stop, destroy and the boot interleave: the one place this is decided.
    // Vast.ai documents only that "a stop can come while an instance is still booting (its
    // onstart may already be running)" (reference/vastai-marketplace.md, "What an instance is
    // given"), so these rules are guesses (Protocol/VASTAI-SIM.md, "Power"):
    //
    // - Create and start schedule one boot (`booting`). It lands after the boot delay, launches
    //   the processes (sshd, onstart) and reports "running". A start while a boot is under way
    //   schedules no second one.
    // - Nothing but a destroy cancels a boot under way. A stop meanwhile is accepted at once
    //   (intended "stopped", actual still "loading"); the boot lands, launches the processes,
    //   and once the launcher has started onstart the stop takes effect: SIGTERM, the grace
    //   period, SIGKILL, then "exited". So onstart may run briefly. A start before the stop took
    //   effect takes it back.
    // - A stop of a running instance ends its processes before it answers; so does a destroy.
    //   A destroy during a boot lets the boot launch nothing: its GPU slot (and, with instance
    //   networks, the slot's address and port 22) is free for another instance at once.
    // - A boot waits for a stop still ending the processes, so two sshds never race for a port.
    // - GPUs (reference/vastai-marketplace.md, "A stopped instance reserves nothing"): an
    //   instance holds its GPUs from create or start until its stop took effect. A start that
    //   finds too few free waits in `scheduling`, for ever if need be, until `settleMarket` gives
    //   it GPUs (other renters, who may take them first, are served before it). A stop or a
    //   destroy while scheduling ends the wait.
    // - Offline machines: the provider cannot reach them. A stop, start or destroy is recorded
    //   (a destroy drops the instance from the API at once) and carried out when the machine is
    //   back; a boot that comes due meanwhile waits for it too.

    private func startInstance(_ id: Int) -> SimResponse {
        guard let instance = instances[id], !instance.destroying else {
            return .error(404, "no_such_instance", "Instance \(id) not found.")
        }
        if faults.failStartInstances.contains(id) {
            counters.failedStarts[String(id), default: 0] += 1
            return .refused("warmpool-sim: simulated start failure for instance \(id)")
        }
        counters.starts[String(id), default: 0] += 1
        instances[id]?.intendedStatus = "running"
        // Booting, or running with its processes alive: nothing to launch. A stop that has not
        // taken effect yet (it came during the boot) is taken back.
        if instance.booting || instance.processes?.isAlive == true || instance.outbid {
            if instance.isStopped { return .ok(["success": true]) }
            return .ok(["success": true, "msg": .string("instance \(id) is already running")])
        }
        if isOffline(instance.host.machineID) { return .ok(["success": true]) }  // when the machine is back
        if instance.gpuSlots.isEmpty {
            guard let slots = startableSlots(instance) else {
                instances[id]?.actualStatus = "scheduling"
                instances[id]?.statusMessage = "Scheduling: waiting for a GPU of machine \(instance.host.machineID) to be free"
                logger.info("start waits for a GPU (scheduling)", metadata: ["sim.instance_id": "\(id)"])
                return .ok(["success": true])
            }
            instances[id]?.gpuSlots = slots
        }
        instances[id]?.statusMessage = "Starting instance"
        instances[id]?.actualStatus = "loading"
        scheduleBoot(id)
        return .ok(["success": true])
    }

    private func stopInstance(_ id: Int) async -> SimResponse {
        guard let instance = instances[id], !instance.destroying else {
            return .error(404, "no_such_instance", "Instance \(id) not found.")
        }
        counters.stops[String(id), default: 0] += 1
        // Accepted, but the command never reaches the host: it goes on running.
        if faults.staleStopInstances.contains(id) {
            // The provider records the stop and reports it done; the host never hears of it.
            instances[id]?.intendedStatus = "stopped"
            instances[id]?.actualStatus = "exited"
            instances[id]?.statusMessage = "Instance stopped"
            return .ok(["success": true])
        }
        if faults.unreachableInstances.contains(id) { return .ok(["success": true]) }
        instances[id]?.intendedStatus = "stopped"
        if isOffline(instance.host.machineID) { return .ok(["success": true]) }  // when the machine is back
        if instance.booting {
            // Not a cancel: the boot lands, launches, and then this stop takes effect.
            instances[id]?.statusMessage = "Stopping instance once it has booted"
            return .ok(["success": true])
        }
        await terminateProcesses(id)
        settleStopped(id)
        return .ok(["success": true])
    }

    private func destroyInstance(_ id: Int) async -> SimResponse {
        guard let instance = instances[id], !instance.destroying else {
            return .error(404, "no_such_instance", "Instance \(id) not found.")
        }
        // From here on no start, stop or boot touches it, while its processes end.
        instances[id]?.destroying = true
        if faults.unreachableInstances.contains(id) || (isOffline(instance.host.machineID) && !isLost(instance.host.machineID)),
            let processes = instance.processes {
            orphans[id] = (processes, instance.host.machineID, instance.gpuSlots, instance.seat)
        } else {
            await terminateProcesses(id)
        }
        instances[id] = nil
        settleMarket()
        counters.destroys += 1
        logger.info("instance destroyed", metadata: ["sim.instance_id": "\(id)"])
        return .ok(["success": true])
    }

    /// Stops an instance's processes; a boot scheduled meanwhile waits for this to finish.
    private func terminateProcesses(_ id: Int) async {
        guard let processes = instances[id]?.processes else {
            await instances[id]?.termination?.value
            return
        }
        instances[id]?.processes = nil
        instances[id]?.frozen = false
        let grace = configuration.stopGracePeriod
        let termination = Task { await processes.terminate(grace: grace) }
        instances[id]?.termination = termination
        await termination.value
    }

    /// After its processes ended: "exited", unless a start or a boot came in meanwhile.
    /// Its GPUs go back to the market.
    private func settleStopped(_ id: Int) {
        guard let instance = instances[id], instance.isStopped, !instance.booting, instance.processes == nil else { return }
        instances[id]?.actualStatus = "exited"
        instances[id]?.statusMessage = "Instance stopped"
        instances[id]?.gpuSlots = []
        instances[id]?.outbid = false
        settleMarket()
    }

    private func scheduleBoot(_ id: Int) {
        guard instances[id] != nil else { return }
        instances[id]?.booting = true
        let delay = faults.bootDelayMs.map { Duration.milliseconds($0) } ?? configuration.bootDelay
        Task {
            try? await Task.sleep(for: delay)
            await self.boot(id)
        }
    }

    /// The boot lands: launches the instance's processes unless it was destroyed (or the emulator
    /// shut down) meanwhile; a stop that came during the boot then takes effect.
    private func boot(_ id: Int) async {
        if let pending = instances[id]?.termination { await pending.value }
        guard !isShutDown, let instance = instances[id], instance.booting, !instance.destroying else { return }
        if isOffline(instance.host.machineID) {
            instances[id]?.bootDeferred = true
            return
        }
        instances[id]?.booting = false
        guard launch(instance) else { return }
        guard instances[id]?.isStopped == true else { return }
        logger.info("stopped while booting: the stop takes effect now", metadata: ["sim.instance_id": "\(id)"])
        await waitUntilLaunched(instance)
        // A start may have taken the stop back meanwhile, or a destroy ended it already.
        guard let now = instances[id], now.isStopped, !now.destroying else { return }
        await terminateProcesses(id)
        settleStopped(id)
    }

    /// Starts the launcher: sshd, onstart, the volume at its mount path. Returns whether it runs.
    private func launch(_ instance: SimInstance) -> Bool {
        let id = instance.id
        let volume = instance.volumeID.flatMap { volumes[$0] }
        // Without mounts the linked volume is not attached at all: nothing at the mount path.
        let mount = configuration.mountVolumes && volume != nil
        let environment = InstanceEnvironment.make(instance: instance,
                                                   sshPublicKey: InstanceEnvironment.firstKey(inAuthorizedKeys: authorizedKeysPath))
        let ssh = !faults.noSSHInstances.contains(id)
        // As root every instance gets a mount namespace of its own: its volume and its /etc/ssh.
        // Without root neither: its agent then reads this machine's /etc/ssh (a deviation).
        let privateMounts = configuration.mountVolumes
        var prefix = instance.netns.map { ["/bin/ip", "netns", "exec", $0] } ?? []
        if privateMounts { prefix += ["/usr/bin/unshare", "--mount", "--propagation", "private"] }
        do {
            // The bind needs a mount point; a real host has /data in its image.
            if mount { try FileManager.default.createDirectory(atPath: instance.mountPath, withIntermediateDirectories: true) }
            try? FileManager.default.removeItem(atPath: instance.directory + "/" + InstanceFiles.launchedMarker)
            let hostKey = faults.impostorSSHInstances.contains(id)
                ? try InstanceFiles.impostorKey(instance.directory, keygen: configuration.sshKeygenPath)
                : InstanceFiles.hostKey(instance.directory)
            let processes = try InstanceProcesses(
                launcher: instance.directory + "/launcher.sh",
                arguments: [instance.directory, mount ? volume?.directory ?? "" : "", mount ? "1" : "0", instance.mountPath,
                            ssh ? "1" : "0", configuration.sshdPath, hostKey, privateMounts ? "1" : "0"],
                environment: environment, workingDirectory: instance.home, logPath: instance.directory + "/launcher.log",
                prefix: prefix)
            instances[id]?.processes = processes
            instances[id]?.termination = nil
            instances[id]?.actualStatus = "running"
            instances[id]?.statusMessage = "success, running \(instance.image)"
            counters.boots[String(id), default: 0] += 1
            logger.info("instance running", metadata: [
                "sim.instance_id": "\(id)", "sim.pid": "\(processes.launcherPID)", "sim.ssh": "\(ssh)", "sim.mount": "\(mount)",
            ])
            return true
        } catch {
            instances[id]?.actualStatus = "exited"
            instances[id]?.statusMessage = "launch failed: \(error)"
            logger.error("instance launch failed", metadata: ["sim.instance_id": "\(id)", "sim.error": "\(error)"])
            return false
        }
    }

    /// Until the launcher has started sshd and onstart (it then writes its marker), or it
    /// exited, or two seconds passed.
    private func waitUntilLaunched(_ instance: SimInstance) async {
        let marker = instance.directory + "/" + InstanceFiles.launchedMarker
        let deadline = ContinuousClock.now + .seconds(2)
        while ContinuousClock.now < deadline, !FileManager.default.fileExists(atPath: marker),
            instances[instance.id]?.processes?.isAlive == true
        {
            try? await Task.sleep(for: .milliseconds(5))
        }
    }

    /// An instance whose launcher exited by itself (a failed mount, say) has exited, as a
    /// container whose main process ends does.
    private func reapExitedInstances() {
        for (id, instance) in instances {
            guard let processes = instance.processes, !processes.isAlive else { continue }
            instances[id]?.processes = nil
            instances[id]?.actualStatus = "exited"
            instances[id]?.statusMessage = "container exited; see \(instance.directory)/launcher.log"
        }
    }

    // MARK: Volumes

    private func createVolume(_ body: [String: JSON]) -> SimResponse {
        guard let offerID = body["id"]?.intValue, let host = configuration.hosts.first(where: { $0.volumeOfferID == offerID }) else {
            return .error(404, "no_such_ask", "volume offer \(body["id"].map(RowQuery.text) ?? "(none)") is not available")
        }
        let size = body["size"]?.numberValue ?? 15
        guard size > 0 else { return .error(400, "invalid_args", "size must be positive") }
        let id = nextVolumeID
        let directory = configuration.stateDirectory + "/volumes/\(id)"
        do {
            // Empty: the emulator writes nothing on a volume, as Vast.ai writes nothing on one.
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        } catch {
            return .error(500, "host_error", "cannot create the volume directory: \(error)")
        }
        nextVolumeID += 1
        volumes[id] = SimVolume(id: id, host: host, name: body["name"]?.stringValue, sizeGB: size, directory: directory,
                                startDate: Date().timeIntervalSince1970)
        counters.volumeCreates += 1
        return .ok(["success": true, "volume_id": JSON(id)])
    }

    private func deleteVolume(_ id: Int) -> SimResponse {
        guard let volume = volumes[id] else { return .error(404, "no_such_volume", "Volume \(id) not found.") }
        let users = instanceIDs(linkedTo: id)
        guard users.isEmpty else { return .refused("volume \(id) is linked to instances \(users); destroy them first") }
        volumes[id] = nil
        try? FileManager.default.removeItem(atPath: volume.directory)
        counters.volumeDeletes += 1
        return .ok(["success": true])
    }

    // MARK: Admin

    private func admin(_ action: Route.AdminAction) async -> SimResponse {
        switch action {
        case .counters:
            return .ok((try? JSON.parse(JSONEncoder().encode(counters))) ?? nil)
        case .resetCounters:
            counters = SimCounters()
            return .ok(["success": true])
        case .faults:
            return .ok((try? JSON.parse(JSONEncoder().encode(faults))) ?? nil)
        case .setFaults(let plan):
            let wasLost = Set(faults.lostMachines)
            let wasOffline = Set(faults.offlineMachines).union(wasLost)
            var plan = plan
            plan.lostMachines = wasLost.union(plan.lostMachines).sorted()  // never back
            faults = plan
            let isOffline = Set(plan.offlineMachines).union(plan.lostMachines)
            for machine in isOffline.subtracting(wasOffline).sorted() { machineWentOffline(machine) }
            for machine in Set(plan.lostMachines).subtracting(wasLost).sorted() { await machineLost(machine) }
            // The host is back: the destroys it missed take effect.
            for (id, orphan) in orphans where !plan.unreachableInstances.contains(id) && !isOffline.contains(orphan.machineID) {
                orphans[id] = nil
                await orphan.processes.terminate(grace: configuration.stopGracePeriod)
            }
            for machine in wasOffline.subtracting(isOffline).sorted() { await machineCameBack(machine) }
            settleMarket()
            logger.notice("faults set", metadata: ["sim.faults": "\(plan)"])
            return .ok((try? JSON.parse(JSONEncoder().encode(faults))) ?? nil)
        case .instance(let id):
            guard let instance = instances[id] else { return .error(404, "no_such_instance", "Instance \(id) not found.") }
            return .ok(["id": JSON(id), "directory": .string(instance.directory), "frozen": .bool(instance.frozen),
                        "booting": .bool(instance.booting),
                        "launcher_pid": JSON(instance.processes.map { Int($0.launcherPID) }),
                        "processes_alive": .bool(instance.processes?.isAlive == true),
                        "volume_directory": JSON(instance.volumeID.flatMap { volumes[$0]?.directory })])
        case .outbid(let id):
            return outbid(id)
        case .notify(let kind, let machine, let data):
            let affected = sortedInstances().filter { $0.host.machineID == machine }
            for instance in affected { notify(kind, instance, data: data) }
            return .ok(["success": true, "instances": .array(affected.map { JSON($0.id) })])
        case .notifications:
            return .ok(["deliveries": await notifications?.log() ?? .array([])])
        case .gceInstances:
            return .ok(["instances": .array(await gce?.adminListing() ?? [])])
        case .crash(let id), .freeze(let id), .thaw(let id):
            guard let processes = instances[id]?.processes, processes.isAlive else {
                return .error(409, "not_running", "instance \(id) has no running processes")
            }
            switch action {
            case .crash:
                // The processes die; the provider still reports "running", as it would for a
                // container whose host is up: only our own heartbeats can tell.
                instances[id]?.processes = nil
                await processes.crash()
            case .freeze:
                processes.signalAll(SIGSTOP)
                instances[id]?.frozen = true
            default:
                processes.signalAll(SIGCONT)
                instances[id]?.frozen = false
            }
            return .ok(["success": true])
        }
    }

    // MARK: Marketplace events

    /// A higher bid takes an interruptible instance's GPUs: its processes are paused (stopped,
    /// not ended), the provider shows it `stopped` while it still means to run, and an `outbid`
    /// notification goes out. It resumes when that bid gives the GPUs back (`rented_gpus`
    /// lowered), or ends if it is stopped or destroyed meanwhile.
    private func outbid(_ id: Int) -> SimResponse {
        guard let instance = instances[id], !instance.destroying else {
            return .error(404, "no_such_instance", "Instance \(id) not found.")
        }
        guard instance.interruptible else {
            return .error(409, "on_demand", "instance \(id) is on-demand: only interruptible (bid) instances are outbid")
        }
        guard !instance.outbid, !instance.gpuSlots.isEmpty, let processes = instance.processes, processes.isAlive else {
            return .error(409, "not_running", "instance \(id) holds no GPU to be outbid for")
        }
        processes.signalAll(SIGSTOP)
        let machine = instance.host.machineID
        instances[id]?.outbid = true
        instances[id]?.homeSlots = instance.gpuSlots
        instances[id]?.gpuSlots = []
        instances[id]?.actualStatus = "stopped"
        instances[id]?.statusMessage = "Outbid: paused until its bid wins a GPU of machine \(machine) again"
        // The higher bid holds exactly these GPUs, on top of what other renters hold.
        othersHeld[machine, default: []] += instance.gpuSlots
        faults.rentedGPUs[String(machine)] = (othersHeld[machine] ?? []).count
        logger.notice("instance outbid", metadata: ["sim.instance_id": "\(id)"])
        notify(.outbid, instance, message: "Your bid on instance \(id) was exceeded; the instance is paused.")
        return .ok(["success": true])
    }

    private func resumeOutbid(_ id: Int, slots: [Int]) {
        guard let instance = instances[id] else { return }
        instances[id]?.gpuSlots = slots
        instances[id]?.outbid = false
        if !instance.frozen { instance.processes?.signalAll(SIGCONT) }
        instances[id]?.actualStatus = instance.processes?.isAlive == true ? "running" : "exited"
        instances[id]?.statusMessage = "success, running \(instance.image)"
        notify(.resumed, instance, message: "Instance \(id) resumed after scheduling.")
    }

    /// Every instance of the machine becomes unreachable at once: processes paused (no
    /// heartbeat, no SSH, no volume), shown `offline`.
    private func machineWentOffline(_ machine: Int) {
        logger.notice("machine offline", metadata: ["sim.machine_id": "\(machine)"])
        for instance in sortedInstances() where instance.host.machineID == machine {
            instance.processes?.signalAll(SIGSTOP)
            notify(.offline, instance, message: "Machine \(machine) hosting instance \(instance.id) is offline.")
        }
    }

    /// Gone for good: its instances' processes die with the hardware (they stay listed, `offline`),
    /// and what its volumes held is lost (each volume's directory is emptied; the volume stays
    /// listed, as a record at the provider, until it is deleted).
    private func machineLost(_ machine: Int) async {
        logger.notice("machine lost for good", metadata: ["sim.machine_id": "\(machine)"])
        for instance in sortedInstances() where instance.host.machineID == machine {
            guard let processes = instance.processes else { continue }
            instances[instance.id]?.processes = nil
            await processes.crash()
        }
        for volume in volumes.values where volume.host.machineID == machine {
            let contents = (try? FileManager.default.contentsOfDirectory(atPath: volume.directory)) ?? []
            for name in contents { try? FileManager.default.removeItem(atPath: volume.directory + "/" + name) }
        }
    }

    /// Back online: processes run again, then what was asked meanwhile takes effect (a stop
    /// ends them, a boot lands, a start waits for a GPU like any other).
    private func machineCameBack(_ machine: Int) async {
        logger.notice("machine back online", metadata: ["sim.machine_id": "\(machine)"])
        for instance in sortedInstances() where instance.host.machineID == machine {
            let id = instance.id
            if !instance.frozen, !instance.outbid { instance.processes?.signalAll(SIGCONT) }
            notify(.online, instance, message: "Machine \(machine) hosting instance \(id) is back online.")
            if instance.bootDeferred {
                instances[id]?.bootDeferred = false
                Task { await self.boot(id) }
            } else if instance.isStopped, !instance.booting {
                await terminateProcesses(id)
                settleStopped(id)
            }
        }
    }

    private func notify(_ kind: VastNotificationKind, _ instance: SimInstance, message: String? = nil, data: [String: JSON] = [:]) {
        guard let notifications else { return }
        var fields = data
        fields["instance_id"] = JSON(instance.id)
        fields["machine_id"] = JSON(instance.host.machineID)
        let text = message ?? "\(kind.subject): instance \(instance.id) on machine \(instance.host.machineID)."
        let duplicate = faults.duplicateNotifications
        Task { await notifications.send(kind, message: text, data: fields, duplicate: duplicate) }
    }

    // MARK: Shutdown

    /// The server is bound: the emulated GCE service account's key file names its token endpoint.
    public func listening(host: String, port: Int) async throws {
        try await gce?.listening(host: host, port: port)
    }

    /// Stops every instance's processes (their mount namespaces, and so their mounts, go with
    /// them). The state directory is left for inspection.
    public func shutdown() async {
        isShutDown = true
        await gce?.shutdown()
        for id in instances.keys.sorted() {
            await terminateProcesses(id)
        }
        for (id, orphan) in orphans {
            orphans[id] = nil
            await orphan.processes.terminate(grace: configuration.stopGracePeriod)
        }
        logger.info("all instances stopped")
    }
}
