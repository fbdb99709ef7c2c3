import Foundation
import WarmpoolModel
import WarmpoolWire

/// The agent keys file: one `agent-id 64-hex-secret` pair per line; `#` starts a comment.
/// The store replaces it later; the format stays importable.
public enum KeyFile {
    public struct ParseError: Error, CustomStringConvertible {
        public var line: Int
        public var problem: String
        public var description: String { "keys file line \(line): \(problem)" }
    }

    public static func parse(_ text: String) throws -> Keyring {
        var secrets: [AgentID: AgentSecret] = [:]
        for (index, rawLine) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let line = rawLine.split(separator: "#", maxSplits: 1, omittingEmptySubsequences: false).first ?? ""
            let fields = line.split(whereSeparator: { $0 == " " || $0 == "\t" || $0 == "\r" })
            if fields.isEmpty { continue }
            guard fields.count == 2 else {
                throw ParseError(line: index + 1, problem: "expected `agent-id secret`, found \(fields.count) fields")
            }
            let id = AgentID(String(fields[0]))
            guard AgentIdentity.isValidAgentID(id.rawValue) else {
                throw ParseError(line: index + 1, problem: "agent id must be 1-64 characters of A-Z a-z 0-9 . _ -")
            }
            guard secrets[id] == nil else { throw ParseError(line: index + 1, problem: "agent \(id) appears twice") }
            do {
                secrets[id] = try AgentSecret(hex: String(fields[1]))
            } catch {
                throw ParseError(line: index + 1, problem: error.description)
            }
        }
        return Keyring(secrets)
    }

    public static func load(path: String) throws -> Keyring {
        try parse(String(contentsOfFile: path, encoding: .utf8))
    }

    /// Adds a fresh secret for `agentID` (refusing a duplicate) and returns it. The file is created
    /// with mode 0600 when missing: it holds every agent's secret.
    public static func addAgent(_ agentID: String, path: String) throws -> AgentSecret {
        let existing = FileManager.default.fileExists(atPath: path) ? try String(contentsOfFile: path, encoding: .utf8) : ""
        var keyring = try parse(existing)
        guard AgentIdentity.isValidAgentID(agentID) else {
            throw ParseError(line: 0, problem: "agent id must be 1-64 characters of A-Z a-z 0-9 . _ -")
        }
        guard keyring.secret(for: AgentID(agentID)) == nil else {
            throw ParseError(line: 0, problem: "agent \(agentID) already has a key in \(path)")
        }
        let secret = AgentSecret.random()
        var text = existing
        if !text.isEmpty, !text.hasSuffix("\n") { text += "\n" }
        text += "\(agentID) \(secret.hex)\n"
        let data = Data(text.utf8)
        if !FileManager.default.fileExists(atPath: path) {
            guard FileManager.default.createFile(atPath: path, contents: nil, attributes: [.posixPermissions: 0o600]) else {
                throw ParseError(line: 0, problem: "cannot create \(path)")
            }
        }
        try data.write(to: URL(fileURLWithPath: path))
        keyring = try parse(text)
        return secret
    }
}
