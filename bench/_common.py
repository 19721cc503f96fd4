"""Basics shared by the bench/ scripts (stdlib only): paths, errors, ports,
C builds into bench/_build/, the machine description and JSON results.

The scripts run as ``python3 bench/X.py`` and put bench/ on ``sys.path``, so
they import this module as ``_common`` (and ``_procs``, ``_harness``,
``_procstat`` likewise).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import time
from typing import Any, Optional, Sequence

HERE = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(HERE)
BUILD_DIR = os.path.join(HERE, "_build")
RESULTS_DIR = os.path.join(HERE, "results")
SERVERS_PY = os.path.join(HERE, "servers.py")
LOADGEN_SRC = os.path.join(HERE, "loadgen.c")
LOADGEN_BIN = os.path.join(BUILD_DIR, "loadgen")
LGCOMMON_H = os.path.join(HERE, "lgcommon.h")  # what the C generators share
PY_LOADGEN = os.path.join(HERE, "_pyloadgen.py")
HOST = "127.0.0.1"  # the only target the benchmarks ever load


class BenchError(RuntimeError):
    """One measurement could not be made (a server died, a load generator failed...)."""


class Interrupted(Exception):
    """Raised from the SIGTERM handler so that every ``finally`` runs."""


def raise_on_sigterm() -> None:
    """Turn SIGTERM into :class:`Interrupted`: children are stopped, results kept."""
    def on_term(signum: int, frame: Any) -> None:
        raise Interrupted()

    signal.signal(signal.SIGTERM, on_term)


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


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A TCP (or, with ``socket.SOCK_DGRAM``, UDP) port on 127.0.0.1 free right now.

    There is a tiny race between this and the server's bind; accepted.
    """
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------- C builds


def find_cc() -> Optional[str]:
    """``$CC``, else the first of cc/gcc/clang on PATH, else None."""
    return os.environ.get("CC") or next((c for c in ("cc", "gcc", "clang") if shutil.which(c)), None)


def is_stale(binary: str, src: str, *deps: str) -> bool:
    """True when ``binary`` is missing or older than its source or a header it includes."""
    if not os.path.exists(binary):
        return True
    built = os.path.getmtime(binary)
    return any(built < os.path.getmtime(f) for f in (src, *deps))


def compile_c(cc: str, src: str, binary: str, libs: Sequence[str] = ()) -> subprocess.CompletedProcess:
    """``cc -O2 -Wall`` ``src`` into ``binary``, linked with ``libs`` (e.g. ``-lssl``).

    Builds to a temporary name and renames it on success: atomic, so safe
    against a concurrent run.  The caller reports success or failure.
    """
    os.makedirs(os.path.dirname(binary), exist_ok=True)
    tmp = f"{binary}.{os.getpid()}.tmp"
    r = subprocess.run([cc, "-O2", "-Wall", "-o", tmp, src, *libs], capture_output=True, text=True)
    if r.returncode == 0:
        os.replace(tmp, binary)
    else:
        try:
            os.unlink(tmp)
        except OSError:
            pass
    return r


def cc_version(cc: str) -> str:
    """First line of ``cc --version`` (``cc`` itself if it printed nothing)."""
    ver = subprocess.run([cc, "--version"], capture_output=True, text=True).stdout
    return ver.splitlines()[0] if ver else cc


def build_c(src: str, binary: str, libs: Sequence[str] = (),
            deps: Sequence[str] = (LGCOMMON_H,)) -> tuple[Optional[str], str]:
    """Build ``src`` when ``binary`` is missing or stale: (binary or None, why not / compiler).

    ``deps``: the local headers it includes (a change rebuilds it).  On
    success the second item is the compiler's version line; on failure, the
    reason (no compiler, or the compiler's complaint).
    """
    cc = find_cc()
    if cc is None:
        return None, f"no C compiler (cc, gcc or clang) to build bench/{os.path.basename(src)}"
    if is_stale(binary, src, *deps):
        r = compile_c(cc, src, binary, libs)
        if r.returncode != 0:
            return None, f"building bench/{os.path.basename(src)} failed: {r.stderr.strip()}"
        print(f"built {os.path.relpath(binary)} with {cc} -O2")
    return binary, cc_version(cc)


def build_loadgen(choice: str = "auto") -> tuple[list[str], str, str]:
    """The echo load generator: (command prefix, kind "c"/"python", compiler description).

    Compiles ``loadgen.c`` with ``cc -O2`` when the binary is missing or older
    than its source; with ``choice`` "auto", falls back to the Python
    generator (with a warning) when there is no compiler or the build fails;
    "c" makes that an error, "python" asks for the fallback.
    """
    if choice != "python":
        binary, why = build_c(LOADGEN_SRC, LOADGEN_BIN)
        if binary:
            return [binary], "c", why
        if choice == "c":
            raise SystemExit(f"error: --loadgen c requested but loadgen.c could not be built: {why}")
        print(f"WARNING: {why}: falling back to the pure-Python load generator.\n"
              "         It is likely to be the bottleneck; CPU/message figures will be\n"
              "         inflated and ratios compressed.  Install cc for real numbers.",
              file=sys.stderr)
    return [sys.executable, PY_LOADGEN], "python", ""


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


def machine_meta() -> dict:
    """What every result file records about the run: when, where, which Python."""
    return {
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "python": sys.version.split()[0], "implementation": platform.python_implementation(),
        "kernel": platform.release(), "cpu_model": cpu_model(), "cpus": os.cpu_count(),
        "git_rev": git_rev(), "argv": sys.argv[1:],
    }


# ---------------------------------------------------------------------------- results


def results_path(prefix: str, given: Optional[str] = None) -> str:
    """``given``, else ``bench/results/<prefix>-<timestamp>.json``."""
    return given or os.path.join(RESULTS_DIR, f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}.json")


def save_json(path: str, doc: dict, **dump_kw: Any) -> None:
    """Write ``doc`` to ``path`` (creating its directory); ``indent=2`` unless told."""
    dump_kw.setdefault("indent", 2)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(doc, f, **dump_kw)
