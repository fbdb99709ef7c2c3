import Foundation
import Testing

@testable import WarmpoolAgent

/// The hand-written Telemetry JSON against what the agent used to send: Foundation's JSONEncoder
/// with sorted keys and snake_case keys, over the same fields.
@Suite struct TelemetryJSONTests {
    /// The document as it was encoded before: the Encodable struct the agent used to carry.
    private struct EncodableDocument: Encodable {
        var agentId: String
        var instanceId: UInt64
        var machineId: UInt64
        var role: String
        var version: String
        var epoch: UInt64
        var fencedAtEpoch: UInt64?
        var fence: String?
        var workload: String
        var volume: VolumeReport?
        var gpu: GPUReport?
        var sshHostKey: String?
        var checkpoint: CheckpointTelemetry?
        var snapshot: SnapshotTelemetry?
        var sync: SyncTelemetry?

        init(_ d: TelemetryDocument) {
            agentId = d.agentID
            instanceId = d.instanceID
            machineId = d.machineID
            role = d.role
            version = d.version
            epoch = d.epoch
            fencedAtEpoch = d.fencedAtEpoch
            fence = d.fence
            workload = d.workload
            volume = d.volume
            gpu = d.gpu
            sshHostKey = d.sshHostKey
            checkpoint = d.checkpoint
            snapshot = d.snapshot
            sync = d.sync
        }
    }

    private func foundationBytes(_ document: TelemetryDocument) throws -> [UInt8] {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        encoder.keyEncodingStrategy = .convertToSnakeCase
        return Array(try encoder.encode(EncodableDocument(document)))
    }

    private static let volume = VolumeReport(
        path: "/data", mounted: true, volumeID: "vol-123", idMatches: true, writable: true,
        freeBytes: 1_234_567_890_123, problem: nil)

    private static let gpu = GPUInfo(
        index: 0, name: "NVIDIA H100 80GB HBM3", uuid: "GPU-6c0e3a0f-1b2c-4d5e-8f90-a1b2c3d4e5f6",
        temperatureCelsius: 41, utilizationPercent: 97, memoryTotalBytes: 85_520_809_984,
        memoryUsedBytes: 81_000_000_000, eccUncorrectedVolatile: 0, xidCriticalErrors: 2, lastXid: 79, healthy: false)

    private static let sparseGPU = GPUInfo(
        index: 3, name: nil, uuid: nil, temperatureCelsius: nil, utilizationPercent: nil, memoryTotalBytes: nil,
        memoryUsedBytes: nil, eccUncorrectedVolatile: nil, xidCriticalErrors: 0, lastXid: nil, healthy: true)

    /// A schedule with one snapshot taken and one failed since.
    private static var schedule: SnapshotSchedule {
        var schedule = SnapshotSchedule(intervalNanoseconds: 60_000_000_000)
        _ = schedule.tick(now: 0, mayWrite: true)
        schedule.finished(.succeeded(id: "20261204T123000.250Z-1a2b3c4d"), now: 5_000_000_000)
        _ = schedule.tick(now: 60_000_000_000, mayWrite: true)
        schedule.finished(.failed("exit status 1: \"bucket\" not found"), now: 61_000_000_000)
        return schedule
    }

    /// A sync with two passes done (the last left writes behind) and one failed since.
    private static var syncing: SyncSchedule {
        var schedule = SyncSchedule()
        let target = SyncTarget(name: "wp-7-cpu-1", host: "10.88.0.5", path: "/data", identity: "k", hostKey: "ssh-ed25519 AAAA", epoch: 3)
        _ = schedule.targetRead(.target(target), now: 0)
        for pass in 1...2 {
            _ = schedule.tick(now: Int64(pass) * 10_000_000_000, leaseEpoch: 3)
            schedule.finished(pass: pass, .succeeded(SyncSchedule.PassResult(
                startedAtWallMilliseconds: 1_780_000_000_000 + Int64(pass), finishedAtWallMilliseconds: 1_780_000_001_500,
                files: 12, bytes: 34_567_890, sentBytes: pass == 1 ? nil : 4_321, pendingFiles: Int64(pass), pendingBytes: 77,
                pendingTruncated: pass == 2)), now: Int64(pass) * 10_000_000_000 + 1_234_567_890)
        }
        _ = schedule.tick(now: 30_000_000_000, leaseEpoch: 3)
        schedule.finished(pass: 3, .failed("rsync exit status 255: ssh: connect to host 10.88.0.5 port 22: Connection refused"), now: 31_000_000_000)
        return schedule
    }

    private static var syncOff: SyncSchedule {
        var schedule = SyncSchedule()
        _ = schedule.targetRead(.malformed("sync target: \"epoch\" is missing"), now: 0)
        return schedule
    }

    static let documents: [TelemetryDocument] = [
        // Probes not in yet.
        TelemetryDocument(
            agentID: "gpu-77-a", instanceID: 456_789, machineID: 77, role: "primary", version: "0.1.0", epoch: 0,
            fencedAtEpoch: nil, workload: "unknown", volume: nil, gpu: nil),
        // A healthy GPU host.
        TelemetryDocument(
            agentID: "gpu-77-a", instanceID: 456_789, machineID: 77, role: "primary", version: "0.1.0", epoch: 12,
            fencedAtEpoch: nil, workload: "running", volume: volume,
            gpu: GPUReport(available: true, problem: nil, driverVersion: "550.54.15", gpus: [gpu, sparseGPU]),
            sshHostKey: "SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU",
            checkpoint: CheckpointTelemetry(
                CheckpointReport(pattern: "/data/checkpoints/**", files: 3, newestPath: "run-1/step_900.pt",
                                 newestModifiedNanoseconds: 1_000_000_000_000, truncated: true),
                wallNow: 1_012_500_000_000),
            snapshot: SnapshotTelemetry(Self.schedule, now: 95_000_000_000)),
        // Fenced, no NVML, a sick volume, extreme numbers.
        TelemetryDocument(
            agentID: "A.b_c-9", instanceID: .max, machineID: 0, role: "standby", version: "0.1.0", epoch: .max,
            fencedAtEpoch: .max - 1, fence: "final", workload: "fenced",
            volume: VolumeReport(
                path: "/mnt/shared volume/", mounted: false, volumeID: nil, idMatches: false, writable: false,
                freeBytes: 0, problem: "not a mount point: /mnt/shared volume/", epoch: .max),
            gpu: .unavailable("libnvidia-ml.so.1: cannot open shared object file: No such file or directory")),
        // No GPUs at all.
        TelemetryDocument(
            agentID: "x", instanceID: 1, machineID: 2, role: "primary", version: "0.1.0", epoch: 3, fencedAtEpoch: 0,
            workload: "stopped", volume: volume, gpu: GPUReport(available: true, problem: nil, driverVersion: nil, gpus: []),
            checkpoint: CheckpointTelemetry(CheckpointReport(pattern: "/data/ckpt/*.pt", files: 0, problem: "cannot read /data/ckpt: Permission denied"),
                                            wallNow: 5),
            snapshot: SnapshotTelemetry(SnapshotSchedule(intervalNanoseconds: 3_600_000_000_000), now: 1)),
        // Syncing to a CPU standby, failing now; and a sync target that cannot be used.
        TelemetryDocument(
            agentID: "gpu-77-a", instanceID: 456_789, machineID: 77, role: "primary", version: "0.1.0", epoch: 3,
            fencedAtEpoch: nil, workload: "running", volume: volume, gpu: nil, sync: SyncTelemetry(Self.syncing, now: 33_000_000_000)),
        TelemetryDocument(
            agentID: "gpu-77-a", instanceID: 456_789, machineID: 77, role: "primary", version: "0.1.0", epoch: 3,
            fencedAtEpoch: nil, workload: "running", volume: nil, gpu: nil, sync: SyncTelemetry(Self.syncOff, now: 5)),
    ]

    @Test(arguments: documents)
    func matchesJSONEncoder(_ document: TelemetryDocument) throws {
        let ours = document.json()
        #expect(String(decoding: ours, as: UTF8.self) == String(decoding: try foundationBytes(document), as: UTF8.self))
    }

    /// Every ASCII character, and some beyond, in every string field position that takes free text.
    @Test func escapesStringsAsJSONEncoderDoes() throws {
        let ascii = String(decoding: (0..<128).map { UInt8($0) }, as: UTF8.self)
        let samples = [
            ascii, "", "\"quoted\" \\ back/slash", "tab\there\nnewline\r\u{0C}\u{08}", "é ü ß 日本語 🎉 \u{2028}\u{2029}",
            "\u{7F}\u{80}\u{FEFF}", "e\u{301}",
        ]
        for sample in samples {
            let document = TelemetryDocument(
                agentID: sample, instanceID: 1, machineID: 2, role: sample, version: sample, epoch: 3, fencedAtEpoch: nil,
                workload: sample,
                volume: VolumeReport(
                    path: sample, mounted: true, volumeID: sample, idMatches: true, writable: true, freeBytes: 5,
                    problem: sample),
                gpu: GPUReport(
                    available: false, problem: sample, driverVersion: sample,
                    gpus: [GPUInfo(
                        index: -1, name: sample, uuid: sample, temperatureCelsius: -40, utilizationPercent: 0,
                        memoryTotalBytes: 0, memoryUsedBytes: .max, eccUncorrectedVolatile: nil, xidCriticalErrors: .min,
                        lastXid: nil, healthy: true)]))
            #expect(document.json() == (try foundationBytes(document)), "\(sample.debugDescription)")
        }
    }

    @Test func isValidJSON() throws {
        for document in Self.documents {
            let parsed = try JSONSerialization.jsonObject(with: Data(document.json())) as? [String: Any]
            #expect(parsed?["agent_id"] as? String == document.agentID)
        }
    }
}
