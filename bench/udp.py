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
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import (BUILD_DIR, HERE, HOST, REPO_ROOT, BenchError, build_c,  # noqa: E402
                     free_port, machine_meta, package_version, raise_on_sigterm, results_path)
from _harness import (LineReporter, Profile, finish, groups, Scenario, add_run_options, measure_load,  # noqa: E402
                      median, pick_scenarios, pin_harness, print_table, profile_from_args,
                      run_rounds, split_servers)
from _procs import ServerProc, udp_echoes  # noqa: E402

SRC = os.path.join(HERE, "udploadgen.c")
BIN = os.path.join(BUILD_DIR, "udploadgen")
KINDS = ("netreactor", "uvloop", "asyncio")
TARGET_RATIO = 1.0  # issue 4: netreactor's CPU per datagram <= uvloop's

SCENARIOS = {s.name: s for s in (
    Scenario("pingpong-32", "udp", 32, 1, 64, "32 sockets, one 64 B datagram in flight each",
             unit="datagram"),
    Scenario("window-32x4", "udp", 32, 4, 64, "32 sockets, four 64 B datagrams in flight each",
             unit="datagram"),
)}

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
def build_loadgen() -> tuple[str, str]:
    """Compile udploadgen.c when the binary is missing or older than the source."""
    binary, why = build_c(SRC, BIN)
    if binary is None:
        raise SystemExit(f"error: bench/udp.py needs udploadgen.c: {why}")
    return binary, why


def run_one(kind: str, sc: Scenario, profile: Profile, server_cpu: int | None,
            gen_cpu: int | None) -> dict:
    port = free_port(socket.SOCK_DGRAM)
    argv = [sys.executable, os.path.abspath(__file__), "--serve", kind, "--port", str(port)]
    if server_cpu is not None:
        argv += ["--cpu", str(server_cpu)]
    with ServerProc(kind, argv, port, server_cpu) as srv:
        srv.wait_ready(probe=lambda: udp_echoes(port))
        lg_argv = [BIN, "--host", HOST, "--port", str(port), "--socks", str(sc.conns),
                   "--depth", str(sc.depth), "--size", str(sc.size), "--warmup", str(profile.warmup),
                   "--duration", str(profile.duration), "--hold", "--hold-timeout", "120"]
        if gen_cpu is not None:
            lg_argv += ["--cpu", str(gen_cpu)]
        m = measure_load(srv, lg_argv, server_cpu, gen_cpu, profile, connect_timeout=40,
                         everyone=True)
    res, win = m.result, m.window
    if res["messages"] <= 0:
        raise BenchError(f"no datagram echoed in the window: {res}")
    cpu, window = win.cpu_s, win.wall
    return {
        # The server's CPU as a whole, from /proc/stat: besides the server process it
        # runs the softirq work of the datagrams the server sends (loopback delivers
        # in the sender's context), which /proc/PID/stat does not charge to anyone.
        "server_cpu_busy_frac": win.server_cpu_busy(),
        "other_load": win.others_s / window if window > 0 else 0.0,
        "server": kind, "scenario": sc.name, "messages": res["messages"], "elapsed": res["elapsed"],
        "harness_window": window, "server_cpu_s": cpu,
        "cpu_us_per_msg": cpu / res["messages"] * 1e6, "msgs_per_s": res["msgs_per_s"],
        "server_cpu_frac": win.server_frac(), "gen_cpu_frac": res["gen_cpu_frac"],
        "foreign_frac_server_cpu": m.foreign_srv, "foreign_frac_gen_cpu": m.foreign_gen,
        "lost": res["lost"], "errors": res["errors"], "server_rss": m.mem.get("rss"), "loadgen": res,
    }


def summarize(runs: dict, scenarios: list[Scenario], servers: list[str]) -> dict:
    table: dict = {}
    for sc, kind, rs in groups(runs, scenarios, servers):
        cpu = [r["cpu_us_per_msg"] for r in rs]
        table.setdefault(sc.name, {})[kind] = {
            "rounds": len(rs), "cpu_us_per_msg": median(cpu),
            "cpu_us_per_msg_min": min(cpu), "cpu_us_per_msg_max": max(cpu),
            **{k: median(r[k] for r in rs)
               for k in ("msgs_per_s", "server_cpu_frac", "server_cpu_busy_frac", "gen_cpu_frac",
                         "other_load", "foreign_frac_server_cpu", "foreign_frac_gen_cpu")},
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


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.0f}%"


def print_report(result: dict) -> list[str]:
    head = ["scenario", "server", "CPU us/dgram", "range", "dgrams/s", "srv proc", "srv CPU busy",
            "gen CPU", "other load", "lost", "errors"]
    rows = []
    for name, by_kind in result["table"].items():
        for kind, r in by_kind.items():
            spread = (f"{r['cpu_us_per_msg_min']:.2f}-{r['cpu_us_per_msg_max']:.2f}"
                      if r["rounds"] > 1 else "")
            rows.append([name, kind, f"{r['cpu_us_per_msg']:.2f}", spread, f"{r['msgs_per_s']:,.0f}",
                         _pct(r["server_cpu_frac"]), _pct(r["server_cpu_busy_frac"]),
                         _pct(r["gen_cpu_frac"]), _pct(r["other_load"]),
                         str(r["lost"]), str(r["errors"])])
    print_table("Server process CPU per echoed 64-byte datagram (median of rounds). 'srv proc': the"
                "\nserver process's share of its CPU; 'srv CPU busy': that CPU as a whole, including the"
                "\nkernel's softirq work for the datagrams it sends, which no process is charged for.",
                head, rows)
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
    add_run_options(ap, SCENARIOS, KINDS, "1 s warm-up, 3 s windows, one round", "udp",
                    servers_help="comma-separated (default %(default)s)")
    ap.add_argument("--serve", choices=KINDS, help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--cpu", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.serve:  # child: one server
        if args.cpu is not None:
            os.sched_setaffinity(0, {args.cpu})
        serve(args.serve, HOST, args.port)
        return 0

    profile = profile_from_args(ap, args, QUICK, FULL)
    scenarios = pick_scenarios(args.scenario, SCENARIOS)
    servers = []
    for kind in split_servers(args.servers):
        why = available(kind)
        if why:
            print(f"skipping {kind}: {why}", file=sys.stderr)
        else:
            servers.append(kind)
    if not servers:
        return 2

    server_cpu, gen_cpu = pin_harness()
    _, cc = build_loadgen()
    raise_on_sigterm()
    print(f"servers: {', '.join(servers)}; scenarios: {', '.join(s.name for s in scenarios)}; "
          f"warmup {profile.warmup:g}s, window {profile.duration:g}s, rounds {profile.rounds}; "
          f"server on CPU {server_cpu}, udploadgen on CPU {gen_cpu}")
    started = time.monotonic()
    done = run_rounds(
        scenarios, servers, profile.rounds,
        lambda kind, sc: run_one(kind, sc, profile, server_cpu, gen_cpu),
        lambda run: (f"{run['cpu_us_per_msg']:6.2f} us/dgram {run['msgs_per_s']:>10,.0f} "
                     f"dgrams/s  server {100 * run['server_cpu_frac']:.0f}%, lost {run['lost']}"
                     + (f", {run['errors']} errors" if run["errors"] else "")),
        LineReporter(len(scenarios) * len(servers) * profile.rounds, 12, 10))

    result = summarize(done.runs, scenarios, servers)
    notes = print_report(result)
    meta = {**machine_meta(), "uvloop": package_version("uvloop"), "compiler": cc,
            "server_cpu": server_cpu, "loadgen_cpu": gen_cpu, "warmup": profile.warmup,
            "duration": profile.duration, "rounds": profile.rounds}
    return finish(results_path("udp", args.json), meta, done, started, summary=result, notes=notes)


if __name__ == "__main__":
    sys.exit(main())
