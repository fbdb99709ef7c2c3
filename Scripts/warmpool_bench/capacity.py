"""`bench capacity`: simulated agents at 10 Hz, stepped up; the controller's cost and verdicts."""
import json
import os
import shutil
import sys
import tempfile
import time

from warmpool_lab.pool import Controller, freeze_trials, loadgen_keys, real_agent_starter
from warmpool_lab.processes import cpu_seconds, spawn, stop
from warmpool_lab.stats import percentile

from . import build


def capacity_pins(pin):
    """Command prefixes putting the controller on CPU 0 and the load generator on CPU 1.

    Unpinned, the two processes (and the kernel's loopback work, done in each sender's context)
    migrate across both cores and preempt each other: at 10,000 agents the generator's threads
    fell up to 1.3 s behind schedule, longer than the detector's lossy timeout, and a run could
    fail agents that only the generator had starved. Pinned, each has a core of its own, as when
    the agents run on other machines; what is measured, the controller's cost per beat and its
    verdicts, is the same. Needs two CPUs; with fewer, nothing is pinned."""
    if not pin or (os.cpu_count() or 1) < 2:
        return [], []
    return ["taskset", "-c", "0"], ["taskset", "-c", "1"]


def measure_capacity(binaries, steps, seconds, trials, connections, log=True, pin=True):
    """Steps the number of simulated agents up; at each step measures the controller and times the
    failure of real frozen agents in the crowd. Returns one row per step."""
    rows = []
    for count in steps:
        workdir = tempfile.mkdtemp(prefix="warmpool-capacity-")
        keys = os.path.join(workdir, "keys")
        loadgen_keys(binaries, count, keys)
        pins = capacity_pins(pin)
        controller = Controller(binaries, workdir, keys, extra=["--heartbeat-interval-ms", "100"], prefix=pins[0])
        loadgen_log = os.path.join(workdir, "loadgen.log")
        # One session per agent: the lean `beats` agents (real handshakes and frames, less CPU per
        # beat than the full agents), so that the controller is the one measured on these 2 cores.
        mode = ["beats"] if connections == 1 else ["run", "--connections", str(connections)]
        loadgen = spawn(pins[1] + [os.path.join(binaries, "warmpool-loadgen")] + mode + [
            "--count", str(count), "--controller", controller.address, "--threads", "2", "--seconds", str(seconds + 600)],
            loadgen_log)
        try:
            connected = controller.events.wait_connected(count, 180, required=False)
            time.sleep(2)
            steady_from = len(controller.events.seen)
            loadgen_reports_from = len(loadgen_reports(loadgen_log))
            cpu_start, wall_start = controller.cpu_seconds(), time.monotonic()
            loadgen_start = cpu_seconds(loadgen.pid)
            detections = freeze_trials(controller.events, trials, "crowd-%d" % count,
                                       real_agent_starter(binaries, controller, workdir))
            remaining = seconds - (time.monotonic() - wall_start)
            if remaining > 0:
                time.sleep(remaining)
            cpu, wall = controller.cpu_seconds() - cpu_start, time.monotonic() - wall_start
            rss = controller.rss_mib()
            loadgen_cpu = cpu_seconds(loadgen.pid) - loadgen_start
            controller.events.poll()
            steady = [e for e in controller.events.seen[steady_from:] if e["agent_id"].startswith("load-")]
            reports = loadgen_reports(loadgen_log)[loadgen_reports_from:]
        finally:
            stop(loadgen, 60)
            controller.stop()
            shutil.rmtree(workdir, ignore_errors=True)
        rate_pct = beat_rate_pct(reports, count * connections * 10)
        # Per beat actually sent, where the load generator says how many that was.
        frames = count * connections * 10 * wall * (rate_pct / 100 if rate_pct else 1)
        row = {
            "agents": count, "connections": count * connections, "connected": connected,
            "cpu_us_per_heartbeat": round(cpu * 1e6 / frames, 2), "controller_cpu_pct": round(100 * cpu / wall, 1),
            "controller_rss_mib": round(rss, 1), "detect_p99_ms": round(percentile(detections, 0.99), 1),
            "false_failures": sum(1 for e in steady if e["event"] == "failed"),
            "suspected": sum(1 for e in steady if e["event"] == "suspected"),
            "loadgen_cpu_pct": round(100 * loadgen_cpu / wall, 1),
            "beat_rate_pct": rate_pct,
            "loadgen_late_max_ms": max((r["late_max_ms"] for r in reports), default=None),
            "pinned": bool(pins[0]),
        }
        rows.append(row)
        if log:
            print("step %d agents: %s" % (count, row), file=sys.stderr, flush=True)
    return rows


def loadgen_reports(path):
    """The lean load generator's 5-second report lines, parsed."""
    reports = []
    with open(path, errors="replace") as handle:
        for line in handle:
            if line.startswith("loadgen: thread ") and " beats=" in line:
                fields = dict(part.split("=", 1) for part in line.split() if "=" in part)
                reports.append({"thread": line.split()[2], "beats": int(fields["beats"]),
                                "seconds": float(fields["seconds"]), "late_max_ms": int(fields["late_max_ms"])})
    return reports


def beat_rate_pct(reports, nominal_per_second):
    """The beats the load generator really sent in the measured window, as a percentage of the
    nominal rate (agents x 10 Hz): a saturated machine beats its agents slower than 10 Hz and the
    controller then sees less load than the step claims. None without reports (the full agents)."""
    threads = {}
    for report in reports:
        beats, seconds = threads.get(report["thread"], (0, 0.0))
        threads[report["thread"]] = (beats + report["beats"], seconds + report["seconds"])
    if not threads or any(seconds <= 0 for _, seconds in threads.values()):
        return None
    rate = sum(beats / seconds for beats, seconds in threads.values())
    return round(100 * rate / nominal_per_second, 1)


def capacity_agents(rows):
    """The largest step that held: every agent connected, beating at 10 Hz (within 5 %: the rate the load generator really sent), zero
    false failures, and the detection target."""
    holding = [r["agents"] for r in rows
               if r["connected"] == r["agents"] and r["false_failures"] == 0 and r["detect_p99_ms"] <= 400
               and (r.get("beat_rate_pct") is None or r["beat_rate_pct"] >= 95)]
    return max(holding) if holding else 0


def print_capacity(rows, connections):
    where = ("controller on CPU 0, load generator on CPU 1" if rows and rows[0].get("pinned")
             else "load generator on the same cores, unpinned")
    print("controller capacity at 10 Hz, %d session(s) per agent (%s)" % (connections, where))
    print("%8s %12s %10s %10s %10s %8s %9s %10s %10s" % ("agents", "us/beat", "cpu %", "rss MiB", "detect p99", "false",
                                                        "suspects", "beat rate", "loadgen %"))
    for r in rows:
        rate = "-" if r.get("beat_rate_pct") is None else "%.1f %%" % r["beat_rate_pct"]
        print("%8d %12.2f %10.1f %10.1f %10.1f %8d %9d %10s %10.1f" % (
            r["agents"], r["cpu_us_per_heartbeat"], r["controller_cpu_pct"], r["controller_rss_mib"],
            r["detect_p99_ms"], r["false_failures"], r["suspected"], rate, r["loadgen_cpu_pct"]))
    print("capacity (all connected and beating at 10 Hz, zero false failures, hang detection p99 <= 400 ms): %d agents"
          % capacity_agents(rows))


def capacity(args):
    binaries = build(args)
    rows = measure_capacity(binaries, args.steps, args.seconds, args.trials, args.connections, log=not args.json,
                            pin=not args.no_pin)
    print_capacity(rows, args.connections)
    if args.json:
        print(json.dumps({"capacity_agents_10hz": capacity_agents(rows), "steps": rows}))
    return 0
