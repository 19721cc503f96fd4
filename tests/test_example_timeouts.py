"""The examples defend themselves (issue 13, part 4): the HTTP example's header
and keep-alive timeouts, the RESP example's Redis ``timeout``, slowloris
against both, and the flags of ``netreactor example`` and ``netreactor run``
that set them and the engine's options."""

from __future__ import annotations

import os
import re
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import List

import pytest

import netreactor as nr
from netreactor.examples import FLAGS, resolve_flags
from netreactor.examples.http import HTTPServer
from netreactor.examples.redis import RedisServer
from netreactor.reactor.wheel import TICK
from conftest import connect, serving, wait_for

REPO = Path(__file__).resolve().parent.parent
T = 0.3
#: Late by at most two ticks, and by what the scheduler of a busy 2-core VM adds.
LATE = 2 * TICK + 0.4
GET = b"GET /plaintext HTTP/1.1\r\nHost: x\r\n\r\n"


def read_until_eof(sock: socket.socket, limit: float = 5.0) -> bytes:
    sock.settimeout(limit)
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        data += chunk
    return data


def http_get(sock: socket.socket) -> bytes:
    """One keep-alive request and its whole response (Content-Length framed)."""
    sock.sendall(GET)
    data = b""
    sock.settimeout(5)
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))
    while len(body) < length:
        body += sock.recv(65536)
    return head


class Recording(HTTPServer):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.errors: List[BaseException] = []

    def on_close(self, conn, err):
        self.errors.append(err)
        return super().on_close(conn, err)


# ---------------------------------------------------------------- HTTP


def test_http_head_that_does_not_arrive_in_time_gets_408_and_is_closed():
    handler = Recording(header_timeout=T, keep_alive_timeout=30)
    with serving(handler, "tcp://127.0.0.1:0") as engine:
        with connect(engine.addresses[0]) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")  # the head never ends
            start = time.monotonic()
            reply = read_until_eof(s)
            took = time.monotonic() - start
        assert reply.startswith(b"HTTP/1.1 408 "), reply
        assert b"connection: close" in reply.lower()
        assert T - TICK <= took < T + LATE, took
        wait_for(lambda: handler.errors, what="on_close")
        assert isinstance(handler.errors[0], nr.ReadTimeoutError)


def test_http_keep_alive_timeout_closes_an_idle_connection_per_connection():
    # The engine has no idle_timeout: the example sets it on each connection.
    handler = HTTPServer(header_timeout=10, keep_alive_timeout=T)
    with serving(handler, "tcp://127.0.0.1:0") as engine:
        with connect(engine.addresses[0]) as s:
            assert http_get(s).startswith(b"HTTP/1.1 200 ")
            start = time.monotonic()
            assert read_until_eof(s) == b""  # closed without a reply: nothing was asked
            assert T - TICK <= time.monotonic() - start < T + LATE


def test_http_keep_alive_timeout_is_the_engines_idle_timeout_when_they_agree():
    handler = HTTPServer(keep_alive_timeout=T)
    with serving(handler, "tcp://127.0.0.1:0", idle_timeout=T) as engine:
        assert handler._own_idle is False  # nothing set per connection
        with connect(engine.addresses[0]) as s:
            assert http_get(s).startswith(b"HTTP/1.1 200 ")
            start = time.monotonic()
            assert read_until_eof(s) == b""
            assert time.monotonic() - start < T + LATE


def test_http_requests_in_time_keep_their_connection():
    """Each request arrives in pieces, each whole within the header timeout, with
    pauses shorter than the keep-alive timeout: nothing is closed."""
    handler = HTTPServer(header_timeout=T * 2, keep_alive_timeout=T * 2)
    with serving(handler, "tcp://127.0.0.1:0") as engine:
        with connect(engine.addresses[0]) as s:
            for _ in range(2):
                s.sendall(GET[:10])
                time.sleep(T / 2)
                s.sendall(GET[10:20])
                time.sleep(T / 2)
                s.sendall(GET[20:])
                s.settimeout(5)
                assert s.recv(65536).startswith(b"HTTP/1.1 200 ")
                time.sleep(T)  # between requests: shorter than the keep-alive timeout
            assert http_get(s).startswith(b"HTTP/1.1 200 ")


def test_http_header_timeout_zero_disables_it():
    handler = HTTPServer(header_timeout=0, keep_alive_timeout=0)
    assert handler.header_timeout is None and handler.keep_alive_timeout is None
    with serving(handler, "tcp://127.0.0.1:0") as engine:
        with connect(engine.addresses[0]) as s:
            s.sendall(b"GET /plaintext HTTP/1.1\r\n")
            s.settimeout(T + LATE)
            with pytest.raises(socket.timeout):
                s.recv(1)  # still open, nothing said
            s.sendall(b"Host: x\r\n\r\n")
            s.settimeout(5)
            assert s.recv(65536).startswith(b"HTTP/1.1 200 ")


@pytest.mark.parametrize("bad", [-1, "10", float("inf"), True])
def test_http_timeouts_are_checked(bad):
    with pytest.raises(ValueError, match="header_timeout"):
        HTTPServer(header_timeout=bad)
    with pytest.raises(ValueError, match="keep_alive_timeout"):
        HTTPServer(keep_alive_timeout=bad)


def test_slowloris_against_the_http_example():
    """200 connections trickle a head a byte at a time; 5 normal clients keep
    being served with low latency, and every trickler gets its 408 and is
    closed within the header timeout plus the wheel's lateness."""
    handler = Recording(header_timeout=T, keep_alive_timeout=T)
    with serving(handler, "tcp://127.0.0.1:0", backlog=512) as engine:
        addr = engine.addresses[0]
        tricklers = [connect(addr) for _ in range(200)]
        normal = [connect(addr) for _ in range(5)]
        head = b"GET /slow HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 1000
        start = time.monotonic()
        slowest = 0.0
        i = 0
        while time.monotonic() < start + T + LATE + 0.3:
            for s in tricklers:
                try:
                    s.send(head[i:i + 1])
                except OSError:
                    pass
            i += 1
            for s in normal:
                t0 = time.monotonic()
                assert http_get(s).startswith(b"HTTP/1.1 200 ")
                slowest = max(slowest, time.monotonic() - t0)
            time.sleep(0.05)
        wait_for(lambda: engine.count_connections() == 5, timeout=2,
                 what="every trickler closed, the normal clients not")
        assert slowest < 0.5, f"a normal client waited {slowest:.3f} s"
        for s in tricklers:
            assert read_until_eof(s, 2).startswith(b"HTTP/1.1 408 ")
            s.close()
        for s in normal:
            s.close()
    assert sum(isinstance(e, nr.ReadTimeoutError) for e in handler.errors) == 200


# ---------------------------------------------------------------- RESP


class RecordingRedis(RedisServer):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.errors: List[BaseException] = []

    def on_close(self, conn, err):
        self.errors.append(err)
        return super().on_close(conn, err)


def ping(sock: socket.socket) -> bytes:
    sock.sendall(b"*1\r\n$4\r\nPING\r\n")
    sock.settimeout(5)
    return sock.recv(100)


def test_redis_timeout_closes_idle_clients():
    handler = RecordingRedis(timeout=T)
    with serving(handler, "tcp://127.0.0.1:0") as engine:
        with connect(engine.addresses[0]) as idle, connect(engine.addresses[0]) as busy:
            assert ping(idle) == b"+PONG\r\n"
            start = time.monotonic()
            while time.monotonic() < start + 3 * T:  # busy asks every T/3: never idle
                assert ping(busy) == b"+PONG\r\n"
                time.sleep(T / 3)
            assert read_until_eof(idle, 1) == b""
            assert ping(busy) == b"+PONG\r\n"
    assert isinstance(handler.errors[0], nr.IdleTimeoutError)


def test_redis_timeout_zero_is_redis_default_never():
    handler = RedisServer(timeout=0)
    with serving(handler, "tcp://127.0.0.1:0", idle_timeout=T) as engine:
        # timeout=0 asks for no timeout: it overrides the engine's on each connection.
        with connect(engine.addresses[0]) as s:
            assert ping(s) == b"+PONG\r\n"
            time.sleep(T + LATE)
            assert ping(s) == b"+PONG\r\n"


def test_slowloris_against_the_redis_example():
    """A client that trickles a command is never idle, but its command must
    arrive whole within the timeout: tricklers are closed, others served."""
    handler = RecordingRedis(timeout=T)
    with serving(handler, "tcp://127.0.0.1:0", backlog=512) as engine:
        addr = engine.addresses[0]
        tricklers = [connect(addr) for _ in range(200)]
        normal = [connect(addr) for _ in range(5)]
        command = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1000\r\n" + b"v" * 1000 + b"\r\n"
        start = time.monotonic()
        slowest = 0.0
        i = 0
        while time.monotonic() < start + T + LATE + 0.3:
            for s in tricklers:
                try:
                    s.send(command[i:i + 1])
                except OSError:
                    pass
            i += 1
            for s in normal:
                t0 = time.monotonic()
                assert ping(s) == b"+PONG\r\n"
                slowest = max(slowest, time.monotonic() - t0)
            time.sleep(0.05)
        wait_for(lambda: engine.count_connections() == 5, timeout=2,
                 what="every trickler closed, the normal clients not")
        assert slowest < 0.5, f"a normal client waited {slowest:.3f} s"
        for s in tricklers + normal:
            s.close()
    assert sum(isinstance(e, nr.ReadTimeoutError) for e in handler.errors) == 200


def test_redis_pipelined_commands_split_across_reads_are_served():
    # An unfinished command after complete ones is timed from its next read;
    # one that completes clears the timeout.
    handler = RecordingRedis(timeout=T * 2)
    with serving(handler, "tcp://127.0.0.1:0") as engine:
        with connect(engine.addresses[0]) as s:
            for _ in range(4):
                s.sendall(b"*1\r\n$4\r\nPING\r\n*1\r\n$4\r\nPI")
                time.sleep(T)
                s.sendall(b"NG\r\n")
                got = b""
                s.settimeout(5)
                while len(got) < 14:
                    got += s.recv(100)
                assert got == b"+PONG\r\n+PONG\r\n"
    assert handler.errors == [] or not isinstance(handler.errors[0], TimeoutError)


def test_redis_timeout_is_checked():
    with pytest.raises(ValueError, match="timeout"):
        RedisServer(timeout=-1)


# ---------------------------------------------------------------- flags


def test_resolve_flags_makes_flag_and_engine_option_agree():
    # Neither given: the HTTP example's keep-alive default is the engine's idle_timeout.
    assert resolve_flags("http", {}, {}) == ({}, {"idle_timeout": 5.0})
    # One given: the other follows.
    assert resolve_flags("http", {"keep_alive_timeout": 7.0}, {}) == \
        ({"keep_alive_timeout": 7.0}, {"idle_timeout": 7.0})
    assert resolve_flags("http", {}, {"idle_timeout": 9.0}) == \
        ({"keep_alive_timeout": 9.0}, {"idle_timeout": 9.0})
    assert resolve_flags("http", {}, {"idle_timeout": None}) == \
        ({"keep_alive_timeout": 0.0}, {"idle_timeout": None})
    # Both given: each as given.
    assert resolve_flags("http", {"keep_alive_timeout": 1.0}, {"idle_timeout": 2.0}) == \
        ({"keep_alive_timeout": 1.0}, {"idle_timeout": 2.0})
    # Redis: no default (Redis's 0, never).
    assert resolve_flags("redis", {}, {}) == ({}, {})
    assert resolve_flags("redis", {"timeout": 3.0}, {}) == ({"timeout": 3.0}, {"idle_timeout": 3.0})
    # An example without flags passes the options through.
    assert resolve_flags("echo", {}, {"max_connections": 10}) == ({}, {"max_connections": 10})


def test_every_example_flag_is_a_keyword_of_its_factory():
    import inspect

    from netreactor.examples import load_example

    for name, flags in FLAGS.items():
        factory = load_example(name)
        handler = factory(**{flag.keyword: 1.0 for flag in flags})
        for flag in flags:
            assert getattr(handler, flag.keyword) == 1.0, (name, flag.name)
        assert inspect.signature(factory).parameters  # takes keywords


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    return env


class Server:
    """``python -m netreactor ARGS`` until it says where it serves."""

    def __init__(self, args: List[str], cwd: Path = REPO) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "netreactor", *args], cwd=cwd, env=_env(),
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, start_new_session=True)
        self.log = b""

    def serving(self, timeout: float = 15.0) -> str:
        deadline = time.monotonic() + timeout
        fd = self.proc.stderr.fileno()
        while True:
            match = re.search(rb"serving (\S+?)(,| on)", self.log)
            if match:
                return match.group(1).decode()
            left = deadline - time.monotonic()
            readable, _, _ = select.select([fd], [], [], max(0.0, left))
            chunk = os.read(fd, 65536) if readable else b""
            if not chunk:
                pytest.fail(f"{self.proc.args} did not report serving within {timeout}s: {self.log!r}")
            self.log += chunk

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.proc.stdout.close()
        self.proc.stderr.close()


def _port_of(address: str):
    host, port = address.split("://", 1)[1].rsplit(":", 1)
    return host, int(port)


def test_netreactor_example_http_flags():
    with Server(["example", "http", "--listen", "tcp://127.0.0.1:0", "--header-timeout", "0.3",
                 "--keep-alive-timeout", "0.6", "--max-connections", "50"]) as server:
        addr = _port_of(server.serving())
        with socket.create_connection(addr, timeout=5) as slow:
            slow.sendall(b"GET / HTTP/1.1\r\n")
            start = time.monotonic()
            assert read_until_eof(slow).startswith(b"HTTP/1.1 408 ")
            assert time.monotonic() - start < 0.3 + LATE
        with socket.create_connection(addr, timeout=5) as idle:
            assert http_get(idle).startswith(b"HTTP/1.1 200 ")
            start = time.monotonic()
            assert read_until_eof(idle) == b""
            took = time.monotonic() - start
            assert 0.6 - TICK <= took < 0.6 + LATE, took


def test_netreactor_example_redis_timeout_flag():
    with Server(["example", "redis", "--listen", "tcp://127.0.0.1:0", "--timeout", "0.3"]) as server:
        with socket.create_connection(_port_of(server.serving()), timeout=5) as s:
            assert ping(s) == b"+PONG\r\n"
            start = time.monotonic()
            assert read_until_eof(s) == b""
            assert time.monotonic() - start < 0.3 + LATE


def test_a_flag_of_another_example_is_a_usage_error():
    proc = subprocess.run([sys.executable, "-m", "netreactor", "example", "echo", "--timeout", "3"],
                          cwd=REPO, env=_env(), capture_output=True, text=True, timeout=20,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 2, proc.stderr
    assert "--timeout is a flag of the redis example, not of echo" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "netreactor", "example", "http", "--header-timeout",
                           "soon"], cwd=REPO, env=_env(), capture_output=True, text=True, timeout=20,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 2 and "expected a number of seconds" in proc.stderr, proc.stderr


APP = '''
import netreactor as nr

class Echo(nr.EventHandler):
    def on_traffic(self, conn):
        conn.write(conn.read())

app = Echo()
'''


def test_netreactor_run_engine_option_flags(tmp_path):
    (tmp_path / "tapp.py").write_text(APP)
    args = ["run", "tapp:app", "--listen", "tcp://127.0.0.1:0", "--idle-timeout", "0.3",
            "--max-connections", "2", "--max-connections-per-ip", "5", "--debug"]
    with Server(args, cwd=tmp_path) as server:
        addr = _port_of(server.serving())
        a = socket.create_connection(addr, timeout=5)
        b = socket.create_connection(addr, timeout=5)
        for s in (a, b):
            s.sendall(b"x")
            assert s.recv(1) == b"x"
        c = socket.create_connection(addr, timeout=5)  # waits in the backlog: max_connections=2
        c.sendall(b"y")
        c.settimeout(0.15)
        with pytest.raises(socket.timeout):
            c.recv(1)
        # a and b go idle and are closed (idle_timeout): c is served.
        assert read_until_eof(a) == b"" and read_until_eof(b) == b""
        c.settimeout(5)
        assert c.recv(1) == b"y"
        for s in (a, b, c):
            s.close()


def test_max_connections_is_per_worker(tmp_path):
    """With workers=2 and max_connections=1, at most one connection per worker
    is served at a time; the others wait in the backlog and are served later."""
    (tmp_path / "tapp.py").write_text(APP)
    args = ["run", "tapp:app", "--listen", "tcp://127.0.0.1:0", "--workers", "2",
            "--max-connections", "1"]
    with Server(args, cwd=tmp_path) as server:
        addr = _port_of(server.serving())
        socks = [socket.create_connection(addr, timeout=5) for _ in range(6)]
        for s in socks:
            s.sendall(b"x")
        served = []
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline and len(served) < len(socks):
            readable, _, _ = select.select([s for s in socks if s not in served], [], [], 0.1)
            for s in readable:
                assert s.recv(1) == b"x"
                served.append(s)
        assert 1 <= len(served) <= 2, len(served)  # one per worker at most
        waiting = [s for s in socks if s not in served]
        for s in served:
            s.close()
        deadline = time.monotonic() + 10
        while waiting:  # each close lets a waiting one in (on the same worker)
            assert time.monotonic() < deadline, f"{len(waiting)} never served"
            readable, _, _ = select.select(waiting, [], [], 0.5)
            for s in readable:
                assert s.recv(1) == b"x"
                s.close()
                waiting.remove(s)
