"""The fencing drills (issue 17): `controller-outage`, `pause` and `mass-partition`. Every instance
runs a workload that the agent supervises (`warmpool-agent -- COMMAND`, here WARMPOOL_WORKLOAD) and
that appends epoch-tagged records to the pool's volume; the drills count those writes, so what they
report is what a training job would have seen, whatever the controller and agent say about it."""
import os
import signal
import subprocess
import tempfile
import threading
import time

from warmpool_lab import http
from warmpool_lab.events import Events, iso_seconds
from warmpool_lab.namespaces import CONTROL, Lab
from warmpool_lab.processes import keep_or_remove, wait_until
from warmpool_lab.stats import percentile

from . import binaries_for, report
from .failover_lab import lab_pool, read_records

AGENT_PORT = 7070


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def signal_namespace(namespace, signum, rounds=3):
    """Signals every process in a network namespace, a few rounds (a child forked meanwhile is
    caught by the next); returns the pids signalled."""
    signalled = set()
    for _ in range(rounds):
        for pid in namespace_pids(namespace):
            try:
                os.kill(pid, signum)
                signalled.add(pid)
            except ProcessLookupError:
                pass
    return signalled


def namespace_pids(namespace):
    listed = subprocess.run(["ip", "netns", "pids", namespace], stdout=subprocess.PIPE, text=True).stdout
    return [int(pid) for pid in listed.split()]


class Fleet:
    """`pools` warm pools, one per 3-GPU host (hosts 101, 102, ...; pools 201, 202, ...), in the lab,
    every instance running the supervised workload. One pool per host: two provisions on one host
    at once race for the same offers (issue 18), which is not what these drills are about."""

    def __init__(self, binaries, workdir, lab, hosts, pools, write_s, lease_ms=None, fence_command=None):
        self.lab, self.pool_host = lab, pools
        self.pool = lab_pool(binaries, workdir, lab, supervised=True, write_s=write_s, fence_command=fence_command,
                             hosts=["%d:3:RTX_4090:0.45" % host for host in hosts],
                             controller_extra=["--lease-ms", str(lease_ms)] if lease_ms else [])
        self.volumes = {}

    def provision(self, parallel=4):
        """Provisions every pool, `parallel` at a time; then waits for every primary's workload to write."""
        errors, pending, lock = [], list(self.pool_host.items()), threading.Lock()

        def worker():
            while True:
                with lock:
                    if not pending:
                        return
                    pool, host = pending.pop()
                try:
                    self.pool.provision(pool, host)
                except Exception as error:  # noqa: BLE001 (reported with the pool)
                    errors.append("pool %d: %s" % (pool, error))
        threads = [threading.Thread(target=worker) for _ in range(parallel)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if errors:
            raise RuntimeError("provisioning failed: %s" % "; ".join(errors[:5]))
        for pool in self.pool_host:
            primary = self.status(pool)["primary_gpu_id"]
            self.volumes[pool] = self.pool.instance(primary)["volume_directory"]
        wait_until("every primary's workload to write", lambda: all(
            any(r[0] == self.status(p)["primary_gpu_id"] for r in read_records(v)[-5:]) for p, v in self.volumes.items()),
            60, interval=0.5)

    def status(self, pool):
        return self.pool.status(pool)

    def agents(self):
        return self.pool.api("GET", "/agents")[1].get("agents", [])

    def primaries_leased(self):
        """Whether every pool's primary agent is alive and holds its lease."""
        primaries = {self.status(p)["primary_gpu_id"] for p in self.pool_host}
        leased = {a.get("instance_id") for a in self.agents()
                  if a.get("state") == "alive" and (a.get("lease") or {}).get("held")}
        return primaries <= leased

    def failovers(self):
        return {pool: self.status(pool).get("failover_count", 0) for pool in self.pool_host}

    def workload_pids(self):
        """{pool: set of pids that wrote for the pool's first primary}: more than one, or one that is
        dead, is a workload that was killed."""
        pids = {}
        for pool, volume in self.volumes.items():
            records = read_records(volume)
            first = records[0][0] if records else None
            pids[pool] = {r[2] for r in records if r[0] == first}
        return pids

    def stop(self):
        self.pool.stop()


def fleet_lab(args, pools, run):
    """The lab for `pools` pools (one per host), `run(fleet)`, torn down whatever happens."""
    binaries = binaries_for(args)
    workdir = tempfile.mkdtemp(prefix="warmpool-drill-")
    hosts = [101 + index for index in range(pools)]
    pool_host = {201 + index: hosts[index] for index in range(pools)}
    try:
        with Lab([(host, 3) for host in hosts]) as lab:
            fleet = Fleet(binaries, workdir, lab, hosts, pool_host, args.write_s, lease_ms=args.lease_ms,
                          fence_command=getattr(args, "fence_command", None))
            try:
                fleet.provision()
                return run(fleet)
            finally:
                fleet.stop()
    except TimeoutError as error:
        return report("%s drill" % args.command, [], {}, args, [str(error)])
    finally:
        keep_or_remove(workdir, args.keep_logs, "drill")


def killed_workloads(fleet, pids_before):
    """Pools whose workload was killed: a new pid wrote, or the pid that wrote is gone."""
    killed = []
    for pool, pids in fleet.workload_pids().items():
        if len(pids) > 1 or not all(alive(pid) for pid in pids) or pids != pids_before.get(pool, pids):
            killed.append(pool)
    return killed


def controller_outage(args):
    """SIGKILLs the controller, waits S seconds, starts it again, for each S; counts the workloads
    killed, the failovers, how long workloads stood frozen, and how soon they thawed."""
    outages = [float(s) for s in args.seconds.split(",")]

    def run(fleet):
        breaches, rounds = [], []
        pids_before = fleet.workload_pids()
        failovers_before = fleet.failovers()
        controller = fleet.pool.controller
        for seconds in outages:
            wait_until("every primary leased", fleet.primaries_leased, 60, interval=0.5)
            killed_at = time.time()
            controller.kill()
            time.sleep(seconds)
            controller.start()
            ready_at = time.time()
            wait_until("every primary leased after the restart", fleet.primaries_leased, 60, interval=0.2)
            time.sleep(3)
            frozen, thawed = [], []
            for pool, volume in fleet.volumes.items():
                primary = fleet.status(pool)["primary_gpu_id"]
                times = [r[3] for r in read_records(volume) if r[0] == primary and r[3] >= killed_at - 2]
                gaps = [b - a for a, b in zip(times, times[1:])]
                longest = max(gaps, default=0)
                # Frozen: a silence of more than a second in a workload that writes every write_s.
                frozen.append(longest if longest > 1 + args.write_s else 0)
                before_ready = [t for t in times if ready_at - 1 <= t < ready_at]
                after_ready = [t for t in times if t >= ready_at]
                if longest > 1 + args.write_s and not before_ready and after_ready:
                    thawed.append((after_ready[0] - ready_at) * 1000)
            result = {
                "outage_s": seconds, "restart_s": round(ready_at - killed_at - seconds, 3),
                "pools_frozen": sum(1 for f in frozen if f), "frozen_s_max": round(max(frozen, default=0), 2),
                "thaw_after_restart_p50_ms": round(percentile(thawed, 0.5)) if thawed else None,
                "thaw_after_restart_p99_ms": round(percentile(thawed, 0.99)) if thawed else None,
                "thaw_after_restart_max_ms": round(max(thawed)) if thawed else None,
            }
            rounds.append(result)
            if thawed and result["thaw_after_restart_p99_ms"] > 1000:
                breaches.append("outage %g s: thaw after restart p99 %d ms > 1000" % (seconds, result["thaw_after_restart_p99_ms"]))
        failovers_after = fleet.failovers()
        failovers = sum(failovers_after[p] - failovers_before[p] for p in failovers_after)
        killed = killed_workloads(fleet, pids_before)
        events = Events(fleet.pool.controller.events_path)
        events.poll()
        finals = [e for e in events.seen if e.get("event") == "fence_final"]
        if killed:
            breaches.append("workloads killed in pools %s" % killed)
        if failovers:
            breaches.append("%d failover(s) of healthy primaries" % failovers)
        summary = {"pools": len(fleet.pool_host), "lease_ms": args.lease_ms, "rounds": rounds,
                   "workloads_killed": len(killed), "failovers": failovers, "fence_final_events": len(finals),
                   "frozen_s_max": max((r["frozen_s_max"] for r in rounds), default=0),
                   "thaw_after_restart_p99_ms": max((r["thaw_after_restart_p99_ms"] or 0 for r in rounds), default=0)}
        rows = [("pools (supervised workloads)", len(fleet.pool_host))]
        for r in rounds:
            rows.append(("outage %g s: pools frozen, frozen max" % r["outage_s"],
                         "%d, %.1f s" % (r["pools_frozen"], r["frozen_s_max"])))
            rows.append(("  thaw after restart p50 / p99 / max", "%s / %s / %s ms" % (
                r["thaw_after_restart_p50_ms"], r["thaw_after_restart_p99_ms"], r["thaw_after_restart_max_ms"])))
        rows += [("workloads killed (target 0)", len(killed)), ("failovers (target 0)", failovers)]
        return report("controller-outage drill: %d pools" % len(fleet.pool_host), rows, summary, args, breaches)

    return fleet_lab(args, args.pools, run)


def pause(args):
    """SIGSTOPs the primary's whole instance (agent, workload, sshd) past the failover, then SIGCONT.
    The provider's stop is answered from its intention (`stale_stop_instances`) and never reaches
    the host (`unreachable_instances`), as with a suspended VM: only the lease, the volume's epoch
    and the agent keep the old writer out."""

    def run(fleet):
        pool = next(iter(fleet.pool_host))
        breaches, trials = [], []
        for trial in range(args.trials):
            before = fleet.status(pool)
            old, standby, epoch = before["primary_gpu_id"], before["standby_gpu_id"], before["epoch"]
            volume = fleet.volumes[pool]
            wait_until("the primary's workload", lambda: any(r[0] == old for r in read_records(volume)[-5:]), 30)
            namespace = Lab.namespace(*fleet.lab.slot_of(before["primary_ssh_host"]))
            workload = {r[2] for r in read_records(volume) if r[0] == old}
            fleet.pool.sim_call("POST", "/admin/faults", {"unreachable_instances": [old], "stale_stop_instances": [old]})
            paused_at = time.time()
            pids = signal_namespace(namespace, signal.SIGSTOP)
            failover = fleet.pool.wait_failover(old, timeout=180, pool=pool)
            promoted = next((iso_seconds(s["at"]) for s in failover["timeline"] if s["step"] == "promoted"), None)
            fenced = next((s for s in failover["timeline"] if s["step"] == "fenced"), None)
            time.sleep(args.pause_after)
            resumed_at = time.time()
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGCONT)
                except ProcessLookupError:
                    pass
            time.sleep(args.watch_seconds)
            records = read_records(volume)
            old_after = [r for r in records if r[1] == epoch and promoted and r[3] >= promoted]
            new_first = next((r[3] for r in records if r[0] == standby and r[1] > epoch), None)
            old_after_new = [r for r in records if r[1] == epoch and new_first and r[3] >= new_first]
            workload_gone = [pid for pid in workload if not alive(pid)]
            fleet.pool.sim_call("POST", "/admin/faults", {})
            result = {
                "old_primary": old, "new_primary": failover.get("new_primary_gpu_id"), "result": failover.get("result"),
                "pause_to_promoted_s": round(promoted - paused_at, 2) if promoted else None,
                "fenced_detail": fenced and fenced.get("detail"),
                "paused_s": round(resumed_at - paused_at, 2),
                "old_epoch_writes_after_promotion": len(old_after), "old_epoch_writes_after_new": len(old_after_new),
                "old_workload_killed_after_resume": bool(workload) and len(workload_gone) == len(workload),
            }
            trials.append(result)
            tag = "trial %d: " % (trial + 1)
            if failover.get("result") != "succeeded":
                breaches.append(tag + "failover %s" % failover.get("result"))
            if old_after or old_after_new:
                breaches.append(tag + "%d write(s) of epoch %d after the promotion" % (len(old_after), epoch))
            if not result["old_workload_killed_after_resume"]:
                breaches.append(tag + "the old workload still runs %g s after the resume" % args.watch_seconds)
        summary = {"trials": trials,
                   "old_epoch_writes_after_promotion": sum(t["old_epoch_writes_after_promotion"] for t in trials)}
        rows = [("trials (paused past the failover, stale stop)", len(trials))]
        for t in trials:
            rows.append(("  %d -> %s: pause to promoted" % (t["old_primary"], t["new_primary"]),
                         "%s s (%s)" % (t["pause_to_promoted_s"], t["fenced_detail"])))
            rows.append(("    old-epoch writes after promotion; old workload killed",
                         "%d; %s" % (t["old_epoch_writes_after_promotion"], t["old_workload_killed_after_resume"])))
        rows.append(("old-epoch writes after promotion (target 0)", summary["old_epoch_writes_after_promotion"]))
        return report("pause drill: %d trial(s)" % len(trials), rows, summary, args, breaches)

    return fleet_lab(args, 1, run)


def mass_partition(args):
    """Cuts the controller off from every agent for `--cut-seconds` (its side of the network: the
    agent port drops every packet) while one primary really stops through the provider's API."""

    def run(fleet):
        breaches = []
        pids_before = fleet.workload_pids()
        failovers_before = fleet.failovers()
        wait_until("every primary leased", fleet.primaries_leased, 60, interval=0.5)
        victim_pool = sorted(fleet.pool_host)[len(fleet.pool_host) // 2]
        victim = fleet.status(victim_pool)["primary_gpu_id"]
        fleet.lab._apply(CONTROL, ["tcp dport %d drop" % AGENT_PORT])
        cut_at = time.time()
        http.request("PUT", fleet.pool.sim_url + "/api/v0/instances/%d/" % victim, fleet.pool.sim_key, {"state": "stopped"})
        time.sleep(args.cut_seconds)
        fleet.lab.heal()
        healed_at = time.time()
        failover = fleet.pool.wait_failover(victim, timeout=180, pool=victim_pool)
        promoted = next((iso_seconds(s["at"]) for s in failover["timeline"] if s["step"] == "promoted"), None)
        detected = next((iso_seconds(s["at"]) for s in failover["timeline"] if s["step"] == "detected"), None)
        wait_until("every primary leased after the heal", fleet.primaries_leased, 60, interval=0.5)
        time.sleep(args.settle_seconds)
        failovers_after = fleet.failovers()
        false_failovers = [p for p in failovers_after if p != victim_pool and failovers_after[p] != failovers_before[p]]
        killed = [p for p in killed_workloads(fleet, pids_before) if p != victim_pool]
        status, breaker = fleet.pool.api("GET", "/breaker")
        events = Events(fleet.pool.controller.events_path)
        events.poll()
        kinds = {}
        for event in events.seen:
            if event.get("time") and iso_seconds(event["time"]) >= cut_at - 1:
                kinds[event.get("event")] = kinds.get(event.get("event"), 0) + 1
        summary = {
            "pools": len(fleet.pool_host), "cut_s": args.cut_seconds, "lease_ms": args.lease_ms,
            "false_failovers": len(false_failovers), "workloads_killed": len(killed),
            "victim_result": failover.get("result"),
            "confirmed_failover_s": round(promoted - cut_at, 2) if promoted else None,
            "cut_to_detected_s": round(detected - cut_at, 2) if detected else None,
            "heal_to_all_leased_s": round(time.time() - args.settle_seconds - healed_at, 2),
            "events_since_cut": kinds, "breaker": breaker if status == 200 else None,
        }
        if false_failovers:
            breaches.append("failovers of healthy primaries: pools %s" % false_failovers)
        if killed:
            breaches.append("workloads killed in pools %s" % killed)
        if failover.get("result") != "succeeded":
            breaches.append("the stopped primary was not failed over: %s" % failover.get("result"))
        rows = [("pools, cut", "%d, %g s" % (len(fleet.pool_host), args.cut_seconds)),
                ("false failovers (target 0)", len(false_failovers)),
                ("workloads killed (target 0)", len(killed)),
                ("stopped primary: cut to detected / promoted", "%s / %s s" % (
                    summary["cut_to_detected_s"], summary["confirmed_failover_s"])),
                ("events since the cut", ", ".join("%s %d" % kv for kv in sorted(kinds.items())))]
        return report("mass-partition drill: %d pools" % len(fleet.pool_host), rows, summary, args, breaches)

    return fleet_lab(args, args.pools, run)
