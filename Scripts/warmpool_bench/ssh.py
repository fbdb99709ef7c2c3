"""`bench ssh`: warmpool-sshcheck against a real sshd on loopback: verification and readiness lag."""
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from warmpool_lab.processes import free_port

from . import build, note_error, rounded_percentile


class SSHServer:
    """A real sshd on loopback with its own config, ed25519 host key and authorized_keys."""

    def __init__(self, workdir, port):
        self.workdir, self.port = workdir, port
        self.host_key = os.path.join(workdir, "host_ed25519")
        self.client_key = os.path.join(workdir, "client_ed25519")
        for key in (self.host_key, self.client_key):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "warmpool-bench", "-f", key], check=True)
        shutil.copy(self.client_key + ".pub", os.path.join(workdir, "authorized_keys"))
        self.fingerprint = subprocess.run(["ssh-keygen", "-l", "-E", "sha256", "-f", self.host_key + ".pub"],
                                          check=True, capture_output=True, text=True).stdout.split()[1]
        self.config = os.path.join(workdir, "sshd_config")
        with open(self.config, "w") as handle:
            handle.write("\n".join([
                "Port %d" % port, "ListenAddress 127.0.0.1", "HostKey %s" % self.host_key,
                "PidFile %s/sshd.pid" % workdir, "AuthorizedKeysFile %s/authorized_keys" % workdir,
                "PermitRootLogin prohibit-password", "PasswordAuthentication no", "KbdInteractiveAuthentication no",
                "UsePAM no", "StrictModes no", "UseDNS no", "PrintMotd no", "MaxStartups 1000",
                # bash sources ~/.bashrc for every command sshd runs; a developer's root .bashrc
                # (pyenv, conda) can cost hundreds of ms. Measure sshd and the verifier, not that.
                "SetEnv HOME=%s" % workdir, ""]))
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        self.log = open(os.path.join(workdir, "sshd.log"), "ab")
        self.process = None

    def start(self):
        self.process = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", self.config],
                                        stdout=self.log, stderr=self.log)

    def listening(self):
        # /proc/net/tcp: "sl local_address rem_address st ..."; LISTEN is state 0A.
        wanted = "0100007F:%04X" % self.port
        with open("/proc/net/tcp") as handle:
            for line in handle:
                fields = line.split()
                if len(fields) > 3 and fields[1] == wanted and fields[3] == "0A":
                    return True
        return False

    def wait_listening(self, timeout=10):
        """Returns CLOCK_MONOTONIC ns at which the socket was first seen in LISTEN."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.listening():
                return time.monotonic_ns()
            if self.process.poll() is not None:
                break
            time.sleep(0.0001)
        raise RuntimeError("sshd did not listen on %d; see %s" % (self.port, self.log.name))

    def stop(self):
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(10)
        self.process = None


def ssh(args):
    summary = {"trials": args.trials}
    if os.geteuid() != 0:
        # The harness cannot run here at all: exit 2, with the JSON saying why.
        summary["error"] = "needs root (sshd, tmpfs)"
        print("bench ssh: needs root (sshd, tmpfs)", file=sys.stderr)
        if args.json:
            print(json.dumps(summary))
        return 2
    binaries = build(args)
    check = os.path.join(binaries, "warmpool-sshcheck")
    workdir = tempfile.mkdtemp(prefix="warmpool-bench-ssh-")
    volume = os.path.join(workdir, "volume")
    server = None
    lines, lags, attempts = [], [], []
    try:
        os.mkdir(volume)
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", volume], check=True)
        with open(os.path.join(volume, ".warmpool-volume-id"), "w") as handle:
            handle.write("vol-bench\n")
        server = SSHServer(workdir, free_port())
        common = ["--host", "127.0.0.1", "--port", str(server.port), "--user", "root", "--identity", server.client_key,
                  "--instance-id", "4242", "--volume-path", volume, "--volume-id", "vol-bench", "--pin", server.fingerprint]

        # Verification latency: sshd up, one process, a few warm-up rounds first.
        warmup = 5
        server.start()
        server.wait_listening()
        run = subprocess.run([check, "verify", "--repeat", str(args.trials + warmup)] + common,
                             capture_output=True, text=True)
        lines = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")][warmup:]
        bad = [line for line in lines if not line["verified"]]
        if len(lines) != args.trials or bad:
            raise RuntimeError("verification failed: %s %s" % (bad[:1], run.stderr[-2000:]))
        server.stop()

        # Readiness lag: polling first, sshd started at a random moment.
        for trial in range(args.trials):
            waiter = subprocess.Popen([check, "wait", "--deadline-ms", "30000"] + common,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            first = json.loads(waiter.stdout.readline())
            if first.get("event") != "polling":
                raise RuntimeError("unexpected first line %r" % first)
            time.sleep(random.uniform(0.05, 0.5))
            server.start()
            listening_at = server.wait_listening()
            result = json.loads(waiter.stdout.readline())
            waiter.wait(10)
            server.stop()
            if not result["verified"]:
                raise RuntimeError("readiness failed: %s %s" % (result, waiter.stderr.read()[-2000:]))
            lags.append((result["returned_monotonic_ns"] - listening_at) / 1e6)
            attempts.append(result["attempts"])
            if not args.json:
                print("trial %d/%d: lag %.1f ms after %d attempts" % (trial + 1, args.trials, lags[-1], attempts[-1]),
                      file=sys.stderr)
    except Exception as error:  # the figures so far are printed with the reason
        note_error(summary, error)
    finally:
        if server:
            server.stop()
            server.log.close()
        subprocess.run(["umount", "-l", volume], check=False)
        shutil.rmtree(workdir, ignore_errors=True)

    for phase in ("connect", "handshake", "auth", "command", "total"):
        values = [line["%s_ms" % phase] for line in lines]
        key = "verify" if phase == "total" else phase
        summary["%s_p50_ms" % key] = rounded_percentile(values, 0.50, 2)
        summary["%s_p99_ms" % key] = rounded_percentile(values, 0.99, 2)
        summary["%s_max_ms" % key] = round(max(values), 2) if values else None
    summary["readiness_trials"] = len(lags)
    summary["readiness_lag_p50_ms"] = rounded_percentile(lags, 0.50, 2)
    summary["readiness_lag_p99_ms"] = rounded_percentile(lags, 0.99, 2)
    summary["readiness_lag_max_ms"] = round(max(lags), 2) if lags else None
    summary["readiness_attempts_p50"] = rounded_percentile(attempts, 0.50, 0)
    show = lambda value: "-" if value is None else "%.1f" % value

    print("ssh verification on loopback, %d trials (libssh2, pinned ed25519 host key, tmpfs volume)" % args.trials)
    print("%-22s %9s %9s %9s %9s" % ("phase", "p50 ms", "p99 ms", "max ms", "target"))
    for phase in ("connect", "handshake", "auth", "command", "verify"):
        print("%-22s %9s %9s %9s %9s" % (
            phase if phase != "verify" else "verify (total)", show(summary["%s_p50_ms" % phase]),
            show(summary["%s_p99_ms" % phase]), show(summary["%s_max_ms" % phase]), "p50 <= 100" if phase == "verify" else "-"))
    print("%-22s %9s %9s %9s %9s" % ("readiness lag", show(summary["readiness_lag_p50_ms"]),
                                     show(summary["readiness_lag_p99_ms"]), show(summary["readiness_lag_max_ms"]),
                                     "p99 <= 150"))
    print("(readiness lag: sshd's socket in LISTEN -> verdict returned; sshd started 50-500 ms into polling)")
    if "error" in summary:
        print("error: " + summary["error"])
    if args.json:
        print(json.dumps(summary))
    return 0
