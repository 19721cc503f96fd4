"""Debug mode (issue 13): each check fires, and nothing of it exists when off."""

from __future__ import annotations

import gc
import logging
import os
import socket
import subprocess
import sys
import threading
import time
import warnings

import pytest

import netreactor as nr
from netreactor import debug
from netreactor.codec import LineCodec
from netreactor.options import Options
from netreactor.reactor import EventLoop, new_poller
from netreactor.stream import PLAIN_UNIX, Conn, EdgeConn, StreamContext
from conftest import connect, serving, wait_for


class Holder(nr.EventHandler):
    """Keeps its connections, for calls from another thread."""

    def __init__(self):
        self.conns = []

    def on_open(self, conn):
        self.conns.append(conn)

    def on_traffic(self, conn):
        conn.write(conn.read())


CALLS = {
    "read": lambda c: c.read(), "peek": lambda c: c.peek(), "discard": lambda c: c.discard(),
    "next": lambda c: c.next(1), "write": lambda c: c.write(b"x"), "writev": lambda c: c.writev([b"x"]),
    "flush": lambda c: c.flush(), "pause_reading": lambda c: c.pause_reading(),
    "resume_reading": lambda c: c.resume_reading(), "when_drained": lambda c: c.when_drained(print),
    "call_later": lambda c: c.call_later(1, print), "set_idle_timeout": lambda c: c.set_idle_timeout(5),
    "set_read_timeout": lambda c: c.set_read_timeout(5), "abort": lambda c: c.abort(),
    "set_no_delay": lambda c: c.set_no_delay(),
}


@pytest.mark.parametrize("edge", [False, True], ids=["level", "edge"])
def test_loop_only_methods_raise_from_another_thread(edge):
    handler = Holder()
    with serving(handler, "tcp://127.0.0.1:0", debug=True, edge_triggered=edge) as engine:
        with connect(engine.addresses[0]) as s:
            s.sendall(b"hi")
            assert s.recv(2) == b"hi"
            conn = handler.conns[0]
            assert type(conn) is (debug.DebugEdgeConn if edge else debug.DebugConn)
            for name, call in CALLS.items():
                with pytest.raises(RuntimeError, match=rf"Conn\.{name}\(\) called from thread"):
                    call(conn)
            # The any-thread API still works, and the connection still serves.
            conn.async_write(b"!")
            assert s.recv(1) == b"!"
    assert set(CALLS) <= set(debug.LOOP_ONLY)


def test_without_debug_the_checks_do_not_exist():
    handler = Holder()
    with serving(handler, "tcp://127.0.0.1:0") as engine:
        with connect(engine.addresses[0]) as s:
            s.sendall(b"hi")
            assert s.recv(2) == b"hi"
            conn = handler.conns[0]
            assert type(conn) is Conn
            assert conn.peek() == b""  # no check: racy but allowed, as before
            server = engine._impl
            assert server.handler is handler  # no proxy
            assert all("_call" not in loop.__dict__ for loop in engine.loops)


class Slow(nr.EventHandler):
    def on_traffic(self, conn):
        time.sleep(0.15)
        conn.write(conn.read())


def test_a_slow_callback_is_named(caplog):
    caplog.set_level(logging.WARNING, logger="netreactor")
    with serving(Slow(), "tcp://127.0.0.1:0", debug=True, slow_callback_duration=0.05) as engine:
        with connect(engine.addresses[0]) as s:
            s.sendall(b"x")
            assert s.recv(1) == b"x"
    lines = [r.getMessage() for r in caplog.records if "took" in r.getMessage()]
    assert any("Slow.on_traffic took 0.1" in m and "<Conn fd=" in m for m in lines), lines


def test_a_slow_timer_or_task_is_named(caplog):
    caplog.set_level(logging.WARNING, logger="netreactor")

    def nap():
        time.sleep(0.12)

    class Timer(nr.EventHandler):
        def on_open(self, conn):
            conn.call_later(0, nap)
            conn.write(b"o")

    with serving(Timer(), "tcp://127.0.0.1:0", debug=True, slow_callback_duration=0.05) as engine:
        with connect(engine.addresses[0]) as s:
            assert s.recv(1) == b"o"
            wait_for(lambda: any("nap" in r.getMessage() for r in caplog.records), what="the report")
    line = next(r.getMessage() for r in caplog.records if "nap" in r.getMessage())
    assert "took 0.1" in line and "slow_callback_duration is 0.05" in line


def test_handler_errors_still_name_the_handler_class(expected_errors):
    class Broken(nr.EventHandler):
        def on_traffic(self, conn):
            raise KeyError("boom")

    with serving(Broken(), "tcp://127.0.0.1:0", debug=True) as engine:
        with connect(engine.addresses[0]) as s:
            s.sendall(b"x")
            assert s.recv(1) == b""
    assert any("Broken.on_traffic raised" in r.getMessage() for r in expected_errors)


def test_an_unclosed_connection_warns_and_releases_its_fd():
    loop = EventLoop(0, new_poller("selectors"), logging.getLogger("netreactor"))
    ctx = StreamContext(loop, nr.EventHandler(), Options(debug=True), lambda: None)
    a, b = socket.socketpair()
    fd = a.detach()
    conn = debug.DebugConn(ctx, fd, PLAIN_UNIX)
    with pytest.warns(ResourceWarning, match="unclosed connection"):
        del conn
        gc.collect()
    with pytest.raises(OSError):
        os.fstat(fd)  # closed
    b.close()
    # A closed one says nothing.
    a, b = socket.socketpair()
    conn = debug.DebugConn(ctx, a.detach(), PLAIN_UNIX)
    Conn.abort(conn)  # the unchecked method: this test is not on the loop thread
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        del conn
        gc.collect()
    b.close()
    loop.close()


def test_an_engine_still_running_at_exit_warns(tmp_path):
    script = tmp_path / "leak.py"
    script.write_text(
        "import netreactor as nr\n"
        "e = nr.Engine(nr.EventHandler(), 'tcp://127.0.0.1:0', debug=True).start()\n"
        "print('started', flush=True)\n")
    env = dict(os.environ, PYTHONPATH=os.getcwd() + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, "-W", "default", str(script)], capture_output=True, text=True,
                       timeout=30, env=env)
    assert "started" in r.stdout
    assert "ResourceWarning: engine <Engine running tcp://127.0.0.1:" in r.stderr, r.stderr
    assert "was not stopped (still running at interpreter exit)" in r.stderr
    # Stopped: nothing to say.
    script.write_text(
        "import netreactor as nr\n"
        "e = nr.Engine(nr.EventHandler(), 'tcp://127.0.0.1:0', debug=True).start()\n"
        "e.stop(); e.wait()\n")
    r = subprocess.run([sys.executable, "-W", "default", str(script)], capture_output=True, text=True,
                       timeout=30, env=env)
    assert "ResourceWarning" not in r.stderr, r.stderr


def test_on_tick_without_ticker_is_reported_once(caplog):
    caplog.set_level(logging.WARNING, logger="netreactor")

    class Ticks(nr.EventHandler):
        def on_tick(self):
            return 1.0

    with serving(Ticks(), "tcp://127.0.0.1:0", debug=True):
        pass
    with serving(Ticks(), "tcp://127.0.0.1:0", debug=True, ticker=True):
        pass
    with serving(Ticks(), "tcp://127.0.0.1:0"):
        pass
    lines = [r.getMessage() for r in caplog.records if "on_tick" in r.getMessage()]
    assert lines == ["netreactor debug: Ticks defines on_tick but ticker=True is not set: on_tick "
                     "will never run"]


class Forgetful(nr.FramedHandler):
    codec = LineCodec()

    def on_frame(self, conn, frame):
        frame.upper()  # computed, and not returned


class Replies(nr.FramedHandler):
    codec = LineCodec()

    def on_frame(self, conn, frame):
        if frame == b"quiet":
            return None
        return frame.upper()


def test_a_framed_handler_that_returns_nothing_is_reported_once(caplog):
    caplog.set_level(logging.WARNING, logger="netreactor")
    with serving(Forgetful(), "tcp://127.0.0.1:0", debug=True) as engine:
        with connect(engine.addresses[0]) as s:
            s.sendall(b"a\nb\n")
            time.sleep(0.1)
            s.sendall(b"c\n")
            time.sleep(0.1)
    lines = [r.getMessage() for r in caplog.records if "on_frame returned None" in r.getMessage()]
    assert len(lines) == 1 and "Forgetful.on_frame" in lines[0], lines
    caplog.clear()
    with serving(Replies(), "tcp://127.0.0.1:0", debug=True) as engine:
        with connect(engine.addresses[0]) as s:
            s.sendall(b"quiet\nloud\n")  # one None among replies: fine
            got = b""
            while not got.endswith(b"LOUD\r\n"):
                got += s.recv(100)
            assert got == b"LOUD\r\n"
    assert not [r for r in caplog.records if "on_frame returned None" in r.getMessage()]


def test_debug_from_the_environment_and_the_command_line():
    env = dict(os.environ, NETREACTOR_DEBUG="1")
    code = "import netreactor as nr; print(nr.Options.from_kwargs({}).debug, " \
           "nr.Options.from_kwargs({'debug': False}).debug)"
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert r.stdout.split() == ["True", "False"], r.stderr
    env["NETREACTOR_DEBUG"] = "0"
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert r.stdout.split() == ["False", "False"], r.stderr
    from netreactor.cli import build_parser
    from netreactor.cli.flags import options_from_args

    args = build_parser().parse_args(["run", "m:h", "-l", "tcp://127.0.0.1:0", "--debug",
                                      "--slow-callback-duration", "0.5"])
    assert options_from_args(args) == {"debug": True, "slow_callback_duration": 0.5}


def test_the_proxy_passes_for_the_handler():
    h = Forgetful()
    proxy = debug.DebugHandler(h, 0.1, logging.getLogger("netreactor"))
    assert isinstance(proxy, nr.FramedHandler) and proxy.__class__ is Forgetful
    assert proxy.codec is h.codec
    assert debug.conn_class(Options(debug=True)) is debug.DebugConn
    assert debug.conn_class(Options(debug=True, edge_triggered=True)) is debug.DebugEdgeConn
    assert debug.conn_class(Options()) is Conn
    assert debug.conn_class(Options(edge_triggered=True)) is EdgeConn
    threading.current_thread()
