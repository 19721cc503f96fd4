"""Boot, actions from every callback, the ticker, stopping (API and signals),
and survival when the process runs out of file descriptors."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading

import pytest

import netreactor as nr
from conftest import (CORE_CONFIGS, TRANSPORTS, address_for, connect, recv_exact,
                      recv_until_eof, serving, wait_for)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Lifecycle(nr.EventHandler):
    def __init__(self):
        self.events = []
        self.closed = threading.Event()

    def on_boot(self, engine):
        self.events.append("boot")

    def on_open(self, conn):
        self.events.append("open")

    def on_traffic(self, conn):
        conn.write(conn.read())

    def on_close(self, conn, err):
        self.events.append(("close", type(err).__name__ if err else None))
        self.closed.set()

    def on_shutdown(self, engine):
        self.events.append("shutdown")


# ---------------------------------------------------------------- actions


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("opts", CORE_CONFIGS)
def test_on_open_close_sends_greeting_then_closes(opts, transport, unix_path):
    class Once(Lifecycle):
        def on_open(self, conn):
            conn.write(b"go away")
            return nr.Action.CLOSE

    handler = Once()
    with serving(handler, address_for(transport, unix_path), **opts) as engine:
        with connect(engine.addresses[0]) as s:
            assert recv_until_eof(s) == b"go away"
        assert handler.closed.wait(5)
    assert ("close", None) in handler.events


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("opts", CORE_CONFIGS)
def test_on_traffic_close_flushes_reply_first(opts, transport, unix_path):
    class Reply(Lifecycle):
        def on_traffic(self, conn):
            conn.write(conn.read() + b"!")
            return nr.Action.CLOSE

    handler = Reply()
    with serving(handler, address_for(transport, unix_path), **opts) as engine:
        with connect(engine.addresses[0]) as s:
            s.sendall(b"quit")
            assert recv_until_eof(s) == b"quit!"


def _shutdown_by(callback: str, transport: str, unix_path: str, opts: dict) -> Lifecycle:
    class Stopper(Lifecycle):
        def on_open(self, conn):
            super().on_open(conn)
            if callback == "on_open":
                return nr.Action.SHUTDOWN

        def on_traffic(self, conn):
            conn.write(conn.read())
            if callback == "on_traffic":
                return nr.Action.SHUTDOWN

        def on_close(self, conn, err):
            super().on_close(conn, err)
            if callback == "on_close":
                return nr.Action.SHUTDOWN

    handler = Stopper()
    engine = nr.Engine(handler, address_for(transport, unix_path), **opts).start()
    try:
        with connect(engine.addresses[0]) as s:
            if callback != "on_open":  # on_open shuts down before any traffic
                s.sendall(b"hi")
                assert recv_exact(s, 2) == b"hi"
        assert engine.wait(10), f"SHUTDOWN from {callback} did not stop the engine"
    finally:
        engine.stop()
        engine.wait(10)
    return handler


@pytest.mark.parametrize("callback", ["on_open", "on_traffic", "on_close"])
@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("opts", CORE_CONFIGS[:2] + CORE_CONFIGS[-1:])
def test_shutdown_action_from_connection_callbacks(callback, opts, transport, unix_path):
    handler = _shutdown_by(callback, transport, unix_path, opts)
    assert handler.events[0] == "boot"
    assert handler.events[-1] == "shutdown"
    assert any(e[0] == "close" for e in handler.events if isinstance(e, tuple))
    if transport == "unix":
        assert not os.path.exists(unix_path), "the Unix socket file was not removed"


def test_on_boot_shutdown_aborts_start(unix_path):
    class NoBoot(Lifecycle):
        def on_boot(self, engine):
            super().on_boot(engine)
            return nr.Action.SHUTDOWN

    handler = NoBoot()
    nr.run(handler, f"unix://{unix_path}")  # returns at once instead of serving
    assert handler.events == ["boot"]
    assert not os.path.exists(unix_path)


def test_on_boot_exception_propagates_and_releases_listeners(unix_path):
    class BadBoot(Lifecycle):
        def on_boot(self, engine):
            raise RuntimeError("no config")

    with pytest.raises(RuntimeError, match="no config"):
        nr.run(BadBoot(), f"unix://{unix_path}")
    assert not os.path.exists(unix_path)


def test_close_action_outside_a_connection_is_ignored():
    ticks = []

    class Tick(Lifecycle):
        def on_boot(self, engine):
            super().on_boot(engine)
            return nr.Action.CLOSE  # nothing to close: serve normally

        def on_tick(self):
            ticks.append(1)
            if len(ticks) == 1:
                return 0.01, nr.Action.CLOSE  # ignored
            return 0.01, nr.Action.SHUTDOWN

    handler = Tick()
    nr.Engine(handler, "tcp://127.0.0.1:0", ticker=True).run()
    assert len(ticks) == 2 and handler.events == ["boot", "shutdown"]


# ---------------------------------------------------------------- ticker


@pytest.mark.parametrize("loops", [1, 4])
def test_ticker_delays_and_shutdown(loops):
    stamps = []

    class Ticker(nr.EventHandler):
        def on_tick(self):
            import time

            stamps.append(time.monotonic())
            if len(stamps) == 5:
                return 0.0, nr.Action.SHUTDOWN
            return 0.05

    nr.Engine(Ticker(), "tcp://127.0.0.1:0", ticker=True, loops=loops).run()
    assert len(stamps) == 5
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    assert all(g >= 0.045 for g in gaps), gaps


def test_ticker_survives_a_raising_on_tick(expected_errors):
    calls = []

    class Flaky(nr.EventHandler):
        def on_tick(self):
            calls.append(1)
            if len(calls) == 1:
                raise ValueError("tick bug")
            return 0, nr.Action.SHUTDOWN

    import netreactor.ticker as eng

    old, eng.DEFAULT_TICK = eng.DEFAULT_TICK, 0.01
    try:
        nr.Engine(Flaky(), "tcp://127.0.0.1:0", ticker=True).run()
    finally:
        eng.DEFAULT_TICK = old
    assert len(calls) == 2
    assert any("on_tick raised" in r.getMessage() for r in expected_errors)


def test_ticker_off_by_default():
    class T(nr.EventHandler):
        def on_tick(self):
            raise AssertionError("on_tick called without ticker=True")

    with serving(T(), "tcp://127.0.0.1:0") as engine:
        with connect(engine.addresses[0]):
            pass


# ---------------------------------------------------------------- stop


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("opts", CORE_CONFIGS)
def test_stop_from_another_thread_closes_everything_and_is_idempotent(opts, transport, unix_path):
    handler = Lifecycle()
    engine = nr.Engine(handler, address_for(transport, unix_path), **opts).start()
    clients = [connect(engine.addresses[0]) for _ in range(5)]
    for c in clients:
        c.sendall(b"x")
        assert recv_exact(c, 1) == b"x"
    threading.Thread(target=engine.stop).start()
    engine.stop()
    # The peers see EOF and close, as peers do; the engine's lingering close
    # waits for that (or for close_timeout: a peer that never closes).
    for c in clients:
        assert recv_until_eof(c) == b""
        c.close()
    assert engine.wait(10)
    engine.stop()  # harmless
    closes = [e for e in handler.events if isinstance(e, tuple)]
    assert closes == [("close", None)] * 5
    assert handler.events[-1] == "shutdown"
    assert engine.count_connections() == 0
    if transport == "unix":
        assert not os.path.exists(unix_path)


def test_stop_flushes_pending_output():
    big = os.urandom(4 << 20)

    class Pusher(nr.EventHandler):
        def on_open(self, conn):
            conn.write(big)  # far more than the socket buffers hold

    engine = nr.Engine(Pusher(), "tcp://127.0.0.1:0", write_buffer_cap=8 << 20,
                       write_high_water=8 << 20).start()
    s = connect(engine.addresses[0])
    assert s.recv(1)  # the push has started
    engine.stop()
    rest = recv_until_eof(s)
    s.close()  # as a peer does on EOF (the engine's lingering close waits for it)
    assert engine.wait(10)
    assert len(rest) + 1 == len(big)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signals_stop_run_gracefully(sig, tmp_path):
    """run() on the main thread stops on SIGINT/SIGTERM: on_close for each
    connection, on_shutdown, socket file removed, exit status 0."""
    sock_path = tmp_path / "sig.sock"
    script = textwrap.dedent(f"""
        import sys, netreactor as nr
        class H(nr.EventHandler):
            def on_boot(self, engine):
                print("ready", flush=True)
            def on_traffic(self, conn):
                conn.write(conn.read())
            def on_close(self, conn, err):
                print("close", err, flush=True)
            def on_shutdown(self, engine):
                print("shutdown", flush=True)
        nr.run(H(), "unix://{sock_path}", loops=2)
        print("returned", flush=True)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                            cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO))
    try:
        assert proc.stdout.readline().strip() == "ready"
        client = connect(f"unix://{sock_path}")
        client.sendall(b"ping")
        assert recv_exact(client, 4) == b"ping"
        proc.send_signal(sig)
        assert recv_until_eof(client) == b""
        client.close()  # as a peer does on EOF (the engine's lingering close waits for it)
        out, _ = proc.communicate(timeout=15)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 0
    assert out.split("\n")[:3] == ["close None", "shutdown", "returned"]
    assert not sock_path.exists()


# ---------------------------------------------------------------- running out of descriptors


def test_emfile_backs_off_and_keeps_serving(tmp_path):
    """With RLIMIT_NOFILE low, a connection flood makes accept() fail with EMFILE.
    The server logs a warning, backs off instead of spinning, keeps serving the
    connections it has, and accepts again once descriptors are free."""
    script = textwrap.dedent("""
        import logging, resource, sys, time, os, netreactor as nr
        logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(message)s")
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
        class Echo(nr.EventHandler):
            def on_boot(self, engine):
                print(engine.addresses[0], flush=True)
            def on_traffic(self, conn):
                data = conn.read()
                if data == b"cpu?":
                    t = os.times()
                    conn.write(b"%f" % (t.user + t.system))
                else:
                    conn.write(data)
        nr.run(Echo(), "tcp://127.0.0.1:0")
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=REPO,
                            env=dict(os.environ, PYTHONPATH=REPO))
    clients = []
    try:
        address = proc.stdout.readline().strip()
        first = connect(address)
        first.sendall(b"a")
        assert recv_exact(first, 1) == b"a"
        # Far more connections than the server has descriptors: the kernel
        # completes them in the backlog; the server can accept only some.
        for _ in range(120):
            clients.append(connect(address))
        first.sendall(b"cpu?")
        cpu_before = float(first.recv(64))
        threading.Event().wait(1.0)  # let the server sit in the EMFILE state
        first.sendall(b"cpu?")
        cpu_after = float(first.recv(64))
        # Backing off means (almost) no CPU while descriptors are exhausted.
        assert cpu_after - cpu_before < 0.5, f"server spun: {cpu_after - cpu_before:.2f}s CPU in 1s"
        first.sendall(b"still serving")
        assert recv_exact(first, 13) == b"still serving"
        for c in clients:
            c.close()
        clients.clear()
        # Descriptors are free again: new connections are served.
        def fresh_echo():
            with connect(address) as c:
                c.sendall(b"new")
                return recv_exact(c, 3) == b"new"
        wait_for(fresh_echo, timeout=10, what="a new connection served after EMFILE")
        first.close()
    finally:
        for c in clients:
            c.close()
        proc.send_signal(signal.SIGTERM)
        try:
            _, err = proc.communicate(timeout=15)
        finally:
            proc.kill()
    assert proc.returncode == 0, err
    assert "WARNING accept on" in err and "Too many open files" in err
    assert "Traceback" not in err
