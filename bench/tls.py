"""TLS echo benchmark: server CPU per message, per handshake and memory per TLS connection.

    python3 bench/tls.py [--quick] [--scenario NAME ...]
                         [--servers netreactor-tls,uvloop-tls,asyncio-tls,py-floor-tls-bio,py-floor-tls-sock]
                         [--duration S] [--warmup S] [--rounds N] [--idle-conns N]
                         [--tls12] [--key rsa|ec] [--no-verify] [--json PATH] [--plain]
    netreactor bench tls ...                       # the same

Exactly bench/echo.py's method, over TLS: each server (``bench/servers.py
KIND --certfile ... --keyfile ...``) in its own process pinned to the first
CPU, the C load generator ``bench/tlsloadgen.c`` (OpenSSL; built on demand
into ``bench/_build/``, skipped with the reason when libssl-dev is missing)
pinned to the second, with this harness.  The main figure is the server's
CPU time per echoed message (per handshake, per 64 KiB message), from
``/proc``, over the generator's counting window; the ratios are each server's
figure divided by uvloop-tls's, in the same run, rounds interleaved.

Every server gets the same certificate (made for this run with trustme or
the openssl command, in a temporary directory: no key is ever written
elsewhere), RSA 2048 unless ``--key ec``; TLS 1.3 with TLS_AES_128_GCM_SHA256,
or with ``--tls12`` TLS 1.2 with ECDHE-RSA-AES128-GCM-SHA256 (the client
offers only that, so every server negotiates it; the result records what was
negotiated).  The generator verifies the certificate and its name unless
``--no-verify``.  Results go to ``bench/results/tls-<timestamp>.json``.
"""

from __future__ import annotations

import argparse
import os
import socket
import ssl
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Optional

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _certs import KEY_TYPES, CertFiles, make_certs  # noqa: E402
from _common import (BUILD_DIR, HERE, HOST, BenchError, build_c, free_port,  # noqa: E402
                     machine_meta, package_version, raise_on_sigterm, results_path)
from _harness import (LineReporter, Profile, Scenario, TableSpec, add_run_options,  # noqa: E402
                      check_servers, finish, measure_idle, measure_load, pick_scenarios,
                      pin_harness, print_report, profile_from_args, run_notes, run_rounds,
                      split_servers, summarize, throughput_run)
from _procs import ServerProc  # noqa: E402
import echo  # noqa: E402  (servers.py's command line)

SRC = os.path.join(HERE, "tlsloadgen.c")
BIN = os.path.join(BUILD_DIR, "tlsloadgen")
DEFAULT_SERVERS = ("netreactor-tls", "uvloop-tls", "asyncio-tls", "py-floor-tls-bio",
                   "py-floor-tls-sock")
BASELINE = "uvloop-tls"
TLS12_CIPHER = "ECDHE-RSA-AES128-GCM-SHA256"
#: Issue 12's targets for netreactor-tls, against uvloop-tls in the same run.
TARGETS = {"msg": 0.8, "handshake": 1.0, "idle": 0.5}

SCENARIOS = {
    s.name: s
    for s in (
        Scenario("pingpong-50", "pingpong", 50, 1, 64, "64 B ping-pong, 50 TLS connections"),
        Scenario("pipeline-50", "pipeline", 50, 16, 64,
                 "16 x 64 B per write (one record), 50 TLS connections"),
        Scenario("bulk-64k", "bulk", 8, 1, 65536,
                 "64 KiB messages (four full records) echoed, 8 TLS connections", unit="64KiB"),
        Scenario("handshake-50", "handshake", 50, 1, 64,
                 "connect, full handshake, one 64 B echo, close; 50 concurrent clients",
                 unit="handshake"),
        Scenario("idle", "idle", 5000, 1, 1, "memory per idle TLS connection (--idle-conns, 5,000)"),
    )
}

QUICK = Profile(warmup=1.0, duration=3.0, rounds=1, settle=0.5)
FULL = Profile(warmup=2.0, duration=5.0, rounds=3, settle=1.0)


def build_loadgen() -> tuple[Optional[str], str]:
    """(tlsloadgen binary, compiler) or (None, why it cannot be built: no compiler, no libssl-dev)."""
    binary, why = build_c(SRC, BIN, libs=("-lssl", "-lcrypto"))
    if binary is None and ("openssl/" in why or "-lssl" in why or "-lcrypto" in why):
        why = ("bench/tlsloadgen.c needs OpenSSL's headers and libraries: install libssl-dev "
               f"(Debian) ({why.splitlines()[-1][:200] if why else ''})")
    return binary, why


@dataclass
class Ctx:
    """What every run of one invocation shares."""

    loadgen: str
    certs: CertFiles
    server_cpu: Optional[int]
    gen_cpu: Optional[int]
    profile: Profile
    idle_conns: int
    tls12: bool = False
    verify: bool = True


def server_argv(ctx: Ctx, kind: str, port: int) -> list[str]:
    extra = ["--certfile", ctx.certs.cert, "--keyfile", ctx.certs.key]
    if ctx.tls12:
        extra += ["--ciphers", TLS12_CIPHER]
    return echo.server_argv(kind, port, ctx.server_cpu, extra=tuple(extra))


def loadgen_argv(ctx: Ctx, sc: Scenario, port: int, conns: int) -> list[str]:
    argv = [ctx.loadgen, "--host", HOST, "--port", str(port), "--conns", str(conns),
            "--mode", sc.mode, "--depth", str(sc.depth), "--size", str(sc.size),
            "--warmup", str(ctx.profile.warmup), "--duration", str(ctx.profile.duration),
            "--hold", "--hold-timeout", "120", "--connect-timeout", "90"]
    if ctx.verify:
        argv += ["--cafile", ctx.certs.ca]
    if ctx.tls12:
        argv += ["--tls12", "--cipher", TLS12_CIPHER]
    if ctx.gen_cpu is not None:
        argv += ["--cpu", str(ctx.gen_cpu)]
    return argv


def one_echo(ctx: Ctx, port: int) -> None:
    """One TLS connection, one byte echoed, close_notify: the server's one-off
    allocations happen before the memory sample, and asyncio's first EOF
    raises glibc's mmap threshold as in a long-running server (bench/README.md)."""
    client = ssl.create_default_context(cafile=ctx.certs.ca)
    with socket.create_connection((HOST, port), timeout=10) as raw:
        with client.wrap_socket(raw, server_hostname="localhost") as s:
            s.sendall(b"x")
            got = s.recv(1)
            if got != b"x":
                raise BenchError(f"warm-up echo over TLS failed: got {got!r}")
            try:
                s.unwrap()  # close_notify both ways, when the server answers it
            except (ssl.SSLError, OSError):
                pass


def run_one(ctx: Ctx, kind: str, sc: Scenario) -> dict:
    """One run: throughput (CPU per message), or memory per idle connection."""
    port = free_port()
    with ServerProc(kind, server_argv(ctx, kind, port), port, ctx.server_cpu) as srv:
        srv.wait_ready()
        one_echo(ctx, port)
        if sc.mode == "idle":
            n = ctx.idle_conns
            # A TLS handshake each, RSA signing included: give the connect phase time.
            run = measure_idle(srv, loadgen_argv(ctx, sc, port, n), kind, sc, n, ctx.profile.settle,
                               connect_timeout=120)
        else:
            m = measure_load(srv, loadgen_argv(ctx, sc, port, sc.conns), ctx.server_cpu,
                             ctx.gen_cpu, ctx.profile)
            run = throughput_run(kind, sc, m)
            run["mb_per_s"] = m.result.get("mb_per_s")
    res = run["loadgen"]
    run.update(tls_version=res.get("tls_version"), cipher=res.get("cipher"))
    return run


def describe(run: dict) -> str:
    if "bytes_per_conn_rss" in run:
        return echo.describe(run)
    line = echo.describe(run)
    if run["unit"] == "64KiB":
        line += f", {run['mb_per_s']:,.0f} MB/s"
    return line


# ---------------------------------------------------------------------------- report


def report_specs() -> list[TableSpec]:
    head = ["scenario", "server", "CPU us/msg", "range", "msgs/s", "p50 us", "p99 us", "srv CPU",
            "gen CPU", "other load", "errors"]
    return [
        TableSpec("Server CPU per echoed 64-byte message over TLS (median of rounds)", ("msg",),
                  head),
        TableSpec("Server CPU per echoed 64 KiB message over TLS (median of rounds)", ("64KiB",),
                  ["scenario", "server", "CPU us/64KiB", "range", "MB/s"] + head[5:],
                  rate=lambda row, sc: f"{row['msgs_per_s'] * sc.size / 1e6:,.0f}"),
        TableSpec("Server CPU per connection: connect, full handshake, 64 B echo, close "
                  "(median of rounds)", ("handshake",),
                  ["scenario", "server", "CPU us/hs", "range", "handshakes/s"] + head[5:]),
    ]


def notes_for(result: dict, scenarios: list[Scenario]) -> list[str]:
    """run_notes, and netreactor-tls against issue 12's targets when both are there."""
    out = run_notes(result, scenarios)
    ours = "netreactor-tls"
    for sc in scenarios:
        ratio = result["ratios"].get(sc.name, {}).get(f"{ours}/{BASELINE}")
        if ratio is None:
            continue
        if sc.unit == "msg":
            ok, goal = ratio <= TARGETS["msg"], f"<= {TARGETS['msg']}x its CPU per message"
        elif sc.unit == "handshake":
            # Handshakes per second of CPU: at least uvloop-tls's, i.e. CPU per handshake <= 1x.
            ok, goal = ratio <= TARGETS["handshake"], "<= 1x its CPU per handshake"
        elif sc.mode == "idle":
            ok, goal = ratio <= TARGETS["idle"], f"<= {TARGETS['idle']}x its memory per connection"
        else:
            continue
        out.append(f"{ours} {sc.name}: {ratio:.2f}x {BASELINE}'s: {'meets' if ok else 'MISSES'} "
                   f"the {goal} target (issue 12)")
    return out


# ---------------------------------------------------------------------------- main


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(
        description="TLS echo benchmark: server CPU per message and per handshake, memory per "
                    "TLS connection; ratios to uvloop-tls.")
    add_run_options(ap, SCENARIOS, DEFAULT_SERVERS, "short windows, one round", "tls")
    ap.add_argument("--idle-conns", type=int, default=5000,
                    help="connections for the idle-memory scenario (default %(default)s)")
    ap.add_argument("--tls12", action="store_true",
                    help=f"TLS 1.2 with {TLS12_CIPHER} instead of TLS 1.3 with TLS_AES_128_GCM_SHA256")
    ap.add_argument("--key", choices=KEY_TYPES, default="rsa",
                    help="the certificate's key: rsa (2048, default) or ec (P-256)")
    ap.add_argument("--no-verify", action="store_true",
                    help="the load generator does not verify the server's certificate")
    ap.add_argument("--plain", action="store_true", help="plain-text tables even if rich exists")
    args = ap.parse_args(argv)
    profile = profile_from_args(ap, args, QUICK, FULL)
    if not 1 <= args.idle_conns <= 15000:
        ap.error("--idle-conns must be between 1 and 15000 (the fd limit here is 20000)")
    if args.tls12 and args.key != "rsa":
        ap.error(f"--tls12 uses {TLS12_CIPHER}, which needs --key rsa")
    scenarios = pick_scenarios(args.scenario, SCENARIOS)

    loadgen, cc = build_loadgen()
    if loadgen is None:
        print(f"skipping bench/tls.py: {cc}", file=sys.stderr)
        return 2
    server_cpu, gen_cpu = pin_harness()
    servers, _ = check_servers(split_servers(args.servers), {"echo"})
    if not servers:
        print("error: no server to benchmark", file=sys.stderr)
        return 2
    raise_on_sigterm()
    with tempfile.TemporaryDirectory(prefix="nr-tls-bench-") as certdir:
        certs = make_certs(certdir, args.key)
        ctx = Ctx(loadgen, certs, server_cpu, gen_cpu, profile, args.idle_conns, args.tls12,
                  not args.no_verify)
        proto = "TLS 1.2 " + TLS12_CIPHER if args.tls12 else "TLS 1.3 TLS_AES_128_GCM_SHA256"
        print(f"servers: {', '.join(servers)}; scenarios: {', '.join(s.name for s in scenarios)}; "
              f"{proto}, {args.key} key ({certs.made_with}); warmup {profile.warmup:g}s, window "
              f"{profile.duration:g}s, rounds {profile.rounds}; server on CPU {server_cpu}, "
              f"tlsloadgen on CPU {gen_cpu}")
        started = time.monotonic()
        done = run_rounds(scenarios, servers, profile.rounds, lambda k, sc: run_one(ctx, k, sc),
                          describe, LineReporter(len(scenarios) * len(servers) * profile.rounds,
                                                 12, 17),
                          errors=(BenchError, OSError, ssl.SSLError))
    base = BASELINE if BASELINE in servers else servers[0]
    result = summarize(done.runs, scenarios, servers, base, base_first=False)
    print_report(result, scenarios, report_specs(), use_rich=not args.plain,
                 ratio_title=f"Ratios other/{base} (< 1: less than {base})")
    notes = notes_for(result, scenarios)
    for n in notes:
        print(f"note: {n}")
    negotiated = sorted({(r.get("tls_version"), r.get("cipher")) for r in done.flat()
                         if r.get("tls_version")})
    meta = {**machine_meta(), "openssl": ssl.OPENSSL_VERSION, "uvloop": package_version("uvloop"),
            "compiler": cc, "servers": servers, "server_cpu": server_cpu, "loadgen_cpu": gen_cpu,
            "warmup": profile.warmup, "duration": profile.duration, "rounds": profile.rounds,
            "settle": profile.settle, "idle_conns": args.idle_conns, "quick": args.quick,
            "tls12": args.tls12, "key": args.key, "certificate_by": certs.made_with,
            "verify": not args.no_verify, "negotiated": negotiated}
    return finish(results_path("tls", args.json), meta, done, started, summary=result, notes=notes)


if __name__ == "__main__":
    sys.exit(main())
