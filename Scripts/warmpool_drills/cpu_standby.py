"""`drill cpu-standby`: a pool on a one-GPU host, protected by a CPU VM its primary keeps in sync
(issue 22).

warmpool-sim emulates both clouds: host 77 has one GPU (no warm pool fits), host 88 two, and its
Compute Engine (Protocol/GCE.md) runs the CPU standby, a VM with sshd and our agent. The controller
gets the emulator's service-account key, so a host without a second GPU gets a CPU standby. The
primary runs a workload writing --write-mib-s MiB/s into /data (files rewritten in turn) and a
checkpoint every --checkpoint-s; its agent rsyncs /data to the VM continuously. Other renters hold
every free GPU (the emulator's `full_hosts`), so the pool cannot move back at once. The primary is
crashed; the VM is promoted (degraded: CPU). Then the GPUs free up and the pool fails back, planned:
lease revoked, final snapshot of the VM, restored onto a new volume on a GPU host.

Keys: strategy (`cpu_standby` before the failure), sync_lag_p99_s and sync_lag_max_s (sampled from
the pool's status every 0.5 s for --steady-s in steady state), failover_s (the crash -> the VM
promoted), boot_delay_s, failover_minus_boot_s, data_verified (the data set, written before the
crash, is byte-identical on the promoted VM), work_lost_s (the failover's record: the old
primary's newest checkpoint's age at detection), failed_back (the pool active on a GPU host again
with the data set intact), failback_s. Targets: failover_minus_boot_s <= 30, sync_lag_p99_s <= 10
with a workload writing 10 MiB/s.
"""
import json
import os
import subprocess
import tempfile
import time

from warmpool_bench.snapshot import generate
from warmpool_lab.processes import keep_or_remove, wait_until
from warmpool_lab.pool import WarmPool

from . import binaries_for, report
from .host_loss import file_digests, parse_time, snapshot_store

POOL, HOST, OTHER = 12, 77, 88
FAILOVER_TARGET_S, LAG_TARGET_S = 30, 10
MIB = 1 << 20

# Rewrites 20 files of WRITE_MIB MiB in turn, one a second: WRITE_MIB MiB/s of changed data on a
# bounded disk; and a checkpoint every DRILL_CHECKPOINT_S, written aside then renamed.
WORKLOAD = ('mkdir -p "$WARMPOOL_VOLUME_PATH/work" "$WARMPOOL_VOLUME_PATH/checkpoints"; n=0; last=0; while :; do '
            'head -c $((DRILL_WRITE_MIB * 1048576)) /dev/urandom > "$WARMPOOL_VOLUME_PATH/work/.f$((n % 20))" && '
            'mv "$WARMPOOL_VOLUME_PATH/work/.f$((n % 20))" "$WARMPOOL_VOLUME_PATH/work/f$((n % 20))"; n=$((n + 1)); '
            'now=$(date +%s); if [ $((now - last)) -ge "$DRILL_CHECKPOINT_S" ]; then last=$now; '
            'head -c 1048576 /dev/urandom > "$WARMPOOL_VOLUME_PATH/checkpoints/.tmp" && '
            'mv "$WARMPOOL_VOLUME_PATH/checkpoints/.tmp" "$WARMPOOL_VOLUME_PATH/checkpoints/step-$now.ckpt"; fi; '
            'sleep 1; done')


def percentile(values, fraction):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))] if ordered else None


def host_address():
    """One of this machine's global IPv4 addresses (not an emulated VM's link): what the VMs reach."""
    listing = subprocess.run(["ip", "-4", "-o", "addr", "show", "scope", "global"], capture_output=True, text=True).stdout
    for line in listing.splitlines():
        fields = line.split()
        address = fields[fields.index("inet") + 1].split("/")[0] if "inet" in fields else None
        if address and not address.startswith("10.216."):
            return address
    raise RuntimeError("this machine has no global IPv4 address for the emulated VMs to reach")


def remote_digests(key, host, root):
    """{relative path: sha256} of the files under `root` on `host`, over SSH as root."""
    command = "cd %s && find . -type f -print0 | sort -z | xargs -0 -r sha256sum" % root
    result = subprocess.run(["ssh", "-i", key, "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                             "-o", "BatchMode=yes", "-o", "LogLevel=ERROR", "root@" + host, command],
                            capture_output=True, text=True, timeout=120)
    digests = {}
    for line in result.stdout.splitlines():
        digest, _, path = line.partition("  ")
        digests[os.path.normpath(path)] = digest
    return digests


def cpu_standby(args):
    binaries = binaries_for(args)
    workdir = tempfile.mkdtemp(prefix="warmpool-cpu-standby-")
    moto = pool = None
    summary = {"strategy": None, "failed_back": False}
    try:
        address = host_address()
        moto, store = snapshot_store(workdir, reachable_at=address)
        snapshot_binary = args.snapshot_binary or os.path.join(binaries, "warmpool-snapshot")
        gce_key = os.path.join(workdir, "gce-service-account.json")
        agent_env = ["%s=%s" % item for item in sorted(store.items())] + [
            "WARMPOOL_WORKLOAD=" + WORKLOAD, "DRILL_CHECKPOINT_S=%d" % args.checkpoint_s, "DRILL_WRITE_MIB=%d" % args.write_mib_s,
            'WARMPOOL_SNAPSHOT_COMMAND=%s create --source "$WARMPOOL_SNAPSHOT_SOURCE"' % snapshot_binary]
        pool = WarmPool(
            binaries, workdir, args.boot_delay_ms, log_level="info", sim_log_level="notice",
            hosts=["%d:1:RTX_4090:0.45" % HOST, "%d:2:RTX_4090:0.50" % OTHER], agent_env=agent_env,
            sim_extra=["--gce-key-out", gce_key], vm_reach=address,
            controller_extra=["--gce-key-file", gce_key, "--gce-url", "SIM/compute/v1", "--lease-ms", "2000",
                              "--restart-grace-ms", "3000", "--degraded-retry-s", "5",
                              "--restore-command", '%s restore --target "$WARMPOOL_VOLUME_PATH"' % snapshot_binary])
        # Every other GPU rented by someone else: the pool cannot move back before the drill says.
        pool.sim_call("POST", "/admin/faults", {"full_hosts": [OTHER]})
        answer = pool.provision()
        status = pool.status()
        summary["strategy"] = status.get("strategy")
        primary = answer["status"]["primary_gpu_id"]
        pool.sim_call("POST", "/admin/faults", {"full_hosts": [HOST, OTHER]})
        volume_dir = pool.sim_call("GET", "/admin/instances/%d" % primary)[1]["volume_directory"]

        print("writing a %d MiB data set onto the volume ..." % args.data_mib, flush=True)
        generate(os.path.join(volume_dir, "dataset"), args.data_mib, seed=22)
        dataset = file_digests(os.path.join(volume_dir, "dataset"))
        wait_until("the sync to catch up with the data set",
                   lambda: ((pool.status().get("sync") or {}).get("passes") or 0) >= 2
                   and (pool.status().get("sync") or {}).get("lag_seconds") is not None
                   and pool.status()["sync"]["lag_seconds"] < LAG_TARGET_S, 600, interval=0.5)

        print("sampling the sync's lag for %d s (workload writing %d MiB/s) ..." % (args.steady_s, args.write_mib_s), flush=True)
        lags = []
        end = time.time() + args.steady_s
        while time.time() < end:
            sync = pool.status().get("sync") or {}
            if sync.get("lag_seconds") is not None:
                lags.append(sync["lag_seconds"])
            time.sleep(0.5)

        crashed_at = time.time()
        pool.fault(primary, "crash")
        failover = pool.wait_failover(primary, timeout=args.timeout_s)
        status = pool.status()
        steps = {step["step"]: parse_time(step["at"]) for step in failover.get("timeline", [])}
        promoted_at = steps.get("promoted")
        cpu_primary = status.get("cpu_primary_name")
        vm_address = status.get("primary_ssh_host")
        copy = remote_digests(pool.ssh_key, vm_address, "/data/dataset") if vm_address else {}
        data_verified = bool(dataset) and copy == dataset

        failed_back, failback_s, back_verified = False, None, False
        if not args.no_failback:
            print("freeing the GPUs: the pool moves back ...", flush=True)
            freed_at = time.time()
            pool.sim_call("POST", "/admin/faults", {})
            try:
                wait_until("the pool back on a GPU", lambda: pool.status().get("state") == "active"
                           and not pool.status().get("cpu_primary_name"), args.timeout_s, interval=0.5)
                failback_s = time.time() - freed_at
                back = pool.status()
                new_volume = pool.sim_call("GET", "/admin/instances/%d" % back["primary_gpu_id"])[1]["volume_directory"]
                back_verified = file_digests(os.path.join(new_volume, "dataset")) == dataset
                failed_back = back_verified
            except TimeoutError as error:
                print("failback: %s" % error, flush=True)

        boot = args.boot_delay_ms / 1000
        failover_s = promoted_at - crashed_at if promoted_at else None
        summary.update({
            "sync_lag_p50_s": percentile(lags, 0.5), "sync_lag_p99_s": percentile(lags, 0.99),
            "sync_lag_max_s": max(lags) if lags else None, "sync_lag_samples": len(lags),
            "failover_s": round(failover_s, 3) if failover_s else None, "boot_delay_s": boot,
            "failover_minus_boot_s": round(failover_s - boot, 3) if failover_s else None,
            "data_verified": data_verified, "work_lost_s": failover.get("work_lost_seconds"),
            "cpu_primary": cpu_primary, "failed_back": failed_back,
            "failback_s": round(failback_s, 3) if failback_s else None, "write_mib_s": args.write_mib_s,
            "data_mib": args.data_mib,
            "timeline": [[step["step"], round(parse_time(step["at"]) - crashed_at, 3)] for step in failover.get("timeline", [])],
        })
        breaches = []
        if summary["strategy"] != "cpu_standby":
            breaches.append("the pool's strategy was %s, not cpu_standby" % summary["strategy"])
        if not cpu_primary:
            breaches.append("the CPU standby was not promoted: %s" % json.dumps(status)[:400])
        if not data_verified:
            breaches.append("the data set on the CPU VM differs (%d of %d files equal)" % (
                sum(1 for path, digest in dataset.items() if copy.get(path) == digest), len(dataset)))
        if failover_s is None or failover_s - boot > FAILOVER_TARGET_S:
            breaches.append("failover minus boot %s s > %d s" % (summary["failover_minus_boot_s"], FAILOVER_TARGET_S))
        if summary["sync_lag_p99_s"] is None or summary["sync_lag_p99_s"] > LAG_TARGET_S:
            breaches.append("sync lag p99 %s s > %d s" % (summary["sync_lag_p99_s"], LAG_TARGET_S))
        if not args.no_failback and not failed_back:
            breaches.append("no failback to a GPU host (data %s)" % ("intact" if back_verified else "not verified"))
        rows = [[key, summary[key]] for key in ("strategy", "sync_lag_p50_s", "sync_lag_p99_s", "sync_lag_max_s", "failover_s",
                                                "boot_delay_s", "failover_minus_boot_s", "data_verified", "work_lost_s",
                                                "cpu_primary", "failed_back", "failback_s")]
        rows += [["  %s" % step, "+%.3f s" % at] for step, at in summary["timeline"]]
        return report("cpu-standby drill: %d MiB/s written, primary crashed" % args.write_mib_s, rows, summary, args, breaches)
    except (TimeoutError, RuntimeError, OSError) as error:
        return report("cpu-standby drill", [], summary, args, [str(error)])
    finally:
        if pool:
            pool.stop()
        if moto:
            moto.stop()
        keep_or_remove(workdir, args.keep_logs, "drill")
