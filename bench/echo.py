"""Echo benchmark: netreactor vs uvloop vs asyncio, measured in one run.

    python3 bench/echo.py [--quick] [--scenario NAME ...]
                          [--servers netreactor,uvloop,asyncio]
                          [--duration S] [--warmup S] [--rounds N] [--json PATH]

Each server (``bench/servers.py KIND``) runs in its own process pinned to one
CPU; the C load generator (``bench/loadgen.c``, compiled on demand into
``bench/_build/``) runs pinned to the other CPU, and so does this harness,
which mostly sleeps.  The main figure is the *server's* CPU time per echoed
message -- utime+stime from ``/proc/PID/stat`` over the measured window divided
by the messages echoed in that window -- in microseconds (per frame for the
framed scenario, per whole connection for the short-connection one).
Throughput is shown beside it.  On a shared, noisy machine only ratios within one run mean much,
so all servers run in the same invocation, interleaved round by round
(A B C, B C A, ...), and the median of the rounds is reported.

Window alignment: the load generator prints ``start`` and ``end`` lines at
the exact instants it opens and closes its counting window; the harness
blocks on those lines and samples the server's CPU as soon as each arrives
(well under a millisecond later, against windows of seconds).  After ``end``
the generator stops sending new requests and keeps its connections open until
the harness has taken its sample and closes the generator's stdin, so neither
extra load nor connection teardown leaks into the measurement.

Results go to ``bench/results/echo-<timestamp>.json`` (or ``--json PATH``).
Load only ever targets 127.0.0.1, every phase has a deadline, and every child
process is killed on exit, error or Ctrl-C.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import selectors
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

HERE = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import _procstat  # noqa: E402  (bench/ helper, needs the path above)
from _common import (cc_version, compile_c, cpu_model, find_cc, free_port, git_rev,  # noqa: E402,F401
                     is_stale, package_version, save_json)

LOADGEN_SRC = os.path.join(HERE, "loadgen.c")
BUILD_DIR = os.path.join(HERE, "_build")
LOADGEN_BIN = os.path.join(BUILD_DIR, "loadgen")
PY_LOADGEN = os.path.join(HERE, "_pyloadgen.py")
SERVERS_PY = os.path.join(HERE, "servers.py")
RESULTS_DIR = os.path.join(HERE, "results")
HOST = "127.0.0.1"  # the only target this benchmark ever loads

DEFAULT_SERVERS = ("netreactor", "uvloop", "asyncio")
IDLE_TARGET_BYTES = 400  # netreactor's goal for memory per idle connection
FRAMED_TARGET_RATIO = 0.8  # issue 3: netreactor <= 0.8x uvloop's CPU per frame


@dataclass(frozen=True)
class Scenario:
    """One workload: what the load generator does, and what the servers speak."""

    name: str
    mode: str  # pingpong | pipeline | idle | short
    conns: int
    depth: int = 1
    size: int = 64
    about: str = ""
    proto: str = "echo"     # servers.py --proto: echo | framed
    frame_header: int = 0   # loadgen --frame-header: length-field bytes at each message's start
    unit: str = "msg"       # what the CPU figure is per: msg | frame | conn


SCENARIOS = {
    s.name: s
    for s in (
        Scenario("pingpong-50", "pingpong", 50, 1, 64, "64 B ping-pong, 50 connections"),
        Scenario("pipeline-50", "pipeline", 50, 16, 64,
                 "64 B messages pipelined 16 deep, 50 connections"),
        Scenario("framed-50", "pipeline", 50, 16, 68,
                 "4-byte length + 64 B payload frames, 16 in flight, 50 connections",
                 proto="framed", frame_header=4, unit="frame"),
        Scenario("pingpong-1000", "pingpong", 1000, 1, 64, "64 B ping-pong, 1,000 connections"),
        Scenario("short-50", "short", 50, 1, 64,
                 "connect, one 64 B echo, close; 50 concurrent clients", unit="conn"),
        Scenario("idle", "idle", 9000, 1, 1, "memory per idle connection (--idle-conns, 9,000)"),
    )
}
# Scenarios the pure-Python fallback generator cannot drive (C-only options).
C_ONLY_SCENARIOS = {"framed-50", "short-50"}


@dataclass
class Profile:
    """Timing knobs; --quick and the full run differ only here."""

    warmup: float
    duration: float
    rounds: int
    settle: float  # pause before reading memory, so the server is at rest


QUICK = Profile(warmup=1.0, duration=3.0, rounds=1, settle=0.5)
FULL = Profile(warmup=2.0, duration=5.0, rounds=3, settle=1.0)


class BenchError(RuntimeError):
    """A run could not be carried out (server died, load generator failed...)."""


class Interrupted(Exception):
    """Raised from the SIGTERM handler so that every ``finally`` runs."""


# --------------------------------------------------------------------------
# child processes
# --------------------------------------------------------------------------
try:
    _libc = ctypes.CDLL(None, use_errno=True)
    _prctl = _libc.prctl
except (OSError, AttributeError):  # not glibc/Linux: no parent-death signal
    _prctl = None


def _child_setup() -> None:
    """In the child, before exec: die with the harness (PR_SET_PDEATHSIG).

    Children run in their own session (so Ctrl-C reaches only the harness,
    which then cleans up in order); the parent-death signal covers the case
    where the harness itself is killed with SIGKILL and cannot clean up.
    """
    if _prctl is not None:
        _prctl(1, signal.SIGTERM)  # 1 == PR_SET_PDEATHSIG


def _spawn(cmd: list[str], **kw) -> subprocess.Popen:
    return subprocess.Popen(cmd, start_new_session=True, preexec_fn=_child_setup,
                            close_fds=True, **kw)


def _kill_group(proc: subprocess.Popen, grace: float = 3.0) -> None:
    """Stop a child we started, and any process it started (its own group)."""
    if proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)  # the child leads its own session/group
        except ProcessLookupError:
            return
        except PermissionError:
            proc.send_signal(sig)
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _tail(path: str, n: int = 2000) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - n))
            return f.read().decode(errors="replace").strip()
    except OSError:
        return ""


class ServerProc:
    """An echo server subprocess (``servers.py KIND``), killed on exit."""

    def __init__(self, kind: str, port: int, cpu: int | None, proto: str = "echo"):
        self.kind, self.port = kind, port
        self.log = tempfile.NamedTemporaryFile(prefix=f"echo-{kind}-", suffix=".log", delete=False)
        cmd = [sys.executable, SERVERS_PY, kind, "--host", HOST, "--port", str(port)]
        if proto != "echo":
            cmd += ["--proto", proto]
        if cpu is not None:
            cmd += ["--cpu", str(cpu)]
        self.proc = _spawn(cmd, stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT)
        self.pid = self.proc.pid

    def wait_ready(self, timeout: float = 20.0) -> None:
        """Poll connect() until the server accepts (or fail if it died)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BenchError(f"{self.kind} server exited with {self.proc.returncode}:\n"
                                 f"{_tail(self.log.name)}")
            try:
                with socket.create_connection((HOST, self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.02)
        raise BenchError(f"{self.kind} server did not accept within {timeout:.0f} s:\n"
                         f"{_tail(self.log.name)}")

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise BenchError(f"{self.kind} server died (exit {self.proc.returncode}):\n"
                             f"{_tail(self.log.name)}")

    def __enter__(self) -> "ServerProc":
        return self

    def __exit__(self, *exc) -> None:
        _stop_keeping_log_on_failure(self.proc, self.log, exc[0], "server")


def _stop_keeping_log_on_failure(proc: subprocess.Popen, log, exc_type, what: str) -> None:
    """Kill ``proc``'s group and close its ``log``; delete the log unless the run failed."""
    _kill_group(proc)
    log.close()
    # Keep the log only when the run failed, for the post-mortem.
    if exc_type is None or issubclass(exc_type, (KeyboardInterrupt, Interrupted)):
        os.unlink(log.name)
    else:
        print(f"  ({what} log kept at {log.name})", file=sys.stderr)


class LoadgenProc:
    """The load generator subprocess and its line protocol on stdout."""

    def __init__(self, argv: list[str]):
        self.err = tempfile.TemporaryFile()
        self.proc = _spawn(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.err)
        self.sel = selectors.DefaultSelector()
        self.sel.register(self.proc.stdout, selectors.EVENT_READ)
        self.buf = b""
        self.events: list[dict] = []

    def _stderr(self) -> str:
        self.err.seek(0)
        return self.err.read().decode(errors="replace").strip()[-2000:]

    def expect(self, name: str, timeout: float) -> dict:
        """Block until the event ``name`` arrives; fail on anything else."""
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while True:
            while b"\n" in self.buf:
                line, self.buf = self.buf.split(b"\n", 1)
                try:
                    ev = json.loads(line)
                except ValueError:
                    raise BenchError(f"loadgen printed garbage: {line[:200]!r}") from None
                self.events.append(ev)
                if ev.get("event") == name:
                    return ev
                if ev.get("event") == "result":
                    raise BenchError(f"loadgen ended before {name!r}: {ev}\n{self._stderr()}")
            left = deadline - time.monotonic()
            if left <= 0:
                raise BenchError(f"timed out waiting for loadgen {name!r}\n{self._stderr()}")
            if self.sel.select(left):
                chunk = os.read(fd, 65536)
                if not chunk:
                    self.proc.wait(5)
                    raise BenchError(f"loadgen exited ({self.proc.returncode}) before "
                                     f"{name!r}\n{self._stderr()}")
                self.buf += chunk

    def release(self) -> None:
        """Let the generator close its connections and print its result."""
        try:
            self.proc.stdin.close()
        except OSError:
            pass

    def close(self) -> None:
        self.release()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            pass
        _kill_group(self.proc, grace=1.0)
        self.sel.close()
        self.proc.stdout.close()
        self.err.close()


# --------------------------------------------------------------------------
# load generator build
# --------------------------------------------------------------------------
def build_loadgen(choice: str) -> tuple[list[str], str, str]:
    """Return (command prefix, kind "c"/"python", compiler description).

    Compile ``loadgen.c`` with ``cc -O2`` when the binary is missing or older
    than its source; fall back to the Python generator (with a warning) when
    there is no compiler or the build fails.
    """
    if choice != "python":
        cc = find_cc()
        if cc:
            if is_stale(LOADGEN_BIN, LOADGEN_SRC):
                r = compile_c(cc, LOADGEN_SRC, LOADGEN_BIN)
                if r.returncode == 0:
                    print(f"built {os.path.relpath(LOADGEN_BIN)} with {cc} -O2")
                else:
                    print(f"WARNING: building loadgen.c failed:\n{r.stderr}", file=sys.stderr)
            if not is_stale(LOADGEN_BIN, LOADGEN_SRC):
                return [LOADGEN_BIN], "c", cc_version(cc)
        if choice == "c":
            raise SystemExit("error: --loadgen c requested but loadgen.c could not be built")
        print("WARNING: no working C compiler: falling back to the pure-Python load generator.\n"
              "         It is likely to be the bottleneck; CPU/message figures will be\n"
              "         inflated and ratios compressed.  Install cc for real numbers.",
              file=sys.stderr)
    return [sys.executable, PY_LOADGEN], "python", ""


# --------------------------------------------------------------------------
# one run
# --------------------------------------------------------------------------
@dataclass
class Ctx:
    loadgen: list[str]
    server_cpu: int | None
    gen_cpu: int | None
    profile: Profile
    idle_conns: int
    spin: bool = False
    short_close: str = "eof"


def _loadgen_argv(ctx: Ctx, sc: Scenario, port: int, conns: int) -> list[str]:
    argv = ctx.loadgen + [
        "--host", HOST, "--port", str(port), "--conns", str(conns), "--mode", sc.mode,
        "--depth", str(sc.depth), "--size", str(sc.size),
        "--warmup", str(ctx.profile.warmup), "--duration", str(ctx.profile.duration),
        "--hold", "--hold-timeout", "120", "--connect-timeout", "90",
    ]
    if sc.frame_header:
        argv += ["--frame-header", str(sc.frame_header)]
    if sc.mode == "short":
        argv += ["--close", ctx.short_close]
        if ctx.short_close == "fin":
            # Our side then holds TIME_WAIT for 60 s per connection: spread the
            # sources over 127.0.0.2-250 so no ephemeral port range runs dry.
            argv += ["--src-addrs", "249"]
    if ctx.gen_cpu is not None:
        argv += ["--cpu", str(ctx.gen_cpu)]
    if ctx.spin:
        argv += ["--spin"]
    return argv


def run_throughput(ctx: Ctx, kind: str, sc: Scenario) -> dict:
    """Ping-pong / pipeline run: server CPU per message and throughput."""
    port = free_port()
    cpus = [c for c in (ctx.server_cpu, ctx.gen_cpu) if c is not None]
    with ServerProc(kind, port, ctx.server_cpu, sc.proto) as srv:
        srv.wait_ready()
        _one_echo(port, sc)
        pids = _procstat.process_tree(srv.pid)  # workers, if the server has any
        lg = LoadgenProc(_loadgen_argv(ctx, sc, port, sc.conns))
        try:
            connected = lg.expect("connected", timeout=100)
            lg.expect("start", timeout=ctx.profile.warmup + 30)
            cpu0, t0 = _procstat.cpu_seconds(pids), time.monotonic()
            busy0 = _procstat.cpu_busy_seconds(cpus)
            lg.expect("end", timeout=ctx.profile.duration + 30)
            cpu1, t1 = _procstat.cpu_seconds(pids), time.monotonic()
            busy1 = _procstat.cpu_busy_seconds(cpus)
            mem = _procstat.memory_tree(pids)
            lg.release()
            res = lg.expect("result", timeout=30)
        finally:
            lg.close()
        srv.check_alive()
        pinned = _procstat.cpus_allowed(srv.pid)
    if res["messages"] <= 0:
        raise BenchError(f"no message echoed in the window: {res}")
    cpu = cpu1 - cpu0
    window = t1 - t0
    # Load from other processes on our pinned CPUs (the machine is shared):
    # busy time of the CPU minus what our own processes used there.
    foreign_srv = foreign_gen = None
    if window > 0 and ctx.server_cpu is not None:
        foreign_srv = max(0.0, (busy1[ctx.server_cpu] - busy0[ctx.server_cpu] - cpu) / window)
        gen_used = res["gen_cpu_frac"] * res["elapsed"]
        foreign_gen = max(0.0, (busy1[ctx.gen_cpu] - busy0[ctx.gen_cpu] - gen_used) / window)
    run = {
        "server": kind, "scenario": sc.name, "unit": sc.unit,
        "messages": res["messages"], "elapsed": res["elapsed"], "harness_window": window,
        "server_cpu_s": cpu,
        "cpu_us_per_msg": cpu / res["messages"] * 1e6,
        "msgs_per_s": res["msgs_per_s"],
        "server_cpu_frac": cpu / window if window > 0 else 0.0,
        "gen_cpu_frac": res["gen_cpu_frac"],
        "gen_busy_frac": res.get("gen_busy_frac", res["gen_cpu_frac"]),
        "foreign_frac_server_cpu": foreign_srv, "foreign_frac_gen_cpu": foreign_gen,
        "errors": res["errors"], "loadgen": res,
        "connect_s": connected.get("t"),
        # Round-trip latency per message as the generator saw it (loadgen.c
        # only; the Python fallback does not measure it).
        **{k: (res[k] if isinstance(res.get(k), (int, float)) and res[k] >= 0 else None)
           for k in ("lat_p50_us", "lat_p99_us", "lat_p999_us")},
        "server_rss": mem.get("rss"), "server_pids": len(pids), "server_cpus_allowed": pinned,
    }
    if sc.unit == "conn":  # short connections: a "message" is a whole connection
        run["cpu_us_per_conn"], run["conns_per_s"] = run["cpu_us_per_msg"], run["msgs_per_s"]
    return run


def _one_echo(port: int, sc: Scenario | None = None) -> None:
    """One connection, one byte echoed (as one frame, for a framed server):
    lets the server allocate its one-off structures (buffers, lazy imports)
    before the 'before' memory sample, and see one EOF (see the README)."""
    msg = b"x"
    if sc is not None and sc.frame_header:
        msg = (1).to_bytes(sc.frame_header, "big") + b"x"
    with socket.create_connection((HOST, port), timeout=5) as s:
        s.sendall(msg)
        got = b""
        while len(got) < len(msg):
            chunk = s.recv(len(msg) - len(got))
            if not chunk:
                break
            got += chunk
        if got != msg:
            raise BenchError(f"warm-up echo failed: sent {msg!r}, got {got!r}")


def run_idle(ctx: Ctx, kind: str, sc: Scenario) -> dict:
    """Idle-connection memory: (RSS after - RSS before) / N."""
    n = ctx.idle_conns
    port = free_port()
    with ServerProc(kind, port, ctx.server_cpu) as srv:
        srv.wait_ready()
        _one_echo(port)
        time.sleep(ctx.profile.settle)
        pids = _procstat.process_tree(srv.pid)
        before = _procstat.memory_tree(pids)
        fds0 = _procstat.open_fds(srv.pid)
        lg = LoadgenProc(_loadgen_argv(ctx, sc, port, n))
        try:
            connected = lg.expect("connected", timeout=100)
            time.sleep(ctx.profile.settle)
            after = _procstat.memory_tree(pids)
            fds1 = _procstat.open_fds(srv.pid)
            lg.release()
            res = lg.expect("result", timeout=30)
        finally:
            lg.close()
        srv.check_alive()
    out = {
        "server": kind, "scenario": sc.name, "conns": n, "connected": res["connected"],
        "connect_s": connected.get("t"), "errors": res["errors"],
        "rss_before": before["rss"], "rss_after": after["rss"],
        "bytes_per_conn_rss": (after["rss"] - before["rss"]) / n,
        "server_fds_added": fds1 - fds0 if fds0 >= 0 and fds1 >= 0 else None,
        "loadgen": res,
    }
    if "pss" in before and "pss" in after:
        out.update(pss_before=before["pss"], pss_after=after["pss"],
                   bytes_per_conn_pss=(after["pss"] - before["pss"]) / n)
    return out


# --------------------------------------------------------------------------
# summary and printing
# --------------------------------------------------------------------------
@dataclass
class Summary:
    runs: dict = field(default_factory=dict)  # (scenario, server) -> [run dicts]
    failures: list = field(default_factory=list)


def _median(runs: list[dict], key: str) -> float | None:
    vals = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(vals) if vals else None


def summarize(summary: Summary, scenarios: list[Scenario], servers: list[str]) -> dict:
    """Medians per (scenario, server) and the ratios against the baseline."""
    table: dict = {}
    for sc in scenarios:
        for kind in servers:
            runs = summary.runs.get((sc.name, kind))
            if not runs:
                continue
            row = {"rounds": len(runs), "errors": sum(r["errors"] for r in runs),
                   "conns": runs[0].get("conns", sc.conns), "unit": sc.unit}
            keys = (("bytes_per_conn_rss", "bytes_per_conn_pss", "connect_s")
                    if sc.mode == "idle" else
                    ("cpu_us_per_msg", "msgs_per_s", "server_cpu_frac", "gen_busy_frac",
                     "foreign_frac_server_cpu", "foreign_frac_gen_cpu",
                     "lat_p50_us", "lat_p99_us", "lat_p999_us"))
            for k in keys:
                row[k] = _median(runs, k)
            if sc.mode != "idle":
                # How far the harness's CPU-sampling window drifted from the
                # generator's counting window (should be well under 1%).
                row["window_skew"] = max(abs(r["harness_window"] - r["elapsed"]) / r["elapsed"]
                                         for r in runs)
                vals = [r["cpu_us_per_msg"] for r in runs]
                row["cpu_us_per_msg_min"], row["cpu_us_per_msg_max"] = min(vals), max(vals)
                if sc.unit == "conn":
                    row["cpu_us_per_conn"], row["conns_per_s"] = (row["cpu_us_per_msg"],
                                                                   row["msgs_per_s"])
            table.setdefault(sc.name, {})[kind] = row
    base = "netreactor" if "netreactor" in servers else (servers[0] if servers else None)
    ratios: dict = {}
    for sc in scenarios:
        rows = table.get(sc.name, {})
        key = "bytes_per_conn_rss" if sc.mode == "idle" else "cpu_us_per_msg"
        if base not in rows or not rows[base].get(key):
            continue
        for kind, row in rows.items():
            if kind != base and row.get(key):
                ratios.setdefault(sc.name, {})[f"{base}/{kind}"] = rows[base][key] / row[key]
    return {"baseline": base, "table": table, "ratios": ratios}


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.0f}%"


def _us(x: float | None) -> str:
    return "-" if x is None else f"{x:,.0f}"


def print_report(result: dict, scenarios: list[Scenario], use_rich: bool) -> None:
    table, ratios, base = result["table"], result["ratios"], result["baseline"]
    perf_rows, idle_rows, short_rows = [], [], []
    for sc in scenarios:
        for kind, row in table.get(sc.name, {}).items():
            if sc.mode == "idle":
                pss = row.get("bytes_per_conn_pss")
                idle_rows.append([sc.name, kind, f"{row['conns']:,}",
                                  f"{row['bytes_per_conn_rss']:,.0f}",
                                  "-" if pss is None else f"{pss:,.0f}",
                                  f"{row['connect_s']:.2f}" if row.get("connect_s") else "-",
                                  str(row["errors"])])
            else:
                spread = (f"{row['cpu_us_per_msg_min']:.2f}-{row['cpu_us_per_msg_max']:.2f}"
                          if row["rounds"] > 1 else "")
                # Short connections go to their own table (per connection).
                (short_rows if sc.unit == "conn" else perf_rows).append(
                                 [sc.name, kind, f"{row['cpu_us_per_msg']:.2f}", spread,
                                  f"{row['msgs_per_s']:,.0f}", _us(row.get("lat_p50_us")),
                                  _us(row.get("lat_p99_us")), _pct(row["server_cpu_frac"]),
                                  _pct(row["gen_busy_frac"]),
                                  f"{_pct(row['foreign_frac_server_cpu'])}/"
                                  f"{_pct(row['foreign_frac_gen_cpu'])}",
                                  str(row["errors"])])
    perf_head = ["scenario", "server", "CPU us/msg", "range", "msgs/s", "p50 us", "p99 us",
                 "srv CPU", "gen CPU", "other load", "errors"]
    short_head = ["scenario", "server", "CPU us/conn", "range", "conns/s", "p50 us", "p99 us",
                  "srv CPU", "gen CPU", "other load", "errors"]
    idle_head = ["scenario", "server", "conns", "RSS B/conn", "PSS B/conn", "connect s", "errors"]
    ratio_rows = []
    for sc in scenarios:
        for pair, v in ratios.get(sc.name, {}).items():
            what = "memory/conn" if sc.mode == "idle" else f"CPU/{sc.unit}"
            ratio_rows.append([sc.name, pair, what, f"{v:.2f}"])
    ratio_head = ["scenario", "ratio", "of", "value"]
    ratio_title = f"Ratios {base}/other (< 1: {base} uses less)"
    perf_title = "Server CPU per echoed message (median of rounds)"
    if any(sc.unit == "frame" for sc in scenarios):
        perf_title = ("Server CPU per echoed message (median of rounds; framed-50: "
                      "per 68-byte frame)")
    tables = ((perf_title, perf_head, perf_rows),
              ("Server CPU per short connection: connect, 64 B echo, close (median of rounds)",
               short_head, short_rows),
              ("Server memory per idle connection", idle_head, idle_rows),
              (ratio_title, ratio_head, ratio_rows))

    if use_rich:
        try:
            from rich.console import Console
            from rich.table import Table
        except ImportError:
            use_rich = False
    if use_rich:
        con = Console(width=max(120, shutil.get_terminal_size((120, 20)).columns))
        for title, head, rows in tables:
            if not rows:
                continue
            t = Table(title=title)
            for i, h in enumerate(head):
                t.add_column(h, justify="left" if i < 2 else "right", no_wrap=True)
            for r in rows:
                t.add_row(*r)
            con.print(t)
        return
    for title, head, rows in tables:
        if not rows:
            continue
        widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
        print(f"\n{title}")
        for r in [head] + rows:
            print("  " + "  ".join(str(x).ljust(w) if i < 2 else str(x).rjust(w)
                                   for i, (x, w) in enumerate(zip(r, widths))))


def warnings_for(result: dict, scenarios: list[Scenario], loadgen_kind: str) -> list[str]:
    """Plain-language caveats: unsaturated servers, errors, missed targets."""
    out = []
    if loadgen_kind == "python":
        out.append("pure-Python load generator used: it is probably the bottleneck")
    for sc in scenarios:
        for kind, row in result["table"].get(sc.name, {}).items():
            if row["errors"]:
                out.append(f"{sc.name}/{kind}: {row['errors']} load generator errors "
                           "(mismatched echo, reset or failed connect)")
            if sc.mode == "idle":
                continue
            srv, gen = row["server_cpu_frac"], row["gen_busy_frac"]
            other = row.get("foreign_frac_server_cpu") or 0.0
            other_gen = row.get("foreign_frac_gen_cpu") or 0.0
            parts = []
            if other > 0.05 or other_gen > 0.10:
                parts.append(f"other processes used {_pct(other)} of the server's CPU and "
                             f"{_pct(other_gen)} of the load generator's (shared machine)")
            if srv is not None and srv < 0.90:
                if other > 0.05:
                    why = "it shared its CPU"
                elif other_gen > 0.10:
                    why = "the load generator shared its CPU"
                elif gen and gen > 0.90:
                    why = "the load generator looks like the limit"
                else:
                    why = "latency bound: neither side saturated"
                parts.append(f"server only {_pct(srv)} busy ({why}), so CPU/{sc.unit} is not at "
                             "saturation")
            if row.get("window_skew", 0) > 0.01:
                parts.append(f"sampling window off by {_pct(row['window_skew'])} of its length")
            if parts:
                out.append(f"{sc.name}/{kind}: " + "; ".join(parts))
    for sc in scenarios:
        ratio = result["ratios"].get(sc.name, {}).get("netreactor/uvloop")
        if sc.unit == "frame" and ratio is not None:
            verdict = "meets" if ratio <= FRAMED_TARGET_RATIO else "MISSES"
            out.append(f"netreactor {sc.name} CPU/frame is {ratio:.2f}x uvloop's: {verdict} the "
                       f"<= {FRAMED_TARGET_RATIO}x target (issue 3)")
    idle = result["table"].get("idle", {}).get("netreactor")
    if idle and idle.get("bytes_per_conn_rss") is not None:
        v = idle["bytes_per_conn_rss"]
        verdict = "meets" if v <= IDLE_TARGET_BYTES else "MISSES"
        out.append(f"netreactor idle memory {v:,.0f} B/conn {verdict} the "
                   f"{IDLE_TARGET_BYTES} B target")
    return out


# --------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------
def _pick_scenarios(names: list[str] | None) -> list[Scenario]:
    if not names:
        return list(SCENARIOS.values())
    out = []
    for n in names:
        for part in n.split(","):
            part = part.strip()
            if not part:
                continue
            hits = [s for s in SCENARIOS if s == part] or [s for s in SCENARIOS
                                                          if s.startswith(part)]
            if len(hits) != 1:
                raise SystemExit(f"error: scenario {part!r} is "
                                 f"{'ambiguous' if hits else 'unknown'}; "
                                 f"choose from {', '.join(SCENARIOS)}")
            if SCENARIOS[hits[0]] not in out:
                out.append(SCENARIOS[hits[0]])
    return out


def _metadata(args, loadgen_kind: str, cc: str, servers: list[str], ctx: Ctx) -> dict:
    return {
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "python": sys.version.split()[0], "implementation": platform.python_implementation(),
        "kernel": platform.release(), "cpu_model": cpu_model(), "cpus": os.cpu_count(),
        "uvloop": package_version("uvloop"), "git_rev": git_rev(),
        "loadgen": loadgen_kind, "compiler": cc, "servers": servers,
        "server_cpu": ctx.server_cpu, "loadgen_cpu": ctx.gen_cpu,
        "warmup": ctx.profile.warmup, "duration": ctx.profile.duration,
        "rounds": ctx.profile.rounds, "settle": ctx.profile.settle,
        "idle_conns": ctx.idle_conns, "quick": args.quick, "argv": sys.argv[1:],
        "short_close": ctx.short_close,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description="Echo benchmark: server CPU per message and memory per connection, "
                    "netreactor vs uvloop vs asyncio.")
    ap.add_argument("--quick", action="store_true",
                    help="short windows, one round (about a minute)")
    ap.add_argument("--scenario", action="extend", nargs="+", metavar="NAME",
                    help=f"scenarios to run (default all): {', '.join(SCENARIOS)}")
    ap.add_argument("--servers", default=",".join(DEFAULT_SERVERS),
                    help="comma-separated server kinds (default %(default)s)")
    ap.add_argument("--duration", type=float, help="measured seconds per run")
    ap.add_argument("--warmup", type=float, help="warm-up seconds per run")
    ap.add_argument("--rounds", type=int, help="rounds per scenario (median reported)")
    ap.add_argument("--idle-conns", type=int, default=9000,
                    help="connections for the idle-memory scenario (default %(default)s)")
    ap.add_argument("--json", metavar="PATH", help="where to save results "
                    "(default bench/results/echo-<timestamp>.json)")
    ap.add_argument("--loadgen", choices=("auto", "c", "python"), default="auto",
                    help="load generator: C (built on demand) or the Python fallback")
    ap.add_argument("--spin", action="store_true", help="load generator busy-polls")
    ap.add_argument("--short-close", choices=("eof", "rst", "fin"), default="eof",
                    help="short-50: how the client closes: eof (default: FIN then RST, the "
                         "server reads EOF, no TIME_WAIT), rst (reset only), fin (plain close, "
                         "TIME_WAIT spread over 127.0.0.2-250)")
    ap.add_argument("--plain", action="store_true", help="plain-text tables even if rich exists")
    args = ap.parse_args(argv)

    base = QUICK if args.quick else FULL
    profile = Profile(
        warmup=args.warmup if args.warmup is not None else base.warmup,
        duration=args.duration if args.duration is not None else base.duration,
        rounds=max(1, args.rounds if args.rounds is not None else base.rounds),
        settle=base.settle,
    )
    if not (0 < profile.duration <= 60 and 0 <= profile.warmup <= 60):
        ap.error("--duration must be in (0, 60] and --warmup in [0, 60]")
    if not 1 <= args.idle_conns <= 15000:
        ap.error("--idle-conns must be between 1 and 15000 (the fd limit here is 20000)")
    scenarios = _pick_scenarios(args.scenario)

    # Pinning: server on the first allowed CPU, load generator and this
    # harness on the second.  The harness mostly sleeps, and keeping it off
    # the server's CPU keeps its wake-ups out of the server's figures.
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) >= 2:
        server_cpu, gen_cpu = cpus[0], cpus[1]
        os.sched_setaffinity(0, {gen_cpu})
    else:
        server_cpu = gen_cpu = None
        print("WARNING: fewer than 2 CPUs available: no pinning, server and load "
              "generator share a CPU", file=sys.stderr)

    servers = []
    for kind in [s.strip() for s in args.servers.split(",") if s.strip()]:
        r = subprocess.run([sys.executable, SERVERS_PY, "--check", kind],
                           capture_output=True, text=True)
        if r.returncode == 0:
            servers.append(kind)
        else:
            print(f"skipping {kind}: {r.stderr.strip() or 'not available'}", file=sys.stderr)
    if not servers:
        print("error: no server to benchmark", file=sys.stderr)
        return 2
    # Scenarios with another protocol (framed) need each server to support it.
    unsupported: set = set()  # (kind, proto)
    for proto in sorted({sc.proto for sc in scenarios} - {"echo"}):
        for kind in servers:
            r = subprocess.run([sys.executable, SERVERS_PY, "--check", kind, "--proto", proto],
                               capture_output=True, text=True)
            if r.returncode != 0:
                unsupported.add((kind, proto))
                print(f"skipping {kind} in {proto} scenarios: "
                      f"{r.stderr.strip() or 'not available'}", file=sys.stderr)

    loadgen, loadgen_kind, cc = build_loadgen(args.loadgen)
    if loadgen_kind == "python":
        dropped = [sc.name for sc in scenarios if sc.name in C_ONLY_SCENARIOS]
        if dropped:
            print(f"skipping {', '.join(dropped)}: the Python fallback load generator has no "
                  "--frame-header / short mode (needs loadgen.c)", file=sys.stderr)
            scenarios = [sc for sc in scenarios if sc.name not in C_ONLY_SCENARIOS]
            if not scenarios:
                return 2
    ctx = Ctx(loadgen, server_cpu, gen_cpu, profile, args.idle_conns, args.spin,
              args.short_close)
    meta = _metadata(args, loadgen_kind, cc, servers, ctx)
    json_path = args.json or os.path.join(
        RESULTS_DIR, f"echo-{time.strftime('%Y%m%d-%H%M%S')}.json")

    def on_term(signum, frame):
        raise Interrupted()

    signal.signal(signal.SIGTERM, on_term)
    summary = Summary()
    interrupted = False
    total = sum(profile.rounds * sum((k, sc.proto) not in unsupported for k in servers)
                for sc in scenarios)
    step = 0
    print(f"servers: {', '.join(servers)}; scenarios: {', '.join(s.name for s in scenarios)}; "
          f"warmup {profile.warmup:g}s, window {profile.duration:g}s, rounds {profile.rounds}; "
          f"server on CPU {server_cpu}, loadgen ({loadgen_kind}) on CPU {gen_cpu}")
    started = time.monotonic()
    try:
        for sc in scenarios:
            for rnd in range(profile.rounds):
                # Rotate the order every round (A B C, B C A, C A B) so that slow
                # drift of the machine does not favour whoever always goes first.
                order = servers[rnd % len(servers):] + servers[:rnd % len(servers)]
                for kind in order:
                    if (kind, sc.proto) in unsupported:
                        continue
                    step += 1
                    label = f"[{step}/{total}] {sc.name:<14} {kind:<10} round {rnd + 1}"
                    try:
                        run = (run_idle if sc.mode == "idle" else run_throughput)(ctx, kind, sc)
                    except BenchError as e:
                        print(f"{label}: FAILED: {e}", file=sys.stderr)
                        summary.failures.append({"scenario": sc.name, "server": kind,
                                                 "round": rnd + 1, "error": str(e)})
                        continue
                    run["round"] = rnd + 1
                    summary.runs.setdefault((sc.name, kind), []).append(run)
                    if sc.mode == "idle":
                        pss = run.get("bytes_per_conn_pss")
                        print(f"{label}: {run['bytes_per_conn_rss']:,.0f} B/conn RSS"
                              + (f", {pss:,.0f} B/conn PSS" if pss is not None else "")
                              + f", {run['connected']} conns in {run['connect_s']:.2f}s"
                              + (f", {run['errors']} errors" if run["errors"] else ""))
                    else:
                        other = run["foreign_frac_server_cpu"]
                        unit = sc.unit
                        print(f"{label}: {run['cpu_us_per_msg']:6.2f} us/{unit:<5} "
                              f"{run['msgs_per_s']:>10,.0f} {unit}/s  server "
                              f"{_pct(run['server_cpu_frac'])}, loadgen "
                              f"{_pct(run['gen_busy_frac'])}"
                              + (f", other load on server CPU {_pct(other)}"
                                 if other and other > 0.05 else "")
                              + (f", {run['errors']} errors" if run["errors"] else ""))
    except (KeyboardInterrupt, Interrupted):
        interrupted = True
        print("\ninterrupted: servers stopped; reporting what was measured", file=sys.stderr)

    result = summarize(summary, scenarios, servers)
    print_report(result, scenarios, use_rich=not args.plain)
    notes = warnings_for(result, scenarios, loadgen_kind)
    for n in notes:
        print(f"note: {n}")
    meta["wall_s"] = round(time.monotonic() - started, 1)
    doc = {
        "meta": meta, "interrupted": interrupted, "summary": result, "notes": notes,
        "failures": summary.failures,
        "runs": [r for runs in summary.runs.values() for r in runs],
    }
    save_json(json_path, doc)
    print(f"saved {os.path.relpath(json_path)} ({meta['wall_s']:.0f} s)")
    if interrupted:
        return 130
    return 1 if summary.failures else 0


if __name__ == "__main__":
    sys.exit(main())
