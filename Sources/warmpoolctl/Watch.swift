import ArgumentParser
import Foundation
import WarmpoolJSON

/// The loops behind `--watch`, `--follow` and the progress of long commands: poll, print what is
/// new, sleep. Ctrl-C ends them (SIGINT's default action: nothing is left half-written that a
/// handler would need to tidy).
enum Watch {
    /// On a terminal a watch redraws in place; into a file or a pipe it appends plain blocks,
    /// without escape codes.
    static var standardOutputIsTerminal: Bool { isatty(STDOUT_FILENO) == 1 }

    /// `body` now and then every `interval` until the process is interrupted. A failed round is
    /// reported and the next one tries again: a controller restarting must not end a watch.
    static func forever(every interval: Duration, _ body: () async throws -> Void) async throws -> Never {
        while true {
            do {
                try await body()
            } catch let failure as APIClient.Failure {
                Output.note("warmpoolctl: \(failure.description) (trying again in \(interval))")
            }
            try await Task.sleep(for: interval)
        }
    }

    /// `operation`'s answer, with `feed` polled beside it every `interval` while it runs, and once
    /// more when the controller has answered (the work done, or refused), so the last steps come
    /// before the answer or the error. Not after no answer: --timeout bounds the command.
    static func withProgress<Value: Sendable>(
        _ feed: (any ProgressFeed)?, every interval: Duration = .milliseconds(500),
        _ operation: @escaping @Sendable () async throws -> Value
    ) async throws -> Value {
        guard let feed else { return try await operation() }
        let poller = Task {
            while !Task.isCancelled {
                try? await Task.sleep(for: interval)
                if Task.isCancelled { break }
                await feed.poll()
            }
        }
        let result: Result<Value, any Error>
        do {
            result = .success(try await operation())
        } catch {
            result = .failure(error)
        }
        poller.cancel()
        await poller.value
        if case .failure(let failure as APIClient.Failure) = result, failure.status == nil { return try result.get() }
        await feed.poll()
        return try result.get()
    }

    /// `every` from `--interval`, checked.
    static func interval(_ seconds: Double) throws -> Duration {
        guard seconds >= 0.1, seconds.isFinite else { throw ValidationError("--interval must be at least 0.1 seconds, got \(seconds)") }
        return .milliseconds(Int64(seconds * 1000))
    }
}

/// Something polled while a long request runs, printing what is new on stderr.
protocol ProgressFeed: Actor {
    func poll() async
}

/// A pool's new events as they are recorded: a provisioning's steps ("volume created", "primary
/// running", "volume verified", ...), which the API files as pool events.
actor EventProgress: ProgressFeed {
    static let limit = 100
    private let client: APIClient
    private let machineID: Int64
    private var newEvents: NewEvents
    /// When the first step shown was recorded: the others are timed from it.
    private var firstAt: Date?

    /// Reads the events there are now, so that only what follows is shown. A pool that does not
    /// exist yet (a first provisioning) has none; a controller that does not answer fails the
    /// command here, before it asks for anything to be done.
    init(client: APIClient, machineID: Int64) async throws {
        self.client = client.withTimeout(10)
        self.machineID = machineID
        newEvents = NewEvents(limit: Self.limit, baseline: try await answeredOrEmpty { try await Self.events(client, machineID) })
    }

    func poll() async {
        // A poll that fails (the pool not created yet, a slow controller) shows nothing; the next one catches up.
        guard let events = try? await Self.events(client, machineID) else { return }
        for event in newEvents.take(events).new {
            let at = event["at"]?.stringValue.flatMap(Output.parseDate)
            if firstAt == nil { firstAt = at }
            let seconds = at.flatMap { at in firstAt.map { at.timeIntervalSince($0) } } ?? 0
            Output.note(Output.progressLine(seconds: seconds, Output.cell(event["kind"]), Output.cell(event["detail"])))
        }
    }

    static func events(_ client: APIClient, _ machineID: Int64) async throws -> [JSONValue] {
        try await client.get("api/v1/warmpool/events/\(machineID)", query: ["limit": "\(limit)"])["events"]?.objects ?? []
    }
}

/// A failover's timeline steps as they are recorded: what `failover test` shows while it runs.
actor TimelineProgress: ProgressFeed {
    private let client: APIClient
    private let machineID: Int64
    private var history: FollowedHistory

    init(client: APIClient, machineID: Int64) async throws {
        self.client = client.withTimeout(10)
        self.machineID = machineID
        history = FollowedHistory(baseline: try await answeredOrEmpty { try await Self.failovers(client, machineID) })
    }

    func poll() async {
        guard let failovers = try? await Self.failovers(client, machineID) else { return }
        for change in history.take(failovers) { Output.note(Output.historyLine(change)) }
    }

    static func failovers(_ client: APIClient, _ machineID: Int64) async throws -> [JSONValue] {
        try await client.get("api/v1/warmpool/history/\(machineID)", query: ["limit": "5"])["failovers"]?.objects ?? []
    }
}

/// What came before a long request: none when the controller refused to say (no such pool yet),
/// the failure when it did not answer at all.
private func answeredOrEmpty(_ read: () async throws -> [JSONValue]) async throws -> [JSONValue] {
    do {
        return try await read()
    } catch let failure as APIClient.Failure where failure.status != nil {
        return []
    }
}
