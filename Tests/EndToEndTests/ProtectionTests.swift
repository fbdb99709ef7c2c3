import Foundation
import Logging
import Testing
import WarmpoolJSON
import WarmpoolStore
import WarmpoolTestSupport

/// Issue 18, against the real controller and the emulator: ordinary operator actions and provider
/// events never leave a pool that says `active` while nothing protects it. Each test failed before
/// its fix.
@Suite(.serialized) struct ProtectionTests {
    private func agentAlive(_ lab: WarmPoolLab, instance: Int64) throws {
        try lab.harness.waitUntil("instance \(instance)'s agent is alive", timeout: 20) {
            let agents = (try? http("GET", "\(lab.api)/agents", key: try lab.adminKey()).json["agents"])?.arrayValue ?? []
            return agents.contains { $0["instance_id"]?.intValue == instance && $0["state"]?.stringValue == "alive" }
        }
    }

    private func waitProtected(_ lab: WarmPoolLab, _ machine: Int = 12, timeout: Double = 30) throws -> JSONValue {
        try lab.harness.waitUntil("pool \(machine) is protected", timeout: timeout) {
            (try? lab.status(machine)["protected"]?.boolValue) == true
        }
        return try lab.status(machine)
    }

    private func ctl(_ lab: WarmPoolLab, _ arguments: [String]) throws -> (status: Int32, output: String) {
        try Command.run(lab.harness.binaries + "/warmpoolctl", Array(arguments.prefix(1)) + [
            "--url", "http://\(lab.harness.apiAddress)", "--api-key", try lab.adminKey(),
        ] + arguments.dropFirst())
    }

    @Test func anActivePoolIsProtectedAndSaysWhyWhenItIsNot() throws {
        let lab = try WarmPoolLab()
        try lab.startController(extra: ["--restart-grace-ms", "2000"])
        _ = try lab.provision()
        let status = try waitProtected(lab)
        let types = (status["conditions"]?.arrayValue ?? []).compactMap { $0["type"]?.stringValue }
        #expect(types == ["Enabled", "PrimaryHeartbeating", "StandbyReady", "StandbyAtRisk", "VolumeVerified", "NoOperationInFlight",
                          "ControllerReady", "BreakerClosed", "StatePersisted", "HostMaintenance"])
        #expect((status["conditions"]?.arrayValue ?? []).allSatisfy { $0["ok"]?.boolValue == true && $0["last_transition_time"]?.stringValue != nil })
        let negative = (status["conditions"]?.arrayValue ?? []).filter { $0["status"]?.stringValue == "False" }.compactMap { $0["type"]?.stringValue }
        #expect(negative == ["StandbyAtRisk", "HostMaintenance"], "true is the problem for these two: \(negative)")
        let check = try ctl(lab, ["status", "--check"])
        #expect(check.status == 0, "\(check.output)")
        let metrics = try http("GET", "http://\(lab.harness.apiAddress)/metrics", key: try lab.adminKey()).text
        #expect(metrics.contains(#"warmpool_pool_protected{machine_id="12"} 1"#), "\(metrics)")

        // A restarted controller does not vouch for a primary it has not heard from yet.
        lab.harness.killController()
        try lab.startController(extra: ["--restart-grace-ms", "2000"])
        let restarted = try lab.status()
        #expect(restarted["protected"]?.boolValue == false)
        let failing = (restarted["conditions"]?.arrayValue ?? []).filter { $0["status"]?.stringValue == "False" }.compactMap { $0["reason"]?.stringValue }
        #expect(failing.contains("RestartGrace"), "\(restarted)")
        let unprotected = try ctl(lab, ["status", "--check"])
        #expect(unprotected.status == 2 && unprotected.output.contains("ControllerReady RestartGrace"), "\(unprotected.output)")
        _ = try waitProtected(lab)
    }

    @Test func aHostWithNoFreeGPULeavesTheStandbyAtRiskAndThePoolSaysDegradedUntilOneFrees() throws {
        let lab = try WarmPoolLab()
        try lab.startController(extra: ["--standby-check-s", "1"])
        _ = try lab.provision()
        _ = try waitProtected(lab)
        // Other renters take every free GPU of host 77: the stopped standby holds none.
        #expect(try lab.sim("POST", "/admin/faults", body: #"{"full_hosts": [77]}"#).status == 200)
        try lab.harness.waitUntil("the pool says its standby is at risk", timeout: 20) {
            (try? lab.status()["remediation"]?["rung"]?.stringValue) == "standby_at_risk"
        }
        let status = try lab.status()
        #expect(status["state"]?.stringValue == "degraded" && status["protected"]?.boolValue == false, "\(status)")
        #expect(status["standby_gpu_id"]?.intValue != nil, "the standby is kept")
        let atRisk = (status["conditions"]?.arrayValue ?? []).first { $0["type"]?.stringValue == "StandbyAtRisk" }
        #expect(atRisk?["status"]?.stringValue == "True" && atRisk?["reason"]?.stringValue == "NoFreeGPU" && atRisk?["ok"]?.boolValue == false)
        let check = try ctl(lab, ["status", "--check"])
        #expect(check.status == 2 && check.output.contains("StandbyAtRisk NoFreeGPU") && check.output.contains("remediation: standby_at_risk"),
                "\(check.output)")
        let repair = try ctl(lab, ["repair", "12"])
        #expect(repair.status != 0 && repair.output.contains("waits for a GPU"), "\(repair.output)")
        let events = try http("GET", "http://\(lab.harness.apiAddress)/api/v1/warmpool/events/12", key: try lab.adminKey()).json
        #expect((events["events"]?.arrayValue ?? []).contains { $0["kind"]?.stringValue == "standby_at_risk" }, "\(events)")
        // The renters leave: active and protected again, nothing was replaced.
        #expect(try lab.sim("POST", "/admin/faults", body: "{}").status == 200)
        let back = try waitProtected(lab)
        #expect(back["state"]?.stringValue == "active" && back["standby_gpu_id"] == status["standby_gpu_id"])
    }

    @Test func aPrimaryStoppedAtTheProviderIsFailedOver() throws {
        let lab = try WarmPoolLab()
        try lab.startController()
        let provisioned = try lab.provision()["status"] ?? [:]
        let primary = provisioned["primary_gpu_id"]?.intValue ?? -1
        let standby = provisioned["standby_gpu_id"]?.intValue ?? -1
        try agentAlive(lab, instance: primary)
        // `vastai stop instance`: the agent is stopped cleanly and says goodbye.
        #expect(try lab.sim("PUT", "/api/v0/instances/\(primary)/", body: #"{"state": "stopped"}"#).status == 200)
        let failover = try lab.waitForFailover(1, timeout: 60)
        #expect(failover["result"]?.stringValue == "succeeded")
        let detected = (failover["timeline"]?.arrayValue ?? []).first { $0["step"]?.stringValue == "detected" }
        #expect((detected?["detail"]?.stringValue ?? "").contains("said goodbye"), "\(failover)")
        #expect(try lab.status()["primary_gpu_id"]?.intValue == standby)
        _ = try waitProtected(lab)
        // The promoted standby is listed as the primary it is; the destroyed primary's revoked
        // key only on request.
        let key = try lab.adminKey()
        try lab.harness.waitUntil("the old primary's key is revoked", timeout: 20) {
            let all = (try? http("GET", "\(lab.api)/agents?revoked=true", key: key).json["agents"]?.arrayValue) ?? []
            return all.contains { $0["instance_id"]?.intValue == primary && $0["revoked"]?.boolValue == true }
        }
        let agents = try http("GET", "\(lab.api)/agents", key: key).json["agents"]?.arrayValue ?? []
        #expect(!agents.contains { $0["instance_id"]?.intValue == primary }, "\(agents)")
        #expect(agents.first { $0["instance_id"]?.intValue == standby }?["role"]?.stringValue == "primary", "\(agents)")
    }

    @Test func enablingAPoolWhosePrimaryDiedWhileDisabledFailsItOver() throws {
        let lab = try WarmPoolLab()
        try lab.startController()
        let provisioned = try lab.provision()["status"] ?? [:]
        let primary = provisioned["primary_gpu_id"]?.intValue ?? -1
        try agentAlive(lab, instance: primary)
        #expect(try http("POST", "\(lab.api)/disable/12", key: try lab.adminKey()).status == 200)
        #expect(try lab.sim("POST", "/admin/instances/\(primary)/crash").status == 200)
        try lab.harness.waitUntil("the primary's failure is seen", timeout: 20) {
            lab.harness.events().contains { $0.kind == "failed" && $0.instanceID == primary }
        }
        Thread.sleep(forTimeInterval: 1)
        #expect(try lab.history().isEmpty, "a disabled pool ignores the failure")
        #expect(try http("POST", "\(lab.api)/enable/12", key: try lab.adminKey()).status == 200)
        let failover = try lab.waitForFailover(1, timeout: 60)
        #expect(failover["result"]?.stringValue == "succeeded")
        #expect((failover["reason"]?.stringValue ?? "").contains("found dead when the pool was enabled"), "\(failover)")
    }

    @Test func operationsOnOnePoolAreSerialisedAndCleanupIsIdempotent() throws {
        let lab = try WarmPoolLab(bootDelayMilliseconds: 1500)
        try lab.startController()
        _ = try lab.provision()
        let key = try lab.adminKey()
        let api = lab.api
        let test = Thread.detachNewThreadWithResult { try? http("POST", "\(api)/failover/test/12", key: key) }
        try lab.harness.waitUntil("the failover test runs", timeout: 20) { (try? lab.status()["state"]?.stringValue) == "failover" }
        let cleanup = try http("DELETE", "\(lab.api)/cleanup/12", key: key)
        #expect(cleanup.status == 409, "\(cleanup.text)")
        #expect(cleanup.json["message"]?.stringValue == "machine 12: a failover test is in progress; try again when it finishes")
        #expect(try http("POST", "\(lab.api)/disable/12", key: key).status == 409)
        let answer = try test.wait(timeout: 60)
        #expect(answer?.status == 200 && answer?.json["success"]?.boolValue == true, "\(answer?.text ?? "no answer")")

        let first = try http("DELETE", "\(lab.api)/cleanup/12", key: key)
        #expect(first.status == 200, "\(first.text)")
        let second = try http("DELETE", "\(lab.api)/cleanup/12", key: key)
        #expect(second.status == 200 && second.json["message"]?.stringValue == "machine 12 has no warm pool any more: nothing to remove", "\(second.text)")
        #expect(try http("DELETE", "\(lab.api)/cleanup/99", key: key).status == 404, "never provisioned")
        let history = try http("GET", "\(lab.api)/history/12", key: key)
        #expect(history.status == 200, "a cleaned-up pool's history stays readable: \(history.text)")
        #expect((history.json["failovers"]?.arrayValue ?? []).allSatisfy { $0["result"]?.stringValue != "in_progress" })
        #expect(lab.harness.controller?.isRunning == true)
        #expect((try lab.sim("GET", "/api/v0/instances").json["instances"]?.arrayValue ?? []).isEmpty, "nothing left at the provider")
    }

    @Test func aMachineProvisionedAgainIsANewIncarnationThatIsMonitored() async throws {
        let lab = try WarmPoolLab()
        try lab.startController()
        let key = try lab.adminKey()
        _ = try lab.provision()
        #expect(try http("POST", "\(lab.api)/failover/test/12", key: key).json["success"]?.boolValue == true)
        #expect(try http("DELETE", "\(lab.api)/cleanup/12", key: key).status == 200)

        let again = try lab.provision()["status"] ?? [:]
        let primary = again["primary_gpu_id"]?.intValue ?? -1
        let status = try waitProtected(lab)
        #expect(status["incarnation"]?.intValue == 2)
        let labels = (try lab.sim("GET", "/api/v0/instances").json["instances"]?.arrayValue ?? []).compactMap { $0["label"]?.stringValue }
        #expect(!labels.isEmpty && labels.allSatisfy { $0.hasPrefix("wp-12-i2-") }, "\(labels)")
        #expect(!lab.harness.log("controller").contains("unknown agent"), "no agent of the new pool is refused")

        #expect(try lab.sim("POST", "/admin/instances/\(primary)/crash").status == 200)
        let failover = try lab.waitForFailover(2, timeout: 60)
        #expect(failover["id"]?.stringValue == "fo-12-i2-1" && failover["incarnation"]?.intValue == 2, "\(failover)")
        let history = try lab.history()
        #expect(history.compactMap { $0["id"]?.stringValue } == ["fo-12-i2-1", "fo-12-1"], "both incarnations, apart")
        let store = try SQLiteStore(path: lab.harness.databasePath, logger: Logger(label: "test.reader"))
        let ids = try await store.notifications(limit: 200).map(\.id)
        #expect(ids.contains("wp-12-i2-failure_detected-1"), "the new pool's first alert is not dropped as a duplicate: \(ids)")
        #expect(ids.contains("wp-12-failover_complete-1") && ids.contains("wp-12-i2-failover_complete-1"), "\(ids)")
    }

    @Test func aRefusedProvisionLeavesNothingAndSaysWhatTheHostHas() throws {
        let lab = try WarmPoolLab()
        try lab.startController()
        let key = try lab.adminKey()
        let wrongName = try http("POST", "\(lab.api)/provision", key: key, body: #"{"machine_id": 12, "host_machine_id": 77, "gpu_name": "A100"}"#)
        #expect(wrongName.status == 409)
        #expect(wrongName.json["message"]?.stringValue == "host 77 has 0 free GPU(s) named A100 (it has 4 x RTX 4090); a warm pool needs 2", "\(wrongName.text)")
        let unknown = try http("POST", "\(lab.api)/provision", key: key, body: #"{"machine_id": 12, "host_machine_id": 99}"#)
        #expect(unknown.status == 409)
        #expect((unknown.json["message"]?.stringValue ?? "").hasPrefix("host 99 has no free GPU on the marketplace"), "\(unknown.text)")
        #expect(try http("GET", "\(lab.api)/status/12", key: key).status == 404, "no error pool left in the way")
        #expect((try lab.sim("GET", "/api/v0/volumes").json["volumes"]?.arrayValue ?? []).isEmpty)
        #expect(try lab.provision()["status"]?["state"]?.stringValue == "active", "the retry works")
    }

    @Test func twoProvisionsOnOneHostDoNotRaceAndLeakNothing() throws {
        let lab = try WarmPoolLab(host: "77:2:RTX_4090:0.45")
        try lab.startController()
        let key = try lab.adminKey()
        let api = lab.api
        let racers = [12, 13].map { machine in
            Thread.detachNewThreadWithResult {
                try? http("POST", "\(api)/provision", key: key, body: #"{"machine_id": \#(machine), "host_machine_id": 77}"#)
            }
        }
        let answers = try racers.map { try $0.wait(timeout: 60) }
        #expect(answers.map { $0?.status ?? 0 }.sorted() == [200, 409], "\(answers.map { $0?.text ?? "" })")
        Thread.sleep(forTimeInterval: 1)
        #expect((try lab.sim("GET", "/api/v0/volumes").json["volumes"]?.arrayValue ?? []).count == 1, "the loser leaked nothing")
    }

    /// The store's disk fills up in the middle of a failover. Before, the engine had moved on in
    /// memory, the transition's commands and timers were skipped, and the pool waited forever.
    @Test func aCommitThatFailsIsRetriedAndTheFailoverFinishes() throws {
        let lab = try WarmPoolLab()
        let disk = lab.harness.directory + "/db"
        try FileManager.default.createDirectory(atPath: disk, withIntermediateDirectories: true)
        try Command.runChecked("/bin/mount", ["-t", "tmpfs", "-o", "size=16m", "tmpfs", disk])
        defer { _ = try? Command.run("/bin/umount", ["-l", disk]) }
        try lab.startController()
        _ = try lab.provision()
        let key = try lab.adminKey(), api = lab.api
        _ = try Command.run("/bin/dd", ["if=/dev/zero", "of=\(disk)/filler", "bs=64k"])  // until the disk is full
        let test = Thread.detachNewThreadWithResult { try? http("POST", "\(api)/failover/test/12", key: key) }
        try lab.harness.waitUntil("the pool reports its state unpersisted", timeout: 20) {
            let conditions = (try? lab.status()["conditions"]?.arrayValue) ?? []
            return conditions.contains { $0["type"]?.stringValue == "StatePersisted" && $0["reason"]?.stringValue == "CommitFailing" }
        }
        #expect(lab.harness.log("controller").contains("cannot commit a pool transition; retrying"))
        try FileManager.default.removeItem(atPath: disk + "/filler")
        let answer = try test.wait(timeout: 60)
        #expect(answer?.status == 200 && answer?.json["success"]?.boolValue == true, "\(answer?.text ?? "no answer")")
        #expect(try lab.history().first?["result"]?.stringValue == "succeeded")
        _ = try waitProtected(lab)
    }

    @Test func theHTTPEdgesAnOperatorMeets() throws {
        let lab = try WarmPoolLab()
        try lab.startController()
        let key = try lab.adminKey()
        _ = try lab.provision()
        #expect(try http("GET", "\(lab.api)/status/12", key: key, scheme: "bearer").status == 200, "the scheme is case-insensitive")
        let wrongMethod = try http("POST", "\(lab.api)/cleanup/12", key: key)
        #expect(wrongMethod.status == 405 && wrongMethod.json["error"]?.stringValue == "method_not_allowed", "\(wrongMethod.text)")
        #expect(try http("PUT", "\(lab.api)/settings/77", key: key, body: #"{"gpu_preferences": ["A100"]}"#).status == 404, "no phantom pool")
        #expect(try http("POST", "\(lab.api)/enable/77", key: key).status == 404)
        let resize = try http("PUT", "\(lab.api)/settings/12", key: key, body: #"{"volume_size_gb": 500}"#)
        #expect(resize.status == 409 && (resize.json["message"]?.stringValue ?? "").contains("cannot be resized in place"), "\(resize.text)")
        #expect(try http("PUT", "\(lab.api)/settings/12", key: key, body: #"{"gpu_preferences": ["RTX 4090"]}"#).status == 200)
    }
}

extension Thread {
    /// Runs `body` on a new thread; `wait` returns its result.
    static func detachNewThreadWithResult<T: Sendable>(_ body: @escaping @Sendable () -> T) -> PendingResult<T> {
        let pending = PendingResult<T>()
        Thread.detachNewThread { pending.finish(body()) }
        return pending
    }
}

final class PendingResult<T: Sendable>: @unchecked Sendable {
    private let done = DispatchSemaphore(value: 0)
    private var value: T?

    func finish(_ value: T) {
        self.value = value
        done.signal()
    }

    func wait(timeout: Double) throws -> T {
        guard done.wait(timeout: .now() + timeout) == .success, let value else { throw HarnessError("no result within \(timeout) s") }
        return value
    }
}

/// A credential in the keys file is not bound to any instance: the instance id its agent declares
/// gives it no authority over a pool (issue 20).
@Suite(.serialized) struct UnboundAgentTests {
    @Test func aKeysFileAgentClaimingAPrimaryCannotFailItOverNorWriteItsLog() throws {
        let lab = try WarmPoolLab()
        try lab.startController(extra: ["--restart-grace-ms", "2000"])
        let primary = (try lab.provision()["status"])?["primary_gpu_id"]?.intValue ?? -1
        let secretFile = try lab.harness.addAgentKey("impostor")
        let impostor = try lab.harness.startAgent("impostor", secretFile: secretFile, instanceID: Int(primary))
        _ = try lab.harness.waitForEvent("connected", for: "impostor", timeout: 20)
        // It "dies" as a crashed primary would: the connection drops, the detector fails it at once.
        kill(impostor.processIdentifier, SIGKILL)
        _ = try lab.harness.waitForEvent("failed", for: "impostor", timeout: 20)
        Thread.sleep(forTimeInterval: 4)  // past the restart grace and a detector timeout many times over
        let status = try lab.status()
        #expect(status["primary_gpu_id"]?.intValue == primary && status["failover_count"]?.intValue == 0, "\(status)")
        #expect(status["state"]?.stringValue == "active")
        for machine in [12, 77] {
            let events = try lab.poolEvents(machine)
            #expect(!events.contains { $0["agent_id"]?.stringValue == "impostor" }, "pool \(machine): \(events)")
        }
    }
}
