"""Idle and read timeouts (issue 13): the engine's idle_timeout, per-connection
overrides, read timeouts, preambles' timeouts, slowloris, and a storm of
timeouts at once. Timeouts are sub-second; the wheel ticks every 0.1 s, so a
connection is closed within its timeout plus two ticks (plus scheduling slack
on this shared machine)."""

from __future__ import annotations

import socket
import threading
import time

import pytest

import netreactor as nr
from netreactor.reactor.wheel import TICK
from conftest import CORE_CONFIGS, connect, serving, wait_for
from test_preamble import KINDS, Harness, LineGreeting, Recorder

T = 0.3
#: Late by at most two ticks, and by what the scheduler of a busy 2-core VM adds.
LATE = 2 * TICK + 0.4


class Echo(nr.EventHandler):
    def __init__(self):
        self.closed = []
        self.lock = threading.Lock()

    def on_traffic(self, conn):
        conn.write(conn.read())

    def on_close(self, conn, err):
        with self.lock:
            self.closed.append(err)


def eof_after(sock: socket.socket, limit: float = 5.0) -> float:
    """Seconds until the server closes ``sock`` (anything it sends is dropped)."""
    start = time.monotonic()
    sock.settimeout(limit)
    while True:
        try:
            if not sock.recv(65536):
                break
        except ConnectionResetError:
            break
    return time.monotonic() - start


@pytest.mark.parametrize("config", CORE_CONFIGS)
def test_idle_connections_close_active_ones_stay(config):
    handler = Echo()
    with serving(handler, "tcp://127.0.0.1:0", idle_timeout=T, **config) as engine:
        addr = engine.addresses[0]
        idle = connect(addr)
        active = connect(addr)
        start = time.monotonic()
        for _ in range(int(3 * T / 0.1)):  # traffic every 0.1 s for three timeouts
            active.sendall(b"ping")
            assert active.recv(4) == b"ping"
            last = time.monotonic()
            time.sleep(0.1)
        took = eof_after(idle, 0.1)  # closed meanwhile: recv returns EOF at once
        assert took < 0.1, "the idle connection was not closed"
        active.settimeout(0.05)
        with pytest.raises(socket.timeout):
            active.recv(1)  # still open
        eof_after(active)
        waited = time.monotonic() - last
        assert T - 0.05 <= waited <= T + LATE, waited
        assert time.monotonic() - start > 3 * T
        wait_for(lambda: len(handler.closed) == 2, what="both on_close")
        assert all(isinstance(err, nr.IdleTimeoutError) and isinstance(err, TimeoutError)
                   for err in handler.closed), handler.closed
        wait_for(lambda: engine.count_connections() == 0, what="fds released")
        idle.close()
        active.close()


def test_idle_timeout_on_unix_sockets(unix_path):
    handler = Echo()
    with serving(handler, f"unix://{unix_path}", idle_timeout=T) as engine:
        with connect(engine.addresses[0]) as s:
            assert T - 0.05 <= eof_after(s) <= T + LATE
    assert isinstance(handler.closed[0], nr.IdleTimeoutError)


class Pusher(nr.EventHandler):
    """Writes to its client every 0.1 s (outside any callback), ``pushes`` times."""

    def __init__(self, pushes):
        self.pushes = pushes

    def on_open(self, conn):
        conn.context = 0
        conn.call_later(0.1, self.push, conn)

    def push(self, conn):
        if conn.closed or conn.context >= self.pushes:
            return
        conn.context += 1
        conn.write(b"tick")
        conn.call_later(0.1, self.push, conn)


def test_writes_count_as_traffic():
    with serving(Pusher(pushes=8), "tcp://127.0.0.1:0", idle_timeout=T) as engine:
        with connect(engine.addresses[0]) as s:
            start = time.monotonic()
            got = b""
            s.settimeout(5)
            while True:
                chunk = s.recv(100)
                if not chunk:
                    break
                got += chunk
            took = time.monotonic() - start
            assert got == b"tick" * 8  # never idle while pushing (0.8 s > T)
            assert 0.8 + T - 0.05 <= took <= 0.8 + T + LATE, took


class Flood(nr.EventHandler):
    """Answers any input with 16 MiB: a client that does not read fills every buffer."""

    def __init__(self):
        self.closed = []

    def on_traffic(self, conn):
        conn.read()
        for _ in range(64):
            conn.write(b"x" * (256 * 1024))

    def on_close(self, conn, err):
        self.closed.append(err)


def test_a_paused_slow_reader_is_closed():
    handler = Flood()
    with serving(handler, "tcp://127.0.0.1:0", idle_timeout=T, write_buffer_cap=32 << 20) as engine:
        with connect(engine.addresses[0]) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.sendall(b"go")
            wait_for(lambda: handler.closed, timeout=T + 3, what="the slow reader closed")
            assert isinstance(handler.closed[0], nr.IdleTimeoutError)
            wait_for(lambda: engine.count_connections() == 0, what="its fd released")


class Overrides(nr.EventHandler):
    def __init__(self):
        self.timeouts = {}

    def on_traffic(self, conn):
        command = conn.read()
        if command == b"short":
            conn.set_idle_timeout(0.2)
        elif command == b"none":
            conn.set_idle_timeout(None)
        self.timeouts[command] = conn.idle_timeout
        conn.write(b"ok")


def test_per_connection_idle_timeouts():
    handler = Overrides()
    with serving(handler, "tcp://127.0.0.1:0", idle_timeout=0.6) as engine:
        addr = engine.addresses[0]
        default, short, none = connect(addr), connect(addr), connect(addr)
        for s, command in ((default, b"default"), (short, b"short"), (none, b"none")):
            s.sendall(command)
            assert s.recv(2) == b"ok"
        start = time.monotonic()
        assert eof_after(short) <= 0.2 + LATE
        assert eof_after(default) + (time.monotonic() - start) * 0 <= 0.6 + LATE
        assert time.monotonic() - start >= 0.6 - 0.05
        none.settimeout(0.5)
        with pytest.raises(socket.timeout):
            none.recv(1)  # no idle timeout for this one, 1.1 s on
        assert handler.timeouts[b"short"] == pytest.approx(0.2)
        assert handler.timeouts[b"default"] == pytest.approx(0.6)
        assert handler.timeouts[b"none"] is None
        for s in (default, short, none):
            s.close()


def test_idle_timeout_set_on_an_engine_without_one():
    handler = Overrides()
    with serving(handler, "tcp://127.0.0.1:0") as engine:
        with connect(engine.addresses[0]) as s:
            s.sendall(b"short")
            assert s.recv(2) == b"ok"
            assert eof_after(s) <= 0.2 + LATE


class Lines(nr.EventHandler):
    """A line protocol that defends itself: a line must be complete within
    ``read_timeout`` of its first byte (a trickle does not extend it)."""

    def __init__(self, read_timeout=T):
        self.read_timeout = read_timeout
        self.closed = []

    def on_open(self, conn):
        conn.context = False  # a read timeout is armed

    def on_traffic(self, conn):
        data = conn.peek()
        while b"\n" in data:
            line, _, data = data.partition(b"\n")
            conn.discard(len(line) + 1)
            conn.write(line.upper() + b"\n")
        if data and not conn.context:
            conn.context = True
            conn.set_read_timeout(self.read_timeout, on_timeout=self.too_slow)
        elif not data and conn.context:
            conn.context = False
            conn.set_read_timeout(None)

    def too_slow(self, conn):
        conn.write(b"ERR too slow\n")

    def on_close(self, conn, err):
        self.closed.append(err)


def test_read_timeout_closes_a_trickle_and_says_why():
    handler = Lines()
    with serving(handler, "tcp://127.0.0.1:0") as engine:
        with connect(engine.addresses[0]) as s:
            start = time.monotonic()
            got = b""
            s.settimeout(5)
            try:
                for _ in range(40):  # a byte every 0.05 s, never a newline
                    s.sendall(b"a")
                    time.sleep(0.05)
            except (BrokenPipeError, ConnectionResetError):
                pass
            while True:
                try:
                    chunk = s.recv(100)
                except ConnectionResetError:
                    break
                if not chunk:
                    break
                got += chunk
            assert got == b"ERR too slow\n"
        assert time.monotonic() - start < 40 * 0.05 + 1
        wait_for(lambda: handler.closed, what="on_close")
        assert isinstance(handler.closed[0], nr.ReadTimeoutError)


def test_read_timeout_cleared_in_time_keeps_the_connection():
    handler = Lines()
    with serving(handler, "tcp://127.0.0.1:0") as engine:
        with connect(engine.addresses[0]) as s:
            for _ in range(4):  # each line completes well within T; 4 lines take > T
                s.sendall(b"ab")
                time.sleep(0.1)
                s.sendall(b"c\n")
                assert s.recv(4) == b"ABC\n"
            time.sleep(T + LATE)  # nothing pending: nothing armed
            s.sendall(b"x\n")
            assert s.recv(2) == b"X\n"
    assert handler.closed == [None] or handler.closed == [] or \
        isinstance(handler.closed[0], nr.PeerClosedError)


def test_slowloris_against_a_plain_handler():
    """200 connections trickle partial lines; 5 normal clients keep being
    served meanwhile, and every trickler is closed within the read timeout."""
    handler = Lines(read_timeout=T)
    with serving(handler, "tcp://127.0.0.1:0", idle_timeout=1.0) as engine:
        addr = engine.addresses[0]
        tricklers = [connect(addr) for _ in range(200)]
        normal = [connect(addr) for _ in range(5)]
        start = time.monotonic()
        slowest = 0.0
        deadline = start + T + LATE + 0.5
        while time.monotonic() < deadline:
            for s in tricklers:
                try:
                    s.send(b"G")
                except OSError:
                    pass
            for s in normal:
                t0 = time.monotonic()
                s.sendall(b"hi\n")
                assert s.recv(3) == b"HI\n"
                slowest = max(slowest, time.monotonic() - t0)
            time.sleep(0.05)
        wait_for(lambda: engine.count_connections() == 5, timeout=2,
                 what="every trickler closed, the normal clients not")
        assert slowest < 0.5, f"a normal client waited {slowest:.3f} s"
        assert sum(isinstance(e, nr.ReadTimeoutError) for e in handler.closed) == 200
        for s in tricklers + normal:
            s.close()


def test_thousands_timing_out_at_once_do_not_stall_the_loop():
    handler = Echo()
    n = 2000
    with serving(handler, "tcp://127.0.0.1:0", idle_timeout=T, backlog=n) as engine:
        addr = engine.addresses[0]
        idle = [connect(addr) for _ in range(n)]
        with connect(addr) as probe:
            probe.sendall(b"x")
            assert probe.recv(1) == b"x"
            wait_for(lambda: engine.count_connections() == n + 1, what="all connected")
            worst = 0.0
            end = time.monotonic() + T + 1.0
            while time.monotonic() < end:  # the probe keeps talking across the storm
                t0 = time.monotonic()
                probe.sendall(b"y")
                assert probe.recv(1) == b"y"
                worst = max(worst, time.monotonic() - t0)
                time.sleep(0.01)
            # The storm is closed in batches: the loop answers between them.
            assert worst < 0.3, f"the probe waited {worst:.3f} s during the storm"
            wait_for(lambda: engine.count_connections() == 1, timeout=5, what="the storm closed")
        for s in idle:
            assert eof_after(s, 1) < 1
            s.close()
    assert sum(isinstance(e, nr.IdleTimeoutError) for e in handler.closed) == n


def test_client_connections_have_idle_timeouts_too():
    with serving(Echo(), "tcp://127.0.0.1:0") as engine:
        handler = Echo()
        with nr.Client(handler, idle_timeout=T) as client:
            conn = client.dial(engine.addresses[0], timeout=5)
            wait_for(lambda: conn.closed, timeout=T + LATE + 1, what="the dialed connection closed")
            assert isinstance(handler.closed[0], nr.IdleTimeoutError)


def test_timeout_arguments_are_checked():
    box = []

    class Check(nr.EventHandler):
        def on_open(self, conn):
            for call in (lambda: conn.set_idle_timeout(-1), lambda: conn.set_idle_timeout("5"),
                         lambda: conn.set_read_timeout(0), lambda: conn.set_read_timeout(float("nan")),
                         lambda: conn.set_idle_timeout(True)):
                try:
                    call()
                except ValueError as exc:
                    box.append(str(exc))
            return nr.Action.CLOSE

    with serving(Check(), "tcp://127.0.0.1:0") as engine:
        with connect(engine.addresses[0]) as s:
            eof_after(s)
    assert len(box) == 5 and all("seconds" in m for m in box), box


# ---------------------------------------------------------------- preambles


class Stuck(LineGreeting):
    """A greeting with a deadline: it arms a read timeout and never finishes
    unless the greeting comes."""

    def begin(self, conn, initial):
        conn.set_read_timeout(0.2)
        super().begin(conn, initial)


@pytest.fixture(params=KINDS, ids=["epoll-lt", "epoll-et", "selectors"])
def harness(request):
    poller, cls = request.param
    handler = Recorder()
    h = Harness(poller, cls, handler)
    h.handler = handler
    yield h
    h.close()


def test_a_preamble_that_does_not_finish_in_time_is_abandoned(harness):
    log = []
    conn, peer = harness.open([Stuck(log)])
    with peer:
        peer.sendall(b"HEL")  # and never the rest
        assert eof_after(peer) <= 0.2 + LATE
        wait_for(lambda: ("abandon",) in log, what="abandon()")
        assert harness.handler.events == []  # the handler never heard of it


def test_a_preamble_that_finishes_clears_its_timeout(harness):
    log = []
    conn, peer = harness.open([Stuck(log)])
    with peer:
        peer.sendall(b"HELLO x\n")
        wait_for(lambda: harness.handler.events == ["open"], what="on_open")
        time.sleep(0.2 + LATE)
        peer.sendall(b"data")
        assert peer.recv(2) == b"ok"  # not closed: the timeout went with the preamble
        assert ("abandon",) not in log


# ---------------------------------------------------------------- TLS on the same mechanism


def test_tls_handshake_timeouts_are_on_the_wheel_not_heap_timers(tls_pki):
    """Silent clients on a TLS port: each is closed at handshake_timeout, and no
    heap timer is armed per handshake (the read timeout is a wheel entry)."""
    from netreactor.tls import server_context

    ctx = server_context(tls_pki["server.pem"], tls_pki["server.key"])
    handler = Echo()
    with serving(handler, "tls://127.0.0.1:0", tls=ctx, handshake_timeout=T) as engine:
        loop = engine.loops[0]
        addr = engine.addresses[0]
        before = loop.timer_count()
        silent = [connect(addr.replace("tls://", "tcp://")) for _ in range(50)]
        wait_for(lambda: engine.count_connections() == 50, what="all accepted")
        start = time.monotonic()
        assert loop.timer_count() <= before + 1  # the wheel's own timer at most
        assert len(loop.wheel) >= 50  # one wheel entry per handshake
        for s in silent:
            assert eof_after(s) < T + LATE + 1
            s.close()
        assert T - TICK <= time.monotonic() - start
        wait_for(lambda: engine.count_connections() == 0, what="the silent clients closed")
    assert handler.closed == []  # the handler never met them


def test_start_tls_connection_keeps_its_idle_timeout(tls_pki):
    """A connection upgraded with start_tls (no handshake timeout) is idle-timed
    again once the handshake is done."""
    import ssl

    from netreactor.tls import client_context, server_context

    sctx = server_context(tls_pki["server.pem"], tls_pki["server.key"])

    class StartTLS(Echo):
        def on_traffic(self, conn):
            data = conn.read()
            if conn.tls is None and data == b"STARTTLS\r\n":
                conn.write(b"go\r\n")
                conn.start_tls(sctx, server_side=True, timeout=None)
            else:
                conn.write(data)

    handler = StartTLS()
    with serving(handler, "tcp://127.0.0.1:0", idle_timeout=T) as engine:
        raw = connect(engine.addresses[0])
        raw.sendall(b"STARTTLS\r\n")
        assert raw.recv(4) == b"go\r\n"
        time.sleep(T + LATE)  # the wheel looks at it mid-handshake (no idle timeout there)
        s = client_context(tls_pki["ca.pem"]).wrap_socket(raw, server_hostname="localhost")
        s.sendall(b"hi")
        assert s.recv(2) == b"hi"
        start = time.monotonic()
        s.settimeout(T + LATE + 1)
        try:
            assert s.recv(10) == b""
        except (ssl.SSLError, ConnectionResetError):
            pass
        assert T - TICK <= time.monotonic() - start < T + LATE
        s.close()
    assert isinstance(handler.closed[0], nr.IdleTimeoutError)
