"""`drill controller-crash`: the controller SIGKILLed at each step of a failover, then restarted."""
from warmpool_lab.processes import wait_until

from . import report
from .failover_lab import check_timeline, failover_lab, lab_pool


CRASH_POINTS = [
    # (name, step seen in the timeline, step not yet seen, whether the provider has served the
    # standby's start): the controller is SIGKILLed in between.
    ("after detection", "detected", "fenced", False),
    ("after fence", "fenced", "standby_running", False),
    ("after start", "standby_starting", "standby_running", True),
    ("during verification", "standby_running", "promoted", True),
    ("during re-provisioning", "standby_provisioning", "standby_ready", True),
]


def controller_crash(args):
    """SIGKILLs the controller at each step of a failover, restarts it, checks the failover finishes."""

    def run(binaries, workdir, lab):
        # Slow provider calls and a slow boot widen each window.
        pool = lab_pool(binaries, workdir, lab, boot_delay_ms=args.boot_delay_ms,
                        sim_extra=["--latency-ms", str(args.latency_ms)])
        cycles, breaches, provoked = [], [], set()
        try:
            pool.provision()
            creates_before = 0
            points = [p for p in CRASH_POINTS if not args.only or p[0].split()[-1] in args.only.split(",")] * args.rounds
            for name, seen, unseen, started in points:
                before = pool.status()
                primary, standby = before["primary_gpu_id"], before["standby_gpu_id"]
                wait_until("the primary's agent", lambda: pool.agent_alive(primary), 30)
                counters = pool.sim_call("GET", "/admin/counters")[1]
                creates_before, starts_before = counters["creates"], counters["starts"].get(str(standby), 0)
                provoked.add(primary)
                pool.sim_call("POST", "/admin/instances/%d/crash" % primary)

                def moment():
                    steps = pool.steps(primary)
                    if seen not in steps:
                        return None
                    if started and pool.sim_call("GET", "/admin/counters")[1]["starts"].get(str(standby), 0) == starts_before:
                        return None
                    return steps
                steps = wait_until("the moment %s" % name, moment, 60, interval=0.005)
                pool.controller.kill()
                at_kill = steps[-1]
                killed_before = unseen not in steps
                pool.controller.start()
                failover = pool.wait_failover(primary, timeout=180)
                counters = pool.sim_call("GET", "/admin/counters")[1]
                instances = pool.sim_call("GET", "/api/v0/instances/")[1].get("instances", [])
                after = pool.status()
                cycle = {
                    "point": name, "last_step_at_kill": at_kill, "in_window": killed_before,
                    "result": failover.get("result"), "duration_s": failover.get("duration_seconds"),
                    "missing_steps": check_timeline(failover),
                    "standby_starts": counters["starts"].get(str(standby), 0) - starts_before,
                    "creates": counters["creates"] - creates_before, "instances": len(instances),
                }
                cycles.append(cycle)
                tag = "%s: " % name
                if failover.get("result") != "succeeded" or after.get("primary_gpu_id") != standby:
                    breaches.append(tag + "failover %s, primary %s" % (failover.get("result"), after.get("primary_gpu_id")))
                if cycle["missing_steps"]:
                    breaches.append(tag + "timeline lacks %s" % cycle["missing_steps"])
                if cycle["standby_starts"] != 1:
                    breaches.append(tag + "%d starts of the standby" % cycle["standby_starts"])
                # Provisioning made 2 (primary + standby), each failover 1 (the new standby): 3 per cycle.
                if cycle["creates"] != 1 or len(instances) != 2:
                    breaches.append(tag + "%d creates, %d instances (duplicate?)" % (cycle["creates"], len(instances)))
            false_failovers = pool.unprovoked(provoked)
            if false_failovers:
                # A healthy primary failed over: the detector's false failure (a starved CPU can do it).
                breaches.append("failovers of primaries the drill left alone: %s" % false_failovers)
        finally:
            pool.stop()
        summary = {"cycles": cycles, "latency_ms": args.latency_ms, "boot_delay_ms": args.boot_delay_ms,
                   "in_window": sum(1 for c in cycles if c["in_window"])}
        rows = [("kill point: last step at kill", "result, duration, standby starts, creates, instances")]
        for c in cycles:
            rows.append(("%s: %s%s" % (c["point"], c["last_step_at_kill"], "" if c["in_window"] else " (late)"),
                         "%s, %.1f s, %d, %d, %d" % (c["result"], c["duration_s"] or 0, c["standby_starts"], c["creates"],
                                                   c["instances"])))
        return report("controller-crash drill: %d failovers, SIGKILL mid-way (provider latency %d ms, boot %d ms)"
                      % (len(cycles), args.latency_ms, args.boot_delay_ms), rows, summary, args, breaches)

    return failover_lab(args, run)
