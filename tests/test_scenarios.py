"""One scenario suite, run across the serving matrix:
{epoll level-triggered, epoll edge-triggered, selectors} x {1 loop, 4 loops}
x {load balancers} x {reuse_port off, on} x {TCP, Unix}.

Each scenario talks to a real engine over real sockets on loopback or a Unix
socket in a temporary directory.
"""

from __future__ import annotations

import os
import selectors
import socket
import struct
import threading
import time

import pytest

import netreactor as nr
from conftest import (CONFIGS, CORE_CONFIGS, TRANSPORTS, address_for, connect, recv_exact,
                      recv_until_eof, serving, wait_for)


class Echo(nr.EventHandler):
    def on_traffic(self, conn):
        conn.write(conn.read())


def drive_echo(address: str, payloads, timeout: float = 60.0) -> None:
    """Send every payload on its own connection, all at once, and check the echo byte for byte.

    One thread, non-blocking sockets: sending and receiving interleave, so a
    1 MiB payload never deadlocks on full socket buffers.
    """
    sel = selectors.DefaultSelector()
    states = []
    for payload in payloads:
        s = connect(address)
        s.setblocking(False)
        st = {"sock": s, "payload": memoryview(payload), "sent": 0, "got": bytearray()}
        states.append(st)
        sel.register(s, selectors.EVENT_READ | selectors.EVENT_WRITE, st)
    deadline = time.monotonic() + timeout
    pending = len(states)
    try:
        while pending:
            if time.monotonic() > deadline:
                done = [len(st["got"]) for st in states]
                pytest.fail(f"echo timed out; received {done} of {[len(p) for p in payloads]}")
            for key, mask in sel.select(1.0):
                st = key.data
                s = st["sock"]
                if mask & selectors.EVENT_WRITE:
                    if st["sent"] < len(st["payload"]):
                        st["sent"] += s.send(st["payload"][st["sent"]:st["sent"] + 262144])
                    if st["sent"] == len(st["payload"]):
                        sel.modify(s, selectors.EVENT_READ, st)
                if mask & selectors.EVENT_READ:
                    chunk = s.recv(1 << 20)
                    if not chunk:
                        pytest.fail("server closed a connection during echo")
                    st["got"] += chunk
                    if len(st["got"]) >= len(st["payload"]):
                        sel.unregister(s)
                        pending -= 1
        for st in states:
            assert bytes(st["got"]) == bytes(st["payload"])
    finally:
        for st in states:
            st["sock"].close()
        sel.close()


# ---------------------------------------------------------------- echo


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("opts", CONFIGS)
def test_echo_many_clients_many_sizes(opts, transport, unix_path):
    sizes = [1, 2, 63, 64, 1000, 4096, 65535, 65536, 65537, 300_000, 1 << 20]
    payloads = [os.urandom(n) for n in sizes] + [os.urandom(64) for _ in range(20)]
    with serving(Echo(), address_for(transport, unix_path), **opts) as engine:
        drive_echo(engine.addresses[0], payloads)


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("opts", CORE_CONFIGS)
def test_greeting_in_on_open_comes_first(opts, transport, unix_path):
    class Greeter(Echo):
        def on_open(self, conn):
            conn.write(b"hello ")
            conn.writev([b"from ", bytearray(b"netreactor\n")])

    with serving(Greeter(), address_for(transport, unix_path), **opts) as engine:
        with connect(engine.addresses[0]) as s:
            s.sendall(b"ping")
            assert recv_exact(s, 26) == b"hello from netreactor\nping"


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("opts", CORE_CONFIGS)
def test_count_connections(opts, transport, unix_path):
    with serving(Echo(), address_for(transport, unix_path), **opts) as engine:
        clients = [connect(engine.addresses[0]) for _ in range(10)]
        for c in clients:  # an echo proves the server adopted the connection
            c.sendall(b"x")
            assert recv_exact(c, 1) == b"x"
        assert engine.count_connections() == 10
        for c in clients[:4]:
            c.close()
        wait_for(lambda: engine.count_connections() == 6, what="6 connections")
        for c in clients[4:]:
            c.close()
        wait_for(lambda: engine.count_connections() == 0, what="0 connections")


# ---------------------------------------------------------------- any-thread API


class Recorder(nr.EventHandler):
    """Keeps the open connections and every on_close error."""

    def __init__(self):
        self.conns = []
        self.closed = []
        self.opened = threading.Event()
        self.closed_event = threading.Event()

    def on_open(self, conn):
        self.conns.append(conn)
        self.opened.set()

    def on_close(self, conn, err):
        self.closed.append((conn, err))
        self.closed_event.set()


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("opts", CORE_CONFIGS)
def test_async_write_from_threads_in_order(opts, transport, unix_path):
    handler = Recorder()
    results = []
    with serving(handler, address_for(transport, unix_path), **opts) as engine:
        with connect(engine.addresses[0]) as s:
            assert handler.opened.wait(5)
            conn = handler.conns[0]
            done = threading.Event()

            def worker(tid):
                for i in range(50):
                    msg = struct.pack("!HH", tid, i)
                    if i % 2:
                        conn.async_writev([msg[:2], msg[2:]], callback=lambda c, e: results.append(e))
                    else:
                        conn.async_write(bytearray(msg), callback=lambda c, e: results.append(e))
                done.set()

            threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            data = recv_exact(s, 4 * 50 * 4)
    per_thread = {}
    for off in range(0, len(data), 4):
        tid, i = struct.unpack("!HH", data[off:off + 4])
        per_thread.setdefault(tid, []).append(i)
    # Each thread's messages arrive whole and in the order it wrote them.
    assert per_thread == {t: list(range(50)) for t in range(4)}
    wait_for(lambda: len(results) == 200, what="200 async_write callbacks")
    assert results == [None] * 200


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("opts", CORE_CONFIGS[:3])
def test_async_write_to_closed_connection_reports_closed(opts, transport, unix_path):
    handler = Recorder()
    with serving(handler, address_for(transport, unix_path), **opts) as engine:
        s = connect(engine.addresses[0])
        assert handler.opened.wait(5)
        s.close()
        assert handler.closed_event.wait(5)
        conn = handler.conns[0]
        outcome = []
        got = threading.Event()
        conn.async_write(b"late", callback=lambda c, e: (outcome.append(e), got.set()))
        assert got.wait(5)
        assert isinstance(outcome[0], nr.ClosedError)
        woke = []
        got.clear()
        conn.wake(callback=lambda c, e: (woke.append(e), got.set()))
        assert got.wait(5)
        assert isinstance(woke[0], nr.ClosedError)
        # Writing on the loop to a closed connection returns 0 instead of raising.
        assert conn.write(b"x") == 0 and conn.closed


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("opts", CORE_CONFIGS)
def test_wake_runs_on_traffic_on_the_loop(opts, transport, unix_path):
    class Waker(Recorder):
        def __init__(self):
            super().__init__()
            self.threads = []

        def on_traffic(self, conn):
            self.threads.append(threading.get_ident())
            conn.write(b"woken:%d" % conn.inbound_buffered)
            conn.discard()

    handler = Waker()
    with serving(handler, address_for(transport, unix_path), **opts) as engine:
        with connect(engine.addresses[0]) as s:
            assert handler.opened.wait(5)
            outcome = []
            handler.conns[0].wake(callback=lambda c, e: outcome.append(e))
            assert recv_exact(s, 7) == b"woken:0"
            wait_for(lambda: outcome == [None], what="wake callback")
            assert handler.threads[0] != threading.get_ident()


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("opts", CORE_CONFIGS)
def test_close_from_another_thread_flushes_then_closes(opts, transport, unix_path):
    handler = Recorder()
    with serving(handler, address_for(transport, unix_path), **opts) as engine:
        with connect(engine.addresses[0]) as s:
            assert handler.opened.wait(5)
            conn = handler.conns[0]
            conn.async_write(b"bye")
            outcome = []
            conn.close(callback=lambda c, e: outcome.append(e))
            assert recv_until_eof(s) == b"bye"
            assert handler.closed_event.wait(5)
            assert handler.closed[0][1] is None  # a local close
            wait_for(lambda: outcome == [None], what="close callback")


# ---------------------------------------------------------------- peers that misbehave


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("opts", CORE_CONFIGS)
def test_peer_half_close_gets_its_reply(opts, transport, unix_path):
    handler = Recorder()
    handler.on_traffic = lambda conn: [conn.write(conn.read().upper())] and None
    with serving(handler, address_for(transport, unix_path), **opts) as engine:
        with connect(engine.addresses[0]) as s:
            s.sendall(b"last words")
            s.shutdown(socket.SHUT_WR)
            assert recv_until_eof(s) == b"LAST WORDS"
        assert handler.closed_event.wait(5)
        assert isinstance(handler.closed[0][1], nr.PeerClosedError)


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("opts", CORE_CONFIGS)
def test_peer_reset_costs_only_that_connection(opts, transport, unix_path):
    handler = Recorder()
    handler.on_traffic = lambda conn: [conn.write(conn.read())] and None
    with serving(handler, address_for(transport, unix_path), **opts) as engine:
        keep = connect(engine.addresses[0])
        victim = connect(engine.addresses[0])
        victim.sendall(b"x")
        assert recv_exact(victim, 1) == b"x"
        victim.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        victim.sendall(b"unread")  # left unread by us: the close is a reset
        victim.close()
        assert handler.closed_event.wait(5)
        err = handler.closed[0][1]
        assert isinstance(err, ConnectionError), err  # reset, broken pipe or EOF: all ConnectionError
        keep.sendall(b"still here")
        assert recv_exact(keep, 10) == b"still here"
        keep.close()


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("opts", CORE_CONFIGS)
def test_raising_handler_is_logged_and_only_its_connection_closes(opts, transport, unix_path, expected_errors):
    class Fragile(Recorder):
        def on_traffic(self, conn):
            data = conn.read()
            if data == b"boom":
                raise RuntimeError("handler bug")
            conn.write(data)

    handler = Fragile()
    with serving(handler, address_for(transport, unix_path), **opts) as engine:
        good = connect(engine.addresses[0])
        bad = connect(engine.addresses[0])
        bad.sendall(b"boom")
        assert recv_until_eof(bad) == b""
        assert handler.closed_event.wait(5)
        assert isinstance(handler.closed[0][1], RuntimeError)
        good.sendall(b"fine")
        assert recv_exact(good, 4) == b"fine"
        good.close()
        bad.close()
    assert any("on_traffic raised" in r.getMessage() and r.exc_info for r in expected_errors)


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("opts", CORE_CONFIGS)
def test_slow_reader_keeps_server_memory_bounded(opts, transport, unix_path):
    """A peer that sends requests but never reads replies: the server stops reading
    it at the high-water mark, so outbound stays near the bound instead of growing."""
    high, low = 64 * 1024, 16 * 1024
    stats = {"max_out": 0}

    class Amplifier(nr.EventHandler):
        def on_traffic(self, conn):
            n = len(conn.read())
            conn.write(b"z" * (n * 16))  # each request byte costs 16 reply bytes
            stats["max_out"] = max(stats["max_out"], conn.outbound_buffered)
            stats["conn"] = conn

    opts = dict(opts, write_high_water=high, write_low_water=low, write_buffer_cap=4 * 1024 * 1024,
                socket_send_buffer=64 * 1024, socket_recv_buffer=64 * 1024)
    with serving(Amplifier(), address_for(transport, unix_path), **opts) as engine:
        s = connect(engine.addresses[0])
        wait_for(lambda: engine.count_connections() == 1, what="the connection to be adopted")
        s.setblocking(False)
        sent = 0
        deadline = time.monotonic() + 3.0
        chunk = b"r" * 4096
        while time.monotonic() < deadline and sent < 8 * 1024 * 1024:
            try:
                sent += s.send(chunk)
            except BlockingIOError:
                break  # the server stopped reading us: back-pressure reached the client
        assert sent < 8 * 1024 * 1024, "server kept reading a peer that never reads"
        # Bounded: high water plus at most one read's worth of amplified reply.
        assert stats["max_out"] <= high + 16 * 64 * 1024
        assert engine.count_connections() == 1  # paused, not closed by write_buffer_cap
        # Reading everything now lets the server drain and resume.
        s.setblocking(True)
        s.settimeout(10)
        expected = sent * 16
        got = 0
        while got < expected:
            got += len(s.recv(1 << 20))
        assert got == expected
        s.close()


def test_write_buffer_cap_closes_the_connection():
    handler = Recorder()
    with serving(handler, "tcp://127.0.0.1:0", write_high_water=1024, write_low_water=512,
                 write_buffer_cap=256 * 1024, socket_send_buffer=16384) as engine:
        s = connect(engine.addresses[0])
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        assert handler.opened.wait(5)
        conn = handler.conns[0]
        accepted = []
        conn.async_write(b"a" * (1 << 20), callback=lambda c, e: accepted.append(e))
        assert handler.closed_event.wait(5)
        assert isinstance(handler.closed[0][1], nr.BufferOverflowError)
        assert "write_buffer_cap" in str(handler.closed[0][1])
        s.close()


def test_inbound_buffer_cap_closes_a_connection_that_never_consumes():
    class Hoarder(Recorder):
        def on_traffic(self, conn):
            pass  # never consumes

    handler = Hoarder()
    with serving(handler, "tcp://127.0.0.1:0", inbound_buffer_cap=200_000, read_buffer_cap=16384) as engine:
        s = connect(engine.addresses[0])
        try:
            s.sendall(os.urandom(400_000))
        except (ConnectionResetError, BrokenPipeError):
            pass
        assert handler.closed_event.wait(5)
        err = handler.closed[0][1]
        assert isinstance(err, nr.BufferOverflowError) and "inbound_buffer_cap" in str(err)
        s.close()


# ---------------------------------------------------------------- the read API


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("opts", CORE_CONFIGS)
def test_length_prefixed_frames_with_peek_next_discard(opts, transport, unix_path):
    """Frames split across reads and many frames per read, parsed with the Conn API."""

    class Frames(nr.EventHandler):
        def on_traffic(self, conn):
            while conn.inbound_buffered >= 4:
                (size,) = struct.unpack("!I", conn.peek(4))
                if conn.inbound_buffered < 4 + size:
                    break  # wait for the rest; what is buffered is kept
                assert conn.discard(4) == 4
                body = conn.next(size)
                conn.write(struct.pack("!I", size) + body[::-1])
            assert conn.next(1 << 30) is None

    frames = [os.urandom(n) for n in (0, 1, 5, 100, 70_000, 3, 200_000, 17)]
    stream = b"".join(struct.pack("!I", len(f)) + f for f in frames)
    expected = b"".join(struct.pack("!I", len(f)) + f[::-1] for f in frames)
    with serving(Frames(), address_for(transport, unix_path), **opts) as engine:
        with connect(engine.addresses[0]) as s:
            # Dribble the stream in uneven pieces so frames straddle reads.
            t = threading.Thread(target=lambda: [s.sendall(stream[i:i + 7777]) for i in range(0, len(stream), 7777)])
            t.start()
            got = recv_exact(s, len(expected))
            t.join()
            assert got == expected


def test_read_api_semantics():
    seen = {}

    class Probe(nr.EventHandler):
        def on_traffic(self, conn):
            if conn.inbound_buffered < 10:
                return
            seen["peek"] = conn.peek(3)
            seen["peek_all"] = conn.peek()
            seen["read2"] = conn.read(2)
            seen["next_too_many"] = conn.next(100)
            seen["buffered"] = conn.inbound_buffered
            seen["next3"] = conn.next(3)
            seen["discard"] = conn.discard(2)
            seen["read_rest"] = conn.read()
            seen["read_empty"] = conn.read()
            seen["discard_empty"] = conn.discard()
            conn.write(b"done")

    with serving(Probe(), "tcp://127.0.0.1:0") as engine:
        with connect(engine.addresses[0]) as s:
            s.sendall(b"0123456789")
            assert recv_exact(s, 4) == b"done"
    assert seen == {
        "peek": b"012", "peek_all": b"0123456789", "read2": b"01", "next_too_many": None,
        "buffered": 8, "next3": b"234", "discard": 2, "read_rest": b"789", "read_empty": b"",
        "discard_empty": 0,
    }


def test_data_returned_stays_valid_after_the_callback():
    kept = []

    class Keeper(nr.EventHandler):
        def on_traffic(self, conn):
            kept.append(conn.peek(2))
            kept.append(conn.read())
            conn.write(b"k")

    with serving(Keeper(), "tcp://127.0.0.1:0") as engine:
        with connect(engine.addresses[0]) as s:
            for msg in (b"first", b"second", b"third"):
                s.sendall(msg)
                assert recv_exact(s, 1) == b"k"
    assert kept == [b"fi", b"first", b"se", b"second", b"th", b"third"]
    assert all(type(k) is bytes for k in kept)
