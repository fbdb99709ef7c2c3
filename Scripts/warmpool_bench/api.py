"""`bench api`: what the operator's reads cost the controller, with real pools behind them.

N pools are provisioned on warmpool-sim (a two-GPU host each: a running primary with sshd and the
agent, a stopped standby) and a few are failed over, so the pages hold agents, conditions and
timelines. Then, one request at a time on one kept-alive connection: the status page with every
pool (/ui, logged in as a browser is), one pool's page, and GET status of one pool. Each answer's
`Server-Timing: app;dur=` is the controller's own time (router to response); the client's time on
loopback is printed beside it. The JSON is printed whatever happens: a step that fails says why in
`error`, with the figures that exist."""
import http.client
import json
import shutil
import sys
import tempfile
import time
import traceback
import urllib.parse
from concurrent.futures import ThreadPoolExecutor

from warmpool_lab.pool import WarmPool
from warmpool_lab.stats import percentile

from . import build

FIRST_HOST = 300


def api(args):
    summary = {"pools": args.pools, "requests": args.requests, "failovers": args.failovers}
    workdir = tempfile.mkdtemp(prefix="warmpool-bench-api-")
    pool = None
    try:
        binaries = build(args)
        hosts = ["%d:2:RTX_4090:0.45" % (FIRST_HOST + index) for index in range(args.pools)]
        pool = WarmPool(binaries, workdir, 0, hosts=hosts, log_level="warning", sim_log_level="warning")
        started = time.monotonic()
        with ThreadPoolExecutor(max_workers=4) as workers:
            list(workers.map(lambda index: pool.provision(pool=index + 1, host=FIRST_HOST + index), range(args.pools)))
        summary["provision_s"] = round(time.monotonic() - started, 1)
        _fail_over(pool, args.failovers)
        address = urllib.parse.urlsplit(pool.api_url).netloc
        cookie = _log_in(address, pool.api_key)
        connection = http.client.HTTPConnection(address, timeout=30)
        measured = {
            "status_page": _measure(connection, "/ui", {"Cookie": cookie}, args.requests, b"data-machine=\"%d\"" % args.pools),
            "pool_page": _measure(connection, "/ui/pools/1", {"Cookie": cookie}, args.requests, b"<svg"),
            "status": _measure(connection, "/api/v1/warmpool/status/1", {"Authorization": "Bearer " + pool.api_key},
                               args.requests * 5, b"\"machine_id\":1"),
        }
        for name, figures in measured.items():
            for key, value in figures.items():
                summary["%s_%s" % (name, key)] = value
    except Exception as error:  # the harness reports what it has; the figures so far stay
        summary["error"] = "%s: %s" % (type(error).__name__, error)
        traceback.print_exc(file=sys.stderr)
    finally:
        if pool is not None:
            pool.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    _print(summary)
    if args.json:
        print(json.dumps(summary))
    return 0


def _fail_over(pool, count):
    """Crashes the primaries of the first `count` pools, one after another, each to its end."""
    for index in range(1, count + 1):
        status = pool.status(index)
        deadline = time.monotonic() + 30
        while status["last_health_check"] is None and time.monotonic() < deadline:
            time.sleep(0.1)
            status = pool.status(index)
        pool.fault(status["primary_gpu_id"], "crash")
        deadline = time.monotonic() + 120
        while True:
            failovers = pool.history(pool=index)
            if failovers and failovers[0]["result"] != "in_progress" and pool.status(index)["state"] == "active":
                break
            if time.monotonic() > deadline:
                raise RuntimeError("pool %d's failover did not finish: %s" % (index, failovers[:1]))
            time.sleep(0.1)


def _log_in(address, key):
    """The session cookie a browser gets for `key` (the login form, posted as a browser posts it)."""
    connection = http.client.HTTPConnection(address, timeout=30)
    body = urllib.parse.urlencode({"api_key": key, "next": "/ui"})
    connection.request("POST", "/ui/login", body, {"Content-Type": "application/x-www-form-urlencoded"})
    answer = connection.getresponse()
    answer.read()
    cookie = answer.getheader("Set-Cookie") or ""
    connection.close()
    if answer.status != 303 or not cookie.startswith("warmpool_session="):
        raise RuntimeError("login answered %d without a session cookie" % answer.status)
    return cookie.split(";", 1)[0]


def _measure(connection, path, headers, count, must_contain):
    server, client, size = [], [], 0
    for _ in range(count):
        started = time.perf_counter()
        connection.request("GET", path, headers=headers)
        answer = connection.getresponse()
        body = answer.read()
        client.append((time.perf_counter() - started) * 1000)
        if answer.status != 200 or must_contain not in body:
            raise RuntimeError("GET %s answered %d without %r: %r" % (path, answer.status, must_contain, body[:200]))
        timing = answer.getheader("Server-Timing") or ""
        if not timing.startswith("app;dur="):
            raise RuntimeError("GET %s has no Server-Timing header" % path)
        server.append(float(timing.split("=", 1)[1]))
        size = len(body)
    return {
        "p50_ms": round(percentile(server, 0.50), 3), "p99_ms": round(percentile(server, 0.99), 3),
        "client_p50_ms": round(percentile(client, 0.50), 3), "client_p99_ms": round(percentile(client, 0.99), 3),
        "bytes": size,
    }


def _print(summary):
    print("the operator's reads, %d pools (%d failed over), one request at a time on loopback" % (
        summary["pools"], summary["failovers"]))
    print("%-34s %10s %10s %12s %12s %9s" % ("request", "server p50", "p99", "client p50", "p99", "bytes"))
    labels = {"status_page": "status page, all pools (/ui)", "pool_page": "one pool's page (/ui/pools/1)",
              "status": "GET status of one pool"}
    for name, label in labels.items():
        if name + "_p99_ms" in summary:
            print("%-34s %10.2f %10.2f %12.2f %12.2f %9d" % (
                label, summary[name + "_p50_ms"], summary[name + "_p99_ms"], summary[name + "_client_p50_ms"],
                summary[name + "_client_p99_ms"], summary[name + "_bytes"]))
    print("(server: the controller's Server-Timing, router to response; targets: status page p99 <= 50 ms for 50"
          " pools, status p99 <= 5 ms)")
    if "error" in summary:
        print("error: " + summary["error"])
