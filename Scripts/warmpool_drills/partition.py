"""`drill partition`: a live primary cut off both ways while its workload writes; the standby
promoted and no split brain."""
import os
import random
import time

from warmpool_lab.events import Events, iso_seconds
from warmpool_lab.processes import wait_until
from warmpool_lab.stats import percentile

from . import report
from .failover_lab import failover_lab, lab_pool


def read_log(path):
    """The workload log: [(kind, instance, epoch or None, ns)] in write order (O_APPEND)."""
    lines = []
    with open(path) as handle:
        for line in handle:
            fields = line.split()
            if len(fields) == 3 and fields[0] == "w":
                lines.append(("w", int(fields[1]), None, int(fields[2])))
            elif len(fields) == 4 and fields[0] == "fenced":
                lines.append(("fenced", int(fields[1]), int(fields[2]), int(fields[3])))
    return lines


def partition(args):
    """Cuts a live primary off (both ways) while its workload writes; the provider's stop cannot
    reach it either (the `unreachable_instances` fault), so only its lease keeps it off the volume."""

    def run(binaries, workdir, lab):
        pool = lab_pool(binaries, workdir, lab, workload=True,
                        controller_extra=["--fence-timeout-ms", str(args.fence_timeout_ms)])
        try:
            pool.provision()
            trials, breaches, provoked = [], [], set()
            for trial in range(args.trials):
                before = pool.status()
                old, standby, epoch = before["primary_gpu_id"], before["standby_gpu_id"], before["epoch"]
                volume = pool.instance(old)["volume_directory"]
                log_path = os.path.join(volume, "drill.log")
                wait_until("the primary's agent", lambda: pool.agent_alive(old), 30)
                wait_until("the primary's workload",
                           lambda: os.path.exists(log_path) and any(l[1] == old for l in read_log(log_path)[-20:]), 30)
                time.sleep(1 + random.random())
                pool.sim_call("POST", "/admin/faults", {"unreachable_instances": [old]})
                cut = time.time()
                lab.partition(before["primary_ssh_host"])
                provoked.add(old)
                failover = pool.wait_failover(old, timeout=120)
                promoted = next((s for s in failover["timeline"] if s["step"] == "promoted"), None)
                detected = next((s for s in failover["timeline"] if s["step"] == "detected"), None)
                time.sleep(1)
                lab.heal()
                healed = time.time()
                time.sleep(args.heal_seconds)
                after = pool.status()
                agents = pool.api("GET", "/agents")[1].get("agents", [])
                old_agent = next((a for a in agents if a.get("instance_id") == old), {})
                log = read_log(log_path)
                # What the old agent told the controller once its link was back (key revoked or not).
                events = Events(pool.controller.events_path)
                events.poll()
                back = [e for e in events.seen if e.get("instance_id") == old and iso_seconds(e["time"]) >= healed]
                pool.sim_call("POST", "/admin/faults", {})
                # Write order in the shared file is the order of the writes (O_APPEND).
                cut_ns = int(cut * 1e9)
                first_new = next((i for i, l in enumerate(log) if l[0] == "w" and l[1] == standby and l[3] >= cut_ns), None)
                old_after_new = [l for i, l in enumerate(log) if first_new is not None and i > first_new and l[1] == old
                                 and l[0] == "w"]
                fence = next((i for i, l in enumerate(log) if l[0] == "fenced" and l[1] == old), None)
                old_after_heal = [l for l in log if l[1] == old and l[0] == "w" and l[3] >= int(healed * 1e9)]
                last_old = max((l[3] for l in log if l[1] == old and l[0] == "w"), default=0)
                result = {
                    "old_primary": old, "new_primary": failover.get("new_primary_gpu_id"),
                    "result": failover.get("result"),
                    "cut_to_detected_ms": round((iso_seconds(detected["at"]) - cut) * 1000) if detected else None,
                    "cut_to_promoted_ms": round((iso_seconds(promoted["at"]) - cut) * 1000) if promoted else None,
                    "cut_to_self_fence_ms": round((log[fence][3] / 1e9 - cut) * 1000) if fence is not None else None,
                    "cut_to_last_old_write_ms": round((last_old / 1e9 - cut) * 1000),
                    "cut_to_first_new_write_ms": round((log[first_new][3] / 1e9 - cut) * 1000) if first_new is not None else None,
                    "fenced_epoch": log[fence][2] if fence is not None else None,
                    "old_writes_after_new": len(old_after_new), "old_writes_after_heal": len(old_after_heal),
                    "old_agent_after_heal": {"state": old_agent.get("state"), "fenced": old_agent.get("fenced"),
                                             "lease_held": (old_agent.get("lease") or {}).get("held"),
                                             "events": [e["event"] for e in back],
                                             "fenced_at_epoch": next((e.get("fenced_at_epoch") for e in back
                                                                      if e["event"] == "fenced"), None)},
                    "fenced_step": next((s["detail"] for s in failover["timeline"] if s["step"] == "fenced"), None),
                }
                trials.append(result)
                tag = "trial %d: " % (trial + 1)
                if failover.get("result") != "succeeded" or failover.get("new_primary_gpu_id") != standby:
                    breaches.append(tag + "the standby was not promoted: %s" % failover.get("result"))
                if first_new is None:
                    breaches.append(tag + "the new primary never wrote")
                if old_after_new:
                    breaches.append(tag + "split brain: %d writes of epoch %d after the first of epoch %d"
                                    % (len(old_after_new), epoch, after.get("epoch")))
                if fence is None or (first_new is not None and fence > first_new):
                    breaches.append(tag + "the old primary did not fence itself before the new one wrote")
                elif log[fence][2] != epoch:
                    breaches.append(tag + "fenced at epoch %s, held %d" % (log[fence][2], epoch))
                if old_after_heal:
                    breaches.append(tag + "the old primary wrote after the partition healed")
                if any(e["event"] == "connected" for e in back) and not any(e["event"] == "fenced" for e in back):
                    breaches.append(tag + "the old agent came back without saying it is fenced")
                if old_agent.get("lease", {}).get("held") or after.get("primary_gpu_id") != standby:
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
        fenced = [t["cut_to_self_fence_ms"] for t in trials if t["cut_to_self_fence_ms"] is not None]
        summary = {
            "trials": trials, "fence_timeout_ms": args.fence_timeout_ms,
            "cut_to_promoted_p50_ms": percentile(promoted, 0.5) if promoted else None,
            "cut_to_promoted_max_ms": max(promoted) if promoted else None,
            "cut_to_self_fence_p50_ms": percentile(fenced, 0.5) if fenced else None,
            "split_brain_writes": sum(t["old_writes_after_new"] for t in trials),
            "creates": counters.get("creates"), "starts": counters.get("starts"),
        }
        rows = [("trials (fence timeout %d ms, stop never reaches the host)" % args.fence_timeout_ms, len(trials))]
        for t in trials:
            rows.append(("  %d -> %d: cut to detected / self-fence / promoted" % (t["old_primary"], t["new_primary"] or 0),
                         "%s / %s / %s ms" % (t["cut_to_detected_ms"], t["cut_to_self_fence_ms"], t["cut_to_promoted_ms"])))
            rows.append(("    last old write / first new write after cut", "%s / %s ms" % (
                t["cut_to_last_old_write_ms"], t["cut_to_first_new_write_ms"])))
        rows.append(("cut to promotion p50 / max", "%s / %s ms" % (summary["cut_to_promoted_p50_ms"], summary["cut_to_promoted_max_ms"])))
        rows.append(("split-brain writes (target 0)", summary["split_brain_writes"]))
        rows.append(("old agent after heal: events, lease held", "; ".join(
            "%s, %s" % ("/".join(t["old_agent_after_heal"]["events"]) or "-", t["old_agent_after_heal"]["lease_held"])
            for t in trials)))
        return report("partition drill: %d trial(s)" % len(trials), rows, summary, args, breaches)

    return failover_lab(args, run)
