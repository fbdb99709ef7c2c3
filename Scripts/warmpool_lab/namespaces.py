"""The failover lab: a control plane's network namespace (wplab-ctl, bridge 10.214.0.1/16) and one
namespace per GPU slot of each test host (wplab-77-1: 10.214.1.77), joined by veth; the layout
and why one namespace per slot are in `Scripts/lab --help`. Loss and partitions are nftables rules
in the *input* chain of the receiving namespace (DESIGN.md: a drop in the sender's output chain is
a local failure that TCP resends at once).

`with Lab([(77, 4)]) as lab:` builds it and tears it down on exit, on failure, on SIGTERM and on
Ctrl-C (`Scripts/lab down` cleans up after a SIGKILL). Needs root.
"""
import atexit
import os
import signal
import subprocess
import sys

PREFIX = "wplab-"
CONTROL = "wplab-ctl"
BRIDGE = "wplab-br"
CONTROL_IP = "10.214.0.1"
ROOT_IP = "10.214.0.254"
NETNS_PATTERN = "wplab-{machine}-{slot}"
ADDRESS_PATTERN = "10.214.{slot}.{machine}"


def sh(*command, check=True, input=None):
    result = subprocess.run(command, input=input, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if check and result.returncode != 0:
        raise RuntimeError("%s: exit %d: %s" % (" ".join(command), result.returncode, result.stderr.strip()))
    return result


def namespaces():
    listed = sh("ip", "netns", "list", check=False).stdout.split("\n")
    return [line.split()[0] for line in listed if line.startswith(PREFIX)]


def down():
    """Kills what runs in the lab's namespaces (it was started there for the lab), deletes them."""
    for namespace in namespaces():
        for pid in sh("ip", "netns", "pids", namespace, check=False).stdout.split():
            try:
                os.kill(int(pid), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
    for namespace in namespaces():
        sh("ip", "netns", "del", namespace, check=False)
    sh("ip", "link", "del", "wplab-root", check=False)


def in_namespace(namespace, command):
    return ["ip", "netns", "exec", namespace] + list(command)


class Lab:
    """Builds the lab for `hosts`, a list of (machine id, GPU count)."""

    def __init__(self, hosts):
        self.hosts = hosts
        self.rules = {}

    def __enter__(self):
        atexit.register(down)
        for signum in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, lambda received, _: sys.exit(128 + received))
        try:
            self.up()
        except BaseException:
            down()
            raise
        return self

    def __exit__(self, *_):
        down()

    def up(self):
        down()
        sh("ip", "netns", "add", CONTROL)
        run = lambda *command: sh("ip", "-n", CONTROL, *command)
        run("link", "set", "lo", "up")
        run("link", "add", BRIDGE, "type", "bridge")
        run("addr", "add", CONTROL_IP + "/16", "dev", BRIDGE)
        run("link", "set", BRIDGE, "up")
        sh("ip", "link", "add", "wplab-root", "type", "veth", "peer", "name", "wplab-up", "netns", CONTROL)
        sh("ip", "addr", "add", ROOT_IP + "/16", "dev", "wplab-root")
        sh("ip", "link", "set", "wplab-root", "up")
        run("link", "set", "wplab-up", "master", BRIDGE, "up")
        for machine, gpus in self.hosts:
            for slot in range(1, gpus + 1):
                namespace = self.namespace(machine, slot)
                port = "wl%ds%d" % (machine, slot)
                sh("ip", "netns", "add", namespace)
                sh("ip", "-n", CONTROL, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", namespace)
                run("link", "set", port, "master", BRIDGE, "up")
                sh("ip", "-n", namespace, "addr", "add", self.address(machine, slot) + "/16", "dev", "eth0")
                sh("ip", "-n", namespace, "link", "set", "eth0", "up")
                sh("ip", "-n", namespace, "link", "set", "lo", "up")

    @staticmethod
    def namespace(machine, slot):
        return NETNS_PATTERN.format(machine=machine, slot=slot)

    @staticmethod
    def address(machine, slot):
        return ADDRESS_PATTERN.format(machine=machine, slot=slot)

    def sim_flags(self):
        return ["--instance-netns", NETNS_PATTERN, "--instance-address", ADDRESS_PATTERN]

    def slot_of(self, address):
        """(machine, slot) of an instance address."""
        _, _, slot, machine = address.split(".")
        return int(machine), int(slot)

    # Faults: one nftables table per namespace, replaced whole.

    def _apply(self, namespace, rules):
        sh("ip", "netns", "exec", namespace, "nft", "delete", "table", "inet", "wplab", check=False)
        if rules:
            table = ("table inet wplab {\n  chain input {\n    type filter hook input priority 0; policy accept;\n"
                     + "".join("    %s\n" % rule for rule in rules) + "  }\n}\n")
            sh("ip", "netns", "exec", namespace, "nft", "-f", "-", input=table)
        self.rules[namespace] = rules

    def partition(self, address):
        """Cuts the instance at `address` off from the control plane, both ways."""
        machine, slot = self.slot_of(address)
        self._apply(self.namespace(machine, slot), ['iifname "eth0" drop'])
        self._apply(CONTROL, self.rules.get(CONTROL, []) + ["ip saddr %s drop" % address])

    def lose(self, address, percent):
        """Drops `percent` % of the packets at random between the control plane and the
        namespace at `address`, in each direction (0 heals it)."""
        machine, slot = self.slot_of(address)
        drop = "numgen random mod 100 < %d drop" % percent
        self._apply(self.namespace(machine, slot), ['iifname "eth0" ' + drop] if percent else [])
        self._apply(CONTROL, ["ip saddr %s %s" % (address, drop)] if percent else [])

    def heal(self):
        for namespace in list(self.rules):
            self._apply(namespace, [])
