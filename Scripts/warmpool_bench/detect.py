"""`bench detect`: the time from a crash (SIGKILL) or a hang (SIGSTOP) of a real agent to the
controller's `failed` event."""
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import time

from warmpool_lab.pool import Controller, add_key, start_agent
from warmpool_lab.stats import percentile

from . import build


def detect(args):
    binaries = build(args)
    workdir = tempfile.mkdtemp(prefix="warmpool-bench-")
    keys = os.path.join(workdir, "keys")
    # Every key before the controller starts: no wait for it to re-read the file.
    agent_secrets = {"bench-%s-%d" % (mode, trial): add_key(keys, "bench-%s-%d" % (mode, trial))
                     for mode in ("crash", "hang") for trial in range(args.trials)}
    controller = Controller(binaries, workdir, keys, extra=["--heartbeat-interval-ms", str(args.interval_ms)])
    results = {"crash": [], "hang": []}
    try:
        for trial in range(args.trials):
            for mode in ("crash", "hang"):
                agent_id = "bench-%s-%d" % (mode, trial)
                agent = start_agent(os.path.join(binaries, "warmpool-agent"), controller.address, agent_id,
                                    agent_secrets[agent_id], workdir, log_level="warning")
                try:
                    controller.events.wait(lambda e: e["agent_id"] == agent_id and e["event"] == "connected", 10)
                    # Land the signal at a random phase of the heartbeat cycle.
                    time.sleep(0.3 + random.random() * args.interval_ms / 1000)
                    start = time.monotonic_ns()
                    agent.send_signal(signal.SIGKILL if mode == "crash" else signal.SIGSTOP)
                    failed = controller.events.wait(
                        lambda e: e["agent_id"] == agent_id and e["event"] == "failed", 10)
                    results[mode].append((failed["monotonic_ns"] - start) / 1e6)
                finally:
                    agent.send_signal(signal.SIGCONT)
                    agent.kill()
                    agent.wait()
            if not args.json:
                print("trial %d/%d: crash %.1f ms, hang %.1f ms" % (
                    trial + 1, args.trials, results["crash"][-1], results["hang"][-1]), file=sys.stderr)
    finally:
        controller.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    summary = {"interval_ms": args.interval_ms, "trials": args.trials}
    for mode in ("crash", "hang"):
        summary["%s_p50_ms" % mode] = round(percentile(results[mode], 0.50), 2)
        summary["%s_p99_ms" % mode] = round(percentile(results[mode], 0.99), 2)
        summary["%s_max_ms" % mode] = round(max(results[mode]), 2)
    hang_target = 250 if args.interval_ms <= 50 else 400 if args.interval_ms <= 100 else None
    print("detection, %d trials at %d ms heartbeats (signal -> controller `failed` event)" % (
        args.trials, args.interval_ms))
    print("%-6s %9s %9s %9s %9s" % ("case", "p50 ms", "p99 ms", "max ms", "target"))
    print("%-6s %9.1f %9.1f %9.1f %9s" % ("crash", summary["crash_p50_ms"], summary["crash_p99_ms"],
                                          summary["crash_max_ms"], "<= 20"))
    print("%-6s %9.1f %9.1f %9.1f %9s" % ("hang", summary["hang_p50_ms"], summary["hang_p99_ms"],
                                          summary["hang_max_ms"], "<= %s" % hang_target if hang_target else "-"))
    if args.json:
        print(json.dumps(summary))
    breach = summary["crash_p99_ms"] > 20 or (hang_target is not None and summary["hang_p99_ms"] > hang_target)
    return 1 if breach else 0
