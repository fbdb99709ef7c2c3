"""Child processes: spawned with a log of their own, waited for, measured, stopped."""
import os
import shutil
import signal
import socket
import subprocess
import sys
import time


class StartError(RuntimeError):
    pass


def spawn(command, log_path, env=None):
    """Starts `command` with stdout and stderr appended to `log_path`."""
    with open(log_path, "ab") as log:
        # Its own session: a Ctrl-C in the terminal reaches the script only, which stops its
        # children in order (the emulator takes its instances down with it).
        return subprocess.Popen(command, stdout=log, stderr=log, stdin=subprocess.DEVNULL, env=env,
                                start_new_session=True)


def stop(process, timeout=20):
    """SIGTERM, then SIGKILL if it has not exited within `timeout` seconds."""
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def wait_for_file(path, what, process=None, log=None, timeout=30):
    """The contents of a ready file (address files are written whole, by rename), once there."""
    deadline = time.monotonic() + timeout
    while True:
        if os.path.exists(path):
            with open(path) as handle:
                text = handle.read().strip()
            if text:
                return text
        if time.monotonic() > deadline or (process is not None and process.poll() is not None):
            raise StartError("%s did not start within %d s; see %s" % (what, timeout, log or os.path.dirname(path)))
        time.sleep(0.01)


def wait_until(what, predicate, timeout, interval=0.05):
    """`predicate()`'s first true value, polled; TimeoutError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError("timed out after %.0f s waiting for %s" % (timeout, what))


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def cpu_seconds(pid):
    """User + system CPU time of a process, all its threads, from /proc/PID/stat."""
    with open("/proc/%d/stat" % pid) as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def status_field(pid, key):
    """A numeric field of /proc/PID/status (kB for the Vm* fields)."""
    with open("/proc/%d/status" % pid) as handle:
        for line in handle:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def tail(path, lines=15):
    with open(path, errors="replace") as handle:
        return "".join(handle.readlines()[-lines:])


def keep_or_remove(workdir, keep, command):
    """A work directory (logs, events, state) goes when the run ends, unless asked to keep it."""
    if keep:
        print("%s: logs kept in %s" % (command, workdir), file=sys.stderr)
    else:
        shutil.rmtree(workdir, ignore_errors=True)
