import Foundation
import Logging
import WarmpoolEngine
import WarmpoolModel
import WarmpoolProvider
import WarmpoolStore
import WarmpoolWire

/// Carries out the engine's provider commands against a `ProviderClient`, each idempotently:
/// creates look their label up first, and "already gone" counts as done for stop, destroy and
/// delete. Every failure becomes an outcome the engine can weigh (retryable or not).
struct ProviderEffects: Sendable {
    let provider: any ProviderClient
    let store: any WarmpoolStore
    let launch: AgentLaunch
    let logger: Logger

    func run(_ action: EngineAction, poolID: PoolID) async -> ProviderOutcome {
        do {
            switch action {
            case .findFreeOffers(_, let host, let gpuNames):
                return .success(.offers(try await freeOffers(host: host, gpuNames: gpuNames)))
            case .findFreeOffersAnywhere(_, let gpuNames, let excluding):
                let offers = try await provider.freeSingleGPUOffersAnywhere(gpuNames: gpuNames, excluding: Set(excluding))
                return .success(.offers(offers.map { GPUOffer(id: $0.id, machineID: $0.machineID, gpuName: $0.gpuName) }))
            case .ensureVolume(_, let name, let host, let sizeGB):
                return .success(.volume(try await ensureVolume(name: name, host: host, sizeGB: sizeGB)))
            case .ensureInstance(_, let request):
                return .success(try await ensureInstance(request, poolID: poolID))
            case .startInstance(_, let id):
                // A start re-sent after a restart finds the first one taken: nothing is sent twice.
                if let instance = try await provider.instance(id: id), instance.intendedStatus == "running" || instance.isRunning {
                    return .success(.accepted)
                }
                try await provider.startInstance(id: id)
                return .success(.accepted)
            case .stopInstance(_, let id):
                if let instance = try await provider.instance(id: id), instance.intendedStatus == "stopped" && instance.isStopped {
                    return .success(.accepted)
                }
                do { try await provider.stopInstance(id: id) } catch ProviderError.notFound {}
                return .success(.accepted)
            case .pollInstance(_, let id):
                return .success(.instance(try await provider.instance(id: id).map(Self.snapshot)))
            case .findInstance(_, let label):
                return .success(.instance(try await provider.listInstances().first { $0.label == label }.map(Self.snapshot)))
            case .findLeftover(_, let prefixes, let excluding):
                let leftover = try await provider.listInstances().first { instance in
                    !excluding.contains(instance.id) && prefixes.contains { instance.label?.hasPrefix($0) == true }
                }
                return .success(.instance(leftover.map(Self.snapshot)))
            case .destroyInstance(_, let id):
                do { try await provider.destroyInstance(id: id) } catch ProviderError.notFound {}
                await forgetInstance(id)
                return .success(.accepted)
            case .deleteVolume(_, let id):
                do { try await provider.deleteVolume(id: id) } catch ProviderError.notFound {}
                return .success(.accepted)
            case .verify, .restoreSnapshot, .scheduleTimer, .cancelTimer, .revokeLease, .grantLease, .notify, .timeline,
                 .ensureCPUInstance, .startCPUInstance, .stopCPUInstance, .pollCPUInstance, .deleteCPUInstance, .configureSync,
                 .verifyCPUCopy, .takeSnapshot:
                return .failure(message: "not a marketplace command: \(action)", retryable: false)
            }
        } catch let error as RevokedAgentKey {
            logger.error("refusing to reuse a revoked agent key", metadata: ["pool": "\(poolID)", "agent.id": "\(error.agentID)"])
            return .failure(message: "\(error)", retryable: false)
        } catch let error as ProviderError {
            logger.warning("provider command failed", metadata: ["pool": "\(poolID)", "command": "\(Self.name(action))", "error": "\(error)"])
            return .failure(message: error.description, retryable: error.isTransient)
        } catch {
            logger.error("provider command failed", metadata: ["pool": "\(poolID)", "command": "\(Self.name(action))", "error": "\(error)"])
            return .failure(message: "\(error)", retryable: true)
        }
    }

    /// One engine offer is one GPU: the engine places the primary and the standby on two GPUs
    /// of one host.
    private func freeOffers(host: HostMachineID, gpuNames: [String]) async throws -> [GPUOffer] {
        try await provider.freeSingleGPUOffers(host: host, gpuNames: gpuNames).map {
            GPUOffer(id: $0.id, machineID: $0.machineID, gpuName: $0.gpuName)
        }
    }

    private func ensureVolume(name: String, host: HostMachineID, sizeGB: Int) async throws -> VolumeID {
        if let existing = try await provider.listVolumes().first(where: { $0.label == name }) {
            logger.info("adopted volume", metadata: ["volume.id": "\(existing.id)", "volume.name": "\(name)"])
            return existing.id
        }
        guard let offer = try await provider.searchVolumeOffers(machineID: host).first else {
            throw ProviderError.notFound(what: "a volume offer on host \(host)")
        }
        return try await provider.createVolume(offerID: offer.id, sizeGB: sizeGB, name: name)
    }

    /// `.instance`, or `.offerTaken` when someone rented the offer's GPU since the search.
    private func ensureInstance(_ request: InstanceRequest, poolID: PoolID) async throws -> ProviderData {
        if let existing = try await provider.listInstances().first(where: { $0.label == request.label }) {
            logger.info("adopted instance", metadata: ["instance.id": "\(existing.id)", "instance.label": "\(request.label)"])
            try await bindAgent(AgentID(request.label), to: existing.id)
            return .instance(Self.snapshot(existing))
        }
        // The agent's key is minted (and stored) before the create, so an instance adopted after a
        // crash finds its key in place.
        let agentID = AgentID(request.label)
        var agent: AgentRecord
        if let existing = try await store.agent(id: agentID) {
            guard existing.revokedAt == nil else { throw RevokedAgentKey(agentID: agentID) }
            agent = existing
        } else {
            agent = AgentRecord(agentID: agentID, secretHex: AgentSecret.random().hex, poolID: poolID, role: request.role.rawValue)
            try await store.addAgent(agent)
        }
        let environment = launch.environment(agentID: agentID, secretHex: agent.secretHex, request: request, poolID: poolID)
        let id: InstanceID
        do {
            id = try await provider.createInstance(
                offerID: request.offer.id,
                CreateInstanceRequest(
                    image: request.image, diskGB: Double(request.diskGB), label: request.label, env: environment,
                    onstart: launch.onstart, volume: .init(volumeID: request.volume, mountPath: launch.volumePath),
                    bidPrice: request.bidPricePerHour))
        } catch ProviderError.notFound(let what) {
            // The marketplace's `no_such_ask`: the GPU was rented between our search and this create.
            logger.notice("offer taken before the create", metadata: ["offer.id": "\(request.offer.id)", "detail": "\(what)"])
            return .offerTaken(request.offer.id)
        }
        agent.instanceID = id
        // The store tells the listener, whose keyring follows before this returns.
        try await store.saveAgent(agent)
        logger.info("created instance", metadata: ["instance.id": "\(id)", "instance.label": "\(request.label)", "role": "\(request.role.rawValue)"])
        return .instance(try await provider.instance(id: id).map(Self.snapshot) ?? InstanceSnapshot(id: id, status: nil))
    }

    /// A crash between the create and the save of its agent record leaves the key unbound: the
    /// label (the agent id) names the instance, so the binding is recovered on adoption.
    private func bindAgent(_ agentID: AgentID, to instance: InstanceID) async throws {
        guard var agent = try await store.agent(id: agentID), agent.instanceID != instance else { return }
        if let previous = agent.instanceID {
            logger.warning("agent key rebound to the instance its label names", metadata: [
                "agent.id": "\(agentID)", "instance.id": "\(instance)", "instance.previous": "\(previous)"])
        } else {
            logger.notice("agent key bound to its adopted instance", metadata: ["agent.id": "\(agentID)", "instance.id": "\(instance)"])
        }
        agent.instanceID = instance
        try await store.saveAgent(agent)
    }

    /// A destroyed instance's agent key is revoked and its host key pin dropped: the id is never
    /// reused, and a leftover agent must not authenticate.
    private func forgetInstance(_ id: InstanceID) async {
        do {
            for agent in try await store.agents() where agent.instanceID == id && agent.revokedAt == nil {
                _ = try await store.revokeAgent(id: agent.agentID, at: Date())
            }
            try await store.unpinHostKey(instanceID: id)
        } catch {
            logger.error("cannot revoke a destroyed instance's keys", metadata: ["instance.id": "\(id)", "error": "\(error)"])
        }
    }

    /// A revoked key is never handed to a new instance: its agent would be refused, and the pool
    /// would look protected while nothing heard from its primary.
    struct RevokedAgentKey: Error, CustomStringConvertible {
        var agentID: AgentID
        var description: String { "agent key \(agentID) was revoked (its instance was destroyed); it is never reused" }
    }

    static func snapshot(_ instance: Instance) -> InstanceSnapshot {
        let status = instance.actualStatus.map { InstanceStatus(rawValue: $0) ?? .unknown }
        let ssh = instance.sshHost.flatMap { host in instance.sshPort.map { SSHEndpoint(host: host, port: $0) } }
        return InstanceSnapshot(id: instance.id, status: status, ssh: ssh)
    }

    static func name(_ action: EngineAction) -> String {
        switch action {
        case .findFreeOffers: "find_free_offers"
        case .findFreeOffersAnywhere: "find_free_offers_anywhere"
        case .restoreSnapshot: "restore_snapshot"
        case .ensureVolume: "ensure_volume"
        case .ensureInstance: "ensure_instance"
        case .startInstance: "start_instance"
        case .stopInstance: "stop_instance"
        case .pollInstance: "poll_instance"
        case .destroyInstance: "destroy_instance"
        case .findInstance: "find_instance"
        case .findLeftover: "find_leftover"
        case .deleteVolume: "delete_volume"
        case .verify: "verify"
        case .scheduleTimer: "schedule_timer"
        case .cancelTimer: "cancel_timer"
        case .revokeLease: "revoke_lease"
        case .grantLease: "grant_lease"
        case .notify: "notify"
        case .timeline: "timeline"
        case .ensureCPUInstance: "ensure_cpu_instance"
        case .startCPUInstance: "start_cpu_instance"
        case .stopCPUInstance: "stop_cpu_instance"
        case .pollCPUInstance: "poll_cpu_instance"
        case .deleteCPUInstance: "delete_cpu_instance"
        case .configureSync: "configure_sync"
        case .verifyCPUCopy: "verify_cpu_copy"
        case .takeSnapshot: "take_snapshot"
        }
    }
}
