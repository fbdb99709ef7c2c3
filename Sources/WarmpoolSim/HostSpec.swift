import Foundation

/// One simulated physical machine: `MACHINE_ID:GPUS:GPU_NAME:PRICE[:GEO]`, e.g.
/// `77:4:RTX_4090:0.45` (underscores in the name are spaces; price is $/hour per GPU).
public struct HostSpec: Hashable, Sendable {
    public var machineID: Int
    public var gpuCount: Int
    public var gpuName: String
    public var pricePerGPUHour: Double
    public var geolocation: String
    public var reliability: Double
    public var verified: Bool

    public init(machineID: Int, gpuCount: Int, gpuName: String, pricePerGPUHour: Double, geolocation: String = "US",
                reliability: Double = 0.995, verified: Bool = true)
    {
        self.machineID = machineID
        self.gpuCount = gpuCount
        self.gpuName = gpuName
        self.pricePerGPUHour = pricePerGPUHour
        self.geolocation = geolocation
        self.reliability = reliability
        self.verified = verified
    }

    public static let defaultHost = HostSpec(machineID: 77, gpuCount: 4, gpuName: "RTX 4090", pricePerGPUHour: 0.45)

    public struct ParseError: Error, CustomStringConvertible {
        public var description: String
    }

    public init(parsing text: String) throws {
        let fields = text.split(separator: ":", omittingEmptySubsequences: false).map(String.init)
        guard (4...5).contains(fields.count), let machineID = Int(fields[0]), machineID > 0,
            let gpus = Int(fields[1]), (1...64).contains(gpus), !fields[2].isEmpty,
            let price = Double(fields[3]), price >= 0
        else {
            throw ParseError(description: "host \"\(text)\": expected MACHINE_ID:GPUS(1-64):GPU_NAME:PRICE[:GEO], e.g. 77:4:RTX_4090:0.45")
        }
        self.init(machineID: machineID, gpuCount: gpus, gpuName: fields[2].replacingOccurrences(of: "_", with: " "),
                  pricePerGPUHour: price, geolocation: fields.count == 5 ? fields[4] : "US")
    }

    /// Offer ids are stable: machine 77's GPU slot 2 is offer 7702 (slots count from 1).
    public func offerID(slot: Int) -> Int { machineID * 100 + slot }
    /// Each machine has one storage offer, 1,000,000 + its machine id.
    public var volumeOfferID: Int { 1_000_000 + machineID }
}
