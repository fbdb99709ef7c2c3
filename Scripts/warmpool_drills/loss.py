"""`drill loss`: random packet loss between the agents' namespace and the controller's; no false
failures, and a frozen agent still failed fast."""
import json
import os
import tempfile
import time

from warmpool_lab.namespaces import CONTROL, CONTROL_IP, Lab, in_namespace
from warmpool_lab.pool import HOST, LAB_AGENT_LISTEN, Controller, freeze_trials, loadgen_keys, real_agent_starter
from warmpool_lab.processes import keep_or_remove, spawn, stop
from warmpool_lab.stats import percentile

from . import binaries_for


def loss(args):
    binaries = binaries_for(args)
    workdir = tempfile.mkdtemp(prefix="warmpool-drill-")
    keys = os.path.join(workdir, "keys")
    loadgen_keys(binaries, args.agents, keys)
    loadgen = None
    controller = None
    try:
        # The control plane's namespace and one host's, joined by veth: the agents run on the host.
        with Lab([(HOST, 1)]) as lab:
            host_namespace, host_address = lab.namespace(HOST, 1), lab.address(HOST, 1)
            try:
                controller = Controller(binaries, workdir, keys, listen=LAB_AGENT_LISTEN, api_listen=CONTROL_IP + ":0",
                                        prefix=in_namespace(CONTROL, []))
                real_agent = real_agent_starter(binaries, controller, workdir, prefix=in_namespace(host_namespace, []))
                clean = freeze_trials(controller.events, args.trials, "clean", real_agent)
                lab.lose(host_address, args.loss)
                seconds = int(args.minutes * 60)
                loadgen = spawn(in_namespace(host_namespace, [
                    os.path.join(binaries, "warmpool-loadgen"), "run", "--count", str(args.agents),
                    "--controller", controller.address, "--seconds", str(seconds + 120)]),
                    os.path.join(workdir, "loadgen.log"))
                controller.events.wait_connected(args.agents, 120)
                steady_from = len(controller.events.seen)
                started = time.monotonic()
                lossy = freeze_trials(controller.events, args.trials, "lossy", real_agent)
                while time.monotonic() - started < seconds:
                    time.sleep(1)
                controller.events.poll()
                steady = [e for e in controller.events.seen[steady_from:] if e["agent_id"].startswith("load-")]
                elapsed = time.monotonic() - started
            finally:
                stop(loadgen, 30)
                if controller is not None:
                    controller.stop()
    finally:
        keep_or_remove(workdir, args.keep_logs, "drill")

    count = lambda kind: sum(1 for e in steady if e["event"] == kind)
    summary = {
        "agents": args.agents, "minutes": round(elapsed / 60, 2), "loss_pct": args.loss,
        "false_failures": count("failed"), "suspected": count("suspected"),
        "clean_detect_p50_ms": round(percentile(clean, 0.5), 1),
        "clean_detect_p99_ms": round(percentile(clean, 0.99), 1),
        "lossy_detect_p50_ms": round(percentile(lossy, 0.5), 1),
        "lossy_detect_p99_ms": round(percentile(lossy, 0.99), 1),
        "lossy_detect_max_ms": round(max(lossy), 1),
        "false_failure_reasons": [e["reason"] for e in steady if e["event"] == "failed"][:10],
    }
    print("loss drill: %d agents x 2 sessions, %d %% loss each way, %.1f min" % (args.agents, args.loss, elapsed / 60))
    print("%-40s %s" % ("false failures (target 0)", summary["false_failures"]))
    print("%-40s %s" % ("suspicions", summary["suspected"]))
    print("%-40s p50 %.0f ms, p99 %.0f ms" % ("freeze detection, clean link", summary["clean_detect_p50_ms"],
                                               summary["clean_detect_p99_ms"]))
    print("%-40s p50 %.0f ms, p99 %.0f ms (target <= 1000)" % (
        "freeze detection, %d %% loss" % args.loss, summary["lossy_detect_p50_ms"], summary["lossy_detect_p99_ms"]))
    if args.json:
        print(json.dumps(summary))
    return 1 if summary["false_failures"] or summary["lossy_detect_p99_ms"] > 1000 else 0
