import Foundation
import Logging
import Testing
import WarmpoolHTTP
import WarmpoolTestSupport
@testable import WarmpoolStorage

#if canImport(Glibc)
import Glibc
#endif

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

    /// The snapshot locks age each other on the store's clock: a listing carries it.
    @Test func listingsCarryTheStoresTimes() async throws {
        let server = try MotoServer()
        let s3 = client(server)
        try await s3.createBucket()
        let before = Date().addingTimeInterval(-5)
        try await s3.put("locks/a", Array("{}".utf8))
        try await s3.put("locks/b", data: Data("{}".utf8))
        let listed = try await s3.list(prefix: "locks/")
        #expect(listed.map(\.key) == ["locks/a", "locks/b"])
        for object in listed {
            let written = try #require(object.lastModified, "\(object.key) listed without LastModified")
            #expect(written > before && written < Date().addingTimeInterval(5), "\(written)")
        }
        #expect(try await s3.getData("locks/b") == Data("{}".utf8))
    }

    @Test func anUnreachableStoreIsAClearErrorAfterItsRetries() async throws {
        let port = try freeLoopbackPort()
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

/// ListObjectsV2's LastModified, with and without a fraction; anything else is nil.
@Suite struct S3TimestampTests {
    @Test func parsesWhatStoresSend() {
        #expect(S3XML.timestamp("2026-12-04T12:30:00.000Z") == Date(timeIntervalSince1970: 1_796_387_400))
        #expect(S3XML.timestamp("2026-12-04T12:30:00Z") == Date(timeIntervalSince1970: 1_796_387_400))
        #expect(S3XML.timestamp("2026-12-04T12:30:00.25Z") == Date(timeIntervalSince1970: 1_796_387_400.25))
        for bad in ["", "2026-12-04", "2026-12-04T12:30:00", "2026-12-04T12:30:00.Z", "2026-12-04 12:30:00Z", "2026-1a-04T12:30:00Z"] {
            #expect(S3XML.timestamp(bad) == nil, "\(bad)")
        }
    }
}

extension MotoServer {
    var credentials: S3Credentials { S3Credentials(accessKeyID: accessKeyID, secretAccessKey: secretAccessKey) }
}
