import WarmpoolEngine
import WarmpoolModel
import WarmpoolStore

/// The operators' requests (the API's): each applies one engine event and, where the answer
/// depends on how it ends, waits for the pool's transition that ends it.
extension FailoverCoordinator {
    public func snapshot(_ poolID: PoolID) -> PoolSnapshot? { pools[poolID]?.machine?.snapshot }

    public func record(_ poolID: PoolID) -> PoolRecord? { pools[poolID]?.ledger.record }

    /// Starts a new pool and waits until it is provisioned, failed, or `timeout` passes.
    public func provision(_ request: ProvisionRequest, timeout: Duration) async throws -> PoolRecord {
        try await load()
        if let existing = pools[request.poolID], let machine = existing.machine, !machine.snapshot.removed {
            throw OperationError.refused("machine \(request.poolID) already has a warm pool (state \(machine.snapshot.state.rawValue)); clean it up first")
        }
        let now = clock.now()
        let (machine, actions) = PoolMachine.provision(request, settings: configuration.engine, now: now)
        var record = pools[request.poolID]?.ledger.record ?? PoolRecord(poolID: request.poolID)
        record.hostMachineID = request.hostMachineID
        record.volumeSizeGB = request.volumeGB
        record.strategy = .gpuWarmPool
        pools[request.poolID] = ManagedPool(ledger: PoolLedger(record: record))
        install(request.poolID, machine: machine, actions: actions, previous: nil, now: now)
        _ = await waitUntil(request.poolID, timeout: timeout) { ![.searching, .provisioning].contains($0.state) }
        return pools[request.poolID]?.ledger.record ?? record
    }

    /// Turns the strategy on or off (`gpu_warm_pool` or the `cpu_standby` fallback).
    public func setStrategy(_ strategy: FailoverStrategy, poolID: PoolID) throws -> PoolRecord {
        guard var pool = pools[poolID] else { throw OperationError.unknownPool(poolID) }
        pool.ledger.record.strategy = strategy
        pools[poolID] = pool
        if pool.machine != nil {
            try applyThrowing(poolID) { machine, now in
                strategy == .gpuWarmPool ? try machine.enable(now: now) : try machine.disable(now: now)
            }
        } else {
            commitRecordOnly(poolID)
        }
        return pools[poolID]?.ledger.record ?? pool.ledger.record
    }

    /// Settings changes on a pool's row; a new machine gets a row (disabled) to hold them.
    public func updateSettings(poolID: PoolID, gpuPreferences: [String]?, volumeSizeGB: Int?) async throws -> PoolRecord {
        try await load()
        var pool = pools[poolID] ?? ManagedPool(ledger: PoolLedger(record: PoolRecord(poolID: poolID)))
        if let gpuPreferences { pool.ledger.record.gpuPreferences = gpuPreferences }
        if let volumeSizeGB { pool.ledger.record.volumeSizeGB = volumeSizeGB }
        pools[poolID] = pool
        commitRecordOnly(poolID)
        return pools[poolID]?.ledger.record ?? pool.ledger.record
    }

    /// A real failover on purpose; waits until the standby is promoted (or the failover ends
    /// otherwise) and returns the pool's snapshot then.
    public func failoverTest(poolID: PoolID, timeout: Duration) async throws -> PoolSnapshot {
        guard pools[poolID]?.machine != nil else { throw OperationError.unknownPool(poolID) }
        try applyThrowing(poolID) { machine, now in try machine.testFailover(now: now) }
        guard let snapshot = await waitUntil(poolID, timeout: timeout, { $0.state != .failover }) else {
            throw OperationError.refused("machine \(poolID)'s pool was removed while its failover test ran")
        }
        return snapshot
    }

    /// Destroys the pool's instances and volume; waits until they are gone. True when they are.
    public func cleanup(poolID: PoolID, timeout: Duration) async throws -> Bool {
        guard pools[poolID] != nil else { throw OperationError.unknownPool(poolID) }
        guard pools[poolID]?.machine != nil else {
            // Settings only: nothing at the provider.
            pools[poolID] = nil
            try await store.deletePool(id: poolID)
            return true
        }
        try applyThrowing(poolID) { machine, now in try machine.cleanup(now: now) }
        _ = await waitUntil(poolID, timeout: timeout) { $0.removed || $0.state == .error }
        return pools[poolID] == nil
    }
}
