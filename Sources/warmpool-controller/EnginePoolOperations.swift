import Foundation
import WarmpoolAPI
import WarmpoolEngine
import WarmpoolFailover
import WarmpoolModel
import WarmpoolProvider
import WarmpoolStore

/// Pool operations carried out by the failover engine and the provider: what a controller with a
/// provider serves. Here, in the composition root, so the API depends on neither.
struct EnginePoolOperations: PoolOperations {
    let coordinator: FailoverCoordinator
    let provider: any ProviderClient
    /// How long provision, failover test and cleanup wait for the engine before answering with
    /// the state reached so far.
    let timeout: Duration

    init(coordinator: FailoverCoordinator, provider: any ProviderClient, timeout: Duration = .seconds(600)) {
        self.coordinator = coordinator
        self.provider = provider
        self.timeout = timeout
    }

    func hosts(_ filter: WarmPoolHosts.Filter) async throws -> [WarmPoolHosts.Host] {
        let query = OfferQuery(gpuName: filter.gpuName, maxPricePerHour: filter.maxPrice, verified: filter.verified ? true : nil)
        return WarmPoolHosts.group(offers: try await provided { try await provider.searchOffers(query) }, filter: filter)
    }

    func breaker() async throws -> BreakerStatus {
        let status = await coordinator.breakerStatus()
        func date(_ instant: Instant) -> Date { Date(timeIntervalSince1970: instant.secondsSinceEpoch) }
        return BreakerStatus(tripped: status.tripped, since: status.since.map(date), held: status.held.map {
            BreakerStatus.Held(poolID: $0.pool, instanceID: $0.instance, failedAt: date($0.at))
        })
    }

    func releaseBreaker() async throws -> Int { await coordinator.releaseBreaker() }

    func protections() async -> [PoolID: PoolProtection] { await coordinator.protections() }

    func repair(_ poolID: PoolID) async throws -> PoolRecord {
        _ = try await mapped { try await coordinator.repair(poolID: poolID) }
        guard let record = await coordinator.record(poolID) else { throw PoolOperationError.unknownPool(poolID) }
        return record
    }

    func providerNotice(_ notice: ProviderNotice) async -> String? { await coordinator.providerNotice(notice) }

    func provision(_ request: WarmpoolAPI.ProvisionRequest) async throws -> PoolRecord {
        let preferences = await coordinator.record(request.poolID)?.gpuPreferences ?? []
        let names = request.gpuName.map { [$0.replacingOccurrences(of: "_", with: " ")] } ?? preferences
        let engineRequest = WarmpoolEngine.ProvisionRequest(
            poolID: request.poolID, hostMachineID: request.hostMachineID, gpuNames: names,
            image: request.image, diskGB: request.diskSizeGB, volumeGB: request.volumeSizeGB,
            bidPricePerHour: request.bidPricePerHour, prefersCPUStandby: request.prefersCPUStandby)
        do {
            return try await mapped { try await coordinator.provision(engineRequest, timeout: timeout) }
        } catch FailoverCoordinator.OperationError.provisioningFailed(let message, let atProvider) {
            // Only a provider that failed is a 502. A host without two free GPUs (or no such host)
            // is the request's problem, and a GPU or an instance taken by someone else is the
            // world's: 409, as schemathesis found (it was a 502), with what the host has now.
            // (Judged by the engine's cause, not by a second look: GPUs free up in between, and
            // the chaos drill caught "host 79 has 1 free GPU(s)" answered 502.)
            if atProvider { throw PoolOperationError.providerFailed(message) }
            guard let all = try? await provider.freeSingleGPUOffers(host: request.hostMachineID, gpuNames: []) else {
                throw PoolOperationError.conflict(message)
            }
            let matching = names.isEmpty ? all : all.filter { offer in names.contains { offer.gpuName.caseInsensitiveCompare($0) == .orderedSame } }
            guard matching.count < 2 else { throw PoolOperationError.conflict(message) }
            throw PoolOperationError.conflict(Self.shortage(host: request.hostMachineID, names: names, all: all, matching: matching.count))
        }
    }

    /// Why a host cannot take a warm pool, in the words an operator needs: no such host (or
    /// nothing free on it) reads differently from free GPUs of another model.
    static func shortage(host: HostMachineID, names: [String], all: [Offer], matching: Int) -> String {
        if all.isEmpty {
            return "host \(host) has no free GPU on the marketplace (no such host, or all its GPUs are rented); a warm pool needs 2"
        }
        let models = Dictionary(grouping: all, by: \.gpuName).map { "\($0.value.count) x \($0.key)" }.sorted().joined(separator: ", ")
        guard !names.isEmpty else { return "host \(host) has \(all.count) free GPU (\(models)); a warm pool needs 2" }
        return "host \(host) has \(matching) free GPU(s) named \(names.joined(separator: " or ")) (it has \(models)); a warm pool needs 2"
    }

    func enable(_ poolID: PoolID) async throws -> PoolRecord {
        try await mapped { try await coordinator.setStrategy(.gpuWarmPool, poolID: poolID) }
    }

    func disable(_ poolID: PoolID) async throws -> PoolRecord {
        try await mapped { try await coordinator.setStrategy(.cpuStandby, poolID: poolID) }
    }

    func updateSettings(_ poolID: PoolID, _ change: SettingsChange) async throws -> PoolRecord {
        try await mapped {
            try await coordinator.updateSettings(
                poolID: poolID, strategy: change.strategy, gpuPreferences: change.gpuPreferences, volumeSizeGB: change.volumeSizeGB)
        }
    }

    func failoverTest(_ poolID: PoolID) async throws -> FailoverTestOutcome {
        let before = await coordinator.snapshot(poolID)?.failoverCount ?? 0
        let snapshot = try await mapped { try await coordinator.failoverTest(poolID: poolID, timeout: timeout) }
        let promoted = snapshot.failoverCount > before
        let message: String
        if promoted {
            message = "standby \(snapshot.primaryInstanceID.map(\.description) ?? "?") promoted at epoch \(snapshot.epoch); pool \(snapshot.state.rawValue)"
        } else {
            message = "failover did not promote a standby: pool \(snapshot.state.rawValue)\(snapshot.errorMessage.map { ": \($0)" } ?? "")"
        }
        return FailoverTestOutcome(
            success: promoted, message: message, recoverySeconds: promoted ? snapshot.lastRecoveryDuration?.seconds : nil,
            newPrimaryInstanceID: promoted ? snapshot.primaryInstanceID : nil)
    }

    func cleanup(_ poolID: PoolID) async throws -> CleanupOutcome {
        switch try await mapped({ try await coordinator.cleanup(poolID: poolID, timeout: timeout) }) {
        case .removed: return .removed
        case .nothingToRemove: return .nothingToRemove
        case .unfinished(let state):
            throw PoolOperationError.providerFailed("cleanup did not finish: \(state?.errorMessage ?? state?.state.rawValue ?? "unknown")")
        }
    }

    private func mapped<T>(_ body: () async throws -> T) async throws -> T { try await coordinatorErrorsMapped(body) }

    private func provided<T>(_ body: () async throws -> T) async throws -> T {
        do {
            return try await body()
        } catch let error as ProviderError {
            throw PoolOperationError.providerFailed(error.description)
        }
    }
}

/// The coordinator's refusals as the API's errors (a failed provisioning is left to its caller).
func coordinatorErrorsMapped<T>(_ body: () async throws -> T) async throws -> T {
    do {
        return try await body()
    } catch let error as FailoverCoordinator.OperationError {
        switch error {
        case .unknownPool(let id): throw PoolOperationError.unknownPool(id)
        case .refused(let reason): throw PoolOperationError.conflict(reason)
        case .provisioningFailed: throw error
        }
    }
}
