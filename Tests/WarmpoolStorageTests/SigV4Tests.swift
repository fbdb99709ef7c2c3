import Foundation
import Testing
@testable import WarmpoolStorage

/// The signer against the worked examples of AWS's S3 documentation ("Authenticating Requests:
/// Using the Authorization Header", examples for GET Object with a range, PUT Object, GET Bucket
/// lifecycle and list objects). The real check is the S3 server's, in S3InteropTests.
@Suite struct SigV4Tests {
    let signer = SigV4Signer(
        credentials: S3Credentials(accessKeyID: "AKIAIOSFODNN7EXAMPLE", secretAccessKey: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"),
        region: "us-east-1")
    let date = Date(timeIntervalSince1970: 1_369_353_600)  // 2013-05-24T00:00:00Z
    let host = "examplebucket.s3.amazonaws.com"

    func authorization(_ headers: [(String, String)]) -> String? { headers.first { $0.0 == "authorization" }?.1 }

    @Test func getObjectWithARange() {
        let signed = signer.sign(method: "GET", host: host, path: "/test.txt", query: [], headers: [("range", "bytes=0-9")],
                                 payloadHash: SigV4Signer.emptyPayloadHash, date: date)
        #expect(authorization(signed) == "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request,SignedHeaders=host;range;x-amz-content-sha256;x-amz-date,Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41")
        #expect(signed.first { $0.0 == "x-amz-date" }?.1 == "20130524T000000Z")
    }

    @Test func putObject() {
        let body = Array("Welcome to Amazon S3.".utf8)
        let signed = signer.sign(method: "PUT", host: host, path: "/test$file.text", query: [],
                                 headers: [("date", "Fri, 24 May 2013 00:00:00 GMT"), ("x-amz-storage-class", "REDUCED_REDUNDANCY")],
                                 payloadHash: SigV4Signer.payloadHash(body), date: date)
        #expect(SigV4Signer.payloadHash(body) == "44ce7dd67c959e0d3524ffac1771dfbba87d2b6b4b4e99e42034a8b803f8b072")
        #expect(authorization(signed)?.hasSuffix("SignedHeaders=date;host;x-amz-content-sha256;x-amz-date;x-amz-storage-class,Signature=98ad721746da40c64f1a55b78f14c238d841ea1380cd77a1b5971af0ece108bd") == true,
                "\(authorization(signed) ?? "")")
    }

    @Test func getBucketLifecycleAndListObjects() {
        let lifecycle = signer.sign(method: "GET", host: host, path: "/", query: [("lifecycle", "")], payloadHash: SigV4Signer.emptyPayloadHash, date: date)
        #expect(authorization(lifecycle)?.hasSuffix("Signature=fea454ca298b7da1c68078a5d1bdbfbbe0d65c699e0f91ac7a200a0136783543") == true)
        let list = signer.sign(method: "GET", host: host, path: "/", query: [("max-keys", "2"), ("prefix", "J")],
                               payloadHash: SigV4Signer.emptyPayloadHash, date: date)
        #expect(authorization(list)?.hasSuffix("Signature=34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7") == true)
    }

    @Test func encodesPathsOnceAndQueriesFully() {
        #expect(SigV4Signer.uriEncode("/a b/ä+c=d~e_f.g-h", encodingSlash: false) == "/a%20b/%C3%A4%2Bc%3Dd~e_f.g-h")
        #expect(SigV4Signer.uriEncode("a/b", encodingSlash: true) == "a%2Fb")
        let canonical = SigV4Signer.canonicalRequest(
            method: "GET", path: "/k", query: [("b", "2"), ("a", "z y"), ("a", "x")], headers: [("X-Thing", "  a   b  "), ("host", "h")],
            payloadHash: "p")
        #expect(canonical.request == "GET\n/k\na=x&a=z%20y&b=2\nhost:h\nx-thing:a b\n\nhost;x-thing\np")
    }
}
