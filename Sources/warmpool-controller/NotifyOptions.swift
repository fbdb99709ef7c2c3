import ArgumentParser
import Foundation
import Logging
import ServiceLifecycle
import NIOPosix
import WarmpoolHTTP
import WarmpoolModel
import WarmpoolNotify
import WarmpoolStore

/// `--notify-url` and `--notify-secret-file`: where the outbox's notifications go as signed
/// webhooks (Protocol/WEBHOOKS.md). Flags win over the environment.
struct NotifyOptions: ParsableArguments {
    @Option(name: .customLong("notify-url"),
            help: "POST every pool notification to this webhook URL, signed; repeatable. Env: WARMPOOL_NOTIFY_URLS (comma-separated).")
    var notifyURLs: [String] = []

    @Option(name: .customLong("notify-secret-file"),
            help: "File whose contents (trailing newline removed) are the webhooks' HMAC secret; required with --notify-url. Env: WARMPOOL_NOTIFY_SECRET_FILE.")
    var notifySecretFile: String?

    @Option(help: "Threads that deliver webhooks (each blocked for up to the 10 s timeout by a receiver that does not answer), apart from the failover's.")
    var webhookThreads: Int = 2

    var urls: [String] {
        if !notifyURLs.isEmpty { return notifyURLs }
        let listed = ProcessInfo.processInfo.environment["WARMPOOL_NOTIFY_URLS"] ?? ""
        return listed.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
    }

    var secretFile: String? { notifySecretFile ?? ProcessInfo.processInfo.environment["WARMPOOL_NOTIFY_SECRET_FILE"] }

    func validate() throws {
        guard !urls.isEmpty else { return }
        for url in urls {
            guard let components = URLComponents(string: url), ["http", "https"].contains(components.scheme?.lowercased()),
                  components.host?.isEmpty == false
            else { throw ValidationError("--notify-url expects an http:// or https:// URL, got \(url)") }
        }
        _ = try secret()
    }

    /// The secret file's bytes without trailing whitespace, so `echo secret > file` works.
    func secret() throws -> [UInt8] {
        guard let secretFile else {
            throw ValidationError("--notify-url needs --notify-secret-file (or WARMPOOL_NOTIFY_SECRET_FILE): webhooks are always signed")
        }
        guard let contents = FileManager.default.contents(atPath: secretFile) else {
            throw ValidationError("cannot read the webhook secret file \(secretFile)")
        }
        var bytes = Array(contents)
        while let last = bytes.last, [0x0a, 0x0d, 0x20, 0x09].contains(last) { bytes.removeLast() }
        guard !bytes.isEmpty else { throw ValidationError("the webhook secret file \(secretFile) is empty") }
        return bytes
    }

    /// The notifier as a service when URLs are set; none otherwise.
    func services(store: any WarmpoolStore, threadPool: NIOThreadPool, logger: Logger) throws -> [any Service] {
        guard !urls.isEmpty else { return [] }
        let notifier = WebhookNotifier(configuration: .init(urls: urls, secret: try secret()), store: store,
                                       client: HTTPClient(threadPool: threadPool), logger: logger)
        return [notifier]
    }
}
