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

    /// Any value round-trips byte for byte, read the way systemd's EnvironmentFile reads it and the
    /// way the no-systemd branch does (bash sourcing the file): `$(…)`, backquotes, quotes,
    /// backslashes and newlines included.
    @Test func settingsRoundTripByteForByteThroughSystemdAndBash() throws {
        let harness = try Harness()
        let secretFile = harness.directory + "/in.secret"
        try (AgentSecret.random().hex + "\n").write(toFile: secretFile, atomically: true, encoding: .utf8)
        let root = harness.directory + "/root"
        let command = "kill -STOP $(cat /data/train.pid); echo `date` \"q\" 's' \\n back\\slash $HOME ${X}\nline two\\"
        let result = try runInstall([
            "--binary", harness.binaries + "/warmpool-agent", "--controller", "10.0.0.1:7070", "--agent-id", "gpu-1",
            "--secret-file", secretFile, "--fence-command", command, "--root", root,
        ])
        #expect(result.status == 0, "\(result.output)")
        let envFile = root + "/etc/warmpool/agent.env"
        let sourced = try Command.run("/bin/bash", ["-c", "set -a; . \"$0\"; printf '%s' \"$WARMPOOL_FENCE_COMMAND\"", envFile])
        #expect(sourced.status == 0 && sourced.output == command, "bash read back: \(sourced.output)")
        let text = try String(contentsOfFile: envFile, encoding: .utf8)
        #expect(Self.systemdValue(of: "WARMPOOL_FENCE_COMMAND", in: text) == command)
        #expect(!FileManager.default.fileExists(atPath: harness.directory + "/pwned"), "nothing ran at install time")
        let bad = try runInstall([
            "--binary", harness.binaries + "/warmpool-agent", "--controller", "c:1;touch \(harness.directory)/pwned", "--agent-id", "a",
            "--secret-file", secretFile, "--root", root,
        ])
        #expect(bad.status != 0 && bad.output.contains("bad controller address"))
    }

    /// systemd's EnvironmentFile rules for a double-quoted value (systemd.exec(5), env-file.c): a
    /// backslash escapes `"`, `\`, `` ` `` and `$`; a backslash before a newline joins the lines;
    /// before anything else it stays; every other byte, a newline included, is itself.
    static func systemdValue(of key: String, in text: String) -> String? {
        guard let start = text.range(of: "\n" + key + "=\"") else { return nil }
        var value = ""
        var escaped = false
        for character in text[start.upperBound...] {
            if escaped {
                if "\"\\`$".contains(character) { value.append(character) } else if character != "\n" { value += "\\" + String(character) }
                escaped = false
            } else if character == "\\" {
                escaped = true
            } else if character == "\"" {
                return value
            } else {
                value.append(character)
            }
        }
        return nil
    }

    @Test func theUnitHardensTheAgentWithoutTakingItsVolume() throws {
        let unit = try String(contentsOfFile: Self.repository + "/Scripts/warmpool-agent.service", encoding: .utf8)
        let directives = Set(unit.split(separator: "\n").filter { !$0.hasPrefix("#") }.map(String.init))
        for expected in ["NoNewPrivileges=yes", "ProtectSystem=strict", "ReadWritePaths=/data", "ProtectHome=yes", "PrivateTmp=yes",
                         "ProtectKernelTunables=yes", "ProtectKernelModules=yes", "ProtectControlGroups=yes", "RestrictSUIDSGID=yes"] {
            #expect(directives.contains(expected), "\(expected) missing")
        }
        #expect(!directives.contains { $0.hasPrefix("PrivateDevices=") }, "NVML needs /dev/nvidia*")
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
