import Foundation
import Testing
import WarmpoolJSON
import WarmpoolTestSupport

#if canImport(Glibc)
import Glibc
#endif

/// The SSH client's name lookup has a deadline (issue 20): glibc's resolver waits 5 s per
/// nameserver and try, and a dead DNS server held a verification thread that long or longer.
/// The real `warmpool-sshcheck` runs in a mount namespace whose /etc/resolv.conf names a
/// nameserver that takes every query and never answers.
@Suite(.serialized) struct SSHResolverTests {
    @Test func aNameServerThatNeverAnswersCostsAVerificationItsDeadlineOnly() throws {
        guard getuid() == 0 else { throw HarnessError("needs root for the mount namespace and port 53 (CI runs as root)") }
        let binaries = try Harness.findBinaries()
        let directory = NSTemporaryDirectory() + "warmpool-resolver-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        // A UDP socket that reads nothing: queries sit in its buffer, no ICMP says "unreachable".
        let silent = socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
        defer { close(silent) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(53).bigEndian
        address.sin_addr.s_addr = inet_addr("127.0.0.77")
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(silent, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        try #require(bound == 0, "cannot bind 127.0.0.77:53: errno \(errno)")
        try "nameserver 127.0.0.77\noptions timeout:30 attempts:1\n".write(toFile: directory + "/resolv.conf", atomically: true, encoding: .utf8)
        _ = try Command.runChecked("/usr/bin/ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-f", directory + "/key"])

        let started = Date()
        let (status, output) = try Command.run("/usr/bin/unshare", [
            "--mount", "--propagation", "private", "/bin/sh", "-c",
            "mount --bind \"$1\" /etc/resolv.conf && exec \"$2\" verify --host wp-resolver-test.example --port 22 --identity \"$3\" --instance-id 77 --volume-id v --pin SHA256:" + String(repeating: "A", count: 43) + " --timeout-ms 1000",
            "sh", directory + "/resolv.conf", binaries + "/warmpool-sshcheck", directory + "/key",
        ])
        let took = Date().timeIntervalSince(started)
        #expect(status == 1, "\(output)")
        let line = try #require(output.split(separator: "\n").first(where: { $0.hasPrefix("{") }), "\(output)")
        let result = try JSONValue.parse(String(line))
        #expect(result["reason"]?.stringValue == "timeout", "\(line)")
        #expect(result["detail"]?.stringValue == "resolving wp-resolver-test.example did not finish in time", "\(line)")
        #expect(took < 10, "the lookup held the verification \(took) s, past its 1 s deadline")
    }
}
