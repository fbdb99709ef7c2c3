/// The identifiers every layer passes around, each its own type so that the compiler, not a
/// reviewer, catches a pool id passed as an instance id. Each codes as its bare number or string
/// (a single-value container), so nothing on the wire, in the database or in JSON changes.
///
/// Integer literals are accepted (tests and fixtures read `PoolID = 12`); a value of one id type is
/// never accepted where another is expected.

/// The API's `machine_id`: the product's logical machine this warm pool serves.
public struct PoolID: NumericIdentifier {
    public var rawValue: Int64
    public init(rawValue: Int64) { self.rawValue = rawValue }
}

/// A provider instance id (`primary_gpu_id`, `standby_gpu_id`; Vast.ai's `new_contract`).
public struct InstanceID: NumericIdentifier {
    public var rawValue: Int64
    public init(rawValue: Int64) { self.rawValue = rawValue }
}

/// The provider's physical host machine (`host_machine_id`; Vast.ai's `machine_id`). Not the
/// API's `machine_id`, which is a `PoolID`.
public struct HostMachineID: NumericIdentifier {
    public var rawValue: Int64
    public init(rawValue: Int64) { self.rawValue = rawValue }
}

/// A provider volume id (`volume_id`).
public struct VolumeID: NumericIdentifier {
    public var rawValue: Int64
    public init(rawValue: Int64) { self.rawValue = rawValue }
}

/// A provider offer (ask) id: what an instance or a volume is created from.
public struct OfferID: NumericIdentifier {
    public var rawValue: Int64
    public init(rawValue: Int64) { self.rawValue = rawValue }
}

/// The fencing token: grows with every failover; a lease names the epoch it was granted in.
public struct Epoch: RawRepresentable, Hashable, Comparable, Sendable, Codable, CustomStringConvertible,
    ExpressibleByIntegerLiteral
{
    public var rawValue: UInt64
    public init(rawValue: UInt64) { self.rawValue = rawValue }
    public init(_ rawValue: UInt64) { self.rawValue = rawValue }
    public init(integerLiteral value: UInt64) { self.rawValue = value }

    public static let zero = Epoch(0)
    /// The epoch after this one: a failover's.
    public var next: Epoch { Epoch(rawValue + 1) }
    public var description: String { String(rawValue) }
    public static func < (lhs: Epoch, rhs: Epoch) -> Bool { lhs.rawValue < rhs.rawValue }

    public init(from decoder: any Decoder) throws { rawValue = try decoder.singleValueContainer().decode(UInt64.self) }
    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(rawValue)
    }
}

/// An agent's name, as its Hello carries it and its key is filed under (`[A-Za-z0-9._-]{1,64}`).
public struct AgentID: RawRepresentable, Hashable, Comparable, Sendable, Codable, CustomStringConvertible,
    ExpressibleByStringLiteral
{
    public var rawValue: String
    public init(rawValue: String) { self.rawValue = rawValue }
    public init(_ rawValue: String) { self.rawValue = rawValue }
    public init(stringLiteral value: String) { self.rawValue = value }

    public var description: String { rawValue }
    public static func < (lhs: AgentID, rhs: AgentID) -> Bool { lhs.rawValue < rhs.rawValue }

    public init(from decoder: any Decoder) throws { rawValue = try decoder.singleValueContainer().decode(String.self) }
    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(rawValue)
    }
}

/// What the numeric ids share: a 64-bit signed raw value (the store's INTEGER), a bare number in
/// every coding, and its decimal digits as its description (labels and log lines use it).
public protocol NumericIdentifier: RawRepresentable, Hashable, Comparable, Sendable, Codable, CustomStringConvertible,
    ExpressibleByIntegerLiteral where RawValue == Int64
{
    init(rawValue: Int64)
}

extension NumericIdentifier {
    public init(_ rawValue: Int64) { self.init(rawValue: rawValue) }
    public init(integerLiteral value: Int64) { self.init(rawValue: value) }

    /// Parses decimal digits (a path parameter, a label's suffix); nil for anything else.
    public init?(_ text: some StringProtocol) {
        guard let value = Int64(text) else { return nil }
        self.init(rawValue: value)
    }

    public var description: String { String(rawValue) }
    public static func < (lhs: Self, rhs: Self) -> Bool { lhs.rawValue < rhs.rawValue }

    public init(from decoder: any Decoder) throws { self.init(rawValue: try decoder.singleValueContainer().decode(Int64.self)) }
    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(rawValue)
    }
}
