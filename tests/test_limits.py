"""Connection limits (issue 13): max_connections holds newcomers in the listen
backlog and serves them once there is room; max_connections_per_ip refuses,
counts and logs (rate-limited)."""

from __future__ import annotations

import logging
import socket
import time

import pytest

import netreactor as nr
from netreactor.server.limits import ConnectionLimits
from conftest import CONFIGS, connect, serving, wait_for

LIMIT_CONFIGS = [c for c in CONFIGS if "least" not in c.id]  # hash, reuseport, hand-off, 1 loop


class Echo(nr.EventHandler):
    def on_traffic(self, conn):
        conn.write(conn.read())


def served(sock: socket.socket, wait: float) -> bool:
    """Whether ``sock`` gets its ping echoed within ``wait`` seconds."""
    sock.settimeout(wait)
    try:
        sock.sendall(b"ping")
        return sock.recv(4) == b"ping"
    except TimeoutError:
        return False


@pytest.mark.parametrize("config", LIMIT_CONFIGS)
def test_past_max_connections_newcomers_wait_in_the_backlog(config):
    n = 6
    with serving(Echo(), "tcp://127.0.0.1:0", max_connections=n, **config) as engine:
        addr = engine.addresses[0]
        first = [connect(addr) for _ in range(n)]
        for s in first:
            assert served(s, 5)
        late = connect(addr)  # the kernel completes the handshake: it waits in the backlog
        assert not served(late, 0.3)
        assert engine.count_connections() == n
        assert engine.limits.snapshot()["holds"] >= 1
        first.pop().close()  # room for one: the newcomer is accepted and served
        late.settimeout(5)
        assert late.recv(4) == b"ping"
        wait_for(lambda: engine.count_connections() == n, what="the newcomer counted")
        another = connect(addr)
        assert not served(another, 0.3)  # full again
        late.close()
        another.settimeout(5)
        assert another.recv(4) == b"ping"
        for s in first + [another]:
            s.close()
        wait_for(lambda: engine.limits.snapshot()["open"] == 0, what="every close counted")


def test_max_connections_counts_lingering_and_closing_connections():
    # A connection the handler closed still holds its fd until the peer's EOF:
    # it counts until then.
    class CloseAtOnce(nr.EventHandler):
        def on_open(self, conn):
            return nr.Action.CLOSE

    with serving(CloseAtOnce(), "tcp://127.0.0.1:0", max_connections=1) as engine:
        addr = engine.addresses[0]
        a = connect(addr)
        assert a.recv(1) == b""  # closed for us; the server lingers for our EOF
        b = connect(addr)
        b.settimeout(0.3)
        with pytest.raises(socket.timeout):
            b.recv(1)  # not accepted: a still counts
        a.close()  # its EOF ends the linger: room for b
        b.settimeout(5)
        assert b.recv(1) == b""
        b.close()


def test_per_ip_limit_refuses_counts_and_logs(caplog):
    caplog.set_level(logging.WARNING, logger="netreactor")
    with serving(Echo(), "tcp://127.0.0.1:0", max_connections_per_ip=2) as engine:
        host, port = "127.0.0.1", int(engine.addresses[0].rsplit(":", 1)[1])
        a, b = connect(engine.addresses[0]), connect(engine.addresses[0])
        assert served(a, 5) and served(b, 5)
        refused = []
        for _ in range(5):
            s = socket.create_connection((host, port), timeout=5)
            s.sendall(b"ping")
            try:
                refused.append(s.recv(4))  # closed at once: EOF (or a reset)
            except ConnectionResetError:
                refused.append(b"")
            s.close()
        assert refused == [b""] * 5
        # Another address of the loopback network is another peer.
        other = socket.socket()
        other.bind(("127.0.0.2", 0))
        other.settimeout(5)
        other.connect((host, port))
        assert served(other, 5)
        assert engine.limits.snapshot()["refused"] == 5
        # A close makes room for that IP again.
        a.close()
        wait_for(lambda: engine.limits.snapshot()["open"] == 2, what="the close counted")
        with socket.create_connection((host, port), timeout=5) as c:
            assert served(c, 5)
        b.close()
        other.close()
    lines = [r.getMessage() for r in caplog.records if "max_connections_per_ip" in r.getMessage()]
    assert len(lines) == 1, lines  # rate-limited: one line for the burst
    assert "refused 1 connection(s)" in lines[0] and "127.0.0.1" in lines[0]


def test_refusal_reports_are_rate_limited_and_summed(monkeypatch):
    from netreactor.server import limits as limits_module

    clock = [1000.0]
    monkeypatch.setattr(limits_module, "monotonic", lambda: clock[0])
    logged = []

    class Log:
        def warning(self, msg, *args):
            logged.append(msg % args)

    lim = ConnectionLimits(None, 1, Log())
    assert lim.admit(("10.0.0.1", 1)) == "10.0.0.1"
    for _ in range(3):
        assert lim.admit(("10.0.0.1", 2)) is None
    clock[0] += limits_module.REPORT_INTERVAL
    assert lim.admit(("10.0.0.1", 3)) is None
    assert logged == [
        "refused 1 connection(s) over max_connections_per_ip=1 in the last 10 s (the last from 10.0.0.1)",
        "refused 3 connection(s) over max_connections_per_ip=1 in the last 10 s (the last from 10.0.0.1)",
    ]
    assert lim.refused == 4 and lim.open == 1
    assert lim.admit(("10.0.0.2", 1)) == "10.0.0.2"  # another IP
    lim.cancelled("10.0.0.1")
    assert lim.admit(("10.0.0.1", 4)) == "10.0.0.1"


def test_unix_peers_are_not_limited_per_ip(unix_path):
    with serving(Echo(), f"unix://{unix_path}", max_connections_per_ip=1) as engine:
        socks = [connect(engine.addresses[0]) for _ in range(3)]
        assert all(served(s, 5) for s in socks)
        for s in socks:
            s.close()


def test_limits_are_checked_options():
    for bad in ({"max_connections": 0}, {"max_connections_per_ip": -1}, {"max_connections": 1.5},
                {"max_connections": True}):
        with pytest.raises(ValueError, match="max_connections"):
            nr.Engine(Echo(), "tcp://127.0.0.1:0", **bad)
    with pytest.raises(ValueError, match="does not apply to a Client"):
        nr.Client(Echo(), max_connections=5)


def test_no_limits_no_limiter():
    with serving(Echo(), "tcp://127.0.0.1:0") as engine:
        assert engine.limits is None
        with connect(engine.addresses[0]) as s:
            assert served(s, 5)
    time.sleep(0)


def test_the_1001st_connection_waits_in_the_backlog_and_is_served_when_one_closes():
    n = 1000
    with serving(Echo(), "tcp://127.0.0.1:0", max_connections=n) as engine:
        addr = engine.addresses[0]
        first = [connect(addr) for _ in range(n)]
        wait_for(lambda: engine.count_connections() == n, what="a thousand accepted")
        late = connect(addr)  # the kernel completes the handshake; the engine does not accept
        assert not served(late, 0.3)
        assert engine.count_connections() == n
        assert served(first[-1], 5)  # the others are served meanwhile
        first.pop(0).close()
        late.settimeout(5)
        assert late.recv(4) == b"ping"
        for s in first + [late]:
            s.close()
        wait_for(lambda: engine.limits.snapshot()["open"] == 0, what="every close counted")
