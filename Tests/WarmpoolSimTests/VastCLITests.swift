import Foundation
import Testing
import WarmpoolProvider
import WarmpoolSim
import WarmpoolTestSupport

private let vastaiCLI = "/opt/warmpool-venv/bin/vastai"

/// The official `vastai` 1.9.1 CLI against the emulator: the shapes it needs are the reference's.
/// Scripts/setup installs it into /opt/warmpool-venv. The CLI exits 0 on HTTP errors, so these
/// tests read its output, not its status.
@Suite(.serialized, .enabled(if: FileManager.default.isExecutableFile(atPath: vastaiCLI),
                              "vastai is not installed in /opt/warmpool-venv: run Scripts/setup"))
struct VastCLITests {
    static let cli = vastaiCLI

    /// Runs `vastai ARGS` against `fixture` in an isolated config/cache home; returns status and
    /// stdout + stderr.
    static func vastai(_ fixture: SimFixture, _ arguments: [String]) throws -> (status: Int32, output: String) {
        guard FileManager.default.isExecutableFile(atPath: cli) else {
            throw HarnessError("\(cli) is missing: run Scripts/setup (it installs vastai==1.9.1 from PyPI)")
        }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: cli)
        process.arguments = ["--url", fixture.baseURL, "--api-key", SimFixture.apiKey] + arguments
        process.environment = [
            "PATH": "/usr/bin:/bin", "HOME": fixture.directory + "/home",
            // The import-time GET of gpu_names reads VAST_URL only; CI=1 skips the update check.
            "VAST_URL": fixture.baseURL, "CI": "1", "VASTAI_NO_UPDATE_CHECK": "1",
            "XDG_CONFIG_HOME": fixture.directory + "/xdg-config", "XDG_CACHE_HOME": fixture.directory + "/xdg-cache",
        ]
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = pipe
        try process.run()
        let output = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        return (process.terminationStatus, output)
    }

    static func json(_ output: String) throws -> JSON {
        // Warnings may precede the JSON on the combined stream.
        let start = try #require(output.firstIndex { $0 == "[" || $0 == "{" }, "no JSON in: \(output)")
        return try JSON.parse(Data(output[start...].utf8))
    }

    @Test func searchCreateShowStartStopDestroy() async throws {
        let fixture = try await SimFixture(bootDelay: .milliseconds(50))
        defer { Task { await fixture.stop() } }

        let search = try Self.vastai(fixture, ["search", "offers", "num_gpus>=1 gpu_name=RTX_4090 machine_id=77 dph<0.5", "--raw"])
        let offers = try Self.json(search.output).arrayValue ?? []
        #expect(offers.compactMap { $0["id"]?.intValue } == [7701, 7702, 7703, 7704], "\(search.output)")

        let create = try Self.vastai(fixture, ["create", "instance", "7703", "--image", "pytorch/pytorch", "--disk", "40",
                                               "--ssh", "--direct", "--env", "-e ROLE=standby -p 8080:8080", "--raw"])
        #expect(try Self.json(create.output)["new_contract"] == 1001, "\(create.output)")

        let list = try Self.vastai(fixture, ["show", "instances", "--raw"])
        let rows = try Self.json(list.output).arrayValue ?? []
        #expect(rows.compactMap { $0["id"]?.intValue } == [1001], "\(list.output)")
        // The emulator sends extra_env as [key, value] pairs; the CLI turns them into a dict.
        #expect(rows.first?["extra_env"] == ["-p 8080:8080": "1", "ROLE": "standby"])

        let show = try Self.vastai(fixture, ["show", "instance", "1001", "--raw"])
        #expect(try Self.json(show.output)["machine_id"] == 77, "\(show.output)")

        let stop = try Self.vastai(fixture, ["stop", "instance", "1001"])
        #expect(stop.output.contains("stopping instance 1001."), "\(stop.output)")
        let start = try Self.vastai(fixture, ["start", "instance", "1001"])
        #expect(start.output.contains("starting instance 1001."), "\(start.output)")
        let missing = try Self.vastai(fixture, ["start", "instance", "4242"])
        #expect(missing.status == 0 && missing.output.contains("Failed with error 404"), "HTTP errors exit 0: \(missing.output)")
        let destroy = try Self.vastai(fixture, ["destroy", "instance", "1001", "-y"])
        #expect(destroy.output.contains("destroying instance 1001."), "\(destroy.output)")

        let counters = await fixture.counters()
        #expect(counters.starts == ["1001": 1] && counters.stops == ["1001": 1] && counters.creates == 1 && counters.destroys == 1)
        #expect(try await fixture.client().listInstances().isEmpty)
    }

    @Test func theCLIRetriesAnInjected429() async throws {
        let fixture = try await SimFixture()
        defer { Task { await fixture.stop() } }
        var faults = FaultPlan()
        faults.rateLimitNext = 2
        faults.retryAfterSeconds = 0
        #expect(await fixture.raw("POST", "/admin/faults", body: String(decoding: try JSONEncoder().encode(faults), as: UTF8.self)).0 == 200)
        let search = try Self.vastai(fixture, ["search", "offers", "--raw"])
        // Four single GPUs and the four-GPU chunk.
        #expect(try Self.json(search.output).arrayValue?.count == 5, "\(search.output)")
        #expect(await fixture.counters().rateLimited == ["search_offers": 2])
    }

    /// What the warm pool needs of the CLI besides the lifecycle above: finding hosts with two or
    /// more GPUs, and the shared volume.
    @Test func multiGPUSearchAndVolumes() async throws {
        let fixture = try await SimFixture()
        defer { Task { await fixture.stop() } }
        let search = try Self.vastai(fixture, ["search", "offers", "num_gpus>=2", "--raw"])
        let offers = try Self.json(search.output).arrayValue ?? []
        #expect(offers.compactMap { $0["machine_id"]?.intValue } == [77], "\(search.output)")
        #expect(offers.first?["num_gpus"] == 4)
        let volumes = try Self.vastai(fixture, ["search", "volumes", "--raw"])
        let volumeOffer = try #require(try Self.json(volumes.output).arrayValue?.first?["id"]?.intValue, "\(volumes.output)")
        let create = try Self.vastai(fixture, ["create", "volume", "\(volumeOffer)", "-s", "100", "-n", "wp-12-data", "--raw"])
        #expect(create.output.contains("\"success\": true") || create.output.contains("\"success\":true"), "\(create.output)")
        let shown = try Self.vastai(fixture, ["show", "volumes", "--raw"])
        let rows = try Self.json(shown.output).arrayValue ?? []
        #expect(rows.count == 1 && rows.first?["disk_space"] == 100, "\(shown.output)")
        #expect(await fixture.counters().volumeCreates == 1)
    }
}
