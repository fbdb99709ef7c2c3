import WarmpoolEngine
import WarmpoolModel

/// A provider in memory that behaves like Vast.ai where the engine cares: instances move between
/// statuses one poll at a time, creates are adopted by label, stop/start/destroy are idempotent.
/// It counts what really happened, so tests can assert "one create per label" and "one start".
struct FakeProvider {
    struct Instance {
        var id: InstanceID
        var label: String
        var machineID: HostMachineID
        /// What the next poll shows.
        var status: InstanceStatus?
        /// What it shows after that.
        var next: InstanceStatus?
        var destroyed = false
    }

    var offers: [GPUOffer]
    var instances: [InstanceID: Instance] = [:]
    var volumes: [String: VolumeID] = [:]
    var deletedVolumes: [VolumeID] = []
    /// Creates per label and per volume name that really made something.
    var creations: [String: Int] = [:]
    /// Starts that really moved a stopped instance.
    var effectiveStarts: [InstanceID: Int] = [:]
    /// Each command name (`stop`, `start`, `create`, `offers`, `volume`, `poll`, `destroy`,
    /// `deleteVolume`) answers with these failures first, in order.
    var failures: [String: [ProviderOutcome?]] = [:]
    /// Polls that still show a started instance loading before it runs.
    var slowBoots: [InstanceID: Int] = [:]
    /// Stop is accepted but the instance keeps running (a provider that cannot reach the host).
    var ignoresStop: Set<InstanceID> = []
    /// Start is accepted but the instance never gets past `loading`.
    var neverRuns: Set<InstanceID> = []
    /// Start is accepted and the instance waits in `scheduling`: someone else rented its GPU.
    var scheduling: Set<InstanceID> = []
    /// Instances created from these offers never get past `loading` either.
    var brokenOffers: Set<OfferID> = []
    /// Verification fails for good on these.
    var failsVerification: Set<InstanceID> = []
    /// SSH refuses connections on these (sshd not up yet).
    var refusesSSH: Set<InstanceID> = []
    /// Volumes whose identity marker is written; a test removes one to wipe it.
    var markedVolumes: Set<VolumeID> = []
    /// Machines that lost contact: their instances show `offline`, a stop there is accepted and
    /// does nothing, and they offer nothing.
    var offlineMachines: Set<HostMachineID> = []
    /// What a restore answers (the newest snapshot, by default one taken at this time).
    var restoreAnswers: [RestoreOutcome] = []
    var snapshotTakenAt = Instant.seconds(1_700_000_000)
    /// Restores carried out, per instance.
    var restores: [InstanceID: Int] = [:]
    private var nextID: Int64 = 100

    /// The other cloud's VMs (CPU standbys), by name.
    struct VM {
        var request: CPUInstanceRequest
        var status: InstanceStatus?
        var next: InstanceStatus?
        var deleted = false
    }
    var vms: [String: VM] = [:]
    /// Creates per VM name that really made one.
    var vmCreations: [String: Int] = [:]
    /// Sync targets configured, per primary, in order.
    var syncTargets: [InstanceID: [SyncTarget?]] = [:]
    /// The CPU copies verified (SSH and manifest), per agent.
    var cpuCopiesVerified: [InstanceID: Int] = [:]
    /// Snapshots taken over SSH, per instance.
    var snapshotsTaken: [InstanceID: Int] = [:]
    /// Polls a started VM shows `loading` before it runs.
    var vmBootPolls = 2
    var liveVMs: [VM] { vms.values.filter { !$0.deleted }.sorted { $0.request.name < $1.request.name } }

    init(host: HostMachineID, freeGPUs: Int) {
        offers = (0..<freeGPUs).map { GPUOffer(id: OfferID(Int64(9000 + $0)), machineID: host, gpuName: "RTX 4090") }
    }

    var liveInstances: [Instance] { instances.values.filter { !$0.destroyed }.sorted { $0.id < $1.id } }

    mutating func perform(_ action: EngineAction) -> ProviderOutcome? {
        switch action {
        case .findFreeOffers(_, let host, _):
            return injected("offers") ?? .success(.offers(offers.filter { $0.machineID == host && !offlineMachines.contains(host) }))
        case .findFreeOffersAnywhere(_, _, let excluding):
            return injected("offers") ?? .success(.offers(offers.filter { !excluding.contains($0.machineID) && !offlineMachines.contains($0.machineID) }))
        case .ensureVolume(_, let name, _, _):
            if let failure = injected("volume") { return failure }
            if let id = volumes[name] { return .success(.volume(id)) }
            let id = VolumeID(take())
            volumes[name] = id
            creations[name, default: 0] += 1
            return .success(.volume(id))
        case .ensureInstance(_, let request):
            if let failure = injected("create") { return failure }
            if let existing = instances.values.first(where: { $0.label == request.label && !$0.destroyed }) {
                return .success(.instance(snapshot(existing)))
            }
            guard let index = offers.firstIndex(where: { $0.id == request.offer.id }) else {
                return .success(.offerTaken(request.offer.id))  // as the shell reports Vast.ai's no_such_ask
            }
            offers.remove(at: index)
            let id = InstanceID(take())
            let settles: InstanceStatus = brokenOffers.contains(request.offer.id) ? .loading : .running
            instances[id] = Instance(id: id, label: request.label, machineID: request.offer.machineID, status: nil, next: settles)
            creations[request.label, default: 0] += 1
            return .success(.instance(snapshot(instances[id]!)))
        case .startInstance(_, let id):
            if let failure = injected("start") { return failure }
            guard var instance = instances[id], !instance.destroyed else { return .failure(message: "no instance \(id)", retryable: false) }
            // Like Vast.ai's intended status: the latest of start and stop wins, even mid-stop.
            if instance.status == .stopped || instance.status == .exited {
                effectiveStarts[id, default: 0] += 1
                instance.status = .loading
            }
            instance.next = scheduling.contains(id) ? .scheduling : neverRuns.contains(id) ? .loading : .running
            instances[id] = instance
            return .success(.accepted)
        case .stopInstance(_, let id):
            if let failure = injected("stop") { return failure }
            if var instance = instances[id], !instance.destroyed, !ignoresStop.contains(id), !offlineMachines.contains(instance.machineID) {
                instance.next = .stopped
                instances[id] = instance
            }
            return .success(.accepted)
        case .pollInstance(_, let id):
            if let failure = injected("poll") { return failure }
            guard var instance = instances[id], !instance.destroyed else { return .success(.instance(nil)) }
            if offlineMachines.contains(instance.machineID) {
                return .success(.instance(InstanceSnapshot(id: id, status: .offline, ssh: snapshot(instance).ssh)))
            }
            let shown = snapshot(instance)
            if instance.next == .running, let polls = slowBoots[id], polls > 0 {
                slowBoots[id] = polls - 1
                return .success(.instance(shown))
            }
            instance.status = instance.next
            instances[id] = instance
            return .success(.instance(shown))
        case .findInstance(_, let label):
            if let failure = injected("poll") { return failure }
            return .success(.instance(instances.values.first { $0.label == label && !$0.destroyed }.map(snapshot)))
        case .findLeftover(_, let prefixes, let excluding):
            if let failure = injected("poll") { return failure }
            let leftover = instances.values.sorted { $0.id < $1.id }.first { instance in
                !instance.destroyed && !excluding.contains(instance.id) && prefixes.contains { instance.label.hasPrefix($0) }
            }
            return .success(.instance(leftover.map(snapshot)))
        case .destroyInstance(_, let id):
            if let failure = injected("destroy") { return failure }
            instances[id]?.destroyed = true
            return .success(.accepted)
        case .deleteVolume(_, let id):
            if let failure = injected("deleteVolume") { return failure }
            if !deletedVolumes.contains(id) { deletedVolumes.append(id) }
            return .success(.accepted)
        case .ensureCPUInstance(_, let request):
            if let failure = injected("cpuCreate") { return failure }
            if let vm = vms[request.name], !vm.deleted { return .success(.instance(vmSnapshot(vm))) }
            vms[request.name] = VM(request: request, status: nil, next: .loading)
            vmCreations[request.name, default: 0] += 1
            return .success(.instance(vmSnapshot(vms[request.name]!)))
        case .startCPUInstance(_, let name):
            if let failure = injected("cpuStart") { return failure }
            guard var vm = vms[name], !vm.deleted else { return .failure(message: "HTTP 404: no VM \(name)", retryable: false) }
            if vm.status == .stopped { vm.status = .loading }
            vm.next = .running
            vms[name] = vm
            return .success(.accepted)
        case .stopCPUInstance(_, let name):
            if let failure = injected("cpuStop") { return failure }
            if var vm = vms[name], !vm.deleted {
                vm.next = .stopped
                vms[name] = vm
            }
            return .success(.accepted)
        case .pollCPUInstance(_, let name, _):
            if let failure = injected("cpuPoll") { return failure }
            guard var vm = vms[name], !vm.deleted else { return .success(.instance(nil)) }
            let shown = vmSnapshot(vm)
            if vm.status == nil || vm.status == .loading, vm.next == .loading || vm.next == .running {
                if vmBootPolls > 0 {
                    vmBootPolls -= 1
                    vm.status = .loading
                } else {
                    vm.status = .running
                    vm.next = .running
                }
            } else {
                vm.status = vm.next
            }
            vms[name] = vm
            return .success(.instance(shown))
        case .deleteCPUInstance(_, let name):
            if let failure = injected("cpuDelete") { return failure }
            vms[name]?.deleted = true
            return .success(.accepted)
        case .verify, .restoreSnapshot, .configureSync, .verifyCPUCopy, .takeSnapshot, .scheduleTimer, .cancelTimer, .revokeLease,
             .grantLease, .notify, .timeline:
            return nil
        }
    }

    /// As the shell's verification does, the volume's marker included: the marketplace writes
    /// none, so a volume has one only once a verification with `.establish` wrote it.
    mutating func verify(_ id: InstanceID, volume: VolumeID, marker: VolumeMarkerCheck, now: Instant) -> VerificationOutcome {
        if failsVerification.contains(id) { return .failed(message: "volume is not mounted at /data") }
        guard let instance = instances[id], !instance.destroyed, instance.status == .running, !refusesSSH.contains(id) else {
            return .notReady(message: "connection refused")
        }
        var written = false
        if !markedVolumes.contains(volume) {
            guard marker == .establish else { return .markerMissing(message: "marker_missing: no volume-id marker at /data/.warmpool-volume-id") }
            markedVolumes.insert(volume)
            written = true
        }
        return .passed(sshReadyAt: now + .milliseconds(-20), markerWritten: written)
    }

    mutating func restore(_ id: InstanceID, snapshot: String? = nil) -> RestoreOutcome {
        if !restoreAnswers.isEmpty { return restoreAnswers.removeFirst() }
        guard let instance = instances[id], !instance.destroyed, instance.status == .running else {
            return .notReady(message: "connection refused")
        }
        restores[id, default: 0] += 1
        return .restored(snapshot: snapshot ?? "20231114T221320.000Z-0a0b0c0d", takenAt: snapshotTakenAt, files: 12, bytes: 4096)
    }

    /// As the shell does: the primary must run (SSH to it), and the target's agent must have
    /// attested its host key, which it does once its VM runs.
    mutating func configureSync(primary: InstanceID, target: SyncTarget?) -> VerificationOutcome {
        guard let instance = instances[primary] ?? nil, !instance.destroyed, instance.status == .running else {
            if let vm = vms.values.first(where: { $0.request.agent == primary }), vm.status == .running {
                syncTargets[primary, default: []].append(target)
                return .passed(sshReadyAt: .seconds(0))
            }
            return .notReady(message: "connection refused")
        }
        if let target, vms[target.name]?.status != .running { return .notReady(message: "the target's agent has not attested a host key yet") }
        syncTargets[primary, default: []].append(target)
        return .passed(sshReadyAt: .seconds(0))
    }

    mutating func verifyCPUCopy(_ agent: InstanceID, name: String, now: Instant) -> VerificationOutcome {
        guard let vm = vms[name], !vm.deleted, vm.status == .running else { return .notReady(message: "connection refused") }
        if failsVerification.contains(agent) { return .failed(message: "sync manifest: pass 3 on disk, pass 7 reported") }
        cpuCopiesVerified[agent, default: 0] += 1
        return .passed(sshReadyAt: now + .milliseconds(-20))
    }

    mutating func takeSnapshot(_ id: InstanceID) -> RestoreOutcome {
        if !restoreAnswers.isEmpty { return restoreAnswers.removeFirst() }
        let running = instances[id].map { !$0.destroyed && $0.status == .running }
            ?? vms.values.contains { $0.request.agent == id && !$0.deleted && $0.status == .running }
        guard running else { return .notReady(message: "connection refused") }
        snapshotsTaken[id, default: 0] += 1
        return .restored(snapshot: "20231114T230000.000Z-final\(snapshotsTaken[id]!)", takenAt: snapshotTakenAt, files: 12, bytes: 4096)
    }

    private func vmSnapshot(_ vm: VM) -> InstanceSnapshot {
        InstanceSnapshot(id: vm.request.agent, status: vm.status, ssh: vm.status == .running ? SSHEndpoint(host: "34.1.2.3", port: 22) : nil)
    }

    private mutating func injected(_ command: String) -> ProviderOutcome? {
        guard var queue = failures[command], !queue.isEmpty else { return nil }
        let first = queue.removeFirst()
        failures[command] = queue
        return first
    }

    private mutating func take() -> Int64 {
        defer { nextID += 1 }
        return nextID
    }

    private func snapshot(_ instance: Instance) -> InstanceSnapshot {
        InstanceSnapshot(id: instance.id, status: instance.status, ssh: SSHEndpoint(host: "10.0.0.\(instance.id.rawValue % 250)", port: 22))
    }
}
