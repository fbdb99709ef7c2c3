"""The drills behind Scripts/drill, one module a command: loss, partition, controller_crash,
provider_faults, fuzz, flood and api_fuzz; failover_lab is the warm pool in the lab the failover drills
share. Here: what every drill shares, its binaries and its report."""
import json

import warmpool_lab
from warmpool_lab.stats import print_rows


def binaries_for(args):
    return warmpool_lab.build("debug" if args.debug else "release", "drill", args.no_build)


def report(title, rows, summary, args, breaches):
    print(title)
    print_rows(rows, 46)
    summary["breaches"] = breaches
    for breach in breaches:
        print("BREACH: %s" % breach)
    if args.json:
        print(json.dumps(summary))
    return 1 if breaches else 0
