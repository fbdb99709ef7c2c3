"""`drill host-loss`: a pool's machine goes offline for good, its volume with it (issue 21).

A pool on host 77 (the emulator's other host, 88, has free GPUs); its primary runs a workload the
agent supervises that writes a checkpoint (1 MiB, a new file each time, written then renamed) to
/data/checkpoints every --checkpoint-s; the controller has the agent snapshot /data every
--snapshot-interval-s to a local S3 server (moto), and moves a pool whose machine is offline past
--host-loss-after-s. A data set of --data-mib (mixed text, random data, a checkpoint-like file) is
written onto the volume; once a snapshot taken after it is in the store and one more checkpoint is
written, machine 77 is lost (`lost_machines`: its instances dead, its volume emptied).

Keys: restored (the pool is active on another host with its data), recovery_point_s (the restored
snapshot's age at the failure: the work lost), recovery_time_s (the machine lost -> the new
primary promoted), boot_delay_s (the emulator's, reported apart) and recovery_time_minus_boot_s,
host_loss_bound_s (the wait before giving up on the host, inside the recovery time), restore_s and
restore_mib_s (the restore step alone), data_verified (every file of the restored snapshot, restored
again independently on this machine, equals the new volume's; and every file of the data set equals
what was generated), standby_ready (a stopped standby on the new host, the pool protected).
Target: recovery_time_minus_boot_s <= 60 for 2 GiB.
"""
import hashlib
import json
import os
import secrets
import subprocess
import tempfile
import time

from warmpool_bench.snapshot import Moto, generate
from warmpool_lab.processes import keep_or_remove, wait_until
from warmpool_lab.pool import WarmPool

from . import binaries_for, report

POOL, HOST, OTHER = 12, 77, 88
TARGET_S = 60
MIB = 1 << 20

# A new checkpoint file each time, written aside then renamed: what a snapshot keeps whole.
WORKLOAD = ('mkdir -p "$WARMPOOL_VOLUME_PATH/checkpoints"; while :; do '
            'n=$(date +%s%N); head -c 1048576 /dev/urandom > "$WARMPOOL_VOLUME_PATH/checkpoints/.tmp-$n" && '
            'mv "$WARMPOOL_VOLUME_PATH/checkpoints/.tmp-$n" "$WARMPOOL_VOLUME_PATH/checkpoints/step-$n.ckpt"; '
            'sleep "$DRILL_CHECKPOINT_S"; done')


def file_digests(root, skip=()):
    """{relative path: sha256} of every regular file under root."""
    digests = {}
    for directory, names, filenames in os.walk(root):
        for name in filenames:
            path = os.path.join(directory, name)
            relative = os.path.relpath(path, root)
            if relative.split(os.sep)[0] in skip or os.path.islink(path):
                continue
            digest = hashlib.sha256()
            with open(path, "rb") as handle:
                for block in iter(lambda: handle.read(8 * MIB), b""):
                    digest.update(block)
            digests[relative] = digest.hexdigest()
    return digests


def snapshot_store(workdir, reachable_at=None):
    """A local S3 server (moto) with a bucket and a snapshot key: (server, the store's settings as
    the instances get them)."""
    moto = Moto(workdir, reachable_at=reachable_at)
    moto.make_bucket("snapshots")
    key_file = os.path.join(workdir, "snapshot-key")
    with open(key_file, "w") as handle:
        handle.write(secrets.token_hex(32) + "\n")
    return moto, {"WARMPOOL_S3_ENDPOINT": moto.url, "WARMPOOL_S3_BUCKET": "snapshots", "WARMPOOL_S3_PREFIX": "warmpool/",
                  "WARMPOOL_S3_ACCESS_KEY_ID": "drill", "WARMPOOL_S3_SECRET_ACCESS_KEY": "drill",
                  "WARMPOOL_SNAPSHOT_KEY_FILE": key_file}


def snapshot_started(snapshot_id):
    """When a snapshot began, from its id (yyyyMMddTHHmmss.SSSZ-...), in Unix seconds."""
    stamp = time.strptime(snapshot_id[:15], "%Y%m%dT%H%M%S")
    return time.mktime(stamp) - time.timezone + int(snapshot_id[16:19]) / 1000


def parse_time(text):
    """An API timestamp (ISO 8601, UTC, milliseconds) in Unix seconds."""
    stamp = time.strptime(text[:19], "%Y-%m-%dT%H:%M:%S")
    fraction = float("0" + text[19:].rstrip("Z")) if text[19:20] == "." else 0.0
    return time.mktime(stamp) - time.timezone + fraction


def host_loss(args):
    binaries = binaries_for(args)
    workdir = tempfile.mkdtemp(prefix="warmpool-host-loss-")
    moto = pool = None
    try:
        moto, store = snapshot_store(workdir)
        snapshot_binary = args.snapshot_binary or os.path.join(binaries, "warmpool-snapshot")
        agent_env = ["%s=%s" % item for item in sorted(store.items())] + [
            "WARMPOOL_WORKLOAD=" + WORKLOAD, "DRILL_CHECKPOINT_S=%g" % args.checkpoint_s,
            'WARMPOOL_SNAPSHOT_COMMAND=%s create --source "$WARMPOOL_SNAPSHOT_SOURCE"' % snapshot_binary]
        pool = WarmPool(
            binaries, workdir, args.boot_delay_ms, log_level="info", sim_log_level="notice",
            hosts=["%d:2:RTX_4090:0.45" % HOST, "%d:2:RTX_4090:0.50" % OTHER], agent_env=agent_env,
            controller_extra=["--snapshot-interval-s", str(args.snapshot_interval_s), "--host-loss-after-s",
                              str(args.host_loss_after_s), "--lease-ms", "2000", "--restart-grace-ms", "3000",
                              "--restore-command", '%s restore --target "$WARMPOOL_VOLUME_PATH"' % snapshot_binary])
        primary = pool.provision()["status"]["primary_gpu_id"]
        volume_dir = pool.sim_call("GET", "/admin/instances/%d" % primary)[1]["volume_directory"]

        print("writing %d MiB onto the volume ..." % args.data_mib, flush=True)
        generate(os.path.join(volume_dir, "dataset"), args.data_mib, seed=21)
        generated_at = time.time()
        dataset = file_digests(os.path.join(volume_dir, "dataset"))

        def snapshot_after_data():
            point = pool.status().get("recovery_point") or {}
            taken = point.get("last_snapshot_id")
            return taken if taken and snapshot_started(taken) > generated_at and not point.get("snapshot_running") else None
        print("waiting for a snapshot taken after it (every %d s) ..." % args.snapshot_interval_s, flush=True)
        covering = wait_until("a snapshot of the data set", snapshot_after_data, args.snapshot_interval_s * 3 + 600, interval=0.5)
        newest_checkpoint = (pool.status().get("recovery_point") or {}).get("checkpoint_newest")
        wait_until("one more checkpoint", lambda: (pool.status().get("recovery_point") or {}).get("checkpoint_newest")
                   not in (None, newest_checkpoint), args.checkpoint_s * 3 + 10, interval=0.2)

        lost_at = time.time()
        pool.sim_call("POST", "/admin/faults", {"lost_machines": [HOST]})
        failover = pool.wait_failover(primary, timeout=args.timeout_s)
        status = pool.status()
        steps = {step["step"]: parse_time(step["at"]) for step in failover.get("timeline", [])}
        promoted_at = steps.get("promoted")
        restored = failover.get("result") == "succeeded" and status.get("host_machine_id") == OTHER

        standby_ready = False
        try:
            wait_until("a standby on the new host and the pool protected",
                       lambda: pool.status().get("protected") and pool.status().get("standby_state") == "stopped", 60)
            standby_ready = True
        except TimeoutError:
            pass

        # The restored snapshot, restored again here, file by file against the new volume.
        new_primary = status.get("primary_gpu_id")
        new_volume = pool.sim_call("GET", "/admin/instances/%d" % new_primary)[1]["volume_directory"] if new_primary else None
        independent = os.path.join(workdir, "independent")
        environment = dict(os.environ, **dict(store, WARMPOOL_S3_PREFIX="warmpool/pool-%d/" % POOL))  # each pool's own
        subprocess.run([snapshot_binary, "restore", "--snapshot", failover.get("restored_snapshot") or "none",
                        "--target", independent], env=environment, check=False, stdout=subprocess.DEVNULL)
        # The volume's identity marker and epoch are not data: the new volume has its own.
        identity = (".warmpool-volume-id", ".warmpool")
        expected = file_digests(independent, skip=identity) if os.path.isdir(independent) else {}
        actual = file_digests(new_volume, skip=identity) if new_volume else {}
        mismatched = sorted(path for path, digest in expected.items() if actual.get(path) != digest)
        dataset_back = file_digests(os.path.join(new_volume, "dataset")) if new_volume else {}
        data_verified = bool(expected) and not mismatched and dataset_back == dataset

        recovery_time = promoted_at - lost_at if promoted_at else None
        boot = args.boot_delay_ms / 1000
        restore_s = steps["restored"] - steps["standby_running"] if "restored" in steps and "standby_running" in steps else None
        summary = {
            "restored": restored,
            "recovery_point_s": failover.get("recovery_point_seconds"),
            "recovery_time_s": round(recovery_time, 3) if recovery_time else None,
            "boot_delay_s": boot,
            "recovery_time_minus_boot_s": round(recovery_time - boot, 3) if recovery_time else None,
            "host_loss_bound_s": args.host_loss_after_s,
            "restore_s": round(restore_s, 3) if restore_s else None,
            "restore_mib_s": round(args.data_mib / restore_s, 1) if restore_s else None,
            "data_verified": data_verified,
            "standby_ready": standby_ready,
            "data_mib": args.data_mib,
            "snapshot_covering_data": covering,
            "restored_snapshot": failover.get("restored_snapshot"),
            "new_host": status.get("host_machine_id"),
            "timeline": [[step["step"], round(parse_time(step["at"]) - lost_at, 3)] for step in failover.get("timeline", [])],
        }
        breaches = []
        if not restored:
            breaches.append("not restored: %s" % json.dumps(failover)[:400])
        if not data_verified:
            breaches.append("data not verified: %d file(s) differ (%s), data set %s" % (
                len(mismatched), mismatched[:5], "intact" if dataset_back == dataset else "changed"))
        if not standby_ready:
            breaches.append("no standby on the new host: %s" % json.dumps(status)[:300])
        if recovery_time is None or recovery_time - boot > TARGET_S:
            breaches.append("recovery time minus boot %s s > %d s" % (summary["recovery_time_minus_boot_s"], TARGET_S))
        rows = [[key, summary[key]] for key in ("restored", "recovery_point_s", "recovery_time_s", "boot_delay_s",
                                                "recovery_time_minus_boot_s", "host_loss_bound_s", "restore_s", "restore_mib_s",
                                                "data_verified", "standby_ready", "new_host")]
        rows += [["  %s" % step, "+%.3f s" % at] for step, at in summary["timeline"]]
        return report("host-loss drill: %d MiB, machine %d lost for good" % (args.data_mib, HOST), rows, summary, args, breaches)
    except TimeoutError as error:
        return report("host-loss drill", [], {"restored": False}, args, [str(error)])
    finally:
        if pool:
            pool.stop()
        if moto:
            moto.stop()
        keep_or_remove(workdir, args.keep_logs, "drill")
