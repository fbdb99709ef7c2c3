"""`drill flood`: unauthenticated connections at the agent port as fast as this machine can open
them, beside real agents, with the controller's descriptor limit lowered so that it runs out; or
(--telemetry) one authenticated agent sending Telemetry as fast as it can. Either way no agent may
be suspected or failed, and a new agent must still get in: a flood that locks reconnecting agents
out fails them over one by one.

Run as `python3 -m warmpool_drills.flood generate ...` (from Scripts/) it is one flood process."""
import argparse
import collections
import errno
import json
import os
import random
import re
import selectors
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time

from warmpool_lab.namespaces import CONTROL, CONTROL_IP, Lab, in_namespace
from warmpool_lab.pool import HOST, LAB_AGENT_LISTEN, Controller, loadgen_keys
from warmpool_lab.processes import keep_or_remove, spawn, stop
from warmpool_lab.stats import percentile

from . import binaries_for, report

SCRIPTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The flood's own namespaces, one source address each (10.214.SLOT.99): the controller caps
# unauthenticated connections per address, and a flood "from anywhere" has many.
FLOOD_MACHINE = 99
# A Hello's header claiming a 64 KiB frame (varint 65,536, type 0x01), over the 256 bytes
# allowed before authentication (PROTOCOL.md §8).
OVERSIZED_HELLO = bytes([0x80, 0x80, 0x04, 0x01])


def flood(args):
    binaries = binaries_for(args)
    workdir = tempfile.mkdtemp(prefix="warmpool-drill-")
    keys = os.path.join(workdir, "keys")
    loadgen_keys(binaries, args.agents, keys)
    loadgen_keys(binaries, int(args.seconds) + 5, keys, prefix="probe-")
    loadgen_keys(binaries, 1, keys, prefix="telemetry-")
    try:
        with Lab([(HOST, 1)] + ([] if args.telemetry else [(FLOOD_MACHINE, args.sources)])) as lab:
            result = run(args, binaries, workdir, keys, lab)
    finally:
        keep_or_remove(workdir, args.keep_logs, "drill")
    return judge(args, result)


def run(args, binaries, workdir, keys, lab):
    """The controller, the agents and the probes up, then the flood; the figures of its window."""
    host_namespace = lab.namespace(HOST, 1)
    at_start = args.nofile and args.nofile_at_start and not args.telemetry
    limit = ["prlimit", "--nofile=%d:%d" % (args.nofile, args.nofile), "--"] if at_start else []
    controller = Controller(binaries, workdir, keys, listen=LAB_AGENT_LISTEN, api_listen=CONTROL_IP + ":0",
                            log_level=args.log_level, prefix=in_namespace(CONTROL, limit))
    loadgen = probes = None
    flooders = []
    try:
        loadgen = spawn(in_namespace(host_namespace, [
            os.path.join(binaries, "warmpool-loadgen"), "run", "--count", str(args.agents),
            "--controller", controller.address, "--seconds", str(int(args.seconds) + 300)]),
            os.path.join(workdir, "loadgen.log"))
        controller.events.wait_connected(args.agents, 120)
        if args.nofile and not at_start and not args.telemetry:
            # Soft limit only, on the running process: it raised its own at start, and a service
            # started at 1,024 (the common default) that did not would be here.
            subprocess.run(["prlimit", "--pid", str(controller.process.pid), "--nofile=%d:" % args.nofile], check=True)
        idle = window(controller, 5)
        steady_from = len(controller.events.seen)
        probes_path = os.path.join(workdir, "probes.jsonl")
        with open(probes_path, "wb") as output:
            probes = subprocess.Popen(in_namespace(host_namespace, [
                os.path.join(binaries, "warmpool-loadgen"), "handshakes", "--prefix", "probe-",
                "--count", str(int(args.seconds)), "--controller", controller.address]),
                stdout=output, stderr=subprocess.DEVNULL, start_new_session=True)
        flooders = start_flooders(args, binaries, workdir, controller, lab)
        measured = window(controller, args.seconds, flooders)
        alive = controller.process.poll() is None
        finish(flooders, alive)
        stop(probes, 5)
        if alive:
            time.sleep(3)  # a detection the flood caused, decided just after it
        controller.events.poll()
        alive = controller.process.poll() is None
    finally:
        for process, _ in flooders:
            stop(process, 5)
        stop(probes, 5)
        stop(loadgen, 30)
        controller.stop()
    return {"idle": idle, "flood": measured, "events": controller.events.seen[steady_from:], "alive": alive,
            "exit": controller.process.returncode, "crash": crash_lines(controller.log_path),
            "probes": read_lines(probes_path), "flooders": [last_json(path) for _, path in flooders]}


def start_flooders(args, binaries, workdir, controller, lab):
    """(process, output path) of each flood process, or of the telemetry agent."""
    if args.telemetry:
        path = os.path.join(workdir, "telemetry.log")
        command = in_namespace(lab.namespace(HOST, 1), [
            os.path.join(binaries, "warmpool-loadgen"), "telemetry-flood", "--prefix", "telemetry-",
            "--controller", controller.address, "--seconds", str(args.seconds), "--kinds", args.telemetry_kinds])
        return [(spawn(command, path), path)]
    flooders = []
    host, port = controller.address.rsplit(":", 1)
    for slot in range(1, args.sources + 1):
        namespace = lab.namespace(FLOOD_MACHINE, slot)
        # Every port for the flood: ~28,000 a source would last seconds.
        subprocess.run(in_namespace(namespace, ["sysctl", "-qw", "net.ipv4.ip_local_port_range=1024 65535"]),
                       check=True)
        path = os.path.join(workdir, "flood-%d.log" % slot)
        command = in_namespace(namespace, [
            "env", "PYTHONPATH=" + SCRIPTS, sys.executable, "-m", "warmpool_drills.flood", "generate",
            "--host", host, "--port", port, "--seconds", str(args.seconds), "--hold", str(args.hold),
            "--seed", str(slot)])
        flooders.append((spawn(command, path), path))
    return flooders


def finish(flooders, alive):
    """Waits for the flood processes to end on time, or (the controller gone) ends them now; each
    prints its counts either way."""
    deadline = time.monotonic() + (30 if alive else 0)
    for process, _ in flooders:
        try:
            process.wait(max(0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
        stop(process, 10)


def crash_lines(log_path):
    """What the Swift runtime said as the controller crashed, if it did."""
    with open(log_path, errors="replace") as handle:
        return [line.strip() for line in handle if "Fatal error" in line or "*** Signal" in line][:3]


def window(controller, seconds, flooders=()):
    """The controller's CPU (% of one core), log growth and open descriptors over `seconds`."""
    pid = controller.process.pid
    cpu, log, started = controller.cpu_seconds(), os.path.getsize(controller.log_path), time.monotonic()
    descriptors = []
    while time.monotonic() - started < seconds:
        time.sleep(0.25)
        try:
            descriptors.append(len(os.listdir("/proc/%d/fd" % pid)))
        except FileNotFoundError:
            pass
        if controller.process.poll() is not None:
            break
        if flooders and all(process.poll() is not None for process, _ in flooders):
            break
    elapsed = time.monotonic() - started
    alive = controller.process.poll() is None
    grown = os.path.getsize(controller.log_path) - log
    with open(controller.log_path, "rb") as handle:
        handle.seek(log)
        lines = handle.read(grown).decode(errors="replace").splitlines()
    return {"seconds": elapsed, "cpu_pct": 100 * (controller.cpu_seconds() - cpu) / elapsed if alive else None,
            "log_bytes": grown, "log_lines": len(lines), "log_top": commonest(lines),
            "emfile_lines": sum(1 for line in lines if "Too many open files" in line),
            "fds_max": max(descriptors, default=0), "nofile_soft": nofile_soft(pid) if alive else None}


def commonest(lines, count=4):
    """The log's commonest messages, numbers and per-connection metadata taken out."""
    shapes = collections.Counter(re.sub(r"\d+", "N", re.sub(r"^\S+ |\S+=\S+ ", "", line)) for line in lines)
    return ["%d x %s" % (times, shape) for shape, times in shapes.most_common(count)]


def nofile_soft(pid):
    with open("/proc/%d/limits" % pid) as handle:
        for line in handle:
            if line.startswith("Max open files"):
                return int(line.split()[3])
    return None


def read_lines(path):
    with open(path, errors="replace") as handle:
        return [json.loads(line) for line in handle if line.startswith("{")]


def last_json(path):
    lines = read_lines(path)
    return lines[-1] if lines else {}


def judge(args, result):
    """The table, the JSON line and the exit status of one run."""
    load = [e for e in result["events"] if e["agent_id"].startswith("load-")]
    count = lambda events, kind: sum(1 for e in events if e["event"] == kind)
    probes = result["probes"]
    handshakes = [p["ms"] for p in probes if p["ok"]]
    flood, idle = result["flood"], result["idle"]
    summary = {
        "mode": "telemetry" if args.telemetry else "connections", "agents": args.agents,
        "seconds": round(flood["seconds"], 1),
        "false_failures": count(load, "failed"), "suspicions": count(load, "suspected"),
        "recoveries": count(load, "recovered"),
        "false_failure_reasons": sorted({e["reason"] for e in load if e["event"] == "failed"})[:5],
        "controller_alive": result["alive"], "controller_exit": result["exit"], "controller_crash": result["crash"],
        "controller_cpu_pct": rounded(flood["cpu_pct"]), "controller_cpu_pct_before": rounded(idle["cpu_pct"]),
        "log_bytes": flood["log_bytes"], "log_lines": flood["log_lines"],
        "log_bytes_per_s": round(flood["log_bytes"] / flood["seconds"]), "log_top": flood["log_top"],
        "log_emfile_lines": flood["emfile_lines"],
        "controller_fds_max": flood["fds_max"], "controller_nofile_soft": flood["nofile_soft"],
        "new_agent_handshakes": len(probes), "new_agent_handshake_failures": len(probes) - len(handshakes),
        "new_agent_handshake_p50_ms": rounded(percentile(handshakes, 0.5)) if handshakes else None,
        "new_agent_handshake_p99_ms": rounded(percentile(handshakes, 0.99)) if handshakes else None,
        "new_agent_handshake_max_ms": rounded(max(handshakes, default=None)),
        "new_agent_handshake_errors": sorted({p["error"] for p in probes if not p["ok"]})[:5],
    }
    if args.telemetry:
        summary.update(telemetry_summary(result))
    else:
        summary.update(flood_summary(args, result))
    return report("flood drill: " + describe(args), rows(summary), summary, args, breaches(summary))


def rounded(value):
    return None if value is None else round(value, 1)


def flood_summary(args, result):
    totals = collections.Counter()
    for counts in result["flooders"]:
        totals.update({key: value for key, value in counts.items() if isinstance(value, int)})
    seconds = max([c.get("seconds", 0) for c in result["flooders"]] + [1e-9])
    return {"flood_sources": args.sources, "flood_connections": totals["connected"],
            "flood_connections_per_s": round(totals["connected"] / seconds),
            "flood_attempts_per_s": round(totals["attempts"] / seconds),
            "flood_counts": dict(sorted(totals.items())),
            "nofile": args.nofile, "nofile_applied": ("at start, soft = hard" if args.nofile_at_start
                                                      else "soft, on the running controller") if args.nofile else None}


def telemetry_summary(result):
    sent = result["flooders"][0] if result["flooders"] else {}
    telemetry = [e for e in result["events"] if e["agent_id"].startswith("telemetry-")]
    return {"telemetry_bytes_per_s": round(sent.get("wire_bytes_per_s", 0)),
            "telemetry_document_bytes_per_s": round(sent.get("document_bytes_per_s", 0)),
            "telemetry_frames": sent.get("frames", 0), "telemetry_sessions": sent.get("sessions", 0),
            "telemetry_closed_by_controller": sent.get("closed_by_controller", 0),
            "telemetry_failed_handshakes": sent.get("failed_handshakes", 0),
            "telemetry_agent_failed": sum(1 for e in telemetry if e["event"] == "failed"),
            "telemetry_kinds": sent.get("kinds", {})}


def describe(args):
    if args.telemetry:
        return "one agent's Telemetry as fast as it goes, %d agents, %d s" % (args.agents, args.seconds)
    return "unauthenticated connections from %d sources, %d agents, %d s, descriptor limit %s" % (
        args.sources, args.agents, args.seconds, args.nofile or "as it is")


def rows(summary):
    table = [
        ("false failures among the agents (target 0)", summary["false_failures"]),
        ("suspicions among the agents (target 0)", summary["suspicions"]),
        ("controller CPU, % of a core: before, during", "%s, %s" % (summary["controller_cpu_pct_before"],
                                                                   summary["controller_cpu_pct"])),
        ("controller log growth", "%d bytes, %d lines" % (summary["log_bytes"], summary["log_lines"])),
        ("controller descriptors: most seen, soft limit", "%d, %s" % (summary["controller_fds_max"],
                                                                      summary["controller_nofile_soft"])),
        ("log lines saying 'Too many open files'", summary["log_emfile_lines"]),
        ("new agents: handshakes, failed", "%d, %d" % (summary["new_agent_handshakes"],
                                                      summary["new_agent_handshake_failures"])),
        ("new agents: connect to Welcome p50, p99", "%s ms, %s ms" % (summary["new_agent_handshake_p50_ms"],
                                                                     summary["new_agent_handshake_p99_ms"])),
    ]
    if summary["mode"] == "telemetry":
        table += [("telemetry sent, bytes/s on the wire", summary["telemetry_bytes_per_s"]),
                  ("telemetry sessions, closed by the controller", "%d, %d" % (
                      summary["telemetry_sessions"], summary["telemetry_closed_by_controller"]))]
    else:
        table += [("flood connections/s (attempts/s)", "%d (%d)" % (summary["flood_connections_per_s"],
                                                                  summary["flood_attempts_per_s"]))]
    return table


def breaches(summary):
    found = []
    if summary["false_failures"]:
        found.append("%d false failures among the agents: %s" % (summary["false_failures"],
                                                                 summary["false_failure_reasons"]))
    if summary["suspicions"] and summary["mode"] == "connections":
        found.append("%d suspicions among the agents" % summary["suspicions"])
    if not summary["controller_alive"]:
        found.append("the controller died (exit %s): %s" % (summary["controller_exit"], summary["controller_crash"]))
    if not summary["new_agent_handshakes"]:
        found.append("no new agent's handshake was measured")
    elif summary["new_agent_handshake_failures"]:
        found.append("a new agent could not get in %d of %d times: %s" % (
            summary["new_agent_handshake_failures"], summary["new_agent_handshakes"],
            summary["new_agent_handshake_errors"]))
    return found


# One flood process, run in a flood namespace by the drill.

def generate(host, port, seconds, hold, inflight, seed):
    """Non-blocking connects as fast as they complete. Each connection, once up, sends nothing, a
    few random bytes or a Hello header claiming a 64 KiB frame, and is then either reset at once
    or held (up to `hold`, oldest reset first) until the controller closes it. Prints its counts."""
    rng = random.Random(seed)
    selector = selectors.DefaultSelector()
    pending, held = {}, collections.OrderedDict()
    counts = collections.Counter()
    started = time.monotonic()
    deadline = started + seconds
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    while time.monotonic() < deadline and not stopping:
        while len(pending) < inflight and open_one(host, port, selector, pending, counts):
            pass
        now = time.monotonic()
        for key, _ in selector.select(0.005):
            connection = key.fileobj
            if connection in pending:
                del pending[connection]
                connected(connection, selector, held, counts, rng)
            else:
                closed_by_peer(connection, selector, held, counts)
        for connection in [c for c, at in pending.items() if now - at > 1]:
            del pending[connection]
            counts["connect_timeouts"] += 1
            reset(connection, selector)
        while len(held) > hold:
            reset(held.popitem(last=False)[0], selector)
            counts["held_reset"] += 1
    counts["held_at_end"] = len(held)
    for connection in list(pending) + list(held):
        reset(connection, selector)
    print(json.dumps(dict(counts, seconds=round(time.monotonic() - started, 3))), flush=True)


def open_one(host, port, selector, pending, counts):
    """Starts one connect; false when the system refuses more for now."""
    counts["attempts"] += 1
    connection = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    connection.setblocking(False)
    result = connection.connect_ex((host, port))
    if result not in (0, errno.EINPROGRESS):
        counts["connect_error_" + errno.errorcode.get(result, str(result))] += 1
        connection.close()
        return False
    pending[connection] = time.monotonic()
    selector.register(connection, selectors.EVENT_WRITE)
    return True


def connected(connection, selector, held, counts, rng):
    failure = connection.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if failure:
        counts["connect_error_" + errno.errorcode.get(failure, str(failure))] += 1
        reset(connection, selector)
        return
    counts["connected"] += 1
    kind = rng.choice(("silent", "garbage", "oversized"))
    try:
        if kind == "garbage":
            connection.send(os.urandom(rng.randint(1, 64)))
        elif kind == "oversized":
            connection.send(OVERSIZED_HELLO)
    except OSError:
        pass
    counts[kind] += 1
    if rng.random() < 0.5:
        counts["reset_at_once"] += 1
        reset(connection, selector)
        return
    selector.modify(connection, selectors.EVENT_READ)
    held[connection] = True


def closed_by_peer(connection, selector, held, counts):
    """A held connection turned readable: a Reject, or the controller's close."""
    try:
        data = connection.recv(4096)
    except OSError:
        data = b""
    if data:
        counts["answered_bytes"] += len(data)
        return
    counts["closed_by_controller"] += 1
    held.pop(connection, None)
    selector.unregister(connection)
    connection.close()


def reset(connection, selector):
    """Closes with a RST (SO_LINGER 0): no TIME_WAIT, so the flood never runs out of ports."""
    try:
        selector.unregister(connection)
    except (KeyError, ValueError):
        pass
    try:
        connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    connection.close()


def main():
    parser = argparse.ArgumentParser(description="One flood process (Scripts/drill flood starts them).")
    parser.add_argument("command", choices=["generate"])
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--hold", type=int, default=1000)
    parser.add_argument("--inflight", type=int, default=256)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    generate(args.host, args.port, args.seconds, args.hold, args.inflight, args.seed)


if __name__ == "__main__":
    main()
