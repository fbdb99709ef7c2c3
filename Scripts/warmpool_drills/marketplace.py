"""`drill marketplace`: the marketplace as it is, one scenario each, against the emulator with a
realistic boot delay (reference/vastai-marketplace.md):

  standby_gpu_taken                   another renter takes the host's last free GPU (the stopped
                                      standby's: it reserves none) before any failure. The pool
                                      must stop claiming `active` (degraded: standby_at_risk) within
                                      two provider checks, and be active and protected again once
                                      the renter gives the GPU back.
  standby_gpu_taken_during_failover   the primary crashes and, as it does, a renter takes the
                                      standby's own GPU (the emulator's own_gpu_restart): the start
                                      sits in `scheduling`; after the bound the standby gives way to a
                                      new instance on another free GPU of the host, with the volume.
                                      Target: failed over within bound + boot + 10 s.
  primary_outbid                      an interruptible pool (bid_price): the primary is outbid (paused,
                                      its GPU taken), Vast.ai's signed `outbid` notification reaches the
                                      controller's receiver. Target: the failover begins within 2 s of
                                      the outbid and ends within 2 s + lease wait + boot + 10 s.
  machine_offline                     the whole machine offline for --offline-s (every instance paused,
                                      commands deferred), then back: failed over once the provider can
                                      confirm the old primary stopped, then protected.
  rate_limited                        a minimum interval of --interval-ms on every endpoint while the
                                      primary crashes: the controller paces itself, the failover ends.

For each: the outcome (`protected`, or `degraded` with its reason), seconds from the fault to
protection, the provider calls made and the 429s received. All along, a pool reported `active`
while unprotected for longer than two provider checks + 2 s is a breach (`active_unprotected`).
Keys: scenarios (name, outcome, reason, seconds_to_protected, seconds_to_failed_over, calls,
rate_limited, passed, notes), all_passed.
"""
import secrets
import tempfile
import threading
import time

from warmpool_lab import http
from warmpool_lab.pool import WarmPool
from warmpool_lab.processes import free_port, keep_or_remove, wait_until

from . import binaries_for, report

POOL, HOST = 12, 77
CHECK_S, LEASE_MS = 2, 1000
ACTIVE_UNPROTECTED_BOUND_S = 2 * CHECK_S + 2


class Scenario:
    """One warm pool (sim + controller, Vast.ai notifications wired to the controller) and a watcher
    of its status, for one scenario."""

    def __init__(self, args, binaries, name, gpus=3, sim_faults=None, bid_price=None):
        self.name, self.args = name, args
        self.workdir = tempfile.mkdtemp(prefix="warmpool-market-%s-" % name.replace("_", "-"))
        secret = secrets.token_hex(16)
        secret_file = self.workdir + "/vast-webhook-secret"
        with open(secret_file, "w") as handle:
            handle.write(secret + "\n")
        api_port = free_port()
        self.pool = WarmPool(
            binaries, self.workdir, args.boot_delay_ms, log_level="info", sim_log_level="info",
            hosts=["%d:%d:RTX_4090:0.45" % (HOST, gpus)], api_port=api_port,
            sim_extra=["--notify-url", "http://127.0.0.1:%d/api/v1/provider/vast/notifications" % api_port,
                       "--notify-secret", secret],
            controller_extra=["--standby-check-s", str(CHECK_S), "--lease-ms", str(LEASE_MS), "--restart-grace-ms", "3000",
                              "--fence-timeout-ms", "3000", "--scheduling-timeout-s", str(args.scheduling_timeout_s),
                              "--vast-webhook-secret-file", secret_file, "--operation-timeout-s", "300"])
        self.samples = []           # (seconds since the fault or None, state, protected, error)
        self.fault_at = None
        self.stop_watch = threading.Event()
        self.active_unprotected_since = None
        self.max_active_unprotected = 0.0
        self.watcher = threading.Thread(target=self.watch, daemon=True)
        try:
            body = {"machine_id": POOL, "host_machine_id": HOST}
            if bid_price:
                body["bid_price"] = bid_price
            answer = http.request("POST", self.pool.api_url + "/api/v1/warmpool/provision", self.pool.api_key, body, timeout=300)
            if answer["status"]["state"] != "active":
                raise RuntimeError("provisioning ended in state %s" % answer["status"]["state"])
            wait_until("the new pool to be protected", lambda: self.status().get("protected"), 60, interval=0.2)
            if sim_faults:
                self.faults(sim_faults)
            self.pool.sim_call("DELETE", "/admin/counters")
        except BaseException:
            self.close()
            raise
        self.watcher.start()

    def status(self):
        return self.pool.status(POOL)

    def faults(self, plan):
        status, answer = self.pool.sim_call("POST", "/admin/faults", plan)
        if status != 200:
            raise RuntimeError("faults %s: %s %s" % (plan, status, answer))

    def mark_fault(self):
        self.fault_at = time.monotonic()

    def since_fault(self):
        return None if self.fault_at is None else round(time.monotonic() - self.fault_at, 2)

    def watch(self):
        while not self.stop_watch.is_set():
            try:
                status = self.status()
            except Exception:  # noqa: BLE001 - a refused call is a sample of nothing
                time.sleep(0.2)
                continue
            now = time.monotonic()
            state, protected = status.get("state"), bool(status.get("protected"))
            self.samples.append((self.since_fault(), state, protected, status.get("error_message")))
            if state == "active" and not protected:
                self.active_unprotected_since = self.active_unprotected_since or now
                self.max_active_unprotected = max(self.max_active_unprotected, now - self.active_unprotected_since)
            else:
                self.active_unprotected_since = None
            time.sleep(0.2)

    def first(self, predicate, timeout, after=0.0):
        """Seconds from the fault until a status sample taken `after` seconds or later satisfies
        `predicate`, or None."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for since, state, protected, error in list(self.samples):
                if since is not None and since >= after and predicate(state, protected, error):
                    return since
            time.sleep(0.1)
        return None

    def failed_over(self, old, timeout):
        """Seconds from the fault until a failover of `old` was promoted, or None."""
        def promoted():
            failover = self.pool.failover_of(old, POOL)
            return failover if failover and failover.get("result") == "succeeded" else None
        try:
            wait_until("the failover of %d" % old, promoted, timeout, interval=0.2)
        except Exception:  # noqa: BLE001
            return None
        return self.since_fault()

    def provider_counts(self):
        counters = self.pool.sim_call("GET", "/admin/counters")[1]
        return sum(counters.get("calls", {}).values()), sum(counters.get("rate_limited", {}).values())

    def result(self, passed, seconds_to_protected=None, seconds_to_failed_over=None, notes=""):
        status = self.status()
        calls, limited = self.provider_counts()
        outcome = "protected" if status.get("protected") and status.get("state") == "active" else status.get("state")
        return {
            "name": self.name, "outcome": outcome,
            "reason": None if outcome == "protected" else status.get("error_message"),
            "remediation": status.get("remediation"),
            "seconds_to_protected": seconds_to_protected, "seconds_to_failed_over": seconds_to_failed_over,
            "calls": calls, "rate_limited": limited,
            "max_active_unprotected_s": round(self.max_active_unprotected, 1),
            "passed": bool(passed) and self.max_active_unprotected <= ACTIVE_UNPROTECTED_BOUND_S, "notes": notes,
        }

    def __enter__(self):
        return self

    def __exit__(self, *_):
        self.close()

    def close(self):
        self.stop_watch.set()
        if self.watcher.is_alive():
            self.watcher.join(5)
        try:
            http.call("DELETE", self.pool.api_url + "/api/v1/warmpool/cleanup/%d" % POOL, self.pool.api_key, timeout=120)
        finally:
            self.pool.stop()
            keep_or_remove(self.workdir, self.args.keep_logs, "drill")


def protected(state, is_protected, _):
    return state == "active" and is_protected


def standby_gpu_taken(run):
    # Two GPUs: the primary holds one, the stopped standby none: a renter takes the other.
    with Scenario(run.args, run.binaries, "standby_gpu_taken", gpus=2) as scenario:
        # First a maintenance announced for the host: a condition that informs, the pool still protected.
        scenario.pool.sim_call("POST", "/admin/notifications",
                               {"notif_type": "maintenance_scheduled", "machine_id": HOST, "data": {"start_time": 1900000000}})

        def maintenance():
            status = scenario.status()
            condition = next((c for c in status.get("conditions", []) if c["type"] == "HostMaintenance"), {})
            return condition.get("status") == "True" and status.get("protected") and condition.get("message")
        announced = wait_until("the host's maintenance to show", maintenance, 10, interval=0.2)
        scenario.mark_fault()
        scenario.faults({"rented_gpus": {str(HOST): 1}})
        reported = scenario.first(lambda state, _, error: state == "degraded" and (error or "").startswith("standby at risk"),
                                  ACTIVE_UNPROTECTED_BOUND_S + 10)
        while_taken = scenario.status()
        time.sleep(3)
        released_at = scenario.since_fault()
        scenario.faults({})
        back = scenario.first(protected, 30, after=released_at)
        seconds = None if back is None else round(back - released_at, 2)
        notes = ("while the GPU was taken: %s (%s), reported %s s after the fault; protected %s s after the renter gave "
                 "it back; before: HostMaintenance %r, still protected") % (
            while_taken.get("state"), while_taken.get("error_message"), reported, seconds, announced)
        return scenario.result(reported is not None and reported <= ACTIVE_UNPROTECTED_BOUND_S + 1 and seconds is not None,
                               seconds_to_protected=seconds, notes=notes)


def standby_gpu_taken_during_failover(run):
    with Scenario(run.args, run.binaries, "standby_gpu_taken_during_failover", gpus=3,
                  sim_faults={"own_gpu_restart": True}) as scenario:
        old = scenario.status()["primary_gpu_id"]
        scenario.mark_fault()
        # The renter takes the first free GPU: the stopped standby's own (the third stays free).
        scenario.faults({"own_gpu_restart": True, "rented_gpus": {str(HOST): 1}})
        scenario.pool.fault(old, "crash")
        failed_over = scenario.failed_over(old, run.args.scheduling_timeout_s + run.args.boot_delay_ms / 1000 + 90)
        back = scenario.first(protected, 120, after=failed_over or 0)
        target = run.args.scheduling_timeout_s + run.args.boot_delay_ms / 1000 + 10
        steps = [s["step"] for s in (scenario.pool.failover_of(old, POOL) or {}).get("timeline", [])]
        notes = "target: failed over within %.0f s (bound + boot + 10 s); steps %s" % (target, ",".join(steps))
        return scenario.result(failed_over is not None and failed_over <= target and back is not None,
                               seconds_to_protected=back, seconds_to_failed_over=failed_over, notes=notes)


def primary_outbid(run):
    # Each notification is delivered twice ("at least once"): the controller acts on it once.
    with Scenario(run.args, run.binaries, "primary_outbid", gpus=3, bid_price=0.3,
                  sim_faults={"duplicate_notifications": True}) as scenario:
        old = scenario.status()["primary_gpu_id"]
        scenario.mark_fault()
        status, answer = scenario.pool.sim_call("POST", "/admin/instances/%d/outbid" % old, {})
        if status != 200:
            raise RuntimeError("outbid: %s %s" % (status, answer))
        begun = scenario.first(lambda state, _, __: state == "failover", 10)
        failed_over = scenario.failed_over(old, 90)
        back = scenario.first(protected, 120, after=failed_over or 0)
        timeline = (scenario.pool.failover_of(old, POOL) or {}).get("timeline", [])
        detected = next((s.get("detail") or "" for s in timeline if s["step"] == "detected"), "")
        by = "provider notification" if "notification" in detected else "heartbeats"
        deliveries = scenario.pool.sim_call("GET", "/admin/notifications")[1].get("deliveries", [])
        delivered = [d for d in deliveries if d["notif_type"] == "outbid" and d.get("status") == 200]
        events = scenario.pool.api("GET", "/events/%d?limit=200" % POOL)[1].get("events", [])
        recorded = [e for e in events if e.get("kind") == "provider_notification" and "outbid" in (e.get("detail") or "")]
        lease_wait = LEASE_MS / 1000 + 1
        target = 2 + lease_wait + run.args.boot_delay_ms / 1000 + 10
        notes = ("detected by %s; outbid notification delivered %d time(s), recorded %d time(s); failover begun %s s after "
                 "the outbid; target: failed over within %.0f s (2 s + lease wait + boot + 10 s)") % (
            by, len(delivered), len(recorded), begun, target)
        return scenario.result(begun is not None and begun <= 2 and failed_over is not None and failed_over <= target
                               and len(delivered) == 2 and len(recorded) == 1,
                               seconds_to_protected=back, seconds_to_failed_over=failed_over, notes=notes)


def machine_offline(run):
    with Scenario(run.args, run.binaries, "machine_offline", gpus=3) as scenario:
        old = scenario.status()["primary_gpu_id"]
        scenario.mark_fault()
        scenario.faults({"offline_machines": [HOST]})
        not_active = scenario.first(lambda state, _, __: state != "active", ACTIVE_UNPROTECTED_BOUND_S + 10)
        time.sleep(run.args.offline_s)
        back_online = scenario.since_fault()
        scenario.faults({})
        failed_over = scenario.failed_over(old, 120)
        back = scenario.first(protected, 150, after=failed_over or 0)
        notes = ("pool left `active` %s s after the machine went offline; back online at %s s; "
                 "failed over once the provider could confirm the old primary stopped") % (not_active, back_online)
        return scenario.result(not_active is not None and failed_over is not None and back is not None,
                               seconds_to_protected=back, seconds_to_failed_over=failed_over, notes=notes)


def rate_limited(run):
    with Scenario(run.args, run.binaries, "rate_limited", gpus=3) as scenario:
        old = scenario.status()["primary_gpu_id"]
        scenario.mark_fault()
        scenario.faults({"min_interval_ms": {"*": run.args.interval_ms}})
        scenario.pool.fault(old, "crash")
        failed_over = scenario.failed_over(old, 180)
        back = scenario.first(protected, 240, after=failed_over or 0)
        notes = "every endpoint limited to one call per %d ms" % run.args.interval_ms
        return scenario.result(failed_over is not None and back is not None, seconds_to_protected=back,
                               seconds_to_failed_over=failed_over, notes=notes)


SCENARIOS = [standby_gpu_taken, standby_gpu_taken_during_failover, primary_outbid, machine_offline, rate_limited]


class Run:
    def __init__(self, args):
        self.args = args
        self.binaries = binaries_for(args)


def marketplace(args):
    run = Run(args)
    chosen = [s for s in SCENARIOS if not args.only or s.__name__ in args.only.split(",")]
    results = []
    for scenario in chosen:
        try:
            result = scenario(run)
        except Exception as error:  # noqa: BLE001 - a scenario that broke is reported, not raised
            result = {"name": scenario.__name__, "outcome": "error", "reason": str(error), "seconds_to_protected": None,
                      "seconds_to_failed_over": None, "calls": None, "rate_limited": None, "passed": False, "notes": ""}
        results.append(result)
        print("%s: %s" % (result["name"], "passed" if result["passed"] else "FAILED"), flush=True)
    summary = {"boot_delay_ms": args.boot_delay_ms, "scheduling_timeout_s": args.scheduling_timeout_s,
               "scenarios": results, "all_passed": all(r["passed"] for r in results)}
    rows = [("%s" % r["name"], "%s%s; protected %s s, failed over %s s; %s calls, %s 429s" % (
        r["outcome"], " (%s)" % r["reason"] if r.get("reason") else "", r["seconds_to_protected"], r["seconds_to_failed_over"],
        r["calls"], r["rate_limited"])) for r in results]
    breaches = ["%s: %s" % (r["name"], r.get("notes") or r.get("reason")) for r in results if not r["passed"]]
    return report("marketplace drill: GPU taken, outbid, offline, rate limits (boot %d ms)" % args.boot_delay_ms,
                  rows, summary, args, breaches)
