import WarmpoolEngine
import WarmpoolJSON
import WarmpoolModel
import WarmpoolStore

/// The operators' requests (the API's): each applies one engine event and, where the answer
/// depends on how it ends, waits for the pool's transition that ends it.
///
/// One operation per pool at a time: a second one while the first is in flight (a cleanup during
/// a failover test, a disable during a provisioning) is refused with the reason, never
/// interleaved. Provisions are also one per host: two pools racing for the same free GPUs would
/// both be refused, or one would leak what it made.
extension FailoverCoordinator {
    public func snapshot(_ poolID: PoolID) -> PoolSnapshot? { pools[poolID]?.machine?.snapshot }

    public func record(_ poolID: PoolID) -> PoolRecord? { pools[poolID]?.ledger.record }

    /// Starts a new pool and waits until it is provisioned, or `timeout` passes. A provisioning
    /// that fails removes what it made and throws `provisioningFailed`.
    public func provision(_ request: ProvisionRequest, timeout: Duration) async throws -> PoolRecord {
        try await load()
        try beginOperation("provisioning", on: request.poolID)
        defer { endOperation(on: request.poolID) }
        if let existing = pools[request.poolID], let machine = existing.machine, !machine.snapshot.removed {
            throw OperationError.refused("machine \(request.poolID) already has a warm pool (state \(machine.snapshot.state.rawValue)); clean it up first")
        }
        if let other = provisioningHosts[request.hostMachineID] {
            throw OperationError.refused(
                "host \(request.hostMachineID) is busy: machine \(other)'s pool is being provisioned there; try again when it finishes")
        }
        provisioningHosts[request.hostMachineID] = request.poolID
        defer { provisioningHosts[request.hostMachineID] = nil }
        var request = request
        request.incarnation = try await store.beginIncarnation(poolID: request.poolID)
        let now = clock.now()
        let (machine, actions) = PoolMachine.provision(request, settings: configuration.engine, now: now)
        var record = pools[request.poolID]?.ledger.record ?? PoolRecord(poolID: request.poolID)
        record.hostMachineID = request.hostMachineID
        record.volumeSizeGB = request.volumeGB
        record.strategy = .gpuWarmPool
        record.incarnation = request.incarnation
        record.createdAt = TransitionRecorder.date(now)
        pools[request.poolID] = ManagedPool(ledger: PoolLedger(record: record))
        install(request.poolID, machine: machine, actions: actions, previous: nil, now: now)
        let end = await waitUntil(request.poolID, timeout: timeout) { !$0.cleaningUp && ![.searching, .provisioning].contains($0.state) }
        if let end, end.removed {
            throw OperationError.provisioningFailed(end.errorMessage ?? "provisioning failed", atProvider: end.failedAtProvider)
        }
        return pools[request.poolID]?.ledger.record ?? record
    }

    /// Turns the strategy on or off (`gpu_warm_pool` or the `cpu_standby` fallback). Enabling a
    /// pool whose primary died meanwhile fails it over.
    public func setStrategy(_ strategy: FailoverStrategy, poolID: PoolID) throws -> PoolRecord {
        guard var pool = pools[poolID], pool.machine != nil else { throw OperationError.unknownPool(poolID) }
        try requireIdle(poolID)
        pool.ledger.record.strategy = strategy
        pools[poolID] = pool
        let alive = pool.machine?.snapshot.primaryInstanceID.map(isHeartbeating) ?? false
        try applyThrowing(poolID) { machine, now in
            strategy == .gpuWarmPool ? try machine.enable(primaryAlive: alive, now: now) : try machine.disable(now: now)
        }
        return pools[poolID]?.ledger.record ?? pool.ledger.record
    }

    /// Settings changes on a pool. GPU preferences apply to the instances it makes from now on;
    /// the volume's size is fixed once the volume exists.
    /// Every part is checked before any is applied.
    public func updateSettings(
        poolID: PoolID, strategy: FailoverStrategy?, gpuPreferences: [String]?, volumeSizeGB: Int?
    ) async throws -> PoolRecord {
        try await load()
        guard let current = pools[poolID], current.machine != nil else { throw OperationError.unknownPool(poolID) }
        try requireIdle(poolID)
        if let volumeSizeGB, volumeSizeGB != current.ledger.record.volumeSizeGB {
            throw OperationError.refused(
                "machine \(poolID)'s volume is \(current.ledger.record.volumeSizeGB) GB and cannot be resized in place; clean the pool up and provision it again with volume_size \(volumeSizeGB)")
        }
        if let strategy { _ = try setStrategy(strategy, poolID: poolID) }
        guard var pool = pools[poolID] else { throw OperationError.unknownPool(poolID) }
        if let gpuPreferences { pool.ledger.record.gpuPreferences = gpuPreferences }
        pools[poolID] = pool
        commitRecordOnly(poolID)
        return pools[poolID]?.ledger.record ?? pool.ledger.record
    }

    /// A real failover on purpose; waits until the standby is promoted (or the failover ends
    /// otherwise) and returns the pool's snapshot then.
    public func failoverTest(poolID: PoolID, timeout: Duration) async throws -> PoolSnapshot {
        guard pools[poolID]?.machine != nil else { throw OperationError.unknownPool(poolID) }
        try beginOperation("a failover test", on: poolID)
        defer { endOperation(on: poolID) }
        try applyThrowing(poolID) { machine, now in try machine.testFailover(now: now) }
        guard let snapshot = await waitUntil(poolID, timeout: timeout, { $0.state != .failover }), !snapshot.removed else {
            throw OperationError.refused("machine \(poolID)'s pool was removed while its failover test ran")
        }
        return snapshot
    }

    /// Restores `snapshot` (the newest when nil) onto a new volume, fencing the primary first
    /// (`PoolMachine.restore`); waits until the move has ended.
    public func restore(poolID: PoolID, snapshot: String?, timeout: Duration) async throws -> PoolSnapshot {
        guard pools[poolID]?.machine != nil else { throw OperationError.unknownPool(poolID) }
        guard !configuration.restoreEnvironment.isEmpty else {
            throw OperationError.refused("this controller has no snapshot store configured (--agent-env WARMPOOL_S3_*)")
        }
        try beginOperation("a restore", on: poolID)
        defer { endOperation(on: poolID) }
        try applyThrowing(poolID) { machine, now in try machine.restore(snapshot: snapshot, now: now) }
        guard let end = await waitUntil(poolID, timeout: timeout, { $0.state != .failover }), !end.removed else {
            throw OperationError.refused("machine \(poolID)'s pool was removed while its restore ran")
        }
        return end
    }

    /// Takes a snapshot of the pool's volume now, on its primary over SSH (the agent's own schedule
    /// goes on). Answers the tool's JSON summary.
    public func snapshotNow(poolID: PoolID) async throws -> JSONValue {
        guard let snapshot = pools[poolID]?.machine?.snapshot else { throw OperationError.unknownPool(poolID) }
        guard !configuration.restoreEnvironment.isEmpty else {
            throw OperationError.refused("this controller has no snapshot store configured (--agent-env WARMPOOL_S3_*)")
        }
        guard let primary = snapshot.primaryInstanceID, let ssh = snapshot.primarySSH else {
            throw OperationError.refused("machine \(poolID)'s pool has no primary to snapshot (state \(snapshot.state.rawValue))")
        }
        switch await restorer.takeSnapshot(poolID: poolID, instance: primary, ssh: ssh) {
        case .success(let summary): return summary
        case .failure(let reason): throw OperationError.refused("the snapshot failed: \(reason)")
        }
    }

    public enum CleanupResult: Sendable, Equatable {
        case removed
        /// The machine has no pool (any more): a retried cleanup is not an error.
        case nothingToRemove
        /// Not finished by the timeout, or failed; the pool's state says which.
        case unfinished(PoolSnapshot?)
    }

    /// Destroys the pool's instances and volume; waits until they are gone.
    public func cleanup(poolID: PoolID, timeout: Duration) async throws -> CleanupResult {
        guard pools[poolID]?.machine != nil else {
            // Removed before (a retried cleanup): nothing to do, and no error. Never provisioned: 404.
            guard try await store.lastIncarnation(poolID: poolID) > 0 else { throw OperationError.unknownPool(poolID) }
            return .nothingToRemove
        }
        try beginOperation("a cleanup", on: poolID)
        defer { endOperation(on: poolID) }
        try applyThrowing(poolID) { machine, now in try machine.cleanup(now: now) }
        let end = await waitUntil(poolID, timeout: timeout) { $0.removed || $0.state == .error }
        return end?.removed == true || pools[poolID] == nil ? .removed : .unfinished(end)
    }

    // MARK: - One at a time

    private func beginOperation(_ name: String, on poolID: PoolID) throws {
        try requireIdle(poolID)
        operationsInFlight[poolID] = name
    }

    private func endOperation(on poolID: PoolID) {
        operationsInFlight[poolID] = nil
    }

    func requireIdle(_ poolID: PoolID) throws {
        if let running = operationsInFlight[poolID] {
            throw OperationError.refused("machine \(poolID): \(running) is in progress; try again when it finishes")
        }
    }

    /// The operator's operation in flight on the pool, if any.
    public func operationInFlight(_ poolID: PoolID) -> String? { operationsInFlight[poolID] }
}
