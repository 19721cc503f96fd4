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
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass
from typing import Dict, List, Optional

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _procstat  # noqa: E402  (bench/ helper)
from _common import (HOST, BenchError, build_loadgen, free_port, machine_meta,  # noqa: E402
                     results_path, save_json)
from _harness import LineReporter, median, run_rounds  # noqa: E402
from _procs import LoadgenProc, ServerProc  # noqa: E402

SERVERS = ("netreactor", "uvloop")


@dataclass(frozen=True)
class Point:
    """One server count N: what run_rounds calls a scenario."""

    name: str
    n: int


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


class Servers:
    """N server processes of one kind (netreactor: one supervisor with N workers)."""

    def __init__(self, kind: str, n: int, port: int, cpus: Optional[List[int]]) -> None:
        self.kind, self.n = kind, n
        self.procs: List[ServerProc] = []
        try:
            if kind == "netreactor":
                cmd = [sys.executable, "-m", "netreactor", "example", "echo", "--listen",
                       f"tcp://{HOST}:{port}", "--log-level", "info"]
                if n > 1:
                    cmd += ["--workers", str(n)] + (["--cpu-affinity"] if cpus else [])
                self._start(kind, cmd, port, cpus[:n] if cpus else None,
                            rf"all {n} workers ready" if n > 1 else r"serving tcp://")
            else:
                for i in range(n):
                    self._start(kind, [sys.executable, os.path.abspath(__file__), "--serve-uvloop",
                                       str(port)], port, [cpus[i]] if cpus else None, r"^ready$")
        except BaseException:
            self.close()
            raise

    def _start(self, kind: str, cmd: List[str], port: int, cpus: Optional[List[int]],
               ready: str) -> None:
        proc = ServerProc(kind, cmd, port, cpus)
        self.procs.append(proc)
        proc.wait_ready(30, probe=lambda: proc.log_matches(ready))

    def pids(self) -> List[int]:
        out: List[int] = []
        for proc in self.procs:
            out += _procstat.process_tree(proc.pid)
        return out

    def check_alive(self) -> None:
        for proc in self.procs:
            proc.check_alive(verb="exited")

    def close(self) -> None:
        for proc in self.procs:
            proc.stop()


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
    gens: List[LoadgenProc] = []
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
            gens.append(LoadgenProc(argv))
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
    loadgen = build_loadgen()[0]
    print(f"{layout.note}; counts {counts}; {args.conns_per_server} conns per server; "
          f"warmup {args.warmup:g}s, window {args.duration:g}s, {args.rounds} round(s)")

    points = [Point(f"N={n}", n) for n in counts]
    started = time.monotonic()
    done = run_rounds(
        points, kinds, args.rounds, lambda kind, p: measure(kind, p.n, layout, loadgen, args),
        lambda res: (f"{res['msgs_per_s']:>11,.0f} msg/s  server cores busy "
                     f"{res['server_cores_busy']:.2f}  {res['cpu_us_per_msg']:.2f} us/msg"
                     + (f"  {res['errors']} errors" if res["errors"] else "")),
        LineReporter(len(points) * len(kinds) * args.rounds, 5, 10, numbered=False))
    for f in done.failures:
        f["n"] = int(f["scenario"][2:])

    table: Dict[int, dict] = {}
    for p in points:
        for kind in kinds:
            rs = done.runs.get((p.name, kind))
            if rs:
                table.setdefault(p.n, {})[kind] = {
                    **{k: median(r[k] for r in rs)
                       for k in ("msgs_per_s", "server_cores_busy", "cpu_us_per_msg")},
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
        "meta": {**machine_meta(), "cpus": cpus, "layout": layout.note,
                 "loadgen": os.path.basename(loadgen[-1]), "counts": counts,
                 "conns_per_server": args.conns_per_server, "warmup": args.warmup,
                 "duration": args.duration, "rounds": args.rounds,
                 "wall_s": round(time.monotonic() - started, 1)},
        "table": {str(n): v for n, v in table.items()},
        "failures": done.failures,
        "runs": done.flat(),
    }
    path = results_path("workers", args.json)
    save_json(path, doc)
    print(f"saved {os.path.relpath(path)}")
    if done.interrupted:
        return 130
    return 1 if done.failures else 0

if __name__ == "__main__":
    sys.exit(main())
