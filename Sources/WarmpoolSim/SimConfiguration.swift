#if canImport(Glibc)
import Glibc
#endif

/// How one emulator runs.
public struct SimConfiguration: Sendable {
    /// The Bearer key every API call must carry.
    public var apiKey: String
    public var hosts: [HostSpec]
    /// Volumes (one directory each) and instance directories (host key, sshd config, logs) live here.
    public var stateDirectory: String
    /// AuthorizedKeysFile for every instance's sshd (root logs in with these keys).
    public var authorizedKeysPath: String?
    /// From "start" (or create) to the instance running.
    public var bootDelay: Duration
    /// Between SIGTERM and SIGKILL when an instance is stopped (`docker stop` gives 10 s).
    public var stopGracePeriod: Duration
    /// Bind-mount a linked volume on its mount path inside the instance's private mount
    /// namespace. Needs root; without it a linked volume is not attached at all (nothing at the
    /// mount path): a deviation of the emulator, which cannot attach without root.
    public var mountVolumes: Bool
    public var faults: FaultPlan
    public var sshdPath: String
    public var sshKeygenPath: String
    /// Host address reported as ssh_host / public_ipaddr, and where every sshd listens.
    public var sshAddress: String
    /// Where instances get a network of their own (as a container does): each runs in the
    /// network namespace this names and reports this address, where its sshd listens on port 22.
    public var instanceNetwork: InstanceNetwork?
    /// Where Vast.ai's notification webhooks go (at most 4, as Vast.ai allows), signed with
    /// `notificationSecret`.
    public var notificationURLs: [String] = []
    public var notificationSecret = ""
    /// Compute Engine emulated beside Vast.ai (Protocol/GCE.md); nil: not served.
    public var gce: GCESimConfiguration?

    public init(apiKey: String, hosts: [HostSpec] = [.defaultHost], stateDirectory: String, authorizedKeysPath: String? = nil,
                bootDelay: Duration = .milliseconds(500), stopGracePeriod: Duration = .seconds(1),
                mountVolumes: Bool = getuid() == 0, faults: FaultPlan = FaultPlan(), sshdPath: String = "/usr/sbin/sshd",
                sshKeygenPath: String = "/usr/bin/ssh-keygen", sshAddress: String = "127.0.0.1", instanceNetwork: InstanceNetwork? = nil)
    {
        self.apiKey = apiKey
        self.hosts = hosts
        self.stateDirectory = stateDirectory
        self.authorizedKeysPath = authorizedKeysPath
        self.bootDelay = bootDelay
        self.stopGracePeriod = stopGracePeriod
        self.mountVolumes = mountVolumes
        self.faults = faults
        self.sshdPath = sshdPath
        self.sshKeygenPath = sshKeygenPath
        self.sshAddress = sshAddress
        self.instanceNetwork = instanceNetwork
    }
}

/// Per-instance network namespaces, made beforehand (Scripts/lab): one per GPU slot, since an
/// instance holds its slot from create to destroy. Both patterns take `{machine}` and `{slot}`,
/// e.g. namespace `wplab-{machine}-{slot}`, address `10.214.{slot}.{machine}`.
public struct InstanceNetwork: Hashable, Sendable {
    public var namespacePattern: String
    public var addressPattern: String

    public init(namespacePattern: String, addressPattern: String) {
        self.namespacePattern = namespacePattern
        self.addressPattern = addressPattern
    }

    public func namespace(machine: Int, slot: Int) -> String { Self.fill(namespacePattern, machine: machine, slot: slot) }
    public func address(machine: Int, slot: Int) -> String { Self.fill(addressPattern, machine: machine, slot: slot) }

    private static func fill(_ pattern: String, machine: Int, slot: Int) -> String {
        pattern.replacingOccurrences(of: "{machine}", with: String(machine)).replacingOccurrences(of: "{slot}", with: String(slot))
    }
}
