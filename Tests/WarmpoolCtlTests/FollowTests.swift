import Testing
import WarmpoolJSON
@testable import warmpoolctl

/// What `--follow`, `provision` and `failover test` decide to print from successive polls
/// (Follow.swift): each event and each step once, in the order they happened.
@Suite struct FollowTests {
    static func event(_ id: Int64, _ kind: String = "state") -> JSONValue {
        .object([("id", .int(id)), ("kind", .string(kind)), ("at", "2026-12-04T20:00:00Z")])
    }

    static func ids(_ events: [JSONValue]) -> [Int64] { events.compactMap { $0["id"]?.intValue } }

    @Test func anEventIsPrintedOnceHoweverThePollsOverlap() {
        var new = NewEvents(limit: 100, baseline: [Self.event(1), Self.event(2)])
        #expect(Self.ids(new.take([Self.event(1), Self.event(2)]).new) == [])
        #expect(Self.ids(new.take([Self.event(1), Self.event(2), Self.event(3)]).new) == [3])
        #expect(Self.ids(new.take([Self.event(2), Self.event(3), Self.event(4), Self.event(5)]).new) == [4, 5])
        #expect(Self.ids(new.take([Self.event(3), Self.event(4), Self.event(5)]).new) == [])
    }

    /// The route orders by time, not id: an event filed late with an earlier time is still new.
    @Test func aLateEventWithASmallerPlaceInTheListIsStillNew() {
        var new = NewEvents(limit: 100, baseline: [Self.event(1), Self.event(3)])
        #expect(Self.ids(new.take([Self.event(1), Self.event(4), Self.event(3)]).new) == [4])
    }

    @Test func withoutABaselineEverythingIsNew() {
        var new = NewEvents(limit: 100)
        let (events, mayHaveMissed) = new.take([Self.event(7), Self.event(8)])
        #expect(Self.ids(events) == [7, 8] && !mayHaveMissed)
    }

    @Test func aFullWindowOfOnlyNewEventsMayHaveMissedSome() {
        var new = NewEvents(limit: 2, baseline: [Self.event(1), Self.event(2)])
        let (events, mayHaveMissed) = new.take([Self.event(5), Self.event(6)])
        #expect(Self.ids(events) == [5, 6] && mayHaveMissed)
        #expect(!new.take([Self.event(6), Self.event(7)]).mayHaveMissed)
    }

    static func failover(_ id: String, steps: [String], result: String = "in_progress") -> JSONValue {
        .object([
            ("id", .string(id)), ("result", .string(result)),
            ("timeline", .array(steps.map { .object([("step", .string($0))]) })),
        ])
    }

    @Test func aFailoverBeginsShowsEachNewStepOnceAndEnds() {
        var history = FollowedHistory(baseline: [Self.failover("fo-12-1", steps: ["detected"], result: "succeeded")])
        #expect(history.take([Self.failover("fo-12-1", steps: ["detected"], result: "succeeded")]).isEmpty)
        let started = Self.failover("fo-12-2", steps: ["fencing"])
        #expect(history.take([started, Self.failover("fo-12-1", steps: ["detected"], result: "succeeded")])
            == [.began(started), .step(failover: "fo-12-2", .object([("step", "fencing")]))])
        let done = Self.failover("fo-12-2", steps: ["fencing", "fenced", "promoted"], result: "succeeded")
        #expect(history.take([done]) == [
            .step(failover: "fo-12-2", .object([("step", "fenced")])), .step(failover: "fo-12-2", .object([("step", "promoted")])), .ended(done),
        ])
        // A step recorded after the result (the new standby) still shows; the end does not repeat.
        let later = Self.failover("fo-12-2", steps: ["fencing", "fenced", "promoted", "standby_ready"], result: "succeeded")
        #expect(history.take([later]) == [.step(failover: "fo-12-2", .object([("step", "standby_ready")]))])
    }

    /// The API lists failovers newest first; what happened is printed oldest first.
    @Test func twoNewFailoversInOnePollComeOldestFirst() {
        var history = FollowedHistory()
        let first = Self.failover("fo-12-1", steps: [], result: "failed")
        let second = Self.failover("fo-12-2", steps: [])
        #expect(history.take([second, first]) == [.began(first), .ended(first), .began(second)])
    }
}
