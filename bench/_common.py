"""Helpers shared by the bench/ scripts (stdlib only).

The scripts run as ``python3 bench/X.py`` and put bench/ on ``sys.path``, so
they import this module as ``_common`` (as they do ``_procstat``).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from typing import Callable, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(HERE)
HOST = "127.0.0.1"  # the only target the benchmarks ever load


#: The uvicorn peer of the HTTP benchmarks (bench/protocols.py, bench/suite.py):
#: a plain ASGI "Hello, World!" app.
ASGI_APP = '''
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", b"13")]})
    await send({"type": "http.response.body", "body": b"Hello, World!"})
'''

#: wrk script: 16 pipelined ``GET /plaintext`` per write (bench/suite.py appends its ``done``).
WRK_PIPELINE_LUA = '''
init = function(args)
   local r = {}
   for i = 1, 16 do r[i] = wrk.format(nil, "/plaintext") end
   req = table.concat(r)
end
request = function() return req end
'''


# ---------------------------------------------------------------------------- ports


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now (tiny race, accepted)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------- the C load generators


def find_cc() -> Optional[str]:
    """``$CC``, else the first of cc/gcc/clang on PATH, else None."""
    return os.environ.get("CC") or next((c for c in ("cc", "gcc", "clang") if shutil.which(c)), None)


def is_stale(binary: str, src: str) -> bool:
    """True when ``binary`` is missing or older than its source."""
    return not os.path.exists(binary) or os.path.getmtime(binary) < os.path.getmtime(src)


def compile_c(cc: str, src: str, binary: str) -> subprocess.CompletedProcess:
    """``cc -O2 -Wall`` ``src`` into ``binary`` (created in bench/_build/ or wherever).

    Builds to a temporary name and renames it on success: atomic, so safe
    against a concurrent run.  The caller reports success or failure.
    """
    os.makedirs(os.path.dirname(binary), exist_ok=True)
    tmp = f"{binary}.{os.getpid()}.tmp"
    r = subprocess.run([cc, "-O2", "-Wall", "-o", tmp, src], capture_output=True, text=True)
    if r.returncode == 0:
        os.replace(tmp, binary)
    return r


def cc_version(cc: str) -> str:
    """First line of ``cc --version`` (``cc`` itself if it printed nothing)."""
    ver = subprocess.run([cc, "--version"], capture_output=True, text=True).stdout
    return ver.splitlines()[0] if ver else cc


# ---------------------------------------------------------------------------- machine description


def package_version(dist: str) -> Optional[str]:
    """Installed version of a distribution, or None."""
    try:
        from importlib.metadata import version as v
        return v(dist)
    except Exception:
        return None


def cpu_model() -> Optional[str]:
    """The ``model name`` of /proc/cpuinfo, or None."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def git_rev() -> Optional[str]:
    """Short commit of the checkout, or None."""
    rev = subprocess.run(["git", "-C", REPO_ROOT, "rev-parse", "--short", "HEAD"],
                         capture_output=True, text=True)
    return rev.stdout.strip() or None


# ---------------------------------------------------------------------------- results


def save_json(path: str, doc: dict, **dump_kw) -> None:
    """Write ``doc`` to ``path`` (creating its directory); ``indent=2`` unless told."""
    dump_kw.setdefault("indent", 2)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(doc, f, **dump_kw)


def run_rounds(scenarios: list, servers: list[str], rounds: int, header: str, name_width: int,
               run_one: Callable, describe: Callable[[dict], str],
               error: type, interrupted_error: type):
    """Run every scenario x server ``rounds`` times, rotating the server order.

    Prints ``header`` first, then a progress line per run.  ``run_one(kind,
    scenario)`` returns a run dict or raises ``error`` (logged as a failure);
    ``describe(run)`` is the progress line's tail.  Ctrl-C or
    ``interrupted_error`` stop early.  Returns (runs, failures, interrupted,
    started) with ``runs`` keyed by (scenario name, kind) and ``started`` the
    ``time.monotonic()`` of the start.
    """
    runs: dict = {}
    failures = []
    interrupted = False
    total = rounds * len(scenarios) * len(servers)
    step = 0
    started = time.monotonic()
    print(header)
    try:
        for sc in scenarios:
            for rnd in range(rounds):
                order = servers[rnd % len(servers):] + servers[:rnd % len(servers)]
                for kind in order:
                    step += 1
                    label = f"[{step}/{total}] {sc.name:<{name_width}} {kind:<10} round {rnd + 1}"
                    try:
                        run = run_one(kind, sc)
                    except error as exc:
                        print(f"{label}: FAILED: {exc}", file=sys.stderr)
                        failures.append({"scenario": sc.name, "server": kind, "error": str(exc)})
                        continue
                    run["round"] = rnd + 1
                    runs.setdefault((sc.name, kind), []).append(run)
                    print(f"{label}: {describe(run)}")
    except (KeyboardInterrupt, interrupted_error):
        interrupted = True
        print("\ninterrupted: reporting what was measured", file=sys.stderr)
    return runs, failures, interrupted, started
