import Foundation
import Hummingbird
import WarmpoolJSON
import WarmpoolModel

/// GET /warmpool/costs/{machine_id}: what the pool costs now and what each strategy would cost
/// it (the product page's comparison, with this pool's prices). A controller without a provider
/// answers 409.
struct CostRoutes {
    let dependencies: APIDependencies

    func register(on group: RouterGroup<APIRequestContext>) {
        group.get("costs/:machine_id") { _, context in
            let poolID = try RequestInput.poolID(context)
            guard let quote = dependencies.costs else {
                throw PoolOperationError.conflict("this controller has no provider configured: no prices to quote")
            }
            return JSONResponse.ok(Self.present(poolID, try await quote(poolID)))
        }
    }

    static func present(_ poolID: PoolID, _ costs: PoolCosts) -> JSONValue {
        func money(_ value: Double?) -> JSONValue { value.map { .double(($0 * 100).rounded() / 100) } ?? .null }
        let primaryMonth = costs.primaryPerHour.map { $0 * PoolCosts.hoursPerMonth }
        let protection = costs.strategy == "cpu_standby" ? costs.cpuStandbyPerMonth : costs.warmPoolPerMonth
        return .object([
            ("machine_id", .id(poolID)),
            ("currency", .string("USD")),
            ("strategy", .string(costs.strategy)),
            ("primary_per_hour", costs.primaryPerHour.map { .double(($0 * 10_000).rounded() / 10_000) } ?? .null),
            ("primary_per_month", money(primaryMonth)),
            ("protection_per_month", .object([
                ("gpu_warm_pool", money(costs.warmPoolPerMonth)), ("cpu_standby", money(costs.cpuStandbyPerMonth)),
                ("cpu_standby_stopped", money(costs.cpuStandbyStoppedPerMonth)), ("none", .double(0)),
            ])),
            ("total_per_month", money(primaryMonth.flatMap { p in protection.map { p + $0 } })),
            ("items", .array(costs.items.map { .object([("item", .string($0.name)), ("per_month", money($0.perMonth))]) })),
            ("basis", .array(costs.basis.map { .string($0) })),
        ])
    }
}
