import Logging
import NIOPosix
import Synchronization
import Testing
@testable import WarmpoolLiveness
import WarmpoolModel
import WarmpoolWire

/// Two reloads of the agent keys at once: the one that read the store last wins, whichever
/// finishes last (issue 20: a slow reload could drop a key minted just before).
@Suite struct KeyReloadTests {
    @Test func aSlowOlderReloadNeverReplacesANewerOne() async throws {
        let calls = Mutex(0)
        let minted = AgentSecret.random()
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        var logger = Logger(label: "test.reload")
        logger.logLevel = .critical
        let service = try LivenessService(
            configuration: .init(host: "127.0.0.1", port: 0, keysFile: nil, hub: .init(detector: DetectorConfiguration(heartbeatInterval: .milliseconds(100)))),
            epoch: 1, bus: LivenessEventBus(), group: group, logger: logger,
            storedKeys: {
                let call = calls.withLock { $0 += 1; return $0 }
                if call == 1 {
                    // The first reload read the store before the key was minted, and is slow.
                    try await Task.sleep(for: .milliseconds(300))
                    return Keyring()
                }
                return Keyring(["gpu-new": minted])
            })
        let slow = Task { await service.reloadKeys() }
        while calls.withLock({ $0 }) == 0 { try await Task.sleep(for: .milliseconds(5)) }
        await service.reloadKeys()
        await slow.value
        #expect(service.hub.openSession().1.secret(for: "gpu-new") == minted, "the newer reload's key is still there")
        try await group.shutdownGracefully()
    }
}
