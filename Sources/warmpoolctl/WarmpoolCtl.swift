import ArgumentParser
import Foundation
import WarmpoolJSON
import WarmpoolModel

@main
struct WarmpoolCtl: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "warmpoolctl",
        abstract: "Operate Warmpool through the controller's REST API.",
        discussion: "The controller URL and API key come from --url and --api-key, or WARMPOOL_URL and WARMPOOL_API_KEY (or WARMPOOL_API_KEY_FILE).",
        version: WarmpoolVersion.current,
        subcommands: [
            Status.self, Hosts.self, Provision.self, Enable.self, Disable.self, Failover.self, Repair.self, Cleanup.self, Events.self,
            History.self, Agents.self, Keys.self, Settings.self, Breaker.self, Snapshots.self, Snapshot.self, Restore.self,
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

    @Option(help: ArgumentHelp(
        "Seconds a request may take in all, answer included; then it fails with \"no answer within N s\".",
        discussion: "Default: 60; 900 for provision, failover test, repair, snapshot and restore, which answer only when done."))
    var timeout: Double?

    @Flag(help: "Print the API's JSON instead of a table.")
    var json = false

    /// For the commands whose answer comes only when their work is done: a provisioning or a
    /// restore takes minutes.
    static let longOperationTimeout: Double = 900

    /// `defaultTimeout`: the deadline when --timeout is not given.
    func client(defaultTimeout: Double = 60) throws -> APIClient {
        let timeout = timeout ?? defaultTimeout
        guard timeout > 0, timeout.isFinite else { throw ValidationError("--timeout must be a positive number of seconds, got \(timeout)") }
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
        discussion: """
            With --check, exits 2 when any enabled pool is not protected (for cron and monitoring), naming each and why. \
            With --watch, redraws every --interval seconds until Ctrl-C: in place on a terminal, one block after another \
            (each headed by the time, no escape codes) into a file or a pipe.
            """,
        // The API lists them at GET /warmpool/pools.
        aliases: ["pools"])
    @OptionGroup var connection: Connection
    @Argument(help: "One machine id; all pools when omitted.") var machineID: Int64?
    @Flag(help: "Exit 2 when an enabled pool is unprotected; print only the unprotected pools' conditions.") var check = false
    @Flag(help: "Redraw every --interval seconds until Ctrl-C.") var watch = false
    @Option(help: "Seconds between redraws with --watch.") var interval: Double = 2

    func validate() throws {
        if watch && check { throw ValidationError("--check answers once, with its exit status: it does not go with --watch") }
    }

    func run() async throws {
        try await WarmpoolCtl.run {
            let client = try connection.client()
            guard watch else { return try await show(client) }
            let every = try Watch.interval(interval)
            let terminal = Watch.standardOutputIsTerminal
            let command = "warmpoolctl status" + (machineID.map { " \($0)" } ?? "")
            var first = true
            try await Watch.forever(every: every) {
                let now = Date().formatted(Date.ISO8601FormatStyle(includingFractionalSeconds: false))
                // Home and erase on a terminal; elsewhere a blank line between blocks.
                if terminal { print("\u{1B}[H\u{1B}[2J", terminator: "") } else if !first { print("") }
                first = false
                print("\(command), every \(APIClient.seconds(interval)) s: \(now)" + (terminal ? " (Ctrl-C to stop)" : ""))
                defer { Output.flush() }
                try await show(client)
            }
        }
    }

    /// The table (or the JSON) once.
    private func show(_ client: APIClient) async throws {
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
    static let configuration = CommandConfiguration(
        abstract: "Create the volume, the primary and a stopped standby on one host.",
        discussion: "The controller answers when the pool is ready (minutes); meanwhile each step is printed on stderr as it is recorded (not with --json).")
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
            let client = try connection.client(defaultTimeout: Connection.longOperationTimeout)
            let progress = connection.json ? nil : try await EventProgress(client: client, machineID: machineID)
            let request = JSONValue.object(body)
            let answer = try await Watch.withProgress(progress) { try await client.send("POST", "\(warmpool)/provision", body: request) }
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
    /// Seconds the request may take unless --timeout says otherwise.
    var defaultTimeout: Double { get }
}

extension MachineAction {
    var defaultTimeout: Double { 60 }

    func run() async throws {
        try await WarmpoolCtl.run {
            let answer = try await connection.client(defaultTimeout: defaultTimeout)
                .send(method, "\(warmpool)/\(path)/\(machineID)", body: method == "DELETE" ? nil : [:])
            Self.show(answer, json: connection.json)
        }
    }

    /// The answer's message, and a failover's recovery time.
    static func show(_ answer: JSONValue, json: Bool) {
        if json { return Output.json(answer) }
        let object = answer.objectOrEmpty
        print(Output.cell(object["message"]))
        if let seconds = object["recovery_time_seconds"]?.numberText {
            print("recovered in \(seconds) s; new primary \(Output.cell(object["new_primary_gpu_id"]))")
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
    var defaultTimeout: Double { Connection.longOperationTimeout }
}

struct Failover: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Failover drills.", subcommands: [Test.self])

    struct Test: MachineAction {
        static let configuration = CommandConfiguration(
            abstract: "Run a real failover on purpose: stop the primary, start the standby.",
            discussion: "The controller answers when the failover is done; meanwhile its timeline is printed on stderr step by step (not with --json).")
        @OptionGroup var connection: Connection
        @Argument var machineID: Int64
        var method: String { "POST" }
        var path: String { "failover/test" }

        func run() async throws {
            try await WarmpoolCtl.run {
                let client = try connection.client(defaultTimeout: Connection.longOperationTimeout)
                let progress = connection.json ? nil : try await TimelineProgress(client: client, machineID: machineID)
                let answer = try await Watch.withProgress(progress) { [machineID] in
                    try await client.send("POST", "\(warmpool)/failover/test/\(machineID)", body: [:])
                }
                Self.show(answer, json: connection.json)
            }
        }
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
    static let configuration = CommandConfiguration(
        abstract: "A pool's recent events: agents connecting, suspected, failed, fenced, thawed, fenced for good; provisioning steps.",
        discussion: """
            Oldest first, as the API lists them. With --follow, prints each new event as it is recorded (one line each; \
            one JSON object per line with --json) until Ctrl-C.
            """)
    @OptionGroup var connection: Connection
    @Argument var machineID: Int64
    @Option(help: "How many, newest last.") var limit: Int = 50
    @Flag(help: "Keep printing new events until Ctrl-C.") var follow = false
    @Option(help: "Seconds between polls with --follow.") var interval: Double = 1

    func run() async throws {
        try await WarmpoolCtl.run {
            let client = try connection.client()
            guard follow else {
                let answer = try await client.get("\(warmpool)/events/\(machineID)", query: ["limit": "\(limit)"])
                if connection.json { return Output.json(answer) }
                let events = answer["events"]?.objects ?? []
                return Output.table(
                    ["AT", "EVENT", "AGENT", "DETAIL"],
                    events.map { [Output.cell($0["at"]), Output.cell($0["kind"]), Output.cell($0["agent_id"]), Output.cell($0["detail"])] })
            }
            let every = try Watch.interval(interval)
            // Each poll reads a window wide enough that a second's events cannot overrun it; the
            // first shows only the newest --limit of it.
            let window = max(limit, EventProgress.limit)
            let first = try await EventProgress.events(client, machineID)
            var newEvents = NewEvents(limit: window, baseline: first)
            show(first.suffix(limit))
            try await Watch.forever(every: every) {
                let (events, mayHaveMissed) = newEvents.take(try await EventProgress.events(client, machineID))
                if mayHaveMissed { Output.note("warmpoolctl: more than \(window) events since the last poll: some are not shown") }
                show(events)
            }
        }
    }

    private func show(_ events: some Collection<JSONValue>) {
        for event in events {
            if connection.json { Output.jsonLine(event) } else { print(Output.eventLine(event)) }
        }
        Output.flush()
    }
}

/// The API's `history`; `timeline` was its first name here and stays an alias.
struct History: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "history",
        abstract: "A pool's failovers, newest first as the API lists them, each with its steps and their times.",
        discussion: """
            With --follow, then prints each failover as it begins, each step as it is recorded and the result when it \
            has one, for every failover that follows, until Ctrl-C (one JSON object per line with --json).
            """,
        aliases: ["timeline"])
    @OptionGroup var connection: Connection
    @Argument var machineID: Int64
    @Option(help: "How many failovers, newest first.") var limit: Int = 5
    @Flag(help: "Keep printing failovers' steps as they are recorded until Ctrl-C.") var follow = false
    @Option(help: "Seconds between polls with --follow.") var interval: Double = 1

    func run() async throws {
        try await WarmpoolCtl.run {
            let client = try connection.client()
            let answer = try await client.get("\(warmpool)/history/\(machineID)", query: ["limit": "\(limit)"])
            let failovers = answer["failovers"]?.objects ?? []
            if connection.json && follow {
                failovers.reversed().forEach { Output.jsonLine(Output.historyJSON(.began($0))) }
            } else if connection.json {
                Output.json(answer)
            } else {
                Self.show(failovers, machineID: machineID)
            }
            guard follow else { return }
            let every = try Watch.interval(interval)
            var history = FollowedHistory(baseline: failovers)
            Output.flush()
            try await Watch.forever(every: every) {
                let answer = try await client.get("\(warmpool)/history/\(machineID)", query: ["limit": "\(limit)"])
                for change in history.take(answer["failovers"]?.objects ?? []) {
                    if connection.json { Output.jsonLine(Output.historyJSON(change)) } else { print(Output.historyLine(change)) }
                }
                Output.flush()
            }
        }
    }

    static func show(_ failovers: [JSONValue], machineID: Int64) {
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
        static let configuration = CommandConfiguration(
            abstract: "Create an API key and print it once.",
            discussion: "The key alone goes to stdout (KEY=$(warmpoolctl keys create ...)); its id and the reminder that it is shown only once go to stderr.")
        @OptionGroup var connection: Connection
        @Option(help: "Who or what uses it.") var name: String
        @Option(help: "What it may do: metrics, read (the default), operate (provision, enable, disable, failover test, repair) or admin (cleanup, settings, agents, keys).")
        var scope = "read"
        func run() async throws {
            try await WarmpoolCtl.run {
                let answer = try await connection.client().send("POST", "api/v1/keys", body: ["name": .string(name), "scope": .string(scope)])
                Output.field("key", of: answer, json: connection.json)
                if connection.json { return }
                let id = Output.cell(answer["id"])
                Output.note("API key \(id) (\(Output.cell(answer["name"])), scope \(Output.cell(answer["scope"]))) created. The key is shown once: "
                            + "store it now; the controller keeps only its hash. `warmpoolctl keys revoke \(id)` revokes it.")
            }
        }
    }

    struct Revoke: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Revoke an API key by its id.",
            discussion: "The last admin key cannot be revoked (409): create another admin key first.")
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
                if !connection.json { Output.note("agent \(agentId) registered. Its secret is shown once: store it now.") }
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
