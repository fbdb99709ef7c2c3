import Testing
import WarmpoolModel
import WarmpoolProvider
@testable import WarmpoolFailover

/// The product page's comparison with a pool's own prices.
@Suite struct PoolCostsTests {
    @Test func eachStrategyIsPricedFromTheProvidersPrices() {
        let quote = PoolCosts.quote(strategy: "cpu_standby", primaryPerHour: 0.45, storagePerGBMonth: 0.1, volumeGB: 100, standbyDiskGB: 50,
                                    cpuMachineType: "e2-small", cpuDiskGB: 100, prices: .usCentral1)
        // Warm pool: the volume and the stopped standby's disk (no GPU billed while stopped).
        #expect(abs((quote.warmPoolPerMonth ?? 0) - 15.0) < 1e-9)
        // CPU standby: the VM running all month (its external address too) and its disk, beside the volume.
        #expect(abs((quote.cpuStandbyPerMonth ?? 0) - ((0.016751 + 0.005) * 730 + 10 + 10)) < 1e-9)
        #expect(abs((quote.cpuStandbyStoppedPerMonth ?? 0) - 20.0) < 1e-9, "a stopped VM: its disk and the volume")
        #expect(quote.items.map(\.name) == ["volume, 100 GB", "CPU VM e2-small, running, 100 GB disk"])
        #expect(quote.basis.first == "Vast.ai: the primary's dph_total")

        let warm = PoolCosts.quote(strategy: "gpu_warm_pool", primaryPerHour: nil, storagePerGBMonth: nil, volumeGB: 100, standbyDiskGB: 50,
                                   cpuMachineType: "n9-unknown", cpuDiskGB: 100, prices: .usCentral1)
        #expect(warm.warmPoolPerMonth == nil && warm.cpuStandbyPerMonth == nil, "an unknown price is unknown, not zero")
        #expect(warm.items.isEmpty)
    }
}
