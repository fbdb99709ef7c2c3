"""The same heartbeat load carried by our protocol, by gRPC and by HTTP/1.1 JSON (the baselines in
Scripts/baselines), counted at the socket and on the wire; and loopback TCP's floor under them."""
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

from warmpool_lab import ROOT
from warmpool_lab.events import Events
from warmpool_lab.pool import Controller, freeze_trials, loadgen_keys, real_agent_starter
from warmpool_lab.processes import cpu_seconds, free_port, spawn, status_field, stop, wait_for_file

from . import rounded_percentile


BASELINES = os.path.join(ROOT, "Scripts", "baselines")


def build_baselines(args):
    if not args.no_build:
        print("bench: building the gRPC and HTTP baselines (Scripts/baselines) ...", file=sys.stderr, flush=True)
        subprocess.run(["swift", "build", "-c", "release"], cwd=BASELINES, check=True, stdout=subprocess.DEVNULL)
    return os.path.join(BASELINES, ".build", "release")


class WireCounter:
    """Bytes on the wire to and from one TCP port on loopback: an nftables counter in the input
    hook, which sees every packet delivered on `lo` exactly once, IP and TCP headers included
    (ACKs too). Needs root (CAP_NET_ADMIN)."""

    def __init__(self, port):
        self.table = "warmpool_bench_%d_%d" % (os.getpid(), port)
        for command in (["add", "table", "inet", self.table],
                        ["add", "chain", "inet", self.table, "input", "{ type filter hook input priority 0 ; }"],
                        ["add", "rule", "inet", self.table, "input", "tcp", "dport", str(port), "counter"],
                        ["add", "rule", "inet", self.table, "input", "tcp", "sport", str(port), "counter"]):
            subprocess.run(["nft"] + command, check=True)

    def bytes(self):
        listing = json.loads(subprocess.run(["nft", "-j", "list", "table", "inet", self.table],
                                            check=True, capture_output=True, text=True).stdout)
        total = 0
        for item in listing["nftables"]:
            for expression in item.get("rule", {}).get("expr", []):
                if "counter" in expression:
                    total += expression["counter"]["bytes"]
        return total

    def close(self):
        subprocess.run(["nft", "delete", "table", "inet", self.table], check=False)


def socket_payload_bytes(port):
    """Payload bytes through the server's established sockets on `port`, both directions:
    TCP_INFO's bytes_acked (sent and delivered) and bytes_received, as `ss -ti` prints them. This
    is the protocol's own cost, counted at the socket; the WireCounter's figure adds what TCP/IP
    adds to any protocol (about 52 bytes of headers per segment, and the ACKs). Returns (bytes,
    sockets): a socket that closes between two readings takes its count with it, so the bench
    compares the socket counts of its two readings."""
    listing = subprocess.run(["ss", "-tinH", "state", "established", "sport", "= :%d" % port],
                             check=True, capture_output=True, text=True).stdout
    total = sum(int(value) for value in re.findall(r"\bbytes_(?:acked|received):(\d+)", listing))
    sockets = sum(1 for line in listing.splitlines() if line and not line[0].isspace())
    return total, sockets


class BaselineServer:
    """baseline-server (gRPC or HTTP/JSON) with the controller's interface: address, events, CPU, RSS."""

    def __init__(self, binaries, workdir, transport):
        self.events_path = os.path.join(workdir, "events.jsonl")
        ready, log = os.path.join(workdir, "ready"), os.path.join(workdir, "server.log")
        self.process = spawn(
            [os.path.join(binaries, "baseline-server"), "--transport", transport, "--port", str(free_port()),
             "--ready-file", ready, "--events", self.events_path, "--silence-timeout-ms", "350"], log)
        wait_for_file(ready, "baseline server", self.process, log)
        # It writes its ready file in place, not by rename: let the write finish.
        time.sleep(0.05)
        with open(ready) as handle:
            self.address = handle.read().strip()
        self.events = Events(self.events_path)

    def cpu_seconds(self):
        return cpu_seconds(self.process.pid)

    def rss_mib(self):
        return status_field(self.process.pid, "VmRSS") / 1024

    def stop(self):
        stop(self.process, 10)


def measure_protocol(kind, binaries, baselines, agents, seconds, trials):
    """The same heartbeat load (agents x 1 session x 10 Hz, the same fields) over one protocol:
    controller CPU per heartbeat, bytes on the wire per heartbeat, frozen-agent detection p99."""
    workdir = tempfile.mkdtemp(prefix="warmpool-protocol-%s-" % kind)
    if kind == "ours":
        keys = os.path.join(workdir, "keys")
        loadgen_keys(binaries, agents, keys)
        server = Controller(binaries, workdir, keys, extra=["--heartbeat-interval-ms", "100"])
        loadgen_command = [os.path.join(binaries, "warmpool-loadgen"), "run", "--count", str(agents),
                           "--controller", server.address, "--connections", "1", "--threads", "1"]
        start_real_agent = real_agent_starter(binaries, server, workdir)
    else:
        server = BaselineServer(baselines, workdir, kind)
        loadgen_command = [os.path.join(baselines, "baseline-loadgen"), "--transport", kind, "--server",
                           server.address, "--count", str(agents), "--threads", "1"]

        def start_real_agent(agent_id):
            return subprocess.Popen(
                [os.path.join(baselines, "baseline-loadgen"), "--transport", kind, "--server", server.address,
                 "--count", "1", "--agent-id", agent_id], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    counter = WireCounter(int(server.address.rsplit(":", 1)[1]))
    loadgen = spawn(loadgen_command, os.path.join(workdir, "loadgen.log"))
    try:
        server.events.wait_connected(agents, 180)
        time.sleep(2)
        steady_from = len(server.events.seen)
        port = int(server.address.rsplit(":", 1)[1])
        payload_start, sockets_start = socket_payload_bytes(port)
        bytes_start, cpu_start, wall_start = counter.bytes(), server.cpu_seconds(), time.monotonic()
        time.sleep(seconds)
        wire, cpu, wall = counter.bytes() - bytes_start, server.cpu_seconds() - cpu_start, time.monotonic() - wall_start
        payload_end, sockets_end = socket_payload_bytes(port)
        if sockets_end != sockets_start:
            print("protocol %s: %d sockets at the start, %d at the end: the payload count is off" % (
                kind, sockets_start, sockets_end), file=sys.stderr)
        rss = server.rss_mib()
        trial_errors = []
        detections = freeze_trials(server.events, trials, "%s-%d" % (kind, agents), start_real_agent,
                                   errors=trial_errors)
        server.events.poll()
        false_failures = sum(1 for e in server.events.seen[steady_from:]
                             if e["event"] == "failed" and e["agent_id"].startswith("load-"))
    finally:
        stop(loadgen, 60)
        server.stop()
        counter.close()
        shutil.rmtree(workdir, ignore_errors=True)
    beats = agents * 10 * wall
    result = {"protocol": kind, "agents": agents, "cpu_us_per_heartbeat": round(cpu * 1e6 / beats, 2),
              # The measure: bytes per heartbeat counted at the socket (TCP payload, both ways).
              "bytes_per_heartbeat": round((payload_end - payload_start) / beats, 1),
              "wire_bytes_per_heartbeat": round(wire / beats, 1),
              "detect_p99_ms": rounded_percentile(detections, 0.99),
              "controller_rss_mib": round(rss, 1), "false_failures": false_failures}
    if trial_errors:
        result["detect_errors"] = trial_errors
    return result


# Both ends of every pair live in one process: two descriptors a socket, under this machine's
# 20,000 open files.
FLOOR_MAX_SOCKETS = 9000


def measure_floor(binaries, sockets, seconds=20, pin=False):
    """`warmpool-loadgen floor`: what loopback TCP alone costs at the capacity load, no protocol.
    `pin`: its receiver on CPU 0 and its senders on CPU 1, as `bench capacity` places the
    controller and the load generator (on a machine with two CPUs or more)."""
    pinned = ["--pin"] if pin and (os.cpu_count() or 1) >= 2 else []
    result = subprocess.run([os.path.join(binaries, "warmpool-loadgen"), "floor", "--count", str(sockets),
                             "--seconds", str(seconds), "--json"] + pinned, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError("warmpool-loadgen floor exited %d: %s" % (result.returncode, result.stderr.strip()[-500:]))
    return json.loads(result.stdout.strip().splitlines()[-1])
