import Testing
@testable import WarmpoolProvider
import WarmpoolModel

@Suite struct WarmPoolHostsTests {
    static func offer(_ id: OfferID, machine: HostMachineID, gpus: Int = 1, of total: Int? = 4, price: Double = 0.45, name: String = "RTX 4090",
                      verified: Bool = true, reliability: Double = 0.99) -> Offer
    {
        Offer(id: id, machineID: machine, gpuName: name, numGPUs: gpus, gpuFraction: total.map { Double(gpus) / Double($0) },
              pricePerHour: price, reliability: reliability, verified: verified, geolocation: "US")
    }

    @Test func offersOfOneMachineBecomeOneHost() throws {
        let offers = [Self.offer(7701, machine: 77), Self.offer(7702, machine: 77, price: 0.55), Self.offer(7703, machine: 77, reliability: 0.95),
                      Self.offer(8801, machine: 88, of: 2)]
        let hosts = WarmPoolHosts.group(offers: offers, filter: .init(minGPUs: 1))
        #expect(hosts.map(\.machineID) == [88, 77], "cheapest GPU-hour first")
        let host = try #require(hosts.last)
        #expect(host.totalGPUs == 4 && host.availableGPUs == 3 && host.canCreateWarmPool)
        #expect(host.avgPricePerHour == 0.4833)
        #expect(host.reliability == 0.95)
        #expect(host.offers.map(\.offerID) == [7701, 7703, 7702], "cheapest first")
        let single = hosts[0]
        #expect(single.totalGPUs == 2 && single.availableGPUs == 1 && !single.canCreateWarmPool)
    }

    @Test func theFilterOfTheControlAPI() {
        let offers = [Self.offer(7701, machine: 77), Self.offer(7702, machine: 77), Self.offer(8801, machine: 88, name: "A100"),
                      Self.offer(8802, machine: 88, name: "A100"), Self.offer(9901, machine: 99, verified: false),
                      Self.offer(9902, machine: 99, verified: false), Self.offer(6601, machine: 66, price: 2),
                      Self.offer(6602, machine: 66, price: 2), Self.offer(5501, machine: 55)]
        #expect(WarmPoolHosts.group(offers: offers).map(\.machineID) == [77, 88, 66], "default: 2+ GPUs, verified only")
        #expect(WarmPoolHosts.group(offers: offers, filter: .init(gpuName: "rtx_4090")).map(\.machineID) == [77, 66])
        #expect(WarmPoolHosts.group(offers: offers, filter: .init(maxPrice: 1)).map(\.machineID) == [77, 88])
        #expect(WarmPoolHosts.group(offers: offers, filter: .init(verified: false)).map(\.machineID).sorted() == [66, 77, 88, 99])
        #expect(WarmPoolHosts.group(offers: offers, filter: .init(minGPUs: 1)).map(\.machineID).contains(55))
    }

    @Test func overlappingChunksNeverCountMoreGPUsThanTheMachineHas() throws {
        // One 4-GPU machine listed as chunks of 1, 2 and 4.
        let offers = [Self.offer(1, machine: 42, gpus: 1), Self.offer(2, machine: 42, gpus: 2), Self.offer(3, machine: 42, gpus: 4)]
        let host = try #require(WarmPoolHosts.group(offers: offers).first)
        #expect(host.totalGPUs == 4 && host.availableGPUs == 4)
    }

    /// Issue 18: two of four GPUs rented, the two free ones listed as two 1-GPU offers and one
    /// 2-GPU offer of the same two. A sum read 4.
    @Test func overlappingChunksOfAPartlyRentedMachineAreNotAddedUp() throws {
        let offers = [Self.offer(1, machine: 42, gpus: 1), Self.offer(2, machine: 42, gpus: 1), Self.offer(3, machine: 42, gpus: 2)]
        let host = try #require(WarmPoolHosts.group(offers: offers).first)
        #expect(host.totalGPUs == 4 && host.availableGPUs == 2 && host.canCreateWarmPool)
    }
}
