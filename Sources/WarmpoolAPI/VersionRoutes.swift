import Foundation
import Hummingbird
import WarmpoolJSON
import WarmpoolModel
import WarmpoolWire

/// GET /api/v1/version: which controller answers, so an operator can tell it from the CLI in hand
/// (`warmpoolctl --version`) and from its agents (their `software_version`), and see when it last
/// restarted. Any key may read it (`read`): a dashboard checks it before it trusts the answers.
struct VersionRoutes {
    static let path = APIRouter.prefix + "/version"
    /// When this router was built: the controller's start, to the second.
    let startedAt: Date

    func register(on router: Router<APIRequestContext>) {
        router.get(RouterPath(stringLiteral: Self.path)) { _, _ in
            JSONResponse.ok(.object([
                ("version", .string(WarmpoolVersion.current)),
                ("api", .string("v1")),
                // The agents' heartbeat protocol: an agent speaking another is refused at its Hello.
                ("wire_protocol", .int(Int64(warmpoolProtocolVersion))),
                ("started_at", .date(startedAt)),
                ("uptime_seconds", .int(Int64(Date().timeIntervalSince(startedAt)))),
            ]))
        }
    }
}
