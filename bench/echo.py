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
import os
import socket
import sys
import time
from dataclasses import dataclass

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import (HOST, SERVERS_PY, BenchError, build_loadgen, free_port,  # noqa: E402
                     machine_meta, package_version, raise_on_sigterm, results_path)
from _harness import (LineReporter, Profile, Scenario, TableSpec, add_run_options,  # noqa: E402
                      check_servers, finish, measure_idle, measure_load, pct, pick_scenarios,
                      pin_harness, print_report, profile_from_args, run_notes, run_rounds,
                      split_servers, summarize, throughput_run)
from _procs import ServerProc  # noqa: E402

DEFAULT_SERVERS = ("netreactor", "uvloop", "asyncio")
IDLE_TARGET_BYTES = 400  # netreactor's goal for memory per idle connection
FRAMED_TARGET_RATIO = 0.8  # issue 3: netreactor <= 0.8x uvloop's CPU per frame

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

QUICK = Profile(warmup=1.0, duration=3.0, rounds=1, settle=0.5)
FULL = Profile(warmup=2.0, duration=5.0, rounds=3, settle=1.0)


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


def server_argv(kind: str, port: int, cpu: int | None, proto: str = "echo",
                extra: tuple = ()) -> list[str]:
    """``servers.py KIND`` on 127.0.0.1:``port``, as the harness starts it."""
    cmd = [sys.executable, SERVERS_PY, kind, "--host", HOST, "--port", str(port)]
    if proto != "echo":
        cmd += ["--proto", proto]
    if cpu is not None:
        cmd += ["--cpu", str(cpu)]
    return cmd + list(extra)


def start_server(kind: str, port: int, cpu: int | None, proto: str = "echo") -> ServerProc:
    return ServerProc(kind, server_argv(kind, port, cpu, proto), port, cpu)


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
    """Ping-pong / pipeline / short run: server CPU per message and throughput."""
    port = free_port()
    with start_server(kind, port, ctx.server_cpu, sc.proto) as srv:
        srv.wait_ready()
        _one_echo(port, sc)
        m = measure_load(srv, _loadgen_argv(ctx, sc, port, sc.conns), ctx.server_cpu,
                         ctx.gen_cpu, ctx.profile)
    run = throughput_run(kind, sc, m)
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
    with start_server(kind, port, ctx.server_cpu) as srv:
        srv.wait_ready()
        _one_echo(port)
        return measure_idle(srv, _loadgen_argv(ctx, sc, port, n), kind, sc, n, ctx.profile.settle)


def run_one(ctx: Ctx, kind: str, sc: Scenario) -> dict:
    return (run_idle if sc.mode == "idle" else run_throughput)(ctx, kind, sc)


def describe(run: dict) -> str:
    """The progress line's tail for one run."""
    if "bytes_per_conn_rss" in run:
        pss = run.get("bytes_per_conn_pss")
        return (f"{run['bytes_per_conn_rss']:,.0f} B/conn RSS"
                + (f", {pss:,.0f} B/conn PSS" if pss is not None else "")
                + f", {run['connected']} conns in {run['connect_s']:.2f}s"
                + (f", {run['errors']} errors" if run["errors"] else ""))
    other, unit = run["foreign_frac_server_cpu"], run["unit"]
    return (f"{run['cpu_us_per_msg']:6.2f} us/{unit:<5} "
            f"{run['msgs_per_s']:>10,.0f} {unit}/s  server "
            f"{pct(run['server_cpu_frac'])}, loadgen {pct(run['gen_busy_frac'])}"
            + (f", other load on server CPU {pct(other)}" if other and other > 0.05 else "")
            + (f", {run['errors']} errors" if run["errors"] else ""))


# --------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------
def report_specs(scenarios: list[Scenario]) -> list[TableSpec]:
    perf_head = ["scenario", "server", "CPU us/msg", "range", "msgs/s", "p50 us", "p99 us",
                 "srv CPU", "gen CPU", "other load", "errors"]
    short_head = ["scenario", "server", "CPU us/conn", "range", "conns/s", "p50 us", "p99 us",
                  "srv CPU", "gen CPU", "other load", "errors"]
    perf_title = "Server CPU per echoed message (median of rounds)"
    if any(sc.unit == "frame" for sc in scenarios):
        perf_title = ("Server CPU per echoed message (median of rounds; framed-50: "
                      "per 68-byte frame)")
    return [TableSpec(perf_title, ("msg", "frame"), perf_head),
            # Short connections go to their own table (per connection).
            TableSpec("Server CPU per short connection: connect, 64 B echo, close (median of rounds)",
                      ("conn",), short_head)]


def warnings_for(result: dict, scenarios: list[Scenario], loadgen_kind: str) -> list[str]:
    """Plain-language caveats: unsaturated servers, errors, missed targets."""
    out = []
    if loadgen_kind == "python":
        out.append("pure-Python load generator used: it is probably the bottleneck")
    out += run_notes(result, scenarios)
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
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description="Echo benchmark: server CPU per message and memory per connection, "
                    "netreactor vs uvloop vs asyncio.")
    add_run_options(ap, SCENARIOS, DEFAULT_SERVERS, "short windows, one round (about a minute)",
                    "echo")
    ap.add_argument("--idle-conns", type=int, default=9000,
                    help="connections for the idle-memory scenario (default %(default)s)")
    ap.add_argument("--loadgen", choices=("auto", "c", "python"), default="auto",
                    help="load generator: C (built on demand) or the Python fallback")
    ap.add_argument("--spin", action="store_true", help="load generator busy-polls")
    ap.add_argument("--short-close", choices=("eof", "rst", "fin"), default="eof",
                    help="short-50: how the client closes: eof (default: FIN then RST, the "
                         "server reads EOF, no TIME_WAIT), rst (reset only), fin (plain close, "
                         "TIME_WAIT spread over 127.0.0.2-250)")
    ap.add_argument("--plain", action="store_true", help="plain-text tables even if rich exists")
    args = ap.parse_args(argv)

    profile = profile_from_args(ap, args, QUICK, FULL)
    if not 1 <= args.idle_conns <= 15000:
        ap.error("--idle-conns must be between 1 and 15000 (the fd limit here is 20000)")
    scenarios = pick_scenarios(args.scenario, SCENARIOS)
    server_cpu, gen_cpu = pin_harness()
    servers, unsupported = check_servers(split_servers(args.servers),
                                         {sc.proto for sc in scenarios})
    if not servers:
        print("error: no server to benchmark", file=sys.stderr)
        return 2

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
    meta = {**machine_meta(), "uvloop": package_version("uvloop"),
            "loadgen": loadgen_kind, "compiler": cc, "servers": servers,
            "server_cpu": server_cpu, "loadgen_cpu": gen_cpu,
            "warmup": profile.warmup, "duration": profile.duration,
            "rounds": profile.rounds, "settle": profile.settle,
            "idle_conns": args.idle_conns, "quick": args.quick, "short_close": args.short_close}
    json_path = results_path("echo", args.json)
    raise_on_sigterm()

    def skip(kind: str, sc: Scenario) -> bool:
        return (kind, sc.proto) in unsupported

    total = sum(profile.rounds * sum(not skip(k, sc) for k in servers) for sc in scenarios)
    print(f"servers: {', '.join(servers)}; scenarios: {', '.join(s.name for s in scenarios)}; "
          f"warmup {profile.warmup:g}s, window {profile.duration:g}s, rounds {profile.rounds}; "
          f"server on CPU {server_cpu}, loadgen ({loadgen_kind}) on CPU {gen_cpu}")
    started = time.monotonic()
    done = run_rounds(scenarios, servers, profile.rounds,
                      lambda kind, sc: run_one(ctx, kind, sc), describe,
                      LineReporter(total, 14, 10), skip=skip)

    base = "netreactor" if "netreactor" in servers else servers[0]
    result = summarize(done.runs, scenarios, servers, base)
    print_report(result, scenarios, report_specs(scenarios), use_rich=not args.plain)
    notes = warnings_for(result, scenarios, loadgen_kind)
    for n in notes:
        print(f"note: {n}")
    return finish(json_path, meta, done, started, summary=result, notes=notes)


if __name__ == "__main__":
    sys.exit(main())
