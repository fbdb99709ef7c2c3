import Foundation
import Logging
import WarmpoolEngine
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
    /// Called after an agent key is minted or revoked, so the listener's keyring follows.
    let agentKeysChanged: @Sendable () async -> Void

    func run(_ action: EngineAction, poolID: PoolID) async -> ProviderOutcome {
        do {
            switch action {
            case .findFreeOffers(_, let host, let gpuNames):
                return .success(.offers(try await freeOffers(host: host, gpuNames: gpuNames)))
            case .ensureVolume(_, let name, let host, let sizeGB):
                return .success(.volume(try await ensureVolume(name: name, host: host, sizeGB: sizeGB)))
            case .ensureInstance(_, let request):
                return .success(.instance(try await ensureInstance(request, poolID: poolID)))
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
            case .destroyInstance(_, let id):
                do { try await provider.destroyInstance(id: id) } catch ProviderError.notFound {}
                await forgetInstance(id)
                return .success(.accepted)
            case .deleteVolume(_, let id):
                do { try await provider.deleteVolume(id: id) } catch ProviderError.notFound {}
                return .success(.accepted)
            case .verify, .scheduleTimer, .cancelTimer, .revokeLease, .grantLease, .notify, .timeline:
                return .failure(message: "not a provider command: \(action)", retryable: false)
            }
        } catch let error as ProviderError {
            logger.warning("provider command failed", metadata: ["pool": "\(poolID)", "command": "\(Self.name(action))", "error": "\(error)"])
            return .failure(message: error.description, retryable: error.isTransient)
        } catch {
            logger.error("provider command failed", metadata: ["pool": "\(poolID)", "command": "\(Self.name(action))", "error": "\(error)"])
            return .failure(message: "\(error)", retryable: true)
        }
    }

    /// One engine offer is one GPU: multi-GPU offers are split, so the engine can place the
    /// primary and the standby on two GPUs of one host.
    private func freeOffers(host: MachineID, gpuNames: [String]) async throws -> [GPUOffer] {
        let names: [String?] = gpuNames.isEmpty ? [nil] : gpuNames
        var offers: [GPUOffer] = []
        for name in names {
            let query = OfferQuery(gpuName: name, verified: nil, rentable: true, machineID: host)
            for offer in try await provider.searchOffers(query) where offer.machineID == host && offer.numGPUs == 1 {
                offers.append(GPUOffer(id: offer.id, machineID: offer.machineID, gpuName: offer.gpuName))
            }
        }
        return offers
    }

    private func ensureVolume(name: String, host: MachineID, sizeGB: Int) async throws -> VolumeID {
        if let existing = try await provider.listVolumes().first(where: { $0.label == name }) {
            logger.info("adopted volume", metadata: ["volume.id": "\(existing.id)", "volume.name": "\(name)"])
            return existing.id
        }
        guard let offer = try await provider.searchVolumeOffers(machineID: host).first else {
            throw ProviderError.notFound(what: "a volume offer on host \(host)")
        }
        return try await provider.createVolume(offerID: offer.id, sizeGB: sizeGB, name: name)
    }

    private func ensureInstance(_ request: InstanceRequest, poolID: PoolID) async throws -> InstanceSnapshot? {
        if let existing = try await provider.listInstances().first(where: { $0.label == request.label }) {
            logger.info("adopted instance", metadata: ["instance.id": "\(existing.id)", "instance.label": "\(request.label)"])
            return Self.snapshot(existing)
        }
        // The agent's key is minted (and stored) before the create, so an instance adopted after a
        // crash finds its key in place.
        let agentID = request.label
        var agent = try await store.agent(id: agentID)
        if agent == nil {
            let minted = AgentRecord(agentID: agentID, secretHex: AgentSecret.random().hex, machineID: Int64(poolID), role: request.role.rawValue)
            try await store.addAgent(minted)
            agent = minted
        }
        let environment = launch.environment(agentID: agentID, secretHex: agent!.secretHex, request: request, poolID: poolID)
        let id = try await provider.createInstance(
            offerID: request.offer.id,
            CreateInstanceRequest(
                image: request.image, diskGB: Double(request.diskGB), label: request.label, env: environment,
                onstart: launch.onstart, volume: .init(volumeID: request.volume, mountPath: launch.volumePath)))
        agent!.instanceID = Int64(id)
        try await store.saveAgent(agent!)
        await agentKeysChanged()
        logger.info("created instance", metadata: ["instance.id": "\(id)", "instance.label": "\(request.label)", "role": "\(request.role.rawValue)"])
        return try await provider.instance(id: id).map(Self.snapshot) ?? InstanceSnapshot(id: id, status: nil)
    }

    /// A destroyed instance's agent key is revoked and its host key pin dropped: the id is never
    /// reused, and a leftover agent must not authenticate.
    private func forgetInstance(_ id: InstanceID) async {
        do {
            for agent in try await store.agents() where agent.instanceID == Int64(id) && agent.revokedAt == nil {
                _ = try await store.revokeAgent(id: agent.agentID, at: Date())
            }
            try await store.unpinHostKey(instanceID: "\(id)")
            await agentKeysChanged()
        } catch {
            logger.error("cannot revoke a destroyed instance's keys", metadata: ["instance.id": "\(id)", "error": "\(error)"])
        }
    }

    static func snapshot(_ instance: Instance) -> InstanceSnapshot {
        let status = instance.actualStatus.map { InstanceStatus(rawValue: $0) ?? .unknown }
        let ssh = instance.sshHost.flatMap { host in instance.sshPort.map { SSHEndpoint(host: host, port: $0) } }
        return InstanceSnapshot(id: instance.id, status: status, ssh: ssh)
    }

    static func name(_ action: EngineAction) -> String {
        switch action {
        case .findFreeOffers: "find_free_offers"
        case .ensureVolume: "ensure_volume"
        case .ensureInstance: "ensure_instance"
        case .startInstance: "start_instance"
        case .stopInstance: "stop_instance"
        case .pollInstance: "poll_instance"
        case .destroyInstance: "destroy_instance"
        case .deleteVolume: "delete_volume"
        case .verify: "verify"
        case .scheduleTimer: "schedule_timer"
        case .cancelTimer: "cancel_timer"
        case .revokeLease: "revoke_lease"
        case .grantLease: "grant_lease"
        case .notify: "notify"
        case .timeline: "timeline"
        }
    }
}
