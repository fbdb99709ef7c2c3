import WarmpoolModel

/// The provider's `actual_status` of an instance (Vast.ai's values). `nil` in a snapshot means the
/// provider has not reported one yet (still provisioning).
public enum InstanceStatus: String, Hashable, Sendable, Codable {
    case created, loading, running, stopped, frozen, exited, rebooting, unknown, offline
    /// A start waiting for a GPU of the machine (another renter has it): may last for ever.
    case scheduling

    /// Statuses that prove the instance cannot write to the volume. Stricter than "not running":
    /// `offline` and `unknown` may be a live host behind a partition, `frozen` can thaw, and
    /// `rebooting` and `loading` are on their way up, so none of them fences.
    var provesStopped: Bool { self == .stopped || self == .exited }
}

/// One instance as the provider showed it.
public struct InstanceSnapshot: Hashable, Sendable, Codable {
    public var id: InstanceID
    public var status: InstanceStatus?
    public var ssh: SSHEndpoint?

    public init(id: InstanceID, status: InstanceStatus?, ssh: SSHEndpoint? = nil) {
        self.id = id
        self.status = status
        self.ssh = ssh
    }
}

/// A free GPU on offer: one offer is one GPU (the shell searches for `num_gpus = 1`).
public struct GPUOffer: Hashable, Sendable, Codable {
    public var id: OfferID
    public var machineID: HostMachineID
    public var gpuName: String

    public init(id: OfferID, machineID: HostMachineID, gpuName: String) {
        self.id = id
        self.machineID = machineID
        self.gpuName = gpuName
    }
}

/// The answer to one provider command.
public enum ProviderOutcome: Hashable, Sendable, Codable {
    case success(ProviderData)
    /// `retryable`: a transport error, 429 or 5xx, worth sending again; otherwise the provider
    /// refused for good (4xx, `success: false`).
    case failure(message: String, retryable: Bool)
}

/// What a successful command returned. Which case answers which command is listed at each
/// `EngineAction`; a mismatch is treated as a failure that is not retryable.
public enum ProviderData: Hashable, Sendable, Codable {
    /// start, stop, destroy, delete: the provider took the command.
    case accepted
    /// ensureInstance, pollInstance: the instance, or `nil` when the provider has no such instance.
    case instance(InstanceSnapshot?)
    case volume(VolumeID)
    /// findFreeOffers, best first.
    case offers([GPUOffer])
    /// ensureInstance: the offer was rented by someone else between the search and the create
    /// (the marketplace's `no_such_ask`). Nothing was made; another free GPU may do.
    case offerTaken(OfferID)
}

/// What a verification expects of the volume's identity marker. The marketplace writes nothing on
/// a volume: the marker is ours, written once through the pool's first primary.
public enum VolumeMarkerCheck: String, Hashable, Sendable, Codable {
    /// The pool's volume was marked: the marker must be there and hold the volume's id.
    case required
    /// A fresh volume (provisioning), or a pool from before markers were written: write the
    /// marker when it is missing, then check it as `required` does.
    case establish
}

/// The answer to `EngineAction.verify`.
public enum VerificationOutcome: Hashable, Sendable, Codable {
    /// SSH answered with the pinned host key at `sshReadyAt`, then the volume proved mounted, the
    /// expected one, and writable. `markerWritten`: this verification wrote the marker.
    case passed(sshReadyAt: Instant, markerWritten: Bool = false)
    /// SSH does not answer yet (refused, timed out): a booting instance; try again shortly.
    case notReady(message: String)
    /// A wrong host key, a missing or wrong volume, a read-only volume: this instance will not do.
    case failed(message: String)
    /// The volume is mounted and writable but the marker written at provisioning is gone: the
    /// data on it cannot be vouched for. Not a fault of the instance, so no replacement helps.
    case markerMissing(message: String)
}

/// The answer to `EngineAction.restoreSnapshot`.
public enum RestoreOutcome: Hashable, Sendable, Codable {
    /// `snapshot` is on the volume, whole and verified. `takenAt`: when it was taken (from its id).
    case restored(snapshot: String, takenAt: Instant?, files: Int, bytes: Int64)
    /// SSH does not answer yet (a booting instance, its host key not yet reported): try again shortly.
    case notReady(message: String)
    /// No snapshot to restore, a store that refuses, a chunk that does not verify, a wrong host key.
    case failed(message: String)
}
