"""asyncio benchmark: request -> ``await`` redis GET -> reply, 50 connections.

    python3 bench/aio.py                     # every kind, 2 rounds, ~3 minutes
    python3 bench/aio.py --quick             # 1 round, shorter runs, ~1 minute
    python3 bench/aio.py --scenario get --servers netreactor,uvloop-protocol --rounds 3
    netreactor bench aio [ARGS]              # the same, through the CLI

One service, written once per model: a RESP front end whose every command is
forwarded to a real ``redis-server`` by an awaited call of redis-py's asyncio
client (``netreactor.examples.redis_front``: ``RedisFront.forward``, the very
same coroutine in every asyncio kind, so that what differs is the event loop and
the I/O layer, not the service), driven by ``redis-benchmark -c 50 -t get``
(key ``key:__rand_int__``, a 64-byte value). KINDs:

* ``netreactor``          -- ``asyncio=True``: the front end's connections and the
  redis client's sockets on one poller, coroutines spawned with ``conn.spawn``
  on the connection's loop thread (``netreactor example redis-front``).
* ``netreactor-uvloop``   -- ``asyncio=True, asyncio_loop="uvloop"``: a uvloop loop
  on the engine's thread runs netreactor's loop nested (its epoll fd is one
  uvloop reader); the coroutines, and the redis client's sockets, are uvloop's.
* ``netreactor-serve-uvloop`` -- the same nesting from the other side: ``async with
  netreactor.serve(...)`` inside ``uvloop.run()``.
* ``netreactor-thread``   -- the threaded fallback: netreactor without asyncio, an
  asyncio loop on a helper thread, each request ``run_coroutine_threadsafe``
  and its reply ``conn.async_write`` (one request in flight per connection is
  assumed: no ordering of its own).
* ``netreactor-pool``     -- netreactor + ``WorkerPool`` (16 threads) with the
  blocking redis client.
* ``asyncio-streams``, ``uvloop-streams``   -- ``asyncio.start_server``, a task per
  connection reading, awaiting ``forward``, writing (on asyncio's own loop, or
  on uvloop).
* ``asyncio-protocol``, ``uvloop-protocol`` -- an ``asyncio.Protocol`` whose
  ``data_received`` starts a task per read, replies written in order.

Scenarios: ``get`` (one request in flight per connection), ``get-P16``
(``-P 16``: 16 pipelined per connection, one batch per read, forwarded as one
redis pipeline), and ``ping`` (PING, which the front end's coroutine answers
itself without awaiting anything: the per-call cost of each way to run a
coroutine per request, the threaded fallback's hop included).

The front end is pinned to the first CPU; ``redis-server`` and
``redis-benchmark`` share the second. The figure is the **front end's CPU time
per request** (utime+stime of its process tree from /proc over the run), with
the throughput beside it; kinds are run in a rotating order each round, the
median of rounds is reported. The target (issue 16): ``netreactor`` at least
the throughput of the better plain-asyncio version on uvloop.
Only 127.0.0.1 is loaded; every child is killed on exit.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import threading
import time
from typing import Any, Optional

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _procstat
from _common import HOST, BenchError, free_port, machine_meta, package_version, raise_on_sigterm, results_path
from _harness import (CpuWindow, LineReporter, Scenario, TableSpec, add_run_options, finish,
                      pick_scenarios, pin_harness, print_report, run_notes, run_rounds, split_servers,
                      summarize)
from _procs import ServerProc, run_to_end

KINDS = ("netreactor", "netreactor-uvloop", "netreactor-serve-uvloop", "netreactor-thread", "netreactor-pool",
         "asyncio-streams", "asyncio-protocol", "uvloop-streams", "uvloop-protocol")
BASELINE = "uvloop-protocol"
#: The kinds with coroutines spawned on the connection's own loop thread (the target's subject).
SAME_THREAD = ("netreactor", "netreactor-uvloop", "netreactor-serve-uvloop")
SCENARIOS = {
    "get": Scenario("get", "get", 50, 1, 64, "redis-benchmark -c 50 -t get: one GET in flight per connection",
                    unit="req"),
    "get-P16": Scenario("get-P16", "get", 50, 16, 64, "the same with -P 16: 16 pipelined per connection",
                        unit="req"),
    "ping": Scenario("ping", "ping_mbulk", 50, 1, 0, "redis-benchmark -c 50 -t ping_mbulk: the front "
                     "end's coroutine answers PING itself, no await: what running a coroutine per "
                     "request costs each way", unit="req"),
}
KEY, VALUE = b"key:__rand_int__", b"v" * 64
POOL_WORKERS = 16
#: Requests per measured run (and per warm-up run).
REQUESTS = {"get": 60_000, "get-P16": 300_000, "ping": 100_000}
QUICK_REQUESTS = {"get": 20_000, "get-P16": 100_000, "ping": 30_000}
WARMUP_REQUESTS = 2_000


# ---------------------------------------------------------------------------- the servers


def _front(redis_port: int) -> Any:
    from netreactor.examples.redis_front import RedisFront

    return RedisFront(f"redis://{HOST}:{redis_port}/0")


def serve_netreactor(port: int, redis_port: int) -> None:
    import netreactor as nr

    nr.run(_front(redis_port), f"tcp://{HOST}:{port}", asyncio=True)


def serve_netreactor_uvloop_engine(port: int, redis_port: int) -> None:
    import netreactor as nr

    nr.run(_front(redis_port), f"tcp://{HOST}:{port}", asyncio=True, asyncio_loop="uvloop")


def serve_netreactor_serve_uvloop(port: int, redis_port: int) -> None:
    import uvloop

    import netreactor as nr

    async def main() -> None:
        async with nr.serve(_front(redis_port), f"tcp://{HOST}:{port}") as engine:
            await engine.wait_stopped()

    uvloop.run(main())


def serve_netreactor_thread(port: int, redis_port: int) -> None:
    import netreactor as nr
    from netreactor.protocols.resp import CommandParser

    front = _front(redis_port)
    aio = asyncio.new_event_loop()
    threading.Thread(target=aio.run_forever, name="asyncio-helper", daemon=True).start()

    class Threaded(nr.EventHandler):
        def on_open(self, conn):
            conn.context = CommandParser()

        def on_traffic(self, conn):
            batch = conn.context.feed(conn.read())
            if batch:
                future = asyncio.run_coroutine_threadsafe(front.forward(batch), aio)
                future.add_done_callback(lambda f: conn.async_write(f.result()))

    nr.run(Threaded(), f"tcp://{HOST}:{port}")


def serve_netreactor_pool(port: int, redis_port: int) -> None:
    import redis

    import netreactor as nr
    from netreactor.examples.redis_front import ENCODERS, error_reply, local_reply
    from netreactor.protocols.resp import CommandParser

    client = redis.Redis(host=HOST, port=redis_port)
    pool = nr.WorkerPool(max_workers=POOL_WORKERS, max_queue=4 * 50)

    def forward(batch: list) -> bytes:  # on a worker thread: blocking calls
        out = []
        for args in batch:
            reply = local_reply(args)
            if reply is None:
                try:
                    reply = ENCODERS[args[0].lower()](client.execute_command(*args))
                except Exception as exc:
                    reply = error_reply(exc)
            out.append(reply)
        return b"".join(out)

    def forward_pipelined(batch: list) -> bytes:
        if len(batch) == 1:
            return forward(batch)
        replies = [local_reply(args) for args in batch]
        remote = [args for args, reply in zip(batch, replies, strict=True) if reply is None]
        pipe = client.pipeline(transaction=False)
        for args in remote:
            pipe.execute_command(*args)
        results = iter(zip(remote, pipe.execute(raise_on_error=False), strict=True))
        for i, reply in enumerate(replies):
            if reply is None:
                args, result = next(results)
                replies[i] = (error_reply(result) if isinstance(result, Exception)
                              else ENCODERS[args[0].lower()](result))
        return b"".join(replies)

    class Pooled(nr.EventHandler):
        def on_open(self, conn):
            conn.context = CommandParser()

        def on_traffic(self, conn):
            batch = conn.context.feed(conn.read())
            if batch:
                pool.submit(conn, forward_pipelined, batch)

    nr.run(Pooled(), f"tcp://{HOST}:{port}")


async def _serve_streams(port: int, redis_port: int) -> None:
    from netreactor.protocols.resp import CommandParser

    front = _front(redis_port)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        parser = CommandParser()
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                batch = parser.feed(data)
                if batch:
                    writer.write(await front.forward(batch))
                    await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, HOST, port, backlog=1024)
    async with server:
        await server.serve_forever()


async def _serve_protocol(port: int, redis_port: int) -> None:
    from collections import deque

    from netreactor.protocols.resp import CommandParser

    front = _front(redis_port)
    loop = asyncio.get_running_loop()

    class Front(asyncio.Protocol):
        def connection_made(self, transport: Any) -> None:
            self.transport = transport
            self.parser = CommandParser()
            self.pending: deque = deque()  # tasks, in request order

        def data_received(self, data: bytes) -> None:
            batch = self.parser.feed(data)
            if batch:
                previous = self.pending[-1] if self.pending else None
                task = loop.create_task(front.forward(batch, previous))
                self.pending.append(task)
                task.add_done_callback(self._done)

        def _done(self, _task: Any) -> None:
            pending = self.pending
            while pending and pending[0].done():
                task = pending.popleft()
                if not task.cancelled() and task.exception() is None:
                    self.transport.write(task.result())

        def connection_lost(self, exc: Optional[BaseException]) -> None:
            for task in self.pending:
                task.cancel()

    server = await loop.create_server(Front, HOST, port, backlog=1024)
    async with server:
        await server.serve_forever()


def _run_asyncio(main: Any, port: int, redis_port: int, uv: bool) -> None:
    if uv:
        import uvloop

        uvloop.run(main(port, redis_port))
    else:
        asyncio.run(main(port, redis_port))


SERVE = {
    "netreactor": serve_netreactor,
    "netreactor-uvloop": serve_netreactor_uvloop_engine,
    "netreactor-serve-uvloop": serve_netreactor_serve_uvloop,
    "netreactor-thread": serve_netreactor_thread,
    "netreactor-pool": serve_netreactor_pool,
    "asyncio-streams": lambda p, r: _run_asyncio(_serve_streams, p, r, False),
    "asyncio-protocol": lambda p, r: _run_asyncio(_serve_protocol, p, r, False),
    "uvloop-streams": lambda p, r: _run_asyncio(_serve_streams, p, r, True),
    "uvloop-protocol": lambda p, r: _run_asyncio(_serve_protocol, p, r, True),
}


def check(kind: str) -> Optional[str]:
    """Why ``kind`` cannot run here, or None."""
    import importlib.util

    if kind not in SERVE:
        return f"unknown kind {kind!r} (choose from {', '.join(KINDS)})"
    if importlib.util.find_spec("redis") is None:
        return "redis-py is not installed (pip install redis)"
    if "uvloop" in kind and importlib.util.find_spec("uvloop") is None:
        return "uvloop is not installed (pip install uvloop)"
    return None


# ---------------------------------------------------------------------------- one run


def _redis_benchmark(port: int, requests: int, pipeline: int, cpu: Optional[int],
                     test: str = "get") -> tuple[dict, float]:
    argv = ["redis-benchmark", "-h", HOST, "-p", str(port), "-c", "50", "-n", str(requests),
            "-t", test, "--csv"]
    if pipeline > 1:
        argv += ["-P", str(pipeline)]
    out, cpu_s = run_to_end(argv, [cpu] if cpu is not None else None, timeout=600)
    for line in out.splitlines():
        cells = [c.strip('"') for c in line.strip().split(",")]
        if len(cells) >= 7 and cells[0] in ("GET", "PING_MBULK"):
            return {"rps": float(cells[1]), "p50_ms": float(cells[4]), "p99_ms": float(cells[6])}, cpu_s
    raise BenchError(f"cannot read redis-benchmark's output: {out[-500:]}")


class Ctx:
    def __init__(self, redis_port: int, redis_pid: int, server_cpu: Optional[int],
                 gen_cpu: Optional[int], requests: dict) -> None:
        self.redis_port, self.redis_pid = redis_port, redis_pid
        self.server_cpu, self.gen_cpu = server_cpu, gen_cpu
        self.requests = requests


def run_one(ctx: Ctx, kind: str, sc: Scenario) -> dict:
    port = free_port()
    argv = [sys.executable, os.path.abspath(__file__), "--serve", kind, "--port", str(port),
            "--redis-port", str(ctx.redis_port)]
    with ServerProc(kind, argv, port, ctx.server_cpu) as srv:
        srv.wait_ready()
        # Warm-up: the backend connections are made, the code paths are hot.
        _redis_benchmark(port, WARMUP_REQUESTS, sc.depth, ctx.gen_cpu, sc.mode)
        pids = _procstat.process_tree(srv.pid)
        win = CpuWindow(pids, ctx.server_cpu, [ctx.gen_cpu] if ctx.gen_cpu is not None else ())
        redis0 = _procstat.cpu_seconds(ctx.redis_pid)
        n = ctx.requests[sc.name]
        win.open()
        res, gen_cpu_s = _redis_benchmark(port, n, sc.depth, ctx.gen_cpu, sc.mode)
        win.close()
        srv.check_alive()
    redis_s = _procstat.cpu_seconds(ctx.redis_pid) - redis0
    wall = win.wall
    return {
        "server": kind, "scenario": sc.name, "unit": sc.unit, "conns": sc.conns,
        "messages": n, "elapsed": wall, "harness_window": wall,
        "server_cpu_s": win.cpu_s, "cpu_us_per_msg": win.cpu_s / n * 1e6,
        "msgs_per_s": res["rps"], "server_cpu_frac": win.server_frac(),
        "gen_busy_frac": (gen_cpu_s + redis_s) / wall if wall > 0 else 0.0,
        "gen_cpu_frac": gen_cpu_s / wall if wall > 0 else 0.0, "redis_cpu_frac": redis_s / wall if wall else 0.0,
        "foreign_frac_server_cpu": win.foreign_server(),
        "foreign_frac_gen_cpu": win.foreign_gen(gen_cpu_s + redis_s),
        "lat_p50_us": res["p50_ms"] * 1000, "lat_p99_us": res["p99_ms"] * 1000, "lat_p999_us": None,
        "errors": 0, "loadgen": res,
    }


def describe(run: dict) -> str:
    return (f"{run['msgs_per_s']:,.0f} req/s, {run['cpu_us_per_msg']:.1f} us CPU/req, "
            f"server {run['server_cpu_frac']:.0%} busy, p50 {run['lat_p50_us']:,.0f} us")


def target_notes(result: dict, scenarios: list) -> list[str]:
    out = []
    for sc in scenarios:
        rows = result["table"].get(sc.name, {})
        peers = {k: rows[k] for k in ("uvloop-streams", "uvloop-protocol") if k in rows}
        if not peers:
            continue
        best_kind = max(peers, key=lambda k: peers[k]["msgs_per_s"])
        for kind in SAME_THREAD:
            ours = rows.get(kind)
            if ours is None:
                continue
            ratio = ours["msgs_per_s"] / peers[best_kind]["msgs_per_s"]
            cpu = ours["cpu_us_per_msg"] / peers[best_kind]["cpu_us_per_msg"]
            out.append(f"{sc.name}: {kind} does {ratio:.2f}x the throughput of {best_kind} (the better "
                       f"plain-asyncio version on uvloop) at {cpu:.2f}x its CPU per request: "
                       f"{'meets' if ratio >= 1.0 else 'MISSES'} the >= 1x target (issue 16)")
    return out


# ---------------------------------------------------------------------------- main


def _start_redis(cpu: Optional[int], workdir: str) -> ServerProc:
    port = free_port()
    srv = ServerProc("redis-server", ["redis-server", "--port", str(port), "--bind", HOST, "--save", "",
                                      "--appendonly", "no", "--dir", workdir], port, cpu)
    srv.wait_ready()
    import redis

    redis.Redis(host=HOST, port=port).set(KEY, VALUE)
    return srv


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_run_options(ap, SCENARIOS, KINDS, "one round, shorter runs", "aio")
    ap.add_argument("--requests", type=int, help="requests per measured run (default: "
                    f"{REQUESTS['get']:,} for get, {REQUESTS['get-P16']:,} for get-P16)")
    ap.add_argument("--plain", action="store_true", help="plain-text tables even if rich exists")
    ap.add_argument("--serve", metavar="KIND", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--redis-port", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.serve:  # a server process of the run
        why = check(args.serve)
        if why:
            print(why, file=sys.stderr)
            return 3
        try:
            SERVE[args.serve](args.port, args.redis_port)
        except KeyboardInterrupt:
            pass
        return 0

    for tool in ("redis-server", "redis-benchmark"):
        if shutil.which(tool) is None:
            print(f"skipping bench/aio.py: {tool} is not installed (Debian packages redis-server, "
                  "redis-tools)", file=sys.stderr)
            return 2
    scenarios = pick_scenarios(args.scenario, SCENARIOS)
    servers = []
    for kind in split_servers(args.servers):
        why = check(kind)
        if why:
            print(f"skipping {kind}: {why}", file=sys.stderr)
        else:
            servers.append(kind)
    if not servers:
        print("error: no server to benchmark", file=sys.stderr)
        return 2
    rounds = args.rounds if args.rounds is not None else (1 if args.quick else 2)
    requests = dict(QUICK_REQUESTS if args.quick else REQUESTS)
    if args.requests:
        requests = {name: args.requests for name in requests}
    server_cpu, gen_cpu = pin_harness()
    raise_on_sigterm()
    print(f"servers: {', '.join(servers)}; scenarios: {', '.join(s.name for s in scenarios)}; "
          f"rounds {rounds}; front end on CPU {server_cpu}, redis-server and redis-benchmark on "
          f"CPU {gen_cpu}")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="nr-aio-bench-") as workdir:
        with _start_redis(gen_cpu, workdir) as backend:
            ctx = Ctx(backend.port, backend.pid, server_cpu, gen_cpu, requests)
            done = run_rounds(scenarios, servers, rounds, lambda k, sc: run_one(ctx, k, sc), describe,
                              LineReporter(len(scenarios) * len(servers) * rounds, 8, 17),
                              errors=(BenchError, OSError))
    base = BASELINE if BASELINE in servers else servers[0]
    result = summarize(done.runs, scenarios, servers, base, base_first=False)
    head = ["scenario", "server", "CPU us/req", "range", "req/s", "p50 us", "p99 us", "srv CPU",
            "gen+redis CPU", "other load", "errors"]
    print_report(result, scenarios,
                 [TableSpec("Front end CPU per request: parse, await redis GET, reply (median of rounds)",
                            ("req",), head)],
                 use_rich=not args.plain, ratio_title=f"Ratios other/{base} of CPU per request "
                                                      f"(< 1: less than {base})")
    notes = run_notes(result, scenarios) + target_notes(result, scenarios)
    for n in notes:
        print(f"note: {n}")
    meta = {**machine_meta(), "uvloop": package_version("uvloop"), "redis": package_version("redis"),
            "servers": servers, "server_cpu": server_cpu, "gen_cpu": gen_cpu, "rounds": rounds,
            "requests": requests, "quick": args.quick, "pool_workers": POOL_WORKERS}
    return finish(results_path("aio", args.json), meta, done, started, summary=result, notes=notes)


if __name__ == "__main__":
    sys.exit(main())
