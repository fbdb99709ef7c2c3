/// The emulated Compute Engine project (`--gce-*` flags); Protocol/GCE.md, "What warmpool-sim emulates".
public struct GCESimConfiguration: Sendable {
    public var project: String
    public var zone: String
    /// Where the service account's JSON key file is written once the server is bound.
    public var keyOutPath: String?
    /// `expires_in` of every access token.
    public var tokenLifetime: Duration
    /// The first two octets of the external addresses (`natIP`) VMs get, one /30 per boot:
    /// the VM's address and the sim-side end of its link.
    public var natPrefix: String

    public init(project: String = "warmpool-sim", zone: String = "us-central1-a", keyOutPath: String? = nil,
                tokenLifetime: Duration = .seconds(3600), natPrefix: String = "10.216")
    {
        self.project = project
        self.zone = zone
        self.keyOutPath = keyOutPath
        self.tokenLifetime = tokenLifetime
        self.natPrefix = natPrefix
    }
}
