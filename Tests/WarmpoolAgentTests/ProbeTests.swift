import Foundation
import Testing
import WarmpoolTestSupport
import WarmpoolWire
@testable import WarmpoolAgent

@Suite struct MountInfoTests {
    @Test func readsMountPointsAndUndoesEscapes() {
        let text = """
            22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/vda rw
            98 22 0:50 / /data rw,relatime shared:40 - tmpfs tmpfs rw,size=65536k
            99 22 0:51 / /mnt/with\\040space rw - tmpfs tmpfs rw

            """
        let points = VolumeProbe.mountPoints(inMountInfo: Array(text.utf8))
        #expect(points == ["/", "/data", "/mnt/with space"])
    }

    @Test func aTruncatedEscapeIsKeptLiterally() {
        #expect(VolumeProbe.unescapeOctal(Array("/a\\04".utf8)) == "/a\\04")
        #expect(VolumeProbe.unescapeOctal(Array("/a\\134b".utf8)) == "/a\\b")
    }
}

/// The volume probe against real mounts: the tests run as root, as CI does.
@Suite(.serialized) struct VolumeProbeTests {
    let isRoot = getuid() == 0

    func withTmpfs(readOnly: Bool = false, _ body: (String) throws -> Void) throws {
        let volume = try TmpfsVolume(markerID: "vol-42", readOnly: readOnly)
        try withExtendedLifetime(volume) { try body(volume.path) }
    }

    @Test func aHealthyVolumePassesEveryCheck() throws {
        try #require(isRoot, "needs root to mount tmpfs")
        try withTmpfs { path in
            let report = VolumeProbe(path: path + "/", expectedID: "vol-42").probe()
            #expect(report.mounted)
            #expect(report.volumeID == "vol-42")
            #expect(report.idMatches)
            #expect(report.writable)
            #expect(report.freeBytes > 7 << 20 && report.freeBytes <= 8 << 20)
            #expect(report.problem == nil)
            let left = try FileManager.default.contentsOfDirectory(atPath: path + "/" + VolumeProbe.probeDirectoryName)
            #expect(left.isEmpty, "the probe file is removed: \(left)")
        }
    }

    @Test func linksPlantedOnTheVolumeAreNeverFollowed() throws {
        try #require(isRoot, "needs root to mount tmpfs")
        let outside = try PlainDirectory()
        let victim = outside.path + "/victim"
        try "keep me\n".write(toFile: victim, atomically: false, encoding: .utf8)
        try withTmpfs { path in
            // The workload can write the volume: it points the marker and the agent's probe directory elsewhere.
            try FileManager.default.removeItem(atPath: path + "/.warmpool-volume-id")
            try FileManager.default.createSymbolicLink(atPath: path + "/.warmpool-volume-id", withDestinationPath: victim)
            try FileManager.default.createSymbolicLink(atPath: path + "/" + VolumeProbe.probeDirectoryName, withDestinationPath: outside.path)
            let report = VolumeProbe(path: path, expectedID: "vol-42").probe()
            #expect(report.volumeID == nil && !report.writable)
            #expect(report.problem == "the volume-id marker \(path)/.warmpool-volume-id is a symbolic link: not followed")
        }
        #expect(try String(contentsOfFile: victim, encoding: .utf8) == "keep me\n")
        #expect(try FileManager.default.contentsOfDirectory(atPath: outside.path) == ["victim"], "nothing written through the link")
    }

    @Test func aWrongVolumeIsCaught() throws {
        try #require(isRoot, "needs root to mount tmpfs")
        try withTmpfs { path in
            let report = VolumeProbe(path: path, expectedID: "vol-7").probe()
            #expect(report.mounted && !report.idMatches)
            #expect(report.problem == "volume id vol-42 does not match the expected vol-7")
        }
    }

    @Test func aReadOnlyVolumeIsCaught() throws {
        try #require(isRoot, "needs root to mount tmpfs")
        try withTmpfs(readOnly: true) { path in
            let report = VolumeProbe(path: path, expectedID: "vol-42").probe()
            #expect(report.mounted && report.idMatches && !report.writable)
            #expect(report.problem == "\(path) is not writable")
        }
    }

    @Test func aPlainDirectoryIsNotAMountPoint() throws {
        let directory = try PlainDirectory()
        let report = VolumeProbe(path: directory.path).probe()
        #expect(!report.mounted)
        #expect(report.volumeID == nil)
        #expect(report.freeBytes > 0, "an existing directory has free space to report")
        #expect(report.problem == "\(directory.path) is not a mount point")
        withExtendedLifetime(directory) {}
    }

    @Test func aMissingPathReportsEverythingFalse() {
        let report = VolumeProbe(path: "/nonexistent/warmpool").probe()
        #expect(!report.mounted && !report.writable && report.freeBytes == 0)
    }
}

@Suite struct GPUProbeTests {
    @Test func withoutNVMLTheProbeSaysSoAndCarriesOn() {
        let probes = HostProbes(
            volume: VolumeProbe(path: "/nonexistent"), nvmlLibrary: "libnvidia-ml-absent.so.1", workloadPIDFile: nil)
        let report = probes.probe()
        #expect(!report.gpu.available)
        #expect(report.gpu.gpus.isEmpty)
        let problem = report.gpu.problem ?? ""
        #expect(problem.hasPrefix("NVML not available: libnvidia-ml-absent.so.1"), "\(problem)")
    }

    @Test func aLibraryWithoutNVMLSymbolsIsRefusedCleanly() {
        // libzstd is on every test machine and exports no nvml* symbol.
        #expect(throws: NVMLProbe.LoadError.missingSymbol("nvmlInit_v2")) {
            _ = try NVMLProbe(library: "libzstd.so.1")
        }
    }
}

@Suite struct StatusSummaryTests {
    static let ms: Int64 = 1_000_000

    func report(takenAt: Int64) -> ProbeReport {
        ProbeReport(
            takenAt: takenAt,
            volume: VolumeReport(path: "/data", mounted: true, volumeID: "v", idMatches: true, writable: true,
                                 freeBytes: 5 << 30),
            gpu: GPUReport(available: true, problem: nil, driverVersion: "550", gpus: [
                GPUInfo(index: 0, temperatureCelsius: 50, utilizationPercent: 10, xidCriticalErrors: 0, healthy: true),
                GPUInfo(index: 1, temperatureCelsius: 71, utilizationPercent: 99, eccUncorrectedVolatile: 2,
                        xidCriticalErrors: 0, healthy: false),
            ]),
            workload: .running)
    }

    @Test func summarisesAFreshReport() {
        let status = AgentStatus(report: report(takenAt: 0), now: 100 * Self.ms, staleAfter: 3_000 * Self.ms,
                                 holdsLease: true, fenced: false)
        #expect(status.flags == [.volumeMounted, .volumeIDMatches, .volumeWritable, .gpuProbeAvailable, .gpuErrors, .leaseHeld])
        #expect(status.gpuCount == 2 && status.gpuHealthyCount == 1)
        #expect(status.gpuMaxTemperatureCelsius == 71 && status.gpuMaxUtilizationPercent == 99)
        #expect(status.volumeFreeMebibytes == 5 * 1024)
        #expect(status.workload == .running)
    }

    @Test func aStaleReportVouchesForNothing() {
        let status = AgentStatus(report: report(takenAt: 0), now: 4_000 * Self.ms, staleAfter: 3_000 * Self.ms,
                                 holdsLease: false, fenced: true)
        #expect(status.flags == [.fenced])
        #expect(status.workload == .fenced)
        #expect(status.gpuMaxTemperatureCelsius == AgentStatus.unknownByte)
    }
}

/// The fingerprint the agent reports for its sshd's key is the one `ssh-keygen -l` prints for
/// the same file, and the one an SSH client sees (issue 20: the controller pins it before its
/// first contact).
@Suite struct HostKeyProbeTests {
    @Test func theReportedFingerprintIsWhatSSHKeygenPrints() throws {
        let directory = NSTemporaryDirectory() + "warmpool-hostkey-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        for index in 0..<3 {
            let key = directory + "/ssh_host_ed25519_key_\(index)"
            _ = try Command.runChecked("/usr/bin/ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-C", "host \(index)", "-f", key])
            let printed = try Command.runChecked("/usr/bin/ssh-keygen", ["-l", "-E", "sha256", "-f", key + ".pub"])
            let expected = String(printed.split(separator: " ")[1])
            #expect(HostProbes.hostKeyFingerprint(publicKeyFile: key + ".pub") == expected)
        }
        let rsa = directory + "/ssh_host_rsa_key"
        _ = try Command.runChecked("/usr/bin/ssh-keygen", ["-q", "-t", "rsa", "-b", "2048", "-N", "", "-f", rsa])
        #expect(HostProbes.hostKeyFingerprint(publicKeyFile: rsa + ".pub") == nil, "only ed25519 is reported")
        #expect(HostProbes.hostKeyFingerprint(publicKeyFile: directory + "/missing.pub") == nil)
    }
}
