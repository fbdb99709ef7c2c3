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

from . import build, note_error, rounded_percentile


def detect(args):
    binaries = build(args)
    summary = {"interval_ms": args.interval_ms, "trials": args.trials}
    results = {"crash": [], "hang": []}
    errors = []
    workdir = tempfile.mkdtemp(prefix="warmpool-bench-")
    controller = None
    try:
        keys = os.path.join(workdir, "keys")
        # Every key before the controller starts: no wait for it to re-read the file.
        agent_secrets = {"bench-%s-%d" % (mode, trial): add_key(keys, "bench-%s-%d" % (mode, trial))
                         for mode in ("crash", "hang") for trial in range(args.trials)}
        controller = Controller(binaries, workdir, keys, extra=["--heartbeat-interval-ms", str(args.interval_ms)])
        for trial in range(args.trials):
            for mode in ("crash", "hang"):
                try:
                    results[mode].append(_trial(binaries, controller, workdir, "bench-%s-%d" % (mode, trial),
                                                agent_secrets, mode, args.interval_ms))
                except TimeoutError as error:  # one trial lost; the others still count
                    errors.append("%s trial %d: %s" % (mode, trial, error))
            if not args.json:
                print("trial %d/%d: crash %s ms, hang %s ms" % (
                    trial + 1, args.trials, *("%.1f" % results[m][-1] if results[m] else "-" for m in ("crash", "hang"))),
                    file=sys.stderr)
    except Exception as error:
        note_error(summary, error)
    finally:
        if controller is not None:
            controller.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    if errors:
        summary["trial_errors"] = errors
    for mode in ("crash", "hang"):
        summary["%s_trials" % mode] = len(results[mode])
        summary["%s_p50_ms" % mode] = rounded_percentile(results[mode], 0.50, 2)
        summary["%s_p99_ms" % mode] = rounded_percentile(results[mode], 0.99, 2)
        summary["%s_max_ms" % mode] = round(max(results[mode]), 2) if results[mode] else None
    hang_target = 250 if args.interval_ms <= 50 else 400 if args.interval_ms <= 100 else None
    print("detection, %d trials at %d ms heartbeats (signal -> controller `failed` event)" % (
        args.trials, args.interval_ms))
    print("%-6s %9s %9s %9s %9s" % ("case", "p50 ms", "p99 ms", "max ms", "target"))
    for mode, target in (("crash", "<= 20"), ("hang", "<= %s" % hang_target if hang_target else "-")):
        print("%-6s %9s %9s %9s %9s" % (mode, *("-" if summary["%s_%s_ms" % (mode, key)] is None
                                                 else "%.1f" % summary["%s_%s_ms" % (mode, key)]
                                                 for key in ("p50", "p99", "max")), target))
    for line in errors + ([summary["error"]] if "error" in summary else []):
        print("error: " + line)
    if args.json:
        print(json.dumps(summary))
    return 0


def _trial(binaries, controller, workdir, agent_id, agent_secrets, mode, interval_ms):
    """One agent started, connected, then SIGKILLed or SIGSTOPped: ms from the signal to `failed`."""
    agent = start_agent(os.path.join(binaries, "warmpool-agent"), controller.address, agent_id,
                        agent_secrets[agent_id], workdir, log_level="warning")
    try:
        controller.events.wait(lambda e: e["agent_id"] == agent_id and e["event"] == "connected", 10)
        # Land the signal at a random phase of the heartbeat cycle.
        time.sleep(0.3 + random.random() * interval_ms / 1000)
        start = time.monotonic_ns()
        agent.send_signal(signal.SIGKILL if mode == "crash" else signal.SIGSTOP)
        failed = controller.events.wait(lambda e: e["agent_id"] == agent_id and e["event"] == "failed", 10)
        return (failed["monotonic_ns"] - start) / 1e6
    finally:
        agent.send_signal(signal.SIGCONT)
        agent.kill()
        agent.wait()
