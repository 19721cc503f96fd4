"""The byte counters (bytes_in/bytes_out of engine.stats()): application bytes,
exact, on every kind of connection. Plain TCP counts nothing per message: the
kernel's TCP_INFO counts (netreactor.stream.traffic) are read while a connection
is open and banked when it closes; Unix sockets, and TCP where the kernel has no
counts, count in their transport; TLS counts plaintext; a PROXY header is not
application bytes. Counters never go back, whatever closes while stats() runs."""

from __future__ import annotations

import os
import socket
import ssl
import threading

import pytest
from conftest import connect, recv_exact, serving, wait_for

import netreactor as nr
from netreactor.protocols.proxy import encode_v1, encode_v2
from netreactor.stream import traffic
from netreactor.stream.transport import PLAIN_TCP, CountingPlain

kernel = pytest.mark.skipif(not traffic.KERNEL_COUNTS, reason="TCP_INFO has no byte counts here")


class Echo(nr.EventHandler):
    def __init__(self):
        self.conns = []

    def on_open(self, conn):
        self.conns.append(conn)

    def on_traffic(self, conn):
        data = conn.read()
        if data == b"close":
            return nr.Action.CLOSE
        conn.write(data)
        return None


def _counts(engine):
    snap = engine.stats()
    return snap["bytes_in"], snap["bytes_out"]


def _pair():
    with socket.socket() as lst:
        lst.bind(("127.0.0.1", 0))
        lst.listen()
        c = socket.create_connection(lst.getsockname(), timeout=10)
        s, _ = lst.accept()
    s.settimeout(10)
    return c, s


def _settled(sock, want_in, want_out, eof=False):
    """Poll tcp_traffic until it says (want_in, want_out); the peer's segments
    and ACKs arrive in the kernel asynchronously."""
    wait_for(lambda: traffic.tcp_traffic(sock.fileno(), eof) == (want_in, want_out),
             what=f"TCP_INFO to say {(want_in, want_out)}, it says {traffic.tcp_traffic(sock.fileno(), eof)}")


# ---------------------------------------------------------------- the reader itself

@kernel
def test_tcp_info_counts_and_the_fin_corrections():
    c, s = _pair()
    with c, s:
        c.sendall(b"x" * 1000)
        assert recv_exact(s, 1000)
        s.sendall(b"y" * 7)
        assert recv_exact(c, 7)
        _settled(s, 1000, 7)
        c.shutdown(socket.SHUT_WR)     # the peer's FIN: CLOSE_WAIT, not a byte of data
        _settled(s, 1000, 7)
        assert s.recv(10) == b""
        s.shutdown(socket.SHUT_WR)     # ours: LAST_ACK, then CLOSE once acked
        wait_for(lambda: s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0] == 7, what="CLOSE")
        # CLOSE no longer tells the FIN: the reader is told it was read...
        assert traffic.tcp_traffic(s.fileno(), True) == (1000, 7)
        # ... and without being told (another thread) it under-counts, never over
        assert traffic.tcp_traffic(s.fileno(), None) == (1000, 7)
        assert traffic.tcp_traffic(s.fileno(), False) == (1001, 7)


@kernel
def test_a_reset_peer_sends_no_fin():
    c, s = _pair()
    with s:
        c.sendall(b"abc")
        s.sendall(b"z" * 10)       # unread by c: its close resets
        recv_exact(s, 3)
        wait_for(lambda: traffic.tcp_traffic(s.fileno()) == (3, 10), what="the counts")
        c.close()
        with pytest.raises(ConnectionResetError):
            while s.recv(10):
                pass
        assert traffic.tcp_traffic(s.fileno(), False) == (3, 10)


@kernel
def test_read_so_far_leaves_out_what_waits_unread():
    """What start_tls banks: bytes the application read, not those waiting in
    the kernel (a ClientHello that came at once)."""
    c, s = _pair()
    with c, s:
        c.sendall(b"x" * 100)
        assert recv_exact(s, 40)
        s.sendall(b"y" * 3)
        wait_for(lambda: traffic.tcp_traffic(s.fileno()) == (100, 3), what="the counts")
        assert traffic.tcp_read_so_far(s.fileno()) == (40, 3)


def test_not_a_tcp_socket_is_none():
    a, b = socket.socketpair()
    with a, b:
        assert traffic.tcp_traffic(a.fileno()) is None


# ---------------------------------------------------------------- engines

@kernel
def test_plain_tcp_counts_nothing_per_message_and_is_exact_open_and_closed():
    handler = Echo()
    with serving(handler, "tcp://127.0.0.1:0") as engine:
        with connect(engine.addresses[0]) as c:
            for size in (1, 100, 70000):
                payload = os.urandom(size)
                c.sendall(payload)
                assert recv_exact(c, size) == payload
            total = 70101
            wait_for(lambda: _counts(engine) == (total, total), what="the open connection's counts")
            conn = handler.conns[0]
            ctx = conn.counters
            # the counters themselves hold closed connections' bytes only
            assert (ctx.bytes_in, ctx.bytes_out) == (0, 0)
            assert conn.transport is PLAIN_TCP
        wait_for(lambda: engine.stats()["open"] == 0, what="the close")
        assert _counts(engine) == (total, total)
        assert (ctx.bytes_in, ctx.bytes_out) == (total, total)
        # the server closing first (Action.CLOSE: FIN out, then the peer's)
        with connect(engine.addresses[0]) as c:
            c.sendall(b"close")
            assert c.recv(10) == b""
        wait_for(lambda: engine.stats()["open"] == 0, what="the close")
        assert _counts(engine) == (total + 5, total)


@kernel
def test_counters_never_go_back_while_connections_close():
    stop = threading.Event()
    seen = []

    failures = []

    def poll(engine):
        try:
            while not stop.is_set():
                seen.append(_counts(engine))
        except BaseException as exc:  # stats() must not fail while connections close
            failures.append(exc)

    with serving(Echo(), "tcp://127.0.0.1:0", loops=2, lb="round-robin") as engine:
        poller = threading.Thread(target=poll, args=(engine,))
        poller.start()
        try:
            for i in range(60):
                with connect(engine.addresses[0]) as c:
                    c.sendall(b"m" * (i + 1))
                    assert recv_exact(c, i + 1)
        finally:
            wait_for(lambda: engine.stats()["open"] == 0, what="the closes")
            stop.set()
            poller.join(10)
        final = _counts(engine)
    want = sum(range(1, 61))
    assert not failures
    assert final == (want, want)
    assert len(seen) > 10
    for key in (0, 1):
        values = [s[key] for s in seen]
        assert values == sorted(values) and values[-1] <= want


def test_unix_connections_count_in_their_transport(tmp_path):
    addr = f"unix://{tmp_path / 'echo.sock'}"
    handler = Echo()
    with serving(handler, addr) as engine:
        with connect(engine.addresses[0]) as c:
            c.sendall(b"hello unix")
            assert recv_exact(c, 10) == b"hello unix"
            wait_for(lambda: _counts(engine) == (10, 10), what="the counts")
            assert isinstance(handler.conns[0].transport, CountingPlain)
        wait_for(lambda: engine.stats()["open"] == 0, what="the close")
        assert _counts(engine) == (10, 10)


def test_without_kernel_counts_tcp_counts_in_python(monkeypatch):
    monkeypatch.setattr(traffic, "KERNEL_COUNTS", False)
    handler = Echo()
    with serving(handler, "tcp://127.0.0.1:0") as engine:
        with connect(engine.addresses[0]) as c:
            c.sendall(b"x" * 5000)
            assert recv_exact(c, 5000)
            wait_for(lambda: _counts(engine) == (5000, 5000), what="the counts")
            assert isinstance(handler.conns[0].transport, CountingPlain)
        wait_for(lambda: engine.stats()["open"] == 0, what="the close")
        assert _counts(engine) == (5000, 5000)


@pytest.mark.parametrize("kind", ["tcp", "unix"])
@pytest.mark.parametrize("version", ["v1", "v2"])
def test_a_proxy_header_is_not_application_bytes(tmp_path, kind, version):
    addr = "tcp://127.0.0.1:0" if kind == "tcp" else f"unix://{tmp_path / 'p.sock'}"
    header = (encode_v1 if version == "v1" else encode_v2)(("203.0.113.7", 40123), ("198.51.100.9", 443))
    with serving(Echo(), addr, proxy_protocol=version) as engine:
        with connect(engine.addresses[0]) as c:
            c.sendall(header + b"payload")  # one segment: the bytes past the header come with it
            assert recv_exact(c, 7) == b"payload"
            wait_for(lambda: _counts(engine) == (7, 7), what="the counts")
        wait_for(lambda: engine.stats()["open"] == 0, what="the close")
        assert _counts(engine) == (7, 7)
        with connect(engine.addresses[0]) as c:  # a bad header: refused, nothing counted
            c.sendall(b"PROXY garbage\r\n")
            try:
                while c.recv(100):
                    pass
            except ConnectionResetError:
                pass
        wait_for(lambda: engine.stats()["open"] == 0, what="the refusal")
        assert _counts(engine) == (7, 7)


def test_start_tls_counts_the_plain_part_then_plaintext(tls_pki):
    from netreactor.tls import server_context

    sctx = server_context(tls_pki["server.pem"], tls_pki["server.key"])

    class StartTLS(nr.EventHandler):
        def on_traffic(self, conn):
            data = conn.read()
            if conn.tls is None and data == b"STARTTLS":
                conn.write(b"go")
                conn.start_tls(sctx, server_side=True)
            else:
                conn.write(data)

    client = ssl.create_default_context(cafile=tls_pki["ca.pem"])
    with serving(StartTLS(), "tcp://127.0.0.1:0") as engine:
        with connect(engine.addresses[0]) as raw:
            raw.sendall(b"STARTTLS")
            assert recv_exact(raw, 2) == b"go"
            with client.wrap_socket(raw, server_hostname="localhost") as c:
                c.sendall(b"secret")
                assert recv_exact(c, 6) == b"secret"
                wait_for(lambda: _counts(engine) == (14, 8), what="the counts")
                assert _counts(engine) == (14, 8)
        wait_for(lambda: engine.stats()["open"] == 0, what="the close")
        assert _counts(engine) == (14, 8)
