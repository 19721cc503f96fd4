"""Multi-core echo throughput: netreactor worker processes vs uvloop processes.

    python3 bench/workers.py [--quick] [--counts 1,2,4] [--conns-per-server 50]
                             [--duration S] [--warmup S] [--rounds N] [--json PATH]

For each server count N, two servers are measured in the same run, round by
round in alternating order, and the median round is reported:

* ``netreactor`` -- ``python -m netreactor example echo --workers N``: the real
  supervisor and worker processes (N = 1 is the plain single process);
* ``uvloop``     -- N independent uvloop processes (the asyncio Protocol echo),
  each with its own SO_REUSEPORT listener on the same port: the usual way to
  put uvloop on N cores.

Workload: 64-byte ping-pong, ``--conns-per-server`` connections per server
process, driven by the C load generator ``bench/loadgen.c`` (compiled on demand
into ``bench/_build/``, as ``bench/echo.py`` does). The figure is total echoed
messages per second; server CPU (all processes, from /proc) is shown beside it.

CPU layout, so that the same command scales to the machine it runs on:

* 4 CPUs or more: servers on the first half of the CPUs this process may use,
  load generators on the other half. Server process i is pinned to server CPU
  i (netreactor through ``--cpu-affinity``); one load generator per generator
  CPU (at most one per server), connections split evenly. Counts default to
  1, 2, 4, ... up to the number of server CPUs.
* 2 or 3 CPUs: nothing is pinned; servers and the load generator compete for
  the same cores. Counts default to 1 and 2. Expect N = 2 to gain little: the
  generator needs a core too.

Only 127.0.0.1 is ever targeted; every phase has a deadline and every child
(with its process group) is killed on exit, error or Ctrl-C. Results go to
``bench/results/workers-<timestamp>.json``.

Internal mode: ``python3 bench/workers.py --serve-uvloop PORT`` is one uvloop
server process (the harness starts N of them).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import selectors
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Dict, List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import _procstat  # noqa: E402  (bench/ helper)
from _common import compile_c, find_cc, free_port, is_stale, save_json  # noqa: E402,F401

LOADGEN_SRC = os.path.join(HERE, "loadgen.c")
LOADGEN_BIN = os.path.join(HERE, "_build", "loadgen")
PY_LOADGEN = os.path.join(HERE, "_pyloadgen.py")
RESULTS_DIR = os.path.join(HERE, "results")
HOST = "127.0.0.1"
SERVERS = ("netreactor", "uvloop")


class BenchError(RuntimeError):
    """One measurement could not be made (a server died, a generator failed...)."""


# ---------------------------------------------------------------------------- uvloop server


class _EchoProtocol(asyncio.Protocol):
    def connection_made(self, transport):  # type: ignore[override]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.transport = transport

    def data_received(self, data):  # type: ignore[override]
        self.transport.write(data)


def serve_uvloop(port: int) -> None:
    import uvloop

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(_EchoProtocol, HOST, port, backlog=4096,
                                          reuse_address=True, reuse_port=True)
        print("ready", flush=True)
        async with server:
            await server.serve_forever()

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    uvloop.run(main()) if hasattr(uvloop, "run") else (
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy()), asyncio.run(main()))


# ---------------------------------------------------------------------------- processes


def _spawn(cmd: List[str], cpus: Optional[List[int]] = None, **kw) -> subprocess.Popen:
    def setup() -> None:
        if cpus:
            os.sched_setaffinity(0, cpus)

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [REPO_ROOT, env.get("PYTHONPATH")]))
    return subprocess.Popen(cmd, start_new_session=True, preexec_fn=setup, env=env, **kw)


def _kill(proc: subprocess.Popen, grace: float = 3.0) -> None:
    """SIGTERM the child's process group, then SIGKILL it."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        if proc.poll() is not None:
            break
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            continue
    try:  # workers of a supervisor that exited share its group: nothing may outlive us
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _read_lines_until(proc: subprocess.Popen, stream, pattern: str, count: int, timeout: float) -> None:
    """Block until ``count`` lines of ``stream`` match ``pattern`` (or fail)."""
    regex = re.compile(pattern)
    sel = selectors.DefaultSelector()
    sel.register(stream, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    buf, seen, tail = b"", 0, []
    try:
        while seen < count:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BenchError(f"server not ready within {timeout:.0f}s: {' | '.join(tail[-5:])}")
            if not sel.select(left):
                continue
            chunk = os.read(stream.fileno(), 65536)
            if not chunk:
                raise BenchError(f"server exited ({proc.wait(5)}): {' | '.join(tail[-5:])}")
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                text = line.decode(errors="replace")
                tail.append(text)
                if regex.search(text):
                    seen += 1
    finally:
        sel.close()


class Servers:
    """N server processes of one kind (netreactor: one supervisor with N workers)."""

    def __init__(self, kind: str, n: int, port: int, cpus: Optional[List[int]]) -> None:
        self.kind, self.n = kind, n
        self.procs: List[subprocess.Popen] = []
        self.logs: List = []
        if kind == "netreactor":
            cmd = [sys.executable, "-m", "netreactor", "example", "echo", "--listen",
                   f"tcp://{HOST}:{port}", "--log-level", "info"]
            if n > 1:
                cmd += ["--workers", str(n)] + (["--cpu-affinity"] if cpus else [])
            proc = _spawn(cmd, cpus[:n] if cpus else None, stdin=subprocess.DEVNULL,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            self.procs.append(proc)
            want = rf"all {n} workers ready" if n > 1 else r"serving tcp://"
            _read_lines_until(proc, proc.stderr, want, 1, 30)
        else:
            for i in range(n):
                proc = _spawn([sys.executable, os.path.abspath(__file__), "--serve-uvloop", str(port)],
                              [cpus[i]] if cpus else None, stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
                self.procs.append(proc)
                _read_lines_until(proc, proc.stdout, r"^ready$", 1, 30)

    def pids(self) -> List[int]:
        out: List[int] = []
        for proc in self.procs:
            out += _procstat.process_tree(proc.pid)
        return out

    def check_alive(self) -> None:
        for proc in self.procs:
            if proc.poll() is not None:
                raise BenchError(f"{self.kind} server exited with {proc.returncode}")

    def close(self) -> None:
        for proc in self.procs:
            _kill(proc)
            for stream in (proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()


# ---------------------------------------------------------------------------- load generators


def build_loadgen() -> List[str]:
    """The C generator (built with ``cc -O2`` when missing or stale), else the Python one."""
    cc = find_cc()
    if os.path.exists(LOADGEN_SRC) and cc:
        if is_stale(LOADGEN_BIN, LOADGEN_SRC):
            r = compile_c(cc, LOADGEN_SRC, LOADGEN_BIN)
            if r.returncode != 0:
                print(f"WARNING: building loadgen.c failed:\n{r.stderr}", file=sys.stderr)
        if os.path.exists(LOADGEN_BIN):
            return [LOADGEN_BIN]
    print("WARNING: no C load generator: using the Python one, which will be the bottleneck",
          file=sys.stderr)
    return [sys.executable, PY_LOADGEN]


class Generator:
    """One load generator process and its JSON-lines protocol on stdout."""

    def __init__(self, argv: List[str]) -> None:
        self.err = tempfile.TemporaryFile()
        self.proc = _spawn(argv, None, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.err)
        self.buf = b""

    def expect(self, name: str, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        sel = selectors.DefaultSelector()
        sel.register(fd, selectors.EVENT_READ)
        try:
            while True:
                while b"\n" in self.buf:
                    line, self.buf = self.buf.split(b"\n", 1)
                    event = json.loads(line)
                    if event.get("event") == name:
                        return event
                left = deadline - time.monotonic()
                if left <= 0:
                    raise BenchError(f"load generator: no {name!r} within {timeout:.0f}s")
                if sel.select(left):
                    chunk = os.read(fd, 65536)
                    if not chunk:
                        self.err.seek(0)
                        raise BenchError(f"load generator exited before {name!r}: "
                                         f"{self.err.read().decode(errors='replace')[-500:]}")
                    self.buf += chunk
        finally:
            sel.close()

    def release(self) -> None:
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
        _kill(self.proc, grace=1.0)
        self.proc.stdout.close()
        self.err.close()


# ---------------------------------------------------------------------------- one measurement


@dataclass
class Layout:
    server_cpus: Optional[List[int]]  # None: nothing pinned
    gen_cpus: Optional[List[int]]
    note: str


def plan(cpus: List[int]) -> Layout:
    if len(cpus) >= 4:
        half = len(cpus) // 2
        return Layout(cpus[:half], cpus[half:],
                      f"servers pinned to CPUs {_ranges(cpus[:half])}, "
                      f"load generators to CPUs {_ranges(cpus[half:])}")
    return Layout(None, None, f"{len(cpus)} CPU(s): nothing pinned; servers and load generator share them")


def _ranges(cpus: List[int]) -> str:
    if len(cpus) > 1 and cpus == list(range(cpus[0], cpus[-1] + 1)):
        return f"{cpus[0]}-{cpus[-1]}"
    return ",".join(map(str, cpus))


def measure(kind: str, n: int, layout: Layout, loadgen: List[str], args) -> dict:
    port = free_port()
    servers = Servers(kind, n, port, layout.server_cpus)
    gens: List[Generator] = []
    try:
        pids = servers.pids()
        n_gens = min(len(layout.gen_cpus), n) if layout.gen_cpus else 1
        total_conns = args.conns_per_server * n
        for g in range(n_gens):
            conns = total_conns // n_gens + (1 if g < total_conns % n_gens else 0)
            argv = loadgen + ["--host", HOST, "--port", str(port), "--conns", str(conns),
                              "--mode", "pingpong", "--size", "64", "--warmup", str(args.warmup),
                              "--duration", str(args.duration), "--hold", "--hold-timeout", "60",
                              "--connect-timeout", "30"]
            if layout.gen_cpus:
                argv += ["--cpu", str(layout.gen_cpus[g])]
            gens.append(Generator(argv))
        for gen in gens:
            gen.expect("connected", 40)
        for gen in gens:
            gen.expect("start", args.warmup + 30)
        cpu0, t0 = _procstat.cpu_seconds(pids), time.monotonic()
        for gen in gens:
            gen.expect("end", args.duration + 30)
        cpu1, t1 = _procstat.cpu_seconds(pids), time.monotonic()
        results = []
        for gen in gens:
            gen.release()
            results.append(gen.expect("result", 30))
        servers.check_alive()
    finally:
        for gen in gens:
            gen.close()
        servers.close()
    msgs = sum(r["messages"] for r in results)
    if msgs <= 0:
        raise BenchError(f"no message echoed: {results}")
    window = t1 - t0
    return {
        "server": kind, "n": n, "generators": len(gens), "conns": sum(r["conns"] for r in results),
        "msgs_per_s": sum(r["msgs_per_s"] for r in results),
        "errors": sum(r["errors"] for r in results),
        "server_cpu_s": cpu1 - cpu0, "window_s": window,
        "server_cores_busy": (cpu1 - cpu0) / window if window > 0 else 0.0,
        "cpu_us_per_msg": (cpu1 - cpu0) / msgs * 1e6,
        "server_pids": len(pids), "loadgen": results,
    }


# ---------------------------------------------------------------------------- main


def _counts(text: Optional[str], layout: Layout, cpus: List[int]) -> List[int]:
    if text:
        try:
            counts = sorted({int(x) for x in text.split(",") if x.strip()})
        except ValueError:
            raise SystemExit(f"error: --counts wants numbers like 1,2,4, got {text!r}")
        if not counts or counts[0] < 1:
            raise SystemExit("error: --counts must be positive")
        return counts
    top = len(layout.server_cpus) if layout.server_cpus else 2
    counts, n = [], 1
    while n <= top:
        counts.append(n)
        n *= 2
    if counts[-1] != top:
        counts.append(top)
    return counts


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="short windows, one round")
    ap.add_argument("--counts", help="server process counts to measure, e.g. 1,2,4 "
                                     "(default: 1, 2, 4 ... up to the server CPUs)")
    ap.add_argument("--conns-per-server", type=int, default=50,
                    help="ping-pong connections per server process (default %(default)s)")
    ap.add_argument("--servers", default=",".join(SERVERS), help="comma-separated: netreactor,uvloop")
    ap.add_argument("--duration", type=float, help="measured seconds per run (default 3, quick 1.5)")
    ap.add_argument("--warmup", type=float, help="warm-up seconds per run (default 1, quick 0.5)")
    ap.add_argument("--rounds", type=int, help="rounds per point, median reported (default 3, quick 1)")
    ap.add_argument("--json", metavar="PATH", help="where to save (default bench/results/workers-<ts>.json)")
    ap.add_argument("--serve-uvloop", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.serve_uvloop:
        serve_uvloop(args.serve_uvloop)
        return 0
    args.duration = args.duration or (1.5 if args.quick else 3.0)
    args.warmup = args.warmup if args.warmup is not None else (0.5 if args.quick else 1.0)
    args.rounds = max(1, args.rounds or (1 if args.quick else 3))
    if not (0 < args.duration <= 60 and 0 <= args.warmup <= 60):
        ap.error("--duration must be in (0, 60] and --warmup in [0, 60]")

    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    layout = plan(cpus)
    counts = _counts(args.counts, layout, cpus)
    kinds = [k.strip() for k in args.servers.split(",") if k.strip()]
    if "uvloop" in kinds:
        try:
            import uvloop  # noqa: F401
        except ImportError:
            print("skipping uvloop: not installed (pip install uvloop)", file=sys.stderr)
            kinds.remove("uvloop")
    if layout.gen_cpus:  # keep this harness off the server CPUs
        os.sched_setaffinity(0, layout.gen_cpus)
    loadgen = build_loadgen()
    print(f"{layout.note}; counts {counts}; {args.conns_per_server} conns per server; "
          f"warmup {args.warmup:g}s, window {args.duration:g}s, {args.rounds} round(s)")

    runs: Dict[tuple, List[dict]] = {}
    failures = []
    started = time.monotonic()
    try:
        for n in counts:
            for rnd in range(args.rounds):
                order = kinds if rnd % 2 == 0 else kinds[::-1]
                for kind in order:
                    label = f"N={n:<3} {kind:<10} round {rnd + 1}"
                    try:
                        res = measure(kind, n, layout, loadgen, args)
                    except BenchError as exc:
                        print(f"{label}: FAILED: {exc}", file=sys.stderr)
                        failures.append({"n": n, "server": kind, "round": rnd + 1, "error": str(exc)})
                        continue
                    runs.setdefault((n, kind), []).append(res)
                    print(f"{label}: {res['msgs_per_s']:>11,.0f} msg/s  server cores busy "
                          f"{res['server_cores_busy']:.2f}  {res['cpu_us_per_msg']:.2f} us/msg"
                          + (f"  {res['errors']} errors" if res["errors"] else ""), flush=True)
    except KeyboardInterrupt:
        print("\ninterrupted; reporting what was measured", file=sys.stderr)

    table = {}
    for (n, kind), rs in runs.items():
        table.setdefault(n, {})[kind] = {
            "msgs_per_s": statistics.median(r["msgs_per_s"] for r in rs),
            "server_cores_busy": statistics.median(r["server_cores_busy"] for r in rs),
            "cpu_us_per_msg": statistics.median(r["cpu_us_per_msg"] for r in rs),
            "rounds": len(rs),
        }
    print("\nmedian msgs/s (64 B ping-pong)")
    head = ["N", *kinds, "netreactor/uvloop", "netreactor vs N=1"]
    rows = []
    base = table.get(counts[0], {}).get("netreactor", {}).get("msgs_per_s")
    for n in counts:
        row = table.get(n, {})
        nr_rate = row.get("netreactor", {}).get("msgs_per_s")
        uv_rate = row.get("uvloop", {}).get("msgs_per_s")
        cells = [str(n)] + [f"{row[k]['msgs_per_s']:,.0f}" if k in row else "-" for k in kinds]
        cells.append(f"{nr_rate / uv_rate:.2f}" if nr_rate and uv_rate else "-")
        cells.append(f"{nr_rate / base:.2f}x" if nr_rate and base else "-")
        rows.append(cells)
    widths = [max(len(r[i]) for r in [head] + rows) for i in range(len(head))]
    for r in [head] + rows:
        print("  " + "  ".join(c.rjust(w) for c, w in zip(r, widths)))

    doc = {
        "meta": {"timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "python": sys.version.split()[0],
                 "kernel": platform.release(), "cpus": cpus, "layout": layout.note,
                 "loadgen": os.path.basename(loadgen[-1]), "counts": counts,
                 "conns_per_server": args.conns_per_server, "warmup": args.warmup,
                 "duration": args.duration, "rounds": args.rounds, "argv": sys.argv[1:],
                 "wall_s": round(time.monotonic() - started, 1)},
        "table": {str(n): v for n, v in table.items()},
        "failures": failures,
        "runs": [r for rs in runs.values() for r in rs],
    }
    path = args.json or os.path.join(RESULTS_DIR, f"workers-{time.strftime('%Y%m%d-%H%M%S')}.json")
    save_json(path, doc)
    print(f"saved {os.path.relpath(path)}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
