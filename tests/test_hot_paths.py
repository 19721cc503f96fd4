"""Hot-path copies tied to their originals (issue 11): each inlined copy and the
plain composition it stands for run the same inputs, and must agree.

* ``Conn.handle_io`` inlines a read, ``on_traffic`` and what follows it
  (``_traffic``/``_after_callback``), and the common case of ``_flush``;
  ``ReferenceConn`` below composes the originals instead.
* ``DatagramEndpoint._receive_datagrams`` inlines ``DatagramEndpoint.dispatch``;
  a session-less connected endpoint runs ``dispatch`` itself.
"""

from __future__ import annotations

import logging
import socket
import threading
import time

import pytest

import netreactor as nr
from netreactor.options import Options
from netreactor.reactor import READABLE, WRITABLE, EventLoop, new_poller
from netreactor.stream import PLAIN_UNIX, Conn, StreamContext

_OUT_EV = WRITABLE | 0x008 | 0x010


class ReferenceConn(Conn):
    """``handle_io`` as the plain composition of the methods it inlines."""

    __slots__ = ()

    def handle_io(self, ev: int) -> bool:
        if self._out and ev & _OUT_EV:
            self._flush()
            if ev == WRITABLE:
                return False
        if not self._reading:
            self._io_halted(ev)
            return False
        if not self._recv_more():
            return False
        self._traffic()
        return True


class Scripted(nr.EventHandler):
    """Consumes whole lines; a line says what to do: ``echo X``, ``big N`` (a
    reply of N bytes), ``keep`` (leave the line unconsumed until more comes),
    ``close``, ``boom`` (raise)."""

    def __init__(self):
        self.closed = []

    def on_traffic(self, conn):
        while True:
            data = conn.peek()
            end = data.find(b"\n")
            if end < 0:
                return None
            line = data[:end]
            if line == b"keep" and b"\n" not in data[end + 1:]:
                return None  # wait for the next line, keeping this one
            conn.discard(end + 1)
            if line.startswith(b"echo "):
                conn.write(line[5:] + b"\n")
            elif line.startswith(b"big "):
                conn.write(b"B" * int(line[4:]))
            elif line == b"close":
                conn.write(b"bye\n")
                return nr.Action.CLOSE
            elif line == b"boom":
                raise RuntimeError("scripted failure")

    def on_close(self, conn, err):
        self.closed.append(type(err).__name__ if err else None)


def run(conn_class, script, sndbuf=None):
    """Feed ``script`` (chunks) to a connection of ``conn_class``; return what the
    peer received, how the connection closed, and the errors logged."""
    handler = Scripted()
    logger = logging.getLogger(f"netreactor.test.{conn_class.__name__}")
    records = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage().split(";")[0])

    logger.addHandler(Keep())
    logger.propagate = False
    loop = EventLoop(0, new_poller("epoll"), logger)
    ctx = StreamContext(loop, handler, Options(), lambda: None)
    a, b = socket.socketpair()
    if sndbuf:
        a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
    a.setblocking(False)
    thread = threading.Thread(target=loop.run, daemon=True)
    thread.start()
    started = threading.Event()

    def start():
        conn_class(ctx, a.detach(), PLAIN_UNIX).start()
        started.set()

    loop.call_soon_threadsafe(start)
    assert started.wait(5)
    received = bytearray()
    b.settimeout(0.5)
    for chunk in script:
        b.sendall(chunk)
        time.sleep(0.02)  # one read per chunk, as the script means it
        try:
            while True:
                got = b.recv(1 << 20)
                if not got:
                    break
                received += got
        except (socket.timeout, ConnectionResetError):
            pass
    b.close()
    deadline = time.monotonic() + 5
    while not handler.closed and time.monotonic() < deadline:
        time.sleep(0.01)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.finish()
    loop.close()
    return bytes(received), handler.closed, records


SCRIPTS = {
    "echo": [b"echo a\n", b"echo b\necho c\n", b"ec", b"ho d\n"],
    "leftover": [b"keep\n", b"echo after\n", b"echo x\n"],
    "close": [b"echo a\nclose\necho never\n"],
    "raise": [b"echo a\n", b"boom\necho never\n"],
    "partial-writes": [b"big 300000\n", b"echo after\n"],
}


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_handle_io_agrees_with_the_composition_it_inlines(name):
    sndbuf = 4096 if name == "partial-writes" else None
    fast = run(Conn, SCRIPTS[name], sndbuf)
    slow = run(ReferenceConn, SCRIPTS[name], sndbuf)
    assert fast == slow
    assert fast[0]  # the scenario did something


# ---------------------------------------------------------------- UDP


class DatagramScript(nr.EventHandler):
    """For each datagram: reply with what was read; ``part`` reads 2 bytes only
    (the rest is dropped), ``close`` returns CLOSE, ``boom`` raises."""

    def on_traffic(self, conn):
        data = conn.peek()
        if data == b"boom":
            raise RuntimeError("scripted failure")
        got = conn.read(2) if data.startswith(b"part") else conn.read()
        conn.write(b"got:" + got + b":left:%d" % conn.inbound_buffered)
        if data == b"close":
            return nr.Action.CLOSE
        return None


def test_the_flat_datagram_loop_agrees_with_dispatch():
    """The same datagrams through the flat loop (handle_io of a per-datagram
    endpoint) and through dispatch() with per-datagram connections."""
    from netreactor.server.datagram import DatagramConn, DatagramEndpoint

    loop = EventLoop(0, new_poller("epoll"), logging.getLogger("netreactor.test.udp"))
    logging.getLogger("netreactor.test.udp").disabled = True
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("127.0.0.1", 0))
    server.setblocking(False)
    shutdowns = []
    endpoint = DatagramEndpoint(loop, server, DatagramScript(), Options(), lambda: shutdowns.append(1))
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.bind(("127.0.0.1", 0))
    client.settimeout(0.2)
    datagrams = [b"hello", b"partial", b"boom", b"again", b"close", b"after", b""]

    def replies():
        out = []
        while True:
            try:
                out.append(client.recv(100))
            except socket.timeout:
                return out

    try:
        for d in datagrams:
            client.sendto(d, server.getsockname())
        time.sleep(0.05)
        endpoint.handle_io(READABLE)  # the flat loop reads them all
        flat = replies()
        for d in datagrams:
            endpoint.dispatch(DatagramConn(endpoint, client.getsockname()), d)
        dispatched = replies()
    finally:
        logging.getLogger("netreactor.test.udp").disabled = False
        client.close()
        server.close()
        loop.close()
    assert flat == dispatched
    assert flat[:2] == [b"got:hello:left:0", b"got:pa:left:5"]  # what is left unread is dropped
    assert b"got:again:left:0" in flat  # the handler raised for "boom": that datagram only
