"""Client: the client x server matrix (TCP, UDP, Unix), dial and enroll,
async_write from other threads, dial errors, dial from callbacks, stopping a
client with open connections, and a client sharing an engine's loops.

Dial errors are provoked on loopback only: a bound port that does not listen
(refused), a listener whose backlog is full (timeout), and a ``.invalid`` name
answered by a stand-in resolver (no query leaves the machine).
"""

from __future__ import annotations

import errno
import os
import queue
import select
import socket
import struct
import threading

import pytest

import netreactor as nr
from netreactor.reactor.pollers import epoll_available
from conftest import connect, recv_exact, serving, wait_for


class Echo(nr.EventHandler):
    def on_traffic(self, conn):
        conn.write(conn.read())


class Collector(nr.EventHandler):
    """Client side: keeps what each connection receives, and the callbacks seen."""

    def __init__(self):
        self.data = {}
        self.datagrams = queue.Queue()
        self.opened = []
        self.closed = []
        self.threads = {}
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)

    def on_open(self, conn):
        with self.lock:
            self.opened.append(conn)
            self.threads[conn] = threading.get_ident()
            self.data[conn] = bytearray()

    def on_traffic(self, conn):
        data = conn.read()
        if isinstance(conn, nr.Conn):
            with self.changed:
                self.data[conn] += data
                self.changed.notify_all()
        else:
            self.datagrams.put(data)

    def on_close(self, conn, err):
        with self.lock:
            self.closed.append((conn, err))

    def wait_bytes(self, conn, n, timeout=10.0) -> bytes:
        with self.changed:
            if not self.changed.wait_for(lambda: len(self.data[conn]) >= n, timeout):
                pytest.fail(f"received {len(self.data[conn])} of {n} bytes")
            out = bytes(self.data[conn][:n])
            del self.data[conn][:n]
            return out


def _client_configs():
    out = [pytest.param(dict(loops=1, poller="selectors"), id="selectors-1loop")]
    if epoll_available():
        out = [pytest.param(dict(loops=1), id="epoll-1loop"),
               pytest.param(dict(loops=2, edge_triggered=True), id="epoll-et-2loops")] + out
    return out


def _server_address(transport, unix_path):
    return {"tcp": "tcp://127.0.0.1:0", "udp": "udp://127.0.0.1:0", "unix": f"unix://{unix_path}"}[transport]


# ---------------------------------------------------------------- the matrix


@pytest.mark.parametrize("transport", ["tcp", "udp", "unix"])
@pytest.mark.parametrize("client_opts", _client_configs())
def test_client_server_matrix(transport, client_opts, unix_path):
    handler = Collector()
    with serving(Echo(), _server_address(transport, unix_path), loops=2) as engine:
        with nr.Client(handler, **client_opts) as client:
            conns = [client.dial(engine.addresses[0], timeout=5) for _ in range(3)]
            # dial returns after on_open has run.
            assert handler.opened == conns
            for conn in conns:
                if transport == "udp":
                    for size in (0, 1, 1500, 65507):
                        payload = os.urandom(size)
                        conn.async_write(payload)
                        assert handler.datagrams.get(timeout=5) == payload
                else:
                    # 1 MiB is far past write_high_water: the dialed connection keeps
                    # reading while it writes, so the echo server never stalls it.
                    for size in (1, 65_537, 200_000, 1 << 20):
                        payload = os.urandom(size)
                        conn.async_write(payload)
                        assert handler.wait_bytes(conn, size) == payload
            assert conns[0].local_addr is not None and conns[0].remote_addr is not None
    assert sorted(map(id, (c for c, _ in handler.closed))) == sorted(map(id, conns))


def test_client_callbacks_write_on_the_loop():
    """The handler API is the server's: writes from on_open and on_traffic."""
    class Chatty(Collector):
        def on_open(self, conn):
            super().on_open(conn)
            conn.write(b"hello ")

        def on_traffic(self, conn):
            data = conn.peek()
            super().on_traffic(conn)
            if data == b"hello ":
                conn.write(b"again")

    handler = Chatty()
    with serving(Echo(), "tcp://127.0.0.1:0") as engine, nr.Client(handler) as client:
        conn = client.dial(engine.addresses[0], timeout=5)
        assert handler.wait_bytes(conn, 11) == b"hello again"


# ---------------------------------------------------------------- enroll


def test_enroll_unix_socketpair():
    handler = Collector()
    a, b = socket.socketpair()
    with b, nr.Client(handler) as client:
        conn = client.enroll(a)
        assert handler.opened == [conn]
        b.sendall(b"from the peer")
        assert handler.wait_bytes(conn, 13) == b"from the peer"
        conn.async_write(b"to the peer")
        b.settimeout(5)
        assert recv_exact(b, 11) == b"to the peer"
        b.close()
        wait_for(lambda: handler.closed, what="on_close after the peer closed")
        assert isinstance(handler.closed[0][1], nr.PeerClosedError)


@pytest.mark.parametrize("transport", ["tcp", "udp"])
def test_enroll_connected_socket(transport):
    handler = Collector()
    kind = socket.SOCK_STREAM if transport == "tcp" else socket.SOCK_DGRAM
    with serving(Echo(), f"{transport}://127.0.0.1:0") as engine, nr.Client(handler) as client:
        host, port = engine.addresses[0].split("://")[1].rsplit(":", 1)
        sock = socket.socket(socket.AF_INET, kind)
        sock.connect((host, int(port)))
        conn = client.enroll(sock)
        conn.async_write(b"enrolled")
        if transport == "udp":
            assert handler.datagrams.get(timeout=5) == b"enrolled"
        else:
            assert handler.wait_bytes(conn, 8) == b"enrolled"


# ---------------------------------------------------------------- any-thread writes


@pytest.mark.parametrize("transport", ["tcp", "unix"])
def test_async_write_from_many_threads(transport, unix_path):
    handler = Collector()
    callbacks = []
    with serving(Echo(), _server_address(transport, unix_path)) as engine:
        with nr.Client(handler, loops=2) as client:
            conn = client.dial(engine.addresses[0], timeout=5)

            def writer(tid):
                for seq in range(200):
                    conn.async_write(struct.pack("!HH", tid, seq),
                                     callback=lambda c, e: callbacks.append(e))

            threads = [threading.Thread(target=writer, args=(t,)) for t in range(6)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            data = handler.wait_bytes(conn, 6 * 200 * 4)
            wait_for(lambda: len(callbacks) == 1200, what="every async_write callback")
    per_thread = {}
    for off in range(0, len(data), 4):
        tid, seq = struct.unpack_from("!HH", data, off)
        per_thread.setdefault(tid, []).append(seq)
    assert per_thread == {t: list(range(200)) for t in range(6)}
    assert callbacks == [None] * 1200


# ---------------------------------------------------------------- dial errors


@pytest.fixture
def refusing_port():
    """A loopback TCP port that is bound but does not listen: connects are refused."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    try:
        yield s.getsockname()[1]
    finally:
        s.close()


@pytest.fixture
def full_backlog():
    """A loopback listener that never accepts, with its backlog full: a new
    connect gets no answer (the kernel drops its SYN) until it times out."""
    lst = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lst.bind(("127.0.0.1", 0))
    lst.listen(0)
    addr = lst.getsockname()
    fillers = []
    try:
        for _ in range(64):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            fillers.append(s)
            err = s.connect_ex(addr)
            if err == 0:
                continue
            assert err == errno.EINPROGRESS, os.strerror(err)
            # Completed handshakes queue up until the backlog is full; the first
            # connect that stays pending proves it is.
            _, writable, _ = select.select([], [s], [], 0.5)
            if not writable:
                break
        else:
            pytest.skip("could not fill a listen backlog on loopback")
        yield f"tcp://127.0.0.1:{addr[1]}"
    finally:
        for s in fillers:
            s.close()
        lst.close()


def test_dial_refused_names_the_address(refusing_port):
    address = f"tcp://127.0.0.1:{refusing_port}"
    with nr.Client(Collector()) as client:
        with pytest.raises(ConnectionRefusedError) as info:
            client.dial(address, timeout=5)
    assert address in str(info.value)


def test_dial_unix_errors_name_the_path(unix_path):
    with nr.Client(Collector()) as client:
        with pytest.raises(FileNotFoundError) as info:
            client.dial(f"unix://{unix_path}", timeout=5)
        assert unix_path in str(info.value)
        # A socket file nobody listens on: refused.
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.bind(unix_path)
            with pytest.raises(ConnectionRefusedError) as info:
                client.dial(f"unix://{unix_path}", timeout=5)
        assert unix_path in str(info.value)


def test_dial_timeout(full_backlog):
    with nr.Client(Collector()) as client:
        with pytest.raises(TimeoutError) as info:
            client.dial(full_backlog, timeout=0.3)
    assert full_backlog in str(info.value)


def test_dial_unknown_host_raises_gaierror(fake_resolver):
    with nr.Client(Collector()) as client:
        with pytest.raises(socket.gaierror) as info:
            client.dial("tcp://no-such-host.invalid:80", timeout=5)
    assert "no-such-host.invalid" in str(info.value)


def test_dial_bad_address_and_stopped_client():
    client = nr.Client(Collector())
    with pytest.raises(nr.EngineStoppedError):
        client.dial("tcp://127.0.0.1:9", timeout=1)  # not started
    with client:
        with pytest.raises(ValueError):
            client.dial("bogus://x", timeout=1)
        with pytest.raises(ValueError):
            client.dial("tcp://127.0.0.1:9", timeout=-1)
    with pytest.raises(nr.EngineStoppedError):
        client.dial("tcp://127.0.0.1:9", timeout=1)


# ---------------------------------------------------------------- dialing from callbacks


def test_dial_on_a_loop_thread_raises():
    errors = []

    class Redialer(Collector):
        def on_open(self, conn):
            super().on_open(conn)
            try:
                self.client.dial(self.address, timeout=1)
            except Exception as exc:
                errors.append(exc)

    handler = Redialer()
    with serving(Echo(), "tcp://127.0.0.1:0") as engine, nr.Client(handler) as client:
        handler.client, handler.address = client, engine.addresses[0]
        client.dial(engine.addresses[0], timeout=5)
    assert len(errors) == 1 and isinstance(errors[0], RuntimeError)
    assert "dial_async" in str(errors[0])


def test_dial_async_in_a_callback_does_not_block_the_loop(full_backlog, fake_resolver):
    """A callback dials a host whose name resolves slowly and a listener that
    never answers; meanwhile the same loop keeps serving its connection."""
    outcomes = queue.Queue()

    class Dialer(Collector):
        def on_traffic(self, conn):
            data = conn.peek()
            super().on_traffic(conn)
            if data == b"go":
                port = self.echo_address.rsplit(":", 1)[1]
                self.client.dial_async(f"tcp://slow.test:{port}",
                                       lambda c, e: outcomes.put(("resolved", c, e)), timeout=5)
                self.client.dial_async(full_backlog, lambda c, e: outcomes.put(("blackhole", c, e)),
                                       timeout=0.5)

    handler = Dialer()
    with serving(Echo(), "tcp://127.0.0.1:0") as engine, nr.Client(handler, loops=1) as client:
        handler.client, handler.echo_address = client, engine.addresses[0]
        conn = client.dial(engine.addresses[0], timeout=5)
        conn.async_write(b"go")
        assert handler.wait_bytes(conn, 2) == b"go"
        for n in range(5):  # the loop serves on while both dials are pending
            conn.async_write(b"ping%d" % n)
            assert handler.wait_bytes(conn, 5) == b"ping%d" % n
        assert outcomes.empty()
        fake_resolver.set()
        results = {}
        for _ in range(2):
            what, new, err = outcomes.get(timeout=5)
            results[what] = (new, err)
        assert results["resolved"][1] is None and isinstance(results["resolved"][0], nr.Conn)
        assert results["blackhole"][0] is None and isinstance(results["blackhole"][1], TimeoutError)
        assert handler.threads[results["resolved"][0]] == handler.threads[conn]


# ---------------------------------------------------------------- stopping


def test_stop_closes_every_connection(unix_path):
    handler = Collector()
    with serving(Echo(), "tcp://127.0.0.1:0", f"unix://{unix_path}", "udp://127.0.0.1:0") as engine:
        client = nr.Client(handler, loops=2).start()
        conns = [client.dial(addr, timeout=5) for addr in engine.addresses for _ in range(2)]
        conns[0].async_write(b"unsent?")  # queued output is flushed before closing
        client.stop()
        assert len(handler.closed) == 6
        assert all(err is None for _, err in handler.closed)
        assert all(conn.closed for conn in conns)
        client.stop()  # idempotent
        outcome = []
        conns[1].async_write(b"late", callback=lambda c, e: outcome.append(e))
        assert isinstance(outcome[0], nr.ClosedError)
        with pytest.raises(nr.EngineStoppedError):
            client.dial(engine.addresses[0], timeout=1)


# ---------------------------------------------------------------- sharing an engine's loops


def test_client_shares_the_engines_loops():
    """A server callback dials out with near=conn: both ends live on one loop."""
    pairs = queue.Queue()

    class Front(nr.EventHandler):
        def on_boot(self, engine):
            self.client = nr.Client(Back(), engine=engine).start()

        def on_open(self, conn):
            conn.context = threading.get_ident()
            self.client.dial_async(self.upstream, lambda out, err: pairs.put(
                (conn.context, threading.get_ident(), out, err)), timeout=5, near=conn)

    class Back(nr.EventHandler):
        def on_open(self, conn):
            conn.context = threading.get_ident()

    with serving(Echo(), "tcp://127.0.0.1:0") as upstream:
        front = Front()
        front.upstream = upstream.addresses[0]
        with serving(front, "tcp://127.0.0.1:0", loops=3) as engine:
            sockets = [connect(engine.addresses[0]) for _ in range(6)]
            seen = [pairs.get(timeout=5) for _ in range(6)]
            for inbound_thread, callback_thread, out, err in seen:
                assert err is None
                assert inbound_thread == callback_thread == out.context
            assert len({s[0] for s in seen}) > 1  # spread over several loops
            # dial() from a foreign thread works on a shared client too.
            conn = front.client.dial(upstream.addresses[0], timeout=5)
            assert conn.context in {s[0] for s in seen} | {conn.context}
            for s in sockets:
                s.close()
        # Stopping the engine closes the client connections on its loops.
        wait_for(lambda: conn.closed, what="client conn closed with the engine")


def test_dialed_connection_queuing_past_high_water_does_not_stall_against_echo(unix_path):
    """Regression: a client that queued more than write_high_water used to stop
    reading, the echo server then stopped reading too, and both waited forever."""
    got = bytearray()
    done = threading.Event()
    payload = os.urandom(4 << 20)

    class Sink(nr.EventHandler):
        def on_traffic(self, conn):
            got.extend(conn.read())
            if len(got) >= len(payload):
                done.set()

    class Echo(nr.EventHandler):
        def on_traffic(self, conn):
            conn.write(conn.read())

    with serving(Echo(), f"unix://{unix_path}") as engine:
        with nr.Client(Sink(), write_high_water=64 * 1024, write_low_water=16 * 1024) as client:
            conn = client.dial(engine.addresses[0], timeout=5)
            conn.async_write(payload)
            assert done.wait(20), f"stalled after echoing {len(got)} of {len(payload)} bytes"
    assert bytes(got) == payload


def test_dial_applies_socket_options():
    seen = {}

    class Probe(nr.EventHandler):
        def on_open(self, conn):
            with conn.borrow_socket() as sock:
                seen["rcvbuf"] = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
                seen["keepalive"] = sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)

    with serving(nr.EventHandler(), "tcp://127.0.0.1:0") as engine:
        with nr.Client(Probe(), socket_recv_buffer=8192, tcp_keepalive=30) as client:
            client.dial(engine.addresses[0], timeout=5)
    # Linux doubles SO_RCVBUF for bookkeeping; either way far below the ~128 KiB default.
    assert seen["rcvbuf"] <= 2 * 8192
    assert seen["keepalive"] == 1


def test_dial_of_an_unencodable_host_name_fails_instead_of_hanging():
    with nr.Client(nr.EventHandler()) as client:
        with pytest.raises(socket.gaierror, match="a{64}"):
            client.dial("tcp://" + "a" * 64 + ".invalid:80", timeout=2)
