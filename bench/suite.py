"""The benchmark suite: ``netreactor bench`` (and ``make bench``).

    netreactor bench [--quick] [--only GROUP|CASE ...] [--servers a,b,...]
                     [--rounds N] [--duration S] [--warmup S] [--json PATH]
                     [--plain] [--no-chart] [--write-readme]
    netreactor bench --report bench/results/suite-....json [--write-readme]
    python3 bench/suite.py ...                      # the same, from a source tree

One run, one machine, every peer measured the same way, one after the other:

* **echo** (``bench/echo.py``'s machinery and the C load generator
  ``bench/loadgen.c``): ping-pong with 50 and 1,000 connections, pipelined 16
  deep, framed (4-byte length prefix), short connections, and memory per idle
  connection -- netreactor, uvloop, asyncio, gevent and Twisted.
* **udp**: ``bench/udp.py`` run as a subprocess (its JSON), when it is there
  and works; otherwise the scenario is reported as skipped, with the reason.
* **tls**: ``bench/tls.py``'s scenarios (its machinery and the OpenSSL load
  generator ``bench/tlsloadgen.c``): 64-byte ping-pong and 16-deep pipelining
  over TLS 1.3, 64 KiB bulk, full handshakes, memory per idle TLS connection
  -- uvloop's and asyncio's TLS servers (``TLS_PEERS``; skipped with the
  reason when libssl-dev is missing).
* **resp**: ``redis-benchmark -c 50 -t set,get`` without and with ``-P 16``
  against netreactor's Redis example, redis-server, and the same Redis
  handler on uvloop and asyncio.
* **http**: ``wrk -t1 -c50`` on ``/plaintext`` without and with 16-deep
  pipelining against netreactor's HTTP example, uvicorn (httptools +
  uvloop), and the same HTTP handler on uvloop and asyncio.

Every server is pinned to the first CPU of the first half of the CPUs this
process may use, every load generator (and this harness) to the second half.
The main figure is the **server's CPU time per operation** (utime+stime from
``/proc`` over the measured window / operations in it); throughput and the
load generators' latency percentiles stand beside it.  Results: a table in the
terminal (rich if installed), ``bench/results/suite-<timestamp>.json``, and a
PNG chart of CPU per operation relative to uvloop when matplotlib is
installed.  ``--write-readme`` puts the table and the machine into README.md
between ``<!-- bench-table -->`` and ``<!-- /bench-table -->``.

Only 127.0.0.1 is ever loaded, every phase has a deadline, and every child
runs in its own process group and is killed on exit, error or Ctrl-C (and by
``PR_SET_PDEATHSIG`` if this harness is killed outright).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _procstat  # noqa: E402  (bench/ helpers)
import _common  # noqa: E402
from _common import (ASGI_APP, HERE, HOST, REPO_ROOT, RESULTS_DIR, SERVERS_PY,  # noqa: E402
                     BenchError, Interrupted, build_loadgen, free_port, machine_meta,
                     package_version, raise_on_sigterm, save_json)
from _harness import CpuWindow, Profile, Rounds, median, print_table, run_rounds  # noqa: E402
from _procs import ServerProc, child_setup, kill_group, run_to_end  # noqa: E402
import echo as E  # noqa: E402  (echo scenarios and one echo run)
import tls as T  # noqa: E402  (TLS scenarios and one TLS run)

README = os.path.join(REPO_ROOT, "README.md")
UDP_PY = os.path.join(HERE, "udp.py")
MARK_BEGIN, MARK_END = "<!-- bench-table -->", "<!-- /bench-table -->"

#: Column order of every table; a server missing from a scenario leaves a blank.
SERVER_ORDER = ("netreactor", "uvloop", "asyncio", "gevent", "twisted", "redis-server", "uvicorn")
ECHO_KINDS = ("netreactor", "uvloop", "asyncio", "gevent", "twisted")
#: The TLS peers; each is servers.py's kind "<name>-tls" and shows in the <name> column.
TLS_PEERS = ("netreactor", "uvloop", "asyncio")
APP_KINDS = ("netreactor", "uvloop", "asyncio")  # servers.py --proto resp|http
BASELINE = "uvloop"  # the ratios of the main figure are "CPU per op / uvloop's"

#: Issue 6's targets: netreactor's throughput / the peer's, same run.
TARGETS = {"resp": ("redis-server", 0.6), "resp-P16": ("redis-server", 0.2),
           "http": ("uvicorn", 2.5)}

# wrk: print a machine-readable summary with the latency percentiles (in µs).
WRK_DONE_LUA = r'''
done = function(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      "WRKJSON {\"requests\":%d,\"duration_us\":%d,\"bytes\":%d,\"connect\":%d,\"read\":%d," ..
      "\"write\":%d,\"status\":%d,\"timeout\":%d,\"p50\":%.1f,\"p90\":%.1f,\"p99\":%.1f," ..
      "\"p999\":%.1f,\"max\":%.1f,\"mean\":%.1f}\n",
      summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status,
      e.timeout, latency:percentile(50), latency:percentile(90), latency:percentile(99),
      latency:percentile(99.9), latency.max, latency.mean))
end
'''
WRK_PIPELINE_LUA = _common.WRK_PIPELINE_LUA + WRK_DONE_LUA


# ---------------------------------------------------------------------------- cases


@dataclass(frozen=True)
class Case:
    name: str
    group: str          # echo | udp | resp | http
    unit: str           # what the CPU figure is per: msg, frame, conn, op, req, datagram
    about: str
    servers: tuple      # candidate servers, in SERVER_ORDER
    pipeline: int = 1   # resp/http: requests in flight per connection


def _cases() -> List[Case]:
    out = []
    for sc in E.SCENARIOS.values():
        unit = "B/conn" if sc.mode == "idle" else sc.unit
        out.append(Case(sc.name, "echo", unit, sc.about, ECHO_KINDS))
    out.append(Case("udp", "udp", "datagram", "UDP echo (bench/udp.py)", ()))
    for sc in T.SCENARIOS.values():
        unit = "B/conn" if sc.mode == "idle" else sc.unit
        out.append(Case(f"tls-{sc.name}", "tls", unit, f"bench/tls.py: {sc.about}", TLS_PEERS))
    out.append(Case("resp", "resp", "op", "redis-benchmark -c 50 -t set,get",
                    ("netreactor", "uvloop", "asyncio", "redis-server")))
    out.append(Case("resp-P16", "resp", "op", "redis-benchmark -c 50 -t set,get -P 16",
                    ("netreactor", "uvloop", "asyncio", "redis-server"), pipeline=16))
    out.append(Case("http", "http", "req", "wrk -t1 -c50 GET /plaintext",
                    ("netreactor", "uvloop", "asyncio", "uvicorn")))
    out.append(Case("http-P16", "http", "req", "wrk -t1 -c50 GET /plaintext, 16 pipelined",
                    ("netreactor", "uvloop", "asyncio", "uvicorn"), pipeline=16))
    return out


CASES = {c.name: c for c in _cases()}
GROUPS = ("echo", "udp", "tls", "resp", "http")


@dataclass
class SuiteProfile:
    """Timing knobs of the suite: --quick and the full run differ only here."""

    echo: Profile       # echo windows (warm-up, window, rounds, settle before memory); UDP's, TLS's too
    idle_conns: int
    tls_idle_conns: int  # idle TLS connections (a full handshake each)
    rounds: int         # resp/http rounds
    resp_requests: Dict[int, int]   # pipeline -> redis-benchmark -n (per test)
    wrk_seconds: int
    udp_rounds: int     # bench/udp.py --rounds (its windows: --warmup/--duration as echo's)


QUICK = SuiteProfile(Profile(warmup=0.15, duration=0.4, rounds=1, settle=0.3), idle_conns=2000,
                     tls_idle_conns=1000,
                     rounds=1, resp_requests={1: 10_000, 16: 100_000}, wrk_seconds=1, udp_rounds=1)
FULL = SuiteProfile(Profile(warmup=0.75, duration=2.0, rounds=3, settle=1.0), idle_conns=9000,
                    tls_idle_conns=5000,
                    rounds=2, resp_requests={1: 100_000, 16: 600_000}, wrk_seconds=3, udp_rounds=2)


# ---------------------------------------------------------------------------- processes


def _cpu_layout() -> tuple:
    """(server CPU, load generator CPUs): first half of our CPUs for servers."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None, None
    half = len(cpus) // 2
    return cpus[0], cpus[half:]


# ---------------------------------------------------------------------------- context


@dataclass
class Ctx:
    profile: SuiteProfile
    server_cpu: Optional[int]
    gen_cpus: Optional[List[int]]
    echo_ctx: Any = None          # echo.Ctx, once the load generator is built
    tls_loadgen: Optional[str] = None  # bench/tlsloadgen.c's binary, if it builds
    tls_ctx: Any = None           # tls.Ctx, made (with its certificate) at the first TLS run
    loadgen_kind: str = ""
    workdir: str = ""
    quick: bool = False
    all_cpus: Optional[List[int]] = None  # affinity at start (for udp.py, which pins itself)


def wait_quiet(ctx: Ctx, limit: float, threshold: float = 0.10, probe: float = 0.25) -> float:
    """Wait (at most ``limit`` s) until every pinned CPU is under ``threshold`` busy."""
    cpus = [c for c in [ctx.server_cpu] + list(ctx.gen_cpus or []) if c is not None]
    if not cpus:
        return 0.0
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit:
        b0, w0 = _procstat.cpu_busy_seconds(cpus), time.monotonic()
        time.sleep(probe)
        b1, w1 = _procstat.cpu_busy_seconds(cpus), time.monotonic()
        if all((b1[c] - b0[c]) / (w1 - w0) < threshold for c in cpus):
            break
    return time.monotonic() - t0


def _measure(ctx: Ctx, srv: ServerProc, run_gen: Any) -> dict:
    """Server CPU, wall time and other load around one generator run."""
    win = CpuWindow(_procstat.process_tree(srv.pid), ctx.server_cpu, ctx.gen_cpus or ())
    win.open()
    out, gen_cpu = run_gen()
    win.close()
    srv.check_alive(verb="died during the run")
    wall = win.wall
    m = {"out": out, "server_cpu_s": win.cpu_s, "wall": wall, "gen_cpu_s": gen_cpu,
         "server_cpu_frac": win.server_frac() if wall > 0 else None,
         "gen_cpu_frac": gen_cpu / wall if wall > 0 else None,
         "server_cpus_allowed": _procstat.cpus_allowed(srv.pid)}
    if ctx.server_cpu is not None and wall > 0:
        m["foreign_frac_server_cpu"] = win.foreign_server()
        m["foreign_frac_gen_cpu"] = win.foreign_gen(gen_cpu)
    return m


# ---------------------------------------------------------------------------- echo


def run_echo(ctx: Ctx, case: Case, kind: str) -> dict:
    return _row(E.run_one(ctx.echo_ctx, kind, E.SCENARIOS[case.name]))


def run_tls(ctx: Ctx, case: Case, server: str) -> dict:
    if ctx.tls_ctx is None:
        certs = T.make_certs(ctx.workdir)
        p = ctx.profile
        ctx.tls_ctx = T.Ctx(ctx.tls_loadgen, certs, ctx.server_cpu,
                            ctx.gen_cpus[0] if ctx.gen_cpus else None,
                            dataclasses.replace(p.echo, rounds=1), p.tls_idle_conns)
    row = _row(T.run_one(ctx.tls_ctx, f"{server}-tls", T.SCENARIOS[case.name[len("tls-"):]]))
    row["detail"]["kind"] = f"{server}-tls"
    return row


def _row(r: dict) -> dict:
    """The suite's row of one echo.py / tls.py run."""
    if "bytes_per_conn_rss" in r:
        return {"bytes_per_conn": r["bytes_per_conn_rss"],
                "bytes_per_conn_pss": r.get("bytes_per_conn_pss"),
                "conns": r["conns"], "errors": r["errors"], "detail": r}
    lg = r["loadgen"]

    def lat(key: str) -> Optional[float]:
        v = lg.get(key)
        return v if isinstance(v, (int, float)) and v >= 0 else None

    return {"cpu_us_per_op": r["cpu_us_per_msg"], "ops_per_s": r["msgs_per_s"],
            "lat_p50_us": lat("lat_p50_us"), "lat_p99_us": lat("lat_p99_us"),
            "lat_p999_us": lat("lat_p999_us"), "server_cpu_frac": r["server_cpu_frac"],
            "gen_cpu_frac": r["gen_busy_frac"],
            "foreign_frac_server_cpu": r["foreign_frac_server_cpu"],
            "foreign_frac_gen_cpu": r["foreign_frac_gen_cpu"], "errors": r["errors"],
            "detail": {k: v for k, v in r.items() if k != "loadgen"} | {"loadgen": lg}}


# ---------------------------------------------------------------------------- RESP


def _start_app_server(ctx: Ctx, kind: str, proto: str, port: int) -> ServerProc:
    if kind == "redis-server":
        argv = ["redis-server", "--port", str(port), "--bind", HOST, "--save", "",
                "--appendonly", "no", "--dir", ctx.workdir, "--loglevel", "warning"]
        return ServerProc(kind, argv, port, ctx.server_cpu, what="")
    if kind == "uvicorn":
        argv = [sys.executable, "-m", "uvicorn", "plaintext_app:app", "--host", HOST,
                "--port", str(port), "--loop", "uvloop", "--http", "httptools",
                "--no-access-log", "--log-level", "warning", "--backlog", "2048"]
        return ServerProc(kind, argv, port, ctx.server_cpu, cwd=ctx.workdir, what="")
    return ServerProc(kind, E.server_argv(kind, port, None, proto), port, ctx.server_cpu, what="")


def _parse_redis_csv(out: str) -> Dict[str, Dict[str, float]]:
    res: Dict[str, Dict[str, float]] = {}
    for line in out.splitlines():
        cells = [c.strip().strip('"') for c in line.strip().split(",")]
        if len(cells) >= 7 and cells[0] in ("SET", "GET"):
            try:
                res[cells[0]] = {"rps": float(cells[1]), "avg_ms": float(cells[2]),
                                 "p50_ms": float(cells[4]), "p95_ms": float(cells[5]),
                                 "p99_ms": float(cells[6]),
                                 "max_ms": float(cells[7]) if len(cells) > 7 else None}
            except ValueError:
                continue
    if set(res) != {"SET", "GET"}:
        raise BenchError(f"cannot read redis-benchmark's CSV: {out[-400:]!r}")
    return res


def run_resp(ctx: Ctx, case: Case, kind: str) -> dict:
    n = ctx.profile.resp_requests[case.pipeline]
    port = free_port()
    argv = ["redis-benchmark", "-h", HOST, "-p", str(port), "-c", "50", "-n", str(n),
            "-t", "set,get", "--csv"]
    if case.pipeline > 1:
        argv += ["-P", str(case.pipeline)]
    with _start_app_server(ctx, kind, "resp", port) as srv:
        srv.wait_ready()
        m = _measure(ctx, srv, lambda: run_to_end(argv, ctx.gen_cpus, timeout=120))
    res = _parse_redis_csv(m.pop("out"))
    ops = 2 * n
    # Both tests back to back: total operations over their total time.
    seconds = n / res["SET"]["rps"] + n / res["GET"]["rps"]
    return {"cpu_us_per_op": m["server_cpu_s"] / ops * 1e6, "ops_per_s": ops / seconds,
            # redis-benchmark gives p50/p99 per test (in ms, 3 decimals); the
            # table shows the slower of SET and GET.  No p99.9 from it.
            "lat_p50_us": 1000 * max(res["SET"]["p50_ms"], res["GET"]["p50_ms"]),
            "lat_p99_us": 1000 * max(res["SET"]["p99_ms"], res["GET"]["p99_ms"]),
            "lat_p999_us": None, "errors": 0, "requests": ops,
            **{k: m.get(k) for k in ("server_cpu_frac", "gen_cpu_frac", "foreign_frac_server_cpu",
                                     "foreign_frac_gen_cpu")},
            "detail": {"redis_benchmark": res, "argv": argv[1:], **m}}


# ---------------------------------------------------------------------------- HTTP


def _parse_wrk(out: str) -> dict:
    m = re.search(r"^WRKJSON (\{.*\})\s*$", out, re.M)
    if not m:
        raise BenchError(f"cannot read wrk's summary: {out[-400:]!r}")
    return json.loads(m.group(1))


def run_http(ctx: Ctx, case: Case, kind: str) -> dict:
    script = os.path.join(ctx.workdir, "pipeline16.lua" if case.pipeline > 1 else "done.lua")
    seconds = ctx.profile.wrk_seconds
    port = free_port()
    argv = ["wrk", "-t1", "-c50", f"-d{seconds}s", "--latency", "-s", script,
            f"http://{HOST}:{port}/plaintext"]
    with _start_app_server(ctx, kind, "http", port) as srv:
        srv.wait_ready()
        m = _measure(ctx, srv, lambda: run_to_end(argv, ctx.gen_cpus, timeout=seconds + 60))
    w = _parse_wrk(m.pop("out"))
    requests = w["requests"]
    if requests <= 0:
        raise BenchError(f"wrk completed no request: {w}")
    errors = w["connect"] + w["read"] + w["write"] + w["timeout"] + w["status"]
    # wrk corrects its latencies for coordinated omission assuming one request
    # per round trip (expected interval = run time / (requests / connections)).
    # With 16 pipelined requests per round trip that interval is 16x too short
    # and the synthetic samples it adds land below the recorded minimum, where
    # its percentile walk never looks (p99 comes out as 0).  So: no
    # percentiles from wrk under pipelining (its mean is kept in the JSON).
    lat = {"p50": None, "p99": None, "p999": None} if case.pipeline > 1 else w
    return {"cpu_us_per_op": m["server_cpu_s"] / requests * 1e6,
            "ops_per_s": requests / (w["duration_us"] / 1e6),
            "lat_p50_us": lat["p50"], "lat_p99_us": lat["p99"], "lat_p999_us": lat["p999"],
            "errors": errors, "non_2xx": w["status"],
            "socket_errors": w["connect"] + w["read"] + w["write"] + w["timeout"],
            "requests": requests,
            **{k: m.get(k) for k in ("server_cpu_frac", "gen_cpu_frac", "foreign_frac_server_cpu",
                                     "foreign_frac_gen_cpu")},
            "detail": {"wrk": w, "argv": argv[1:], **m}}


# ---------------------------------------------------------------------------- UDP


def udp_help() -> tuple:
    """(reason it cannot be used or None, its --help text)."""
    if not os.path.isfile(UDP_PY):
        return "bench/udp.py is not there", ""
    try:
        r = subprocess.run([sys.executable, UDP_PY, "--help"], capture_output=True, text=True,
                           timeout=20, cwd=REPO_ROOT)
    except subprocess.TimeoutExpired:
        return "bench/udp.py --help did not answer within 20 s", ""
    if r.returncode != 0:
        return f"bench/udp.py --help failed ({r.returncode}): {(r.stderr or r.stdout)[-300:]}", ""
    if "--json" not in r.stdout:
        return "bench/udp.py has no --json option", r.stdout
    return None, r.stdout


KNOWN_SERVERS = set(SERVER_ORDER)
_GENERIC_KEYS = {"summary", "table", "tables", "rows", "results", "medians", "median", "best",
                 "servers", "scenarios", "data"}


def _udp_rows(doc: Any) -> List[dict]:
    """Rows {scenario, server, ...} out of udp.py's JSON, whatever its exact shape.

    Finds every dict carrying a CPU-per-message figure.  Its server is its
    ``server``/``kind`` field, else the nearest enclosing key naming a known
    server; its scenario is its ``scenario``/``name`` field, else the nearest
    enclosing key that is neither a server nor a generic word ("table"...).
    Medians are preferred: per-run lists (``runs``) are read only when nothing
    else has the figures, and then the median per (scenario, server) is kept.
    Scenario names become ``udp-<name>`` unless they start with ``udp``.
    """
    def num(d: dict, *keys: str) -> Optional[float]:
        for k in keys:
            v = d.get(k)
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                return float(v)
        return None

    def collect(node: Any, path: tuple, out: List[tuple], skip_runs: bool) -> None:
        if isinstance(node, dict):
            if num(node, "cpu_us_per_msg", "cpu_us_per_datagram", "cpu_us_per_dgram",
                   "cpu_us_per_op", "cpu_us") is not None:
                out.append((path, node))
                return
            for k, v in node.items():
                if k in ("meta", "metadata", "failures", "notes", "ratios", "loadgen") or \
                        (skip_runs and k == "runs"):
                    continue
                collect(v, path + (str(k),), out, skip_runs)
        elif isinstance(node, list):
            for v in node:
                collect(v, path, out, skip_runs)

    found: List[tuple] = []
    collect(doc, (), found, skip_runs=True)
    if not found:
        collect(doc, (), found, skip_runs=False)
    grouped: Dict[tuple, List[dict]] = {}
    for path, node in found:
        server = node.get("server") or node.get("kind")
        if not isinstance(server, str):
            server = next((k for k in reversed(path) if k in KNOWN_SERVERS), None)
        if not server:
            continue
        scen = node.get("scenario") or node.get("name")
        if not isinstance(scen, str) or scen == server:
            scen = next((k for k in reversed(path)
                         if k not in KNOWN_SERVERS and k not in _GENERIC_KEYS and k != "runs"),
                        "udp")
        name = scen if scen.startswith("udp") else f"udp-{scen}"
        row = {"cpu_us_per_op": num(node, "cpu_us_per_msg", "cpu_us_per_datagram",
                                    "cpu_us_per_dgram", "cpu_us_per_op", "cpu_us"),
               "ops_per_s": num(node, "msgs_per_s", "datagrams_per_s", "dgrams_per_s",
                                "ops_per_s", "rate"),
               "lat_p50_us": num(node, "lat_p50_us", "p50_us"),
               "lat_p99_us": num(node, "lat_p99_us", "p99_us"),
               "lat_p999_us": num(node, "lat_p999_us", "p999_us"),
               "server_cpu_frac": num(node, "server_cpu_frac"),
               "gen_cpu_frac": num(node, "gen_busy_frac", "gen_cpu_frac"),
               "foreign_frac_server_cpu": num(node, "foreign_frac_server_cpu"),
               "foreign_frac_gen_cpu": num(node, "foreign_frac_gen_cpu"),
               "errors": int(num(node, "errors") or 0),
               "rounds": int(num(node, "rounds") or 1)}
        grouped.setdefault((name, server), []).append(row)
    rows = []
    for (name, server), rs in grouped.items():
        row = {k: median(r[k] for r in rs) for k in rs[0] if k not in ("errors", "rounds")}
        row.update(scenario=name, server=server, errors=sum(r["errors"] for r in rs),
                   round=1, udp_rounds=len(rs) if len(rs) > 1 else rs[0]["rounds"])
        rows.append(row)
    return rows


def run_udp(ctx: Ctx, servers: Optional[List[str]], reporter: "Reporter") -> tuple:
    """Run bench/udp.py once; (rows, skipped reason or None, its JSON path).

    Its windows follow this suite's profile (where udp.py has the options), its
    output lines are shown as progress, and it runs with the CPU affinity this
    suite started with, so that it pins its own server and generator.
    """
    reporter.step("udp", "bench/udp.py", 1)
    why, help_text = udp_help()
    if why:
        return [], why, None
    p = ctx.profile
    path = os.path.join(ctx.workdir, "udp.json")
    argv = [sys.executable, UDP_PY, "--json", path]
    for flag, value in (("--rounds", p.udp_rounds), ("--warmup", p.echo.warmup),
                        ("--duration", p.echo.duration)):
        if flag in help_text:
            argv += [flag, f"{value:g}"]
    if servers:
        # The option's own help line, not the usage line (whose tail would find
        # the "(default all)" of --scenario).
        m = re.search(r"--servers SERVERS\s+[^(]*\(default\s+([\w,-]+)\)", help_text)
        known = m.group(1).split(",") if m else None
        chosen = [s for s in servers if known is None or s in known]
        if not chosen:
            return [], "none of --servers is a server of bench/udp.py", None
        argv += ["--servers", ",".join(chosen)]
    budget = 90 if ctx.quick else 240
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, cwd=REPO_ROOT, start_new_session=True,
                            preexec_fn=child_setup(ctx.all_cpus), close_fds=True)
    lines: List[str] = []
    try:
        import selectors
        sel = selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ)
        buf = b""
        deadline = t0 + budget
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return [], f"bench/udp.py did not finish within {budget} s", None
            if not sel.select(min(left, 1.0)):
                continue
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                break
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                text = line.decode(errors="replace").rstrip()
                lines.append(text)
                if text.startswith("["):  # one line per run
                    reporter.note(f"    udp.py {text}")
        sel.close()
        proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        return [], f"bench/udp.py did not exit within {budget} s", None
    finally:
        if proc.poll() is None:
            kill_group(proc)
        proc.stdout.close()
    if proc.returncode not in (0, 1) or not os.path.isfile(path):
        tail = " | ".join(lines[-4:])[-300:]
        return [], f"bench/udp.py failed (exit {proc.returncode}): {tail}", None
    try:
        with open(path) as f:
            doc = json.load(f)
    except (OSError, ValueError) as e:
        return [], f"bench/udp.py wrote unreadable JSON: {e}", None
    rows = _udp_rows(doc)
    if servers:
        rows = [r for r in rows if r["server"] in servers]
    if not rows:
        return [], "bench/udp.py's JSON has no per-server CPU figure this suite understands", None
    reporter.done(f"bench/udp.py done in {time.monotonic() - t0:.0f} s, {len(rows)} results"
                  + (f" (exit {proc.returncode})" if proc.returncode else ""))
    keep = os.path.join(RESULTS_DIR, f"udp-from-suite-{time.strftime('%Y%m%d-%H%M%S')}.json")
    try:
        os.makedirs(RESULTS_DIR, exist_ok=True)
        shutil.copyfile(path, keep)
    except OSError:
        keep = None
    return rows, None, keep


# ---------------------------------------------------------------------------- progress


class Reporter:
    """Progress display: a rich progress bar, or one plain line per run."""

    def __init__(self, total: int, use_rich: bool):
        self.total, self.n = total, 0
        self.progress = None
        if use_rich and sys.stdout.isatty():
            try:
                from rich.progress import (BarColumn, MofNCompleteColumn, Progress, SpinnerColumn,
                                           TextColumn, TimeElapsedColumn)
            except ImportError:
                pass
            else:
                # A slow refresh: the display thread shares the load generators' CPU.
                self.progress = Progress(SpinnerColumn(), TextColumn("{task.description:<40}"),
                                         BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                                         refresh_per_second=2)
                self.task = self.progress.add_task("starting", total=total)
                self.progress.start()

    def step(self, case: str, server: str, rnd: int) -> None:
        self.n += 1
        self.label = f"[{self.n}/{self.total}] {case:<13} {server:<12} r{rnd}"
        if self.progress is not None:
            self.progress.update(self.task, description=f"{case} · {server} · round {rnd}")

    def done(self, text: str, advance: bool = True) -> None:
        line = f"{self.label}: {text}" if advance else text
        if self.progress is not None:
            self.progress.console.print(line, highlight=False, markup=False)
            if advance:
                self.progress.advance(self.task)
        else:
            print(line, flush=True)

    def failed(self, error: str) -> None:
        self.done(f"FAILED: {(error.splitlines() or [''])[0][:200]}")

    def note(self, text: str) -> None:
        if self.progress is not None:
            self.progress.console.print(text, highlight=False, markup=False)
        else:
            print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()


# ---------------------------------------------------------------------------- summary


def summarize(runs: List[dict]) -> Dict[str, Dict[str, dict]]:
    """Median over rounds per (scenario, server), with the ratios to uvloop."""
    grouped: Dict[tuple, List[dict]] = {}
    for r in runs:
        grouped.setdefault((r["scenario"], r["server"]), []).append(r)
    table: Dict[str, Dict[str, dict]] = {}
    for (scen, server), rs in grouped.items():
        row: Dict[str, Any] = {"rounds": len(rs), "unit": rs[0]["unit"],
                               "errors": sum(r.get("errors") or 0 for r in rs)}
        for k in ("cpu_us_per_op", "ops_per_s", "lat_p50_us", "lat_p99_us", "lat_p999_us",
                  "server_cpu_frac", "gen_cpu_frac", "foreign_frac_server_cpu",
                  "foreign_frac_gen_cpu", "bytes_per_conn", "bytes_per_conn_pss"):
            row[k] = median(r.get(k) for r in rs)
        cpus = [r["cpu_us_per_op"] for r in rs if r.get("cpu_us_per_op") is not None]
        if len(cpus) > 1:
            row["cpu_us_per_op_min"], row["cpu_us_per_op_max"] = min(cpus), max(cpus)
        for k in ("non_2xx", "socket_errors"):
            if any(k in r for r in rs):
                row[k] = sum(r.get(k) or 0 for r in rs)
        table.setdefault(scen, {})[server] = row
    for scen, rows in table.items():
        key = "bytes_per_conn" if rows and next(iter(rows.values()))["unit"] == "B/conn" \
            else "cpu_us_per_op"
        base = rows.get(BASELINE, {}).get(key)
        for server, row in rows.items():
            v = row.get(key)
            row["vs_uvloop"] = v / base if (v is not None and base) else None
    return table


def _order(table_rows: Dict[str, dict]) -> List[str]:
    return sorted(table_rows, key=lambda s: (SERVER_ORDER.index(s) if s in SERVER_ORDER
                                             else len(SERVER_ORDER), s))


def _scenario_order(table: dict) -> List[str]:
    known = [c for c in CASES if c in table and c != "udp"]
    udp = sorted(s for s in table if s.startswith("udp"))
    rest = sorted(s for s in table if s not in known and s not in udp)
    # udp results sit where the udp case is in CASES (after the echo group).
    out: List[str] = []
    for c in CASES:
        if c == "udp":
            out += udp
        elif c in table:
            out.append(c)
    return out + rest


def notes_for(table: dict, skipped: List[dict], failures: List[dict]) -> List[str]:
    notes = []
    for s in skipped:
        notes.append(f"skipped {s['what']}: {s['reason']}")
    for f in failures:
        notes.append(f"FAILED {f['scenario']}/{f['server']} round {f['round']}: "
                     f"{f['error'].splitlines()[0][:200]}")
    for scen in _scenario_order(table):
        for server, row in table[scen].items():
            if row.get("errors"):
                what = ""
                if "non_2xx" in row:
                    what = f" ({row['non_2xx']} non-2xx, {row['socket_errors']} socket errors)"
                notes.append(f"{scen}/{server}: {row['errors']} errors{what}")
            other = row.get("foreign_frac_server_cpu") or 0.0
            other_gen = row.get("foreign_frac_gen_cpu") or 0.0
            if other > 0.05 or other_gen > 0.15:
                notes.append(f"{scen}/{server}: other processes used {other:.0%} of the server's CPU "
                             f"and {other_gen:.0%} of the load generator's during the run")
            srv = row.get("server_cpu_frac")
            if srv is not None and srv < 0.80 and row["unit"] != "B/conn":
                gen = row.get("gen_cpu_frac")
                why = ("the load generator looks like the limit" if gen and gen > 0.9
                       else "latency-bound or disturbed")
                notes.append(f"{scen}/{server}: server only {srv:.0%} busy ({why}); its CPU/"
                             f"{row['unit']} is not at saturation")
    for scen, (peer, target) in TARGETS.items():
        rows = table.get(scen, {})
        ours, theirs = rows.get("netreactor"), rows.get(peer)
        if ours and theirs and ours.get("ops_per_s") and theirs.get("ops_per_s"):
            ratio = ours["ops_per_s"] / theirs["ops_per_s"]
            verdict = "meets" if ratio >= target else "MISSES"
            notes.append(f"{scen}: netreactor does {ratio:.2f}x {peer}'s throughput: {verdict} the "
                         f">= {target}x target (issue 6)")
    return notes


# ---------------------------------------------------------------------------- rendering


def _fmt_num(v: Optional[float], digits: int = 2) -> str:
    if v is None:
        return "-"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.{digits}f}"


def _fmt_rate(v: Optional[float]) -> str:
    if v is None:
        return "-"
    if v >= 1e6:
        return f"{v / 1e6:.2f}M"
    if v >= 1e3:
        return f"{v / 1e3:.1f}k"
    return f"{v:.0f}"


def _fmt_lat(v: Optional[float]) -> str:
    if v is None:
        return "-"
    if v >= 10_000:
        return f"{v / 1000:.0f} ms"
    if v >= 1000:
        return f"{v / 1000:.1f} ms"
    return f"{v:.0f}"


def _n(count: Any, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def _pct(v: Optional[float]) -> str:
    return "-" if v is None else f"{v:.0%}"


def detail_rows(table: dict) -> tuple:
    head = ["scenario", "server", "CPU µs/op", "÷uvloop", "ops/s", "p50 µs", "p99 µs",
            "p99.9 µs", "srv CPU", "other load", "errors"]
    rows, mem_rows = [], []
    for scen in _scenario_order(table):
        for server in _order(table[scen]):
            row = table[scen][server]
            ratio = "-" if row.get("vs_uvloop") is None else f"{row['vs_uvloop']:.2f}"
            if row["unit"] == "B/conn":
                mem_rows.append([scen, server, _fmt_num(row.get("bytes_per_conn")),
                                 _fmt_num(row.get("bytes_per_conn_pss")), ratio,
                                 str(row.get("errors") or 0)])
                continue
            cpu = _fmt_num(row.get("cpu_us_per_op"))
            rows.append([f"{scen} (/{row['unit']})", server, cpu, ratio,
                         _fmt_rate(row.get("ops_per_s")), _fmt_lat(row.get("lat_p50_us")),
                         _fmt_lat(row.get("lat_p99_us")), _fmt_lat(row.get("lat_p999_us")),
                         _pct(row.get("server_cpu_frac")),
                         f"{_pct(row.get('foreign_frac_server_cpu'))}/"
                         f"{_pct(row.get('foreign_frac_gen_cpu'))}",
                         str(row.get("errors") or 0)])
    mem_head = ["scenario", "server", "RSS B/conn", "PSS B/conn", "÷uvloop", "errors"]
    return head, rows, mem_head, mem_rows


def print_report(doc: dict, use_rich: bool) -> None:
    table = doc["summary"]
    head, rows, mem_head, mem_rows = detail_rows(table)
    title = ("Server CPU per operation (median of rounds; lower is better), throughput and "
             "client-side latency")
    mem_title = "Server memory per idle connection"
    for t_title, t_head, t_rows in ((title, head, rows), (mem_title, mem_head, mem_rows)):
        print_table(t_title, t_head, t_rows, use_rich, width=130, sections=True, bold="netreactor")
    print()
    for n in doc.get("notes", []):
        print(f"note: {n}")


def machine_line(meta: dict) -> str:
    return (f"{meta.get('cpu_model') or 'unknown CPU'}, {meta.get('cpus')} CPUs, Linux "
            f"{meta.get('kernel')}, {meta.get('implementation', 'CPython')} {meta.get('python')}")


def _disturbed(row: dict) -> bool:
    return ((row.get("foreign_frac_server_cpu") or 0) > 0.10
            or (row.get("foreign_frac_gen_cpu") or 0) > 0.15)


def readme_block(doc: dict) -> str:
    """Markdown for README.md: the machine, then pivot tables (scenario x server)."""
    meta, table = doc["meta"], doc["summary"]
    scen_order = _scenario_order(table)
    servers = [s for s in SERVER_ORDER if any(s in table[sc] for sc in scen_order)]
    servers += sorted({s for sc in scen_order for s in table[sc]} - set(servers))
    date = meta.get("timestamp", "")[:10]
    pin = (f"servers pinned to CPU {meta['server_cpu']}, load generators to CPU "
           f"{','.join(map(str, meta['gen_cpus']))}" if meta.get("server_cpu") is not None
           else "no CPU pinning (fewer than 2 CPUs)")
    lines = [
        f"Latest full run of `netreactor bench` ({date}) on {machine_line(meta)}; {pin}; "
        f"{_n(meta.get('echo_rounds'), 'round')} per echo scenario, {meta.get('rounds')} per "
        f"UDP, RESP and HTTP scenario (medians), {meta.get('wall_s', 0):.0f} s in all"
        + (f", git {meta['git_rev']}" if meta.get("git_rev") else "") + ".",
        f"Other load on the machine while it ran: {meta.get('other_load_note', 'not measured')}"
        + (f" (it waited {meta['waited_for_quiet_s']:.0f} s in all for quieter moments)"
           if meta.get("waited_for_quiet_s") else "") + ".",
        "",
        "**Server CPU time per operation**, µs (lower is better), and in brackets the ratio to "
        "uvloop's; idle: server memory per idle connection, bytes.",
        "",
        "| scenario | per | " + " | ".join(servers) + " |",
        "|---|---|" + "---:|" * len(servers),
    ]
    disturbed: List[str] = []
    for sc in scen_order:
        rows = table[sc]
        unit = next(iter(rows.values()))["unit"]
        cells = []
        for s in servers:
            row = rows.get(s)
            if row is None:
                cells.append("")
                continue
            v = row.get("bytes_per_conn") if unit == "B/conn" else row.get("cpu_us_per_op")
            cell = _fmt_num(v)
            if row.get("vs_uvloop") is not None and s != BASELINE:
                cell += f" ({row['vs_uvloop']:.2f}×)"
            if s == "netreactor":
                cell = f"**{cell}**"
            cells.append(cell)
        per = "idle conn" if unit == "B/conn" else unit
        hit = [srv for srv, row in rows.items() if _disturbed(row)]
        if hit:
            disturbed.append(f"{sc} ({', '.join(_order({h: 0 for h in hit}))})")
        lines.append(f"| {sc}{' †' if hit else ''} | {per} | " + " | ".join(cells) + " |")
    if disturbed:
        lines += ["", "† other processes took more than 10% of the server's CPU or 15% of the load "
                  "generator's (median over rounds) in: " + "; ".join(disturbed) + ". Those "
                  "figures are less reliable (an unsaturated server spends more CPU per operation)."]
    lines += ["", "**Throughput** (operations/s) · **latency** p50 / p99 as the load generator "
              "saw it (µs unless marked; loadgen.c and wrk: per request or pipelined batch, "
              "redis-benchmark: the slower of SET and GET).", "",
              "| scenario | " + " | ".join(servers) + " |",
              "|---|" + "---:|" * len(servers)]
    for sc in scen_order:
        rows = table[sc]
        if next(iter(rows.values()))["unit"] == "B/conn":
            continue
        cells = []
        for s in servers:
            row = rows.get(s)
            if row is None:
                cells.append("")
                continue
            cell = _fmt_rate(row.get("ops_per_s"))
            if row.get("lat_p50_us") is not None or row.get("lat_p99_us") is not None:
                cell += (f" · {_fmt_lat(row.get('lat_p50_us'))} / "
                         f"{_fmt_lat(row.get('lat_p99_us'))}")
            if row.get("errors"):
                cell += f" ({row['errors']} err)"
            cells.append(f"**{cell}**" if s == "netreactor" else cell)
        lines.append(f"| {sc} | " + " | ".join(cells) + " |")
    notes = [n for n in doc.get("notes", []) if "target" in n or n.startswith("skipped")]
    if notes:
        lines += [""] + [f"- {n}" for n in notes]
    lines += ["", "Scenarios and method: [bench/README.md](bench/README.md). Only ratios within "
              "one run compare well; the machine is a shared VM."]
    return "\n".join(lines)


def write_readme(doc: dict, path: str = README) -> None:
    with open(path) as f:
        text = f.read()
    a, b = text.find(MARK_BEGIN), text.find(MARK_END)
    if a < 0 or b < 0 or b < a:
        raise SystemExit(f"error: {path} has no {MARK_BEGIN} ... {MARK_END} markers")
    new = text[:a + len(MARK_BEGIN)] + "\n" + readme_block(doc) + "\n" + text[b:]
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(new)
    os.replace(tmp, path)


def write_chart(doc: dict, path: str) -> Optional[str]:
    """Grouped bars: CPU per operation / uvloop's, per scenario. None if no matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    table = doc["summary"]
    scens = [s for s in _scenario_order(table) if any(r.get("vs_uvloop") for r in table[s].values())]
    servers = [s for s in SERVER_ORDER if s != BASELINE and
               any(table[sc].get(s, {}).get("vs_uvloop") for sc in scens)]
    if not scens or not servers:
        return None
    fig, ax = plt.subplots(figsize=(max(8, 1.1 * len(scens) + 2), 4.8), dpi=110)
    colors = {s: f"C{i}" for i, s in enumerate(servers)}
    most = max(sum(1 for s in servers if table[sc].get(s, {}).get("vs_uvloop")) for sc in scens)
    width = 0.8 / most
    labelled = set()
    for j, sc in enumerate(scens):
        present = [s for s in servers if table[sc].get(s, {}).get("vs_uvloop")]
        for i, s in enumerate(present):
            v = table[sc][s]["vs_uvloop"]
            x = j + (i - (len(present) - 1) / 2) * width
            ax.bar([x], [v], width, color=colors[s], zorder=3,
                   label=None if s in labelled else s)
            labelled.add(s)
            if s == "netreactor":
                ax.annotate(f"{v:.2f}", (x, v), ha="center", va="bottom", fontsize=7,
                            xytext=(0, 2), textcoords="offset points")
    ax.axhline(1.0, color="black", linewidth=1, zorder=4)
    ax.set_yscale("log")
    ax.set_xticks(range(len(scens)))
    ax.set_xticklabels([f"{sc}\n(/{next(iter(table[sc].values()))['unit']})".replace("/B/conn", "mem")
                        for sc in scens], fontsize=8)
    ax.set_ylabel("server CPU per operation ÷ uvloop's (log)\nidle: memory per connection")
    meta = doc["meta"]
    ax.set_title(f"netreactor bench{' --quick' if meta.get('quick') else ''} "
                 f"{meta.get('timestamp', '')[:16]} — below 1: less than uvloop", fontsize=10)
    ax.grid(axis="y", which="both", alpha=0.3, zorder=0)
    ax.legend(fontsize=8, ncol=min(len(servers), 6))
    from matplotlib.ticker import FuncFormatter
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if v in (0.5, 2, 3, 5) else ""))
    fig.text(0.01, 0.01, machine_line(meta), fontsize=7, alpha=0.7)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(path)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------- metadata


def _metadata(ctx: Ctx, servers_ok: Dict[str, List[str]]) -> dict:
    def tool_version(argv: List[str]) -> Optional[str]:
        if not shutil.which(argv[0]):
            return None
        try:
            r = subprocess.run(argv, capture_output=True, text=True, timeout=5)
            return (r.stdout or r.stderr).strip().splitlines()[0][:80]
        except (OSError, subprocess.TimeoutExpired, IndexError):
            return None

    p = ctx.profile
    return {
        **machine_meta(), "quick": ctx.quick, "server_cpu": ctx.server_cpu,
        "gen_cpus": ctx.gen_cpus, "loadgen": ctx.loadgen_kind,
        "echo_rounds": p.echo.rounds, "warmup": p.echo.warmup, "duration": p.echo.duration,
        "idle_conns": p.idle_conns, "tls_idle_conns": p.tls_idle_conns, "rounds": p.rounds, "resp_requests": p.resp_requests,
        "wrk_seconds": p.wrk_seconds, "udp_rounds": p.udp_rounds, "servers": servers_ok,
        "versions": {d: package_version(d) for d in ("uvloop", "gevent", "twisted", "uvicorn",
                                             "httptools", "rich", "matplotlib")},
        "tools": {"redis-server": tool_version(["redis-server", "--version"]),
                  "redis-benchmark": tool_version(["redis-benchmark", "--version"]),
                  "wrk": tool_version(["wrk", "--version"])},
        "loadavg_start": os.getloadavg(),
    }


# ---------------------------------------------------------------------------- main


def _select(only: Optional[List[str]]) -> List[Case]:
    if not only:
        return list(CASES.values())
    out: List[Case] = []
    for item in only:
        for part in item.split(","):
            part = part.strip()
            if not part:
                continue
            if part in GROUPS:
                hits = [c for c in CASES.values() if c.group == part]
            elif part in CASES:
                hits = [CASES[part]]
            else:
                hits = [c for n, c in CASES.items() if n.startswith(part)]
                if len(hits) != 1:
                    raise SystemExit(f"error: {part!r} is {'ambiguous' if hits else 'unknown'}; "
                                     f"choose from groups {', '.join(GROUPS)} or cases "
                                     f"{', '.join(CASES)}")
            out += [c for c in hits if c not in out]
    return out


def _check_servers() -> Dict[str, Dict[str, Optional[str]]]:
    r = subprocess.run([sys.executable, SERVERS_PY, "--check-all"], capture_output=True,
                       text=True, timeout=60, cwd=REPO_ROOT)
    try:
        return json.loads(r.stdout)
    except ValueError:
        why = (r.stderr or r.stdout).strip()[-300:] or "servers.py --check-all failed"
        return {k: {p: why for p in ("echo", "framed", "resp", "http")} for k in ECHO_KINDS}


def _have_uvicorn() -> Optional[str]:
    import importlib.util
    missing = [m for m in ("uvicorn", "uvloop", "httptools") if importlib.util.find_spec(m) is None]
    return f"not installed: {', '.join(missing)} (pip install uvicorn uvloop httptools)" \
        if missing else None


RUNNERS = {"echo": run_echo, "tls": run_tls, "resp": run_resp, "http": run_http}


def plan(cases: List[Case], wanted: Optional[List[str]], loadgen_kind: str,
         tls_why: Optional[str] = None) -> tuple:
    """{case: [servers]} and the skipped list, from what this machine has.

    ``tls_why``: why the TLS load generator cannot be built, if it cannot.
    """
    checks = _check_servers()
    skipped: List[dict] = []
    out: Dict[str, List[str]] = {}
    for case in cases:
        if case.group == "udp":
            continue
        if case.group == "tls" and tls_why:
            skipped.append({"what": case.name, "reason": tls_why})
            continue
        if case.group == "echo" and loadgen_kind == "python" and case.name in E.C_ONLY_SCENARIOS:
            skipped.append({"what": case.name, "reason": "needs loadgen.c (no C compiler)"})
            continue
        tool = {"resp": "redis-benchmark", "http": "wrk"}.get(case.group)
        if tool and not shutil.which(tool):
            pkg = "redis-tools" if tool == "redis-benchmark" else "wrk"
            skipped.append({"what": case.name, "reason": f"{tool} not installed (Debian package {pkg})"})
            continue
        proto = {"echo": "framed" if E.SCENARIOS.get(case.name) and
                 E.SCENARIOS[case.name].proto == "framed" else "echo",
                 "tls": "echo", "resp": "resp", "http": "http"}[case.group]
        servers = []
        for s in case.servers:
            if wanted is not None and s not in wanted:
                continue
            if s == "redis-server":
                why = None if shutil.which("redis-server") else \
                    "redis-server not installed (Debian package redis-server)"
            elif s == "uvicorn":
                why = _have_uvicorn()
            elif case.group == "tls":
                why = checks.get(f"{s}-tls", {}).get("echo", f"unknown server {s}-tls")
            else:
                why = checks.get(s, {}).get(proto, f"unknown server {s}")
            if why:
                skipped.append({"what": f"{case.name}/{s}", "reason": why})
            else:
                servers.append(s)
        if servers:
            out[case.name] = servers
    return out, skipped


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(
        prog="netreactor bench",
        description="netreactor's benchmark suite: server CPU per operation, throughput and "
                    "latency against uvloop, asyncio, gevent, Twisted, redis-server and uvicorn, "
                    "in one run. Other suites: 'netreactor bench echo|protocols|workers ...'.")
    ap.add_argument("--quick", action="store_true", help="short windows, one round (< 1 minute)")
    ap.add_argument("--only", nargs="+", metavar="NAME",
                    help=f"groups ({', '.join(GROUPS)}) or cases ({', '.join(CASES)}) to run")
    ap.add_argument("--servers", help="comma-separated servers to include (default: all available)")
    ap.add_argument("--rounds", type=int, help="rounds per scenario (echo, UDP, RESP, HTTP)")
    ap.add_argument("--duration", type=float, help="echo and UDP: measured seconds per run")
    ap.add_argument("--warmup", type=float, help="echo and UDP: warm-up seconds per run")
    ap.add_argument("--json", metavar="PATH",
                    help="where to save the results (default bench/results/suite-<timestamp>.json)")
    ap.add_argument("--plain", action="store_true", help="plain text even if rich is installed")
    ap.add_argument("--wait-quiet", type=float, default=0.0, metavar="S",
                    help="before each echo/RESP/HTTP run, wait up to S seconds until other "
                         "processes leave the pinned CPUs (< 10%% busy) -- for shared machines "
                         "(default: no wait; the total wait is capped at 10 x S)")
    ap.add_argument("--no-chart", action="store_true", help="do not draw the PNG chart")
    ap.add_argument("--write-readme", action="store_true",
                    help="write the table and machine into README.md between the bench-table "
                         "markers (full runs only)")
    ap.add_argument("--report", metavar="JSON",
                    help="do not run: print (and with --write-readme, publish) a saved result")
    args = ap.parse_args(argv)

    if args.report:
        with open(args.report) as f:
            doc = json.load(f)
        print_report(doc, use_rich=not args.plain)
        return _publish(doc, args, args.report)

    base = QUICK if args.quick else FULL
    profile = dataclasses.replace(base, echo=dataclasses.replace(base.echo))
    if args.rounds is not None:
        profile.echo.rounds = profile.rounds = profile.udp_rounds = max(1, args.rounds)
    if args.duration is not None:
        profile.echo.duration = args.duration
    if args.warmup is not None:
        profile.echo.warmup = args.warmup
    if not (0 < profile.echo.duration <= 60 and 0 <= profile.echo.warmup <= 60):
        ap.error("--duration must be in (0, 60] and --warmup in [0, 60]")
    wanted = [s.strip() for s in args.servers.split(",")] if args.servers else None

    all_cpus = sorted(os.sched_getaffinity(0))
    server_cpu, gen_cpus = _cpu_layout()
    if server_cpu is not None:
        os.sched_setaffinity(0, set(gen_cpus))  # the harness stays off the server's CPU
    else:
        print("WARNING: fewer than 2 CPUs: nothing pinned, servers and load generators share",
              file=sys.stderr)
    ctx = Ctx(profile, server_cpu, gen_cpus, quick=args.quick, all_cpus=all_cpus)
    started = time.monotonic()
    cases = _select(args.only)
    loadgen, ctx.loadgen_kind, cc = build_loadgen("auto")
    ctx.echo_ctx = E.Ctx(loadgen, server_cpu, gen_cpus[0] if gen_cpus else None,
                         dataclasses.replace(profile.echo, rounds=1), profile.idle_conns)
    tls_why = None
    if any(c.group == "tls" for c in cases):
        ctx.tls_loadgen, tls_why = T.build_loadgen()
        tls_why = None if ctx.tls_loadgen else tls_why
    matrix, skipped = plan(cases, wanted, ctx.loadgen_kind, tls_why)
    want_udp = any(c.group == "udp" for c in cases)
    total = sum(len(s) * _rounds_of(CASES[c], profile) for c, s in matrix.items()) + \
        (1 if want_udp else 0)
    meta = _metadata(ctx, matrix)
    meta["compiler"] = cc
    json_path = args.json or os.path.join(RESULTS_DIR, f"suite-{time.strftime('%Y%m%d-%H%M%S')}.json")

    raise_on_sigterm()
    print(f"netreactor bench{' --quick' if args.quick else ''}: {_n(total, 'run')}; server on CPU "
          f"{server_cpu}, load generators on CPU {','.join(map(str, gen_cpus or []))}; "
          f"echo {_n(profile.echo.rounds, 'round')} of {profile.echo.warmup:g}+"
          f"{profile.echo.duration:g} s, UDP {profile.udp_rounds}, RESP/HTTP {profile.rounds}",
          flush=True)
    for s in skipped:
        print(f"skipping {s['what']}: {s['reason']}", file=sys.stderr)

    done = Rounds()
    runs: List[dict] = []  # in the order of the cases
    udp_json = None
    waited_total = 0.0
    reporter = Reporter(total, use_rich=not args.plain)

    def measured(server: str, case: Case) -> dict:
        """One run of ``case`` on ``server``, stamped with what the summary needs."""
        nonlocal waited_total
        waited = 0.0
        if args.wait_quiet:
            waited = wait_quiet(ctx, min(args.wait_quiet, 10 * args.wait_quiet - waited_total))
            waited_total += waited
        t_run = time.monotonic() - started
        res = RUNNERS[case.group](ctx, case, server)
        res.update(scenario=case.name, server=server, unit=case.unit, t_start=round(t_run, 2))
        if args.wait_quiet:
            res["waited_for_quiet_s"] = round(waited, 2)
        return res

    try:
        with tempfile.TemporaryDirectory(prefix="nr-bench-") as workdir:
            ctx.workdir = workdir
            with open(os.path.join(workdir, "plaintext_app.py"), "w") as f:
                f.write(ASGI_APP)
            with open(os.path.join(workdir, "done.lua"), "w") as f:
                f.write(WRK_DONE_LUA)
            with open(os.path.join(workdir, "pipeline16.lua"), "w") as f:
                f.write(WRK_PIPELINE_LUA)
            for case in cases:
                if done.interrupted:
                    break
                if case.group == "udp":
                    rows, why, udp_json = run_udp(ctx, wanted, reporter)
                    if why:
                        skipped.append({"what": "udp", "reason": why})
                        reporter.done(f"skipped: {why}")
                    for r in rows:
                        r.update(unit="datagram", round=r.get("round") or 1)
                        runs.append(r)
                    continue
                servers = matrix.get(case.name)
                if servers:
                    # One failed run must not cost the others: any error is recorded.
                    run_rounds([case], servers, _rounds_of(case, profile), measured, _run_line,
                               reporter, errors=(Exception,), into=done)
                    runs += [r for s in servers for r in done.runs.get((case.name, s), [])]
    except (KeyboardInterrupt, Interrupted):  # between runs (inside one, run_rounds says it)
        done.interrupted = True
        reporter.note("interrupted: servers stopped; reporting what was measured")
    finally:
        reporter.close()
    failures, interrupted = done.failures, done.interrupted

    table = summarize(runs)
    meta["wall_s"] = round(time.monotonic() - started, 1)
    meta["loadavg_end"] = os.getloadavg()
    meta["other_load_note"] = _other_load_note(runs)
    meta["waited_for_quiet_s"] = round(waited_total, 1)
    doc = {"suite": "netreactor-bench", "meta": meta, "interrupted": interrupted,
           "summary": table, "notes": notes_for(table, skipped, failures), "skipped": skipped,
           "failures": failures, "udp_json": udp_json, "runs": runs}
    print_report(doc, use_rich=not args.plain)
    save_json(json_path, doc, indent=1, default=str)
    print(f"saved {os.path.relpath(json_path)} ({meta['wall_s']:.0f} s)")
    rc = _publish(doc, args, json_path)
    if interrupted:
        return 130
    return rc or (1 if failures else 0)


def _rounds_of(case: Case, profile: SuiteProfile) -> int:
    """Rounds of a case: echo's rounds (one for idle memory), else the RESP/HTTP rounds."""
    if case.group == "echo":
        return 1 if E.SCENARIOS[case.name].mode == "idle" else profile.echo.rounds
    if case.group == "tls":
        return 1 if case.unit == "B/conn" else profile.echo.rounds
    return profile.rounds


def _other_load_note(runs: List[dict]) -> str:
    srv = [r["foreign_frac_server_cpu"] for r in runs if r.get("foreign_frac_server_cpu") is not None]
    gen = [r["foreign_frac_gen_cpu"] for r in runs if r.get("foreign_frac_gen_cpu") is not None]
    if not srv:
        return "not measured"
    return (f"median {statistics.median(srv):.0%} (max {max(srv):.0%}) of the server's CPU, "
            f"median {statistics.median(gen):.0%} (max {max(gen):.0%}) of the load generator's, "
            f"over {len(srv)} runs")


def _run_line(r: dict) -> str:
    if r.get("bytes_per_conn") is not None:
        return f"{r['bytes_per_conn']:,.0f} B/conn RSS, {r['conns']:,} conns" + \
            (f", {r['errors']} errors" if r.get("errors") else "")
    other = r.get("foreign_frac_server_cpu")
    return (f"{r['cpu_us_per_op']:6.2f} µs/{r['unit']:<5} {_fmt_rate(r['ops_per_s']):>7}/s  "
            f"p50 {_fmt_lat(r.get('lat_p50_us'))}  p99 {_fmt_lat(r.get('lat_p99_us'))}  "
            f"srv {_pct(r.get('server_cpu_frac'))}"
            + (f"  other load {other:.0%}" if other and other > 0.05 else "")
            + (f"  {r['errors']} errors" if r.get("errors") else ""))


def _publish(doc: dict, args: argparse.Namespace, json_path: str) -> int:
    if not args.no_chart:
        png = os.path.splitext(json_path)[0] + ".png"
        if os.path.dirname(os.path.abspath(png)) != os.path.abspath(RESULTS_DIR) and args.report:
            png = os.path.join(RESULTS_DIR, os.path.basename(png))
        try:
            made = write_chart(doc, png)
        except Exception as e:  # a chart must never cost the results
            print(f"note: chart not drawn: {type(e).__name__}: {e}")
        else:
            if made:
                print(f"chart: {os.path.relpath(made)}")
            else:
                print("note: no chart (pip install matplotlib to get a PNG)")
    if args.write_readme:
        if doc["meta"].get("quick") or doc.get("interrupted"):
            print("not writing README.md: --write-readme publishes full, complete runs only",
                  file=sys.stderr)
            return 2
        write_readme(doc)
        print(f"README.md: table written between {MARK_BEGIN} and {MARK_END}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
