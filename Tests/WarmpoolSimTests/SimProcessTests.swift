import Foundation
import Testing
import WarmpoolProvider
import WarmpoolTestSupport

#if canImport(Glibc)
import Glibc
#endif

/// The `warmpool-sim` executable itself: flags, the ready file, and SIGTERM ending every
/// instance and leaving nothing mounted.
@Suite(.serialized) struct SimProcessTests {
    /// WARMPOOL_BIN_DIR, else the directory holding the test bundle (where SwiftPM puts executables).
    static func binary() throws -> String {
        var candidates: [String] = []
        if let configured = ProcessInfo.processInfo.environment["WARMPOOL_BIN_DIR"] { candidates.append(configured) }
        var directory = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath()
        while directory.pathComponents.count > 1 {
            directory.deleteLastPathComponent()
            candidates.append(directory.path)
        }
        for candidate in candidates where FileManager.default.isExecutableFile(atPath: candidate + "/warmpool-sim") {
            return candidate + "/warmpool-sim"
        }
        throw HarnessError("warmpool-sim not found next to the tests; run `swift build` first or set WARMPOOL_BIN_DIR")
    }

    @Test func sigtermStopsEveryInstanceAndUnmountsEverything() async throws {
        try SimFixture.requireRoot()
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("warmpool-simproc-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: try Self.binary())
        process.arguments = ["--api-key", "k", "--state-dir", directory + "/state", "--ready-file", directory + "/ready",
                             "--host", "55:2:RTX_3090:0.25:CA", "--boot-delay-ms", "50", "--log-level", "warning"]
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle(forWritingAtPath: "/dev/null")
        try process.run()
        defer { if process.isRunning { kill(process.processIdentifier, SIGKILL) } }
        #expect(await SimFixture.eventually { FileManager.default.fileExists(atPath: directory + "/ready") })
        let address = try String(contentsOfFile: directory + "/ready", encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
        let client = VastClient(configuration: .init(baseURL: "http://\(address)", apiKey: "k"), logger: SimFixture.logger)

        let offers = try await client.searchOffers(OfferQuery(gpuName: "RTX 3090")).filter { $0.numGPUs == 1 }
        #expect(offers.map(\.id) == [5501, 5502] && offers.allSatisfy { $0.geolocation == "CA" && $0.pricePerHour == 0.25 })
        // A sleep no other process on this machine runs, to find the onstarts by.
        let sleep = "sleep \(Int.random(in: 600_000...699_999))"
        let volumeID = try await client.createVolume(offerID: 1_000_055, sizeGB: 5, name: nil)
        for offer in offers {
            _ = try await client.createInstance(offerID: offer.id, CreateInstanceRequest(
                image: "img", onstart: sleep, volume: .init(volumeID: volumeID)))
        }
        #expect(try await SimFixture.eventually { try await client.listInstances().allSatisfy(\.isRunning) })
        #expect(await SimFixture.eventually {
            SimFixture.processes(mentioning: directory + "/state").count >= 4 && SimFixture.processes(mentioning: sleep).count >= 2
        }, "two launchers, two sshds, two onstarts")

        kill(process.processIdentifier, SIGTERM)
        #expect(await SimFixture.eventually { !process.isRunning })
        #expect(process.terminationStatus == 0)
        #expect(SimFixture.processes(mentioning: directory + "/state").isEmpty, "no instance process outlives the emulator")
        #expect(SimFixture.processes(mentioning: sleep).isEmpty, "nor any onstart")
        let mounts = try String(contentsOfFile: "/proc/self/mountinfo", encoding: .utf8)
        #expect(!mounts.contains(directory), "no volume left mounted")
    }
}
