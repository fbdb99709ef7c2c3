import Testing
import WarmpoolProvider

/// The pacer is pure: time passed in.
@Suite struct EndpointPacerTests {
    let start = ContinuousClock.now

    @Test func callsGoAtOnceUntilA429ThenOneSpacingApartPerEndpoint() {
        var pacer = EndpointPacer(settings: .init(firstSpacing: .milliseconds(500), maximumSpacing: .seconds(4)))
        #expect(pacer.reserve("show_instance", now: start) == start)
        #expect(pacer.reserve("show_instance", now: start) == start, "no spacing learnt yet")
        pacer.rateLimited("show_instance", now: start)
        #expect(pacer.spacing("show_instance") == .milliseconds(500))
        let first = pacer.reserve("show_instance", now: start)
        let second = pacer.reserve("show_instance", now: start)
        #expect(first == start + .milliseconds(500) && second == start + .seconds(1), "in order, one spacing apart")
        #expect(pacer.reserve("start_instance", now: start) == start, "another endpoint is limited apart")
        for _ in 0..<6 { pacer.rateLimited("show_instance", now: start) }
        #expect(pacer.spacing("show_instance") == .seconds(4), "doubling stops at the maximum")
        for _ in 0..<60 { pacer.served("show_instance") }
        #expect(pacer.spacing("show_instance") == .zero, "served calls relax it back")
        #expect(pacer.rateLimited == ["show_instance": 7])
    }

    @Test func floorsAndRetryAfterHolds() {
        var pacer = EndpointPacer(settings: .init(floors: ["*": .milliseconds(200), "search_offers": .seconds(1)]))
        #expect(pacer.spacing("search_offers") == .seconds(1) && pacer.spacing("show_instance") == .milliseconds(200))
        _ = pacer.reserve("search_offers", now: start)
        #expect(pacer.reserve("search_offers", now: start) == start + .seconds(1))
        pacer.hold("destroy_instance", until: start + .seconds(3600))
        #expect(pacer.reserve("destroy_instance", now: start) == start + .seconds(3600))
    }

    /// Callers that give up take no slot: a crowd of refused calls must not push the queue ahead.
    @Test func aCallerThatWillNotWaitTakesNoSlot() {
        var pacer = EndpointPacer(settings: .init(firstSpacing: .seconds(1), maximumSpacing: .seconds(30)))
        for _ in 0..<6 { pacer.rateLimited("show_instance", now: start) }
        #expect(pacer.spacing("show_instance") == .seconds(30))
        let first = pacer.reserve("show_instance", now: start, patience: .seconds(60))
        #expect(first == start + .seconds(30))
        #expect(pacer.reserve("show_instance", now: start, patience: .seconds(60)) == start + .seconds(60))
        for _ in 0..<1000 { #expect(pacer.reserve("show_instance", now: start, patience: .seconds(60)) == nil) }
        #expect(pacer.nextAvailable("show_instance", now: start) == start + .seconds(90), "a thousand refusals moved nothing")
        #expect(pacer.reserve("show_instance", now: start + .seconds(31), patience: .seconds(60)) == start + .seconds(90))
    }

    @Test func aRetryAfterIsHeldAndTeachesNothing() {
        var pacer = EndpointPacer(settings: .init(firstSpacing: .seconds(1), maximumSpacing: .seconds(30)))
        for _ in 0..<10 { pacer.rateLimited("show_instance", now: start, retryAfter: .seconds(1)) }
        #expect(pacer.spacing("show_instance") == .zero, "the provider said how long")
        #expect(pacer.reserve("show_instance", now: start) == start + .seconds(1))
        #expect(pacer.rateLimited == ["show_instance": 10])
    }
}
