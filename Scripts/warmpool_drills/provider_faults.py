"""`drill provider-faults`: failovers on a clean provider, then with a share of its calls failing."""
from warmpool_lab.processes import wait_until
from warmpool_lab.stats import percentile

from . import report
from .failover_lab import check_timeline, failover_lab, lab_pool


def provider_faults(args):
    """Failovers on a clean provider, then with a share of its calls failing (5xx, 429, timeouts)."""

    def cycles(pool, count, label, breaches, provoked, launches, replaced, degraded):
        durations = []
        for index in range(count):
            before = pool.status()
            primary, standby = before["primary_gpu_id"], before["standby_gpu_id"]
            wait_until("the primary's agent", lambda: pool.agent_alive(primary), 60)
            counters = pool.sim_call("GET", "/admin/counters")[1]
            creates_before = counters["creates"]
            boots_before = counters["boots"].get(str(standby), 0)
            # The crash is an admin call: faults never touch it.
            provoked.add(primary)
            pool.sim_call("POST", "/admin/instances/%d/crash" % primary)
            failover = pool.wait_failover(primary, timeout=300)
            tag = "%s failover %d: " % (label, index + 1)
            was_degraded = pool.status().get("state") == "degraded"
            if was_degraded:
                # The failover is over but the new standby's create failed (retryable errors past the
                # budget): the engine tries again after ten retry delays. The next crash waits for it,
                # or it would find no standby to fail over to.
                degraded.append(tag.rstrip(": "))
                try:
                    wait_until("the pool's new standby", lambda: pool.status().get("state") == "active", 120, interval=0.2)
                except TimeoutError:
                    breaches.append(tag + "no standby again within 120 s")
            counters = pool.sim_call("GET", "/admin/counters")[1]
            if failover.get("result") != "succeeded":
                breaches.append(tag + str(failover.get("result")))
            # A degraded pool's new standby comes with the engine's retry, outside this timeline.
            lacking = [step for step in check_timeline(failover) if not (was_degraded and step == "standby_ready")]
            if lacking:
                breaches.append(tag + "timeline lacks %s" % lacking)
            # A standby that would not start is destroyed and replaced on the next free GPU (by
            # design): each abandonment is one more create, and its standby may never launch.
            abandoned = sum(1 for step in failover.get("timeline", []) if step["step"] == "standby_abandoned")
            if abandoned:
                replaced.append("%s (%s)" % (tag.rstrip(": "), "; ".join(
                    step.get("detail") or "" for step in failover["timeline"] if step["step"] == "standby_abandoned")))
            # Launches, not start requests: a start held past the client's timeout is re-sent (it is
            # idempotent), and the provider answers the second "already running".
            launches.append(counters["boots"].get(str(standby), 0) - boots_before)
            if launches[-1] > 1 or (launches[-1] != 1 and not abandoned):
                breaches.append(tag + "standby launched %d times" % launches[-1])
            if counters["creates"] - creates_before != 1 + abandoned:
                breaches.append(tag + "%d creates for %d abandoned standby(s) (duplicate instance)" % (
                    counters["creates"] - creates_before, abandoned))
            # Whatever happened on the way, the provider ends with the pool's two instances (the old
            # primary's destroy may still be retrying; the listing itself can be a faulted call).
            def listed():
                answer = pool.sim_call("GET", "/api/v0/instances/")[1]
                return answer.get("instances") if isinstance(answer, dict) and "instances" in answer else None
            counts = []

            def two_listed():
                instances = listed()
                if instances is not None:
                    counts.append(len(instances))
                return instances is not None and len(instances) == 2
            try:
                wait_until("two instances at the provider", two_listed, 30, interval=0.2)
            except TimeoutError:
                breaches.append(tag + "%s instances at the provider, not 2" % (counts[-1] if counts else "no answer listing"))
            durations.append(failover.get("duration_seconds") or 0)
        return durations

    def run(binaries, workdir, lab):
        pool = lab_pool(binaries, workdir, lab,
                        controller_extra=["--provider-timeout-s", "1"])
        breaches = []
        replaced = []
        degraded = []
        try:
            pool.provision()
            provoked = set()
            clean = cycles(pool, args.failovers, "clean", breaches, provoked, [], [], [])
            launches = []
            plan = {"failure_rate": args.failure_rate, "rate_limit_rate": args.rate_limit_rate,
                    "timeout_rate": args.timeout_rate, "timeout_ms": 1500, "retry_after_seconds": 1}
            pool.sim_call("DELETE", "/admin/counters")
            pool.sim_call("POST", "/admin/faults", plan)
            faulty = cycles(pool, args.failovers, "faulty", breaches, provoked, launches, replaced, degraded)
            counters = pool.sim_call("GET", "/admin/counters")[1]
            pool.sim_call("POST", "/admin/faults", {})
            false_failovers = pool.unprovoked(provoked)
            if false_failovers:
                # A healthy primary failed over: the detector's false failure (a starved CPU can do it).
                breaches.append("failovers of primaries the drill left alone: %s" % false_failovers)
        finally:
            pool.stop()
        start_requests = sum(counters["starts"].values())
        served = sum(counters["calls"].values())
        failed = sum(counters["injected_failures"].values()) + sum(counters["rate_limited"].values())
        timed_out = sum(counters.get("timed_out", {}).values())
        summary = {
            "failovers": args.failovers, "plan": plan,
            "clean_p50_s": percentile(clean, 0.5), "clean_max_s": max(clean),
            "faulty_p50_s": percentile(faulty, 0.5), "faulty_max_s": max(faulty),
            "calls": served + failed, "injected_5xx": sum(counters["injected_failures"].values()),
            "injected_429": sum(counters["rate_limited"].values()), "injected_timeouts": timed_out,
            "faulted_share": round((failed + timed_out) / max(1, served + failed), 3),
            "start_requests_served": start_requests, "standbys_replaced": replaced, "degraded_after": degraded,
        }
        rows = [
            ("clean provider: failover p50 / max", "%.2f / %.2f s" % (summary["clean_p50_s"], summary["clean_max_s"])),
            ("faulty provider: failover p50 / max", "%.2f / %.2f s" % (summary["faulty_p50_s"], summary["faulty_max_s"])),
            ("time cost of the faults, p50", "+%.2f s" % (summary["faulty_p50_s"] - summary["clean_p50_s"])),
            ("provider calls during faulty failovers", summary["calls"]),
            ("  injected 5xx / 429 / timeouts (then served)", "%d / %d / %d" % (
                summary["injected_5xx"], summary["injected_429"], summary["injected_timeouts"])),
            ("  share of calls faulted", "%.0f %%" % (summary["faulted_share"] * 100)),
            ("standby launches / start requests served", "%d / %d" % (sum(launches), start_requests)),
            ("standbys replaced on the next GPU", "%d%s" % (len(replaced), "".join("\n    " + r for r in replaced))),
            ("new standby's create failed, retried (degraded)", "%d%s" % (len(degraded), "".join("\n    " + d for d in degraded))),
        ]
        return report("provider-faults drill: %d failovers clean, %d with faults" % (args.failovers, args.failovers),
                      rows, summary, args, breaches)

    return failover_lab(args, run)
