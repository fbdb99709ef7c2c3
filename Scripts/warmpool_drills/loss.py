"""`drill loss`: random packet loss between the agents' namespace and the controller's; no false
failures, and a frozen agent still failed fast."""
import json
import os
import tempfile
import time
import traceback

from warmpool_lab.namespaces import CONTROL, CONTROL_IP, Lab, in_namespace
from warmpool_lab.pool import HOST, LAB_AGENT_LISTEN, Controller, freeze_trials, loadgen_keys, real_agent_starter
from warmpool_lab.processes import keep_or_remove, spawn, stop
from warmpool_lab.stats import percentile

from . import binaries_for


def loss(args):
    binaries = binaries_for(args)
    workdir = tempfile.mkdtemp(prefix="warmpool-drill-")
    loadgen = None
    controller = None
    summary = {"agents": args.agents, "loss_pct": args.loss}
    clean, lossy, steady, elapsed = [], [], [], 0.0
    breaches = []
    try:
        keys = os.path.join(workdir, "keys")
        loadgen_keys(binaries, args.agents, keys)
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
    except Exception as error:  # noqa: BLE001 - reported with the figures that exist
        traceback.print_exc()
        summary["error"] = "%s: %s" % (type(error).__name__, error)
        breaches.append("the drill could not finish: " + summary["error"])
    finally:
        keep_or_remove(workdir, args.keep_logs, "drill")

    count = lambda kind: sum(1 for e in steady if e["event"] == kind)
    rounded = lambda values, fraction: round(percentile(values, fraction), 1) if values else None
    summary.update({
        "minutes": round(elapsed / 60, 2),
        "false_failures": count("failed"), "suspected": count("suspected"),
        "clean_detect_p50_ms": rounded(clean, 0.5),
        "clean_detect_p99_ms": rounded(clean, 0.99),
        "lossy_detect_p50_ms": rounded(lossy, 0.5),
        "lossy_detect_p99_ms": rounded(lossy, 0.99),
        "lossy_detect_max_ms": round(max(lossy), 1) if lossy else None,
        "false_failure_reasons": [e["reason"] for e in steady if e["event"] == "failed"][:10],
    })
    show = lambda value: "-" if value is None else "%.0f" % value
    print("loss drill: %d agents x 2 sessions, %d %% loss each way, %.1f min" % (args.agents, args.loss, elapsed / 60))
    print("%-40s %s" % ("false failures (target 0)", summary["false_failures"]))
    print("%-40s %s" % ("suspicions", summary["suspected"]))
    print("%-40s p50 %s ms, p99 %s ms" % ("freeze detection, clean link", show(summary["clean_detect_p50_ms"]),
                                           show(summary["clean_detect_p99_ms"])))
    print("%-40s p50 %s ms, p99 %s ms (target <= 1000)" % (
        "freeze detection, %d %% loss" % args.loss, show(summary["lossy_detect_p50_ms"]),
        show(summary["lossy_detect_p99_ms"])))
    if summary["false_failures"]:
        breaches.append("%d false failures" % summary["false_failures"])
    if summary["lossy_detect_p99_ms"] is not None and summary["lossy_detect_p99_ms"] > 1000:
        breaches.append("detection under loss p99 %.0f ms > 1000 ms" % summary["lossy_detect_p99_ms"])
    summary["breaches"] = breaches
    for breach in breaches:
        print("BREACH: %s" % breach)
    if args.json:
        print(json.dumps(summary))
    return 1 if breaches else 0
