/// Compute Engine's on-demand list prices for one region, as Protocol/GCE.md's table gives them
/// (its source and date there): what the controller shows a CPU standby costs. Not a bill:
/// sustained-use discounts, taxes and network egress are left out.
public struct GCEPrices: Hashable, Sendable {
    public var region: String
    /// USD per hour of a running VM, by machine type (vCPU and memory together).
    public var machineTypeHourly: [String: Double]
    /// USD per GB-month of provisioned persistent disk, by disk type.
    public var diskGBMonthly: [String: Double]
    /// USD per hour of an in-use external IPv4 address (a running VM's ephemeral natIP). A stopped
    /// VM's ephemeral address is released, so it costs nothing then.
    public var externalIPv4Hourly: Double
    /// Google prices a month as 730 hours.
    public static let hoursPerMonth = 730.0

    public init(region: String, machineTypeHourly: [String: Double], diskGBMonthly: [String: Double], externalIPv4Hourly: Double) {
        self.region = region
        self.machineTypeHourly = machineTypeHourly
        self.diskGBMonthly = diskGBMonthly
        self.externalIPv4Hourly = externalIPv4Hourly
    }

    /// us-central1 (Iowa), from Protocol/GCE.md, "Prices".
    public static let usCentral1 = GCEPrices(
        region: "us-central1",
        machineTypeHourly: ["e2-micro": 0.008376, "e2-small": 0.016751, "e2-medium": 0.033503, "e2-standard-2": 0.067006],
        diskGBMonthly: ["pd-standard": 0.04, "pd-balanced": 0.10],
        externalIPv4Hourly: 0.005)

    public struct UnknownPrice: Error, Hashable, Sendable, CustomStringConvertible {
        public var what: String
        public var description: String { "no \(what) price in the table" }
    }

    /// USD a month of a VM of `machineType` running all month, with a boot disk of `diskGB`.
    public func monthlyRunning(machineType: String, diskGB: Int, diskType: String = "pd-balanced") throws -> Double {
        guard let hourly = machineTypeHourly[machineType] else { throw UnknownPrice(what: "machine type \(machineType)") }
        return (hourly + externalIPv4Hourly) * Self.hoursPerMonth + (try monthlyStopped(diskGB: diskGB, diskType: diskType))
    }

    /// USD a month of a VM kept stopped (TERMINATED): its disk only.
    public func monthlyStopped(diskGB: Int, diskType: String = "pd-balanced") throws -> Double {
        guard let perGB = diskGBMonthly[diskType] else { throw UnknownPrice(what: "disk type \(diskType)") }
        return perGB * Double(diskGB)
    }
}
