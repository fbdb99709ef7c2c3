import Logging
import WarmpoolModel
import WarmpoolSSH
import WarmpoolStore

/// The verifier's host key pins, kept in the controller's store so they survive restarts, and
/// filled from what each instance's own agent reported over its authenticated session.
public struct StoreHostKeyPins: HostKeyPinStore {
    let store: any WarmpoolStore
    /// The key the instance's agent vouches for (`LivenessHub.attestedHostKey`), pinned at the
    /// first lookup that finds no pin: before the first SSH contact, never from it.
    let attested: @Sendable (InstanceID) -> String?
    let logger: Logger

    public init(store: any WarmpoolStore, attested: @escaping @Sendable (InstanceID) -> String? = { _ in nil }, logger: Logger) {
        self.store = store
        self.attested = attested
        self.logger = logger
    }

    public func pinnedFingerprint(for instanceID: InstanceID) async throws -> String? {
        if let pinned = try await store.pinnedHostKey(instanceID: instanceID) { return pinned }
        guard let reported = attested(instanceID) else { return nil }
        let inForce = try await store.pinHostKeyIfAbsent(instanceID: instanceID, key: reported)
        if inForce == reported {
            logger.notice("pinned the host key the instance's agent reported", metadata: [
                "ssh.instance_id": "\(instanceID)", "ssh.fingerprint": "\(reported)",
            ])
        }
        return inForce
    }

    public func pinIfAbsent(_ fingerprint: String, for instanceID: InstanceID) async throws -> String {
        try await store.pinHostKeyIfAbsent(instanceID: instanceID, key: fingerprint)
    }

    public func removePin(for instanceID: InstanceID) async throws {
        try await store.unpinHostKey(instanceID: instanceID)
    }
}
