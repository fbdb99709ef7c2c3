import WarmpoolModel
import WarmpoolProvider

extension PoolCosts {
    /// Pure: the coordinator gathers the prices (the primary's `dph_total` and the host's
    /// `storage_cost` from Vast.ai, Compute Engine's list prices from `GCEPrices`).
    /// - Parameters:
    ///   - storagePerGBMonth: the host's `storage_cost` (Vast.ai: USD per GB-month of disk,
    ///     billed whether the instance runs or not).
    public static func quote(
        strategy: String, primaryPerHour: Double?, storagePerGBMonth: Double?, volumeGB: Int, standbyDiskGB: Int,
        cpuMachineType: String?, cpuDiskGB: Int, prices: GCEPrices
    ) -> PoolCosts {
        let volume = storagePerGBMonth.map { $0 * Double(volumeGB) }
        let standbyDisk = storagePerGBMonth.map { $0 * Double(standbyDiskGB) }
        let vm = cpuMachineType.flatMap { try? prices.monthlyRunning(machineType: $0, diskGB: cpuDiskGB) }
        let warm = volume.flatMap { v in standbyDisk.map { v + $0 } }
        let cpu = vm.flatMap { m in volume.map { m + $0 } }
        var items: [Item] = []
        if let volume { items.append(Item(name: "volume, \(volumeGB) GB", perMonth: volume)) }
        if strategy == "cpu_standby" {
            if let vm, let cpuMachineType { items.append(Item(name: "CPU VM \(cpuMachineType), running, \(cpuDiskGB) GB disk", perMonth: vm)) }
        } else if let standbyDisk {
            items.append(Item(name: "stopped GPU standby: no GPU billed, its \(standbyDiskGB) GB disk", perMonth: standbyDisk))
        }
        var basis = ["Compute Engine list prices, \(prices.region) (Protocol/GCE.md)"]
        if storagePerGBMonth != nil { basis.insert("Vast.ai: the host's storage_cost per GB-month", at: 0) }
        if primaryPerHour != nil { basis.insert("Vast.ai: the primary's dph_total", at: 0) }
        var costs = PoolCosts(strategy: strategy, primaryPerHour: primaryPerHour, warmPoolPerMonth: warm, cpuStandbyPerMonth: cpu,
                              items: items, basis: basis)
        let stoppedVM = cpuMachineType == nil ? nil : try? prices.monthlyStopped(diskGB: cpuDiskGB)
        costs.cpuStandbyStoppedPerMonth = stoppedVM.flatMap { s in volume.map { s + $0 } }
        return costs
    }
}
