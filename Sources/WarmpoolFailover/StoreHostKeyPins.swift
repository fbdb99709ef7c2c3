import WarmpoolModel
import WarmpoolSSH
import WarmpoolStore

/// The verifier's host key pins, kept in the controller's store so they survive restarts.
public struct StoreHostKeyPins: HostKeyPinStore {
    let store: any WarmpoolStore

    public init(store: any WarmpoolStore) { self.store = store }

    public func pinnedFingerprint(for instanceID: InstanceID) async throws -> String? {
        try await store.pinnedHostKey(instanceID: instanceID)
    }

    public func pinIfAbsent(_ fingerprint: String, for instanceID: InstanceID) async throws -> String {
        try await store.pinHostKeyIfAbsent(instanceID: instanceID, key: fingerprint)
    }

    public func removePin(for instanceID: InstanceID) async throws {
        try await store.unpinHostKey(instanceID: instanceID)
    }
}
