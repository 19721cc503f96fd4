"""asyncio inside the reactor: the asyncio loop over a netreactor loop's poller,
``conn.spawn`` (order, errors, cancellation, the in-flight bound), and
``netreactor.serve()`` inside asyncio and uvloop programs."""

from __future__ import annotations

import asyncio
import gc
import logging
import selectors
import shutil
import socket
import subprocess
import threading
import time
import warnings

import pytest

import netreactor as nr
from netreactor.reactor import EventLoop, new_poller
from netreactor.reactor.aio import ReactorEventLoop, ReactorSelector, run_with_asyncio
from netreactor.reactor.pollers import epoll_available
from conftest import connect, recv_exact, recv_until_eof, serving, wait_for

POLLERS = ["epoll", "selectors"] if epoll_available() else ["selectors"]
LOG = logging.getLogger("netreactor")


def _port(engine: nr.Engine) -> int:
    return int(engine.addresses[0].rsplit(":", 1)[1])


# ---------------------------------------------------------------- the shared poller


def run_on_reactor(main, poller="epoll"):
    """Run coroutine function ``main(aio)`` on a ReactorEventLoop over a fresh EventLoop."""
    loop = EventLoop(0, new_poller(poller), LOG)
    out = {}

    async def wrapper(aio):
        try:
            out["result"] = await main(aio)
        except BaseException as exc:  # noqa: B902 - reported to the test
            out["error"] = exc
        finally:
            loop.stop()

    run_with_asyncio(loop, on_start=lambda aio: aio.create_task(wrapper(aio)))
    loop.close()
    if "error" in out:
        raise out["error"]
    return out["result"]


@pytest.mark.parametrize("poller", POLLERS)
def test_asyncio_runs_on_the_reactors_poller(poller):
    async def main(aio):
        assert isinstance(aio, ReactorEventLoop)
        selector = aio._selector
        assert isinstance(selector, ReactorSelector) and selector.loop is aio.reactor
        seen = []

        async def handle(reader, writer):
            writer.write(await reader.readline())
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0, limit=1 << 20)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
        # The sockets asyncio opened are entries of the netreactor loop's fd table.
        fds = {e.key.fd for e in aio.reactor.entries() if hasattr(e, "key")}
        assert writer.get_extra_info("socket").fileno() in fds
        writer.write(b"x" * 100_000 + b"\n")
        seen.append(len(await reader.readline()))
        writer.close()
        server.close()
        await server.wait_closed()
        t0 = time.monotonic()
        await asyncio.sleep(0.02)
        seen.append(time.monotonic() - t0 >= 0.02)
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.sleep(10), 0.01)
        seen.append(await aio.run_in_executor(None, lambda: threading.get_ident()) != threading.get_ident())
        # From another thread: the self-pipe is one of asyncio's fds on our poller.
        fut = aio.create_future()
        threading.Timer(0.01, aio.call_soon_threadsafe, (fut.set_result, "threadsafe")).start()
        seen.append(await asyncio.wait_for(fut, 5))
        return seen

    assert run_on_reactor(main, poller) == [100_001, True, True, "threadsafe"]


def test_selector_contract():
    loop = EventLoop(0, new_poller("selectors"), LOG)
    sel = ReactorSelector(loop)
    a, b = socket.socketpair()
    try:
        key = sel.register(a, selectors.EVENT_READ, "data")
        assert key.fd == a.fileno() and sel.get_key(a) is key and sel.get_map()[a.fileno()] is key
        with pytest.raises(KeyError):
            sel.register(a.fileno(), selectors.EVENT_WRITE)
        with pytest.raises(ValueError):
            sel.register(b, 0)
        with pytest.raises(ValueError):
            sel.register(b, 8)
        key2 = sel.modify(a, selectors.EVENT_READ | selectors.EVENT_WRITE, "other")
        assert key2.events == 3 and key2.data == "other" and sel.get_key(a) is key2
        assert sel.unregister(a) is key2
        with pytest.raises(KeyError):
            sel.get_key(a)
        with pytest.raises(KeyError):
            sel.unregister(a)
        assert len(sel.get_map()) == 0
        sel.register(b, selectors.EVENT_READ)
        sel.close()
        assert list(loop.entries()) == [e for e in loop.entries() if not hasattr(e, "key")]
    finally:
        a.close()
        b.close()
        loop.close()


def test_work_handed_to_asyncio_from_a_reactor_callback_is_not_delayed():
    """asyncio waits in select() with no timeout; a netreactor timer callback (which
    runs inside that select()) resolves an asyncio future: the waiting coroutine
    must run now, not at the next fd event (there is none)."""
    async def main(aio):
        fut = aio.create_future()
        aio.reactor.call_later(0.01, fut.set_result, "now")
        t0 = time.monotonic()
        got = await asyncio.wait_for(fut, 3)  # without the interrupt: only at this deadline
        return got, time.monotonic() - t0 < 1.0

    assert run_on_reactor(main) == ("now", True)


def test_an_asyncio_timer_set_from_a_reactor_callback_fires():
    async def main(aio):
        fut = aio.create_future()
        aio.reactor.call_later(0.01, lambda: aio.call_later(0.01, fut.set_result, "timer"))
        t0 = time.monotonic()
        got = await asyncio.wait_for(fut, 3)
        return got, time.monotonic() - t0 < 1.0

    assert run_on_reactor(main) == ("timer", True)


def test_tasks_left_when_the_reactor_stops_are_cancelled_and_awaited():
    loop = EventLoop(0, new_poller("epoll" if epoll_available() else "selectors"), LOG)
    events = []

    async def lingering():
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            events.append("cancelled")
            await asyncio.sleep(0)  # may still await while cancelled
            events.append("finished")
            raise

    def start(aio):
        aio.create_task(lingering())
        aio.call_later(0.01, loop.stop)  # stop() from asyncio code, outside the reactor's run()

    t0 = time.monotonic()
    run_with_asyncio(loop, on_start=start)
    loop.close()
    assert events == ["cancelled", "finished"]
    assert time.monotonic() - t0 < 5


# ---------------------------------------------------------------- engines with asyncio=True
@pytest.fixture(params=["reactor", "uvloop"])
def aio(request):
    """The engine options of each way to run asyncio on the loops' threads: the
    shared poller, and uvloop running netreactor's loop nested."""
    if request.param == "uvloop":
        pytest.importorskip("uvloop")
    return dict(asyncio=True, asyncio_loop=request.param)



class Echo(nr.EventHandler):
    def on_traffic(self, conn):
        conn.write(conn.read())


@pytest.mark.parametrize("options", [dict(poller=p) for p in POLLERS]
                         + ([dict(poller="epoll", edge_triggered=True)] if epoll_available() else [])
                         + [dict(loops=3)])
def test_echo_serves_as_before_with_asyncio_on(options, aio):
    with serving(Echo(), "tcp://127.0.0.1:0", **aio, **options) as engine:
        for _ in range(3):
            with connect(engine.addresses[0]) as s:
                s.sendall(b"x" * 200_000)
                assert recv_exact(s, 200_000) == b"x" * 200_000
        assert engine.spawner is not None and engine.spawner.spawned == 0


class Lines(nr.EventHandler):
    """Each line is a request; ``make(conn, line)`` returns the coroutine to spawn."""

    def __init__(self, make, on_result=None, cancel_on_close=True):
        self.make = make
        self.on_result = on_result
        self.cancel_on_close = cancel_on_close
        self.conns = []
        self.threads = {}

    def on_open(self, conn):
        conn.context = b""
        self.conns.append(conn)
        self.threads[conn] = threading.get_ident()

    def on_traffic(self, conn):
        *lines, conn.context = (conn.context + conn.read()).split(b"\n")
        for line in lines:
            conn.spawn(self.make(conn, line), self.on_result, cancel_on_close=self.cancel_on_close)


@pytest.mark.parametrize("loops", [1, 3])
def test_results_are_written_in_spawn_order(loops, aio):
    seen_threads = []

    loop_kinds = set()

    async def reply(conn, line):
        seen_threads.append((conn, threading.get_ident()))
        loop_kinds.add(type(asyncio.get_running_loop()).__module__.split(".")[0])
        n = int(line)
        await asyncio.sleep((n % 5) * 0.002)  # later ones often finish first
        return b"%d\n" % n

    handler = Lines(reply)
    with serving(handler, "tcp://127.0.0.1:0", **aio, loops=loops) as engine:
        socks = [connect(engine.addresses[0]) for _ in range(4)]
        try:
            want = b"".join(b"%d\n" % i for i in range(200))
            for s in socks:
                s.sendall(want)  # pipelined
            for s in socks:
                assert recv_exact(s, len(want)) == want
        finally:
            for s in socks:
                s.close()
        wait_for(lambda: engine.spawner.in_flight == 0, what="nothing in flight")
    # No thread hop: every coroutine ran on its connection's loop thread.
    assert all(handler.threads[conn] == ident for conn, ident in seen_threads)
    assert loop_kinds == ({"uvloop"} if aio["asyncio_loop"] == "uvloop" else {"netreactor"})


def test_write_now_sends_at_once_outside_callbacks(aio):
    """From a coroutine (outside any callback of the connection) ``write`` waits for
    the loop's flush; ``write_now`` hands the data to the kernel before it returns."""
    seen = []

    async def work(conn, line):
        await asyncio.sleep(0)  # out of on_traffic's callback for sure
        assert conn.write_now(b"n:" + line + b"\n") == len(line) + 3
        seen.append(("write_now", conn.outbound_buffered))
        conn.write(b"w:" + line + b"\n")
        seen.append(("write", conn.outbound_buffered))
        return None

    handler = Lines(work)
    with serving(handler, "tcp://127.0.0.1:0", **aio) as engine:
        with connect(engine.addresses[0]) as s:
            s.sendall(b"a\n")
            assert recv_exact(s, 8) == b"n:a\nw:a\n"
            conn = handler.conns[0]
            with pytest.raises(RuntimeError, match="loop thread"):
                conn.write_now(b"from the wrong thread")
        wait_for(lambda: conn.closed, what="the connection closed")
        assert conn.write_now(b"late") == 0
    assert seen == [("write_now", 0), ("write", 4)]


def test_on_result_gets_results_and_exceptions_in_order(aio):
    outcomes = []
    done = threading.Event()

    async def work(conn, line):
        await asyncio.sleep(0.001 * (3 - int(line)))
        if line == b"1":
            raise KeyError("one")
        return int(line)

    def on_result(conn, result, exc):
        assert conn.loop.on_loop_thread()
        outcomes.append((result, type(exc).__name__ if exc else None))
        conn.write(b"ok\n")
        if len(outcomes) == 3:
            done.set()

    with serving(Lines(work, on_result), "tcp://127.0.0.1:0", **aio) as engine:
        with connect(engine.addresses[0]) as s:
            s.sendall(b"0\n1\n2\n")
            assert recv_exact(s, 9) == b"ok\nok\nok\n"
    assert done.wait(5)
    assert outcomes == [(0, None), (None, "KeyError"), (2, None)]


def test_a_coroutine_that_raises_is_logged_and_closes_its_connection(expected_errors, aio):
    async def work(conn, line):
        if line == b"boom":
            raise RuntimeError("boom in a coroutine")
        return line + b"\n"

    with serving(Lines(work), "tcp://127.0.0.1:0", **aio) as engine:
        with connect(engine.addresses[0]) as s:
            s.sendall(b"a\nboom\nc\n")
            assert recv_until_eof(s) == b"a\n"  # a's reply, then the close; c is cancelled
        with connect(engine.addresses[0]) as s:  # the engine serves on
            s.sendall(b"d\n")
            assert recv_exact(s, 2) == b"d\n"
    assert any("boom in a coroutine" in str(r.exc_info[1]) for r in expected_errors)


def test_a_result_that_is_not_bytes_is_an_error(expected_errors, aio):
    async def work(conn, line):
        return 42

    with serving(Lines(work), "tcp://127.0.0.1:0", **aio) as engine:
        with connect(engine.addresses[0]) as s:
            s.sendall(b"x\n")
            assert recv_until_eof(s) == b""
    assert any(isinstance(r.exc_info[1], TypeError) for r in expected_errors)


def test_wait_for_timeouts_and_sleep_inside_coroutines(aio):
    async def work(conn, line):
        try:
            await asyncio.wait_for(asyncio.sleep(10), timeout=float(line))
        except asyncio.TimeoutError:
            return b"timeout\n"
        return b"slept\n"

    with serving(Lines(work), "tcp://127.0.0.1:0", **aio) as engine:
        with connect(engine.addresses[0]) as s:
            t0 = time.monotonic()
            s.sendall(b"0.05\n0.01\n")
            assert recv_exact(s, 16) == b"timeout\ntimeout\n"
            # libuv keeps its clock in whole milliseconds: uvloop's timers may fire up
            # to 1 ms before the time.monotonic() deadline.
            assert time.monotonic() - t0 >= 0.05 - (0.002 if aio["asyncio_loop"] == "uvloop" else 0)


@pytest.mark.parametrize("cancel_on_close", [True, False])
def test_disconnect_cancels_pending_coroutines_unless_told_not_to(cancel_on_close, aio):
    started = threading.Event()
    events = []
    outcomes = []

    async def work(conn, line):
        started.set()
        try:
            await asyncio.sleep(0.2 if not cancel_on_close else 30)
        except asyncio.CancelledError:
            events.append("cancelled")
            raise
        events.append("finished")
        return b"late\n"

    def on_result(conn, result, exc):
        outcomes.append((result, type(exc).__name__ if exc else None, conn.closed))

    handler = Lines(work, on_result, cancel_on_close=cancel_on_close)
    with serving(handler, "tcp://127.0.0.1:0", **aio) as engine:
        s = connect(engine.addresses[0])
        s.sendall(b"x\n")
        assert started.wait(5)
        s.close()
        wait_for(lambda: outcomes, timeout=5, what="the outcome")
        assert engine.spawner.in_flight == 0
    if cancel_on_close:
        assert events == ["cancelled"] and outcomes == [(None, "CancelledError", True)]
    else:
        assert events == ["finished"] and outcomes == [(b"late\n", None, True)]


def test_engine_stop_cancels_what_is_left_and_stops_promptly(aio):
    started = threading.Event()
    events = []

    async def work(conn, line):
        started.set()
        try:
            await asyncio.sleep(30)
        finally:
            events.append("unwound")

    engine = nr.Engine(Lines(work), "tcp://127.0.0.1:0", **aio).start()
    s = connect(engine.addresses[0])
    try:
        s.sendall(b"a\nb\n")
        assert started.wait(5)
        t0 = time.monotonic()
        engine.stop()
        assert recv_until_eof(s) == b""  # closed at once: nothing waits for the coroutines
        s.close()
        assert engine.wait(10)
        assert time.monotonic() - t0 < 4
    finally:
        s.close()
    assert events == ["unwound", "unwound"]


def test_the_in_flight_bound_pauses_spawning_connections_and_resumes_them(aio):
    release = {}

    async def work(conn, line):
        gate = release.setdefault(asyncio.get_running_loop(), asyncio.Event())
        await gate.wait()
        return line + b"\n"

    handler = Lines(work)
    lines = [b"%03d" % i for i in range(60)]
    want = b"".join(line + b"\n" for line in lines)
    with serving(handler, "tcp://127.0.0.1:0", **aio, asyncio_max_tasks=8,
                 asyncio_low_water=2) as engine:
        spawner = engine.spawner
        assert (spawner.capacity, spawner.low_water) == (8, 2)
        a, b = connect(engine.addresses[0]), connect(engine.addresses[0])
        try:
            # One line per send, and a round trip between them, so that each read
            # holds one request: the overshoot past the bound is then one per read.
            for line in lines[:10]:
                a.sendall(line + b"\n")
                time.sleep(0.002)
            wait_for(lambda: spawner.paused_connections == 1, what="a paused")
            b.sendall(b"b1\n")
            wait_for(lambda: spawner.paused_connections == 2, what="b paused")
            for line in lines[10:]:
                a.sendall(line + b"\n")  # waits in the kernel: a is not read
            b.sendall(b"b2\n")
            time.sleep(0.1)
            assert spawner.in_flight <= 8 + 2
            assert spawner.pauses == 2
            aio = next(iter(release))
            aio.call_soon_threadsafe(release[aio].set)
            assert recv_exact(a, len(want)) == want
            assert recv_exact(b, 6) == b"b1\nb2\n"
            wait_for(lambda: spawner.in_flight == 0 and spawner.paused_connections == 0,
                     what="everything delivered")
        finally:
            a.close()
            b.close()


def test_a_spawn_the_asyncio_loop_refuses_leaves_nothing_behind():
    """create_task refused (the asyncio loop is closed): the error reaches the
    caller, the coroutine is closed (no "never awaited"), nothing counts in flight."""
    from netreactor.spawner import Spawner

    spawner = Spawner(4, None, logger=LOG, shutdown_timeout=1.0)
    aio = asyncio.new_event_loop()
    aio.close()
    reactor, conn = object(), object()
    spawner.attach(reactor, aio)

    async def work():
        return b"never"

    coro = work()
    with pytest.raises(RuntimeError, match="closed"):
        spawner.spawn_for(conn, reactor, False, coro, None, True)
    assert coro.cr_frame is None  # closed
    assert spawner.in_flight == 0 and spawner.spawned == 0


def test_spawn_needs_asyncio_and_a_coroutine(expected_errors, aio):
    async def work(conn, line):
        return line

    with serving(Lines(work), "tcp://127.0.0.1:0") as engine:  # asyncio off
        assert engine.spawner is None
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # the coroutine is closed, never "never awaited"
            with connect(engine.addresses[0]) as s:
                s.sendall(b"x\n")
                assert recv_until_eof(s) == b""
            gc.collect()
    assert any("needs asyncio" in str(r.exc_info[1]) for r in expected_errors)

    class NotACoroutine(Lines):
        def on_traffic(self, conn):
            conn.read()
            conn.spawn(work)  # the function, not a call of it

    with serving(NotACoroutine(work), "tcp://127.0.0.1:0", **aio) as engine:
        with connect(engine.addresses[0]) as s:
            s.sendall(b"x\n")
            assert recv_until_eof(s) == b""
    assert any(isinstance(r.exc_info[1], TypeError) and "coroutine" in str(r.exc_info[1])
               for r in expected_errors)


@pytest.mark.parametrize("kwargs, match", [
    (dict(asyncio="yes"), "asyncio"),
    (dict(asyncio_max_tasks=0), "asyncio_max_tasks"),
    (dict(asyncio_max_tasks=10, asyncio_low_water=10), "asyncio_low_water"),
    (dict(asyncio=True, asyncio_loop="tokio"), "asyncio_loop"),
])
def test_bad_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        nr.Engine(Echo(), "tcp://127.0.0.1:0", **kwargs)


def test_client_refuses_asyncio_options():
    with pytest.raises(ValueError, match="does not apply to a Client"):
        nr.Client(Echo(), asyncio=True)


def test_the_command_line_has_the_flags():
    from netreactor.cli import build_parser

    args = build_parser().parse_args(["run", "m:H", "-l", "tcp://127.0.0.1:1", "--asyncio",
                                      "--asyncio-max-tasks", "7", "--asyncio-loop", "uvloop"])
    assert args.asyncio is True and args.asyncio_max_tasks == 7 and args.asyncio_loop == "uvloop"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "m:H", "--asyncio-loop", "tokio"])


# ---------------------------------------------------------------- netreactor.serve()


class Spawning(nr.EventHandler):
    """Replies with the id of the asyncio loop and thread each request's coroutine ran on."""

    def __init__(self):
        self.shutdown = False

    def on_traffic(self, conn):
        data = conn.read()
        if data.startswith(b"stop"):
            return nr.Action.SHUTDOWN
        conn.spawn(self.reply(conn))

    async def reply(self, conn):
        await asyncio.sleep(0.001)
        conn.call_later(0.001, conn.write, b"|timer")  # a netreactor timer set from asyncio code
        return b"%d %d" % (id(asyncio.get_running_loop()), threading.get_ident())

    def on_shutdown(self, engine):
        self.shutdown = True


async def _read_to_eof(reader, writer):
    data = await reader.read()
    writer.close()
    return data


def _uvloop_or_skip():
    return pytest.importorskip("uvloop")


@pytest.mark.parametrize("flavour", ["asyncio", "uvloop", "reactor"])
def test_serve_inside_an_asyncio_program_spawns_on_its_loop(flavour):
    handler = Spawning()

    async def main():
        program = (id(asyncio.get_running_loop()), threading.get_ident())
        async with nr.serve(handler, "tcp://127.0.0.1:0") as engine:
            reader, writer = await asyncio.open_connection("127.0.0.1", _port(engine))
            writer.write(b"hi")
            got = await reader.readexactly(len(b"%d %d|timer" % program))
            assert got == b"%d %d|timer" % program
            # A client of the server sees the graceful close when the block ends
            # (and closes too: the server's close waits for that, shutdown_timeout at most).
            eof = asyncio.ensure_future(_read_to_eof(reader, writer))
        assert await eof == b""
        assert engine.wait(0)

    if flavour == "uvloop":
        _uvloop_or_skip().run(main())
    elif flavour == "reactor":  # the program itself runs on a ReactorEventLoop
        run_on_reactor(lambda aio: main())
    else:
        asyncio.run(main())
    assert handler.shutdown


def test_serve_until_a_handler_stops_it():
    handler = Spawning()

    async def main():
        async with nr.serve(handler, "tcp://127.0.0.1:0") as engine:
            reader, writer = await asyncio.open_connection("127.0.0.1", _port(engine))
            writer.write(b"stop")
            eof = asyncio.ensure_future(_read_to_eof(reader, writer))
            await asyncio.wait_for(engine.wait_stopped(), 10)
            assert await eof == b""

    asyncio.run(main())
    assert handler.shutdown


def test_serve_with_loops_keeps_the_other_loops_on_threads():
    async def main():
        async with nr.serve(Echo(), "tcp://127.0.0.1:0", loops=2, reuse_port=True) as engine:
            assert len(engine.loops) == 2
            for _ in range(4):
                reader, writer = await asyncio.open_connection("127.0.0.1", _port(engine))
                writer.write(b"ping")
                assert await reader.readexactly(4) == b"ping"
                writer.close()

    asyncio.run(main())


def test_serve_refuses_workers():
    with pytest.raises(ValueError, match="workers"):
        nr.serve(Echo(), "tcp://127.0.0.1:0", workers=2)


# ---------------------------------------------------------------- real libraries: httpx


def test_httpx_from_a_handler_against_the_http_example(aio):
    httpx = pytest.importorskip("httpx")
    from netreactor.examples import load_example

    class Fetch(nr.EventHandler):
        def on_traffic(self, conn):
            for path in conn.read().split():
                conn.spawn(self.fetch(path.decode()))

        async def fetch(self, path):
            async with httpx.AsyncClient() as client:
                response = await client.get(f"{self.base}{path}")
            return b"%d %d %s\n" % (response.status_code, len(response.content),
                                     response.content[:13])

    with serving(load_example("http")(), "tcp://127.0.0.1:0") as http_engine:
        front = Fetch()
        front.base = f"http://127.0.0.1:{_port(http_engine)}"
        with serving(front, "tcp://127.0.0.1:0", **aio) as engine:
            with connect(engine.addresses[0]) as s:
                s.sendall(b"/plaintext /json /plaintext\n")
                want = b'200 13 Hello, World!\n200 27 {"message":"H\n200 13 Hello, World!\n'
                assert recv_exact(s, len(want)) == want


# ---------------------------------------------------------------- real libraries: redis.asyncio

REDIS_SERVER = shutil.which("redis-server")


@pytest.fixture(scope="module")
def redis_port(tmp_path_factory):
    """A real redis-server on a free loopback port (as tests/test_resp.py starts it),
    with DEBUG allowed from loopback for DEBUG SLEEP."""
    pytest.importorskip("redis")
    if REDIS_SERVER is None:
        pytest.skip("redis-server not installed (Debian package redis-server)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    proc = subprocess.Popen([REDIS_SERVER, "--port", str(free), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--enable-debug-command", "local",
                             "--dir", str(tmp_path_factory.mktemp("redis"))],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", free), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    pytest.skip("redis-server did not start")
                time.sleep(0.05)
        yield free
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture
def front(redis_port, aio):
    from netreactor.examples.redis_front import RedisFront

    with serving(RedisFront(f"redis://127.0.0.1:{redis_port}/0"), "tcp://127.0.0.1:0",
                 **aio) as engine:
        yield engine


def _replies(port: int, payload: bytes, count: int) -> list:
    """Send ``payload`` at once (pipelined); return the first ``count`` replies, raw."""

    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(payload)
        return _read_replies(s, count)


def _read_replies(s: socket.socket, count: int) -> list:
    raw, cut = b"", []
    while len(cut) < count:
        chunk = s.recv(65536)
        assert chunk, f"connection closed after {len(cut)} of {count} replies"
        raw += chunk
        cut = _split_replies(raw)
    return cut[:count]


def _split_replies(raw: bytes) -> list:
    """The complete replies at the start of ``raw``, each as its own bytes."""
    from netreactor.protocols.resp import ReplyParser

    out, pos = [], 0
    while pos < len(raw):
        parser = ReplyParser()
        for end in range(pos + 1, len(raw) + 1):
            if parser.feed(raw[end - 1:end]):
                out.append(raw[pos:end])
                pos = end
                break
        else:
            break
    return out


def _transcript(prefix: bytes) -> list:
    from netreactor.protocols.resp import encode_command

    k = lambda name: prefix + name
    cmds = [("PING",), ("SET", k(b"a"), b"1"), ("GET", k(b"a")), ("INCR", k(b"a")),
            ("INCRBY", k(b"a"), b"10"), ("GET", k(b"missing")), ("SET", k(b"s"), b"text"),
            ("INCR", k(b"s")), ("SET", k(b"a"), b"x", b"NX"), ("SET", k(b"b"), b"y", b"XX"),
            ("EXISTS", k(b"a"), k(b"b"), k(b"s")), ("MGET", k(b"a"), k(b"nope"), k(b"s")),
            ("DEL", k(b"a"), k(b"s")), ("ECHO", b"hi\r\nthere"), ("DECR", k(b"c")),
            ("SET", k(b"big"), b"v" * 70000), ("GET", k(b"big")), ("GET",), ("PING", b"pong?")]
    cmds += [("SET", k(b"k%d" % i), b"%d" % i) if i % 2 else ("GET", k(b"k%d" % (i - 1)))
             for i in range(300)]
    return [encode_command(*c) for c in cmds]


@pytest.mark.parametrize("chunk", [None, 7, 300])
def test_redis_front_is_byte_exact_and_in_order_under_pipelining(front, redis_port, chunk):
    """The same pipelined transcript to the front and straight to redis: the same
    bytes back. Commands cut into ``chunk``-byte sends arrive over many reads, so
    many batches are in flight per connection at once."""
    prefix = b"c%s:" % str(chunk).encode()
    ours_cmds, theirs_cmds = _transcript(b"front" + prefix), _transcript(b"direct" + prefix)
    if chunk is None:
        ours = _replies(_port(front), b"".join(ours_cmds), len(ours_cmds))
    else:
        payload = b"".join(ours_cmds)
        with socket.create_connection(("127.0.0.1", _port(front)), timeout=10) as s:
            for i in range(0, len(payload), chunk):
                s.sendall(payload[i:i + chunk])
            ours = _read_replies(s, len(ours_cmds))
    theirs = _replies(redis_port, b"".join(theirs_cmds), len(theirs_cmds))
    diffs = [(i, a[:80], b[:80]) for i, (a, b) in enumerate(zip(ours, theirs, strict=True)) if a != b]
    assert not diffs
    assert front.spawner.spawned > 0 and front.spawner.in_flight == 0


def test_a_slow_redis_command_does_not_stall_other_connections(front):
    from netreactor.protocols.resp import encode_command

    port = _port(front)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as slow, \
            socket.create_connection(("127.0.0.1", port), timeout=10) as other:
        slow.sendall(encode_command("SET", "slow:k", "1"))
        assert _read_replies(slow, 1) == [b"+OK\r\n"]
        slow.sendall(encode_command("DEBUG", "SLEEP", "0.5") + encode_command("GET", "slow:k"))
        t0 = time.monotonic()
        # The loop serves the other connection meanwhile: commands the front answers
        # itself come back at once, while the sleeping redis holds the slow one.
        for i in range(20):
            other.sendall(encode_command("ECHO", f"m{i}"))
            assert _read_replies(other, 1) == [b"$%d\r\nm%d\r\n" % (len(f"m{i}"), i)]
        assert time.monotonic() - t0 < 0.4
        slow.setblocking(False)
        with pytest.raises(BlockingIOError):
            slow.recv(100)  # DEBUG SLEEP still running: nothing yet, and GET waits its turn
        slow.setblocking(True)
        assert _read_replies(slow, 2) == [b"+OK\r\n", b"$1\r\n1\r\n"]


def test_redis_front_with_redis_cli(front):
    cli = shutil.which("redis-cli")
    if cli is None:
        pytest.skip("redis-cli not installed (Debian package redis-tools)")
    run = lambda *a: subprocess.run([cli, "-p", str(_port(front)), *a], capture_output=True,
                                    text=True, timeout=10).stdout
    assert run("SET", "cli:x", "42") == "OK\n"
    assert run("INCR", "cli:x") == "43\n"
    assert run("GET", "cli:x") == "43\n"
    assert run("NOSUCH") .startswith("ERR unknown command")


def test_netreactor_example_redis_front_turns_asyncio_on(redis_port):
    """The command line: ``netreactor example redis-front`` serves with asyncio on
    (the example's default option), forwarding to NETREACTOR_REDIS_URL."""
    import os
    import re
    import signal
    import sys

    from netreactor.protocols.resp import encode_command

    env = dict(os.environ, NETREACTOR_REDIS_URL=f"redis://127.0.0.1:{redis_port}/0")
    proc = subprocess.Popen([sys.executable, "-m", "netreactor", "example", "redis-front",
                             "--listen", "tcp://127.0.0.1:0"], env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        log = b""
        deadline = time.monotonic() + 20
        while not re.search(rb"serving tcp://127\.0\.0\.1:(\d+)", log):
            assert time.monotonic() < deadline and proc.poll() is None, log.decode(errors="replace")
            log += proc.stderr.read1(4096)
        port = int(re.search(rb"serving tcp://127\.0\.0\.1:(\d+)", log).group(1))
        payload = encode_command("SET", "cli:front", "7") + encode_command("INCR", "cli:front") \
            + encode_command("PING")
        assert _replies(port, payload, 3) == [b"+OK\r\n", b":8\r\n", b"+PONG\r\n"]
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
        proc.stderr.close()


def test_idle_timeout_and_debug_mode_with_asyncio_on(aio):
    """The timing wheel's timers run on either asyncio loop (the shared poller runs
    them inside select(); the nested loop through the driver's call_later), and
    debug mode's slow-callback timing sits under conn.spawn as well."""
    closed = []

    class Idle(Lines):
        def on_close(self, conn, err):
            closed.append(type(err).__name__ if err else None)

    async def work(conn, line):
        await asyncio.sleep(0)
        return line + b"\n"

    with serving(Idle(work), "tcp://127.0.0.1:0", idle_timeout=0.3, debug=True, **aio) as engine:
        with connect(engine.addresses[0]) as s:
            s.sendall(b"hello\n")
            assert recv_exact(s, 6) == b"hello\n"
            t0 = time.monotonic()
            assert recv_until_eof(s) == b""  # closed for idleness
            assert 0.2 <= time.monotonic() - t0 < 3
    assert closed == ["IdleTimeoutError"]
