"""`drill api-fuzz`: schemathesis against Protocol/openapi.yaml on the live controller, and every
mutating route refusing a request without the right key."""
import os
import subprocess
import sys
import time

from warmpool_lab import ROOT, http
from warmpool_lab.pool import POOL

from . import report
from .failover_lab import failover_lab, lab_pool


SCHEMATHESIS_VENV = "/opt/warmpool-schemathesis"


def schemathesis():
    binary = os.path.join(SCHEMATHESIS_VENV, "bin", "schemathesis")
    if not os.path.exists(binary):
        print("drill: installing schemathesis into %s ..." % SCHEMATHESIS_VENV, file=sys.stderr, flush=True)
        subprocess.run([sys.executable, "-m", "venv", SCHEMATHESIS_VENV], check=True)
        subprocess.run([os.path.join(SCHEMATHESIS_VENV, "bin", "pip"), "install", "-q", "schemathesis>=4,<5"], check=True)
    return binary


def mutating_routes(spec_path):
    """(method, path) of every POST/PUT/PATCH/DELETE in the OpenAPI document that needs a key (a
    small YAML reader for its `paths:` block: two-space path keys, four-space method keys; an
    operation with `security: []`, Vast.ai's signed notifications, is authenticated otherwise)."""
    routes, path, inside = [], None, False
    with open(spec_path) as handle:
        for line in handle:
            if line.startswith("paths:"):
                inside = True
                continue
            if inside and line and not line.startswith(" ") and line.strip():
                break
            if inside and line.startswith("  /"):
                path = line.strip().rstrip(":").strip("'\"")
            elif inside and path and line.startswith("    ") and not line.startswith("     "):
                method = line.strip().rstrip(":")
                if method in ("post", "put", "patch", "delete"):
                    routes.append((method.upper(), path))
            elif inside and routes and line.strip() == "security: []" and routes[-1][1] == path:
                routes.pop()
    return routes


def api_fuzz(args):
    """schemathesis against Protocol/openapi.yaml on a live controller with the emulator behind it."""
    binary = schemathesis()
    spec = os.path.join(ROOT, "Protocol", "openapi.yaml")

    def run(binaries, workdir, lab):
        pool = lab_pool(binaries, workdir, lab, controller_extra=["--operation-timeout-s", "20"])
        breaches = []
        try:
            pool.provision()
            unauthenticated = []
            for method, path in mutating_routes(spec):
                concrete = path.replace("{machine_id}", str(POOL)).replace("{agent_id}", "x").replace("{key_id}", "1")
                for key in (None, "wrong-key"):
                    status, _ = http.call(method, pool.api_url + concrete, key, body={} if method != "DELETE" else None)
                    unauthenticated.append((method, path, key is not None, status))
            refused = [r for r in unauthenticated if r[3] == 401]
            for method, path, wrong, status in unauthenticated:
                if status != 401:
                    breaches.append("%s %s with %s key: %d, not 401" % (method, path, "a wrong" if wrong else "no", status))
            # A read key (issue 20's scopes) reaches no mutating route.
            _, created = http.call("POST", pool.api_url + "/api/v1/keys", pool.api_key, {"name": "reader", "scope": "read"})
            forbidden = 0
            for method, path in mutating_routes(spec):
                concrete = path.replace("{machine_id}", str(POOL)).replace("{agent_id}", "x").replace("{key_id}", "1")
                status, _ = http.call(method, pool.api_url + concrete, created.get("key"), body={} if method != "DELETE" else None)
                forbidden += status == 403
                if status != 403:
                    breaches.append("%s %s with a read key: %d, not 403" % (method, path, status))
            report_dir = os.path.join(workdir, "schemathesis")
            command = [binary, "run", spec, "--url", pool.api_url, "--header",
                       "Authorization: Bearer %s" % pool.api_key, "--checks", args.checks,
                       "--max-examples", str(args.max_examples), "--workers", "1", "--request-timeout", "30",
                       "--report", "ndjson", "--report-dir", report_dir, "--no-color", "--seed", str(args.seed),
                       "--generation-database", "none",
                       # It would delete the key it runs with (ids are small integers); 401s thereafter.
                       "--exclude-name", "DELETE /api/v1/keys/{key_id}"]
            started = time.monotonic()
            st = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=workdir,
                                timeout=args.max_minutes * 60 + 120)
            seconds = time.monotonic() - started
            with open(os.path.join(workdir, "schemathesis.txt"), "w") as handle:
                handle.write(st.stdout)
            alive = pool.controller.process.poll() is None
            tail = st.stdout.strip().splitlines()[-25:]
            summary_line = next((line for line in reversed(tail) if " passed" in line or " failed" in line), "")
            server_errors = [line for line in st.stdout.splitlines() if "Server error" in line]
        finally:
            pool.stop()
        if st.returncode != 0:
            breaches.append("schemathesis exit %d: %s" % (st.returncode, summary_line.strip()))
            print("\n".join(tail), file=sys.stderr)
        if not alive:
            breaches.append("the controller died")
        summary = {"mutating_routes": len(unauthenticated) // 2, "refused_401": len(refused), "read_key_refused_403": forbidden,
                   "schemathesis_exit": st.returncode, "schemathesis_summary": summary_line.strip(),
                   "server_errors": len(server_errors), "seconds": round(seconds), "max_examples": args.max_examples}
        rows = [("mutating routes, no key and a wrong key: 401", "%d of %d requests" % (len(refused), len(unauthenticated))),
                ("mutating routes with a read key: 403", "%d of %d" % (forbidden, len(unauthenticated) // 2)),
                ("schemathesis (%s), max %d examples" % (args.checks, args.max_examples), summary_line.strip()),
                ("  took", "%d s" % seconds)]
        return report("api-fuzz drill", rows, summary, args, breaches)

    return failover_lab(args, run)
