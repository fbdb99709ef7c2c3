import Foundation
import WarmpoolEngine
import WarmpoolFailover
import WarmpoolProvider
import WarmpoolStore

/// Pool operations carried out by the failover engine and the provider: what a controller with a
/// provider serves.
public struct EnginePoolOperations: PoolOperations {
    let coordinator: FailoverCoordinator
    let provider: any ProviderClient
    /// How long provision, failover test and cleanup wait for the engine before answering with
    /// the state reached so far.
    let timeout: Duration

    public init(coordinator: FailoverCoordinator, provider: any ProviderClient, timeout: Duration = .seconds(600)) {
        self.coordinator = coordinator
        self.provider = provider
        self.timeout = timeout
    }

    public func hosts(_ filter: WarmPoolHosts.Filter) async throws -> [WarmPoolHosts.Host] {
        let query = OfferQuery(gpuName: filter.gpuName, maxPricePerHour: filter.maxPrice, verified: filter.verified ? true : nil)
        return WarmPoolHosts.group(offers: try await provided { try await provider.searchOffers(query) }, filter: filter)
    }

    public func provision(_ request: ProvisionRequest) async throws -> PoolRecord {
        let preferences = await coordinator.record(PoolID(request.machineID))?.gpuPreferences ?? []
        let names = request.gpuName.map { [$0.replacingOccurrences(of: "_", with: " ")] } ?? preferences
        let engineRequest = WarmpoolEngine.ProvisionRequest(
            poolID: PoolID(request.machineID), hostMachineID: MachineID(request.hostMachineID), gpuNames: names,
            image: request.image, diskGB: request.diskSizeGB, volumeGB: request.volumeSizeGB)
        let record = try await mapped { try await coordinator.provision(engineRequest, timeout: timeout) }
        if record.state == "error" {
            let message = record.errorMessage ?? "provisioning failed"
            // A host without two free GPUs (or no such host) is the request's problem, not the
            // provider's: 409, as schemathesis found (it was a 502).
            if try await freeGPUs(host: request.hostMachineID, gpuNames: names) < 2 { throw PoolOperationError.conflict(message) }
            throw PoolOperationError.providerFailed(message)
        }
        return record
    }

    /// Single-GPU offers on `host`, as the engine counts them when it provisions.
    private func freeGPUs(host: Int64, gpuNames: [String]) async throws -> Int {
        var count = 0
        for name in gpuNames.isEmpty ? [nil] : gpuNames.map(Optional.some) {
            let query = OfferQuery(gpuName: name, verified: nil, rentable: true, machineID: MachineID(host))
            count += try await provided { try await provider.searchOffers(query) }
                .filter { $0.machineID == MachineID(host) && $0.numGPUs == 1 }.count
        }
        return count
    }

    public func enable(machineID: Int64) async throws -> PoolRecord {
        try await mapped { try await coordinator.setStrategy(.gpuWarmPool, poolID: PoolID(machineID)) }
    }

    public func disable(machineID: Int64) async throws -> PoolRecord {
        try await mapped { try await coordinator.setStrategy(.cpuStandby, poolID: PoolID(machineID)) }
    }

    public func updateSettings(machineID: Int64, _ change: SettingsChange) async throws -> PoolRecord {
        if let strategy = change.strategy, await coordinator.record(PoolID(machineID)) != nil {
            _ = try await mapped { try await coordinator.setStrategy(strategy, poolID: PoolID(machineID)) }
        }
        return try await coordinator.updateSettings(poolID: PoolID(machineID), gpuPreferences: change.gpuPreferences, volumeSizeGB: change.volumeSizeGB)
    }

    public func failoverTest(machineID: Int64) async throws -> FailoverTestOutcome {
        let before = await coordinator.snapshot(PoolID(machineID))?.failoverCount ?? 0
        let snapshot = try await mapped { try await coordinator.failoverTest(poolID: PoolID(machineID), timeout: timeout) }
        let promoted = snapshot.failoverCount > before
        let message: String
        if promoted {
            message = "standby \(snapshot.primaryInstanceID.map(String.init) ?? "?") promoted at epoch \(snapshot.epoch); pool \(snapshot.state.rawValue)"
        } else {
            message = "failover did not promote a standby: pool \(snapshot.state.rawValue)\(snapshot.errorMessage.map { ": \($0)" } ?? "")"
        }
        return FailoverTestOutcome(
            success: promoted, message: message, recoverySeconds: promoted ? snapshot.lastRecoveryDuration.map { Self.seconds($0) } : nil,
            newPrimaryInstanceID: promoted ? snapshot.primaryInstanceID.map { Int64($0) } : nil)
    }

    public func cleanup(machineID: Int64) async throws {
        let removed = try await mapped { try await coordinator.cleanup(poolID: PoolID(machineID), timeout: timeout) }
        if !removed {
            let state = await coordinator.snapshot(PoolID(machineID))
            throw PoolOperationError.providerFailed("cleanup did not finish: \(state?.errorMessage ?? state?.state.rawValue ?? "unknown")")
        }
    }

    private func mapped<T>(_ body: () async throws -> T) async throws -> T {
        do {
            return try await body()
        } catch let error as FailoverCoordinator.OperationError {
            switch error {
            case .unknownPool(let id): throw PoolOperationError.unknownMachine(Int64(id))
            case .refused(let reason): throw PoolOperationError.conflict(reason)
            }
        }
    }

    private func provided<T>(_ body: () async throws -> T) async throws -> T {
        do {
            return try await body()
        } catch let error as ProviderError {
            throw PoolOperationError.providerFailed(error.description)
        }
    }

    static func seconds(_ duration: Duration) -> Double {
        Double(duration.components.seconds) + Double(duration.components.attoseconds) / 1e18
    }
}
