import Foundation
import Logging
import WarmpoolEngine
import WarmpoolJSON
import WarmpoolModel
import WarmpoolProvider
import WarmpoolSSH
import WarmpoolStore
import WarmpoolWire

/// Carries out the engine's CPU-standby commands: the VMs at the other cloud (by name, each
/// idempotent as the engine needs), and over SSH the sync target on the primary, the copy on the
/// VM about to be promoted, and a final snapshot.
struct CPUStandbyEffects: Sendable {
    let cloud: (any CPUProviderClient)?
    let store: any WarmpoolStore
    let launch: AgentLaunch
    let verifier: SSHVerifier
    let restorer: SnapshotRestore
    let syncKeys: SyncKeys
    /// The controller's own public key (`TYPE BASE64 comment`): it logs in to the VM to verify it.
    let controllerPublicKey: String?
    /// Where the VMs' agents reach the controller (`HOST:PORT[,HOST:PORT]`).
    let controllers: String
    /// Where the primary's agent reads its sync target (the agent's `--sync-target-file`).
    let syncTargetFile: String
    let volumePath: String
    let timeout: Duration
    /// The last sync pass an instance's agent reported (the manifest it wrote), if any.
    let lastSyncedPass: @Sendable (InstanceID) async -> Int?
    let clock: any WallClock
    let logger: Logger

    /// Labels on every VM, so that an operator (or a cleanup script) finds ours.
    static let poolLabel = "warmpool-pool"

    // MARK: - The cloud

    func run(_ action: EngineAction, poolID: PoolID) async -> ProviderOutcome {
        guard let cloud else { return .failure(message: "no CPU cloud is configured (--gce-key-file)", retryable: false) }
        do {
            switch action {
            case .ensureCPUInstance(_, let request):
                return .success(.instance(try await ensure(request, poolID: poolID, cloud: cloud)))
            case .startCPUInstance(_, let name):
                if let vm = try await cloud.instance(named: name), vm.status == .running || vm.status == .staging || vm.status == .provisioning {
                    return .success(.accepted)
                }
                try await cloud.startInstance(named: name)
                return .success(.accepted)
            case .stopCPUInstance(_, let name):
                guard let vm = try await cloud.instance(named: name), !vm.status.isStopped else { return .success(.accepted) }
                try await cloud.stopInstance(named: name)
                return .success(.accepted)
            case .pollCPUInstance(_, let name, let agent):
                return .success(.instance(try await cloud.instance(named: name).map { Self.snapshot($0, agent: agent) }))
            case .deleteCPUInstance(_, let name):
                try await cloud.deleteInstance(named: name)
                // Google deletes in the background (the VM shows STOPPING meanwhile): done is
                // gone, or a cleanup would answer while the VM, and its bill, are still there.
                let deadline = ContinuousClock.now + timeout
                while try await cloud.instance(named: name) != nil {
                    guard ContinuousClock.now < deadline else {
                        return .failure(message: "CPU VM \(name) is still listed \(timeout) after its delete was accepted", retryable: true)
                    }
                    try await Task.sleep(for: .milliseconds(500))
                }
                await forgetAgent(AgentID(name))
                return .success(.accepted)
            default:
                return .failure(message: "not a CPU cloud command: \(action)", retryable: false)
            }
        } catch let error as ProviderError {
            logger.warning("CPU cloud command failed", metadata: ["pool": "\(poolID)", "error": "\(error)"])
            return .failure(message: error.description, retryable: error.isTransient)
        } catch {
            logger.error("CPU cloud command failed", metadata: ["pool": "\(poolID)", "error": "\(error)"])
            return .failure(message: "\(error)", retryable: true)
        }
    }

    /// The VM by its name, or a new one. Its agent's key is minted and bound to the id the engine
    /// chose before the insert, so a VM adopted after a crash finds its key in place.
    private func ensure(_ request: CPUInstanceRequest, poolID: PoolID, cloud: any CPUProviderClient) async throws -> InstanceSnapshot {
        if let existing = try await cloud.instance(named: request.name) {
            logger.info("adopted CPU VM", metadata: ["vm.name": "\(request.name)", "vm.status": "\(existing.status.rawValue)"])
            return Self.snapshot(existing, agent: request.agent)
        }
        let agentID = AgentID(request.name)
        var agent: AgentRecord
        if let existing = try await store.agent(id: agentID) {
            guard existing.revokedAt == nil else { throw ProviderEffects.RevokedAgentKey(agentID: agentID) }
            agent = existing
        } else {
            agent = AgentRecord(agentID: agentID, secretHex: AgentSecret.random().hex, poolID: poolID, role: "standby")
        }
        agent.instanceID = request.agent
        if try await store.agent(id: agentID) == nil { try await store.addAgent(agent) } else { try await store.saveAgent(agent) }
        let keys = try syncKeys.keyPair(for: poolID)
        let rootKeys = [controllerPublicKey, keys.publicKey].compactMap { $0 }
        let spec = CPUInstanceSpec(
            name: request.name, machineType: request.machineType, diskSizeGB: request.diskSizeGB,
            labels: [Self.poolLabel: "\(poolID)", "warmpool-role": "cpu-standby"],
            metadata: [
                CPUMetadataItem(key: "startup-script", value: startupScript(agent: agent, request: request, poolID: poolID, rootKeys: rootKeys)),
                CPUMetadataItem(key: "ssh-keys", value: rootKeys.map { "root:\($0)" }.joined(separator: "\n")),
            ])
        try await cloud.insertInstance(spec)
        logger.info("created CPU VM", metadata: ["vm.name": "\(request.name)", "agent": "\(request.agent)", "machine_type": "\(request.machineType)"])
        return try await cloud.instance(named: request.name).map { Self.snapshot($0, agent: request.agent) }
            ?? InstanceSnapshot(id: request.agent, status: nil)
    }

    /// What the VM's guest environment runs at every boot: the agent, with the environment an
    /// instance of the marketplace gets from its create (Google hands a VM none but its metadata).
    /// The secret is in the metadata, readable on the VM and by the project's viewers.
    /// Google's images refuse root logins and make a user of each `ssh-keys` entry; the
    /// controller and the primary's sync log in as root, as on Vast.ai: the script lets root in
    /// by these keys alone (`prohibit-password`).
    func startupScript(agent: AgentRecord, request: CPUInstanceRequest, poolID: PoolID, rootKeys: [String]) -> String {
        var environment = launch.extraEnvironment
        environment["WARMPOOL_CONTROLLERS"] = controllers
        environment["WARMPOOL_AGENT_ID"] = agent.agentID.rawValue
        environment["WARMPOOL_AGENT_SECRET"] = agent.secretHex
        environment["WARMPOOL_INSTANCE_ID"] = "\(request.agent)"
        environment["WARMPOOL_ROLE"] = "standby"
        environment["WARMPOOL_VOLUME_PATH"] = volumePath
        environment["WARMPOOL_POOL_ID"] = "\(poolID)"
        if let prefix = AgentLaunch.snapshotPrefix(launch.extraEnvironment, poolID: poolID) { environment["WARMPOOL_S3_PREFIX"] = prefix }
        let keys = rootKeys.map { "grep -qxF \(VerificationCommand.shellQuote($0)) /root/.ssh/authorized_keys 2>/dev/null || "
            + "printf '%s\\n' \(VerificationCommand.shellQuote($0)) >> /root/.ssh/authorized_keys" }
        return (["#!/bin/bash", "install -d -m 700 /root/.ssh"] + keys + [
            "if [ -d /etc/ssh/sshd_config.d ]; then echo 'PermitRootLogin prohibit-password' > /etc/ssh/sshd_config.d/50-warmpool.conf; "
                + "systemctl reload ssh 2>/dev/null || true; fi",
            "mkdir -p \(VerificationCommand.shellQuote(volumePath))", SnapshotRestore.exports(environment), launch.onstart,
        ]).joined(separator: "\n") + "\n"
    }

    /// Why the cloud proves the VM stopped (gone, or stopped); nil when it does not, or when no
    /// cloud is configured.
    func stopReason(name: String) async throws -> String? {
        guard let cloud else { return nil }
        guard let vm = try await cloud.instance(named: name) else { return "the cloud no longer lists CPU VM \(name)" }
        return vm.status.isStopped ? "the cloud reports CPU VM \(name) \(vm.status.rawValue)" : nil
    }

    /// GCE's statuses in the engine's terms: booting is `loading`, a VM that will not run until
    /// started is `stopped`, one being stopped is not yet (`unknown`, which fences nothing).
    static func snapshot(_ vm: CPUInstance, agent: InstanceID) -> InstanceSnapshot {
        let status: InstanceStatus = switch vm.status {
        case .provisioning, .staging: .loading
        case .running: .running
        case .stopped, .terminated, .suspended: .stopped
        case .repairing: .offline
        case .stopping, .suspending, .other: .unknown
        }
        return InstanceSnapshot(id: agent, status: status, ssh: vm.externalIP.map { SSHEndpoint(host: $0, port: 22) })
    }

    /// A deleted VM's agent key is revoked and its host key pin dropped.
    private func forgetAgent(_ agentID: AgentID) async {
        do {
            if let agent = try await store.agent(id: agentID), agent.revokedAt == nil {
                _ = try await store.revokeAgent(id: agentID, at: Date())
                if let instance = agent.instanceID { try await store.unpinHostKey(instanceID: instance) }
            }
        } catch {
            logger.error("cannot revoke a deleted CPU VM's keys", metadata: ["agent.id": "\(agentID)", "error": "\(error)"])
        }
    }

    // MARK: - Over SSH

    /// Writes the sync target onto the primary (nil: removes it). The target's host key is read
    /// from its sshd and checked against the pin its agent attested: the primary's ssh then
    /// trusts exactly that key.
    func configureSync(primary: InstanceID, ssh: SSHEndpoint?, target: SyncTarget?, poolID: PoolID) async -> VerificationOutcome {
        guard let ssh else { return .notReady(message: "the provider shows no SSH address for instance \(primary) yet") }
        let file = VerificationCommand.shellQuote(syncTargetFile)
        var command = "rm -f \(file)"
        if let target {
            let hostKey: String
            do {
                switch try await verifier.pinnedHostKey(instanceID: target.agent, host: target.ssh.host, port: target.ssh.port, timeout: timeout.nanoseconds) {
                case .success(let line): hostKey = line
                case .failure(let failure): return Self.verdict(failure, what: "CPU VM \(target.name)")
                }
            } catch {
                return .notReady(message: "cannot read CPU VM \(target.name)'s host key: \(error)")
            }
            let keys: SyncKeys.KeyPair
            do { keys = try syncKeys.keyPair(for: poolID) } catch { return .failed(message: "no sync key: \(error)") }
            let document = JSONValue.object([
                ("name", .string(target.name)), ("host", .string(target.ssh.host)), ("port", .int(Int64(target.ssh.port))),
                ("user", .string("root")), ("path", .string(volumePath)), ("identity", .string(keys.privateKey)),
                ("host_key", .string(hostKey)), ("epoch", .int(Int64(target.epoch.rawValue))), ("bwlimit_kib", .int(0)),
            ])
            let json = String(decoding: document.serialized(), as: UTF8.self)
            // Whole or not at all: the agent reads it when it changes.
            command = "umask 077 && mkdir -p \"$(dirname \(file))\" && printf '%s' \(VerificationCommand.shellQuote(json)) > \(file).tmp && mv \(file).tmp \(file)"
        }
        do {
            let result = try await verifier.run(command, instanceID: primary, host: ssh.host, port: ssh.port, timeout: timeout.nanoseconds)
            switch result {
            case .failure(let failure): return Self.verdict(failure, what: "instance \(primary)")
            case .success(let output) where output.exitStatus == 0: return .passed(sshReadyAt: clock.now())
            case .success(let output): return .failed(message: "writing the sync target failed: \(SnapshotRestore.failure(output))")
            }
        } catch {
            return .notReady(message: "the sync target could not be written: \(error)")
        }
    }

    /// The CPU VM about to be promoted: its copy is a writable directory at the volume path, and
    /// holds the sync manifest of the last pass the old primary reported (or a later one: a pass
    /// may finish after its report). The epoch is written beside it (the sync never touches
    /// `.warmpool/`), as a verification writes it on a volume.
    func verifyCopy(instance: InstanceID, ssh: SSHEndpoint?, name: String, syncedFrom: InstanceID, epoch: Epoch) async -> VerificationOutcome {
        guard let ssh else { return .notReady(message: "the cloud shows no address for CPU VM \(name) yet") }
        let volume = VerificationCommand.shellQuote(volumePath)
        let command = "test -d \(volume) && mkdir -p \(volume)/.warmpool && printf '%s' \(epoch.rawValue) > \(volume)/.warmpool/epoch "
            + "&& cat \(volume)/.warmpool-sync/manifest.json"
        let output: RemoteCommandOutput
        do {
            switch try await verifier.run(command, instanceID: instance, host: ssh.host, port: ssh.port, timeout: timeout.nanoseconds) {
            case .failure(let failure): return Self.verdict(failure, what: "CPU VM \(name)")
            case .success(let ran): output = ran
            }
        } catch {
            return .notReady(message: "CPU VM \(name) could not be verified: \(error)")
        }
        guard output.exitStatus == 0 else {
            return .failed(message: "CPU VM \(name): no synced copy at \(volumePath) (\(SnapshotRestore.failure(output)))")
        }
        guard let manifest = try? JSONParser.parse(output.stdout), let pass = manifest["pass"]?.intValue else {
            return .failed(message: "CPU VM \(name): the sync manifest is not readable JSON with a pass number")
        }
        if let reported = await lastSyncedPass(syncedFrom), pass < reported {
            return .failed(message: "CPU VM \(name) holds sync pass \(pass), but instance \(syncedFrom) reported pass \(reported): the copy is older than it should be")
        }
        return .passed(sshReadyAt: clock.now())
    }

    /// A snapshot of the instance's volume now (the CPU primary's, before a failback).
    func takeSnapshot(instance: InstanceID, ssh: SSHEndpoint?, poolID: PoolID) async -> RestoreOutcome {
        guard let ssh else { return .notReady(message: "no SSH address for instance \(instance)") }
        switch await restorer.takeSnapshot(poolID: poolID, instance: instance, ssh: ssh) {
        case .success(let summary):
            guard let snapshot = summary["snapshot"]?.stringValue else { return .failed(message: "the snapshot tool named no snapshot") }
            return .restored(snapshot: snapshot, takenAt: SnapshotID.instant(of: snapshot),
                             files: Int(summary["files"]?.intValue ?? 0), bytes: summary["bytes"]?.intValue ?? 0)
        case .failure(let failure):
            return .failed(message: failure.description)
        }
    }

    /// SSH failures a booting VM gets over are "not ready"; a wrong key is a failed step.
    static func verdict(_ failure: SSHFailure, what: String) -> VerificationOutcome {
        if failure.reason != .hostKeyMismatch, ReadinessPolicy.defaultRetryable.contains(failure.reason) || failure.reason == .hostKeyUnattested {
            return .notReady(message: "\(what): \(failure.description)")
        }
        return .failed(message: "\(what): \(failure.description)")
    }
}
