/// What a pool costs, per strategy, from the providers' own prices: the product page's table with
/// this pool's numbers (`WarmpoolFailover` quotes it; the API shows it).
public struct PoolCosts: Sendable, Equatable {
    public struct Item: Sendable, Equatable {
        public var name: String
        public var perMonth: Double

        public init(name: String, perMonth: Double) {
            self.name = name
            self.perMonth = perMonth
        }
    }

    /// What protects the pool now: `gpu_warm_pool` or `cpu_standby`.
    public var strategy: String
    /// The running primary, USD/hour (nil when the provider did not say).
    public var primaryPerHour: Double?
    /// What each way of protecting this pool costs a month, beside the primary: a stopped GPU
    /// standby holds no GPU (Vast.ai bills its disk) and shares the volume; a CPU standby is a
    /// running VM and its disk, beside the volume; no failover costs nothing more.
    public var warmPoolPerMonth: Double?
    public var cpuStandbyPerMonth: Double?
    /// The same VM kept stopped (its disk only): cheaper, but a stopped VM takes no sync, so its
    /// copy would be the newest snapshot restored at failover. Quoted, not offered yet.
    public var cpuStandbyStoppedPerMonth: Double? = nil
    /// The strategy in force, item by item.
    public var items: [Item]
    /// Where each price came from.
    public var basis: [String]

    /// Providers price a month as 730 hours.
    public static let hoursPerMonth = 730.0

    public init(strategy: String, primaryPerHour: Double?, warmPoolPerMonth: Double?, cpuStandbyPerMonth: Double?, items: [Item], basis: [String]) {
        self.strategy = strategy
        self.primaryPerHour = primaryPerHour
        self.warmPoolPerMonth = warmPoolPerMonth
        self.cpuStandbyPerMonth = cpuStandbyPerMonth
        self.items = items
        self.basis = basis
    }
}
