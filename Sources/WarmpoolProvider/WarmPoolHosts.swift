import Foundation
import WarmpoolModel

/// Groups the provider's offers into physical hosts for `GET /warmpool/hosts`
/// (reference/warmpool-api.md). Pure: offers in, hosts out; field names match the control API.
public enum WarmPoolHosts {
    /// The query of `GET /warmpool/hosts`.
    public struct Filter: Hashable, Sendable {
        /// e.g. "RTX_4090"; underscores mean spaces; compared without regard to case.
        public var gpuName: String?
        public var minGPUs: Int
        /// $/hour, per offer.
        public var maxPrice: Double?
        /// true: verified offers only; false: any.
        public var verified: Bool

        public init(gpuName: String? = nil, minGPUs: Int = 2, maxPrice: Double? = nil, verified: Bool = true) {
            self.gpuName = gpuName
            self.minGPUs = minGPUs
            self.maxPrice = maxPrice
            self.verified = verified
        }
    }

    public struct HostOffer: Hashable, Sendable, Codable {
        public var offerID: OfferID
        public var machineID: HostMachineID
        public var gpuName: String
        public var numGPUs: Int
        public var pricePerHour: Double
        public var reliability: Double
        public var verified: Bool
        public var geolocation: String?

        enum CodingKeys: String, CodingKey {
            case offerID = "offer_id", machineID = "machine_id", gpuName = "gpu_name", numGPUs = "num_gpus"
            case pricePerHour = "price_per_hour", reliability, verified, geolocation
        }
    }

    public struct Host: Hashable, Sendable, Codable {
        public var machineID: HostMachineID
        public var totalGPUs: Int
        public var availableGPUs: Int
        public var gpuName: String
        public var avgPricePerHour: Double
        public var reliability: Double
        public var verified: Bool
        public var geolocation: String?
        /// A primary and a standby fit: two or more GPUs free.
        public var canCreateWarmPool: Bool
        public var offers: [HostOffer]

        enum CodingKeys: String, CodingKey {
            case machineID = "machine_id", totalGPUs = "total_gpus", availableGPUs = "available_gpus", gpuName = "gpu_name"
            case avgPricePerHour = "avg_price_per_hour", reliability, verified, geolocation
            case canCreateWarmPool = "can_create_warm_pool", offers
        }
    }

    /// Offers that pass `filter`, grouped by `machine_id`; hosts with fewer than
    /// `filter.minGPUs` free GPUs are left out. Ordered by price per GPU-hour, then machine id.
    ///
    /// Vast lists one machine as overlapping chunks (1, 2 and 4 GPUs of the same 4), so offers
    /// must not be added up: two free GPUs show as two 1-GPU offers and one 2-GPU offer, and a sum
    /// would read four. Free GPUs are the larger of the host's 1-GPU offers (each a distinct
    /// GPU) and its largest single offer, capped by its total. That can understate a host whose
    /// chunks do not overlap, never overstate one: a warm pool is never promised on GPUs that are
    /// not there. The total is `num_gpus / gpu_frac` where the provider gives `gpu_frac`.
    public static func group(offers: [Offer], filter: Filter = Filter()) -> [Host] {
        let wantedName = filter.gpuName.map { $0.replacingOccurrences(of: "_", with: " ").lowercased() }
        let kept = offers.filter { offer in
            if let wantedName, offer.gpuName.lowercased() != wantedName { return false }
            if let maxPrice = filter.maxPrice, offer.pricePerHour > maxPrice { return false }
            if filter.verified, !offer.verified { return false }
            if offer.rented == true || offer.rentable == false { return false }
            return offer.numGPUs > 0
        }
        let hosts = Dictionary(grouping: kept, by: \.machineID).map { machineID, offers in
            host(machineID: machineID, offers: offers.sorted { ($0.pricePerHour, $0.id) < ($1.pricePerHour, $1.id) })
        }
        return hosts.filter { $0.availableGPUs >= filter.minGPUs }
            .sorted { ($0.avgPricePerHour, $0.machineID) < ($1.avgPricePerHour, $1.machineID) }
    }

    static func host(machineID: HostMachineID, offers: [Offer]) -> Host {
        let offered = offers.reduce(0) { $0 + $1.numGPUs }
        let declaredTotal = offers.compactMap { offer -> Int? in
            guard let fraction = offer.gpuFraction, fraction > 0 else { return nil }
            return Int((Double(offer.numGPUs) / fraction).rounded())
        }.max()
        let total = max(declaredTotal ?? offered, offers.map(\.numGPUs).max() ?? 0)
        let singles = offers.count { $0.numGPUs == 1 }
        let available = min(max(singles, offers.map(\.numGPUs).max() ?? 0), total)
        // Price per GPU-hour, weighted by each offer's GPUs.
        let pricePerGPU = offers.reduce(0) { $0 + $1.pricePerHour } / Double(max(1, offered))
        let reliabilities = offers.compactMap(\.reliability)
        let names = Dictionary(grouping: offers, by: \.gpuName).max { $0.value.count < $1.value.count }?.key ?? ""
        return Host(
            machineID: machineID, totalGPUs: total, availableGPUs: available, gpuName: names,
            avgPricePerHour: (pricePerGPU * 10_000).rounded() / 10_000,
            reliability: reliabilities.isEmpty ? 0 : reliabilities.min()!,
            verified: offers.allSatisfy(\.verified), geolocation: offers.compactMap(\.geolocation).first,
            canCreateWarmPool: available >= 2,
            offers: offers.map {
                HostOffer(offerID: $0.id, machineID: $0.machineID, gpuName: $0.gpuName, numGPUs: $0.numGPUs,
                          pricePerHour: $0.pricePerHour, reliability: $0.reliability ?? 0, verified: $0.verified,
                          geolocation: $0.geolocation)
            })
    }
}
