import Foundation
import WarmpoolModel

/// One warm pool, keyed by the product's machine id. The engine owns `engineState` (its whole
/// state machine as JSON); the other columns are what the API shows, kept beside it so a status
/// query never has to decode the engine.
public struct PoolRecord: Codable, Sendable, Equatable {
    public var poolID: PoolID
    public var hostMachineID: HostMachineID?
    public var strategy: FailoverStrategy
    public var gpuPreferences: [String]
    public var volumeSizeGB: Int
    public var state: PoolState
    public var volumeID: VolumeID?
    public var primaryInstanceID: InstanceID?
    public var standbyInstanceID: InstanceID?
    public var standbyState: StandbyState
    public var primarySSHHost: String?
    public var primarySSHPort: Int?
    public var lastHealthCheck: Date?
    public var failoverCount: Int
    public var lastFailoverAt: Date?
    public var errorMessage: String?
    public var epoch: Epoch
    public var engineState: Data?
    public var createdAt: Date
    public var updatedAt: Date
    /// Which of the machine id's pools this is (`WarmpoolStore.beginIncarnation`).
    public var incarnation: Int = 1
    /// The CPU standby: the VM's name at the other cloud, its agent's id, its address.
    public var cpuStandbyName: String?
    public var cpuStandbyInstanceID: InstanceID?
    public var cpuStandbySSHHost: String?
    /// The primary is this CPU VM (degraded: CPU speed) until the pool moves back to a GPU.
    public var cpuPrimaryName: String?

    public static let defaultVolumeSizeGB = 100

    /// The database columns, spelled out: the Swift names keep their acronyms.
    enum CodingKeys: String, CodingKey {
        case poolID = "machine_id"
        case hostMachineID = "host_machine_id"
        case strategy
        case gpuPreferences = "gpu_preferences"
        case volumeSizeGB = "volume_size_gb"
        case state
        case volumeID = "volume_id"
        case primaryInstanceID = "primary_instance_id"
        case standbyInstanceID = "standby_instance_id"
        case standbyState = "standby_state"
        case primarySSHHost = "primary_ssh_host"
        case primarySSHPort = "primary_ssh_port"
        case lastHealthCheck = "last_health_check"
        case failoverCount = "failover_count"
        case lastFailoverAt = "last_failover_at"
        case errorMessage = "error_message"
        case epoch
        case engineState = "engine_state"
        case createdAt = "created_at"
        case updatedAt = "updated_at"
        case incarnation
        case cpuStandbyName = "cpu_standby_name"
        case cpuStandbyInstanceID = "cpu_standby_instance_id"
        case cpuStandbySSHHost = "cpu_standby_ssh_host"
        case cpuPrimaryName = "cpu_primary_name"
    }

    public init(
        poolID: PoolID, hostMachineID: HostMachineID? = nil, strategy: FailoverStrategy = .gpuWarmPool,
        gpuPreferences: [String] = [], volumeSizeGB: Int = PoolRecord.defaultVolumeSizeGB, state: PoolState = .disabled,
        volumeID: VolumeID? = nil, primaryInstanceID: InstanceID? = nil, standbyInstanceID: InstanceID? = nil,
        standbyState: StandbyState = .none, primarySSHHost: String? = nil, primarySSHPort: Int? = nil,
        lastHealthCheck: Date? = nil, failoverCount: Int = 0, lastFailoverAt: Date? = nil, errorMessage: String? = nil,
        epoch: Epoch = 0, engineState: Data? = nil, createdAt: Date = Date(), updatedAt: Date = Date()
    ) {
        self.poolID = poolID
        self.hostMachineID = hostMachineID
        self.strategy = strategy
        self.gpuPreferences = gpuPreferences
        self.volumeSizeGB = volumeSizeGB
        self.state = state
        self.volumeID = volumeID
        self.primaryInstanceID = primaryInstanceID
        self.standbyInstanceID = standbyInstanceID
        self.standbyState = standbyState
        self.primarySSHHost = primarySSHHost
        self.primarySSHPort = primarySSHPort
        self.lastHealthCheck = lastHealthCheck
        self.failoverCount = failoverCount
        self.lastFailoverAt = lastFailoverAt
        self.errorMessage = errorMessage
        self.epoch = epoch
        self.engineState = engineState
        self.createdAt = createdAt
        self.updatedAt = updatedAt
    }
}

/// One failover of one pool, from detection to its end.
public struct FailoverRecord: Codable, Sendable, Equatable {
    public enum Result: String, Codable, Sendable {
        case inProgress = "in_progress"
        case succeeded
        case failed
        case degraded
    }

    public var id: String
    public var poolID: PoolID
    public var reason: String
    public var result: Result
    public var oldPrimaryInstanceID: InstanceID?
    public var newPrimaryInstanceID: InstanceID?
    public var epoch: Epoch
    public var startedAt: Date
    public var finishedAt: Date?
    public var errorMessage: String?
    /// The incarnation of the pool it belonged to.
    public var incarnation: Int = 1
    /// The work the failover lost: how old the old primary's newest checkpoint was when its failure
    /// was detected (its agent's last report, aged since). nil when its agent reported none.
    public var workLostSeconds: Double?
    /// When that checkpoint was written, by the same reckoning.
    public var lastCheckpointAt: Date?
    /// A move to another host (its host lost): the snapshot restored, and its recovery point,
    /// how old it was when the failure was detected.
    public var restoredSnapshot: String?
    public var recoveryPointSeconds: Double?

    /// The database columns, spelled out: the Swift names keep their acronyms.
    enum CodingKeys: String, CodingKey {
        case id
        case incarnation
        case poolID = "machine_id"
        case reason
        case result
        case oldPrimaryInstanceID = "old_primary_instance_id"
        case newPrimaryInstanceID = "new_primary_instance_id"
        case epoch
        case startedAt = "started_at"
        case finishedAt = "finished_at"
        case errorMessage = "error_message"
        case workLostSeconds = "work_lost_seconds"
        case lastCheckpointAt = "last_checkpoint_at"
        case restoredSnapshot = "restored_snapshot"
        case recoveryPointSeconds = "recovery_point_seconds"
    }

    public init(
        id: String, poolID: PoolID, reason: String, result: Result = .inProgress, oldPrimaryInstanceID: InstanceID? = nil,
        newPrimaryInstanceID: InstanceID? = nil, epoch: Epoch, startedAt: Date, finishedAt: Date? = nil, errorMessage: String? = nil
    ) {
        self.id = id
        self.poolID = poolID
        self.reason = reason
        self.result = result
        self.oldPrimaryInstanceID = oldPrimaryInstanceID
        self.newPrimaryInstanceID = newPrimaryInstanceID
        self.epoch = epoch
        self.startedAt = startedAt
        self.finishedAt = finishedAt
        self.errorMessage = errorMessage
    }

    /// Seconds from detection to the end, once it has ended.
    public var durationSeconds: Double? { finishedAt.map { $0.timeIntervalSince(startedAt) } }
}

/// One step of a failover's timeline. `sequence` orders steps within a failover and makes
/// re-recording a step after a restart harmless (same failover, same sequence: one row).
public struct TimelineStep: Codable, Sendable, Equatable {
    public var failoverID: String
    public var sequence: Int
    public var step: String
    public var at: Date
    public var detail: String?

    /// The database columns, spelled out: the Swift names keep their acronyms.
    enum CodingKeys: String, CodingKey {
        case failoverID = "failover_id"
        case sequence
        case step
        case at
        case detail
    }

    public init(failoverID: String, sequence: Int, step: String, at: Date, detail: String? = nil) {
        self.failoverID = failoverID
        self.sequence = sequence
        self.step = step
        self.at = at
        self.detail = detail
    }
}

/// An agent the controller accepts, with the secret it proves. The secret is kept as is: the
/// handshake needs it to compute an HMAC, so it cannot be stored hashed (the database is 0600).
public struct AgentRecord: Codable, Sendable, Equatable {
    public var agentID: AgentID
    public var secretHex: String
    public var poolID: PoolID?
    public var instanceID: InstanceID?
    public var role: String?
    public var createdAt: Date
    public var revokedAt: Date?

    /// The database columns, spelled out: the Swift names keep their acronyms.
    enum CodingKeys: String, CodingKey {
        case agentID = "agent_id"
        case secretHex = "secret_hex"
        case poolID = "machine_id"
        case instanceID = "instance_id"
        case role
        case createdAt = "created_at"
        case revokedAt = "revoked_at"
    }

    public init(
        agentID: AgentID, secretHex: String, poolID: PoolID? = nil, instanceID: InstanceID? = nil, role: String? = nil,
        createdAt: Date = Date(), revokedAt: Date? = nil
    ) {
        self.agentID = agentID
        self.secretHex = secretHex
        self.poolID = poolID
        self.instanceID = instanceID
        self.role = role
        self.createdAt = createdAt
        self.revokedAt = revokedAt
    }
}

/// An API key as stored: only its SHA-256 is kept; the plaintext is shown once, at creation.
public struct APIKeyRecord: Codable, Sendable, Equatable {
    /// What a key may do, each scope including the ones before it: `metrics` (GET /metrics),
    /// `read` (status, pools, hosts, history, events, agents, settings, breaker), `operate`
    /// (provision, enable, disable, failover test, repair, breaker release), `admin` (cleanup,
    /// settings changes, agent secrets, API keys).
    public enum Scope: String, Codable, Sendable, CaseIterable, Comparable {
        case metrics, read, operate, admin

        public static func < (lhs: Scope, rhs: Scope) -> Bool {
            allCases.firstIndex(of: lhs)! < allCases.firstIndex(of: rhs)!
        }
    }

    public var id: String
    public var name: String
    public var hashHex: String
    public var createdAt: Date
    public var revokedAt: Date?
    public var lastUsedAt: Date?
    public var scope: Scope

    /// The database columns, spelled out: the Swift names keep their acronyms.
    enum CodingKeys: String, CodingKey {
        case id
        case name
        case hashHex = "hash_hex"
        case createdAt = "created_at"
        case revokedAt = "revoked_at"
        case lastUsedAt = "last_used_at"
        case scope
    }

    public init(id: String, name: String, hashHex: String, createdAt: Date = Date(), revokedAt: Date? = nil, lastUsedAt: Date? = nil,
                scope: Scope = .admin) {
        self.scope = scope
        self.id = id
        self.name = name
        self.hashHex = hashHex
        self.createdAt = createdAt
        self.revokedAt = revokedAt
        self.lastUsedAt = lastUsedAt
    }
}

/// A notification waiting in the outbox. `id` is unique and stable: a redelivery after a restart
/// carries the same id, so receivers can drop duplicates.
public struct OutboxEntry: Codable, Sendable, Equatable {
    public var id: String
    public var kind: String
    public var poolID: PoolID?
    public var payload: String
    public var createdAt: Date
    public var attempts: Int
    public var nextAttemptAt: Date
    public var deliveredAt: Date?
    public var lastError: String?

    /// The database columns, spelled out: the Swift names keep their acronyms.
    enum CodingKeys: String, CodingKey {
        case id
        case kind
        case poolID = "machine_id"
        case payload
        case createdAt = "created_at"
        case attempts
        case nextAttemptAt = "next_attempt_at"
        case deliveredAt = "delivered_at"
        case lastError = "last_error"
    }

    public init(
        id: String, kind: String, poolID: PoolID?, payload: String, createdAt: Date = Date(), attempts: Int = 0,
        nextAttemptAt: Date = Date(), deliveredAt: Date? = nil, lastError: String? = nil
    ) {
        self.id = id
        self.kind = kind
        self.poolID = poolID
        self.payload = payload
        self.createdAt = createdAt
        self.attempts = attempts
        self.nextAttemptAt = nextAttemptAt
        self.deliveredAt = deliveredAt
        self.lastError = lastError
    }
}

/// Something that happened to a pool or one of its agents, for `warmpoolctl events`.
public struct PoolEvent: Codable, Sendable, Equatable {
    public var id: Int64?
    public var poolID: PoolID?
    public var agentID: AgentID?
    public var kind: String
    public var at: Date
    public var detail: String?

    /// The database columns, spelled out: the Swift names keep their acronyms.
    enum CodingKeys: String, CodingKey {
        case id
        case poolID = "machine_id"
        case agentID = "agent_id"
        case kind
        case at
        case detail
    }

    public init(id: Int64? = nil, poolID: PoolID?, agentID: AgentID?, kind: String, at: Date, detail: String? = nil) {
        self.id = id
        self.poolID = poolID
        self.agentID = agentID
        self.kind = kind
        self.at = at
        self.detail = detail
    }
}

/// Everything one engine transition changes, written in one transaction before its side effects
/// run: if the controller dies after the commit, the restarted engine finds the transition done
/// and re-issues its (idempotent) side effects; if it dies before, nothing of it is visible.
public struct PoolTransition: Sendable {
    public var pool: PoolRecord
    public var failover: FailoverRecord?
    public var steps: [TimelineStep]
    public var notifications: [OutboxEntry]
    public var events: [PoolEvent]

    public init(
        pool: PoolRecord, failover: FailoverRecord? = nil, steps: [TimelineStep] = [], notifications: [OutboxEntry] = [],
        events: [PoolEvent] = []
    ) {
        self.pool = pool
        self.failover = failover
        self.steps = steps
        self.notifications = notifications
        self.events = events
    }
}
