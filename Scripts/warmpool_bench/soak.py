"""`bench soak`: simulated agents at 10 Hz for minutes; not one `failed` event."""
import json
import os
import shutil
import sys
import tempfile
import time

from warmpool_lab.pool import Controller, loadgen_keys
from warmpool_lab.processes import spawn, stop

from . import build, note_error


def soak(args):
    binaries = build(args)
    summary = {"agents": args.agents}
    workdir = tempfile.mkdtemp(prefix="warmpool-soak-")
    controller = loadgen = None
    steady, rss_peak = [], 0.0
    try:
        keys = os.path.join(workdir, "keys")
        loadgen_keys(binaries, args.agents, keys)
        controller = Controller(binaries, workdir, keys, extra=["--heartbeat-interval-ms", "100"])
        seconds = int(args.minutes * 60)
        loadgen = spawn([os.path.join(binaries, "warmpool-loadgen"), "run", "--count", str(args.agents), "--controller",
                         controller.address, "--seconds", str(seconds + 30), "--threads", "1"],
                        os.path.join(workdir, "loadgen.log"))
        # Steady state starts once every agent is connected.
        controller.events.wait_connected(args.agents, 120, prefix="")
        steady_from = len(controller.events.seen)
        cpu_start, wall_start = controller.cpu_seconds(), time.monotonic()
        while time.monotonic() - wall_start < seconds:
            time.sleep(min(5, seconds))
            rss_peak = max(rss_peak, controller.rss_mib())
            if not args.json:
                controller.events.poll()
                bad = [e for e in controller.events.seen[steady_from:] if e["event"] == "failed"]
                print("soak: %4.0f s, %d failed" % (time.monotonic() - wall_start, len(bad)), file=sys.stderr)
        cpu = controller.cpu_seconds() - cpu_start
        wall = time.monotonic() - wall_start
        controller.events.poll()
        steady = controller.events.seen[steady_from:]
        heartbeats = args.agents * 2 * wall * 10  # two sessions per agent at 10 Hz
        summary.update({
            "minutes": round(wall / 60, 2), "controller_cpu_pct": round(100 * cpu / wall, 1),
            "controller_cpu_us_per_frame": round(cpu * 1e6 / heartbeats, 2),
        })
    except Exception as error:
        note_error(summary, error)
    finally:
        stop(loadgen, 60)
        if controller is not None:
            controller.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    count = lambda kind: sum(1 for e in steady if e["event"] == kind)
    summary.update({"failed": count("failed"), "suspected": count("suspected"),
                    "controller_rss_mib": round(rss_peak, 1)})
    print("soak: %d agents x 2 sessions at 10 Hz for %s min" % (args.agents, summary.get("minutes", "-")))
    print("%-28s %s" % ("failed events (target 0)", summary["failed"]))
    print("%-28s %s" % ("suspected events", summary["suspected"]))
    print("%-28s %s" % ("controller CPU, % of a core", summary.get("controller_cpu_pct", "-")))
    print("%-28s %s" % ("controller CPU per frame, us", summary.get("controller_cpu_us_per_frame", "-")))
    print("%-28s %s" % ("controller RSS peak, MiB", summary["controller_rss_mib"]))
    if "error" in summary:
        print("error: " + summary["error"])
    if args.json:
        print(json.dumps(summary))
    return 0
