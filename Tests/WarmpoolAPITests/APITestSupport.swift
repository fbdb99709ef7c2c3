import Foundation
import Hummingbird
import HummingbirdTesting
import Logging
import Testing
import WarmpoolAPI
import WarmpoolJSON
import WarmpoolStore

/// A router over a real SQLite store in a temporary directory, with one valid API key.
struct APIFixture {
    let store: SQLiteStore
    let key: String
    let metrics = ControllerMetrics()
    let application: Application<RouterResponder<APIRequestContext>>

    init(operations: ((SQLiteStore) -> any PoolOperations)? = nil, vastWebhookSecret: String? = nil) async throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("wp-api-\(UUID().uuidString)/warmpool.db").path
        store = try SQLiteStore(path: path, logger: Logger(label: "test.api"))
        let minted = APIKeys.mint(name: "test")
        try await store.addAPIKey(minted.record)
        key = minted.plaintext
        let store = self.store
        let router = APIRouter.build(
            APIDependencies(
                store: store, operations: operations?(store) ?? ProviderlessPoolOperations(store: store), hub: nil,
                metrics: metrics, vastWebhookSecret: vastWebhookSecret))
        application = Application(router: router, logger: Logger(label: "test.api"))
    }

    var auth: HTTPFields {
        var fields = HTTPFields()
        fields[.authorization] = "Bearer \(key)"
        return fields
    }

    func authWith(_ contentType: String = "application/json") -> HTTPFields {
        var fields = auth
        fields[.contentType] = contentType
        return fields
    }
}

extension TestResponse {
    /// The body as JSON; a body that is not JSON is recorded as a failure and reads as null.
    var json: JSONValue {
        do {
            return try JSONValue.parse(Array(body.readableBytesView))
        } catch {
            Issue.record("the body is not JSON: \(error): \(String(decoding: body.readableBytesView, as: UTF8.self).prefix(200))")
            return .null
        }
    }
}

func body(_ text: String) -> ByteBuffer { ByteBuffer(string: text) }
