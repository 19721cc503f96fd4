"""UDP serving: byte-exact echo of datagrams of every size on one or several
loops, UDP beside TCP and Unix on one engine, per-peer sessions, send errors
that cost one datagram only, and multicast on loopback.

Every datagram goes to 127.0.0.1 (or ::1), or to a multicast group with a
TTL of 0 through the loopback interface: nothing leaves the machine.
"""

from __future__ import annotations

import os
import selectors
import socket
import struct
import subprocess
import threading
import time

import pytest

import netreactor as nr
from netreactor.server.datagram import MAX_DATAGRAM
from netreactor.reactor.pollers import epoll_available
from conftest import connect, recv_exact, serving, wait_for

SIZES = (0, 1, 64, 1500, 9000, MAX_DATAGRAM)
# How many datagrams of each size each test run sends.
COUNTS = {0: 40, 1: 40, 64: 60, 1500: 30, 9000: 12, MAX_DATAGRAM: 6}
# Bytes of datagrams in flight at once (plus per-datagram overhead): well under
# the default socket receive buffer (~208 KiB), so loopback never drops one.
IN_FLIGHT_BUDGET = 96 * 1024


def target(address: str):
    """``udp://host:port`` -> a sockaddr for socket.sendto."""
    rest = address.split("://", 1)[1]
    host, port = rest.rsplit(":", 1)
    return host.strip("[]"), int(port)


def udp_socket(family=socket.AF_INET, timeout: float = 5.0) -> socket.socket:
    """A client socket bound to loopback (so getsockname() is what the server sees)."""
    s = socket.socket(family, socket.SOCK_DGRAM)
    s.settimeout(timeout)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    s.bind(("::1" if family == socket.AF_INET6 else "127.0.0.1", 0))
    return s


class Echo(nr.EventHandler):
    def __init__(self):
        self.threads = set()

    def on_traffic(self, conn):
        self.threads.add(threading.get_ident())
        conn.write(conn.read())


def _payload(size: int, seq: int) -> bytes:
    if size < 8:
        return os.urandom(size)
    return struct.pack("!II", seq, size) + os.urandom(size - 8)


def udp_echo_check(address: str, sockets: int = 16, family=socket.AF_INET,
                   timeout: float = 20.0) -> None:
    """Send every size from several sockets, one datagram in flight per socket and a
    bounded number of bytes in flight overall; each echo must equal what was sent."""
    socks = [udp_socket(family) for _ in range(sockets)]
    queues = [[] for _ in socks]
    seq = 0
    for size in SIZES:
        for _ in range(COUNTS[size]):
            queues[seq % sockets].append(_payload(size, seq))
            seq += 1
    addr = target(address)
    sel = selectors.DefaultSelector()
    outstanding = {}
    in_flight = 0
    echoed = 0
    deadline = time.monotonic() + timeout
    try:
        for i, s in enumerate(socks):
            s.setblocking(False)
            s.connect(addr)
            sel.register(s, selectors.EVENT_READ, i)
        while echoed < seq:
            for i, s in enumerate(socks):
                if i in outstanding or not queues[i]:
                    continue
                cost = len(queues[i][0]) + 1024
                if outstanding and in_flight + cost > IN_FLIGHT_BUDGET:
                    continue
                data = queues[i].pop(0)
                s.send(data)
                outstanding[i] = data
                in_flight += cost
            if time.monotonic() > deadline:
                pytest.fail(f"udp echo: {echoed} of {seq} datagrams echoed in {timeout}s")
            for key, _ in sel.select(1.0):
                i = key.data
                got = socks[i].recv(MAX_DATAGRAM + 1)
                sent = outstanding.pop(i)
                in_flight -= len(sent) + 1024
                assert got == sent, f"echo of a {len(sent)}-byte datagram differs ({len(got)} bytes)"
                echoed += 1
    finally:
        sel.close()
        for s in socks:
            s.close()


# ---------------------------------------------------------------- echo

def _udp_configs():
    out = [pytest.param(dict(loops=1), id="1loop"),
           pytest.param(dict(loops=4), id="4loops"),
           pytest.param(dict(loops=2, poller="selectors"), id="selectors-2loops")]
    if epoll_available():
        out.append(pytest.param(dict(loops=2, edge_triggered=True), id="epoll-et-2loops"))
    return out


@pytest.mark.parametrize("opts", _udp_configs())
def test_echo_every_size_byte_exact(opts):
    handler = Echo()
    with serving(handler, "udp://127.0.0.1:0", **opts) as engine:
        assert engine.addresses[0].startswith("udp://127.0.0.1:")
        udp_echo_check(engine.addresses[0])
    if opts["loops"] > 1:
        # SO_REUSEPORT spreads 16 peers over the loops' sockets.
        assert len(handler.threads) > 1, "every datagram was served by one loop"


def test_echo_ipv6():
    if not socket.has_ipv6:
        pytest.skip("no IPv6 in this Python")
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as probe:
            probe.bind(("::1", 0))
    except OSError as exc:
        pytest.skip(f"no IPv6 loopback here: {exc}")
    with serving(Echo(), "udp6://[::1]:0", loops=2) as engine:
        udp_echo_check(engine.addresses[0], sockets=4, family=socket.AF_INET6)


def test_read_returns_exactly_one_datagram():
    """Datagram boundaries are kept: an unread remainder is dropped, never merged."""
    class PartialReader(nr.EventHandler):
        def on_traffic(self, conn):
            assert conn.inbound_buffered == 10
            head = conn.read(3)
            assert conn.peek() == b"3456789" and conn.next(2) == b"34"
            conn.write(head + b"|%d" % conn.inbound_buffered)  # leave 5 bytes unread

    with serving(PartialReader(), "udp://127.0.0.1:0") as engine:
        with udp_socket() as s:
            for _ in range(3):
                s.sendto(b"0123456789", target(engine.addresses[0]))
                assert s.recv(100) == b"012|5"


def test_remote_addr_is_the_sender_and_send_to_reaches_anyone():
    class Relay(nr.EventHandler):
        def on_traffic(self, conn):
            data = conn.read()
            if data.startswith(b"to "):
                host, port = data[3:].split(b":")
                n = conn.send_to(b"relayed", (host.decode(), int(port)))
                conn.write(b"sent %d" % n)
            else:
                conn.write(repr(conn.remote_addr).encode())

    with serving(Relay(), "udp://127.0.0.1:0") as engine:
        with udp_socket() as a, udp_socket() as b:
            a.sendto(b"who", target(engine.addresses[0]))
            assert a.recv(100) == repr(a.getsockname()).encode()
            a.sendto(b"to 127.0.0.1:%d" % b.getsockname()[1], target(engine.addresses[0]))
            assert a.recv(100) == b"sent 7"
            assert b.recv(100) == b"relayed"


def test_each_datagram_gets_a_fresh_connection_and_kept_ones_stay_intact():
    """A per-datagram connection starts with an empty context, and one the handler
    keeps stays bound to its own datagram's sender and context (the engine may
    recycle connection objects only when no handler holds them)."""
    class Keeper(nr.EventHandler):
        def __init__(self):
            self.kept = []
            self.dirty = 0

        def on_traffic(self, conn):
            if conn.context is not None or not conn.remote_addr:
                self.dirty += 1
            data = conn.read()
            conn.context = data
            if data.startswith(b"keep"):
                self.kept.append(conn)
            conn.write(data)

    handler = Keeper()
    with serving(handler, "udp://127.0.0.1:0") as engine:
        addr = target(engine.addresses[0])
        with udp_socket() as a, udp_socket() as b:
            a.sendto(b"keep a", addr)
            assert a.recv(100) == b"keep a"
            for n in range(20):
                b.sendto(b"other %d" % n, addr)
                assert b.recv(100) == b"other %d" % n
            b.sendto(b"keep b", addr)
            assert b.recv(100) == b"keep b"
            first, second = handler.kept
            assert first is not second
            assert (first.remote_addr, first.context) == (a.getsockname(), b"keep a")
            assert (second.remote_addr, second.context) == (b.getsockname(), b"keep b")
            first.async_write(b"later a")
            second.async_write(b"later b")
            assert a.recv(100) == b"later a"
            assert b.recv(100) == b"later b"
    assert handler.dirty == 0


# ---------------------------------------------------------------- beside streams


def test_udp_beside_tcp_and_unix(unix_path):
    handler = Echo()
    addrs = ("udp://127.0.0.1:0", "tcp://127.0.0.1:0", f"unix://{unix_path}")
    with serving(handler, *addrs, loops=2) as engine:
        udp, tcp, unix = engine.addresses
        assert udp.startswith("udp://") and tcp.startswith("tcp://") and unix.startswith("unix://")
        streams = [connect(tcp), connect(unix)]
        try:
            for round_ in range(3):
                for s in streams:
                    payload = os.urandom(70_000)
                    s.sendall(payload)
                    assert recv_exact(s, len(payload)) == payload
                udp_echo_check(udp, sockets=4)
        finally:
            for s in streams:
                s.close()


# ---------------------------------------------------------------- sessions


class Sessions(nr.EventHandler):
    """Per-peer sessions: counts each peer's datagrams in ``context``."""

    def __init__(self):
        self.opened = []
        self.closed = []
        self.lock = threading.Lock()

    def on_open(self, conn):
        conn.context = 0
        with self.lock:
            self.opened.append(conn.remote_addr)

    def on_traffic(self, conn):
        data = conn.read()
        conn.context += 1
        if data == b"bye":
            conn.write(b"bye")
            return nr.Action.CLOSE
        if data == b"close":
            conn.close()  # from the loop thread too: on_close(None) follows
        conn.write(b"%d:%s" % (conn.context, data))
        return None

    def on_close(self, conn, err):
        with self.lock:
            self.closed.append((conn.remote_addr, err))


def test_session_keeps_context_and_times_out():
    handler = Sessions()
    with serving(handler, "udp://127.0.0.1:0", udp_session_timeout=0.2) as engine:
        with udp_socket() as s:
            addr = target(engine.addresses[0])
            for n, word in enumerate((b"a", b"b", b"c"), 1):
                s.sendto(word, addr)
                assert s.recv(100) == b"%d:%s" % (n, word)
            assert handler.opened == [s.getsockname()]
            assert engine.count_connections() == 1
            wait_for(lambda: handler.closed, timeout=5, what="idle session closed")
            peer, err = handler.closed[0]
            assert peer == s.getsockname() and isinstance(err, TimeoutError)
            assert engine.count_connections() == 0
            # The peer comes back: a new session, a fresh context.
            s.sendto(b"again", addr)
            assert s.recv(100) == b"1:again"
            assert len(handler.opened) == 2


def test_session_close_and_action_close_report_none():
    handler = Sessions()
    with serving(handler, "udp://127.0.0.1:0", udp_session_timeout=30.0) as engine:
        with udp_socket() as s:
            addr = target(engine.addresses[0])
            s.sendto(b"x", addr)
            assert s.recv(100) == b"1:x"
            s.sendto(b"bye", addr)
            assert s.recv(100) == b"bye"
            wait_for(lambda: len(handler.closed) == 1, what="on_close after Action.CLOSE")
            s.sendto(b"close", addr)  # a new session, closed with conn.close()
            assert s.recv(100) == b"1:close"  # close() lets what was written go out
            wait_for(lambda: len(handler.closed) == 2, what="on_close after close()")
            assert [err for _, err in handler.closed] == [None, None]
            assert len(handler.opened) == 2
            s.sendto(b"y", addr)
            assert s.recv(100) == b"1:y"
    # Shutting down closes the sessions still open.
    assert len(handler.closed) == 3 and handler.closed[2][1] is None


def test_max_sessions_bounds_peers():
    handler = Sessions()
    with serving(handler, "udp://127.0.0.1:0", udp_session_timeout=30.0, udp_max_sessions=2) as engine:
        addr = target(engine.addresses[0])
        with udp_socket() as a, udp_socket() as b, udp_socket() as c:
            for s in (a, b):
                s.sendto(b"hi", addr)
                assert s.recv(100) == b"1:hi"
            c.sendto(b"hi", addr)  # a third peer: dropped
            a.sendto(b"sync", addr)  # same socket, same loop: handled after c's datagram
            assert a.recv(100) == b"2:sync"
            c.setblocking(False)
            with pytest.raises(BlockingIOError):
                c.recv(100)
            assert engine.count_connections() == 2
            a.sendto(b"bye", addr)
            assert a.recv(100) == b"bye"
            wait_for(lambda: len(handler.closed) == 1, what="session a closed")
            c.settimeout(5)
            c.sendto(b"now", addr)  # room again
            assert c.recv(100) == b"1:now"


def test_session_handler_error_ends_that_session_only(expected_errors):
    class Fragile(Sessions):
        def on_traffic(self, conn):
            if conn.peek(4) == b"boom":
                raise ValueError("bad datagram")
            return super().on_traffic(conn)

    handler = Fragile()
    with serving(handler, "udp://127.0.0.1:0", udp_session_timeout=30.0) as engine:
        addr = target(engine.addresses[0])
        with udp_socket() as a, udp_socket() as b:
            a.sendto(b"hi", addr)
            b.sendto(b"hi", addr)
            assert a.recv(100) == b"1:hi" and b.recv(100) == b"1:hi"
            a.sendto(b"boom", addr)
            b.sendto(b"still", addr)
            assert b.recv(100) == b"2:still"
            wait_for(lambda: handler.closed, what="the failed session closed")
            assert isinstance(handler.closed[0][1], ValueError)
    assert any("bad datagram" in str(r.exc_info[1]) for r in expected_errors if r.exc_info)


# ---------------------------------------------------------------- errors cost one datagram


def _closed_udp_port() -> int:
    """A loopback UDP port nobody listens on (bound then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_send_errors_cost_one_datagram():
    closed_port = _closed_udp_port()

    class Sender(nr.EventHandler):
        def on_traffic(self, conn):
            data = conn.read()
            if data == b"oversized":
                n = conn.write(b"x" * (MAX_DATAGRAM + 1))
            elif data == b"huge":
                n = conn.send_to(b"x" * 200_000, conn.remote_addr)
            elif data == b"unreachable":
                n = conn.send_to(b"lost", ("127.0.0.1", closed_port))
            else:
                conn.write(data)
                return
            conn.write(b"%s:%d" % (data, n))

    with serving(Sender(), "udp://127.0.0.1:0") as engine:
        endpoint = next(a for a in engine._impl._sources if hasattr(a, "send_errors"))
        with udp_socket() as s:
            addr = target(engine.addresses[0])
            for _ in range(3):
                s.sendto(b"oversized", addr)
                assert s.recv(100) == b"oversized:0"
                s.sendto(b"huge", addr)
                assert s.recv(100) == b"huge:0"
                s.sendto(b"unreachable", addr)  # the ICMP error that follows is ignored
                assert s.recv(100) == b"unreachable:4"
                s.sendto(b"still serving", addr)
                assert s.recv(100) == b"still serving"
        assert endpoint.send_errors == 6


def test_handler_error_costs_one_datagram(expected_errors):
    class Fragile(nr.EventHandler):
        def on_traffic(self, conn):
            data = conn.read()
            if data == b"boom":
                raise ValueError("bad datagram")
            conn.write(data)

    with serving(Fragile(), "udp://127.0.0.1:0", loops=2) as engine:
        with udp_socket() as s:
            addr = target(engine.addresses[0])
            for _ in range(3):
                s.sendto(b"boom", addr)
                s.sendto(b"fine", addr)
                assert s.recv(100) == b"fine"
    assert len(expected_errors) == 3
    assert all("on_traffic raised" in r.getMessage() for r in expected_errors)


def test_reply_to_a_vanished_peer_is_harmless():
    """Replies to a closed port draw ICMP port-unreachable; the loop goes on."""
    class Late(nr.EventHandler):
        def __init__(self):
            self.kept = []

        def on_traffic(self, conn):
            data = conn.read()
            if data == b"keep":
                self.kept.append(conn)  # a per-datagram conn, kept for later replies
            conn.write(data)

    handler = Late()
    with serving(handler, "udp://127.0.0.1:0") as engine:
        addr = target(engine.addresses[0])
        with udp_socket() as gone:
            gone.sendto(b"keep", addr)
            assert gone.recv(100) == b"keep"
        done = threading.Event()
        outcomes = []
        for _ in range(5):  # the peer's socket is closed now
            handler.kept[0].async_write(b"anyone?", lambda c, e: outcomes.append(e))
        handler.kept[0].wake(lambda c, e: done.set())
        assert done.wait(5)
        with udp_socket() as s:
            s.sendto(b"alive", addr)
            assert s.recv(100) == b"alive"
        assert len(outcomes) == 5  # each reports its own fate (sent, or dropped)


# ---------------------------------------------------------------- multicast


GROUP = "239.255.77.77"


def _multicast_sender() -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(2)
    s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton("127.0.0.1"))
    s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 0)  # this host only
    s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)
    return s


def _loopback_multicast_works() -> bool:
    """Does a group joined on 127.0.0.1 receive what a TTL-0 sender on lo sends?"""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as r, _multicast_sender() as s:
        r.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        r.bind((GROUP, 0))
        try:
            r.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP,
                         socket.inet_aton(GROUP) + socket.inet_aton("127.0.0.1"))
            s.sendto(b"probe", (GROUP, r.getsockname()[1]))
        except OSError:
            return False
        r.settimeout(0.5)
        try:
            return r.recv(100) == b"probe"
        except OSError:
            return False


@pytest.fixture
def loopback_multicast():
    """Skip unless loopback multicast works; as root, turn it on for lo if needed."""
    if _loopback_multicast_works():
        yield
        return
    enabled = False
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        r = subprocess.run(["ip", "link", "set", "lo", "multicast", "on"], capture_output=True)
        enabled = r.returncode == 0
    try:
        if not (enabled and _loopback_multicast_works()):
            pytest.skip("the kernel does not deliver multicast on loopback here "
                        "(needs 'ip link set lo multicast on', as root)")
        yield
    finally:
        if enabled:
            subprocess.run(["ip", "link", "set", "lo", "multicast", "off"], capture_output=True)


@pytest.mark.parametrize("interface", ["127.0.0.1", "lo"])
def test_multicast_group_on_loopback(loopback_multicast, interface):
    if interface == "lo":
        try:
            socket.if_nametoindex("lo")
        except OSError:
            pytest.skip("no interface named lo")
    handler = Echo()
    with serving(handler, f"udp://{GROUP}:0", multicast_interface=interface) as engine:
        port = target(engine.addresses[0])[1]
        with _multicast_sender() as s:
            for n in range(5):
                s.sendto(b"to the group %d" % n, (GROUP, port))
                # The reply comes back by unicast to the sender.
                assert s.recv(100) == b"to the group %d" % n
