import Foundation
import Logging
import Testing
import WarmpoolHTTP
import WarmpoolTestSupport
@testable import WarmpoolStorage

#if canImport(Glibc)
import Glibc
#endif

/// A real S3 server on loopback: moto's standalone server from Scripts/setup's venv, started so
/// that it authenticates every request after the three that make our user (it checks SigV4
/// signatures with its own implementation). What our client writes, boto3 reads, and the other
/// way round.
final class MotoServer {
    static let venv = "/opt/warmpool-venv/bin"
    let url: String
    let credentials: S3Credentials
    /// Spawned directly, not with Foundation's Process, whose waitUntilExit waits for every
    /// descriptor the child inherited to close (the server's threads keep them).
    private let pid: pid_t

    init() throws {
        guard FileManager.default.isExecutableFile(atPath: Self.venv + "/moto_server") else {
            throw HarnessError("\(Self.venv)/moto_server is missing: run Scripts/setup")
        }
        let port = try Self.freePort()
        url = "http://127.0.0.1:\(port)"
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, NSTemporaryDirectory() + "warmpool-moto-\(port).log", O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        posix_spawn_file_actions_adddup2(&actions, 1, 2)
        let arguments = [Self.venv + "/moto_server", "-H", "127.0.0.1", "-p", "\(port)"]
        let environment = ProcessInfo.processInfo.environment.merging(["INITIAL_NO_AUTH_ACTION_COUNT": "3"]) { $1 }.map { "\($0.key)=\($0.value)" }
        let argv = arguments.map { strdup($0) } + [nil]
        let envp = environment.map { strdup($0) } + [nil]
        defer { (argv + envp).forEach { free($0) } }
        var child: pid_t = 0
        guard posix_spawn(&child, arguments[0], &actions, nil, argv, envp) == 0 else { throw HarnessError("cannot start moto_server") }
        pid = child
        let deadline = Date().addingTimeInterval(20)
        while !Self.accepts(port: port) {
            guard Date() < deadline, waitpid(child, nil, WNOHANG) == 0 else {
                kill(child, SIGKILL)
                throw HarnessError("moto_server did not start on \(port)")
            }
            usleep(50_000)
        }
        do {
            let words = try Self.peer(["bootstrap", url]).split(whereSeparator: \.isWhitespace).map(String.init)
            guard words.count == 2 else { throw HarnessError("s3-peer bootstrap printed \(words)") }
            credentials = S3Credentials(accessKeyID: words[0], secretAccessKey: words[1])
        } catch {
            kill(child, SIGKILL)
            waitpid(child, nil, 0)
            throw error
        }
    }

    deinit {
        // The server's werkzeug ignores SIGTERM.
        kill(pid, SIGKILL)
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
    }

    /// Runs Scripts/s3-peer (boto3) and returns what it printed.
    @discardableResult
    static func peer(_ arguments: [String]) throws -> String {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        return try Command.runChecked(venv + "/python", [root.path + "/Scripts/s3-peer"] + arguments)
    }

    static func freePort() throws -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let ok = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) == 0 && getsockname(fd, $0, &length) == 0 }
        }
        guard ok else { throw HarnessError("no free port") }
        return Int(UInt16(bigEndian: address.sin_port))
    }

    static func accepts(port: Int) -> Bool {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port)).bigEndian
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        return withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0 }
        }
    }
}

@Suite(.serialized) struct S3InteropTests {
    func client(_ server: MotoServer, secret: String? = nil, prefix: String = "wp/pool 12/", attempts: Int = 3) -> S3Client {
        var credentials = server.credentials
        if let secret { credentials.secretAccessKey = secret }
        return S3Client(
            configuration: .init(endpoint: server.url, region: "us-east-1", bucket: "warmpool-test", prefix: prefix,
                                 credentials: credentials, attempts: attempts, backoff: .milliseconds(10)),
            http: HTTPClient(), logger: Logger(label: "test.s3"))
    }

    static func sha256Hex(_ bytes: [UInt8]) -> String { SigV4Signer.payloadHash(bytes) }

    @Test func whatWeWriteBoto3ReadsAndTheOtherWayRound() async throws {
        let server = try MotoServer()
        let s3 = client(server)
        try await s3.createBucket()
        try await s3.createBucket()  // again: already ours is success

        // Keys with characters SigV4 must encode exactly as the server does.
        let keys = ["chunks/ab/abcdef", "odd key+with=signs&more ~ä.bin", "deep/a/b/c/d.json"]
        var written: [String: [UInt8]] = [:]
        for (index, key) in keys.enumerated() {
            let bytes = (0..<(1000 * (index + 1))).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ index) }
            try await s3.put(key, bytes)
            written[key] = bytes
            let (hash, size) = try Self.peerSHA256(server, "wp/pool 12/" + key)
            #expect(hash == Self.sha256Hex(bytes) && size == bytes.count, "boto3 reads \(key) as we wrote it")
            #expect(try await s3.get(key) == bytes)
            #expect(try await s3.size(of: key) == Int64(bytes.count))
        }
        #expect(try await s3.list().map(\.key) == keys.sorted())
        #expect(try await s3.list(prefix: "deep/").map(\.key) == ["deep/a/b/c/d.json"])

        // boto3 writes (multipart, 9 MiB), we read.
        let file = NSTemporaryDirectory() + "warmpool-s3-\(getpid())"
        let theirs = (0..<(9 << 20)).map { UInt8(truncatingIfNeeded: $0 ^ ($0 >> 11)) }
        try Data(theirs).write(to: URL(fileURLWithPath: file))
        defer { try? FileManager.default.removeItem(atPath: file) }
        try MotoServer.peer(["put", server.url, server.credentials.accessKeyID, server.credentials.secretAccessKey, "warmpool-test",
                             "wp/pool 12/from-boto3", file])
        #expect(try await s3.get("from-boto3") == theirs)

        // Our multipart upload, pulled part by part: 5 + 5 + 2 MiB.
        var parts = [5 << 20, 5 << 20, 2 << 20].enumerated().map { index, size in
            (0..<size).map { UInt8(truncatingIfNeeded: $0 &+ index &* 7) }
        }
        let whole = parts.flatMap { $0 }
        try await s3.putMultipart("big/object") { parts.isEmpty ? nil : parts.removeFirst() }
        let (hash, size) = try Self.peerSHA256(server, "wp/pool 12/big/object")
        #expect(hash == Self.sha256Hex(whole) && size == whole.count)

        try await s3.delete(keys[0])
        await #expect(throws: S3Error.notFound(key: keys[0])) { try await s3.get(keys[0]) }
        #expect(try await s3.size(of: keys[0]) == nil)
    }

    @Test func aWrongSecretIsRefused() async throws {
        let server = try MotoServer()
        try await client(server).createBucket()
        let wrong = client(server, secret: "not-the-secret", attempts: 3)
        await #expect(throws: S3Error.self) { try await wrong.put("x", [1, 2, 3]) }
        do {
            _ = try await wrong.get("x")
            Issue.record("a wrong secret read an object")
        } catch let S3Error.rejected(status, code, _) {
            #expect(status == 403 && code == "SignatureDoesNotMatch")
        }
        #expect(try await client(server).list().isEmpty, "nothing was written with the wrong secret")
    }

    @Test func anUnreachableStoreIsAClearErrorAfterItsRetries() async throws {
        let port = try MotoServer.freePort()
        let s3 = S3Client(
            configuration: .init(endpoint: "http://127.0.0.1:\(port)", region: "us-east-1", bucket: "b-nowhere",
                                 credentials: S3Credentials(accessKeyID: "a", secretAccessKey: "b"), attempts: 3, backoff: .milliseconds(10)),
            http: HTTPClient(), logger: Logger(label: "test.s3"))
        do {
            _ = try await s3.get("x")
            Issue.record("nothing listens, yet an answer came")
        } catch let S3Error.unreachable(detail) {
            #expect(detail.contains("curl error 7"), "\(detail)")
        }
    }

    static func peerSHA256(_ server: MotoServer, _ key: String) throws -> (String, Int) {
        let words = try MotoServer.peer(["sha256", server.url, server.credentials.accessKeyID, server.credentials.secretAccessKey,
                                         "warmpool-test", key]).split(whereSeparator: \.isWhitespace)
        return (String(words.first ?? ""), Int(words.last ?? "") ?? -1)
    }
}
