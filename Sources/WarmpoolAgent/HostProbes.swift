#if canImport(Glibc)
import Glibc
#endif
import WarmpoolModel
import WarmpoolWire

/// Everything the probes learned in one pass, stamped with when (agent monotonic clock).
public struct ProbeReport: Sendable {
    public var takenAt: Int64
    public var volume: VolumeReport
    public var gpu: GPUReport
    public var workload: WorkloadState
    /// The SHA-256 fingerprint of this instance's sshd ed25519 host key, read from its public key
    /// file; nil when the file is absent or unreadable (sshd may not have made it yet).
    public var sshHostKey: String? = nil
    /// The workload's newest checkpoint file; nil when no checkpoint pattern is configured.
    public var checkpoint: CheckpointReport? = nil
}

/// Runs the blocking probes (fsync on the volume, NVML calls, a pid check). Owned by one probe
/// thread; never called on an event loop.
public final class HostProbes {
    private let volume: VolumeProbe
    private let nvml: NVMLProbe?
    private let nvmlProblem: String?
    private let workloadPIDFile: String?
    private let sshHostKeyPath: String?
    private let checkpoints: CheckpointProbe?

    /// `nvmlLibrary` nil disables the GPU probe; a library that fails to load is reported, not fatal.
    public init(volume: VolumeProbe, nvmlLibrary: String?, workloadPIDFile: String?, sshHostKeyPath: String? = nil,
                checkpointPattern: CheckpointPattern? = nil) {
        self.volume = volume
        self.workloadPIDFile = workloadPIDFile
        self.sshHostKeyPath = sshHostKeyPath
        self.checkpoints = checkpointPattern.map(CheckpointProbe.init(pattern:))
        if let nvmlLibrary {
            do {
                nvml = try NVMLProbe(library: nvmlLibrary)
                nvmlProblem = nil
            } catch {
                nvml = nil
                nvmlProblem = "\(error)"
            }
        } else {
            nvml = nil
            nvmlProblem = "GPU probe disabled"
        }
    }

    public func probe() -> ProbeReport {
        ProbeReport(
            takenAt: MonotonicClock.now(), volume: volume.probe(),
            gpu: nvml?.probe() ?? .unavailable(nvmlProblem ?? "NVML not loaded"), workload: workloadState(),
            sshHostKey: sshHostKeyPath.flatMap(Self.hostKeyFingerprint(publicKeyFile:)), checkpoint: checkpoints?.probe())
    }

    /// What `ssh-keygen -l -E sha256 -f FILE` prints as the key's fingerprint, for an ed25519
    /// public key file. The controller pins it for this instance before its first SSH contact:
    /// the key sshd presents must then be the one this agent, authenticated by its secret, saw.
    static func hostKeyFingerprint(publicKeyFile path: String) -> String? {
        guard let bytes = readSmallFile(path, limit: 16 << 10),
            let blob = HostKeyFingerprint.publicKeyBlob(openSSHLine: String(decoding: bytes, as: UTF8.self))
        else { return nil }
        return HostKeyFingerprint.sha256(digest: SHA256Hasher.hash(blob).bytes)
    }

    /// Running when the pid file names a live process, stopped when it names none; unknown when
    /// no pid file is configured.
    private func workloadState() -> WorkloadState {
        guard let workloadPIDFile else { return .unknown }
        guard let bytes = readSmallFile(workloadPIDFile, limit: 64),
            let pid = Int32(String(decoding: bytes, as: UTF8.self).trimmingWhitespace()), pid > 0
        else { return .stopped }
        return kill(pid, 0) == 0 || errno == EPERM ? .running : .stopped
    }
}

extension AgentStatus {
    /// The heartbeat summary of a probe report and the lease state. A report older than
    /// `staleAfter` vouches for nothing: a hung volume must not look healthy.
    public init(report: ProbeReport?, now: Int64, staleAfter: Int64, holdsLease: Bool, fenced: Bool) {
        self.init()
        if holdsLease { flags.insert(.leaseHeld) }
        if fenced { flags.insert(.fenced) }
        guard let report, now - report.takenAt <= staleAfter else {
            workload = fenced ? .fenced : .unknown
            return
        }
        if report.volume.mounted { flags.insert(.volumeMounted) }
        if report.volume.idMatches { flags.insert(.volumeIDMatches) }
        if report.volume.writable { flags.insert(.volumeWritable) }
        volumeFreeMebibytes = UInt32(min(UInt64(UInt32.max), report.volume.freeBytes >> 20))
        if report.gpu.available { flags.insert(.gpuProbeAvailable) }
        let gpus = report.gpu.gpus
        gpuCount = UInt8(min(255, gpus.count))
        gpuHealthyCount = UInt8(min(255, gpus.count { $0.healthy }))
        if gpus.contains(where: { !$0.healthy }) { flags.insert(.gpuErrors) }
        if let hottest = gpus.compactMap(\.temperatureCelsius).max() { gpuMaxTemperatureCelsius = UInt8(min(254, hottest)) }
        if let busiest = gpus.compactMap(\.utilizationPercent).max() { gpuMaxUtilizationPercent = UInt8(min(100, busiest)) }
        workload = fenced ? .fenced : report.workload
    }
}
