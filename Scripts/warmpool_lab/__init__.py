"""What Scripts/demo, bench, drill and lab share: processes, HTTP, the event log, statistics,
the network-namespace lab, and a warm pool on this machine."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def build(configuration, command, no_build=False):
    """The binaries of `swift build -c CONFIGURATION`, built first unless `no_build`."""
    if not no_build:
        print("%s: building %s binaries ..." % (command, configuration), file=sys.stderr, flush=True)
        subprocess.run(["swift", "build", "-c", configuration], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    return os.path.join(ROOT, ".build", configuration)
