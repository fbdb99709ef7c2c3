import Foundation
import Testing
import WarmpoolModel
import WarmpoolProvider
@testable import WarmpoolSim

/// What an instance is given: exactly what Vast.ai gives, and nothing more. The lists come from
/// Protocol/VASTAI-SIM.md, so the document and the emulator cannot drift apart.
@Suite(.serialized) struct InstanceGivenTests {
    /// The names in the fenced block ```` ```NAME ```` of Protocol/VASTAI-SIM.md (`#` lines are comments).
    static func documentedList(_ name: String) throws -> [String] {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let text = try String(contentsOf: root.appendingPathComponent("Protocol/VASTAI-SIM.md"), encoding: .utf8)
        let lines = text.split(separator: "\n", omittingEmptySubsequences: false).map { $0.trimmingCharacters(in: .whitespaces) }
        let start = try #require(lines.firstIndex(of: "```" + name), "no ```\(name) block in Protocol/VASTAI-SIM.md")
        let end = try #require(lines[(start + 1)...].firstIndex(of: "```"), "the ```\(name) block is not closed")
        return lines[(start + 1)..<end].filter { !$0.isEmpty && !$0.hasPrefix("#") }
    }

    /// `env -0` output as name -> value.
    static func environment(in path: String) throws -> [String: String] {
        let data = try #require(FileManager.default.contents(atPath: path), "no \(path)")
        var environment: [String: String] = [:]
        for entry in data.split(separator: 0) {
            let text = String(decoding: entry, as: UTF8.self)
            let name = String(text.prefix { $0 != "=" })
            environment[name] = String(text.dropFirst(name.count + 1))
        }
        return environment
    }

    static func lines(_ path: String) throws -> [String] {
        try String(contentsOfFile: path, encoding: .utf8).split(separator: "\n").map(String.init)
    }

    @Test func theDocumentListsWhatTheEmulatorSets() throws {
        #expect(try Self.documentedList("instance-env") == InstanceEnvironment.predefinedNames)
        #expect(try Self.documentedList("instance-volume-files").isEmpty, "the emulator writes no file on a volume")
    }

    @Test func anInstanceIsGivenWhatVastAIGivesAndNothingMore() async throws {
        try SimFixture.requireRoot()
        let predefined = Set(try Self.documentedList("instance-env"))
        let basic = Set(try Self.documentedList("instance-env-basic"))
        let volumeFiles = Set(try Self.documentedList("instance-volume-files"))
        let homeFiles = Set(try Self.documentedList("instance-home-files"))
        #expect(predefined.count == 8 && basic.isSuperset(of: ["PATH", "HOME", "PWD"]))

        let fixture = try await SimFixture(bootDelay: .milliseconds(50), mountVolumes: true)
        let client = fixture.client()
        let dump = fixture.directory + "/dump"
        try FileManager.default.createDirectory(atPath: dump, withIntermediateDirectories: true)
        let volumeID = try await client.createVolume(offerID: OfferID(Int64(HostSpec.defaultHost.volumeOfferID)), sizeGB: 1, name: "given")
        let volumeDirectory = fixture.directory + "/state/volumes/\(volumeID)"
        #expect(try FileManager.default.contentsOfDirectory(atPath: volumeDirectory).isEmpty, "a new volume is empty")

        let userEnv = ["SIM_DUMP_DIR": dump, "GREETING": "hello"]
        let onstart = """
            echo "$GREETING" > /data/user-file
            ls -A /data > "$SIM_DUMP_DIR/mount-files"
            ls -A "$HOME" > "$SIM_DUMP_DIR/home-files"
            env -0 > "$SIM_DUMP_DIR/env"
            : > "$SIM_DUMP_DIR/done"
            """
        let id = try await client.createInstance(offerID: 7702, CreateInstanceRequest(
            image: "img", env: userEnv, onstart: onstart, volume: .init(volumeID: volumeID, mountPath: "/data")))
        #expect(await SimFixture.eventually { FileManager.default.fileExists(atPath: dump + "/done") }, "the onstart ran")
        let instance = try #require(try await client.instance(id: id))

        // Names: Vast.ai's predefined ones, the user's, and what every process has; all of the
        // predefined ones; none naming us.
        let environment = try Self.environment(in: dump + "/env")
        let names = Set(environment.keys)
        let unexplained = names.subtracting(predefined).subtracting(basic).subtracting(userEnv.keys)
        #expect(unexplained.isEmpty, "variables Vast.ai does not give: \(unexplained.sorted())")
        #expect(predefined.isSubset(of: names), "missing: \(predefined.subtracting(names).sorted())")
        #expect(!names.contains { $0.uppercased().contains("WARMPOOL") })

        // Values, as the docs define them.
        let authorizedKey = try String(contentsOfFile: fixture.directory + "/authorized_keys", encoding: .utf8)
            .trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(environment["CONTAINER_ID"] == id.description)
        #expect(environment["VAST_CONTAINERLABEL"] == "C.\(id)")
        #expect(environment["PUBLIC_IPADDR"] == instance.sshHost && environment["PUBLIC_IPADDR"] == instance.publicIPAddress)
        #expect(environment["VAST_TCP_PORT_22"] == instance.sshPort.map { String($0) })
        #expect(environment["SSH_PUBLIC_KEY"] == authorizedKey)
        #expect(environment["GPU_COUNT"] == "1" && instance.numGPUs == 1)
        #expect(environment["DATA_DIRECTORY"] == InstanceEnvironment.dataDirectory)
        #expect(environment["GREETING"] == "hello" && environment["SIM_DUMP_DIR"] == dump)
        #expect(environment.values.allSatisfy { !$0.contains(volumeDirectory) }, "nothing points past the mount to the volume's directory")

        // Files: the volume holds what the user wrote and nothing else, seen at the mount path
        // and on the host alike; HOME starts empty.
        #expect(Set(try Self.lines(dump + "/mount-files")) == Set(["user-file"]).union(volumeFiles))
        #expect(Set(try FileManager.default.contentsOfDirectory(atPath: volumeDirectory)) == Set(["user-file"]).union(volumeFiles))
        #expect(Set(try Self.lines(dump + "/home-files")).isSubset(of: homeFiles))

        // CONTAINER_API_KEY works against the API, but opens no test control.
        let key = try #require(environment["CONTAINER_API_KEY"])
        #expect(key.count == 64 && key != SimFixture.apiKey)
        let shown = await fixture.simulator.handle(SimRequest(method: "GET", path: "/api/v0/instances/\(id)/", authorization: "Bearer \(key)"))
        #expect(shown.status == 200 && shown.body["instances"]?["id"] == JSON(Int(id.rawValue)))
        let admin = await fixture.simulator.handle(SimRequest(method: "GET", path: "/admin/counters", authorization: "Bearer \(key)"))
        #expect(admin.status == 401)

        try await client.destroyInstance(id: id)
        let gone = await fixture.simulator.handle(SimRequest(method: "GET", path: "/api/v0/volumes", authorization: "Bearer \(key)"))
        #expect(gone.status == 401, "a destroyed instance's key opens nothing")
        await fixture.stop()
    }

    @Test func withoutMountsNothingIsAttached() async throws {
        // The emulator cannot attach a volume without root (or with --no-mounts): it does not
        // fake one either. The API still reports the link, as it is recorded.
        let fixture = try await SimFixture(bootDelay: .milliseconds(20), mountVolumes: false)
        let client = fixture.client()
        let dump = fixture.directory + "/dump"
        try FileManager.default.createDirectory(atPath: dump, withIntermediateDirectories: true)
        let volumeID = try await client.createVolume(offerID: OfferID(Int64(HostSpec.defaultHost.volumeOfferID)), sizeGB: 1, name: "plain")
        let volumeDirectory = fixture.directory + "/state/volumes/\(volumeID)"
        try "from an earlier instance\n".write(toFile: volumeDirectory + "/seed", atomically: true, encoding: .utf8)
        let mountPath = "/warmpool-simtest-\(UUID().uuidString)"
        let onstart = """
            if [ -e "$MOUNT" ]; then echo present; else echo absent; fi > "$SIM_DUMP_DIR/mount"
            env -0 > "$SIM_DUMP_DIR/env"
            : > "$SIM_DUMP_DIR/done"
            """
        let id = try await client.createInstance(offerID: 7704, CreateInstanceRequest(
            image: "img", env: ["SIM_DUMP_DIR": dump, "MOUNT": mountPath], onstart: onstart,
            volume: .init(volumeID: volumeID, mountPath: mountPath)))
        #expect(await SimFixture.eventually { FileManager.default.fileExists(atPath: dump + "/done") }, "the onstart ran")
        #expect(try Self.lines(dump + "/mount") == ["absent"], "nothing at the mount path")
        #expect(!FileManager.default.fileExists(atPath: mountPath))
        let environment = try Self.environment(in: dump + "/env")
        #expect(environment.values.allSatisfy { !$0.contains(volumeDirectory) }, "no variable leads to the volume")
        #expect(try FileManager.default.contentsOfDirectory(atPath: volumeDirectory) == ["seed"])
        #expect(try await client.instance(id: id)?.volumeIDs == [volumeID])
        try await client.destroyInstance(id: id)
        await fixture.stop()
    }
}
