import Foundation
import WarmpoolProvider
import WarmpoolStore

/// What the API asks of the failover engine and the provider. The API validates input and shapes
/// answers; everything that changes a pool's instances goes through an implementation of this.
public protocol PoolOperations: Sendable {
    func hosts(_ filter: WarmPoolHosts.Filter) async throws -> [WarmPoolHosts.Host]
    func provision(_ request: ProvisionRequest) async throws -> PoolRecord
    func enable(machineID: Int64) async throws -> PoolRecord
    func disable(machineID: Int64) async throws -> PoolRecord
    /// Settings changes; a machine without a pool gets a row (disabled) to hold them.
    func updateSettings(machineID: Int64, _ change: SettingsChange) async throws -> PoolRecord
    func failoverTest(machineID: Int64) async throws -> FailoverTestOutcome
    func cleanup(machineID: Int64) async throws
}

/// Errors an implementation reports; the API maps each to its status.
public enum PoolOperationError: Error, CustomStringConvertible, Sendable {
    case unknownMachine(Int64)
    /// The pool is not in a state that allows this (e.g. a failover already running).
    case conflict(String)
    /// The provider cannot be reached or refused; the message names why.
    case providerFailed(String)
    /// This controller runs without a provider (no API key or URL configured).
    case providerNotConfigured

    public var description: String {
        switch self {
        case .unknownMachine(let id): "no warm pool for machine \(id)"
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

    public var machineID: Int64
    public var hostMachineID: Int64
    public var gpuName: String?
    public var image: String
    public var diskSizeGB: Int
    public var volumeSizeGB: Int

    public init(
        machineID: Int64, hostMachineID: Int64, gpuName: String? = nil, image: String = ProvisionRequest.defaultImage,
        diskSizeGB: Int = ProvisionRequest.defaultDiskSizeGB, volumeSizeGB: Int = PoolRecord.defaultVolumeSizeGB
    ) {
        self.machineID = machineID
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
    public var newPrimaryInstanceID: Int64?

    public init(success: Bool, message: String, recoverySeconds: Double?, newPrimaryInstanceID: Int64?) {
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
    public func failoverTest(machineID: Int64) async throws -> FailoverTestOutcome {
        try await requirePool(machineID)
        throw PoolOperationError.providerNotConfigured
    }

    public func cleanup(machineID: Int64) async throws {
        try await requirePool(machineID)
        throw PoolOperationError.providerNotConfigured
    }

    private func requirePool(_ machineID: Int64) async throws {
        guard try await store.pool(machineID: machineID) != nil else { throw PoolOperationError.unknownMachine(machineID) }
    }

    public func enable(machineID: Int64) async throws -> PoolRecord {
        try await setStrategy(.gpuWarmPool, machineID: machineID)
    }

    public func disable(machineID: Int64) async throws -> PoolRecord {
        try await setStrategy(.cpuStandby, machineID: machineID)
    }

    public func updateSettings(machineID: Int64, _ change: SettingsChange) async throws -> PoolRecord {
        var pool = try await store.pool(machineID: machineID) ?? PoolRecord(machineID: machineID)
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

    private func setStrategy(_ strategy: FailoverStrategy, machineID: Int64) async throws -> PoolRecord {
        guard var pool = try await store.pool(machineID: machineID) else { throw PoolOperationError.unknownMachine(machineID) }
        pool.strategy = strategy
        pool.state = PoolStrategySwitch.state(after: strategy, pool: pool)
        pool.updatedAt = Date()
        try await store.savePool(pool)
        return pool
    }
}

/// The pool state a strategy switch leaves when no failover is running.
public enum PoolStrategySwitch {
    public static func state(after strategy: FailoverStrategy, pool: PoolRecord) -> String {
        switch strategy {
        case .cpuStandby, .disabled: return "disabled"
        case .gpuWarmPool:
            guard pool.state == "disabled" else { return pool.state }
            if pool.primaryInstanceID != nil, pool.standbyInstanceID != nil { return "active" }
            return pool.primaryInstanceID == nil ? "searching" : "degraded"
        }
    }
}
