"""A warm pool on this machine: warmpool-controller (the one place its flags are spelled),
warmpool-sim behind it, real agents, and a pool provisioned through the REST API."""
import os
import random
import secrets
import signal
import subprocess
import time

from . import http
from .events import Events
from .namespaces import CONTROL, CONTROL_IP, in_namespace
from .processes import cpu_seconds, free_port, spawn, status_field, stop, wait_for_file, wait_until

POOL, HOST = 12, 77
HOST_SPEC = "%d:4:RTX_4090:0.45" % HOST
# Fixed addresses in the lab's control plane (README, Reliability).
LAB_AGENT_LISTEN, LAB_API_LISTEN, LAB_SIM_LISTEN = CONTROL_IP + ":7070", CONTROL_IP + ":8080", CONTROL_IP + ":8090"


class Controller:
    """warmpool-controller with its store, event log, log and address files in `workdir`.
    `prefix` runs it elsewhere: `taskset`, `ip netns exec NS`."""

    def __init__(self, binaries, workdir, keys=None, listen="127.0.0.1:0", api_listen="127.0.0.1:0",
                 log_level="warning", extra=(), prefix=()):
        self.workdir, self.keys = workdir, keys
        self.db = os.path.join(workdir, "warmpool.db")
        self.events_path = os.path.join(workdir, "events.jsonl")
        self.log_path = os.path.join(workdir, "warmpool-controller.log")
        self.ready_path = os.path.join(workdir, "agents.addr")
        self.api_ready_path = os.path.join(workdir, "api.addr")
        self.command = list(prefix) + [
            os.path.join(binaries, "warmpool-controller"), "--listen", listen, "--api-listen", api_listen,
            "--db", self.db, "--events", self.events_path, "--ready-file", self.ready_path,
            "--api-ready-file", self.api_ready_path,
        ] + (["--keys-file", keys] if keys else []) + (["--log-level", log_level] if log_level else []) + list(extra)
        self.events = Events(self.events_path)
        self.process = None
        self.start()

    def start(self):
        # A restart must not be taken as ready on the last run's address files.
        for path in (self.ready_path, self.api_ready_path):
            if os.path.exists(path):
                os.remove(path)
        self.process = spawn(self.command, self.log_path)
        try:
            self.address = wait_for_file(self.ready_path, "warmpool-controller", self.process, self.log_path)
            self.api_url = "http://" + wait_for_file(self.api_ready_path, "warmpool-controller", self.process,
                                                     self.log_path)
        except BaseException:
            stop(self.process)
            raise
        # Minted next to the store on the first start.
        key_path = os.path.join(self.workdir, "admin-api-key")
        self.api_key = open(key_path).read().strip() if os.path.exists(key_path) else None

    def kill(self):
        """SIGKILL, as a crash or an OOM kill would (`ip netns exec` and taskset exec: the pid is the controller's)."""
        self.process.kill()
        self.process.wait()

    def cpu_seconds(self):
        return cpu_seconds(self.process.pid)

    def rss_mib(self):
        return status_field(self.process.pid, "VmRSS") / 1024

    def stop(self, timeout=20):
        stop(self.process, timeout)


def loadgen_keys(binaries, count, keys, prefix="load-"):
    """Keys for `warmpool-loadgen`'s simulated agents (PREFIX0 ...), appended to the keys file."""
    subprocess.run([os.path.join(binaries, "warmpool-loadgen"), "keys", "--count", str(count), "--prefix", prefix,
                    "--keys-file", keys], check=True)


def start_agent(binary, controller, agent_id, secret, volume, log_level="error", prefix=()):
    """A real warmpool-agent heartbeating to `controller` (HOST:PORT) under `agent_id`."""
    return subprocess.Popen(
        list(prefix) + [binary, "--controller", controller, "--agent-id", agent_id, "--nvml-library", "none",
                        "--volume-path", volume, "--log-level", log_level],
        env=dict(os.environ, WARMPOOL_AGENT_SECRET=secret), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def add_key(keys, agent_id):
    """Appends a fresh key for `agent_id`; the controller re-reads its keys file every second."""
    secret = secrets.token_hex(32)
    with open(keys, "a") as handle:
        handle.write("%s %s\n" % (agent_id, secret))
    return secret


def real_agent_starter(binaries, controller, workdir, prefix=()):
    """Starts a real warmpool-agent under a fresh key; `prefix` runs it elsewhere, e.g. `ip netns exec NS`."""
    def start(agent_id):
        secret = add_key(controller.keys, agent_id)
        time.sleep(1.2)
        return start_agent(os.path.join(binaries, "warmpool-agent"), controller.address, agent_id, secret, workdir,
                           prefix=prefix)
    return start


def freeze_trials(events, trials, label, start_agent, errors=None):
    """Freezes (SIGSTOP) a real agent `trials` times, one fresh agent per trial, started by
    `start_agent(agent_id)`, and returns the times from the signal to its `failed` event, in ms.

    Without `errors` a trial that times out (the agent never connected, or was never failed)
    raises, as a drill wants. A bench passes a list instead: each such trial adds its reason there
    and the next trial runs, so that a saturated controller (at 10,000 agents a fresh agent once
    took longer than 30 s to connect) costs that trial, not the figures of the whole run."""
    results = []
    for trial in range(trials):
        agent_id = "real-%s-%d" % (label, trial)
        agent = None
        try:
            agent = start_agent(agent_id)
            try:
                events.wait(lambda e: e["agent_id"] == agent_id and e["event"] == "connected", 30)
            except TimeoutError:
                raise TimeoutError("trial %d: agent %s not connected within 30 s" % (trial, agent_id)) from None
            time.sleep(2 + random.random())
            start = time.monotonic_ns()
            agent.send_signal(signal.SIGSTOP)
            try:
                failed = events.wait(lambda e: e["agent_id"] == agent_id and e["event"] == "failed", 10)
            except TimeoutError:
                raise TimeoutError("trial %d: frozen agent %s not failed within 10 s" % (trial, agent_id)) from None
            results.append((failed["monotonic_ns"] - start) / 1e6)
        except TimeoutError as error:
            if errors is None:
                raise
            errors.append(str(error))
        finally:
            if agent is not None:
                agent.send_signal(signal.SIGCONT)
                agent.kill()
                agent.wait()
    return results


class WarmPool:
    """warmpool-sim (host 77: 4 GPUs whose instances are real, sshd + the agent, the volume at /data)
    and warmpool-controller driving it, on loopback or, given a lab, in its control plane's namespace;
    pool 12 is provisioned on host 77 by `provision()`."""

    def __init__(self, binaries, workdir, boot_delay_ms, lab=None, poll_ms=100, log_level=None, sim_log_level=None,
                 sim_extra=(), controller_extra=(), onstart="", agent_env=(), hosts=(HOST_SPEC,), api_port=None,
                 vm_reach=None):
        self.workdir = workdir
        self.sim_key = secrets.token_hex(16)
        self.ssh_key = os.path.join(workdir, "ssh_key")
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", self.ssh_key], check=True)
        key_file = os.path.join(workdir, "sim-key")
        with open(key_file, "w") as handle:
            handle.write(self.sim_key + "\n")
        prefix = in_namespace(CONTROL, []) if lab else []
        sim_log = os.path.join(workdir, "warmpool-sim.log")
        self.sim = spawn(prefix + [
            os.path.join(binaries, "warmpool-sim"), "--api-key", self.sim_key, "--authorized-keys", self.ssh_key + ".pub",
            *[flag for spec in hosts for flag in ("--host", spec)], "--boot-delay-ms", str(boot_delay_ms), "--state-dir", os.path.join(workdir, "sim"),
            "--ready-file", os.path.join(workdir, "sim.addr"),
        ] + (["--listen", LAB_SIM_LISTEN] + lab.sim_flags() if lab else [])
            + (["--log-level", sim_log_level] if sim_log_level else []) + list(sim_extra), sim_log)
        self.controller = None
        try:
            self.sim_url = "http://" + wait_for_file(os.path.join(workdir, "sim.addr"), "warmpool-sim", self.sim, sim_log)
            self.agent_listen = LAB_AGENT_LISTEN if lab else "127.0.0.1:%d" % free_port()
            listen, reach = self.agent_listen, []
            if vm_reach:
                # Emulated VMs are namespaces whose default route is this machine: they reach the
                # controller at `vm_reach`, one of its own addresses; the marketplace's on loopback.
                port = self.agent_listen.rsplit(":", 1)[1]
                listen = "0.0.0.0:" + port
                reach = ["--agent-controllers", self.agent_listen, "--cpu-agent-controllers", "%s:%s" % (vm_reach, port)]
            self.controller = Controller(
                binaries, workdir, listen=listen,
                api_listen=LAB_API_LISTEN if lab else "127.0.0.1:%d" % (api_port or 0),
                log_level=log_level, prefix=prefix,
                extra=["--provider-url", self.sim_url, "--provider-api-key-file", key_file, "--ssh-key", self.ssh_key,
                       "--provider-poll-ms", str(poll_ms), "--agent-onstart",
                       onstart + "exec %s --nvml-library none" % os.path.join(binaries, "warmpool-agent")] + reach
                + [flag for variable in agent_env for flag in ("--agent-env", variable)]
                # "SIM/..." names one of the emulator's URLs, known only now.
                + [self.sim_url + flag[3:] if flag.startswith("SIM/") else flag for flag in controller_extra])
        except BaseException:
            self.stop()
            raise

    @property
    def api_url(self):
        return self.controller.api_url

    @property
    def api_key(self):
        return self.controller.api_key

    def stop(self):
        """The controller, then the emulator: SIGTERM stops its instances and unmounts their volumes."""
        for process in (self.controller and self.controller.process, self.sim):
            stop(process, 20)
        # Anything an instance left behind names the work directory in its command line.
        subprocess.run(["pkill", "-KILL", "-f", self.workdir], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def pids(self):
        return [p.pid for p in (self.sim, self.controller.process) if p is not None]

    def api(self, method, path, body=None, key=True, timeout=30):
        """(status, answer) of the REST API under /api/v1/warmpool."""
        return http.call(method, self.api_url + "/api/v1/warmpool" + path, self.api_key if key else None, body, timeout)

    def get(self, path):
        """The answer of GET /api/v1/warmpool`path`; raises unless 2xx."""
        return http.request("GET", self.api_url + "/api/v1/warmpool" + path, self.api_key)

    def sim_call(self, method, path, body=None):
        return http.call(method, self.sim_url + path, self.sim_key, body)

    def provision(self, pool=POOL, host=HOST):
        """POST /provision of `pool` on `host`; the answer, once the pool is active."""
        answer = http.request("POST", self.api_url + "/api/v1/warmpool/provision", self.api_key,
                              {"machine_id": pool, "host_machine_id": host}, timeout=300)
        if answer["status"]["state"] != "active":
            raise RuntimeError("provisioning ended in state %s: %s" % (answer["status"]["state"], answer))
        return answer

    def status(self, pool=POOL):
        return self.api("GET", "/status/%d" % pool)[1]

    def history(self, limit=None, pool=POOL):
        return self.api("GET", "/history/%d%s" % (pool, "?limit=%d" % limit if limit else ""))[1].get("failovers", [])

    def agent_alive(self, instance, lease=False):
        agents = self.api("GET", "/agents")[1].get("agents", [])
        return any(a.get("instance_id") == instance and a.get("state") == "alive"
                   and (not lease or (a.get("lease") or {}).get("held")) for a in agents)

    def failover_of(self, old, pool=POOL):
        """The failover that replaced primary `old`, or None."""
        return next((f for f in self.history(pool=pool) if f.get("old_primary_gpu_id") == old), None)

    def steps(self, old):
        return [step["step"] for step in (self.failover_of(old) or {}).get("timeline", [])]

    def wait_failover(self, old, timeout=120, pool=POOL):
        """The failover of primary `old`, once finished and the pool is active again (new standby ready)."""
        def done():
            failover = self.failover_of(old, pool)
            return (failover and failover.get("result") != "in_progress"
                    and self.status(pool).get("state") in ("active", "degraded")) and self.failover_of(old, pool)
        return wait_until("the failover of instance %d to finish" % old, done, timeout, interval=0.1)

    def unprovoked(self, provoked):
        """Failovers of primaries the caller did not fail: false failures."""
        return [f["id"] for f in self.history() if f.get("old_primary_gpu_id") not in provoked]

    def instance(self, instance_id):
        return self.sim_call("GET", "/admin/instances/%d" % instance_id)[1]

    def fault(self, instance_id, fault):
        """POST /admin/instances/ID/crash or /freeze: an admin call, which the fault plan never touches."""
        status, answer = self.sim_call("POST", "/admin/instances/%d/%s" % (instance_id, fault), {})
        if status != 200:
            raise http.HTTPError("POST", "/admin/instances/%d/%s" % (instance_id, fault), status, str(answer))
        return answer
