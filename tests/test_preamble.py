"""The preamble mechanism of Conn (work done before on_open: a PROXY header, a
TLS handshake), tested with a toy preamble on a real loop over socketpairs,
level- and edge-triggered and on selectors."""

from __future__ import annotations

import logging
import socket
import threading

import pytest

import netreactor as nr
from netreactor.options import Options
from netreactor.reactor import EventLoop, new_poller
from netreactor.stream import PLAIN_UNIX, Conn, EdgeConn, StreamContext
from conftest import wait_for

KINDS = [("epoll", Conn), ("epoll", EdgeConn), ("selectors", Conn)]


class LineGreeting:
    """Reads ``HELLO <name>\\n`` and hands the rest on; garbage fails it."""

    def __init__(self, log):
        self.log = log
        self.buf = b""

    def begin(self, conn, initial):
        self.log.append(("begin", initial))
        self._more(conn, initial)

    def handle_io(self, conn, events):
        while True:
            try:
                data = conn.transport.read(conn.fd, 7)  # small reads: the header spans several
            except BlockingIOError:
                return
            if not data:
                conn.preamble_failed(ConnectionError("EOF in the greeting"))
                return
            if self._more(conn, data):
                return

    def _more(self, conn, data):
        self.buf += data
        if not b"HELLO ".startswith(self.buf[:6]):
            conn.preamble_failed(ValueError("not a greeting"))
            return True
        if b"\n" in self.buf:
            line, rest = self.buf.split(b"\n", 1)
            self.log.append(("done", line))
            conn.preamble_done(rest)
            return True
        return False

    def abandon(self, conn):
        self.log.append(("abandon",))


class Harness:
    def __init__(self, poller, conn_class, handler):
        self.loop = EventLoop(0, new_poller(poller), logging.getLogger("netreactor"))
        self.ctx = StreamContext(self.loop, handler, Options(), lambda: None)
        self.conn_class = conn_class
        self.thread = threading.Thread(target=self.loop.run, daemon=True)
        self.thread.start()

    def open(self, preambles):
        a, b = socket.socketpair()
        a.setblocking(False)
        box = []
        done = threading.Event()

        def start():
            conn = self.conn_class(self.ctx, a.detach(), PLAIN_UNIX)
            box.append(conn)
            conn.start(preambles)
            done.set()

        self.loop.call_soon_threadsafe(start)
        assert done.wait(5)
        return box[0], b

    def close(self):
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.finish()
        self.loop.close()


class Recorder(nr.EventHandler):
    def __init__(self):
        self.events = []
        self.data = bytearray()

    def on_open(self, conn):
        self.events.append("open")

    def on_traffic(self, conn):
        self.data += conn.read()
        conn.write(b"ok")

    def on_close(self, conn, err):
        self.events.append(("close", type(err).__name__ if err else None))


@pytest.fixture(params=KINDS, ids=["epoll-lt", "epoll-et", "selectors"])
def harness(request):
    poller, cls = request.param
    handler = Recorder()
    h = Harness(poller, cls, handler)
    h.handler = handler
    yield h
    h.close()


def test_two_preambles_then_on_open_with_the_rest(harness):
    log = []
    conn, peer = harness.open([LineGreeting(log), LineGreeting(log)])
    with peer:
        assert harness.handler.events == []  # nothing before the preambles finish
        peer.sendall(b"HELLO first\nHEL")
        peer.sendall(b"LO second\nfirst bytes")
        wait_for(lambda: bytes(harness.handler.data) == b"first bytes", what="the first input")
        assert harness.handler.events == ["open"]
        # What the first preamble read past its line depends on how reads split.
        assert [entry[0] for entry in log] == ["begin", "done", "begin", "done"]
        assert log[1][1] == b"HELLO first" and log[3][1] == b"HELLO second"
        assert b"HELLO second".startswith(log[2][1])
        assert peer.recv(2) == b"ok"
        peer.sendall(b" and more")
        wait_for(lambda: bytes(harness.handler.data) == b"first bytes and more", what="later input")


def test_a_failed_preamble_closes_without_on_open_or_on_close(harness):
    log = []
    conn, peer = harness.open([LineGreeting(log)])
    with peer:
        peer.sendall(b"GET / HTTP/1.1\r\n")
        try:  # closed at once: garbage does not earn a lingering close
            assert peer.recv(10) == b""
        except ConnectionResetError:
            pass
        wait_for(lambda: harness.loop.conn_count == 0, what="the connection to be gone")
    assert harness.handler.events == []
    assert log == [("begin", b"")]


def test_a_peer_that_leaves_during_the_preamble_costs_only_itself(harness):
    log = []
    conn, peer = harness.open([LineGreeting(log), LineGreeting(log)])
    peer.sendall(b"HELLO a\n")
    wait_for(lambda: len(log) == 3, what="the second preamble to begin")
    peer.close()
    wait_for(lambda: harness.loop.conn_count == 0, what="the connection to be gone")
    assert harness.handler.events == []


def test_closing_during_the_preamble_abandons_it(harness):
    log = []
    conn, peer = harness.open([LineGreeting(log)])
    with peer:
        conn.close()  # from this thread: queued to the loop
        try:
            assert peer.recv(10) == b""
        except ConnectionResetError:
            pass
        wait_for(lambda: ("abandon",) in log, what="abandon")
    assert harness.handler.events == []
