import ArgumentParser
import Foundation
import WarmpoolJSON

@main
struct WarmpoolCtl: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "warmpoolctl",
        abstract: "Operate Warmpool through the controller's REST API.",
        discussion: "The controller URL and API key come from --url and --api-key, or WARMPOOL_URL and WARMPOOL_API_KEY (or WARMPOOL_API_KEY_FILE).",
        subcommands: [
            Status.self, Hosts.self, Provision.self, Enable.self, Disable.self, Failover.self, Repair.self, Cleanup.self, Events.self,
            Timeline.self, Agents.self, Keys.self, Settings.self, Breaker.self, Snapshots.self, Snapshot.self, Restore.self,
        ])

    /// Errors are one line on stderr and a non-zero exit, whatever the command.
    static func run(_ body: () async throws -> Void) async throws {
        do {
            try await body()
        } catch let failure as APIClient.Failure {
            FileHandle.standardError.write(Data("warmpoolctl: \(failure.description)\n".utf8))
            throw ExitCode(1)
        }
    }
}

struct Connection: ParsableArguments {
    @Option(help: "The controller's API, e.g. http://127.0.0.1:8080. Env: WARMPOOL_URL.")
    var url: String?

    @Option(help: "An API key. Env: WARMPOOL_API_KEY, or a file named by WARMPOOL_API_KEY_FILE.")
    var apiKey: String?

    @Option(help: "Seconds to wait for an answer.")
    var timeout: Double = 60

    @Flag(help: "Print the API's JSON instead of a table.")
    var json = false

    func client() throws -> APIClient {
        let environment = ProcessInfo.processInfo.environment
        let text = url ?? environment["WARMPOOL_URL"] ?? "http://127.0.0.1:8080"
        guard let base = URL(string: text), base.scheme == "http" || base.scheme == "https", base.host != nil else {
            throw ValidationError("--url must be an http(s) URL, got \(text)")
        }
        var key = apiKey ?? environment["WARMPOOL_API_KEY"]
        if key == nil, let file = environment["WARMPOOL_API_KEY_FILE"] {
            guard let contents = try? String(contentsOfFile: file, encoding: .utf8) else {
                throw ValidationError("cannot read WARMPOOL_API_KEY_FILE \(file)")
            }
            key = contents.trimmingCharacters(in: .whitespacesAndNewlines)
        }
        guard let key, !key.isEmpty else {
            throw ValidationError("no API key: pass --api-key or set WARMPOOL_API_KEY (the first key is in admin-api-key beside the controller's database)")
        }
        return APIClient(baseURL: base, apiKey: key, timeout: timeout)
    }
}

private let warmpool = "api/v1/warmpool"

struct Status: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Pools with state, protection, primary, standby, volume, last heartbeat, epoch and failovers.",
        discussion: "With --check, exits 2 when any enabled pool is not protected (for cron and monitoring), naming each and why.")
    @OptionGroup var connection: Connection
    @Argument(help: "One machine id; all pools when omitted.") var machineID: Int64?
    @Flag(help: "Exit 2 when an enabled pool is unprotected; print only the unprotected pools' conditions.") var check = false

    func run() async throws {
        try await WarmpoolCtl.run {
            let client = try connection.client()
            let pools: [JSONValue]
            let answer: JSONValue
            if let machineID {
                answer = try await client.get("\(warmpool)/status/\(machineID)")
                pools = [answer.objectOrEmpty]
            } else {
                answer = try await client.get("\(warmpool)/pools")
                pools = answer["pools"]?.objects ?? []
            }
            if check { return try Self.check(pools) }
            if connection.json { return Output.json(answer) }
            Output.table(
                ["MACHINE", "STATE", "PROTECTED", "HOST", "PRIMARY", "STANDBY", "VOLUME", "LAST HEARTBEAT", "EPOCH", "FAILOVERS", "ERROR"],
                pools.map { pool in
                    [
                        Output.cell(pool["machine_id"]), Output.cell(pool["state"]), Self.protection(pool), Output.cell(pool["host_machine_id"]),
                        Output.cell(pool["primary_gpu_id"]),
                        "\(Output.cell(pool["standby_gpu_id"])) (\(Output.cell(pool["standby_state"])))",
                        Output.cell(pool["volume_id"]), Output.ago(pool["last_health_check"]), Output.cell(pool["epoch"]),
                        Output.cell(pool["failover_count"]), Output.cell(pool["error_message"]),
                    ]
                })
        }
    }
}

extension Status {
    /// `yes`, or `no: Reason` with the first condition that does not hold.
    static func protection(_ pool: JSONValue) -> String {
        if pool["protected"]?.boolValue == true { return "yes" }
        let failing = (pool["conditions"]?.objects ?? []).first { Self.failing($0) }
        return "no" + (failing.map { ": \(Output.cell($0["type"]))/\(Output.cell($0["reason"]))" } ?? "")
    }

    /// A condition that makes the pool unprotected: not `ok` and bearing on protection.
    static func failing(_ condition: JSONValue) -> Bool {
        let ok = condition["ok"]?.boolValue ?? (condition["status"]?.stringValue == "True")
        return !ok && condition["affects_protection"]?.boolValue != false
    }

    /// One line per unprotected enabled pool, each failing condition under it, and a degraded
    /// pool's rung and next retry; exit 2 if any.
    static func check(_ pools: [JSONValue]) throws {
        let enabled = pools.filter { $0["state"]?.stringValue != "disabled" }
        let unprotected = enabled.filter { $0["protected"]?.boolValue != true }
        for pool in unprotected {
            print("machine \(Output.cell(pool["machine_id"])): NOT protected (state \(Output.cell(pool["state"])))")
            for condition in (pool["conditions"]?.objects ?? []) where Self.failing(condition) {
                print("  \(Output.cell(condition["type"])) \(Output.cell(condition["reason"])): \(Output.cell(condition["message"]))")
            }
            if let remediation = pool["remediation"], remediation != .null {
                print("  remediation: \(Output.cell(remediation["rung"])), next retry \(Output.cell(remediation["next_retry_at"])) (warmpoolctl repair \(Output.cell(pool["machine_id"])) tries now)")
            }
        }
        guard unprotected.isEmpty else { throw ExitCode(2) }
        print("\(enabled.count) enabled pool(s), all protected")
    }
}

struct Hosts: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Physical hosts that can carry a warm pool.")
    @OptionGroup var connection: Connection
    @Option(help: "GPU model, underscores for spaces, e.g. RTX_4090.") var gpuName: String?
    @Option(help: "At least this many GPUs on the host.") var minGpus: Int = 2
    @Option(help: "At most this price per GPU-hour, in $.") var maxPrice: Double?
    @Flag(help: "Include unverified hosts.") var includeUnverified = false

    func run() async throws {
        try await WarmpoolCtl.run {
            var query = ["min_gpus": "\(minGpus)", "verified": includeUnverified ? "false" : "true"]
            if let gpuName { query["gpu_name"] = gpuName }
            if let maxPrice { query["max_price"] = "\(maxPrice)" }
            let answer = try await connection.client().get("\(warmpool)/hosts", query: query)
            if connection.json { return Output.json(answer) }
            let hosts = answer["hosts"]?.objects ?? []
            Output.table(
                ["HOST", "GPU", "TOTAL", "FREE", "$/H", "RELIABILITY", "WHERE", "WARM POOL"],
                hosts.map { host in
                    [
                        Output.cell(host["machine_id"]), Output.cell(host["gpu_name"]), Output.cell(host["total_gpus"]),
                        Output.cell(host["available_gpus"]), Output.cell(host["avg_price_per_hour"]),
                        Output.cell(host["reliability"]), Output.cell(host["geolocation"]), Output.cell(host["can_create_warm_pool"]),
                    ]
                })
        }
    }
}

struct Provision: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Create the volume, the primary and a stopped standby on one host.")
    @OptionGroup var connection: Connection
    @Option(help: "The machine id the pool is known by.") var machineID: Int64
    @Option(help: "The provider's physical machine to put it on.") var hostMachineID: Int64
    @Option(help: "GPU model, e.g. RTX_4090.") var gpuName: String?
    @Option(help: "Container image (default: a PyTorch CUDA runtime).") var image: String?
    @Option(help: "Instance disk in GB (default 50).") var diskSize: Int?
    @Option(help: "Shared volume in GB (default 100).") var volumeSize: Int?

    func run() async throws {
        try await WarmpoolCtl.run {
            var body: [(String, JSONValue)] = [("machine_id", .int(machineID)), ("host_machine_id", .int(hostMachineID))]
            if let gpuName { body.append(("gpu_name", .string(gpuName))) }
            if let image { body.append(("image", .string(image))) }
            if let diskSize { body.append(("disk_size", .int(diskSize))) }
            if let volumeSize { body.append(("volume_size", .int(volumeSize))) }
            let answer = try await connection.client().send("POST", "\(warmpool)/provision", body: .object(body))
            if connection.json { return Output.json(answer) }
            let object = answer.objectOrEmpty
            print(Output.cell(object["message"]))
            if let status = object["status"], status.isObject {
                print("state \(Output.cell(status["state"])), primary \(Output.cell(status["primary_gpu_id"])), standby \(Output.cell(status["standby_gpu_id"])), volume \(Output.cell(status["volume_id"]))")
            }
        }
    }
}

/// The routes that take a machine id, act, and answer a message.
protocol MachineAction: AsyncParsableCommand {
    var connection: Connection { get }
    var machineID: Int64 { get }
    var method: String { get }
    var path: String { get }
}

extension MachineAction {
    func run() async throws {
        try await WarmpoolCtl.run {
            let answer = try await connection.client().send(method, "\(warmpool)/\(path)/\(machineID)", body: method == "DELETE" ? nil : [:])
            if connection.json { return Output.json(answer) }
            let object = answer.objectOrEmpty
            print(Output.cell(object["message"]))
            if let seconds = object["recovery_time_seconds"]?.numberText {
                print("recovered in \(seconds) s; new primary \(Output.cell(object["new_primary_gpu_id"]))")
            }
        }
    }
}

struct Enable: MachineAction {
    static let configuration = CommandConfiguration(abstract: "Turn the GPU warm pool strategy on for a machine.")
    @OptionGroup var connection: Connection
    @Argument var machineID: Int64
    var method: String { "POST" }
    var path: String { "enable" }
}

struct Disable: MachineAction {
    static let configuration = CommandConfiguration(abstract: "Turn it off; the machine falls back to CPU standby.")
    @OptionGroup var connection: Connection
    @Argument var machineID: Int64
    var method: String { "POST" }
    var path: String { "disable" }
}

struct Repair: MachineAction {
    static let configuration = CommandConfiguration(
        abstract: "A degraded pool tries its next rung now: a new standby, or (no primary) a new one on a free GPU of the host.")
    @OptionGroup var connection: Connection
    @Argument var machineID: Int64
    var method: String { "POST" }
    var path: String { "repair" }
}

struct Failover: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Failover drills.", subcommands: [Test.self])

    struct Test: MachineAction {
        static let configuration = CommandConfiguration(abstract: "Run a real failover on purpose: stop the primary, start the standby.")
        @OptionGroup var connection: Connection
        @Argument var machineID: Int64
        var method: String { "POST" }
        var path: String { "failover/test" }
    }
}

struct Cleanup: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Destroy the primary, the standby and the shared volume.")
    @OptionGroup var connection: Connection
    @Argument var machineID: Int64
    @Flag(help: "Confirm: the volume and everything on it is destroyed.") var yes = false

    func run() async throws {
        guard yes else { throw ValidationError("cleanup destroys the volume and its data: add --yes to confirm") }
        try await WarmpoolCtl.run {
            let answer = try await connection.client().send("DELETE", "\(warmpool)/cleanup/\(machineID)", body: nil)
            Output.field("message", of: answer, json: connection.json)
        }
    }
}

struct Events: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "A pool's recent events: agents connecting, suspected, failed, fenced, thawed, fenced for good.")
    @OptionGroup var connection: Connection
    @Argument var machineID: Int64
    @Option(help: "How many, newest last.") var limit: Int = 50

    func run() async throws {
        try await WarmpoolCtl.run {
            let answer = try await connection.client().get("\(warmpool)/events/\(machineID)", query: ["limit": "\(limit)"])
            if connection.json { return Output.json(answer) }
            let events = answer["events"]?.objects ?? []
            Output.table(
                ["AT", "EVENT", "AGENT", "DETAIL"],
                events.map { [Output.cell($0["at"]), Output.cell($0["kind"]), Output.cell($0["agent_id"]), Output.cell($0["detail"])] })
        }
    }
}

struct Timeline: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "A pool's failovers, each step with its time.")
    @OptionGroup var connection: Connection
    @Argument var machineID: Int64
    @Option(help: "How many failovers, newest first.") var limit: Int = 5

    func run() async throws {
        try await WarmpoolCtl.run {
            let answer = try await connection.client().get("\(warmpool)/history/\(machineID)", query: ["limit": "\(limit)"])
            if connection.json { return Output.json(answer) }
            let failovers = answer["failovers"]?.objects ?? []
            if failovers.isEmpty { print("no failovers for machine \(machineID)") }
            for failover in failovers {
                print("\(Output.cell(failover["id"])): \(Output.cell(failover["result"])), \(Output.cell(failover["reason"])), epoch \(Output.cell(failover["epoch"])), primary \(Output.cell(failover["old_primary_gpu_id"])) -> \(Output.cell(failover["new_primary_gpu_id"])), \(Output.cell(failover["duration_seconds"])) s")
                let steps = failover["timeline"]?.objects ?? []
                Output.table(
                    ["  +MS", "STEP", "TOOK MS", "DETAIL"],
                    steps.map { ["  +" + Output.cell($0["since_start_ms"]), Output.cell($0["step"]), Output.cell($0["duration_ms"]), Output.cell($0["detail"])] })
                print("")
            }
        }
    }
}

struct Breaker: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "The mass-failure breaker: whether it holds failovers, and releasing it.",
        subcommands: [Show.self, Release.self], defaultSubcommand: Show.self)

    struct Show: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Whether many primaries failed at once, and the failovers held.")
        @OptionGroup var connection: Connection

        func run() async throws {
            try await WarmpoolCtl.run {
                let answer = try await connection.client().get("\(warmpool)/breaker")
                if connection.json { return Output.json(answer) }
                guard answer["tripped"] == .bool(true) else { return print("breaker closed: failures go to the engine") }
                print("mass failure suspected since \(Output.ago(answer["since"])): failovers held until the provider reports the instance not running")
                Output.table(["MACHINE", "INSTANCE", "FAILED"], (answer["held"]?.objects ?? []).map { held in
                    [Output.cell(held["machine_id"]), Output.cell(held["instance_id"]), Output.ago(held["failed_at"])]
                })
            }
        }
    }

    struct Release: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "The held failures are real: fail them over now.")
        @OptionGroup var connection: Connection

        func run() async throws {
            try await WarmpoolCtl.run {
                let answer = try await connection.client().send("POST", "\(warmpool)/breaker/release", body: .object([]))
                if connection.json { return Output.json(answer) }
                print(Output.cell(answer["message"]))
            }
        }
    }
}

struct Agents: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Agents and their liveness: last heartbeat, lease, epoch, GPU and volume.")
    @OptionGroup var connection: Connection

    func run() async throws {
        try await WarmpoolCtl.run {
            let answer = try await connection.client().get("\(warmpool)/agents")
            if connection.json { return Output.json(answer) }
            let agents = answer["agents"]?.objects ?? []
            Output.table(
                ["AGENT", "MACHINE", "INSTANCE", "ROLE", "STATE", "SESSIONS", "LAST HEARTBEAT", "LEASE", "EPOCH", "FENCE", "GPU", "VOLUME"],
                agents.map { agent in
                    let lease = agent["lease"]?.objectOrEmpty ?? .object([])
                    let gpu = agent["gpu"]?.asObject
                    let volume = agent["volume"]?.asObject
                    let gpuText = gpu.map { "\(Output.cell($0["healthy"]))/\(Output.cell($0["count"])) ok" } ?? "-"
                    let volumeText = volume.map { v in
                        (v["mounted"] == .bool(true) && v["writable"] == .bool(true) && v["id_matches"] == .bool(true))
                            ? "ok, \(Output.cell(v["free_mib"])) MiB free" : "PROBLEM"
                    } ?? "-"
                    return [
                        Output.cell(agent["agent_id"]), Output.cell(agent["machine_id"]), Output.cell(agent["instance_id"]),
                        Output.cell(agent["role"]), Output.cell(agent["state"]), Output.cell(agent["sessions"]),
                        Output.ago(agent["last_heartbeat"]), (lease["held"] == .bool(true)) ? "held" : "none",
                        Output.cell(lease["epoch"]),
                        (agent["fence"]?.stringValue ?? "-") + (agent["fence_command_failed"] == .bool(true) ? ", command failed" : ""),
                        gpuText, volumeText,
                    ]
                })
        }
    }
}

struct Keys: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "API keys and agent keys.",
        subcommands: [List.self, Create.self, Revoke.self, AddAgent.self, RevokeAgent.self])

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List API keys (never their secrets).")
        @OptionGroup var connection: Connection
        func run() async throws {
            try await WarmpoolCtl.run {
                let answer = try await connection.client().get("api/v1/keys")
                if connection.json { return Output.json(answer) }
                let keys = answer["keys"]?.objects ?? []
                Output.table(
                    ["ID", "NAME", "SCOPE", "CREATED", "LAST USED", "REVOKED"],
                    keys.map { [Output.cell($0["id"]), Output.cell($0["name"]), Output.cell($0["scope"]), Output.cell($0["created_at"]),
                                Output.cell($0["last_used_at"]), Output.cell($0["revoked_at"])] })
            }
        }
    }

    struct Create: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Create an API key and print it once.")
        @OptionGroup var connection: Connection
        @Option(help: "Who or what uses it.") var name: String
        @Option(help: "What it may do: metrics, read (the default), operate (provision, enable, disable, failover test, repair) or admin (cleanup, settings, agents, keys).")
        var scope = "read"
        func run() async throws {
            try await WarmpoolCtl.run {
                let answer = try await connection.client().send("POST", "api/v1/keys", body: ["name": .string(name), "scope": .string(scope)])
                Output.field("key", of: answer, json: connection.json)
            }
        }
    }

    struct Revoke: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Revoke an API key by its id.")
        @OptionGroup var connection: Connection
        @Argument var id: String
        func run() async throws {
            try await WarmpoolCtl.run {
                let answer = try await connection.client().send("DELETE", "api/v1/keys/\(id)", body: nil)
                Output.field("message", of: answer, json: connection.json)
            }
        }
    }

    struct AddAgent: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "add-agent", abstract: "Register an agent and print its secret once.")
        @OptionGroup var connection: Connection
        @Option(help: "1-64 characters of A-Z a-z 0-9 . _ -") var agentId: String
        @Option var machineId: Int64?
        @Option var instanceId: Int64?
        @Option(help: "primary or standby") var role: String?
        func run() async throws {
            try await WarmpoolCtl.run {
                var body: [(String, JSONValue)] = [("agent_id", .string(agentId))]
                if let machineId { body.append(("machine_id", .int(machineId))) }
                if let instanceId { body.append(("instance_id", .int(instanceId))) }
                if let role { body.append(("role", .string(role))) }
                let answer = try await connection.client().send("POST", "\(warmpool)/agents", body: .object(body))
                Output.field("secret", of: answer, json: connection.json)
            }
        }
    }

    struct RevokeAgent: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "revoke-agent", abstract: "Revoke an agent's key.")
        @OptionGroup var connection: Connection
        @Argument var agentID: String
        func run() async throws {
            try await WarmpoolCtl.run {
                let answer = try await connection.client().send("DELETE", "\(warmpool)/agents/\(agentID)", body: nil)
                Output.field("message", of: answer, json: connection.json)
            }
        }
    }
}

struct Settings: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Show or change a machine's failover settings.")
    @OptionGroup var connection: Connection
    @Argument var machineID: Int64
    @Option(help: "gpu_warm_pool, cpu_standby or disabled.") var strategy: String?
    @Option(help: "Preferred GPU models, in order (repeatable).") var gpuPreference: [String] = []
    @Option(help: "Shared volume size in GB.") var volumeSizeGb: Int?

    func run() async throws {
        try await WarmpoolCtl.run {
            let client = try connection.client()
            var body: [(String, JSONValue)] = []
            if let strategy { body.append(("strategy", .string(strategy))) }
            if !gpuPreference.isEmpty { body.append(("gpu_preferences", .array(gpuPreference.map { .string($0) }))) }
            if let volumeSizeGb { body.append(("volume_size_gb", .int(volumeSizeGb))) }
            let answer = body.isEmpty
                ? try await client.get("\(warmpool)/settings/\(machineID)")
                : try await client.send("PUT", "\(warmpool)/settings/\(machineID)", body: .object(body))
            if connection.json { return Output.json(answer) }
            let settings = answer.objectOrEmpty
            let preferences = settings["gpu_preferences"]?.strings?.joined(separator: ", ") ?? ""
            print("machine \(Output.cell(settings["machine_id"])): strategy \(Output.cell(settings["strategy"])), GPU preferences [\(preferences)], volume \(Output.cell(settings["volume_size_gb"])) GB")
        }
    }
}
