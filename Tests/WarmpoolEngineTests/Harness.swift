import Foundation
import Testing
import WarmpoolEngine
import WarmpoolModel

/// Plays the shell around one `PoolMachine`: carries out its actions against a `FakeProvider`,
/// keeps its timers on a mock clock, and records what a real shell would persist. It can crash the
/// controller after any event: the saved state is encoded, decoded and resumed.
struct Harness {
    enum Answer {
        case provider(OperationID, ProviderOutcome)
        case verification(OperationID, VerificationOutcome)
        case restore(OperationID, RestoreOutcome)
    }

    /// Where a crash falls relative to the actions of the event it follows: before any is carried
    /// out (the state was saved, nothing else), or after all of them (their answers are lost).
    enum CrashPoint { case beforeEffects, afterEffects }

    var machine: PoolMachine
    var provider: FakeProvider
    var now: Instant
    var timers: [TimerID: Instant] = [:]
    var inbox: [Answer] = []
    var timeline: [TimelineEntry] = []
    var notifications: [EngineNotification] = []
    /// revokeLease and grantLease, in the order carried out.
    var leaseLog: [EngineAction] = []
    /// Provider commands carried out, with the time.
    var commandLog: [(at: Instant, action: EngineAction)] = []
    /// Machine calls so far (each event, resume included).
    var events = 0
    var crash: (atEvent: Int, point: CrashPoint)?
    var restarts = 0
    /// How long each provider answer takes.
    var latency: Duration = .milliseconds(50)

    init(request: ProvisionRequest, provider: FakeProvider, settings: EngineSettings = EngineSettings(),
         now: Instant = .seconds(1_700_000_000), crash: (atEvent: Int, point: CrashPoint)? = nil) {
        self.now = now
        self.crash = crash
        self.provider = provider
        let (machine, actions) = PoolMachine.provision(request, settings: settings, now: now)
        self.machine = machine
        feed(actions)
    }

    /// A pool on `host` with `freeGPUs`, provisioned and active.
    static func active(freeGPUs: Int = 4, settings: EngineSettings = EngineSettings()) -> Harness {
        var harness = Harness(request: ProvisionRequest(poolID: 7, hostMachineID: 42),
                              provider: FakeProvider(host: 42, freeGPUs: freeGPUs), settings: settings)
        harness.settle()
        precondition(harness.snapshot.state == .active, "provisioning did not finish: \(harness.snapshot)")
        return harness
    }

    var snapshot: PoolSnapshot { machine.snapshot }
    var steps: [TimelineEntry.Step] { timeline.map(\.step) }
    var notificationKinds: [EngineNotification.Kind] { notifications.map(\.kind) }

    func commands(_ matching: (EngineAction) -> Bool) -> [EngineAction] {
        commandLog.map(\.action).filter(matching)
    }

    /// Hands the machine's output to the shell: save (records), then carry out.
    mutating func feed(_ actions: [EngineAction]) {
        events += 1
        guard let crash, crash.atEvent == events else {
            perform(actions)
            return
        }
        self.crash = nil
        switch crash.point {
        case .beforeEffects: perform(actions.filter { $0.isRecord })
        case .afterEffects: perform(actions)
        }
        restart()
    }

    /// The controller dies and comes back with the saved state.
    mutating func restart() {
        // What the shell stores in SQLite: JSON text.
        let json = try! JSONEncoder().encode(machine)
        machine = try! JSONDecoder().decode(PoolMachine.self, from: json)
        timers = [:]
        inbox = []
        restarts += 1
        feed(machine.resume(now: now))
    }

    mutating func perform(_ actions: [EngineAction]) {
        for action in actions {
            switch action {
            case .scheduleTimer(let id, let at): timers[id] = at
            case .cancelTimer(let id): timers[id] = nil
            case .timeline(let entry): timeline.append(entry)
            case .notify(let notification): notifications.append(notification)
            case .revokeLease, .grantLease: leaseLog.append(action)
            case .verify(let operation, let instance, _, let volume, let marker):
                commandLog.append((now, action))
                inbox.append(.verification(operation, provider.verify(instance, volume: volume, marker: marker, now: now)))
            case .restoreSnapshot(let operation, let instance, _, let snapshot):
                commandLog.append((now, action))
                inbox.append(.restore(operation, provider.restore(instance, snapshot: snapshot)))
            case .configureSync(let operation, let primary, _, let target):
                commandLog.append((now, action))
                inbox.append(.verification(operation, provider.configureSync(primary: primary, target: target)))
            case .verifyCPUCopy(let operation, let instance, _, let name, _):
                commandLog.append((now, action))
                inbox.append(.verification(operation, provider.verifyCPUCopy(instance, name: name, now: now)))
            case .takeSnapshot(let operation, let instance, _):
                commandLog.append((now, action))
                inbox.append(.restore(operation, provider.takeSnapshot(instance)))
            default:
                commandLog.append((now, action))
                if let outcome = provider.perform(action), let operation = action.operation {
                    inbox.append(.provider(operation, outcome))
                }
            }
        }
    }

    /// Delivers the next answer, or else fires the earliest timer. False when nothing is pending.
    @discardableResult
    mutating func step() -> Bool {
        if !inbox.isEmpty {
            now = now + latency
            switch inbox.removeFirst() {
            case .provider(let operation, let outcome): feed(machine.providerResult(operation, outcome, now: now))
            case .verification(let operation, let outcome): feed(machine.verificationResult(operation, outcome, now: now))
            case .restore(let operation, let outcome): feed(machine.restoreResult(operation, outcome, now: now))
            }
            return true
        }
        guard let (id, at) = timers.min(by: { ($0.value, $0.key.rawValue) < ($1.value, $1.key.rawValue) }) else { return false }
        timers[id] = nil
        now = max(now, at)
        feed(machine.timerFired(id, now: now))
        return true
    }

    /// Runs until the pool is at rest with nothing left to answer.
    mutating func settle(maxSteps: Int = 5_000) {
        for _ in 0..<maxSteps {
            if inbox.isEmpty, atRest { return }
            if !step() { return }
        }
        Issue.record("the pool did not settle: \(snapshot)")
    }

    var atRest: Bool {
        switch snapshot.state {
        case .active, .degraded, .error: true
        // Cleanup also reports `disabled`; it is at rest only once nothing more is due.
        case .disabled: snapshot.removed || timers.isEmpty
        case .searching, .provisioning, .failover, .recovering: false
        }
    }

    mutating func failPrimary(epoch: Epoch? = nil) {
        feed(machine.livenessFailed(instance: snapshot.primaryInstanceID!, epoch: epoch, now: now))
    }
}

extension EngineAction {
    var isRecord: Bool {
        switch self {
        case .timeline, .notify: true
        default: false
        }
    }

    var operation: OperationID? {
        switch self {
        case .findFreeOffers(let op, _, _), .ensureVolume(let op, _, _, _), .ensureInstance(let op, _),
             .startInstance(let op, _), .stopInstance(let op, _), .pollInstance(let op, _),
             .destroyInstance(let op, _), .deleteVolume(let op, _), .verify(let op, _, _, _, _), .findInstance(let op, _),
             .findLeftover(let op, _, _), .findFreeOffersAnywhere(let op, _, _), .restoreSnapshot(let op, _, _, _),
             .ensureCPUInstance(let op, _), .startCPUInstance(let op, _), .stopCPUInstance(let op, _), .pollCPUInstance(let op, _, _),
             .deleteCPUInstance(let op, _), .configureSync(let op, _, _, _), .verifyCPUCopy(let op, _, _, _, _), .takeSnapshot(let op, _, _):
            op
        case .scheduleTimer, .cancelTimer, .revokeLease, .grantLease, .notify, .timeline:
            nil
        }
    }
}
