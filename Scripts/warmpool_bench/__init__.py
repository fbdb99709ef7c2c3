"""The benchmarks behind Scripts/bench, one module a command: detect, soak, ssh, capacity,
failover and snapshot (ours beside restic and the zstd floor); protocol (the same load over our
protocol, gRPC and HTTP) and agent (its footprint) are what `bench all` adds. Scripts/bench parses the flags and prints `all`'s summary."""
import warmpool_lab


def build(args):
    return warmpool_lab.build("release", "bench", args.no_build)
