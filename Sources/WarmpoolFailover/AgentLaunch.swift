import Foundation
import WarmpoolEngine
import WarmpoolModel

/// How an instance the controller creates starts its agent: the onstart script and the
/// environment handed to it. The agent's secret travels only in the instance's environment.
/// Everything here is the request's own `env`, which Vast.ai hands the instance as it is; the
/// instance id is not known before the create, so the agent reads it from Vast.ai's own
/// `CONTAINER_ID`, and the controller checks it against the key's binding.
public struct AgentLaunch: Sendable {
    /// The controller's agent listeners as the instances reach them, `HOST:PORT[,HOST:PORT]`.
    public var controllers: String
    /// The instance's onstart script; it runs with the environment below.
    public var onstart: String
    /// Added to every instance's environment (e.g. a fence command for the workload).
    public var extraEnvironment: [String: String]
    /// Where instances see the shared volume.
    public var volumePath: String

    public static let defaultOnstart = "exec warmpool-agent"

    public init(controllers: String, onstart: String = AgentLaunch.defaultOnstart, extraEnvironment: [String: String] = [:],
                volumePath: String = "/data") {
        self.controllers = controllers
        self.onstart = onstart
        self.extraEnvironment = extraEnvironment
        self.volumePath = volumePath
    }

    func environment(agentID: AgentID, secretHex: String, request: InstanceRequest, poolID: PoolID) -> [String: String] {
        var environment = extraEnvironment
        environment["WARMPOOL_CONTROLLERS"] = controllers
        environment["WARMPOOL_AGENT_ID"] = agentID.rawValue
        environment["WARMPOOL_AGENT_SECRET"] = secretHex
        environment["WARMPOOL_ROLE"] = request.role.rawValue
        environment["WARMPOOL_MACHINE_ID"] = "\(request.offer.machineID)"
        environment["WARMPOOL_VOLUME_ID"] = "\(request.volume)"
        environment["WARMPOOL_VOLUME_PATH"] = volumePath
        environment["WARMPOOL_POOL_ID"] = "\(poolID)"
        if let prefix = Self.snapshotPrefix(extraEnvironment, poolID: poolID) { environment["WARMPOOL_S3_PREFIX"] = prefix }
        return environment
    }

    /// Each pool's snapshots live under a prefix of their own, `<WARMPOOL_S3_PREFIX>pool-<id>/`,
    /// so that "the newest snapshot" of one pool is never another's. nil when no store is set.
    public static func snapshotPrefix(_ environment: [String: String], poolID: PoolID) -> String? {
        guard environment.keys.contains(where: { $0.hasPrefix("WARMPOOL_S3_") }) else { return nil }
        return (environment["WARMPOOL_S3_PREFIX"] ?? "") + "pool-\(poolID)/"
    }
}
