import Glibc
import WarmpoolWire

/// What one peer, authenticated or not, may cost the agent listener: its descriptors, its bytes
/// and its time. Every figure is in PROTOCOL.md §8 ("Limits"), so an agent can be written to
/// stay inside them.
public struct ConnectionLimits: Hashable, Sendable {
    /// Sessions one agent may hold at once; a further one is refused at establishment.
    public var sessionsPerAgent: Int
    /// Connections still in their handshake, in total. Over it the oldest is closed: a
    /// legitimate handshake takes one round trip, so it finishes long before a flood that must
    /// push the whole table through can reach it.
    public var unauthenticated: Int
    /// The same, per source address: one source flooding only churns its own connections.
    public var unauthenticatedPerAddress: Int
    /// Descriptors kept free beneath the process's limit, for the store, the provider's client
    /// and the logs; connections never take them.
    public var descriptorReserve: Int
    /// Before authentication a frame may be no longer than this: a Hello is at most ~181 bytes.
    public var preAuthenticationFrameLength: Int
    /// A connection's byte budget: a bucket of `byteBurst` bytes refilled at `bytesPerSecond`,
    /// charged for what is read and again for what telemetry decompresses to.
    /// A heartbeat is ~13 bytes ten times a second and telemetry one frame of at most 64 KiB
    /// every 30 s; a peer past the budget is closed, so no one agent can hold the listener's
    /// thread (MACs, decompression) and delay everyone else's heartbeats.
    public var bytesPerSecond: Int
    public var byteBurst: Int
    /// An established session with no complete frame for this long is closed (at least ten
    /// heartbeat intervals): it stopped mid-frame or went silent beside a live sibling.
    public var idleTimeout: Duration

    public init(
        sessionsPerAgent: Int = 4, unauthenticated: Int = 2_048, unauthenticatedPerAddress: Int = 256,
        descriptorReserve: Int = 128, preAuthenticationFrameLength: Int = 256, bytesPerSecond: Int = 65_536,
        byteBurst: Int = 262_144, idleTimeout: Duration = .seconds(5)
    ) {
        self.sessionsPerAgent = sessionsPerAgent
        self.unauthenticated = unauthenticated
        self.unauthenticatedPerAddress = unauthenticatedPerAddress
        self.descriptorReserve = descriptorReserve
        self.preAuthenticationFrameLength = preAuthenticationFrameLength
        self.bytesPerSecond = bytesPerSecond
        self.byteBurst = byteBurst
        self.idleTimeout = idleTimeout
    }

    /// Raises the soft descriptor limit to the hard one (a controller serves thousands of
    /// agents; distributions start services at 1,024) and returns the limit now in force.
    @discardableResult
    public static func raiseDescriptorLimit() -> Int {
        var limit = rlimit()
        guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0 else { return 1_024 }
        if limit.rlim_cur < limit.rlim_max {
            var raised = limit
            raised.rlim_cur = limit.rlim_max
            if setrlimit(Int32(RLIMIT_NOFILE.rawValue), &raised) == 0 { limit = raised }
        }
        return Int(clamping: limit.rlim_cur)
    }

    /// The soft descriptor limit in force now.
    public static func currentDescriptorLimit() -> Int {
        var limit = rlimit()
        guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0 else { return 1_024 }
        return Int(clamping: limit.rlim_cur)
    }

    /// The connections the listener may hold with `descriptors` available to the process.
    func maximumConnections(descriptors: Int) -> Int { max(16, descriptors - descriptorReserve) }
}
