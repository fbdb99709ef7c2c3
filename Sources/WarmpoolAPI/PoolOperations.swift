import Foundation
import WarmpoolModel
import WarmpoolProvider
import WarmpoolStore

/// What the API asks of the failover engine and the provider. The API validates input and shapes
/// answers; everything that changes a pool's instances goes through an implementation of this.
public protocol PoolOperations: Sendable {
    func hosts(_ filter: WarmPoolHosts.Filter) async throws -> [WarmPoolHosts.Host]
    func provision(_ request: ProvisionRequest) async throws -> PoolRecord
    func enable(_ poolID: PoolID) async throws -> PoolRecord
    func disable(_ poolID: PoolID) async throws -> PoolRecord
    /// Settings changes; a machine without a pool gets a row (disabled) to hold them.
    func updateSettings(_ poolID: PoolID, _ change: SettingsChange) async throws -> PoolRecord
    func failoverTest(_ poolID: PoolID) async throws -> FailoverTestOutcome
    func cleanup(_ poolID: PoolID) async throws -> CleanupOutcome
    /// The mass-failure breaker: tripped or not, and the failovers it holds.
    func breaker() async throws -> BreakerStatus
    /// The operator's word that the held failures are real: they are failed over. Returns how many.
    func releaseBreaker() async throws -> Int
    /// Every managed pool's protection now; a pool missing from the answer has no engine behind it.
    func protections() async -> [PoolID: PoolProtection]
    /// A degraded pool tries its next rung now (a new standby; without a primary, a new one).
    func repair(_ poolID: PoolID) async throws -> PoolRecord
    /// A verified provider notification: acted on (a lost primary is failed over), or recorded.
    /// Returns what was done; nil for an event already handled.
    func providerNotice(_ notice: ProviderNotice) async -> String?
}

public enum CleanupOutcome: Sendable, Equatable {
    case removed
    /// The machine's pool was removed before: a retried cleanup succeeds with nothing to do.
    case nothingToRemove
}

/// What `GET /breaker` shows.
public struct BreakerStatus: Sendable {
    public struct Held: Sendable {
        public var poolID: PoolID
        public var instanceID: InstanceID
        public var failedAt: Date
        public init(poolID: PoolID, instanceID: InstanceID, failedAt: Date) {
            self.poolID = poolID
            self.instanceID = instanceID
            self.failedAt = failedAt
        }
    }

    public var tripped: Bool
    public var since: Date?
    public var held: [Held]

    public init(tripped: Bool, since: Date?, held: [Held]) {
        self.tripped = tripped
        self.since = since
        self.held = held
    }
}

/// Errors an implementation reports; the API maps each to its status.
public enum PoolOperationError: Error, CustomStringConvertible, Sendable {
    case unknownPool(PoolID)
    /// The pool is not in a state that allows this (e.g. a failover already running).
    case conflict(String)
    /// The provider cannot be reached or refused; the message names why.
    case providerFailed(String)
    /// This controller runs without a provider (no API key or URL configured).
    case providerNotConfigured

    public var description: String {
        switch self {
        case .unknownPool(let id): "no warm pool for machine \(id)"
        case .conflict(let reason): reason
        case .providerFailed(let reason): "the provider failed: \(reason)"
        case .providerNotConfigured:
            "this controller has no provider configured (start it with --provider-url and a provider API key)"
        }
    }
}

public struct ProvisionRequest: Sendable, Equatable {
    public static let defaultImage = "pytorch/pytorch:2.4.0-cuda12.4-cudnn9-runtime"
    public static let defaultDiskSizeGB = 50

    public var poolID: PoolID
    public var hostMachineID: HostMachineID
    public var gpuName: String?
    public var image: String
    public var diskSizeGB: Int
    public var volumeSizeGB: Int
    /// Rent interruptible instances at this bid ($/hour) instead of on-demand ones.
    public var bidPricePerHour: Double?
    /// `cpu_standby`: a CPU standby even where the host has two free GPUs. Otherwise the product's
    /// rule: two free GPUs make a warm pool, one a CPU standby (when the controller has that cloud).
    public var prefersCPUStandby = false

    public init(
        poolID: PoolID, hostMachineID: HostMachineID, gpuName: String? = nil, image: String = ProvisionRequest.defaultImage,
        diskSizeGB: Int = ProvisionRequest.defaultDiskSizeGB, volumeSizeGB: Int = PoolRecord.defaultVolumeSizeGB
    ) {
        self.poolID = poolID
        self.hostMachineID = hostMachineID
        self.gpuName = gpuName
        self.image = image
        self.diskSizeGB = diskSizeGB
        self.volumeSizeGB = volumeSizeGB
    }
}

public struct SettingsChange: Sendable, Equatable {
    public var strategy: FailoverStrategy?
    public var gpuPreferences: [String]?
    public var volumeSizeGB: Int?

    public init(strategy: FailoverStrategy? = nil, gpuPreferences: [String]? = nil, volumeSizeGB: Int? = nil) {
        self.strategy = strategy
        self.gpuPreferences = gpuPreferences
        self.volumeSizeGB = volumeSizeGB
    }
}

public struct FailoverTestOutcome: Sendable, Equatable {
    public var success: Bool
    public var message: String
    public var recoverySeconds: Double?
    public var newPrimaryInstanceID: InstanceID?

    public init(success: Bool, message: String, recoverySeconds: Double?, newPrimaryInstanceID: InstanceID?) {
        self.success = success
        self.message = message
        self.recoverySeconds = recoverySeconds
        self.newPrimaryInstanceID = newPrimaryInstanceID
    }
}

/// Pool operations for a controller that has no provider: the strategy switches are real (they
/// are store changes), and everything that needs the provider says so with a 503.
public struct ProviderlessPoolOperations: PoolOperations {
    let store: any WarmpoolStore

    public init(store: any WarmpoolStore) { self.store = store }

    public func hosts(_ filter: WarmPoolHosts.Filter) async throws -> [WarmPoolHosts.Host] { throw PoolOperationError.providerNotConfigured }
    public func provision(_ request: ProvisionRequest) async throws -> PoolRecord { throw PoolOperationError.providerNotConfigured }
    public func failoverTest(_ poolID: PoolID) async throws -> FailoverTestOutcome {
        try await requirePool(poolID)
        throw PoolOperationError.providerNotConfigured
    }

    public func cleanup(_ poolID: PoolID) async throws -> CleanupOutcome {
        try await requirePool(poolID)
        throw PoolOperationError.providerNotConfigured
    }

    /// Without a provider nothing fails over, so nothing is ever held.
    public func breaker() async throws -> BreakerStatus { BreakerStatus(tripped: false, since: nil, held: []) }
    public func releaseBreaker() async throws -> Int { 0 }
    /// Nothing fails over without a provider: no pool is protected.
    public func protections() async -> [PoolID: PoolProtection] { [:] }

    public func repair(_ poolID: PoolID) async throws -> PoolRecord {
        try await requirePool(poolID)
        throw PoolOperationError.providerNotConfigured
    }

    public func providerNotice(_ notice: ProviderNotice) async -> String? { "ignored: this controller has no provider" }

    private func requirePool(_ poolID: PoolID) async throws {
        guard try await store.pool(id: poolID) != nil else { throw PoolOperationError.unknownPool(poolID) }
    }

    public func enable(_ poolID: PoolID) async throws -> PoolRecord {
        try await setStrategy(.gpuWarmPool, poolID: poolID)
    }

    public func disable(_ poolID: PoolID) async throws -> PoolRecord {
        try await setStrategy(.cpuStandby, poolID: poolID)
    }

    public func updateSettings(_ poolID: PoolID, _ change: SettingsChange) async throws -> PoolRecord {
        var pool = try await store.pool(id: poolID) ?? PoolRecord(poolID: poolID)
        if let strategy = change.strategy {
            pool.strategy = strategy
            pool.state = PoolStrategySwitch.state(after: strategy, pool: pool)
        }
        if let preferences = change.gpuPreferences { pool.gpuPreferences = preferences }
        if let size = change.volumeSizeGB { pool.volumeSizeGB = size }
        pool.updatedAt = Date()
        try await store.savePool(pool)
        return pool
    }

    private func setStrategy(_ strategy: FailoverStrategy, poolID: PoolID) async throws -> PoolRecord {
        guard var pool = try await store.pool(id: poolID) else { throw PoolOperationError.unknownPool(poolID) }
        pool.strategy = strategy
        pool.state = PoolStrategySwitch.state(after: strategy, pool: pool)
        pool.updatedAt = Date()
        try await store.savePool(pool)
        return pool
    }
}

/// The pool state a strategy switch leaves when no failover is running.
public enum PoolStrategySwitch {
    public static func state(after strategy: FailoverStrategy, pool: PoolRecord) -> PoolState {
        switch strategy {
        case .cpuStandby, .disabled: return .disabled
        case .gpuWarmPool:
            guard pool.state == .disabled else { return pool.state }
            if pool.primaryInstanceID != nil, pool.standbyInstanceID != nil { return .active }
            return pool.primaryInstanceID == nil ? .searching : .degraded
        }
    }
}
