"""The warm pool in the lab (Scripts/lab) that the failover drills run: warmpool-sim and the
controller in the control plane's namespace, every instance (sshd + the real agent + a workload) in
its GPU slot's namespace; and the check of a failover's timeline."""
import tempfile

from warmpool_lab.namespaces import Lab
from warmpool_lab.pool import HOST, WarmPool
from warmpool_lab.processes import keep_or_remove

from . import binaries_for, report


FAILOVER_STEPS = ["detected", "fencing", "fenced", "epoch_increased", "standby_starting", "standby_running",
                  "ssh_ready", "volume_verified", "promoted", "standby_provisioning", "standby_ready"]

# The workload next to the agent: appends "w INSTANCE NS" to the shared volume every 20 ms. The
# agent's fence command (run when its lease runs out) kills it and logs "fenced INSTANCE EPOCH NS".
WORKLOAD = ('(while :; do echo "w $CONTAINER_ID $(date +%s%N)" >>"$WARMPOOL_VOLUME_PATH/drill.log"; '
            'sleep 0.02; done) & echo $! >"$HOME/workload.pid"; ')
FENCE = ('kill -KILL "$(cat "$HOME/workload.pid")"; sleep 0.1; '
         'echo "fenced $CONTAINER_ID $WARMPOOL_FENCED_EPOCH $(date +%s%N)" >>"$WARMPOOL_VOLUME_PATH/drill.log"')


def lab_pool(binaries, workdir, lab, boot_delay_ms=300, sim_extra=(), controller_extra=(), workload=False):
    """The failover drills' warm pool: in the lab, a restart grace of 3 s; with `workload`, the
    workload beside each agent and its fence command."""
    return WarmPool(binaries, workdir, boot_delay_ms, lab=lab, log_level="info", sim_log_level="notice",
                    sim_extra=sim_extra, controller_extra=["--restart-grace-ms", "3000"] + list(controller_extra),
                    onstart=WORKLOAD if workload else "",
                    agent_env=["WARMPOOL_FENCE_COMMAND=" + FENCE] if workload else [])


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
