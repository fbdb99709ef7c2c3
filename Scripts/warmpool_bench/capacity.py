"""`bench capacity`: simulated agents at 10 Hz, stepped up; the controller's cost and verdicts,
told apart from the load generator's limits, and read against the transport's floor.

Per step the load generator (`warmpool-loadgen beats`) reports every 5 s the beats it sent and the
agents it beat later than one interval in that window (a beat that late can make a silence of two
intervals, the detector's suspicion threshold). A verdict (suspected, failed) on an agent the
generator beat late in the verdict's window or the next one (the late beat ends the silence the
verdict was made in) is the generator's; the others are the controller's. Per window, not per
step: at 10,000 agents one 300 ms stall of the generator makes every agent late once in a
30-second step, and a step-wide list would leave no agent to judge the controller by. Then `warmpool-loadgen floor` measures loopback TCP alone at the same
socket count and placement: `controller_to_floor` is the controller's CPU per beat over the
floor's receiver CPU per frame, the part of the cost that is the controller's own."""
import json
import os
import shutil
import sys
import tempfile
import time

from warmpool_lab.pool import Controller, freeze_trials, loadgen_keys, real_agent_starter
from warmpool_lab.processes import cpu_seconds, spawn, stop

from . import build, note_error, rounded_percentile
from .protocol import FLOOR_MAX_SOCKETS, measure_floor

INTERVAL_MS = 100
# A beat later than this is the generator's: see the module's note.
LATE_THRESHOLD_MS = INTERVAL_MS
# The beat rate a step must reach for the controller to have carried the step's load.
MIN_BEAT_RATE_PCT = 95
# More late beats than this and the step says `generator_limited` (the verdicts on agents beaten
# on time still count).
GENERATOR_LIMITED_LATE_BEATS_PCT = 1
DETECT_P99_TARGET_MS = 400


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


def measure_capacity(binaries, steps, seconds, trials, connections, log=True, pin=True, floor=True):
    """Steps the number of simulated agents up; at each step measures the controller, times the
    failure of real frozen agents in the crowd and, unless `floor` is false, the transport's floor
    at the same socket count. Returns one row per step; a step that could not be measured has an
    `error` key and the figures that exist."""
    rows = []
    for count in steps:
        row = {"agents": count, "connections": count * connections}
        try:
            _measure_step(row, binaries, count, seconds, trials, connections, pin)
        except Exception as error:  # the step reports what it has; the next step still runs
            note_error(row, error)
        if floor:
            try:
                sockets = min(count * connections, FLOOR_MAX_SOCKETS)
                row["transport_floor"] = measure_floor(binaries, sockets, seconds=min(seconds, 20), pin=pin)
                row["floor_us_per_beat"] = row["transport_floor"]["receiver_us_per_frame"]
                if row.get("cpu_us_per_heartbeat") and row["floor_us_per_beat"]:
                    row["controller_to_floor"] = round(row["cpu_us_per_heartbeat"] / row["floor_us_per_beat"], 2)
            except Exception as error:
                note_error(row, error, "transport floor")
        judge_step(row, trials)
        rows.append(row)
        if log:
            print("step %d agents: %s" % (count, row), file=sys.stderr, flush=True)
    return rows


def _measure_step(row, binaries, count, seconds, trials, connections, pin):
    """Fills `row` with one step's figures as they come: an exception leaves the ones measured."""
    workdir = tempfile.mkdtemp(prefix="warmpool-capacity-")
    controller = loadgen = None
    try:
        keys = os.path.join(workdir, "keys")
        loadgen_keys(binaries, count, keys)
        pins = capacity_pins(pin)
        row["pinned"] = bool(pins[0])
        controller = Controller(binaries, workdir, keys, extra=["--heartbeat-interval-ms", str(INTERVAL_MS)],
                                prefix=pins[0])
        loadgen_log = os.path.join(workdir, "loadgen.log")
        # One session per agent: the lean `beats` agents (real handshakes and frames, less CPU per
        # beat than the full agents), so that the controller is the one measured on these 2 cores.
        mode = (["beats", "--late-threshold-ms", str(LATE_THRESHOLD_MS)] if connections == 1
                else ["run", "--connections", str(connections)])
        loadgen = spawn(pins[1] + [os.path.join(binaries, "warmpool-loadgen")] + mode + [
            "--count", str(count), "--controller", controller.address, "--threads", "2", "--seconds", str(seconds + 600)],
            loadgen_log)
        row["connected"] = controller.events.wait_connected(count, 180, required=False)
        time.sleep(2)
        steady_from = len(controller.events.seen)
        reports_from = len(loadgen_reports(loadgen_log))
        cpu_start, wall_start = controller.cpu_seconds(), time.monotonic()
        loadgen_start = cpu_seconds(loadgen.pid)
        trial_errors = []
        detections = freeze_trials(controller.events, trials, "crowd-%d" % count,
                                   real_agent_starter(binaries, controller, workdir), errors=trial_errors)
        row["detect_p99_ms"] = rounded_percentile(detections, 0.99)
        row["detect_trials"] = len(detections)
        if trial_errors:
            row["detect_errors"] = trial_errors
        remaining = seconds - (time.monotonic() - wall_start)
        if remaining > 0:
            time.sleep(remaining)
        cpu, wall = controller.cpu_seconds() - cpu_start, time.monotonic() - wall_start
        row["controller_rss_mib"] = round(controller.rss_mib(), 1)
        loadgen_cpu = cpu_seconds(loadgen.pid) - loadgen_start
        controller.events.poll()
        steady = [e for e in controller.events.seen[steady_from:] if e["agent_id"].startswith("load-")]
        reports = loadgen_reports(loadgen_log)[reports_from:]
        # The window in progress at the end holds beats of the measured time too: the verdicts on
        # them may have been made already, so its late agents are waited for as well.
        closing = _next_reports(loadgen_log, reports_from + len(reports), {r["thread"] for r in reports}, loadgen)
    finally:
        stop(loadgen, 60)
        if controller is not None:
            controller.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    nominal = count * connections * 1000 / INTERVAL_MS
    rate_pct = beat_rate_pct(reports, nominal)
    # Per beat actually sent, where the load generator says how many that was.
    frames = nominal * wall * (rate_pct / 100 if rate_pct else 1)
    windows = reports + closing
    late = set().union(*(r["late"] for r in windows)) if windows else set()
    on_time = [e for e in steady if not _generators(e, windows)]
    row.update({
        "cpu_us_per_heartbeat": round(cpu * 1e6 / frames, 2), "controller_cpu_pct": round(100 * cpu / wall, 1),
        # The controller's verdicts, on agents the generator kept on schedule.
        "false_failures": sum(1 for e in on_time if e["event"] == "failed"),
        "suspected": sum(1 for e in on_time if e["event"] == "suspected"),
        "loadgen_cpu_pct": round(100 * loadgen_cpu / wall, 1),
        "beat_rate_pct": rate_pct,
        "achieved_beats_per_s": round(nominal * rate_pct / 100) if rate_pct is not None else None,
        "loadgen_late_max_ms": max((r["late_max_ms"] for r in reports), default=None),
    })
    if reports and "late_beats" in reports[0]:
        sent = sum(r["beats"] for r in reports)
        row.update({
            # Agents beaten late at least once in the step (their other verdicts still count).
            "late_agents": len(late),
            "late_beats_pct": round(100 * sum(r["late_beats"] for r in reports) / sent, 2) if sent else None,
            # The generator's silences, not the controller's mistakes.
            "failures_of_late_agents": sum(1 for e in steady if e["event"] == "failed") - row["false_failures"],
            "suspicions_of_late_agents": sum(1 for e in steady if e["event"] == "suspected") - row["suspected"],
        })


def _generators(event, windows):
    """True when `event` fell in a window, or the one before a window, in which the generator
    beat its agent late: the silence it judged was the generator's."""
    if not windows or "at_ns" not in windows[0]:
        return False
    agent = int(event["agent_id"][len("load-"):])
    at = event["monotonic_ns"]
    for window in windows:
        if agent in window["late"]:
            start = window["at_ns"] - int(window["seconds"] * 1e9)
            # This window, or the one before it (a verdict made during the silence a late beat ends).
            if start - int(window["seconds"] * 1e9) <= at <= window["at_ns"]:
                return True
    return False


def _next_reports(path, after, threads, loadgen, timeout=7):
    """The next report of each thread in `threads` after the first `after` reports (a report
    comes every 5 s); those that come within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        fresh = loadgen_reports(path)[after:]
        if threads <= {r["thread"] for r in fresh} or time.monotonic() > deadline or loadgen.poll() is not None:
            return fresh
        time.sleep(0.2)


def judge_step(row, trials):
    """`generator_limited`, `holds` and, where it does not hold, `limit`: what stopped it."""
    count = row["agents"]
    rate = row.get("beat_rate_pct")
    row["generator_limited"] = ((rate is not None and rate < MIN_BEAT_RATE_PCT)
                                or (row.get("late_beats_pct") or 0) > GENERATOR_LIMITED_LATE_BEATS_PCT)
    limit = None
    if "error" in row and "cpu_us_per_heartbeat" not in row:
        limit = "error"
    elif row.get("connected") != count:
        limit = "connections"
    elif rate is not None and rate < MIN_BEAT_RATE_PCT:
        limit = "generator"
    elif row.get("false_failures") or (trials and (row.get("detect_p99_ms") is None
                                                   or row["detect_p99_ms"] > DETECT_P99_TARGET_MS)):
        # A saturated controller is late to read beats and to judge silences alike.
        limit = "controller_cpu" if row.get("controller_cpu_pct", 0) >= 90 else "detection"
    row["holds"] = limit is None
    row["limit"] = limit


def loadgen_reports(path):
    """The lean load generator's 5-second report lines, parsed: `late` is the set of agent
    indices it beat late in that window (absent from an older generator's lines)."""
    reports = []
    with open(path, errors="replace") as handle:
        for line in handle:
            if line.startswith("loadgen: thread ") and " beats=" in line and line.endswith("\n"):
                fields = dict(part.split("=", 1) for part in line.split() if "=" in part)
                report = {"thread": line.split()[2], "beats": int(fields["beats"]),
                          "seconds": float(fields["seconds"]), "late_max_ms": int(fields["late_max_ms"]),
                          "late": _indices(fields.get("late", "-"))}
                if "late_beats" in fields:
                    report["late_beats"] = int(fields["late_beats"])
                if "at_ns" in fields:
                    report["at_ns"] = int(fields["at_ns"])
                reports.append(report)
    return reports


def _indices(ranges):
    """{3, 4, 5, 9} from "3-5,9"; the empty set from "-"."""
    indices = set()
    for part in ranges.split(","):
        if part == "-" or not part:
            continue
        first, _, last = part.partition("-")
        indices.update(range(int(first), int(last or first) + 1))
    return indices


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
    """The largest step that held (`judge_step`): every agent connected, the load carried (beat
    rate within 5 % of 10 Hz), zero false failures among the agents the generator kept on
    schedule, and the detection target."""
    holding = [r["agents"] for r in rows if r.get("holds")]
    return max(holding) if holding else 0


def capacity_bound(rows):
    """What bounds the capacity: the limit of the smallest step above it that did not hold
    (controller_cpu, generator, detection, connections or error); "steps" when every step held
    (the steps asked for end before the controller does)."""
    capacity = capacity_agents(rows)
    above = sorted((r for r in rows if r["agents"] > capacity and not r.get("holds")), key=lambda r: r["agents"])
    return above[0]["limit"] if above else "steps"


def overall_ratio(rows):
    """(controller_to_floor, agents) at the largest step that has the ratio: the heaviest load
    measured, where the issue's figures were read."""
    measured = [r for r in rows if r.get("controller_to_floor")]
    if not measured:
        return None, None
    largest = max(measured, key=lambda r: r["agents"])
    return largest["controller_to_floor"], largest["agents"]


def capacity_summary(rows):
    ratio, at = overall_ratio(rows)
    summary = {"capacity_agents_10hz": capacity_agents(rows), "bound": capacity_bound(rows),
               "controller_to_floor": ratio, "controller_to_floor_agents": at, "steps": rows}
    errors = ["%d agents: %s" % (r["agents"], r["error"]) for r in rows if "error" in r]
    if errors:
        summary["error"] = "; ".join(errors)
    return summary


def _cell(value, form, empty="-"):
    return empty if value is None else form % value


def print_capacity(rows, connections):
    where = ("controller on CPU 0, load generator on CPU 1" if rows and rows[0].get("pinned")
             else "load generator on the same cores, unpinned")
    print("controller capacity at 10 Hz, %d session(s) per agent (%s)" % (connections, where))
    print("%8s %9s %8s %8s %8s %8s %10s %6s %8s %7s %10s %8s %9s %s" % (
        "agents", "us/beat", "floor", "ratio", "cpu %", "rss MiB", "detect p99", "false", "suspects", "late",
        "beat rate", "gen %", "late max", "verdict"))
    for r in rows:
        print("%8d %9s %8s %8s %8s %8s %10s %6s %8s %7s %10s %8s %9s %s" % (
            r["agents"], _cell(r.get("cpu_us_per_heartbeat"), "%.2f"), _cell(r.get("floor_us_per_beat"), "%.2f"),
            _cell(r.get("controller_to_floor"), "%.2f"), _cell(r.get("controller_cpu_pct"), "%.1f"),
            _cell(r.get("controller_rss_mib"), "%.1f"), _cell(r.get("detect_p99_ms"), "%.1f"),
            _cell(r.get("false_failures"), "%d"), _cell(r.get("suspected"), "%d"), _cell(r.get("late_agents"), "%d"),
            _cell(r.get("beat_rate_pct"), "%.1f %%"), _cell(r.get("loadgen_cpu_pct"), "%.1f"),
            _cell(r.get("loadgen_late_max_ms"), "%d ms"),
            ("holds" if r.get("holds") else "limit: %s" % r.get("limit"))
            + (" (generator limited)" if r.get("generator_limited") else "")))
    for r in rows:
        if "error" in r:
            print("%d agents: error: %s" % (r["agents"], r["error"]))
    ratio, at = overall_ratio(rows)
    print("(us/beat: the controller's CPU per beat sent; floor: loopback TCP alone, the receiver's CPU per 11-byte "
          "frame at the same socket count and placement; ratio: us/beat / floor, target <= 1.3; false and suspects: "
          "the controller's verdicts, leaving out those within a window of a beat the generator sent late; late: "
          "agents it beat more than %d ms late at least once)" % LATE_THRESHOLD_MS)
    print("capacity (all connected, beat rate >= %d %%, zero false failures, hang detection p99 <= %d ms): %d agents,"
          " bound: %s; controller_to_floor %s at %s agents" % (
              MIN_BEAT_RATE_PCT, DETECT_P99_TARGET_MS, capacity_agents(rows), capacity_bound(rows),
              _cell(ratio, "%.2f"), _cell(at, "%d")))


def capacity(args):
    binaries = build(args)
    rows = measure_capacity(binaries, args.steps, args.seconds, args.trials, args.connections, log=not args.json,
                            pin=not args.no_pin)
    print_capacity(rows, args.connections)
    if args.json:
        print(json.dumps(capacity_summary(rows)))
    return 0
