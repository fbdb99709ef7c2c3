import Foundation
import Testing
import WarmpoolWire

/// Scripts/install-agent into a staging root: the files, their modes, and a settings file the
/// real agent accepts.
@Suite struct InstallAgentTests {
    static let repository = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path

    func runInstall(_ arguments: [String]) throws -> (status: Int32, output: String) {
        try Command.run("/bin/bash", [Self.repository + "/Scripts/install-agent"] + arguments)
    }

    @Test func installsTheBinarySettingsSecretAndUnit() throws {
        let harness = try Harness()
        let secret = AgentSecret.random()
        let secretFile = harness.directory + "/in.secret"
        try (secret.hex + "\n").write(toFile: secretFile, atomically: true, encoding: .utf8)
        let root = harness.directory + "/root"
        let result = try runInstall([
            "--binary", harness.binaries + "/warmpool-agent", "--controller", "10.0.0.1:7070", "--agent-id", "gpu-77-a",
            "--secret-file", secretFile, "--instance-id", "456789", "--fence-command", "pkill -STOP -f \"train.py\"",
            "--root", root,
        ])
        #expect(result.status == 0, "\(result.output)")
        let manager = FileManager.default
        #expect(manager.isExecutableFile(atPath: root + "/usr/local/bin/warmpool-agent"))
        #expect(manager.fileExists(atPath: root + "/etc/systemd/system/warmpool-agent.service"))
        let env = try String(contentsOfFile: root + "/etc/warmpool/agent.env", encoding: .utf8)
        #expect(env.contains("WARMPOOL_CONTROLLERS=10.0.0.1:7070\n"))
        #expect(env.contains("WARMPOOL_AGENT_ID=gpu-77-a\n"))
        #expect(env.contains("WARMPOOL_INSTANCE_ID=\"456789\"\n"))
        #expect(env.contains(#"WARMPOOL_FENCE_COMMAND="pkill -STOP -f \"train.py\"""#))
        #expect(try AgentSecret(hex: String(contentsOfFile: root + "/etc/warmpool/agent.secret", encoding: .utf8)) == secret)
        for path in ["/etc/warmpool/agent.env", "/etc/warmpool/agent.secret"] {
            let mode = try manager.attributesOfItem(atPath: root + path)[.posixPermissions] as? Int
            #expect(mode == 0o600, "\(path) has mode \(String(mode ?? 0, radix: 8))")
        }
    }

    @Test func refusesABadSecretFile() throws {
        let harness = try Harness()
        let secretFile = harness.directory + "/bad.secret"
        try "not-hex\n".write(toFile: secretFile, atomically: true, encoding: .utf8)
        let result = try runInstall([
            "--binary", harness.binaries + "/warmpool-agent", "--controller", "c:1", "--agent-id", "a",
            "--secret-file", secretFile, "--root", harness.directory + "/root",
        ])
        #expect(result.status != 0)
        #expect(result.output.contains("does not hold a 64-hex-character secret"))
    }
}
