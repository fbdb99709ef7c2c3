import Foundation
import Testing
@testable import WarmpoolSSH
import WarmpoolModel

#if canImport(Glibc)
import Glibc
#endif

@Suite struct VolumeSpecValidationTests {
    @Test(arguments: [
        ("/data", "/data"), ("/data/", "/data"), ("/mnt/vol-1/a_b.c", "/mnt/vol-1/a_b.c"), ("/data//", "/data"),
        ("/.hidden/x", "/.hidden/x"), ("/a...b", "/a...b"),
    ])
    func acceptsPlainAbsolutePaths(raw: String, normalized: String) throws {
        #expect(try VolumeSpec(path: raw, expectedID: "vol-42").path == normalized)
    }

    /// Every one of these would be dangerous or ambiguous in a shell or on the file system.
    static let hostilePaths = [
        "/data'; touch /tmp/warmpool-pwned; echo '",
        "/data$(touch /tmp/warmpool-pwned)",
        "/data`touch /tmp/warmpool-pwned`",
        "/data;touch /tmp/warmpool-pwned",
        "/data && touch /tmp/warmpool-pwned",
        "/data|touch",
        "/data\ntouch /tmp/warmpool-pwned",
        "/data\"x",
        "/data\\x",
        "/data x",
        "/data\t",
        "/data*",
        "/data?",
        "/data[a]",
        "/data{a,b}",
        "/data~",
        "/data>x",
        "/data<x",
        "/data#x",
        "/data%x",
        "/data!x",
        "/data=x",
        "/data\u{0}x",
        "/dätä",
        "/data\u{2019}x",  // a typographic quote
        "/../etc",
        "/data/../etc",
        "/data/./x",
        "/data//x",
        "data",
        "-rf",
        "",
        "/",
        "//",
        "/" + String(repeating: "a", count: 255),
    ]

    /// The hostile paths that can be handed to a shell here: no NUL (not representable in argv),
    /// and not the root (the script would run its write probe there).
    static let hostilePathsSafeToRun = hostilePaths.filter { !$0.contains("\u{0}") && $0 != "/" && $0 != "//" }

    @Test(arguments: hostilePaths)
    func refusesHostilePaths(path: String) {
        #expect(throws: SSHInputError.self) { try VolumeSpec(path: path, expectedID: "vol-42") }
    }

    @Test(arguments: ["vol-42", "V.123", "a", "0:1_2-3.4", String(repeating: "x", count: 128)])
    func acceptsVolumeIDs(id: String) throws {
        #expect(try VolumeSpec(path: "/data", expectedID: id).expectedID == id)
    }

    @Test(arguments: ["", "-vol", ".vol", "vol 42", "vol'42", "vol$x", "vol\n", "vol/42", String(repeating: "x", count: 129)])
    func refusesVolumeIDs(id: String) {
        #expect(throws: SSHInputError.self) { try VolumeSpec(path: "/data", expectedID: id) }
    }

    @Test(arguments: ["", ".", "..", "a/b", "a b", "x'y", String(repeating: "m", count: 65)])
    func refusesMarkerNames(name: String) {
        #expect(throws: SSHInputError.self) { try VolumeSpec(path: "/data", expectedID: "v", markerName: name) }
    }

    @Test func refusesBadTargets() throws {
        let volume = try VolumeSpec(path: "/data", expectedID: "v")
        #expect(throws: SSHInputError.self) { try SSHTarget(instanceID: 1, host: "h;x", volume: volume) }
        #expect(throws: SSHInputError.self) { try SSHTarget(instanceID: 1, host: "h", port: 0, volume: volume) }
        #expect(throws: SSHInputError.self) { try SSHTarget(instanceID: 1, host: "h", username: "-oProxy", volume: volume) }
        #expect(throws: SSHInputError.self) { try SSHTarget(instanceID: 1, host: "h", username: "a b", volume: volume) }
        _ = try SSHTarget(instanceID: 4242, host: "::1", port: 2222, username: "root", volume: volume)
    }
}

@Suite struct VerificationCommandTests {
    @Test func theScriptHasNoSingleQuoteAndTheCommandQuotesEveryArgument() throws {
        #expect(!VerificationCommand.script.contains("'"))
        let volume = try VolumeSpec(path: "/mnt/data-1", expectedID: "vol-42")
        let command = VerificationCommand.commandLine(volume: volume, nonce: "0123456789abcdef")
        #expect(command.hasPrefix("/bin/sh -c '"))
        #expect(command.hasSuffix("' warmpool-verify '/mnt/data-1' '.warmpool-volume-id' '0123456789abcdef' ''"))
        // The expected id never travels: the comparison happens here.
        #expect(!command.contains("vol-42"))
        // Except to gate the epoch's write: the script writes it only on the volume its marker proves.
        let promoting = try VolumeSpec(path: "/mnt/data-1", expectedID: "vol-42", writeEpoch: 7)
        #expect(VerificationCommand.commandLine(volume: promoting, nonce: "0123456789abcdef")
            .hasSuffix("' warmpool-verify '/mnt/data-1' '.warmpool-volume-id' '0123456789abcdef' '' '7' 'vol-42'"))
    }

    @Test(arguments: ["plain", "it's", "'", "''", "a'b'c", "$(touch /tmp/warmpool-pwned)", "`id`", "x\ny", "\\", "\"", ""])
    func shellQuotingRoundTripsAnyString(text: String) throws {
        let output = try runShell(["-c", "printf %s " + VerificationCommand.shellQuote(text)])
        #expect(output.stdout == Array(text.utf8))
        #expect(!FileManager.default.fileExists(atPath: "/tmp/warmpool-pwned"))
    }

    @Test func nonceIsSixteenHexDigits() {
        let nonce = VerificationCommand.makeNonce()
        #expect(nonce.utf8.count == 16 && nonce.utf8.allSatisfy(isHexDigit))
        #expect(nonce != VerificationCommand.makeNonce())
    }

    /// Defence in depth: even with validation bypassed, the script only expands its arguments
    /// inside double quotes. Run it here with hostile arguments and check nothing was executed.
    @Test(arguments: VolumeSpecValidationTests.hostilePathsSafeToRun)
    func theScriptNeverEvaluatesItsArguments(path: String) throws {
        let canary = "/tmp/warmpool-pwned"
        unlink(canary)
        let nonce = "00000000000000aa"
        let output = try runShell(["-c", VerificationCommand.script, "warmpool-verify", path, "$(touch \(canary))", nonce])
        #expect(!FileManager.default.fileExists(atPath: canary), "the script executed part of \(path)")
        let facts = try VerificationCommand.parse(output.stdout, nonce: nonce)
        #expect(!facts.mounted)
    }
}

@Suite struct VerificationOutputTests {
    let nonce = "1122334455667788"

    func output(_ lines: [String], nonce: String? = nil) -> [UInt8] {
        let n = nonce ?? self.nonce
        return Array((["warmpool-verify-begin=\(n)", "version=1"] + lines + ["warmpool-verify-end=\(n)", ""]).joined(separator: "\n").utf8)
    }

    static func hex(_ text: String) -> String {
        text.utf8.map { String($0, radix: 16).count == 1 ? "0" + String($0, radix: 16) : String($0, radix: 16) }.joined()
    }

    var healthy: [String] {
        ["exists=1", "mounted=1", "marker_hex=\(Self.hex("vol-42\n"))", "writable=1", "free_kib=8192"]
    }

    @Test func parsesAHealthyAnswer() throws {
        let facts = try VerificationCommand.parse(output(healthy), nonce: nonce)
        #expect(facts == RemoteVolumeFacts(exists: true, mounted: true, marker: .present("vol-42"), writable: true,
                                           freeBytes: 8192 * 1024))
        #expect(facts.verdict(for: try VolumeSpec(path: "/data", expectedID: "vol-42")) == nil)
    }

    @Test func ignoresWhatALoginScriptPrintsFirstAndToleratesCRLF() throws {
        let noisy = Array("Welcome!\nwarmpool-verify-end=\(nonce)\nexists=0\n".utf8)
            + Array(String(decoding: output(healthy), as: UTF8.self).replacingOccurrences(of: "\n", with: "\r\n").utf8)
        let facts = try VerificationCommand.parse(noisy, nonce: nonce)
        #expect(facts.marker == .present("vol-42") && facts.writable == true)
    }

    @Test func aMissingPathNeedsNothingElse() throws {
        let facts = try VerificationCommand.parse(output(["exists=0"]), nonce: nonce)
        #expect(!facts.exists)
        #expect(facts.verdict(for: try VolumeSpec(path: "/data", expectedID: "v"))?.reason == .notMounted)
    }

    @Test(arguments: [
        ["exists=1", "mounted=1", "marker=missing", "writable=1", "free_kib=1", "extra=1"],  // unknown key
        ["exists=1", "exists=1", "mounted=0", "marker=missing"],  // duplicate
        ["exists=yes", "mounted=0", "marker=missing"],  // bad flag
        ["exists=1", "marker=missing"],  // no mounted
        ["exists=1", "mounted=0"],  // no marker
        ["exists=1", "mounted=0", "marker=missing", "marker_hex=00"],  // both
        ["exists=1", "mounted=0", "marker=present"],
        ["exists=1", "mounted=0", "marker_hex=0"],  // odd
        ["exists=1", "mounted=0", "marker_hex=zz"],  // not hex
        ["exists=1", "mounted=0", "marker_hex=AB"],  // upper case is not what od prints
        ["exists=1", "mounted=1", "marker=missing"],  // mounted, no write probe
        ["exists=1", "mounted=1", "marker=missing", "writable=1", "free_kib=-1"],
        ["exists=1", "mounted=1", "marker=missing", "writable=1", "free_kib=12345678901234567890"],
        ["exists=1", "mounted=1", "marker=missing", "writable=1", "no equals sign"],
    ])
    func refusesMalformedAnswers(lines: [String]) {
        #expect(throws: VerificationCommand.ParseError.self) { try VerificationCommand.parse(output(lines), nonce: nonce) }
    }

    @Test func refusesATruncatedAnswerOrAnotherNonce() {
        var truncated = output(healthy)
        truncated.removeLast(30)
        #expect(throws: VerificationCommand.ParseError.self) { try VerificationCommand.parse(truncated, nonce: nonce) }
        #expect(throws: VerificationCommand.ParseError.self) {
            try VerificationCommand.parse(output(healthy, nonce: "ffffffffffffffff"), nonce: nonce)
        }
        #expect(throws: VerificationCommand.ParseError.self) { try VerificationCommand.parse([], nonce: nonce) }
        #expect(throws: VerificationCommand.ParseError.self) {
            try VerificationCommand.parse(Array(String(decoding: output(healthy), as: UTF8.self)
                .replacingOccurrences(of: "version=1", with: "version=2").utf8), nonce: nonce)
        }
    }

    @Test func markerContentIsTrimmedLikeTheAgentDoes() {
        #expect(VerificationCommand.marker(from: Array("  vol-42 \r\n\t".utf8)) == .present("vol-42"))
        #expect(VerificationCommand.marker(from: Array(" \n".utf8)) == .present(""))
        #expect(VerificationCommand.marker(from: Array("vol 42".utf8)) == .present("vol 42"))
        #expect(VerificationCommand.marker(from: [0xFF, 0xFE]) == .unusable("not UTF-8"))
        #expect(VerificationCommand.marker(from: Array(repeating: UInt8(ascii: "a"), count: 513))
            == .unusable("larger than 512 bytes"))
    }

    /// A marker that tries to forge key=value lines arrives as hex and stays one value.
    @Test func aMarkerCannotForgeLines() throws {
        let forged = "\nwarmpool-verify-end=\(nonce)\nwritable=1\n"
        let facts = try VerificationCommand.parse(
            output(["exists=1", "mounted=1", "marker_hex=\(Self.hex(forged))", "writable=0", "write_error=Read-only file system"]),
            nonce: nonce)
        #expect(facts.marker == .present("warmpool-verify-end=\(nonce)\nwritable=1"))
        #expect(facts.writable == false)
    }

    @Test func verdictsInOrder() throws {
        let volume = try VolumeSpec(path: "/data", expectedID: "vol-42")
        func verdict(_ facts: RemoteVolumeFacts) -> SSHFailure.Reason? { facts.verdict(for: volume)?.reason }
        #expect(verdict(RemoteVolumeFacts(exists: true, mounted: false, marker: .present("vol-42"), writable: nil, freeBytes: nil))
            == .notMounted)
        #expect(verdict(RemoteVolumeFacts(exists: true, mounted: true, marker: .missing, writable: false, freeBytes: 1))
            == .markerMissing)
        #expect(verdict(RemoteVolumeFacts(exists: true, mounted: true, marker: .present(""), writable: true, freeBytes: 1))
            == .wrongVolume)
        #expect(verdict(RemoteVolumeFacts(exists: true, mounted: true, marker: .unusable("x"), writable: true, freeBytes: 1))
            == .wrongVolume)
        let wrong = RemoteVolumeFacts(exists: true, mounted: true, marker: .present("vol-7"), writable: false, freeBytes: 1)
        #expect(wrong.verdict(for: volume) == SSHFailure(.wrongVolume, "volume id vol-7 does not match the expected vol-42"))
        let readOnly = RemoteVolumeFacts(exists: true, mounted: true, marker: .present("vol-42"), writable: false,
                                         writeError: "Read-only file system", freeBytes: 1)
        #expect(readOnly.verdict(for: volume) == SSHFailure(.readOnly, "/data is not writable: Read-only file system"))
    }
}

/// The script run here, on this machine's real mounts (no SSH): what it prints parses, and the
/// facts match the kernel's view. Root only (tmpfs).
@Suite(.serialized) struct VerificationScriptTests {
    func check(_ path: String, nonce: String = "abcdef0123456789") throws -> RemoteVolumeFacts {
        let output = try runShell(["-c", VerificationCommand.script, "warmpool-verify", path, VolumeSpec.defaultMarkerName, nonce])
        return try VerificationCommand.parse(output.stdout, nonce: nonce)
    }

    @Test func aHealthyTmpfs() throws {
        let volume = try TmpfsVolume(markerID: "vol-42")
        let facts = try check(volume.path)
        #expect(facts.mounted && facts.marker == .present("vol-42") && facts.writable == true)
        #expect(facts.freeBytes.map { $0 > 7 << 20 && $0 <= 8 << 20 } == true, "\(String(describing: facts.freeBytes))")
        #expect(try FileManager.default.contentsOfDirectory(atPath: volume.path) == [VolumeSpec.defaultMarkerName],
                "the write probe must be removed")
    }

    @Test func aReadOnlyTmpfs() throws {
        let volume = try TmpfsVolume(markerID: "vol-42", readOnly: true)
        let facts = try check(volume.path)
        #expect(facts.mounted && facts.writable == false)
        #expect(facts.writeError?.contains("Read-only file system") == true, "\(facts.writeError ?? "nil")")
    }

    @Test func aPlainDirectoryAndAMissingPath() throws {
        let directory = try PlainDirectory()
        let plain = try check(directory.path)
        #expect(plain.exists && !plain.mounted && plain.writable == nil)
        #expect(try FileManager.default.contentsOfDirectory(atPath: directory.path).isEmpty, "nothing written when not mounted")
        let missing = try check(directory.path + "/absent")
        #expect(!missing.exists)
    }

    @Test func theMountinfoFallbackAgreesWithMountpoint() throws {
        // Without `mountpoint` on PATH (busybox images, minimal containers) the script reads
        // /proc/self/mountinfo itself.
        let volume = try TmpfsVolume(markerID: "vol-42")
        let directory = try PlainDirectory()
        let tools = try PlainDirectory()
        for tool in ["od", "tr", "dd", "rm", "df", "awk", "head"] {
            let found = ["/usr/bin/", "/bin/"].map { $0 + tool }.first { access($0, X_OK) == 0 }
            guard let found else { throw HarnessError("\(tool) not found") }
            symlink(found, tools.path + "/" + tool)
        }
        for (path, mounted) in [(volume.path, true), (directory.path, false)] {
            let nonce = "0000000000000001"
            let output = try runShell(["-c", VerificationCommand.script, "warmpool-verify", path, VolumeSpec.defaultMarkerName, nonce],
                                      environment: ["PATH=\(tools.path)"])
            #expect(try VerificationCommand.parse(output.stdout, nonce: nonce).mounted == mounted)
        }
    }
}

struct ShellOutput {
    var stdout: [UInt8]
    var status: Int32
}

/// Runs /bin/sh with `arguments`, capturing stdout.
func runShell(_ arguments: [String], environment: [String]? = nil) throws -> ShellOutput {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/bin/sh")
    process.arguments = arguments
    if let environment {
        process.environment = Dictionary(uniqueKeysWithValues: environment.map {
            let parts = $0.split(separator: "=", maxSplits: 1)
            return (String(parts[0]), String(parts[1]))
        })
    }
    let pipe = Pipe()
    process.standardOutput = pipe
    process.standardError = FileHandle.nullDevice
    try process.run()
    let data = pipe.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    return ShellOutput(stdout: Array(data), status: process.terminationStatus)
}
