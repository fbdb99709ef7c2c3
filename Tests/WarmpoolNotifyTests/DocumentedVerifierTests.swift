import Foundation
import Logging
import Testing
import WarmpoolModel
import WarmpoolStore
@testable import WarmpoolNotify

/// The Python verifier printed in Protocol/WEBHOOKS.md, run as written against a real delivery:
/// the documentation cannot drift from what the notifier sends.
@Suite struct DocumentedVerifierTests {
    static let webhooksDocument = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Protocol/WEBHOOKS.md")

    static func pythonSnippet() throws -> String {
        let document = try String(contentsOf: webhooksDocument, encoding: .utf8)
        let start = try #require(document.range(of: "```python\n"))
        let end = try #require(document.range(of: "```", range: start.upperBound..<document.endIndex))
        return String(document[start.upperBound..<end.lowerBound])
    }

    /// Runs the snippet's function on a captured request; its printed verdict.
    static func pythonVerdict(_ request: ReceivedWebhook, secret: String) throws -> String {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("warmpool-verify-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let bodyFile = directory.appendingPathComponent("body")
        try request.body.write(to: bodyFile)
        let script = try pythonSnippet() + """
            import sys
            headers = {"X-Warmpool-Timestamp": sys.argv[2], "X-Warmpool-Signature": sys.argv[3]}
            print(verify_warmpool_webhook(sys.argv[1].encode(), headers, open(sys.argv[4], "rb").read()))
            """
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["python3", "-c", script, secret, request.timestamp ?? "", request.signature ?? "", bodyFile.path]
        let output = Pipe()
        process.standardOutput = output
        try process.run()
        process.waitUntilExit()
        let printed = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        return printed.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    @Test func theDocumentedPythonVerifierAcceptsARealDeliveryAndRefusesAWrongSecret() async throws {
        try await NotifierTests.withDatabase { path in
            let store = try NotifierTests.openStore(path)
            let entry = NotifierTests.entry(1)
            try await store.enqueue([entry])
            try await WebhookReceiver.with({ _, _ in ReceiverAnswer() }) { url, receiver in
                let notifier = WebhookNotifier(configuration: NotifierTests.configuration([url]), store: store,
                                               logger: LogRecorder().logger)
                _ = try await NotifierTests.running(notifier) {
                    try await NotifierTests.eventually(store, entry.id, "delivery") { $0.deliveredAt != nil }
                }
                let request = try #require(receiver.received.first)
                #expect(try Self.pythonVerdict(request, secret: "test-webhook-secret") == "True")
                #expect(try Self.pythonVerdict(request, secret: "test-webhook-secreT") == "False")
            }
        }
    }

    /// The example request in the document, checked by the Swift verifier.
    @Test func theDocumentedExampleVerifies() throws {
        let document = try String(contentsOf: Self.webhooksDocument, encoding: .utf8)
        let lines = document.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        func header(_ name: String) throws -> String {
            let line = try #require(lines.first { $0.hasPrefix(name + ": ") })
            return String(line.dropFirst(name.count + 2))
        }
        let body = try #require(lines.first { $0.hasPrefix(#"{"at":"#) })
        #expect(WebhookSignature.verify(
            signature: try header("X-Warmpool-Signature"), timestamp: try header("X-Warmpool-Timestamp"), body: Data(body.utf8),
            secret: Array("whsec-test-0123456789".utf8), now: Date(timeIntervalSince1970: 1_764_393_600)) == .valid)
    }
}

/// The example request in Protocol/WEBHOOKS.md is what the notifier sends for those values.
@Suite struct DocumentedExampleTests {
    @Test func theExampleRequestIsWhatThePayloadAndTheSignatureMake() throws {
        let document = try String(contentsOf: DocumentedVerifierTests.webhooksDocument, encoding: .utf8)
        let start = try #require(document.range(of: "POST <your URL>\n"))
        let end = try #require(document.range(of: "```", range: start.upperBound..<document.endIndex))
        let lines = document[start.upperBound..<end.lowerBound].split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        var headers: [String: String] = [:]
        for line in lines.prefix { !$0.isEmpty } {
            let parts = line.split(separator: ":", maxSplits: 1).map { $0.trimmingCharacters(in: .whitespaces) }
            headers[parts[0]] = parts[1]
        }
        let body = try #require(lines.drop { !$0.isEmpty }.dropFirst().first)
        let payload = WebhookPayload(
            id: "wp-12-failover_complete-2", event: "failover_complete", poolID: 12, at: .seconds(1_764_393_600),
            message: "pool 12: instance 9002 is primary after \(Duration.milliseconds(12_400))", state: .recovering, epoch: 3,
            failover: "fo-12-2", primaryInstanceID: 9002, standbyInstanceID: nil)
        #expect(body == payload.json(), "the documented body is not what is sent")
        #expect(headers["X-Warmpool-Event"] == payload.event && headers["X-Warmpool-Delivery"] == payload.id)
        #expect(headers["X-Warmpool-Signature"] == WebhookSignature.sign(
            body: Data(body.utf8), timestamp: Int64(headers["X-Warmpool-Timestamp"] ?? "") ?? 0, secret: Data("whsec-test-0123456789".utf8)))
    }
}
