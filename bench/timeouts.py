"""What idle timeouts cost the event loop: the timing wheel over many simulated connections.

    python3 bench/timeouts.py [--conns 100000] [--timeout 60] [--seconds 30]

No socket is opened: the connections are real ``netreactor.Conn`` objects of
one loop's ``StreamContext`` (``idle_timeout`` set), over a transport whose
calls do nothing, opened with the engine's own ``_opened()`` (which files
them in the wheel) but never registered with a poller. The wheel's clock is
virtual: the script moves it on one tick (0.1 s) at a time and runs the
wheel as the loop's timer would, so a 30 s run takes a fraction of that, and
the figure is the CPU time (``time.thread_time``) the wheel took per second
of virtual time -- what the loop would spend on it, exactly the same code.

Scenarios:

* ``idle``   -- every connection silent, none due in the run (the timeout is
  longer than the run): the steady cost of holding them.
* ``active`` -- every connection has traffic once a second (noted the way the
  I/O path notes it: one store of the wheel's tick; that store is not
  counted, ``bench/instructions.sh`` counts it): each is looked at and filed
  again about once per timeout.
* ``expire`` -- all the connections time out in the same tick: the whole
  storm (each close runs the engine's close path and ``on_close``), and the
  longest single run of the wheel, which stays bounded (``BATCH`` closes per
  run, then the loop polls).
* ``scan``   -- for scale, one plain Python loop over every connection's
  last-traffic tick: what a coarse per-period sweep would cost each time.
* ``memory`` -- Python memory per connection (``tracemalloc``) with
  ``idle_timeout`` off and on: the connection object itself, and what the
  wheel holds for it. (``bench/echo.py --scenario idle --servers
  netreactor,netreactor-idle`` measures the whole process's RSS instead.)
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
import tracemalloc

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import netreactor as nr
from netreactor.options import Options
from netreactor.reactor import EventLoop, new_poller
from netreactor.reactor import wheel as wheel_module
from netreactor.stream import Conn, StreamContext


class _NoIO:
    linger = False

    @staticmethod
    def read(fd, size):  # pragma: no cover - never called
        raise BlockingIOError

    readv = write = writev = read

    @staticmethod
    def shutdown_write(fd):
        pass

    @staticmethod
    def close(fd):
        pass


class _Handler(nr.EventHandler):
    def __init__(self) -> None:
        self.closed = 0

    def on_close(self, conn, err):
        self.closed += 1


class _Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class _Timers:
    """Stands for the loop's timers under the wheel: the script runs it itself."""

    class _Handle:
        def cancel(self) -> None:
            pass

    def call_later(self, delay, callback, *args):
        return self._Handle()


def _setup(n: int, timeout: float, spread: float = 0.0):
    """``n`` connections, opened evenly over ``spread`` virtual seconds (so that
    their deadlines are spread as a server's are), or all at once."""
    clock = _Clock()
    wheel_module.monotonic = clock  # the wheel's clock is virtual from here on
    loop = EventLoop(0, new_poller("selectors"), logging.getLogger("bench"))
    wheel = wheel_module.TimingWheel(_Timers())  # type: ignore[arg-type]
    loop.wheel = wheel
    handler = _Handler()
    ctx = StreamContext(loop, handler, Options.from_kwargs({"idle_timeout": timeout}), lambda: None)
    conns = []
    ticks = max(1, int(spread / wheel.tick))
    per_tick = -(-n // ticks)
    while len(conns) < n:
        for _ in range(min(per_tick, n - len(conns))):
            conn = Conn(ctx, 1_000_000 + len(conns), _NoIO)  # type: ignore[arg-type]
            conn._opened()
            conns.append(conn)
        if spread:
            clock.t += wheel.tick
            wheel._run()
    return clock, wheel, handler, conns


def _advance(clock: _Clock, wheel, ticks: int, on_tick=None):
    """Run the wheel through ``ticks`` ticks as the loop would: one run per
    tick, and a run that stopped at BATCH entries goes on after a poll.
    Returns (CPU seconds in all, the longest single run)."""
    spent = longest = 0.0
    for _ in range(ticks):
        clock.t += wheel.tick
        if on_tick is not None:
            on_tick()
        while True:
            t0 = time.thread_time()
            wheel._run()
            dt = time.thread_time() - t0
            spent += dt
            longest = max(longest, dt)
            if wheel._done >= wheel.now:
                break
    return spent, longest


def run_idle(n: int, timeout: float, seconds: float) -> dict:
    clock, wheel, handler, conns = _setup(n, max(timeout, seconds * 2))  # none expires in the run
    spent, longest = _advance(clock, wheel, int(seconds / wheel.tick))
    return {"ms_per_s": spent / seconds * 1e3, "longest_ms": longest * 1e3, "closed": handler.closed}


def run_active(n: int, timeout: float, seconds: float) -> dict:
    clock, wheel, handler, conns = _setup(n, timeout, spread=timeout)
    per_tick = max(1, round(n * wheel.tick))  # each connection active once a second
    state = {"i": 0}

    def traffic() -> None:
        now = wheel.current()
        i = state["i"]
        for conn in conns[i:i + per_tick]:
            conn._seen = now
        state["i"] = (i + per_tick) % n

    _advance(clock, wheel, int(timeout / wheel.tick) + 2, traffic)  # every one filed again once
    spent, longest = _advance(clock, wheel, int(seconds / wheel.tick), traffic)
    return {"ms_per_s": spent / seconds * 1e3, "longest_ms": longest * 1e3, "closed": handler.closed}


def run_expire(n: int, timeout: float) -> dict:
    clock, wheel, handler, conns = _setup(n, timeout)
    spent, longest = _advance(clock, wheel, int(timeout / wheel.tick) + 4)
    assert handler.closed == n, (handler.closed, n)
    return {"total_ms": spent * 1e3, "longest_ms": longest * 1e3, "per_conn_us": spent / n * 1e6,
            "closed": handler.closed}


def run_scan(n: int, timeout: float) -> dict:
    clock, wheel, handler, conns = _setup(n, timeout)
    t0 = time.thread_time()
    rounds = 5
    for _ in range(rounds):
        cutoff = wheel.now - 100
        stale = [c for c in conns if c._seen < cutoff]
    dt = (time.thread_time() - t0) / rounds
    assert not stale
    return {"ms_per_scan": dt * 1e3}


def run_memory(n: int, timeout: float) -> dict:
    out = {}
    for label, t in (("off", None), ("on", timeout)):
        clock = _Clock()
        wheel_module.monotonic = clock
        loop = EventLoop(0, new_poller("selectors"), logging.getLogger("bench"))
        loop.wheel = wheel_module.TimingWheel(_Timers())  # type: ignore[arg-type]
        ctx = StreamContext(loop, _Handler(), Options.from_kwargs({"idle_timeout": t}), lambda: None)
        conns = []
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        for i in range(n):
            conn = Conn(ctx, 1_000_000 + i, _NoIO)  # type: ignore[arg-type]
            conn._opened()
            conns.append(conn)
        used = tracemalloc.get_traced_memory()[0] - before
        tracemalloc.stop()
        out[label] = (used - n * 8) / n  # less the test's own list of them
    out["conn"] = sys.getsizeof(conns[0])  # GC header included
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--conns", type=int, default=100_000)
    ap.add_argument("--timeout", type=float, default=60.0, help="idle_timeout, seconds (default 60)")
    ap.add_argument("--seconds", type=float, default=30.0, help="virtual seconds measured (default 30)")
    args = ap.parse_args(argv)
    n, t = args.conns, args.timeout
    print(f"{n:,} simulated connections, idle_timeout={t:g} s, wheel tick {wheel_module.TICK} s, "
          f"batch {wheel_module.BATCH}")
    r = run_idle(n, t, args.seconds)
    print(f"idle:   {r['ms_per_s']:.3f} ms of loop CPU per second (longest run {r['longest_ms']:.3f} ms)")
    r = run_active(n, t, args.seconds)
    print(f"active: {r['ms_per_s']:.3f} ms of loop CPU per second, each connection active once a "
          f"second (longest run {r['longest_ms']:.3f} ms)")
    r = run_expire(n, t)
    print(f"expire: {n:,} closed in one tick: {r['total_ms']:.0f} ms in all, {r['per_conn_us']:.2f} us "
          f"per connection, longest run {r['longest_ms']:.2f} ms")
    r = run_scan(n, t)
    print(f"scan:   a plain loop over all {n:,} last-traffic ticks: {r['ms_per_scan']:.2f} ms each time")
    r = run_memory(n, t)
    print(f"memory: {r['off']:.1f} B per connection with idle_timeout off, {r['on']:.1f} B on "
          f"(+{r['on'] - r['off']:.1f} B: its reference in a wheel bucket); of which the Conn object "
          f"is {r['conn']} B, its fd's int 32 B")
    return 0


if __name__ == "__main__":
    sys.exit(main())
