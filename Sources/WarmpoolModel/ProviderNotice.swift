/// A notification the provider sent about our instances (Vast.ai's webhooks), once the API has
/// verified its signature and window.
public struct ProviderNotice: Sendable, Equatable {
    public var eventID: String
    /// The provider's slug (`outbid`, `instance_offline`, …): Protocol/VASTAI-SIM.md lists ours.
    public var kind: String
    public var instanceID: InstanceID?
    public var machineID: HostMachineID?
    /// For people; never parsed.
    public var message: String
    /// When an announced maintenance or downtime begins, Unix seconds (`data.start_time`, a guess
    /// at an undocumented key); nil when the notification says nothing of it.
    public var startsAt: Double?

    public init(eventID: String, kind: String, instanceID: InstanceID?, machineID: HostMachineID?, message: String,
                startsAt: Double? = nil) {
        self.startsAt = startsAt
        self.eventID = eventID
        self.kind = kind
        self.instanceID = instanceID
        self.machineID = machineID
        self.message = message
    }
}
