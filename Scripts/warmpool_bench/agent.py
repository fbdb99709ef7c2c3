"""The agent's footprint as installed: the static, stripped release binary heartbeating at 10 Hz."""
import os
import shutil
import subprocess
import sys
import tempfile
import time

from warmpool_lab import ROOT
from warmpool_lab.pool import Controller, add_key, start_agent
from warmpool_lab.processes import cpu_seconds, status_field, stop


def build_static_agent(args):
    if not args.no_build:
        print("bench: building the static agent ...", file=sys.stderr, flush=True)
        # A build folder of its own: the static stdlib changes the compiler flags, and sharing
        # .build would rebuild the agent's modules back and forth with every other bench.
        # As README's install section builds it: -Osize for every module, the dependencies' too
        # (Package.swift can only set flags for the package's own targets).
        subprocess.run(["swift", "build", "-c", "release", "--product", "warmpool-agent", "--static-swift-stdlib",
                        "-Xswiftc", "-Osize", "--scratch-path", ".build-static"], cwd=ROOT, check=True,
                       stdout=subprocess.DEVNULL)
    return os.path.join(ROOT, ".build-static", "release", "warmpool-agent")


def measure_agent(binaries, agent_binary, seconds):
    """The agent as installed: the static release binary, stripped, heartbeating at 10 Hz on its
    default two sessions, probes on (volume; no NVML here). CPU over `seconds`, RSS at the end."""
    workdir = tempfile.mkdtemp(prefix="warmpool-agent-footprint-")
    keys = os.path.join(workdir, "keys")
    secret = add_key(keys, "footprint")
    stripped = os.path.join(workdir, "warmpool-agent")
    shutil.copy(agent_binary, stripped)
    subprocess.run(["strip", stripped], check=True)
    dynamic = [line.split("[", 1)[1].strip().rstrip("]") for line in subprocess.run(
        ["readelf", "-d", stripped], capture_output=True, text=True).stdout.splitlines() if "(NEEDED)" in line]
    controller = Controller(binaries, workdir, keys, extra=["--heartbeat-interval-ms", "100"])
    agent = start_agent(stripped, controller.address, "footprint", secret, workdir, log_level="warning")
    try:
        controller.events.wait(lambda e: e["agent_id"] == "footprint" and e["event"] == "connected", 30)
        time.sleep(2)
        cpu_start, wall_start = cpu_seconds(agent.pid), time.monotonic()
        time.sleep(seconds)
        cpu, wall = cpu_seconds(agent.pid) - cpu_start, time.monotonic() - wall_start
        rss, peak = status_field(agent.pid, "VmRSS"), status_field(agent.pid, "VmHWM")
        threads = status_field(agent.pid, "Threads")
        rollup = {}
        with open("/proc/%d/smaps_rollup" % agent.pid) as handle:
            for line in handle:
                parts = line.split()
                if parts[0] in ("Rss:", "Anonymous:", "Shared_Clean:", "Private_Clean:", "Private_Dirty:"):
                    rollup[parts[0][:-1].lower()] = round(int(parts[1]) / 1024, 1)
        controller.events.poll()
        failed = sum(1 for e in controller.events.seen if e["event"] == "failed")
    finally:
        stop(agent, 10)
        controller.stop()
        size = os.path.getsize(stripped)
        shutil.rmtree(workdir, ignore_errors=True)
    return {"agent_rss_mib": round(rss / 1024, 1), "agent_rss_peak_mib": round(peak / 1024, 1),
            "agent_cpu_pct": round(100 * cpu / wall, 2), "agent_binary_mib": round(size / 2**20, 1),
            "agent_threads": threads, "agent_smaps_mib": rollup, "agent_needed_libraries": dynamic,
            "agent_failed_events": failed, "seconds": round(wall, 1)}
