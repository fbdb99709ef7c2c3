"""`bench failover`: the whole failover on warmpool-sim, each step of the timeline timed from the crash."""
import json
import shutil
import sys
import tempfile
import time

from warmpool_lab.events import first_steps
from warmpool_lab.pool import POOL, WarmPool

from . import build, note_error, rounded_percentile


KEYS = ("detect_ms", "fence_ms", "start_ms", "ssh_ready_ms", "verify_ms", "total_ms", "controller_share_ms")


def failover(args):
    binaries = build(args)
    modes = args.host_key_trust.split(",")
    summaries = {}
    for mode in modes:
        trials, errors = [], {}
        try:
            _trials(args, binaries, mode, trials)
        except Exception as error:  # the trials that finished still count
            note_error(errors, error)
        summaries[mode] = dict(_summary(trials, args), **errors)
    print("failover on warmpool-sim, crash of the primary, %d trials, boot delay %d ms, provider poll %d ms" % (
        args.trials, args.boot_delay_ms, args.poll_ms))
    print("%-22s" % "step" + "".join(" %13s %9s" % (mode + " p50", "p99") for mode in modes))
    show = lambda value: "-" if value is None else "%.1f" % value
    for key in KEYS:
        print("%-22s" % key + "".join(" %13s %9s" % (show(summaries[m][key]), show(summaries[m]["p99"][key]))
                                      for m in modes))
    print("(detect: crash -> detected; fence: detected -> old primary confirmed stopped; start: start sent -> running;"
          " ssh_ready: running -> SSH verified, which with --host-key-trust attested waits for the standby's agent to"
          " report its host key; total: crash -> promoted; controller share: total minus the emulator's boot delay,"
          " target <= 1000 ms)")
    for mode in modes:
        if "error" in summaries[mode]:
            print("%s: error after %d trial(s): %s" % (mode, summaries[mode]["trials_done"], summaries[mode]["error"]))
    if args.json:
        print(json.dumps(summaries[modes[0]] if len(modes) == 1 else {"host_key_trust": summaries}))
    # The target (controller_share_ms <= 1000 with no boot delay) is judged from the JSON.
    return 0


def _summary(trials, args):
    summary = {key: rounded_percentile([t[key] for t in trials], 0.50) for key in KEYS}
    summary["boot_ms"] = args.boot_delay_ms
    summary["trials"] = args.trials
    summary["trials_done"] = len(trials)
    summary["p99"] = {key: rounded_percentile([t[key] for t in trials], 0.99) for key in KEYS}
    return summary


def _trials(args, binaries, host_key_trust, trials):
    """Appends one row per finished trial to `trials` (so that a failure keeps the ones before it)."""
    workdir = tempfile.mkdtemp(prefix="warmpool-bench-failover-")
    pool = None
    try:
        pool = WarmPool(binaries, workdir, args.boot_delay_ms, poll_ms=args.poll_ms, log_level="warning",
                        sim_log_level="warning", controller_extra=["--host-key-trust", host_key_trust])
        pool.provision()
        for trial in range(1, args.trials + 1):
            status = pool.get("/status/%d" % POOL)
            # The primary's agent must be connected before its crash means anything.
            deadline = time.monotonic() + 30
            while status["last_health_check"] is None and time.monotonic() < deadline:
                time.sleep(0.05)
                status = pool.get("/status/%d" % POOL)
            time.sleep(0.3)
            crashed_at = time.time()
            pool.fault(status["primary_gpu_id"], "crash")
            deadline = time.monotonic() + 120
            while True:
                failovers = pool.get("/history/%d?limit=1" % POOL)["failovers"]
                state = pool.get("/status/%d" % POOL)["state"]
                if failovers and failovers[0]["id"] == "fo-%d-%d" % (POOL, trial) \
                        and failovers[0]["result"] != "in_progress" and state == "active":
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError("failover %d did not finish: %s" % (trial, failovers[:1]))
                time.sleep(0.05)
            record = failovers[0]
            if record["result"] != "succeeded":
                raise RuntimeError("failover %d ended %s" % (trial, record["result"]))
            at = first_steps(record)
            row = {
                "detect_ms": (at["detected"] - crashed_at) * 1000,
                "fence_ms": (at["fenced"] - at["detected"]) * 1000,
                "start_ms": (at["standby_running"] - at["standby_starting"]) * 1000,
                "ssh_ready_ms": (at["ssh_ready"] - at["standby_running"]) * 1000,
                "verify_ms": (at["volume_verified"] - at["ssh_ready"]) * 1000,
                "total_ms": (at["promoted"] - crashed_at) * 1000,
            }
            row["controller_share_ms"] = row["total_ms"] - args.boot_delay_ms
            trials.append(row)
            if not args.json:
                print("%s trial %d/%d: total %.0f ms" % (host_key_trust, trial, args.trials, row["total_ms"]),
                      file=sys.stderr)
    finally:
        if pool is not None:
            pool.stop()
        shutil.rmtree(workdir, ignore_errors=True)
