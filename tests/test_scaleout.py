"""Scale-out, demonstrated: HAProxy balances one front address over two netreactor
servers (``netreactor run`` processes on 127.0.0.2 and 127.0.0.3, loopback only),
checks their health, and tells them the real client address with PROXY v2.

Killing one server moves every new connection to the other, with no failed request
once HAProxy's check has seen it down; bringing it back restores the balance. This is
the recipe of docs/deployment.md, run for real."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest
from _haproxy import HAProxy, haproxy_missing, listening_socket

pytestmark = pytest.mark.skipif(haproxy_missing() is not None, reason=haproxy_missing() or "")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
APP = textwrap.dedent("""
    import os
    import netreactor as nr

    NAME = os.environ["BACKEND_NAME"].encode()

    class Whoami(nr.EventHandler):
        # One line per request line: "<backend> <client host> <client port>".
        def on_traffic(self, conn):
            data = conn.read()
            host, port = conn.remote_addr[:2]
            for _ in range(data.count(b"\\n")):
                conn.write(b"%s %s %d\\n" % (NAME, host.encode(), port))
""")
#: HAProxy's health check: every 100 ms; 2 failures mark a server down, 2 successes up.
INTER_MS, FALL, RISE = 100, 2, 2


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class Backend:
    """One ``netreactor run`` process serving the app on ``host:port``."""

    def __init__(self, name: str, host: str, port: int, app_dir: str) -> None:
        self.name, self.host, self.port, self.app_dir = name, host, port, app_dir
        self.proc: subprocess.Popen | None = None

    def start(self) -> Backend:
        env = dict(os.environ, BACKEND_NAME=self.name, PYTHONPATH=ROOT)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "netreactor", "run", "app:Whoami", "--app-dir", self.app_dir,
             "--listen", f"tcp://{self.host}:{self.port}", "--proxy-protocol", "v2",
             "--proxy-allow-from", "127.0.0.0/8", "--log-level", "warning"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 15
        while True:  # ready once it answers a LOCAL header (what HAProxy's checks send too)
            assert self.proc.poll() is None, self.proc.stderr.read().decode()  # type: ignore[union-attr]
            try:
                with socket.create_connection((self.host, self.port), timeout=2) as c:
                    c.sendall(b"\r\n\r\n\x00\r\nQUIT\n\x20\x00\x00\x00" + b"ping\n")
                    if c.recv(100).startswith(self.name.encode()):
                        return self
            except OSError:
                pass
            assert time.monotonic() < deadline, f"backend {self.name} did not start"
            time.sleep(0.05)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
            self.proc.stderr.close()  # type: ignore[union-attr]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
            self.proc.stderr.close()  # type: ignore[union-attr]


def _request(front: tuple) -> tuple[str, bool]:
    """One request through HAProxy: (which backend served it, whether it saw our real address)."""
    with socket.create_connection(front, timeout=5) as c:
        c.sendall(b"hello\n")
        line = b""
        while not line.endswith(b"\n"):
            chunk = c.recv(100)
            if not chunk:
                raise ConnectionError(f"closed after {line!r}")
            line += chunk
        name, host, port = line.decode().split()
        return name, (host, int(port)) == c.getsockname()


def _status(haproxy: HAProxy) -> dict:
    """{server: "UP"/"DOWN"/...} from HAProxy's runtime API."""
    out = {}
    for row in haproxy.command("show stat").splitlines():
        cols = row.split(",")
        if len(cols) > 17 and cols[0] == "be" and cols[1] not in ("BACKEND", "FRONTEND"):
            out[cols[1]] = cols[17].split()[0]
    return out


def _wait_status(haproxy: HAProxy, want: dict, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while _status(haproxy) != want:
        assert time.monotonic() < deadline, f"HAProxy says {_status(haproxy)}, expected {want}"
        time.sleep(0.02)


def test_haproxy_balances_two_servers_and_routes_around_a_dead_one(tmp_path):
    (tmp_path / "app.py").write_text(APP)
    port = _free_port("127.0.0.2")
    a = Backend("a", "127.0.0.2", port, str(tmp_path))
    b = Backend("b", "127.0.0.3", port, str(tmp_path))
    try:
        a.start()
        b.start()
        with listening_socket("127.0.0.1") as front_sock, HAProxy(f"""
frontend fe
    bind fd@{front_sock.fileno()}
    default_backend be
backend be
    balance roundrobin
    default-server send-proxy-v2 check check-send-proxy inter {INTER_MS}ms fall {FALL} rise {RISE}
    server a {a.host}:{a.port}
    server b {b.host}:{b.port}
""", pass_fds=[front_sock]) as haproxy:
            front = front_sock.getsockname()
            _wait_status(haproxy, {"a": "UP", "b": "UP"})

            served = [_request(front) for _ in range(20)]
            assert all(real for _, real in served)  # the backends saw the client's own address
            assert sorted(n for n, _ in served).count("a") == 10  # round-robin: an even split

            a.kill()
            _wait_status(haproxy, {"a": "DOWN", "b": "UP"})  # within FALL x INTER of the kill
            served = [_request(front) for _ in range(20)]      # none may fail from here on
            assert [n for n, _ in served] == ["b"] * 20 and all(real for _, real in served)

            a.start()
            _wait_status(haproxy, {"a": "UP", "b": "UP"})
            names = [_request(front)[0] for _ in range(20)]
            assert names.count("a") == names.count("b") == 10  # the balance is back
    finally:
        a.stop()
        b.stop()
