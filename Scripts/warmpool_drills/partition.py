"""`drill partition`: a live primary cut off both ways while its supervised workload writes, its
agent restarted with no lease and its fence command failing; the standby promoted and no split brain."""
import os
import random
import signal
import subprocess
import time

from warmpool_lab.events import Events, iso_seconds
from warmpool_lab.namespaces import Lab
from warmpool_lab.processes import wait_until
from warmpool_lab.stats import percentile

from . import report
from .failover_lab import failover_lab, lab_pool, read_records
from .fencing import alive, namespace_pids


def agent_of(namespace):
    """(pid, argv, environment, cwd) of the warmpool-agent in an instance's network namespace."""
    for pid in namespace_pids(namespace):
        try:
            with open("/proc/%d/cmdline" % pid, "rb") as handle:
                argv = [a.decode() for a in handle.read().split(b"\0") if a]
            if argv and os.path.basename(argv[0]) == "warmpool-agent":
                with open("/proc/%d/environ" % pid, "rb") as handle:
                    environment = [e.decode() for e in handle.read().split(b"\0") if e]
                return pid, argv, environment, os.readlink("/proc/%d/cwd" % pid)
        except (FileNotFoundError, ProcessLookupError):
            continue
    return None


def restart_agent(namespace, log_path):
    """SIGKILLs the instance's agent and starts it again in the instance's namespaces with the same
    command line and environment, as `Restart=always` would: a new process with no lease."""
    found = agent_of(namespace)
    if found is None:
        raise RuntimeError("no warmpool-agent in %s" % namespace)
    pid, argv, environment, cwd = found
    # Any other process of the instance (sshd, the launcher) holds its mount namespace.
    anchor = next(p for p in namespace_pids(namespace) if p != pid)
    os.kill(pid, signal.SIGKILL)
    with open(log_path, "ab") as log:
        return subprocess.Popen(["nsenter", "-t", str(anchor), "-m", "-n", "--", "env", "-i", "-C", cwd]
                                + environment + argv, stdout=log, stderr=log, start_new_session=True)


def partition(args):
    """Cuts a live primary off (both ways) while its supervised workload writes. The provider's stop
    never reaches it (`unreachable_instances`) and is answered from the provider's intention
    (`stale_stop_instances`: "exited" while it runs on), so only the lease, the agent and the
    volume's epoch keep it off the volume. During the partition its agent is SIGKILLed and started
    again (a new process with no lease, the workload left running), and its fence command fails."""

    def run(binaries, workdir, lab):
        pool = lab_pool(binaries, workdir, lab, supervised=True, fence_command="exit 3",
                        controller_extra=["--fence-timeout-ms", str(args.fence_timeout_ms)])
        try:
            pool.provision()
            trials, breaches, provoked = [], [], set()
            for trial in range(args.trials):
                before = pool.status()
                old, standby, epoch = before["primary_gpu_id"], before["standby_gpu_id"], before["epoch"]
                volume = pool.instance(old)["volume_directory"]
                namespace = Lab.namespace(*lab.slot_of(before["primary_ssh_host"]))
                wait_until("the primary's agent", lambda: pool.agent_alive(old, lease=True), 30)
                wait_until("the primary's workload", lambda: any(r[0] == old for r in read_records(volume)[-20:]), 30)
                workload = {r[2] for r in read_records(volume) if r[0] == old and r[1] == epoch}
                time.sleep(1 + random.random())
                pool.sim_call("POST", "/admin/faults", {"unreachable_instances": [old], "stale_stop_instances": [old]})
                cut = time.time()
                lab.partition(before["primary_ssh_host"])
                provoked.add(old)
                time.sleep(args.restart_after)
                restarted = restart_agent(namespace, os.path.join(workdir, "restarted-agent-%d.log" % old))
                restarted_at = time.time()
                failover = pool.wait_failover(old, timeout=120)
                promoted = next((s for s in failover["timeline"] if s["step"] == "promoted"), None)
                detected = next((s for s in failover["timeline"] if s["step"] == "detected"), None)
                promoted_at = iso_seconds(promoted["at"]) if promoted else None
                time.sleep(1)
                lab.heal()
                healed = time.time()
                time.sleep(args.heal_seconds)
                after = pool.status()
                agents = pool.api("GET", "/agents")[1].get("agents", [])
                old_agent = next((a for a in agents if a.get("instance_id") == old), {})
                records = read_records(volume)
                # What the old agent told the controller once its link was back (key revoked or not).
                events = Events(pool.controller.events_path)
                events.poll()
                back = [e for e in events.seen if e.get("instance_id") == old and iso_seconds(e["time"]) >= healed]
                workload_alive = [pid for pid in workload if alive(pid)]
                restarted.kill()
                restarted.wait()
                pool.sim_call("POST", "/admin/faults", {})
                # Write order in the shared file is the order of the writes (O_APPEND).
                new_writes = [r for r in records if r[0] == standby and r[1] > epoch and r[3] >= cut]
                first_new = new_writes[0][3] if new_writes else None
                old_writes = [r for r in records if r[0] == old and r[1] == epoch]
                old_after_new = [r for r in old_writes if first_new is not None and r[3] >= first_new]
                old_after_promotion = [r for r in old_writes if promoted_at is not None and r[3] >= promoted_at]
                old_after_restart = [r for r in old_writes if r[3] >= restarted_at + 0.5]
                old_after_heal = [r for r in old_writes if r[3] >= healed]
                last_old = max((r[3] for r in old_writes), default=0)
                ms = lambda t: round((t - cut) * 1000) if t else None  # noqa: E731
                result = {
                    "old_primary": old, "new_primary": failover.get("new_primary_gpu_id"),
                    "result": failover.get("result"),
                    "cut_to_detected_ms": ms(iso_seconds(detected["at"])) if detected else None,
                    "cut_to_agent_restart_ms": ms(restarted_at),
                    "cut_to_last_old_write_ms": ms(last_old),
                    "cut_to_promoted_ms": ms(promoted_at),
                    "cut_to_first_new_write_ms": ms(first_new),
                    "old_writes_after_new": len(old_after_new), "old_writes_after_promotion": len(old_after_promotion),
                    "old_writes_after_agent_restart": len(old_after_restart), "old_writes_after_heal": len(old_after_heal),
                    "old_workload_alive_after_heal": workload_alive,
                    "old_agent_after_heal": {"state": old_agent.get("state"), "fenced": old_agent.get("fenced"),
                                             "lease_held": (old_agent.get("lease") or {}).get("held"),
                                             "events": [e["event"] for e in back]},
                    "fenced_step": next((s["detail"] for s in failover["timeline"] if s["step"] == "fenced"), None),
                }
                trials.append(result)
                tag = "trial %d: " % (trial + 1)
                if failover.get("result") != "succeeded" or failover.get("new_primary_gpu_id") != standby:
                    breaches.append(tag + "the standby was not promoted: %s" % failover.get("result"))
                if first_new is None:
                    breaches.append(tag + "the new primary never wrote")
                if old_after_new or old_after_promotion:
                    breaches.append(tag + "split brain: %d writes of epoch %d after the promotion, %d after the first "
                                    "of epoch %d" % (len(old_after_promotion), epoch, len(old_after_new), epoch + 1))
                if old_after_restart:
                    breaches.append(tag + "the workload wrote %d times after its agent restarted with no lease"
                                    % len(old_after_restart))
                if old_after_heal:
                    breaches.append(tag + "the old primary wrote after the partition healed")
                if workload_alive:
                    breaches.append(tag + "the old workload still runs after the heal (pids %s)" % workload_alive)
                if (old_agent.get("lease") or {}).get("held") or after.get("primary_gpu_id") != standby:
                    breaches.append(tag + "the old primary acts as primary after the heal: %s" % old_agent)
                if after.get("epoch") != epoch + 1:
                    breaches.append(tag + "epoch %s after the failover, expected %d" % (after.get("epoch"), epoch + 1))
            counters = pool.sim_call("GET", "/admin/counters")[1]
            false_failovers = pool.unprovoked(provoked)
            if false_failovers:
                # A healthy primary failed over: the detector's false failure (a starved CPU can do it).
                breaches.append("failovers of primaries the drill left alone: %s" % false_failovers)
        finally:
            pool.stop()
        promoted = [t["cut_to_promoted_ms"] for t in trials if t["cut_to_promoted_ms"] is not None]
        last_old = [t["cut_to_last_old_write_ms"] for t in trials if t["cut_to_last_old_write_ms"] is not None]
        summary = {
            "trials": trials, "fence_timeout_ms": args.fence_timeout_ms,
            "cut_to_promoted_p50_ms": percentile(promoted, 0.5) if promoted else None,
            "cut_to_promoted_max_ms": max(promoted) if promoted else None,
            "cut_to_last_old_write_p50_ms": percentile(last_old, 0.5) if last_old else None,
            "split_brain_writes": sum(t["old_writes_after_new"] + t["old_writes_after_promotion"] for t in trials),
            "creates": counters.get("creates"), "starts": counters.get("starts"),
        }
        rows = [("trials (stop never reaches the host, reported done)", len(trials))]
        for t in trials:
            rows.append(("  %d -> %d: cut to detected / promoted" % (t["old_primary"], t["new_primary"] or 0),
                         "%s / %s ms" % (t["cut_to_detected_ms"], t["cut_to_promoted_ms"])))
            rows.append(("    agent restart / last old write / first new write", "%s / %s / %s ms" % (
                t["cut_to_agent_restart_ms"], t["cut_to_last_old_write_ms"], t["cut_to_first_new_write_ms"])))
        rows.append(("cut to promotion p50 / max", "%s / %s ms" % (summary["cut_to_promoted_p50_ms"], summary["cut_to_promoted_max_ms"])))
        rows.append(("split-brain writes (target 0)", summary["split_brain_writes"]))
        rows.append(("old agent after heal: events, lease held", "; ".join(
            "%s, %s" % ("/".join(t["old_agent_after_heal"]["events"]) or "-", t["old_agent_after_heal"]["lease_held"])
            for t in trials)))
        return report("partition drill: %d trial(s)" % len(trials), rows, summary, args, breaches)

    return failover_lab(args, run)
