import Foundation
import WarmpoolJSON
import WarmpoolLiveness
import WarmpoolModel
import WarmpoolProvider
import WarmpoolStore
import WarmpoolWire

/// Records turned into the JSON shapes of the API reference (`../shared/reference/warmpool-api.md`)
/// and of Protocol/openapi.yaml. Field names are spelled here and nowhere else.
enum Present {
    /// A recovery point report, with the moment it is read at on both clocks.
    struct RecoveryPoint {
        var report: RecoveryPointReport
        var now: Date
        var monotonicNow: Int64
    }

    /// A sync report, with the moment it is read at on both clocks.
    struct Sync {
        var report: SyncReport
        var now: Date
        var monotonicNow: Int64
    }

    static func poolStatus(_ pool: PoolRecord, lastHeartbeat: Date?, protection: PoolProtection? = nil,
                           recoveryPoint: RecoveryPoint? = nil, sync: Sync? = nil) -> JSONValue {
        let protection = protection ?? PoolProtection(conditions: [PoolCondition(
            type: "Managed", status: false, reason: "NoEngine",
            message: "no failover engine manages this pool (the controller has no provider configured)", lastTransition: nil)])
        return .object([
            ("machine_id", .id(pool.poolID)),
            ("state", .string(pool.state.rawValue)),
            ("host_machine_id", .id(pool.hostMachineID)),
            ("volume_id", .id(pool.volumeID)),
            ("primary_gpu_id", .id(pool.primaryInstanceID)),
            ("standby_gpu_id", .id(pool.standbyInstanceID)),
            ("standby_state", .string(pool.standbyState.rawValue)),
            ("primary_ssh_host", .string(pool.primarySSHHost)),
            ("primary_ssh_port", .int(pool.primarySSHPort)),
            ("last_health_check", .date(lastHeartbeat ?? pool.lastHealthCheck)),
            ("failover_count", .int(Int64(pool.failoverCount))),
            ("last_failover_at", .date(pool.lastFailoverAt)),
            ("error_message", .string(pool.errorMessage)),
            ("strategy", .string(pool.strategy.rawValue)),
            ("cpu_standby", pool.cpuStandbyName.map { name in
                .object([
                    ("name", .string(name)), ("instance_id", .id(pool.cpuStandbyInstanceID)), ("ssh_host", .string(pool.cpuStandbySSHHost)),
                ])
            } ?? .null),
            ("cpu_primary_name", .string(pool.cpuPrimaryName)),
            ("epoch", .epoch(pool.epoch)),
            ("incarnation", .int(Int64(pool.incarnation))),
            ("protected", .bool(protection.protected)),
            ("conditions", .array(protection.conditions.map(condition))),
            ("remediation", protection.remediation.map { remediation in
                .object([
                    ("rung", .string(remediation.rung)),
                    ("next_retry_at", .date(remediation.nextRetryAt.map { Date(timeIntervalSince1970: $0.secondsSinceEpoch) })),
                ])
            } ?? .null),
            ("recovery_point", recoveryPoint.map(Self.recoveryPoint) ?? .null),
            ("sync", sync.map(Self.sync) ?? .null),
        ])
    }

    /// The primary's continuous copy to its CPU standby, as its agent last reported it, the lag
    /// aged to now on the controller's clock.
    static func sync(_ sync: Sync) -> JSONValue {
        let report = sync.report
        func seconds(_ value: Double?) -> JSONValue { value.map { .double(($0 * 1000).rounded() / 1000) } ?? .null }
        return .object([
            ("target", .string(report.target)),
            ("state", .string(report.state)),
            ("lag_seconds", seconds(report.lag(at: sync.monotonicNow))),
            ("bytes_pending", .int(report.bytesPending)),
            ("files_pending", .int(report.filesPending)),
            ("passes", .int(report.passes)),
            ("failures", .int(report.failuresInARow)),
            ("error", .string(report.error)),
            ("last_pass_seconds", seconds(report.lastPassMilliseconds.map { Double($0) / 1e3 })),
            ("last_sent_bytes", .int(report.lastSentBytes)),
            ("manifest_pass", .int(report.manifest?.pass)),
            ("manifest_started_at", .date(report.manifest.map { Date(timeIntervalSince1970: Double($0.startedAtMilliseconds) / 1e3) })),
        ])
    }

    /// The work a failover now would lose (the primary's newest checkpoint) and what a restore
    /// onto another host would start from (its newest snapshot), as its agent last reported.
    static func recoveryPoint(_ point: RecoveryPoint) -> JSONValue {
        let checkpointAge = point.report.checkpointAge(at: point.monotonicNow)
        let snapshotAge = point.report.snapshotAge(at: point.monotonicNow)
        func seconds(_ value: Double?) -> JSONValue { value.map { .double(($0 * 1000).rounded() / 1000) } ?? .null }
        let checkpoint = point.report.checkpoint
        let snapshots = point.report.snapshots
        return .object([
            ("checkpoint_age_seconds", seconds(checkpointAge)),
            ("checkpoint_at", .date(checkpointAge.map { point.now.addingTimeInterval(-$0) })),
            ("checkpoint_pattern", .string(checkpoint?.pattern)),
            ("checkpoint_files", .int(checkpoint?.files)),
            ("checkpoint_newest", .string(checkpoint?.newest)),
            ("checkpoint_problem", .string(checkpoint?.problem)),
            ("snapshot_interval_seconds", .int(snapshots?.intervalSeconds)),
            ("last_snapshot_id", .string(snapshots?.lastID)),
            ("last_snapshot_at", .date(snapshotAge.map { point.now.addingTimeInterval(-$0) })),
            ("snapshot_age_seconds", seconds(snapshotAge)),
            ("snapshot_running", snapshots.map { .bool($0.running) } ?? .null),
            ("snapshot_error", .string(snapshots?.lastError)),
            ("snapshot_failures_in_a_row", .int(snapshots?.failuresInARow)),
        ])
    }

    static func condition(_ condition: PoolCondition) -> JSONValue {
        .object([
            ("type", .string(condition.type)),
            ("status", .string(condition.status ? "True" : "False")),
            ("reason", .string(condition.reason)),
            ("message", .string(condition.message)),
            ("ok", .bool(condition.ok)),
            ("affects_protection", .bool(condition.affectsProtection)),
            ("last_transition_time", .date(condition.lastTransition.map { Date(timeIntervalSince1970: $0.secondsSinceEpoch) })),
        ])
    }

    /// The provision answer's `status`: the reference names the first six fields of a status.
    static func provisionStatus(_ pool: PoolRecord) -> JSONValue {
        guard case .object(let members) = poolStatus(pool, lastHeartbeat: nil) else { return .null }
        return .object(Array(members.prefix(6)))
    }

    static func settings(_ pool: PoolRecord) -> JSONValue {
        .object([
            ("machine_id", .id(pool.poolID)),
            ("strategy", .string(pool.strategy.rawValue)),
            ("gpu_preferences", .array(pool.gpuPreferences.map { .string($0) })),
            ("volume_size_gb", .int(Int64(pool.volumeSizeGB))),
        ])
    }

    static func host(_ host: WarmPoolHosts.Host) -> JSONValue {
        .object([
            ("machine_id", .id(host.machineID)),
            ("total_gpus", .int(Int64(host.totalGPUs))),
            ("available_gpus", .int(Int64(host.availableGPUs))),
            ("gpu_name", .string(host.gpuName)),
            ("avg_price_per_hour", .double(host.avgPricePerHour)),
            ("reliability", .double(host.reliability)),
            ("verified", .bool(host.verified)),
            ("geolocation", .string(host.geolocation)),
            ("can_create_warm_pool", .bool(host.canCreateWarmPool)),
            ("offers", .array(host.offers.map(offer))),
        ])
    }

    static func offer(_ offer: WarmPoolHosts.HostOffer) -> JSONValue {
        .object([
            ("offer_id", .id(offer.offerID)),
            ("machine_id", .id(offer.machineID)),
            ("gpu_name", .string(offer.gpuName)),
            ("num_gpus", .int(Int64(offer.numGPUs))),
            ("price_per_hour", .double(offer.pricePerHour)),
            ("reliability", .double(offer.reliability)),
            ("verified", .bool(offer.verified)),
            ("geolocation", .string(offer.geolocation)),
        ])
    }

    static func failover(_ failover: FailoverRecord, timeline: [TimelineStep]) -> JSONValue {
        var previous = failover.startedAt
        let steps: [JSONValue] = timeline.map { step in
            defer { previous = step.at }
            return .object([
                ("step", .string(step.step)),
                ("at", .date(step.at)),
                ("duration_ms", .double(milliseconds(step.at.timeIntervalSince(previous)))),
                ("since_start_ms", .double(milliseconds(step.at.timeIntervalSince(failover.startedAt)))),
                ("detail", .string(step.detail)),
            ])
        }
        return .object([
            ("id", .string(failover.id)),
            ("machine_id", .id(failover.poolID)),
            ("incarnation", .int(Int64(failover.incarnation))),
            ("reason", .string(failover.reason)),
            ("result", .string(failover.result.rawValue)),
            ("epoch", .epoch(failover.epoch)),
            ("old_primary_gpu_id", .id(failover.oldPrimaryInstanceID)),
            ("new_primary_gpu_id", .id(failover.newPrimaryInstanceID)),
            ("started_at", .date(failover.startedAt)),
            ("finished_at", .date(failover.finishedAt)),
            ("duration_seconds", failover.durationSeconds.map { .double(($0 * 1000).rounded() / 1000) } ?? .null),
            ("error_message", .string(failover.errorMessage)),
            ("work_lost_seconds", failover.workLostSeconds.map { .double(($0 * 1000).rounded() / 1000) } ?? .null),
            ("last_checkpoint_at", .date(failover.lastCheckpointAt)),
            ("restored_snapshot", .string(failover.restoredSnapshot)),
            ("recovery_point_seconds", failover.recoveryPointSeconds.map { .double(($0 * 1000).rounded() / 1000) } ?? .null),
            ("timeline", .array(steps)),
        ])
    }

    static func event(_ event: PoolEvent) -> JSONValue {
        .object([
            ("id", .int(event.id)),
            ("machine_id", .id(event.poolID)),
            ("agent_id", .agentID(event.agentID)),
            ("kind", .string(event.kind)),
            ("at", .date(event.at)),
            ("detail", .string(event.detail)),
        ])
    }

    /// An agent as registered, joined with what the detector and the hub's lease authority see
    /// of it right now.
    /// `role`: what the agent's instance is to its pool now, when a pool names it.
    static func agent(_ record: AgentRecord?, liveness: AgentLivenessSnapshot?, now: Date, leaseMilliseconds: UInt32?, role: String? = nil) -> JSONValue {
        let agentID = record?.agentID ?? liveness?.identity.agentID ?? AgentID("")
        let lastHeartbeat = liveness.map { now.addingTimeInterval(-Double($0.silenceNanoseconds) / 1e9) }
        let status = liveness?.status
        let holdsLease = liveness?.leaseEpoch != nil
        var members: [(String, JSONValue)] = [
            ("agent_id", .agentID(agentID)),
            ("machine_id", .int(record?.poolID?.rawValue ?? liveness.map { $0.identity.machineID.rawValue })),
            ("instance_id", .id(record?.instanceID ?? liveness?.identity.instanceID)),
            ("role", .string(role ?? liveness.map { "\($0.identity.role)" } ?? record?.role)),
            ("registered", .bool(record != nil)),
            ("revoked", .bool(record?.revokedAt != nil)),
            ("state", .string(liveness?.state ?? "unseen")),
            ("sessions", .int(Int64(liveness?.openSessions ?? 0))),
            ("last_heartbeat", .date(lastHeartbeat)),
            ("silence_ms", liveness.map { .double(milliseconds(Double($0.silenceNanoseconds) / 1e9)) } ?? .null),
            ("lease", .object([
                ("held", .bool(holdsLease)),
                ("revoked", .bool(liveness?.leaseWithheld ?? false)),
                ("duration_ms", holdsLease ? .int(leaseMilliseconds.map { Int64($0) }) : .null),
                ("epoch", .epoch(liveness?.leaseEpoch)),
            ])),
            ("software_version", .string(liveness?.identity.softwareVersion)),
        ]
        if let status {
            members.append(("gpu", .object([
                ("count", .int(Int64(status.gpuCount))),
                ("healthy", .int(Int64(status.gpuHealthyCount))),
                ("probe_available", .bool(status.flags.contains(.gpuProbeAvailable))),
                ("errors", .bool(status.flags.contains(.gpuErrors))),
                ("max_temperature_c", byte(status.gpuMaxTemperatureCelsius)),
                ("max_utilization_pct", byte(status.gpuMaxUtilizationPercent)),
            ])))
            members.append(("volume", .object([
                ("mounted", .bool(status.flags.contains(.volumeMounted))),
                ("id_matches", .bool(status.flags.contains(.volumeIDMatches))),
                ("writable", .bool(status.flags.contains(.volumeWritable))),
                ("free_mib", .int(Int64(status.volumeFreeMebibytes))),
            ])))
            members.append(("fenced", .bool(status.flags.contains(.fenced))))
            members.append(("fence", .string(status.fenceName)))
            members.append(("fence_command_failed", .bool(status.flags.contains(.fenceCommandFailed))))
        } else {
            members.append(("gpu", .null))
            members.append(("volume", .null))
            members.append(("fenced", .null))
            members.append(("fence", .null))
            members.append(("fence_command_failed", .null))
        }
        return .object(members)
    }

    static func apiKey(_ key: APIKeyRecord) -> JSONValue {
        .object([
            ("id", .string(key.id)),
            ("name", .string(key.name)),
            ("scope", .string(key.scope.rawValue)),
            ("created_at", .date(key.createdAt)),
            ("revoked_at", .date(key.revokedAt)),
            ("last_used_at", .date(key.lastUsedAt)),
        ])
    }

    private static func byte(_ value: UInt8) -> JSONValue {
        AgentStatus.known(value).map { .int(Int64($0)) } ?? .null
    }

    private static func milliseconds(_ seconds: Double) -> Double {
        (seconds * 1000 * 10).rounded() / 10
    }
}

extension AgentStatus {
    /// What the agent did to its workload on lease loss: `none`, `frozen`, or `final` (killed: a
    /// newer epoch exists). The API's `fence` and the status page say it alike.
    var fenceName: String { flags.contains(.fenceFinal) ? "final" : flags.contains(.fenced) ? "frozen" : "none" }

    /// A one-byte reading, or nil where the agent could not read it (`unknownByte`).
    static func known(_ value: UInt8) -> Int? { value == unknownByte ? nil : Int(value) }
}
