/// Where and how `GCEClient` creates VMs. The token endpoint is not here: it is the key file's
/// `token_uri`, so a key minted by `warmpool-sim` points the client at the sim's `/token`.
public struct GCEConfiguration: Sendable {
    public var project: String
    /// e.g. `us-central1-a`.
    public var zone: String
    /// No trailing slash.
    public var baseURL: String
    public var key: ServiceAccountKey
    /// The boot disk's image: Debian 12, as `gcloud` names it by family.
    public var sourceImage: String
    /// The boot disk's type (a name, e.g. `pd-balanced`), which `GCEPrices` prices.
    public var diskType: String
    public var timeout: Duration
    public var connectTimeout: Duration
    public var retry: RetryPolicy
    public var userAgent: String

    public init(project: String, zone: String, baseURL: String = "https://compute.googleapis.com/compute/v1", key: ServiceAccountKey,
                sourceImage: String = "projects/debian-cloud/global/images/family/debian-12", diskType: String = "pd-balanced",
                timeout: Duration = .seconds(30), connectTimeout: Duration = .seconds(10), retry: RetryPolicy = RetryPolicy(),
                userAgent: String = "warmpool/1")
    {
        self.project = project
        self.zone = zone
        self.baseURL = baseURL.hasSuffix("/") ? String(baseURL.dropLast()) : baseURL
        self.key = key
        self.sourceImage = sourceImage
        self.diskType = diskType
        self.timeout = timeout
        self.connectTimeout = connectTimeout
        self.retry = retry
        self.userAgent = userAgent
    }
}
