"""Regression tests for the failure modes of issue 10 (hardening), one section
per item. Each test failed before its fix. (Items 3-6, the protocol parsers,
are in test_resp_parser.py and test_http_parser.py.)"""

from __future__ import annotations

import errno
import gc
import os
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import threading
import time
import tracemalloc

import pytest

import netreactor as nr
from netreactor.codec import LineCodec
from netreactor.reactor.pollers import epoll_available
from conftest import connect, recv_exact, serving, wait_for

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

POLLERS = [pytest.param(dict(poller="selectors"), id="selectors")]
if epoll_available():
    POLLERS = [pytest.param(dict(poller="epoll"), id="epoll-lt"),
               pytest.param(dict(poller="epoll", edge_triggered=True), id="epoll-et")] + POLLERS


def _reset(sock: socket.socket) -> None:
    """Close with an RST instead of a FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def _other_threads_cpu() -> float:
    """CPU seconds used so far by every thread of this process but the caller (Linux)."""
    me = threading.get_native_id()
    total = 0
    for tid in os.listdir("/proc/self/task"):
        if int(tid) == me:
            continue
        try:
            with open(f"/proc/self/task/{tid}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except FileNotFoundError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime + stime, in clock ticks
    return total / os.sysconf("SC_CLK_TCK")


class Recorder(nr.EventHandler):
    def __init__(self) -> None:
        self.conns = []
        self.closed = []
        self.close_event = threading.Event()

    def on_open(self, conn):
        self.conns.append(conn)

    def on_close(self, conn, err):
        self.closed.append(err)
        self.close_event.set()


# ---------------------------------------------------------------- 1. paused + reset


@pytest.mark.parametrize("opts", POLLERS)
@pytest.mark.parametrize("pause", ["handler", "back-pressure"])
def test_a_paused_connection_whose_peer_resets_is_closed(opts, pause):
    class Paused(Recorder):
        def on_open(self, conn):
            super().on_open(conn)
            if pause == "handler":
                conn.pause_reading()
            else:
                conn.write(b"x" * (4 << 20))  # far past write_high_water: reading stops

    handler = Paused()
    with serving(handler, "tcp://127.0.0.1:0", **opts) as engine:
        client = connect(engine.addresses[0])
        client.sendall(b"unread request")
        wait_for(lambda: handler.conns, what="on_open")
        time.sleep(0.05)  # let the server settle into its paused state
        _reset(client)
        assert handler.close_event.wait(5), "on_close never ran for the reset connection"
        assert isinstance(handler.closed[0], OSError), handler.closed
        wait_for(lambda: engine.count_connections() == 0, what="the connection to be forgotten")
        if sys.platform.startswith("linux"):
            before = _other_threads_cpu()
            time.sleep(0.5)
            assert _other_threads_cpu() - before < 0.25, "the loop spins after the reset"


@pytest.mark.parametrize("opts", POLLERS)
def test_a_unix_peer_that_hangs_up_while_paused_is_delivered_on_resume(opts, unix_path):
    """A Unix peer that sends and then closes completely (EPOLLHUP) while the
    handler holds reading paused: no spin, and on resume the handler still
    gets what it sent, then the peer's close."""
    got = []

    class Held(Recorder):
        def on_open(self, conn):
            super().on_open(conn)
            conn.pause_reading()

        def on_traffic(self, conn):
            if conn.context == "resume":  # the wake() below
                conn.resume_reading()
                conn.context = None
                return
            got.append(conn.read())

    handler = Held()
    with serving(handler, f"unix://{unix_path}", **opts) as engine:
        client = connect(engine.addresses[0])
        client.sendall(b"last words")
        wait_for(lambda: handler.conns, what="on_open")
        client.close()
        time.sleep(0.3)
        if sys.platform.startswith("linux"):
            before = _other_threads_cpu()
            time.sleep(0.4)
            assert _other_threads_cpu() - before < 0.2, "the loop spins on a hung-up paused connection"
        handler.conns[0].context = "resume"
        handler.conns[0].wake()  # on_traffic resumes reading, on the loop
        assert handler.close_event.wait(5)
        assert b"".join(got) == b"last words"
        assert isinstance(handler.closed[0], nr.PeerClosedError)


# ---------------------------------------------------------------- 2. busy SO_REUSEPORT port


def _holder(kind: int, reuse_port: bool, reuse_addr: bool = False) -> socket.socket:
    s = socket.socket(socket.AF_INET, kind)
    if reuse_port:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    if reuse_addr:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", 0))
    if kind == socket.SOCK_STREAM:
        s.listen(16)
    return s


needs_reuseport = pytest.mark.skipif(not hasattr(socket, "SO_REUSEPORT"), reason="no SO_REUSEPORT")


@needs_reuseport
@pytest.mark.parametrize("scheme,kind", [("tcp", socket.SOCK_STREAM), ("udp", socket.SOCK_DGRAM)])
@pytest.mark.parametrize("holder_reuse_port", [True, False])
def test_reuse_port_refuses_a_port_someone_else_holds(scheme, kind, holder_reuse_port):
    holder = _holder(kind, holder_reuse_port, reuse_addr=True)
    try:
        port = holder.getsockname()[1]
        address = f"{scheme}://127.0.0.1:{port}"
        engine = nr.Engine(nr.EventHandler(), address, reuse_port=True, loops=2)
        with pytest.raises(OSError) as info:
            engine.start()
        assert info.value.errno == errno.EADDRINUSE
        assert address in str(info.value)
    finally:
        holder.close()


def test_udp_does_not_share_a_port_through_so_reuseaddr():
    holder = _holder(socket.SOCK_DGRAM, reuse_port=False, reuse_addr=True)
    try:
        address = f"udp://127.0.0.1:{holder.getsockname()[1]}"
        with pytest.raises(OSError) as info:
            nr.Engine(nr.EventHandler(), address).start()
        assert info.value.errno == errno.EADDRINUSE and address in str(info.value)
    finally:
        holder.close()


@needs_reuseport
def test_workers_refuse_a_port_someone_else_holds(tmp_path):
    holder = _holder(socket.SOCK_STREAM, reuse_port=True)
    try:
        port = holder.getsockname()[1]
        (tmp_path / "app.py").write_text("import netreactor as nr\nclass H(nr.EventHandler):\n    pass\n")
        proc = subprocess.run(
            [sys.executable, "-m", "netreactor", "run", "app:H", "--listen", f"tcp://127.0.0.1:{port}",
             "--workers", "2"], cwd=tmp_path, capture_output=True, text=True, timeout=30,
            env=dict(os.environ, PYTHONPATH=REPO))
    finally:
        holder.close()
    assert proc.returncode == 1, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if "error" in line]
    assert lines == [f"netreactor: error: cannot listen on tcp://127.0.0.1:{port}: Address already in use"]


# ---------------------------------------------------------------- 7. graceful close without resets


@pytest.mark.parametrize("stop", ["engine.stop", "Action.CLOSE"])
def test_closing_with_unread_input_does_not_reset_the_reply(stop):
    """The server closes while the peer's next requests sit unread in its
    receive queue. A plain close() would answer with RST and throw away the
    reply still in the kernel's send queue; the reply must arrive whole, then EOF."""
    reply = os.urandom(3 << 20)
    replied = threading.Event()

    class Big(nr.EventHandler):
        def on_traffic(self, conn):
            if not conn.context:
                conn.context = True
                conn.read()
                conn.write(reply)
                replied.set()
                if stop == "Action.CLOSE":
                    return nr.Action.CLOSE
            return None

    engine = nr.Engine(Big(), "tcp://127.0.0.1:0", write_buffer_cap=8 << 20).start()
    client = connect(engine.addresses[0])
    try:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)
        client.sendall(b"GET")
        assert replied.wait(5)
        client.sendall(b"more requests the server will never read" * 100)
        time.sleep(0.2)
        if stop == "engine.stop":
            engine.stop()
        received = bytearray()
        while True:
            try:
                chunk = client.recv(1 << 16)
            except ConnectionResetError:
                pytest.fail(f"connection reset after {len(received)} of {len(reply)} bytes")
            if not chunk:
                break
            received += chunk
        assert bytes(received) == reply
    finally:
        client.close()
        engine.stop()
        assert engine.wait(10)


def test_graceful_stop_under_ping_pong_load_loses_no_reply():
    """Clients in a request/reply loop while the engine stops: each one sees
    every reply to what the server read, then a clean EOF, never a reset."""
    class Echo(nr.EventHandler):
        def on_traffic(self, conn):
            conn.write(conn.read())

    engine = nr.Engine(Echo(), "tcp://127.0.0.1:0").start()
    results = []
    go = threading.Barrier(11)

    def client() -> None:
        s = connect(engine.addresses[0])
        go.wait()
        outcome = "eof"
        try:
            while True:
                try:
                    s.sendall(b"x" * 64)
                except (BrokenPipeError, ConnectionResetError) as exc:
                    outcome = repr(exc)  # the server closed first and said so with RST
                    break
                try:
                    got = recv_exact(s, 64)
                except ConnectionError as exc:
                    if "EOF after 0" in str(exc):
                        break
                    outcome = repr(exc)
                    break
                assert got == b"x" * 64
        finally:
            s.close()
            results.append(outcome)

    threads = [threading.Thread(target=client) for _ in range(10)]
    for t in threads:
        t.start()
    go.wait()
    time.sleep(0.3)
    engine.stop()
    for t in threads:
        t.join(20)
    assert engine.wait(10)
    assert results == ["eof"] * 10


# ---------------------------------------------------------------- 8. loop-only calls from other threads


def test_write_from_another_thread_raises_and_names_async_write():
    handler = Recorder()
    with serving(handler, "tcp://127.0.0.1:0") as engine:
        client = connect(engine.addresses[0])
        wait_for(lambda: handler.conns, what="on_open")
        conn = handler.conns[0]
        time.sleep(0.05)  # the loop is idle: no callback of this connection runs
        with pytest.raises(RuntimeError, match="async_write"):
            conn.write(b"from the wrong thread")
        with pytest.raises(RuntimeError, match="async_write"):
            conn.writev([b"a", b"b"])
        conn.async_write(b"the right way")
        assert recv_exact(client, 13) == b"the right way"
        client.close()


# ---------------------------------------------------------------- 9. SystemExit in a handler


@pytest.mark.parametrize("exc", ["SystemExit(3)", "KeyboardInterrupt()"])
def test_system_exit_in_a_handler_closes_every_connection(exc, tmp_path):
    script = textwrap.dedent(f"""
        import sys, netreactor as nr
        class H(nr.EventHandler):
            def on_boot(self, engine):
                print(engine.addresses[0], flush=True)
            def on_traffic(self, conn):
                if conn.read() == b"quit":
                    raise {exc}
            def on_close(self, conn, err):
                print("close", type(err).__name__, flush=True)
            def on_shutdown(self, engine):
                print("shutdown", flush=True)
        try:
            nr.run(H(), "tcp://127.0.0.1:0")
        except BaseException as e:
            print("raised", type(e).__name__, flush=True)
            raise
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=REPO,
                            env=dict(os.environ, PYTHONPATH=REPO))
    try:
        address = proc.stdout.readline().strip()
        bystander = connect(address)
        quitter = connect(address)
        bystander.sendall(b"hello")
        quitter.sendall(b"quit")
        bystander.settimeout(10)
        assert bystander.recv(1) == b""  # the other peer gets EOF, not a hang
        out, err = proc.communicate(timeout=15)
    finally:
        proc.kill()
        proc.wait()
    lines = out.splitlines()
    assert lines.count("close EngineStoppedError") == 2, out
    assert lines[-2:] == ["shutdown", f"raised {exc.split('(')[0]}"], out
    # An uncaught KeyboardInterrupt ends Python by SIGINT (so the parent sees it).
    assert proc.returncode == (3 if exc.startswith("SystemExit") else -signal.SIGINT), err


# ---------------------------------------------------------------- 10. cancelled timers


def test_cancelled_timers_do_not_accumulate():
    """The idle-timeout idiom the README gave: cancel and re-arm per message."""
    rearmed = threading.Event()
    loops = []

    class Rearm(nr.EventHandler):
        def on_traffic(self, conn):
            conn.read()
            loops.append(conn.loop)
            handle = conn.call_later(300, conn.close)
            for _ in range(100_000):
                handle.cancel()
                handle = conn.call_later(300, conn.close)
            rearmed.set()

    with serving(Rearm(), "tcp://127.0.0.1:0") as engine:
        with connect(engine.addresses[0]) as client:
            gc.collect()
            tracemalloc.start()
            try:
                client.sendall(b"x")
                assert rearmed.wait(30)
                current, _ = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
            assert loops[0].timer_count() < 1000
            assert current < 1 << 20, f"{current} bytes kept by cancelled timers"


def test_a_cancelled_timer_releases_its_callback():
    import weakref

    class Target:
        def fire(self):
            raise AssertionError("cancelled timer ran")

    holder = []
    with serving(nr.EventHandler(), "tcp://127.0.0.1:0") as engine:
        loop = engine.loops[0]
        done = threading.Event()

        def arm():
            target = Target()
            holder.append(weakref.ref(target))
            loop.call_later(300, target.fire).cancel()
            done.set()

        loop.call_soon_threadsafe(arm)
        assert done.wait(5)
        gc.collect()
        assert holder[0]() is None, "the cancelled timer still pins its callback"


# ---------------------------------------------------------------- 11. one guard for every callback


@pytest.mark.parametrize("scheme", ["tcp", "udp"])
def test_dial_returns_when_on_open_raises(scheme, expected_errors):
    class Raises(nr.EventHandler):
        def on_open(self, conn):
            raise RuntimeError("boom in on_open")

    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM if scheme == "tcp" else socket.SOCK_DGRAM)
    server.bind(("127.0.0.1", 0))
    if scheme == "tcp":
        server.listen(4)
    try:
        with nr.Client(Raises()) as client:
            result = []
            t = threading.Thread(target=lambda: result.append(
                client.dial(f"{scheme}://127.0.0.1:{server.getsockname()[1]}", timeout=5)))
            t.start()
            t.join(10)
            assert not t.is_alive(), "dial() blocks when on_open raises"
            assert result and result[0].closed
    finally:
        server.close()
    assert any("on_open raised" in r.getMessage() for r in expected_errors)


# ---------------------------------------------------------------- 12. on_tick delays


@pytest.mark.parametrize("delay", [0, -1, 0.0])
def test_on_tick_non_positive_delay_does_not_spin(delay, expected_errors):
    ticks = []

    class Tick(nr.EventHandler):
        def on_tick(self):
            ticks.append(time.monotonic())
            return delay

    with serving(Tick(), "tcp://127.0.0.1:0", ticker=True):
        time.sleep(1.3)
    assert 1 <= len(ticks) <= 3, f"{len(ticks)} ticks in 1.3 s"
    assert any("on_tick returned" in r.getMessage() and "> 0" in r.getMessage() for r in expected_errors)


# ---------------------------------------------------------------- 13. FramedHandler without super().__init__()


def test_framed_handler_without_super_init_works():
    class Upper(nr.FramedHandler):
        codec = LineCodec(newline=b"\n")

        def __init__(self, suffix: bytes) -> None:  # no super().__init__()
            self.suffix = suffix

        def on_frame(self, conn, frame):
            return frame.upper() + self.suffix

    with serving(Upper(b"!"), "tcp://127.0.0.1:0") as engine:
        with connect(engine.addresses[0]) as s:
            s.sendall(b"hi\nthere\n")
            assert recv_exact(s, 11) == b"HI!\nTHERE!\n"


def test_framed_handler_without_a_codec_fails_before_binding():
    class NoCodec(nr.FramedHandler):
        def __init__(self) -> None:
            pass

    with pytest.raises(ValueError, match="codec"):
        nr.Engine(NoCodec(), "tcp://127.0.0.1:0")


# ---------------------------------------------------------------- 14. errors name the address


def test_busy_port_error_names_the_address():
    holder = _holder(socket.SOCK_STREAM, reuse_port=False)
    try:
        address = f"tcp://127.0.0.1:{holder.getsockname()[1]}"
        with pytest.raises(OSError) as info:
            nr.Engine(nr.EventHandler(), address).start()
        assert info.value.errno == errno.EADDRINUSE
        assert str(info.value) == f"[Errno {errno.EADDRINUSE}] cannot listen on {address}: Address already in use"
    finally:
        holder.close()


def test_unknown_host_error_names_the_address(fake_resolver):
    with pytest.raises(socket.gaierror) as info:
        nr.Engine(nr.EventHandler(), "tcp://no-such-host.invalid:0").start()
    assert "tcp://no-such-host.invalid:0" in str(info.value)


def test_examples_default_to_an_address_of_their_transport():
    from netreactor.examples import EXAMPLES, default_listen

    assert default_listen("udp-echo") == "udp://127.0.0.1:9000"
    assert default_listen("echo") == "tcp://127.0.0.1:9000"
    assert set(EXAMPLES) >= {"udp-echo", "echo", "http", "redis", "push"}
