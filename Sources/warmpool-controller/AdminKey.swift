import Foundation
import Logging
import WarmpoolModel
import WarmpoolStore
import WarmpoolWire

enum AdminKey {
    /// A new database has no API key, and the CLI needs one to make more: the first start mints
    /// an `admin` key into a 0600 file beside the database and logs the file's path, never the key.
    static func ensure(store: SQLiteStore, databasePath: String, logger: Logger) async throws {
        guard try await store.apiKeys().isEmpty else { return }
        let minted = APIKeys.mint(name: "admin")
        let path = ((databasePath as NSString).deletingLastPathComponent as NSString).appendingPathComponent("admin-api-key")
        try SecretFile.write(minted.plaintext + "\n", to: path)
        try await store.addAPIKey(minted.record)
        logger.notice("minted the first API key", metadata: ["api_key.file": "\(path)", "api_key.id": "\(minted.record.id)"])
    }

    /// The agents registered in the store and not revoked, each bound to the instance it was
    /// minted for (when the record names one).
    static func storedKeyring(_ store: SQLiteStore) async throws -> Keyring {
        var secrets: [AgentID: AgentSecret] = [:]
        var bindings: [AgentID: InstanceID] = [:]
        for agent in try await store.agents() where agent.revokedAt == nil {
            secrets[agent.agentID] = try AgentSecret(hex: agent.secretHex)
            bindings[agent.agentID] = agent.instanceID
        }
        return Keyring(secrets, bindings: bindings)
    }
}
