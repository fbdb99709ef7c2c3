import Foundation
import Logging

/// Keeps every log record, so a test can check what was logged at which level.
final class LogRecorder: @unchecked Sendable {
    struct Record: Sendable {
        var level: Logger.Level
        var message: String
        var metadata: Logger.Metadata
    }

    private let lock = NSLock()
    private var _records: [Record] = []
    var records: [Record] { lock.withLock { _records } }

    var logger: Logger {
        Logger(label: "test.notify") { _ in Handler(recorder: self) }
    }

    struct Handler: LogHandler {
        let recorder: LogRecorder
        var metadata: Logger.Metadata = [:]
        var logLevel: Logger.Level = .debug

        subscript(metadataKey key: String) -> Logger.Metadata.Value? {
            get { metadata[key] }
            set { metadata[key] = newValue }
        }

        func log(event: LogEvent) {
            let record = Record(level: event.level, message: "\(event.message)", metadata: metadata.merging(event.metadata ?? [:]) { $1 })
            recorder.lock.withLock { recorder._records.append(record) }
        }
    }
}
