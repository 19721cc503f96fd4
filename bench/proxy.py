"""TCP proxy benchmark: throughput of netreactor/examples/tcp_proxy.py vs a minimal asyncio
(Protocol API) proxy, and the same proxy on uvloop, in one run.

    python3 bench/proxy.py [--quick] [--scenario NAME ...] [--servers netreactor,asyncio,uvloop]
                           [--duration S] [--warmup S] [--rounds N] [--json PATH]

Three processes per run, all on loopback:

* the **proxy** under test, pinned to the first CPU: ``netreactor/examples/tcp_proxy.py``
  (netreactor, one loop) or ``bench/proxy.py --serve asyncio|uvloop`` -- the
  textbook Protocol-API proxy: the inbound side is paused until the upstream
  connection is made, ``data_received`` writes to the other side, and
  ``pause_writing``/``resume_writing`` pause and resume reading the other side
  (back-pressure both ways, as the netreactor example does);
* the **load** process (``bench/proxy.py --load``), pinned to the second CPU:
  the upstream server and the clients, in threads. Clients write 64 KiB
  chunks as fast as the proxy takes them.

Scenarios: ``oneway-4`` -- 4 connections stream to a sink upstream, which
counts what arrives; ``echo-4`` -- 4 connections stream through an echo
upstream and count what comes back (both directions through the proxy).
The figures are MB/s delivered in the measured window (1 MB = 10^6 bytes)
and the proxy's CPU seconds per GB (utime+stime from ``/proc/PID/stat``).
Servers run interleaved round by round and the median is reported. Results go
to ``bench/results/proxy-<timestamp>.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import socket
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import (HOST, REPO_ROOT, BenchError, free_port, machine_meta,  # noqa: E402
                     raise_on_sigterm, results_path)
from _harness import (CpuWindow, LineReporter, Profile, Scenario, add_run_options,  # noqa: E402
                      finish, groups, median, pick_scenarios, pin_harness, print_table, profile_from_args,
                      run_rounds, split_servers)
from _procs import LoadgenProc, ServerProc  # noqa: E402
import _procstat  # noqa: E402

KINDS = ("netreactor", "asyncio", "uvloop")
CHUNK = 64 * 1024

SCENARIOS = {s.name: s for s in (
    Scenario("oneway-4", "oneway", 4, size=CHUNK,
             about="4 connections, 64 KiB writes, to a sink upstream", unit="byte"),
    Scenario("echo-4", "echo", 4, size=CHUNK,
             about="4 connections, 64 KiB writes, through an echo upstream and back", unit="byte"),
)}

QUICK = Profile(warmup=1.0, duration=3.0, rounds=1)
FULL = Profile(warmup=2.0, duration=5.0, rounds=3)


# --------------------------------------------------------------------------
# the asyncio / uvloop proxy (child process)
# --------------------------------------------------------------------------
class _Side(asyncio.Protocol):
    """One end of a relayed pair: what arrives is written to the other end."""

    def __init__(self) -> None:
        self.transport = None
        self.peer: "_Side | None" = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.peer.transport.write(data)

    # Our transport's buffer is over its high-water mark: stop reading the
    # other side until it drains (and the same the other way round).
    def pause_writing(self) -> None:
        if self.peer is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None:
            self.peer.transport.resume_reading()

    def connection_lost(self, exc) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.close()


class _Inbound(_Side):
    upstream: tuple = (HOST, 0)

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        transport.pause_reading()  # nowhere to relay to yet
        asyncio.get_running_loop().create_task(self._dial())

    async def _dial(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            _, up = await loop.create_connection(_Side, *self.upstream)
        except OSError:
            self.transport.close()
            return
        if self.transport.is_closing():
            up.transport.close()
            return
        up.peer, self.peer = self, up
        self.transport.resume_reading()


async def _serve_asyncio(port: int, upstream_port: int) -> None:
    _Inbound.upstream = (HOST, upstream_port)
    server = await asyncio.get_running_loop().create_server(_Inbound, HOST, port, backlog=1024)
    async with server:
        await server.serve_forever()


def serve(kind: str, port: int, upstream_port: int) -> None:
    if kind == "asyncio":
        asyncio.run(_serve_asyncio(port, upstream_port))
    elif kind == "uvloop":
        import uvloop

        if hasattr(uvloop, "run"):
            uvloop.run(_serve_asyncio(port, upstream_port))
        else:
            asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
            asyncio.run(_serve_asyncio(port, upstream_port))
    else:
        raise SystemExit(f"--serve {kind!r}: netreactor runs netreactor/examples/tcp_proxy.py itself")


# --------------------------------------------------------------------------
# the load process: upstream server and clients, in threads
# --------------------------------------------------------------------------
def _emit(event: str, **fields) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


def load_main(mode: str, conns: int, warmup: float, duration: float, hold_timeout: float) -> int:
    stop = threading.Event()
    counters = [0] * (conns + 64)  # bytes delivered, per receiving thread (no lock: one writer each)
    slots = iter(range(len(counters)))

    def count_into(sock: socket.socket, slot: int, echo: bool) -> None:
        buf = bytearray(4 << 20)
        view = memoryview(buf)
        try:
            while True:
                n = sock.recv_into(buf)
                if not n:
                    return
                if echo:
                    sock.sendall(view[:n])
                else:
                    counters[slot] += n
        except OSError:
            return

    upstream = socket.socket()
    upstream.bind((HOST, 0))
    upstream.listen(1024)

    def accept_loop() -> None:
        while True:
            try:
                sock, _ = upstream.accept()
            except OSError:
                return
            threading.Thread(target=count_into, args=(sock, next(slots), mode == "echo"),
                             daemon=True).start()

    threading.Thread(target=accept_loop, daemon=True).start()
    _emit("upstream", port=upstream.getsockname()[1])
    line = sys.stdin.readline().split()  # "go PROXY_PORT"
    if len(line) != 2 or line[0] != "go":
        return 2
    proxy = (HOST, int(line[1]))
    chunk = os.urandom(CHUNK)
    clients = [socket.create_connection(proxy, timeout=30) for _ in range(conns)]

    def sender(sock: socket.socket) -> None:
        try:
            while not stop.is_set():
                sock.sendall(chunk)
        except OSError:
            pass

    for sock in clients:
        threading.Thread(target=sender, args=(sock,), daemon=True).start()
        if mode == "echo":
            threading.Thread(target=count_into, args=(sock, next(slots), False), daemon=True).start()
    deadline = time.monotonic() + 30
    while sum(counters) == 0:  # data flows end to end
        if time.monotonic() > deadline:
            _emit("result", error="no data came through the proxy in 30 s")
            return 1
        time.sleep(0.01)
    _emit("connected")
    time.sleep(warmup)
    b0, t0, c0 = sum(counters), time.monotonic(), sum(os.times()[:2])
    _emit("start")
    time.sleep(duration)
    b1, t1, c1 = sum(counters), time.monotonic(), sum(os.times()[:2])
    _emit("end")
    stop.set()
    # Hold until the harness has sampled the proxy and closes our stdin.
    reader = threading.Thread(target=sys.stdin.read, daemon=True)
    reader.start()
    reader.join(hold_timeout)
    for sock in clients:
        sock.close()
    upstream.close()
    elapsed = t1 - t0
    _emit("result", bytes=b1 - b0, elapsed=elapsed, mb_per_s=(b1 - b0) / elapsed / 1e6,
          gen_cpu_frac=(c1 - c0) / elapsed, errors=0)
    return 0


# --------------------------------------------------------------------------
# harness
# --------------------------------------------------------------------------
def start_proxy(kind: str, port: int, upstream_port: int, cpu: int | None) -> ServerProc:
    if kind == "netreactor":
        cmd = [sys.executable, "-m", "netreactor.examples.tcp_proxy", "--listen", f"tcp://{HOST}:{port}",
               "--upstream", f"tcp://{HOST}:{upstream_port}", "--log-level", "WARNING"]
    else:
        cmd = [sys.executable, os.path.abspath(__file__), "--serve", kind, "--port", str(port),
               "--upstream-port", str(upstream_port)]
    return ServerProc(kind, cmd, port, cpu, cwd=REPO_ROOT, what="proxy")  # -m finds netreactor there


def run_one(kind: str, sc: Scenario, profile: Profile, proxy_cpu: int | None) -> dict:
    argv = [sys.executable, os.path.abspath(__file__), "--load", "--mode", sc.mode,
            "--conns", str(sc.conns), "--warmup", str(profile.warmup),
            "--duration", str(profile.duration)]
    lg = LoadgenProc(argv)  # on load_cpu: it inherits this harness's affinity
    try:
        upstream_port = lg.expect("upstream", timeout=20)["port"]
        port = free_port()
        with start_proxy(kind, port, upstream_port, proxy_cpu) as proxy:
            proxy.wait_ready()
            lg.send(f"go {port}")
            pids = _procstat.process_tree(proxy.pid)
            win = CpuWindow(pids, proxy_cpu)
            lg.expect("connected", timeout=40)
            lg.expect("start", timeout=profile.warmup + 30)
            win.open()
            lg.expect("end", timeout=profile.duration + 30)
            win.close()
            mem = _procstat.memory_tree(pids)
            lg.release()
            res = lg.expect("result", timeout=30)
            proxy.check_alive()
    finally:
        lg.close()
    if res.get("error") or res["bytes"] <= 0:
        raise BenchError(f"no data relayed in the window: {res}")
    cpu = win.cpu_s
    return {
        "server": kind, "scenario": sc.name, "bytes": res["bytes"], "elapsed": res["elapsed"],
        "mb_per_s": res["mb_per_s"], "proxy_cpu_s": cpu,
        "cpu_s_per_gb": cpu / (res["bytes"] / 1e9),
        "proxy_cpu_frac": win.server_frac(), "load_cpu_frac": res["gen_cpu_frac"],
        "proxy_rss": mem.get("rss"),
    }


def summarize(runs: dict, scenarios: list[Scenario], servers: list[str]) -> dict:
    table: dict = {}
    for sc, kind, rs in groups(runs, scenarios, servers):
        mbs = [r["mb_per_s"] for r in rs]
        table.setdefault(sc.name, {})[kind] = {
            "rounds": len(rs), "mb_per_s": median(mbs), "mb_per_s_min": min(mbs),
            "mb_per_s_max": max(mbs),
            **{k: median(r[k] for r in rs) for k in ("cpu_s_per_gb", "proxy_cpu_frac",
                                                     "load_cpu_frac")},
            "proxy_rss": median(r["proxy_rss"] or 0 for r in rs),
        }
    ratios: dict = {}
    for name, rows in table.items():
        base = rows.get("netreactor")
        if base is None:
            continue
        for kind, row in rows.items():
            if kind != "netreactor":
                ratios.setdefault(name, {})[f"netreactor/{kind}"] = {
                    "mb_per_s": base["mb_per_s"] / row["mb_per_s"],
                    "cpu_s_per_gb": base["cpu_s_per_gb"] / row["cpu_s_per_gb"],
                }
    return {"table": table, "ratios": ratios}


def print_report(result: dict) -> list[str]:
    head = ["scenario", "proxy", "MB/s", "range", "CPU s/GB", "proxy CPU", "load CPU", "proxy RSS"]
    rows = []
    for name, by_kind in result["table"].items():
        for kind, r in by_kind.items():
            spread = f"{r['mb_per_s_min']:.0f}-{r['mb_per_s_max']:.0f}" if r["rounds"] > 1 else ""
            rows.append([name, kind, f"{r['mb_per_s']:.0f}", spread, f"{r['cpu_s_per_gb']:.2f}",
                         f"{100 * r['proxy_cpu_frac']:.0f}%", f"{100 * r['load_cpu_frac']:.0f}%",
                         f"{r['proxy_rss'] / 2**20:.1f} MiB"])
    print_table("Proxy throughput for 64 KiB writes (median of rounds; 1 MB = 10^6 bytes)", head, rows)
    notes = []
    if result["ratios"]:
        print("\nRatios netreactor/other (MB/s: > 1 netreactor relays more; CPU s/GB: < 1 it uses less)")
        for name, pairs in result["ratios"].items():
            for pair, v in pairs.items():
                print(f"  {name:<10} {pair:<22} MB/s {v['mb_per_s']:.2f}   CPU/GB {v['cpu_s_per_gb']:.2f}")
    for name, by_kind in result["table"].items():
        for kind, r in by_kind.items():
            if r["proxy_cpu_frac"] < 0.9:
                notes.append(f"{name}/{kind}: the proxy was only {100 * r['proxy_cpu_frac']:.0f}% busy "
                             "(the load process or the kernel was the limit)")
    for n in notes:
        print(f"note: {n}")
    return notes


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="TCP proxy throughput: netreactor's example proxy vs a "
                                             "minimal asyncio/uvloop Protocol proxy, 64 KiB writes.")
    add_run_options(ap, SCENARIOS, KINDS, "1 s warm-up, 3 s windows, one round", "proxy",
                    servers_help="comma-separated (default %(default)s)")
    # Child roles.
    ap.add_argument("--serve", choices=("asyncio", "uvloop"), help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--upstream-port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--load", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--mode", choices=("oneway", "echo"), default="oneway", help=argparse.SUPPRESS)
    ap.add_argument("--conns", type=int, default=4, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.serve:
        serve(args.serve, args.port, args.upstream_port)
        return 0
    profile = profile_from_args(ap, args, QUICK, FULL)
    if args.load:
        return load_main(args.mode, args.conns, profile.warmup, profile.duration, 120.0)
    scenarios = pick_scenarios(args.scenario, SCENARIOS)
    servers = []
    for kind in split_servers(args.servers):
        if kind == "uvloop" and importlib.util.find_spec("uvloop") is None:
            print("skipping uvloop: not installed (pip install uvloop)", file=sys.stderr)
            continue
        if kind not in KINDS:
            ap.error(f"unknown proxy kind {kind!r}; choose from {', '.join(KINDS)}")
        servers.append(kind)

    proxy_cpu, load_cpu = pin_harness()
    raise_on_sigterm()
    print(f"proxies: {', '.join(servers)}; scenarios: {', '.join(s.name for s in scenarios)}; "
          f"warmup {profile.warmup:g}s, window {profile.duration:g}s, rounds {profile.rounds}; "
          f"proxy on CPU {proxy_cpu}, load on CPU {load_cpu}")
    started = time.monotonic()
    done = run_rounds(
        scenarios, servers, profile.rounds,
        lambda kind, sc: run_one(kind, sc, profile, proxy_cpu),
        lambda run: (f"{run['mb_per_s']:7.0f} MB/s  {run['cpu_s_per_gb']:.2f} CPU s/GB  "
                     f"proxy {100 * run['proxy_cpu_frac']:.0f}%, load {100 * run['load_cpu_frac']:.0f}%"),
        LineReporter(len(scenarios) * len(servers) * profile.rounds, 9, 10))

    result = summarize(done.runs, scenarios, servers)
    notes = print_report(result)
    meta = {**machine_meta(), "proxy_cpu": proxy_cpu, "load_cpu": load_cpu, "chunk": CHUNK,
            "warmup": profile.warmup, "duration": profile.duration, "rounds": profile.rounds}
    return finish(results_path("proxy", args.json), meta, done, started, summary=result,
                  notes=notes)


if __name__ == "__main__":
    sys.exit(main())
