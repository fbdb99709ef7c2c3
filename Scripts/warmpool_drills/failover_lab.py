"""The warm pool in the lab (Scripts/lab) that the failover drills run: warmpool-sim and the
controller in the control plane's namespace, every instance (sshd + the real agent + a workload) in
its GPU slot's namespace; and the check of a failover's timeline."""
import os
import tempfile

from warmpool_lab.namespaces import Lab
from warmpool_lab.pool import HOST, HOST_SPEC, WarmPool
from warmpool_lab.processes import keep_or_remove

from . import binaries_for, report


FAILOVER_STEPS = ["detected", "fencing", "fenced", "epoch_increased", "standby_starting", "standby_running",
                  "ssh_ready", "volume_verified", "promoted", "standby_provisioning", "standby_ready"]

# The supervised workload. It follows the checkpoint pattern of the README: a record is committed
# (appended) only while the volume's epoch is not newer than the one the agent started it at, so a
# writer that wakes from a pause cannot commit under an old epoch. Records: "w INSTANCE EPOCH PID NS".
SUPERVISED = ('while :; do e=$(cat "$WARMPOOL_EPOCH_FILE" 2>/dev/null || echo 0); '
              'if [ "${e:-0}" -le "$WARMPOOL_EPOCH" ]; then '
              'echo "w ${WARMPOOL_INSTANCE_ID:-$CONTAINER_ID} $WARMPOOL_EPOCH $$ $(date +%s%N)" >>"$WARMPOOL_VOLUME_PATH/drill.log"; fi; '
              'sleep "$DRILL_WRITE_S"; done')


def read_records(volume):
    """The committed writes on a volume: [(instance, epoch, pid, seconds)] in write order (O_APPEND)."""
    records = []
    try:
        with open(os.path.join(volume, "drill.log")) as handle:
            for line in handle:
                fields = line.split()
                if len(fields) == 5 and fields[0] == "w":
                    records.append((int(fields[1]), int(fields[2]), int(fields[3]), int(fields[4]) / 1e9))
    except FileNotFoundError:
        pass
    return records


def lab_pool(binaries, workdir, lab, boot_delay_ms=300, sim_extra=(), controller_extra=(), supervised=False,
             write_s=0.02, fence_command=None, hosts=(HOST_SPEC,)):
    """The failover drills' warm pool: in the lab, a restart grace of 3 s; with `supervised`, the
    workload the agent supervises (fencing.SUPERVISED) and, if given, a fence command."""
    agent_env = []
    if supervised:
        agent_env = ["WARMPOOL_WORKLOAD=" + SUPERVISED, "DRILL_WRITE_S=%g" % write_s]
        agent_env += ["WARMPOOL_FENCE_COMMAND=" + fence_command] if fence_command else []
    return WarmPool(binaries, workdir, boot_delay_ms, lab=lab, log_level="info", sim_log_level="notice",
                    sim_extra=sim_extra, controller_extra=["--restart-grace-ms", "3000"] + list(controller_extra),
                    agent_env=agent_env, hosts=hosts)


def check_timeline(failover):
    """What is wrong with a finished failover's timeline: steps missing or out of order."""
    steps = [step["step"] for step in failover.get("timeline", [])]
    missing = [step for step in FAILOVER_STEPS if step not in steps]
    if missing:
        return missing
    firsts = [steps.index(step) for step in FAILOVER_STEPS]
    if steps[0] != "detected" or firsts != sorted(firsts):
        return ["order: %s" % steps]
    return []


def failover_lab(args, run):
    """Builds the lab, runs `run(binaries, workdir, lab)`, tears everything down whatever happens."""
    binaries = binaries_for(args)
    workdir = tempfile.mkdtemp(prefix="warmpool-drill-")
    try:
        with Lab([(HOST, 4)]) as lab:
            return run(binaries, workdir, lab)
    except TimeoutError as error:
        # A failover that never finishes is a breach like any other, not a crash of the drill.
        return report("%s drill" % args.command, [], {}, args, [str(error)])
    finally:
        keep_or_remove(workdir, args.keep_logs, "drill")
