"""UDP echo benchmark: netreactor vs uvloop vs asyncio datagram endpoints, in one run.

    python3 bench/udp.py [--quick] [--scenario NAME ...] [--servers netreactor,uvloop,asyncio]
                         [--duration S] [--warmup S] [--rounds N] [--json PATH]
    python3 bench/udp.py --serve KIND --port P [--cpu N]      # one server, as the harness runs it

Each server runs in its own process pinned to the first CPU; the C load
generator (``bench/udploadgen.c``, compiled on demand into ``bench/_build/``)
runs pinned to the second CPU, and so does this harness, which mostly sleeps.
The generator keeps N connected UDP sockets with K 64-byte datagrams in flight
each and verifies every echo (socket index, sequence number and a pattern).
The main figure is the *server's* CPU time per echoed datagram: utime+stime
from ``/proc/PID/stat`` over the measured window divided by the datagrams
echoed in it, in microseconds. Servers run interleaved round by round (A B C,
B C A, ...) and the median of the rounds is reported; only ratios within one
run mean much on a shared machine.

Servers (the idiomatic few lines each):

* ``netreactor`` -- an ``EventHandler`` whose ``on_traffic`` is
  ``conn.write(conn.read())``, served by ``nr.run(handler, "udp://127.0.0.1:P")``.
* ``asyncio`` -- a ``DatagramProtocol`` whose ``datagram_received`` calls
  ``transport.sendto(data, addr)``, from ``loop.create_datagram_endpoint``.
* ``uvloop`` -- the same protocol on uvloop.

UDP may drop datagrams when a socket buffer is full; the generator writes off
what a socket had in flight after 0.2 s of silence and reports the count
(``lost``) beside the figures. Load only ever targets 127.0.0.1, every phase
has a deadline, and every child process is killed on exit, error or Ctrl-C.
Results go to ``bench/results/udp-<timestamp>.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

HERE = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import _procstat  # noqa: E402  (bench/ helper)
from _common import cc_version, compile_c, find_cc, is_stale, run_rounds, save_json  # noqa: E402
from echo import (BenchError, Interrupted, LoadgenProc, _spawn,  # noqa: E402
                  _stop_keeping_log_on_failure)

SRC = os.path.join(HERE, "udploadgen.c")
BUILD_DIR = os.path.join(HERE, "_build")
BIN = os.path.join(BUILD_DIR, "udploadgen")
RESULTS_DIR = os.path.join(HERE, "results")
HOST = "127.0.0.1"  # the only target this benchmark ever loads
KINDS = ("netreactor", "uvloop", "asyncio")
TARGET_RATIO = 1.0  # issue 4: netreactor's CPU per datagram <= uvloop's


@dataclass(frozen=True)
class Scenario:
    name: str
    socks: int
    depth: int
    size: int = 64
    about: str = ""


SCENARIOS = {s.name: s for s in (
    Scenario("pingpong-32", 32, 1, 64, "32 sockets, one 64 B datagram in flight each"),
    Scenario("window-32x4", 32, 4, 64, "32 sockets, four 64 B datagrams in flight each"),
)}


@dataclass
class Profile:
    warmup: float
    duration: float
    rounds: int


QUICK = Profile(warmup=1.0, duration=3.0, rounds=1)
FULL = Profile(warmup=2.0, duration=5.0, rounds=3)


# --------------------------------------------------------------------------
# the servers (child processes)
# --------------------------------------------------------------------------
class EchoDatagramProtocol(asyncio.DatagramProtocol):
    """Send every datagram back to its sender."""

    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        self.transport.sendto(data, addr)


async def _serve_asyncio(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(EchoDatagramProtocol, local_addr=(host, port))
    try:
        await asyncio.Event().wait()  # until killed
    finally:
        transport.close()


def serve(kind: str, host: str, port: int) -> None:
    if kind == "asyncio":
        asyncio.run(_serve_asyncio(host, port))
    elif kind == "uvloop":
        import uvloop

        if hasattr(uvloop, "run"):  # uvloop >= 0.18
            uvloop.run(_serve_asyncio(host, port))
        else:
            asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
            asyncio.run(_serve_asyncio(host, port))
    elif kind == "netreactor":
        if REPO_ROOT not in sys.path:
            sys.path.insert(1, REPO_ROOT)
        import netreactor as nr

        class Echo(nr.EventHandler):
            def on_traffic(self, conn):
                conn.write(conn.read())

        nr.run(Echo(), f"udp://{host}:{port}")
    else:
        raise SystemExit(f"unknown server kind {kind!r}")


def available(kind: str) -> str | None:
    """None if ``kind`` can run here, else why not."""
    if kind == "uvloop" and importlib.util.find_spec("uvloop") is None:
        return "uvloop is not installed (pip install uvloop)"
    if kind not in KINDS:
        return f"unknown server kind {kind!r}"
    return None


# --------------------------------------------------------------------------
# harness
# --------------------------------------------------------------------------
def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


class ServerProc:
    """``udp.py --serve KIND`` in its own process, killed on exit."""

    def __init__(self, kind: str, port: int, cpu: int | None):
        self.kind, self.port = kind, port
        self.log = tempfile.NamedTemporaryFile(prefix=f"udp-{kind}-", suffix=".log", delete=False)
        cmd = [sys.executable, os.path.abspath(__file__), "--serve", kind, "--port", str(port)]
        if cpu is not None:
            cmd += ["--cpu", str(cpu)]
        self.proc = _spawn(cmd, stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT)
        self.pid = self.proc.pid

    def _tail(self) -> str:
        with open(self.log.name, "rb") as f:
            return f.read()[-2000:].decode(errors="replace")

    def wait_ready(self, timeout: float = 20.0) -> None:
        """Send a probe datagram until it comes back."""
        deadline = time.monotonic() + timeout
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect((HOST, self.port))
            s.settimeout(0.05)
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise BenchError(f"{self.kind} server exited ({self.proc.returncode}):\n{self._tail()}")
                try:
                    s.send(b"probe")
                    if s.recv(100) == b"probe":
                        return
                except OSError:  # refused (not bound yet) or timed out
                    pass
        raise BenchError(f"{self.kind} server did not echo within {timeout:.0f} s:\n{self._tail()}")

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise BenchError(f"{self.kind} server died ({self.proc.returncode}):\n{self._tail()}")

    def __enter__(self) -> "ServerProc":
        return self

    def __exit__(self, *exc) -> None:
        _stop_keeping_log_on_failure(self.proc, self.log, exc[0], "server")


def _all_process_cpu() -> dict[int, float]:
    """utime+stime (seconds) of every process now: a scan of /proc, a few ms."""
    out = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            out[int(name)] = _procstat.cpu_seconds(int(name))
    return out


def _others(before: dict[int, float], after: dict[int, float], ours: set[int]) -> float:
    """CPU seconds used meanwhile by processes that are not ours (the machine is shared)."""
    return sum(cpu - before.get(pid, 0.0) for pid, cpu in after.items() if pid not in ours)


def build_loadgen() -> tuple[str, str]:
    """Compile udploadgen.c when the binary is missing or older than the source."""
    cc = find_cc()
    if cc is None:
        raise SystemExit("error: bench/udp.py needs a C compiler (cc) for udploadgen.c")
    if is_stale(BIN, SRC):
        r = compile_c(cc, SRC, BIN)
        if r.returncode != 0:
            raise SystemExit(f"error: building udploadgen.c failed:\n{r.stderr}")
        print(f"built {os.path.relpath(BIN)} with {cc} -O2")
    return BIN, cc_version(cc)


def run_one(kind: str, sc: Scenario, profile: Profile, server_cpu: int | None,
            gen_cpu: int | None) -> dict:
    port = free_udp_port()
    cpus = [c for c in (server_cpu, gen_cpu) if c is not None]
    with ServerProc(kind, port, server_cpu) as srv:
        srv.wait_ready()
        pids = _procstat.process_tree(srv.pid)
        argv = [BIN, "--host", HOST, "--port", str(port), "--socks", str(sc.socks),
                "--depth", str(sc.depth), "--size", str(sc.size), "--warmup", str(profile.warmup),
                "--duration", str(profile.duration), "--hold", "--hold-timeout", "120"]
        if gen_cpu is not None:
            argv += ["--cpu", str(gen_cpu)]
        lg = LoadgenProc(argv)
        try:
            lg.expect("connected", timeout=40)
            lg.expect("start", timeout=profile.warmup + 30)
            cpu0, t0 = _procstat.cpu_seconds(pids), time.monotonic()
            busy0 = _procstat.cpu_busy_seconds(cpus)
            everyone0 = _all_process_cpu()
            lg.expect("end", timeout=profile.duration + 30)
            cpu1, t1 = _procstat.cpu_seconds(pids), time.monotonic()
            busy1 = _procstat.cpu_busy_seconds(cpus)
            everyone1 = _all_process_cpu()
            other = _others(everyone0, everyone1, set(pids) | {lg.proc.pid, os.getpid()})
            mem = _procstat.memory_tree(pids)
            lg.release()
            res = lg.expect("result", timeout=30)
        finally:
            lg.close()
        srv.check_alive()
    if res["messages"] <= 0:
        raise BenchError(f"no datagram echoed in the window: {res}")
    cpu, window = cpu1 - cpu0, t1 - t0
    # The server's CPU as a whole, from /proc/stat: besides the server process it
    # runs the softirq work of the datagrams the server sends (loopback delivers
    # in the sender's context), which /proc/PID/stat does not charge to anyone.
    cpu_busy = ((busy1[server_cpu] - busy0[server_cpu]) / window
                if server_cpu is not None and window > 0 else None)
    return {
        "server_cpu_busy_frac": cpu_busy,
        "other_load": other / window if window > 0 else 0.0,
        "server": kind, "scenario": sc.name, "messages": res["messages"], "elapsed": res["elapsed"],
        "harness_window": window, "server_cpu_s": cpu,
        "cpu_us_per_msg": cpu / res["messages"] * 1e6, "msgs_per_s": res["msgs_per_s"],
        "server_cpu_frac": cpu / window if window > 0 else 0.0, "gen_cpu_frac": res["gen_cpu_frac"],
        "lost": res["lost"], "errors": res["errors"], "server_rss": mem.get("rss"), "loadgen": res,
    }


def summarize(runs: dict, scenarios: list[Scenario], servers: list[str]) -> dict:
    table: dict = {}
    for sc in scenarios:
        for kind in servers:
            rs = runs.get((sc.name, kind))
            if not rs:
                continue
            cpu = [r["cpu_us_per_msg"] for r in rs]
            table.setdefault(sc.name, {})[kind] = {
                "rounds": len(rs), "cpu_us_per_msg": statistics.median(cpu),
                "cpu_us_per_msg_min": min(cpu), "cpu_us_per_msg_max": max(cpu),
                "msgs_per_s": statistics.median(r["msgs_per_s"] for r in rs),
                "server_cpu_frac": statistics.median(r["server_cpu_frac"] for r in rs),
                "server_cpu_busy_frac": (statistics.median(r["server_cpu_busy_frac"] for r in rs)
                                         if rs[0]["server_cpu_busy_frac"] is not None else None),
                "gen_cpu_frac": statistics.median(r["gen_cpu_frac"] for r in rs),
                "other_load": statistics.median(r["other_load"] for r in rs),
                "lost": sum(r["lost"] for r in rs), "errors": sum(r["errors"] for r in rs),
            }
    ratios: dict = {}
    for name, rows in table.items():
        base = rows.get("netreactor")
        if base is None:
            continue
        for kind, row in rows.items():
            if kind != "netreactor":
                ratios.setdefault(name, {})[f"netreactor/{kind}"] = base["cpu_us_per_msg"] / row["cpu_us_per_msg"]
    return {"table": table, "ratios": ratios}


def print_report(result: dict) -> list[str]:
    head = ["scenario", "server", "CPU us/dgram", "range", "dgrams/s", "srv proc", "srv CPU busy",
            "gen CPU", "other load", "lost", "errors"]
    rows = []
    for name, by_kind in result["table"].items():
        for kind, r in by_kind.items():
            spread = (f"{r['cpu_us_per_msg_min']:.2f}-{r['cpu_us_per_msg_max']:.2f}"
                      if r["rounds"] > 1 else "")
            rows.append([name, kind, f"{r['cpu_us_per_msg']:.2f}", spread, f"{r['msgs_per_s']:,.0f}",
                         f"{100 * r['server_cpu_frac']:.0f}%",
                         "-" if r["server_cpu_busy_frac"] is None else f"{100 * r['server_cpu_busy_frac']:.0f}%",
                         f"{100 * r['gen_cpu_frac']:.0f}%", f"{100 * r['other_load']:.0f}%",
                         str(r["lost"]), str(r["errors"])])
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)] if rows else []
    print("\nServer process CPU per echoed 64-byte datagram (median of rounds). 'srv proc': the"
          "\nserver process's share of its CPU; 'srv CPU busy': that CPU as a whole, including the"
          "\nkernel's softirq work for the datagrams it sends, which no process is charged for.")
    for row in [head] + rows:
        print("  " + "  ".join(str(x).ljust(w) if i < 2 else str(x).rjust(w)
                               for i, (x, w) in enumerate(zip(row, widths))))
    notes = []
    if result["ratios"]:
        print("\nRatios (CPU per datagram; < 1: netreactor uses less)")
        for name, pairs in result["ratios"].items():
            for pair, value in pairs.items():
                print(f"  {name:<14} {pair:<20} {value:.2f}")
                if pair == "netreactor/uvloop":
                    verdict = "meets" if value <= TARGET_RATIO else "MISSES"
                    notes.append(f"{name}: netreactor CPU/datagram is {value:.2f}x uvloop's: {verdict} "
                                 f"the <= {TARGET_RATIO:.1f}x target (issue 4)")
    for name, by_kind in result["table"].items():
        for kind, r in by_kind.items():
            busy = r["server_cpu_busy_frac"]
            if busy is not None and busy < 0.9:
                notes.append(f"{name}/{kind}: the server's CPU was only {100 * busy:.0f}% busy, so "
                             "CPU per datagram is not at saturation")
            if r["errors"]:
                notes.append(f"{name}/{kind}: {r['errors']} bad echoes")
            if r["other_load"] > 0.05:
                notes.append(f"{name}/{kind}: other processes used {100 * r['other_load']:.0f}% of a CPU "
                             "during the window (shared machine): figures are suspect")
    for n in notes:
        print(f"note: {n}")
    return notes


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="UDP echo benchmark: server CPU per datagram, "
                                             "netreactor vs uvloop vs asyncio datagram endpoints.")
    ap.add_argument("--quick", action="store_true", help="1 s warm-up, 3 s windows, one round")
    ap.add_argument("--scenario", action="extend", nargs="+", metavar="NAME",
                    help=f"scenarios to run (default all): {', '.join(SCENARIOS)}")
    ap.add_argument("--servers", default=",".join(KINDS), help="comma-separated (default %(default)s)")
    ap.add_argument("--duration", type=float, help="measured seconds per run")
    ap.add_argument("--warmup", type=float, help="warm-up seconds per run")
    ap.add_argument("--rounds", type=int, help="rounds per scenario (median reported)")
    ap.add_argument("--json", metavar="PATH", help="where to save results")
    ap.add_argument("--serve", choices=KINDS, help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--cpu", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.serve:  # child: one server
        if args.cpu is not None:
            os.sched_setaffinity(0, {args.cpu})
        serve(args.serve, HOST, args.port)
        return 0

    base = QUICK if args.quick else FULL
    profile = Profile(args.warmup if args.warmup is not None else base.warmup,
                      args.duration if args.duration is not None else base.duration,
                      max(1, args.rounds if args.rounds is not None else base.rounds))
    if not (0 < profile.duration <= 60 and 0 <= profile.warmup <= 60):
        ap.error("--duration must be in (0, 60] and --warmup in [0, 60]")
    names = [n for part in (args.scenario or list(SCENARIOS)) for n in part.split(",") if n]
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        ap.error(f"unknown scenario(s) {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}")
    scenarios = [SCENARIOS[n] for n in names]
    servers = []
    for kind in (k.strip() for k in args.servers.split(",") if k.strip()):
        why = available(kind)
        if why:
            print(f"skipping {kind}: {why}", file=sys.stderr)
        else:
            servers.append(kind)
    if not servers:
        return 2

    cpus = sorted(os.sched_getaffinity(0))
    server_cpu, gen_cpu = (cpus[0], cpus[1]) if len(cpus) >= 2 else (None, None)
    if gen_cpu is not None:
        os.sched_setaffinity(0, {gen_cpu})
    else:
        print("WARNING: fewer than 2 CPUs: no pinning", file=sys.stderr)
    _, cc = build_loadgen()

    def on_term(signum, frame):
        raise Interrupted()

    signal.signal(signal.SIGTERM, on_term)
    runs, failures, interrupted, started = run_rounds(
        scenarios, servers, profile.rounds,
        f"servers: {', '.join(servers)}; scenarios: {', '.join(s.name for s in scenarios)}; "
        f"warmup {profile.warmup:g}s, window {profile.duration:g}s, rounds {profile.rounds}; "
        f"server on CPU {server_cpu}, udploadgen on CPU {gen_cpu}",
        12, lambda kind, sc: run_one(kind, sc, profile, server_cpu, gen_cpu),
        lambda run: (f"{run['cpu_us_per_msg']:6.2f} us/dgram {run['msgs_per_s']:>10,.0f} "
                     f"dgrams/s  server {100 * run['server_cpu_frac']:.0f}%, lost {run['lost']}"
                     + (f", {run['errors']} errors" if run["errors"] else "")),
        BenchError, Interrupted)

    result = summarize(runs, scenarios, servers)
    notes = print_report(result)
    try:
        import uvloop
        uv_version = uvloop.__version__
    except ImportError:
        uv_version = None
    meta = {
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "python": sys.version.split()[0],
        "kernel": platform.release(), "cpus": os.cpu_count(), "uvloop": uv_version, "compiler": cc,
        "server_cpu": server_cpu, "loadgen_cpu": gen_cpu, "warmup": profile.warmup,
        "duration": profile.duration, "rounds": profile.rounds, "argv": sys.argv[1:],
        "wall_s": round(time.monotonic() - started, 1),
    }
    path = args.json or os.path.join(RESULTS_DIR, f"udp-{time.strftime('%Y%m%d-%H%M%S')}.json")
    save_json(path, {"meta": meta, "interrupted": interrupted, "summary": result, "notes": notes,
                     "failures": failures, "runs": [r for rs in runs.values() for r in rs]})
    print(f"saved {os.path.relpath(path)} ({meta['wall_s']:.0f} s)")
    if interrupted:
        return 130
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
