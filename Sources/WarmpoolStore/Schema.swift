import GRDB

/// The versioned schema. Migrations are append-only: a shipped migration is never edited, a
/// change is a new migration, so every database reaches the same shape whatever its age.
enum Schema {
    static var migrator: DatabaseMigrator {
        var migrator = DatabaseMigrator()
        migrator.registerMigration("v1-initial", migrate: createInitialTables)
        migrator.registerMigration("v2-incarnations", migrate: addIncarnations)
        migrator.registerMigration("v3-api-key-scopes", migrate: addAPIKeyScopes)
        migrator.registerMigration("v4-recovery-points", migrate: addRecoveryPoints)
        migrator.registerMigration("v5-cpu-standby", migrate: addCPUStandby)
        return migrator
    }

    /// A pool protected by a CPU VM (its name, its agent's id, its address), or running on one.
    private static func addCPUStandby(_ db: Database) throws {
        try db.alter(table: "pool") { t in
            t.add(column: "cpu_standby_name", .text)
            t.add(column: "cpu_standby_instance_id", .integer)
            t.add(column: "cpu_standby_ssh_host", .text)
            t.add(column: "cpu_primary_name", .text)
        }
    }

    /// Each failover records the work it lost (the old primary's checkpoint age), and a move to
    /// another host the snapshot it restored and how old it was; older rows have none.
    private static func addRecoveryPoints(_ db: Database) throws {
        try db.alter(table: "failover") { t in
            t.add(column: "work_lost_seconds", .double)
            t.add(column: "last_checkpoint_at", .datetime)
            t.add(column: "restored_snapshot", .text)
            t.add(column: "recovery_point_seconds", .double)
        }
    }

    /// Keys made before scopes could do everything: they stay `admin`.
    private static func addAPIKeyScopes(_ db: Database) throws {
        try db.alter(table: "api_key") { t in t.add(column: "scope", .text).notNull().defaults(to: "admin") }
    }

    /// A machine id provisioned again after a cleanup is a new pool: its rows carry which one,
    /// and the count outlives the pool's row (deleted by cleanup), so no number is used twice.
    private static func addIncarnations(_ db: Database) throws {
        try db.alter(table: "pool") { t in t.add(column: "incarnation", .integer).notNull().defaults(to: 1) }
        try db.alter(table: "failover") { t in t.add(column: "incarnation", .integer).notNull().defaults(to: 1) }
        try db.create(table: "pool_incarnation") { t in
            t.primaryKey("machine_id", .integer)
            t.column("last", .integer).notNull()
        }
    }

    private static func createInitialTables(_ db: Database) throws {
        try db.create(table: "pool") { t in
            t.primaryKey("machine_id", .integer)
            t.column("host_machine_id", .integer)
            t.column("strategy", .text).notNull()
                .check { ["gpu_warm_pool", "cpu_standby", "disabled"].contains($0) }
            t.column("gpu_preferences", .text).notNull()  // JSON array
            t.column("volume_size_gb", .integer).notNull()
            t.column("state", .text).notNull()
            t.column("volume_id", .integer)
            t.column("primary_instance_id", .integer)
            t.column("standby_instance_id", .integer)
            t.column("standby_state", .text).notNull()
            t.column("primary_ssh_host", .text)
            t.column("primary_ssh_port", .integer)
            t.column("last_health_check", .datetime)
            t.column("failover_count", .integer).notNull()
            t.column("last_failover_at", .datetime)
            t.column("error_message", .text)
            t.column("epoch", .integer).notNull()
            t.column("engine_state", .blob)  // the engine's state machine, JSON
            t.column("created_at", .datetime).notNull()
            t.column("updated_at", .datetime).notNull()
        }
        try db.create(table: "failover") { t in
            t.primaryKey("id", .text)
            t.column("machine_id", .integer).notNull().indexed()
            t.column("reason", .text).notNull()
            t.column("result", .text).notNull()
            t.column("old_primary_instance_id", .integer)
            t.column("new_primary_instance_id", .integer)
            t.column("epoch", .integer).notNull()
            t.column("started_at", .datetime).notNull()
            t.column("finished_at", .datetime)
            t.column("error_message", .text)
        }
        try db.create(table: "timeline_step") { t in
            t.column("failover_id", .text).notNull().references("failover", onDelete: .cascade)
            t.column("sequence", .integer).notNull()
            t.column("step", .text).notNull()
            t.column("at", .datetime).notNull()
            t.column("detail", .text)
            t.primaryKey(["failover_id", "sequence"])
        }
        try db.create(table: "pool_event") { t in
            t.autoIncrementedPrimaryKey("id")
            t.column("machine_id", .integer).indexed()
            t.column("agent_id", .text)
            t.column("kind", .text).notNull()
            t.column("at", .datetime).notNull()
            t.column("detail", .text)
        }
        try db.create(table: "agent") { t in
            t.primaryKey("agent_id", .text)
            t.column("secret_hex", .text).notNull()
            t.column("machine_id", .integer)
            t.column("instance_id", .integer)
            t.column("role", .text)
            t.column("created_at", .datetime).notNull()
            t.column("revoked_at", .datetime)
        }
        try db.create(table: "host_key_pin") { t in
            t.primaryKey("instance_id", .text)
            t.column("key", .text).notNull()
            t.column("pinned_at", .datetime).notNull()
        }
        try db.create(table: "outbox") { t in
            t.primaryKey("id", .text)
            t.column("kind", .text).notNull()
            t.column("machine_id", .integer)
            t.column("payload", .text).notNull()
            t.column("created_at", .datetime).notNull()
            t.column("attempts", .integer).notNull()
            t.column("next_attempt_at", .datetime).notNull()
            t.column("delivered_at", .datetime)
            t.column("last_error", .text)
        }
        try db.create(index: "outbox_due", on: "outbox", columns: ["delivered_at", "next_attempt_at"])
        try db.create(table: "api_key") { t in
            t.primaryKey("id", .text)
            t.column("name", .text).notNull()
            t.column("hash_hex", .text).notNull()
            t.column("created_at", .datetime).notNull()
            t.column("revoked_at", .datetime)
            t.column("last_used_at", .datetime)
        }
    }
}
