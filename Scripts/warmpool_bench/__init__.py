"""The benchmarks behind Scripts/bench, one module a command: detect, soak, ssh, capacity,
failover and snapshot (ours beside restic and the zstd floor); protocol (the same load over our
protocol, gRPC and HTTP) and agent (its footprint) are what `bench all` adds. Scripts/bench parses the flags and prints `all`'s summary.

Every bench prints its JSON whatever happens: a step that cannot be measured says why in an
`error` key beside the figures that exist, and the bench still exits 0. Targets are judged by
whoever reads the JSON; a non-zero exit means the harness itself broke (bad arguments, no build)."""
import sys
import traceback

import warmpool_lab
from warmpool_lab.stats import percentile


def build(args):
    return warmpool_lab.build("release", "bench", args.no_build)


def note_error(summary, error, where=None):
    """Records why a step could not be measured in `summary["error"]` (several are joined with
    "; "), with the traceback on stderr for whoever runs it by hand."""
    text = "%s%s: %s" % ("%s: " % where if where else "", type(error).__name__, error)
    summary["error"] = summary["error"] + "; " + text if summary.get("error") else text
    traceback.print_exc(file=sys.stderr)


def rounded_percentile(values, fraction, digits=1):
    """The nearest-rank percentile, rounded; None when there are no samples (a step whose trials
    all failed reports null, not a crash)."""
    return round(percentile(values, fraction), digits) if values else None
