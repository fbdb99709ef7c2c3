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
    /// Bind-mount volumes on their mount path inside a private mount namespace. Needs root;
    /// without it instances get the volume's directory as WARMPOOL_VOLUME_PATH.
    public var mountVolumes: Bool
    public var faults: FaultPlan
    public var sshdPath: String
    public var sshKeygenPath: String
    /// Host address reported as ssh_host / public_ipaddr, and where every sshd listens.
    public var sshAddress: String

    public init(apiKey: String, hosts: [HostSpec] = [.defaultHost], stateDirectory: String, authorizedKeysPath: String? = nil,
                bootDelay: Duration = .milliseconds(500), stopGracePeriod: Duration = .seconds(1),
                mountVolumes: Bool = getuid() == 0, faults: FaultPlan = FaultPlan(), sshdPath: String = "/usr/sbin/sshd",
                sshKeygenPath: String = "/usr/bin/ssh-keygen", sshAddress: String = "127.0.0.1")
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
    }
}
