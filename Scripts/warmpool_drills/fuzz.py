"""`drill fuzz`: libFuzzer on the wire code (Scripts/fuzz/run), then garbage at the controller's
agent port and REST API while a real agent heartbeats."""
import json
import os
import random
import shutil
import socket
import subprocess
import tempfile
import time

from warmpool_lab import ROOT, http
from warmpool_lab.pool import Controller, add_key, start_agent
from warmpool_lab.processes import keep_or_remove

from . import binaries_for, report


FUZZ_DIR = os.path.join(ROOT, "Scripts", "fuzz")
REGRESSIONS = os.path.join(ROOT, "Protocol", "vectors", "fuzz")


def libfuzzer(args):
    """Scripts/fuzz/run: frame parser, both handshake/session state machines, decoders, zstd."""
    started = time.monotonic()
    process = subprocess.run([os.path.join(FUZZ_DIR, "run"), str(args.runs)], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    stats = {}
    with open(os.path.join(FUZZ_DIR, "fuzz.log"), errors="replace") as handle:
        for line in handle:
            if line.startswith("stat::"):
                key, _, value = line[6:].partition(":")
                stats[key.strip()] = int(value.strip())
    crashes = sorted(name for name in os.listdir(FUZZ_DIR) if name.split("-")[0] in ("crash", "leak", "timeout", "oom"))
    os.makedirs(REGRESSIONS, exist_ok=True)
    for name in crashes:
        shutil.copy(os.path.join(FUZZ_DIR, name), os.path.join(REGRESSIONS, name))
    return {"exit": process.returncode, "runs": stats.get("number_of_executed_units", 0),
            "execs_per_s": stats.get("average_exec_per_sec", 0), "peak_rss_mb": stats.get("peak_rss_mb", 0),
            "seconds": round(time.monotonic() - started), "crashers": crashes}


def garbage(args, binaries, workdir):
    """Garbage, half-open connections and slow clients at the controller's agent port and REST
    API, while a real agent heartbeats: the controller must stay up and the agent undisturbed."""
    keys = os.path.join(workdir, "keys")
    open(keys, "w").close()
    controller = Controller(binaries, workdir, keys)
    agent = None
    held = []
    thrown = {"garbage": 0, "half_open": 0, "oversized": 0, "http_garbage": 0, "http_half": 0}
    try:
        api_address = controller.api_url[len("http://"):]
        secret = add_key(keys, "real-agent")
        time.sleep(1.2)
        agent = start_agent(os.path.join(binaries, "warmpool-agent"), controller.address, "real-agent", secret, workdir)
        controller.events.wait(lambda e: e["agent_id"] == "real-agent" and e["event"] == "connected", 30)
        host, port = controller.address.rsplit(":", 1)
        api_host, api_port = api_address.rsplit(":", 1)
        deadline = time.monotonic() + args.garbage_seconds
        rng = random.Random(7)
        while time.monotonic() < deadline:
            for target, kind in (((host, int(port)), "agent"), ((api_host, int(api_port)), "api")):
                try:
                    connection = socket.create_connection(target, timeout=2)
                except OSError:
                    continue
                choice = rng.random()
                try:
                    if choice < 0.4:
                        connection.sendall(os.urandom(rng.randint(1, 4096)))
                        thrown["garbage" if kind == "agent" else "http_garbage"] += 1
                        connection.close()
                    elif choice < 0.6 and kind == "agent":
                        # A length far over the maximum, then nothing.
                        connection.sendall(bytes([0xFF, 0xFF, 0xFF, 0xF0, 1, 1, 0]))
                        thrown["oversized"] += 1
                        connection.close()
                    elif kind == "api" and choice < 0.8:
                        connection.sendall(b"POST /api/v1/warmpool/provision HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n{")
                        held.append(connection)
                        thrown["http_half"] += 1
                    else:
                        # Half-open: a few bytes of a header, then silence; kept open.
                        connection.sendall(os.urandom(rng.randint(0, 3)))
                        held.append(connection)
                        thrown["half_open"] += 1
                except OSError:
                    connection.close()
            while len(held) > args.held_connections:
                held.pop(0).close()
            time.sleep(0.005)
        for connection in held:
            connection.close()
        time.sleep(1)
        controller.events.poll()
        mine = [e for e in controller.events.seen if e["agent_id"] == "real-agent"]
        alive = controller.process.poll() is None
        health = http.call("GET", controller.api_url + "/healthz", timeout=5)[0] if alive else None
        return {
            "seconds": args.garbage_seconds, "thrown": thrown, "controller_alive": alive, "healthz": health,
            "controller_rss_mib": round(controller.rss_mib(), 1) if alive else None,
            "agent_failed": sum(1 for e in mine if e["event"] == "failed"),
            "agent_suspected": sum(1 for e in mine if e["event"] == "suspected"),
        }
    finally:
        for connection in held:
            connection.close()
        if agent is not None:
            agent.kill()
            agent.wait()
        controller.stop()


def fuzz(args):
    binaries = binaries_for(args)
    workdir = tempfile.mkdtemp(prefix="warmpool-drill-")
    try:
        result = {"libfuzzer": libfuzzer(args) if args.runs > 0 else None, "garbage": garbage(args, binaries, workdir)}
    finally:
        keep_or_remove(workdir, args.keep_logs, "drill")
    breaches = []
    lib, junk = result["libfuzzer"], result["garbage"]
    rows = []
    if lib is not None:
        rows += [("libFuzzer inputs (frame parser, state machines)", "%d in %d s" % (lib["runs"], lib["seconds"])),
                 ("  execs/s, peak RSS", "%d, %d MB" % (lib["execs_per_s"], lib["peak_rss_mb"]))]
        if lib["exit"] != 0 or lib["crashers"]:
            breaches.append("the fuzzer failed (exit %d); crashers copied to %s: %s"
                            % (lib["exit"], REGRESSIONS, lib["crashers"]))
        if lib["runs"] < args.runs:
            breaches.append("the fuzzer ran %d of %d inputs" % (lib["runs"], args.runs))
    rows += [("garbage at the agent port and API, %d s" % junk["seconds"], json.dumps(junk["thrown"])),
             ("controller alive, /healthz", "%s, %s" % (junk["controller_alive"], junk["healthz"])),
             ("real agent: failed / suspected (target 0)", "%d / %d" % (junk["agent_failed"], junk["agent_suspected"]))]
    if not junk["controller_alive"] or junk["healthz"] != 200:
        breaches.append("the controller went down under garbage")
    if junk["agent_failed"]:
        breaches.append("the real agent failed %d times meanwhile" % junk["agent_failed"])
    return report("fuzz drill", rows, result, args, breaches)
