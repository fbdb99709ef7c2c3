"""The controller's JSON-lines event log (--events), and the one ISO 8601 parser."""
import json
import sys
import time
from datetime import datetime


def iso_seconds(text):
    """Seconds since the epoch of an ISO 8601 time from the API or the event log."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def first_steps(failover):
    """{step: seconds since the epoch} of a failover record, each step's first time."""
    at = {}
    for step in failover["timeline"]:
        at.setdefault(step["step"], iso_seconds(step["at"]))
    return at


class Events:
    """Tails the controller's JSON-lines event file."""

    def __init__(self, path):
        self.path = path
        self.offset = 0
        self.seen = []

    def poll(self):
        try:
            with open(self.path, "rb") as handle:
                handle.seek(self.offset)
                data = handle.read()
        except FileNotFoundError:
            return
        # A line still being written waits for the next poll.
        complete = data.rfind(b"\n") + 1
        self.offset += complete
        for line in data[:complete].splitlines():
            self.seen.append(json.loads(line))

    def wait(self, predicate, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.poll()
            for event in self.seen:
                if predicate(event):
                    return event
            time.sleep(0.001)
        raise TimeoutError("no matching event within %.1f s" % timeout)

    def wait_connected(self, count, timeout, prefix="load-", required=True):
        """Waits for `count` agents' first `connected` event; returns how many connected. Raises on a
        timeout when `required`; a capacity step instead records the shortfall, which fails the step."""
        deadline = time.monotonic() + timeout
        connected = set()
        while len(connected) < count:
            if time.monotonic() > deadline:
                if required:
                    raise RuntimeError("only %d of %d agents connected" % (len(connected), count))
                print("only %d of %d agents connected; measuring anyway" % (len(connected), count), file=sys.stderr)
                break
            self.poll()
            connected = {e["agent_id"] for e in self.seen if e["event"] == "connected" and e["agent_id"].startswith(prefix)}
            time.sleep(0.2)
        return len(connected)
