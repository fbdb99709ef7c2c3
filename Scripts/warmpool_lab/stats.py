"""Percentiles and the label/value tables the commands print."""


def percentile(values, fraction):
    """Nearest-rank percentile: the smallest value with at least `fraction` of the samples at or below it."""
    ordered = sorted(values)
    rank = max(1, int(-(-fraction * len(ordered) // 1)))
    return ordered[min(rank, len(ordered)) - 1]


def print_rows(rows, width):
    for label, value in rows:
        print("%-*s %s" % (width, label, value))
