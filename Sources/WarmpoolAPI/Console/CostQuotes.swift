import Foundation
import NIOConcurrencyHelpers
import WarmpoolModel

/// Pools' costs for the status page, which must render in milliseconds while a quote takes the
/// provider two calls. The page shows the last quote (or "quoting…"); one background task asks
/// the provider for stale quotes one pool at a time, so fifty pools never mean a burst of a
/// hundred calls against the marketplace's rate limit.
public final class CostQuotes: Sendable {
    public enum Quote: Sendable, Equatable {
        case pending
        case quoted(PoolCosts, at: Date)
        case failed(String, at: Date)
    }

    private struct State {
        var quotes: [PoolID: Quote] = [:]
        var queue: [PoolID] = []
        var asking: PoolID?
        var refreshing = false
    }

    /// A quote this old is asked for again; prices move slowly and a bid changes at most hourly.
    public let maximumAge: TimeInterval
    private let quote: @Sendable (PoolID) async throws -> PoolCosts
    private let state = NIOLockedValueBox(State())

    public init(maximumAge: TimeInterval = 600, quote: @escaping @Sendable (PoolID) async throws -> PoolCosts) {
        self.maximumAge = maximumAge
        self.quote = quote
    }

    /// What is known of each pool's costs now. Pools with no quote, or a stale one, are queued
    /// for the background refresh; this never waits for the provider.
    public func current(_ poolIDs: [PoolID], now: Date = Date()) -> [PoolID: Quote] {
        let (answer, start) = state.withLockedValue { state -> ([PoolID: Quote], Bool) in
            var answer: [PoolID: Quote] = [:]
            for poolID in poolIDs {
                let known = state.quotes[poolID] ?? .pending
                answer[poolID] = known
                if Self.isStale(known, now: now, maximumAge: maximumAge), state.asking != poolID, !state.queue.contains(poolID) {
                    state.queue.append(poolID)
                    if state.quotes[poolID] == nil { state.quotes[poolID] = .pending }
                }
            }
            let start = !state.refreshing && !state.queue.isEmpty
            if start { state.refreshing = true }
            return (answer, start)
        }
        if start { Task { await drain() } }
        return answer
    }

    /// A failed quote is retried after a minute, not at the next page view: the page refreshes
    /// every second and the provider may be what is failing.
    static func isStale(_ quote: Quote, now: Date, maximumAge: TimeInterval) -> Bool {
        switch quote {
        case .pending: true
        case .quoted(_, let at): now.timeIntervalSince(at) >= maximumAge
        case .failed(_, let at): now.timeIntervalSince(at) >= min(60, maximumAge)
        }
    }

    private func drain() async {
        while let poolID = state.withLockedValue({ state -> PoolID? in
            guard !state.queue.isEmpty else {
                state.refreshing = false
                state.asking = nil
                return nil
            }
            state.asking = state.queue.removeFirst()
            return state.asking
        }) {
            let result: Quote
            do {
                result = .quoted(try await quote(poolID), at: Date())
            } catch {
                result = .failed("\(error)", at: Date())
            }
            state.withLockedValue { state in
                state.quotes[poolID] = result
                state.asking = nil
            }
        }
    }
}
