"""`bench snapshot`: warmpool-snapshot against restic and zstd's floor, on one generated data set and
one local S3 server (moto on loopback, no signature checks: throughput, not auth, is measured).

The data set, scaled to --size-mib: a checkpoint-like file (a quarter of the set, 512 MiB at 2 GiB:
float32-like words whose exponent bytes repeat, so it compresses a little, as real weights do),
text-like files (words and numbers, compressing about 4x) and random files (already compressed
media), half and half, plus a few hundred small files. Nothing repeats across files, so
deduplication does not flatter either tool against the zstd floor.

Measured, in one run: the first snapshot's throughput (ours, restic with --compression auto into a
v2 repository, and `zstd -3 -T1 -c FILES > /dev/null`, the one-core compression floor); after
changing 1 % of the data (appends and in-place edits, both kinds in the checkpoint and in other
files), the bytes the bucket grew by and the time, for each tool; the restore throughput of each;
and the peak RSS of our snapshot process (wait4's ru_maxrss). Bytes uploaded are counted the same
way for both: the bucket's size after minus before (ListObjectsV2). Ours also reports its own
`uploaded_bytes`, which must equal that; restic's `data_added` is printed for reference only (in
0.14 it counts blobs before compression).
"""
import collections
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
import xml.etree.ElementTree as ElementTree

from warmpool_lab import ROOT
from warmpool_lab.processes import cpu_seconds, free_port, spawn, tail, wait_until

from . import note_error

MIB = 1 << 20
MOTO = "/opt/warmpool-venv/bin/moto_server"
ACCESS_KEY, SECRET_KEY = "bench", "bench-secret"
WORDS = ("the loss step epoch gradient layer weight bias batch token model train eval checkpoint shard "
         "learning rate warmup decay attention head norm embed vocab sample accuracy perplexity "
         "optimizer adam momentum scale clip value mean var tensor float dtype device cuda stream "
         "info debug warn error worker rank node host time duration seconds bytes total").split()


def build_snapshot(args):
    """The directory of warmpool-snapshot, built as it is installed beside the agent: release,
    --static-swift-stdlib (a dynamically linked Foundation alone costs ~8 MiB of RSS), in a build
    folder of its own (the static stdlib changes the flags; sharing .build would rebuild back and
    forth)."""
    if args.binaries:
        return args.binaries
    if not args.no_build:
        print("bench: building warmpool-snapshot (release, static stdlib) ...", file=sys.stderr, flush=True)
        subprocess.run(["swift", "build", "-c", "release", "--product", "warmpool-snapshot", "--static-swift-stdlib",
                        "--scratch-path", ".build-snapshot"], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    return os.path.join(ROOT, ".build-snapshot", "release")


# MARK: The data set


def text_bytes(rng, size):
    """Log- and CSV-like lines: words from a small vocabulary and numbers, ~4x compressible."""
    parts, total = [], 0
    while total < size:
        words = rng.choices(WORDS, k=4096)
        numbers = [str(rng.randrange(1 << 20)) for _ in range(512)]
        for index in range(0, 4096, 8):
            line = " ".join(words[index:index + 8]) + " " + numbers[index // 8] + "\n"
            parts.append(line)
            total += len(line)
    return "".join(parts).encode()[:size]


def random_bytes(rng, size):
    return rng.randbytes(size)


def checkpoint_bytes(rng, size):
    """float32-like little-endian words: random mantissas, the top byte from four values."""
    data = bytearray(rng.randbytes(size))
    table = bytes([0x3C, 0x3D, 0xBC, 0xBD] * 64)
    data[3::4] = bytes(data[3::4]).translate(table)
    return bytes(data)


def write_file(path, generator, rng, size, block=8 * MIB):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as handle:
        left = size
        while left > 0:
            piece = min(block, left)
            handle.write(generator(rng, piece))
            left -= piece


def generate(root, size_mib, seed):
    """The files of the data set, {relative path: size}; about size_mib MiB in all."""
    rng = random.Random(seed)
    total = size_mib * MIB
    files = {}
    checkpoint = total // 4
    files["checkpoints/step-001200.pt"] = (checkpoint_bytes, checkpoint)
    small_total = min(total // 64, 16 * MIB)
    rest = total - checkpoint - small_total
    for kind, generator, budget, directory in (("text", text_bytes, rest // 2, "logs"),
                                               ("random", random_bytes, rest - rest // 2, "media")):
        index = 0
        while budget > 0:
            size = min(budget, rng.randrange(256 << 10, 32 * MIB))
            files["%s/%s-%04d.%s" % (directory, kind, index, "log" if kind == "text" else "bin")] = (generator, size)
            budget -= size
            index += 1
    index = 0
    while small_total > 0:
        size = min(small_total, rng.randrange(1 << 10, 96 << 10))
        generator = text_bytes if index % 2 == 0 else random_bytes
        files["small/%02d/file-%05d" % (index % 16, index)] = (generator, size)
        small_total -= size
        index += 1
    for relative, (generator, size) in sorted(files.items()):
        write_file(os.path.join(root, relative), generator, rng, size)
    return {relative: size for relative, (_, size) in files.items()}


def change_one_percent(root, files, seed):
    """Changes about 1 % of the data set: half appended to a few files, half as 64 KiB in-place
    edits scattered over the checkpoint and other large files. Returns the bytes changed."""
    rng = random.Random(seed)
    budget = sum(files.values()) // 100
    large = sorted(name for name, size in files.items() if size >= 4 * MIB)
    appended, edited = budget // 2, budget - budget // 2
    for name in rng.sample(large, min(4, len(large))):
        piece = appended // 4
        generator = text_bytes if name.endswith(".log") else random_bytes
        with open(os.path.join(root, name), "ab") as handle:
            handle.write(generator(rng, piece))
        files[name] += piece
    edit = 64 << 10
    targets = ["checkpoints/step-001200.pt"] * 4 + large
    for _ in range(edited // edit):
        name = rng.choice(targets)
        with open(os.path.join(root, name), "r+b") as handle:
            handle.seek(rng.randrange(0, files[name] - edit))
            handle.write(random_bytes(rng, edit))
    return appended + (edited // edit) * edit


def tree_digest(root):
    """SHA-256 over every file's relative path and contents, in path order."""
    digest = hashlib.sha256()
    for directory, names, filenames in os.walk(root):
        names.sort()
        for name in sorted(filenames):
            path = os.path.join(directory, name)
            digest.update(os.path.relpath(path, root).encode() + b"\0")
            with open(path, "rb") as handle:
                while True:
                    block = handle.read(8 * MIB)
                    if not block:
                        break
                    digest.update(block)
    return digest.hexdigest()


# MARK: The S3 server


class Moto:
    """moto's standalone S3 server on loopback, without auth (any credentials are accepted).
    `reachable_at`: an address of this machine other network namespaces reach (an emulated VM's):
    the server then listens on every address and its URL names that one."""

    def __init__(self, workdir, reachable_at=None):
        if not os.access(MOTO, os.X_OK):
            raise RuntimeError("%s is missing: run Scripts/setup" % MOTO)
        self.port = free_port()
        self.url = "http://%s:%d" % (reachable_at or "127.0.0.1", self.port)
        self.log = os.path.join(workdir, "moto.log")
        env = dict(os.environ, TMPDIR=workdir)
        env.pop("INITIAL_NO_AUTH_ACTION_COUNT", None)
        self.process = spawn([MOTO, "-H", "0.0.0.0" if reachable_at else "127.0.0.1", "-p", str(self.port)], self.log, env=env)
        wait_until("moto on %d" % self.port, self.answers, 30)

    def answers(self):
        if self.process.poll() is not None:
            raise RuntimeError("moto_server exited: %s" % tail(self.log))
        try:
            urllib.request.urlopen(self.url + "/", timeout=1).read()
            return True
        except OSError:
            return False

    def make_bucket(self, bucket):
        request = urllib.request.Request("%s/%s" % (self.url, bucket), method="PUT")
        urllib.request.urlopen(request, timeout=30).read()

    def bucket_bytes(self, bucket):
        """The size of every object in the bucket (ListObjectsV2, page by page)."""
        total, token = 0, None
        namespace = "{http://s3.amazonaws.com/doc/2006-03-01/}"
        while True:
            url = "%s/%s?list-type=2" % (self.url, bucket)
            if token:
                url += "&continuation-token=" + urllib.request.quote(token, safe="")
            root = ElementTree.fromstring(urllib.request.urlopen(url, timeout=60).read())
            for contents in root.iter(namespace + "Contents"):
                total += int(contents.find(namespace + "Size").text)
            if root.findtext(namespace + "IsTruncated") != "true":
                return total
            token = root.findtext(namespace + "NextContinuationToken")

    def stop(self):
        # werkzeug ignores SIGTERM.
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


# MARK: The tools


Run = collections.namedtuple("Run", "seconds stdout rss_mib cpu_seconds server_cpu_seconds")


def timed(command, server, env=None, cwd=None):
    """Runs `command` to its end: its wall time, stdout, peak RSS and CPU (of that process alone,
    from wait4), and the CPU the S3 server spent meanwhile (both share this machine's cores)."""
    server_before = cpu_seconds(server.process.pid)
    started = time.monotonic()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        process = subprocess.Popen(command, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=env, cwd=cwd)
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.monotonic() - started
        returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    if returncode != 0:
        raise RuntimeError("%s exited %d:\n%s\n%s" % (" ".join(command[:3]), returncode, stdout[-2000:], stderr[-4000:]))
    return Run(seconds, stdout, usage.ru_maxrss / 1024, usage.ru_utime + usage.ru_stime,
               cpu_seconds(server.process.pid) - server_before)


def last_json(stdout, key=None):
    for line in reversed(stdout.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            value = json.loads(line)
            if key is None or value.get("message_type", key) == key:
                return value
    raise RuntimeError("no JSON in %r" % stdout[-500:])


class Ours:
    def __init__(self, binaries, moto, workdir, parallel):
        self.moto = moto
        self.binary = os.path.join(binaries, "warmpool-snapshot")
        if not os.access(self.binary, os.X_OK):
            raise RuntimeError("%s is missing (build it, or pass --binaries)" % self.binary)
        self.bucket = "ours"
        moto.make_bucket(self.bucket)
        with open(os.path.join(workdir, "secret"), "w") as handle:
            handle.write(SECRET_KEY + "\n")
        with open(os.path.join(workdir, "snapshot-key"), "w") as handle:
            handle.write(os.urandom(32).hex() + "\n")
        self.common = ["--endpoint", moto.url, "--bucket", self.bucket, "--prefix", "pool-1/", "--access-key-id",
                       ACCESS_KEY, "--secret-file", os.path.join(workdir, "secret"),
                       "--key-file", os.path.join(workdir, "snapshot-key"), "--parallel", str(parallel)]

    def snapshot(self, source):
        """(Run, its JSON summary)."""
        run = timed([self.binary, "create", "--source", source] + self.common, self.moto)
        return run, last_json(run.stdout)

    def restore(self, target):
        return timed([self.binary, "restore", "--target", target] + self.common, self.moto)


class Restic:
    def __init__(self, moto, workdir):
        self.moto = moto
        self.binary = shutil.which("restic")
        if not self.binary:
            raise RuntimeError("restic is missing: run Scripts/setup (Debian's restic package)")
        self.bucket = "restic"
        moto.make_bucket(self.bucket)
        self.env = dict(os.environ, AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY=SECRET_KEY,
                        RESTIC_PASSWORD="bench", RESTIC_REPOSITORY="s3:%s/%s/pool-1" % (moto.url, self.bucket),
                        RESTIC_CACHE_DIR=os.path.join(workdir, "restic-cache"))
        timed([self.binary, "init", "--repository-version", "2"], moto, env=self.env)

    def version(self):
        return subprocess.run([self.binary, "version"], capture_output=True, text=True).stdout.split()[1]

    def snapshot(self, source):
        """(Run, its JSON summary). Relative paths from inside the source: both tools store the same names."""
        run = timed([self.binary, "backup", "--json", "--compression", "auto", "."], self.moto, env=self.env, cwd=source)
        return run, last_json(run.stdout, "summary")

    def restore(self, target):
        return timed([self.binary, "restore", "latest", "--target", target], self.moto, env=self.env)


def zstd_floor(root, files):
    """`zstd -3 -T1 -c` over every file of the set to /dev/null: one core, no chunking, no I/O."""
    command = ["zstd", "-3", "-T1", "-q", "-c"] + [os.path.join(root, name) for name in sorted(files)]
    started = time.monotonic()
    with open(os.devnull, "wb") as null:
        subprocess.run(command, stdout=null, check=True)
    return time.monotonic() - started


def warm(root):
    """Reads the whole set once so every tool finds it in the page cache."""
    for directory, _, filenames in os.walk(root):
        for name in filenames:
            with open(os.path.join(directory, name), "rb") as handle:
                while handle.read(8 * MIB):
                    pass


# MARK: The run


def snapshot(args):
    binaries = build_snapshot(args)
    workdir = tempfile.mkdtemp(prefix="warmpool-bench-snapshot-", dir=args.workdir)
    moto = None
    # The figures as they come: what is printed, with the reason, if a stage fails.
    partial = {"size_mib": args.size_mib, "parallel": args.parallel}
    try:
        data = os.path.join(workdir, "data")
        print("bench snapshot: generating %d MiB in %s ..." % (args.size_mib, data), file=sys.stderr, flush=True)
        files = generate(data, args.size_mib, args.seed)
        total = sum(files.values())
        mib = total / MIB
        moto = Moto(workdir)
        ours = Ours(binaries, moto, workdir, args.parallel)
        restic = Restic(moto, workdir)
        warm(data)

        def progress(text):
            print("bench snapshot: " + text, file=sys.stderr, flush=True)

        floor_seconds = zstd_floor(data, files)
        progress("zstd -3 -T1 floor: %.1f s (%.0f MiB/s)" % (floor_seconds, mib / floor_seconds))
        partial.update(size_mib=round(mib, 1), files=len(files), zstd_floor_mib_s=round(mib / floor_seconds, 1))

        before = moto.bucket_bytes(ours.bucket)
        ours_first, ours_first_json = ours.snapshot(data)
        ours_first_bytes = moto.bucket_bytes(ours.bucket) - before
        progress("ours first: %.1f s, %.1f MiB uploaded, peak RSS %.1f MiB" % (
            ours_first.seconds, ours_first_bytes / MIB, ours_first.rss_mib))
        partial.update(ours_first_mib_s=round(mib / ours_first.seconds, 1), ours_first_uploaded_bytes=ours_first_bytes,
                       peak_rss_mib=round(ours_first.rss_mib, 1))

        before = moto.bucket_bytes(restic.bucket)
        restic_first, restic_first_json = restic.snapshot(data)
        restic_first_bytes = moto.bucket_bytes(restic.bucket) - before
        progress("restic first: %.1f s, %.1f MiB uploaded" % (restic_first.seconds, restic_first_bytes / MIB))
        partial.update(restic_first_mib_s=round(mib / restic_first.seconds, 1),
                       restic_first_uploaded_bytes=restic_first_bytes)

        changed = change_one_percent(data, files, args.seed + 1)
        total_after = sum(files.values())
        warm(data)
        progress("changed %.1f MiB (%.2f %%)" % (changed / MIB, 100 * changed / total))

        before = moto.bucket_bytes(ours.bucket)
        ours_second, ours_second_json = ours.snapshot(data)
        ours_incremental = moto.bucket_bytes(ours.bucket) - before
        before = moto.bucket_bytes(restic.bucket)
        restic_second, restic_second_json = restic.snapshot(data)
        restic_incremental = moto.bucket_bytes(restic.bucket) - before
        progress("incremental: ours %.1f MiB in %.1f s, restic %.1f MiB in %.1f s" % (
            ours_incremental / MIB, ours_second.seconds, restic_incremental / MIB, restic_second.seconds))
        partial.update(changed_bytes=changed, incremental_bytes={"ours": ours_incremental, "restic": restic_incremental})

        expected = tree_digest(data)
        ours_target = os.path.join(workdir, "restore-ours")
        ours_restore = ours.restore(ours_target)
        ours_verified = tree_digest(ours_target) == expected
        shutil.rmtree(ours_target, ignore_errors=True)
        restic_target = os.path.join(workdir, "restore-restic")
        restic_restore = restic.restore(restic_target)
        restic_verified = tree_digest(restic_target) == expected
        shutil.rmtree(restic_target, ignore_errors=True)
        progress("restore: ours %.1f s, restic %.1f s" % (ours_restore.seconds, restic_restore.seconds))
    except Exception as error:  # what was measured, and why the rest was not
        note_error(partial, error)
        for key, value in partial.items():
            print("%-34s %s" % (key, value))
        if args.json:
            print(json.dumps(partial))
        return 0
    finally:
        if moto:
            moto.stop()
        if args.keep:
            print("bench snapshot: kept %s" % workdir, file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    restored_mib = total_after / MIB
    summary = {
        "size_mib": round(mib, 1),
        "files": len(files),
        "parallel": args.parallel,
        "first_mib_s": {"ours": round(mib / ours_first.seconds, 1), "restic": round(mib / restic_first.seconds, 1),
                        "zstd_floor": round(mib / floor_seconds, 1)},
        "first_uploaded_bytes": {"ours": ours_first_bytes, "restic": restic_first_bytes},
        # Where the two cores went during each first snapshot: the tool's CPU and the server's.
        "first_cpu_seconds": {"ours": round(ours_first.cpu_seconds, 2),
                              "server_during_ours": round(ours_first.server_cpu_seconds, 2),
                              "restic": round(restic_first.cpu_seconds, 2),
                              "server_during_restic": round(restic_first.server_cpu_seconds, 2)},
        # Per second of one core, the floor's terms (one core, no server): MiB / the tool's CPU seconds.
        "first_mib_per_cpu_s": {"ours": round(mib / ours_first.cpu_seconds, 1),
                                "restic": round(mib / restic_first.cpu_seconds, 1), "zstd_floor": round(mib / floor_seconds, 1)},
        "changed_bytes": changed,
        "incremental_bytes": {"ours": ours_incremental, "restic": restic_incremental},
        "incremental_seconds": {"ours": round(ours_second.seconds, 2), "restic": round(restic_second.seconds, 2)},
        "ours_reported_uploaded_bytes": ours_second_json.get("uploaded_bytes"),
        "restic_reported_data_added": restic_second_json.get("data_added"),
        "restore_mib_s": {"ours": round(restored_mib / ours_restore.seconds, 1),
                          "restic": round(restored_mib / restic_restore.seconds, 1)},
        "restore_cpu_seconds": {"ours": round(ours_restore.cpu_seconds, 2),
                                "server_during_ours": round(ours_restore.server_cpu_seconds, 2),
                                "restic": round(restic_restore.cpu_seconds, 2),
                                "server_during_restic": round(restic_restore.server_cpu_seconds, 2)},
        "restore_verified": {"ours": ours_verified, "restic": restic_verified},
        "peak_rss_mib": round(max(ours_first.rss_mib, ours_second.rss_mib), 1),
        "restore_peak_rss_mib": round(ours_restore.rss_mib, 1),
        "restic_peak_rss_mib": round(restic_first.rss_mib, 1),
        "restic_version": restic.version(),
    }
    first = summary["first_mib_s"]
    targets = {
        "first_vs_restic": first["ours"] >= first["restic"],
        "first_vs_zstd_floor": first["ours"] >= 0.8 * first["zstd_floor"],
        "incremental_vs_restic": ours_incremental <= restic_incremental,
        "peak_rss": summary["peak_rss_mib"] <= 64,
    }
    summary["targets"] = targets
    summary["targets_met"] = all(targets.values()) and ours_verified

    print("snapshots of %.0f MiB (%d files) to moto on loopback; %d uploads in flight (ours)" % (
        mib, len(files), args.parallel))
    print("%-34s %14s %14s %14s" % ("", "ours", "restic %s" % summary["restic_version"], "zstd -3 -T1"))
    print("%-34s %14.1f %14.1f %14.1f" % ("first snapshot MiB/s", first["ours"], first["restic"], first["zstd_floor"]))
    per_cpu = summary["first_mib_per_cpu_s"]
    print("%-34s %14.1f %14.1f %14.1f" % ("first snapshot MiB per CPU second", per_cpu["ours"], per_cpu["restic"],
                                          per_cpu["zstd_floor"]))
    cpu = summary["first_cpu_seconds"]
    print("%-34s %14s %14s %14s" % ("first snapshot CPU s (tool+server)", "%.1f+%.1f" % (cpu["ours"], cpu["server_during_ours"]),
                                    "%.1f+%.1f" % (cpu["restic"], cpu["server_during_restic"]), "-"))
    print("%-34s %14.1f %14.1f %14s" % ("first snapshot MiB uploaded", ours_first_bytes / MIB,
                                        restic_first_bytes / MIB, "-"))
    print("%-34s %14.2f %14.2f %14s" % ("after 1 % changed: MiB uploaded", ours_incremental / MIB,
                                        restic_incremental / MIB, "-"))
    print("%-34s %14.2f %14.2f %14s" % ("after 1 % changed: seconds", ours_second.seconds, restic_second.seconds, "-"))
    print("%-34s %14.1f %14.1f %14s" % ("restore MiB/s", summary["restore_mib_s"]["ours"],
                                        summary["restore_mib_s"]["restic"], "-"))
    cpu = summary["restore_cpu_seconds"]
    print("%-34s %14s %14s %14s" % ("restore CPU s (tool+server)", "%.1f+%.1f" % (cpu["ours"], cpu["server_during_ours"]),
                                    "%.1f+%.1f" % (cpu["restic"], cpu["server_during_restic"]), "-"))
    print("%-34s %14s %14s %14s" % ("restore verified", ours_verified, restic_verified, "-"))
    print("%-34s %14.1f %14.1f %14s" % ("peak RSS MiB (first snapshot)", ours_first.rss_mib, restic_first.rss_mib, "-"))
    print("(uploaded: the bucket's growth; %.2f MiB changed; ours reported %s bytes, restic's data_added %s)" % (
        changed / MIB, summary["ours_reported_uploaded_bytes"], summary["restic_reported_data_added"]))
    print()
    print("%-50s %s" % ("target", ""))
    for name, text in (("first_vs_restic", "first snapshot: ours >= restic"),
                       ("first_vs_zstd_floor", "first snapshot: ours >= 80 % of the zstd floor"),
                       ("incremental_vs_restic", "after 1 % changed: ours <= restic bytes"),
                       ("peak_rss", "peak RSS <= 64 MiB")):
        print("%-50s %s" % (text, "met" if targets[name] else "MISSED"))
    if args.json:
        print(json.dumps(summary))
    # The targets are judged from the JSON (targets, targets_met).
    return 0
