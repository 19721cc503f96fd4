"""Shared fixtures: error-log policing, the serving matrix, and client helpers.

Every test fails if the engine logs an error it did not expect (the uvloop
test-suite habit): a test that provokes one takes the ``expected_errors``
fixture and asserts on what was logged.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import socket
import tempfile
import threading
from typing import Iterator, List

import pytest

import netreactor as nr
from netreactor.reactor.pollers import epoll_available


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: List[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(autouse=True)
def _engine_errors(request):
    """Fail the test on any ERROR logged under ``netreactor`` unless it asked for them."""
    cap = _Capture()
    logger = logging.getLogger("netreactor")
    logger.addHandler(cap)
    request.node._nr_errors = cap.records
    try:
        yield cap.records
    finally:
        logger.removeHandler(cap)
    if "expected_errors" not in request.fixturenames and cap.records:
        lines = "\n".join(f"{r.levelname} {r.getMessage()}" for r in cap.records)
        pytest.fail(f"unexpected errors logged by the engine:\n{lines}")


@pytest.fixture
def expected_errors(request) -> List[logging.LogRecord]:
    """The ERROR records logged during the test (the test asserts on them)."""
    return request.node._nr_errors


# ---------------------------------------------------------------- the serving matrix

def _configs():
    pollers = [("selectors", False)]
    if epoll_available():
        pollers = [("epoll", False), ("epoll", True)] + pollers
    out = []
    for poller, et in pollers:
        name = "epoll-et" if et else poller
        base = dict(poller=poller, edge_triggered=et)
        out.append(pytest.param(dict(base, loops=1), id=f"{name}-1loop"))
        for lb in nr.options.LOAD_BALANCERS:
            out.append(pytest.param(dict(base, loops=4, lb=lb), id=f"{name}-4loops-{lb}"))
        out.append(pytest.param(dict(base, loops=4, reuse_port=True), id=f"{name}-4loops-reuseport"))
    return out


CONFIGS = _configs()
# A smaller cut for scenarios whose behaviour does not depend on balancing.
CORE_CONFIGS = [c for c in CONFIGS if "least" not in c.id and "hash" not in c.id]
TRANSPORTS = ["tcp", "unix"]


@pytest.fixture
def unix_path() -> Iterator[str]:
    d = tempfile.mkdtemp(prefix="nr-test-")
    path = os.path.join(d, "s.sock")
    try:
        yield path
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)
        os.rmdir(d)


@pytest.fixture
def pair():
    """A non-blocking ``socket.socketpair()``, closed after the test."""
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    try:
        yield a, b
    finally:
        a.close()
        b.close()


def address_for(transport: str, unix_path: str) -> str:
    return "tcp://127.0.0.1:0" if transport == "tcp" else f"unix://{unix_path}"


@contextlib.contextmanager
def serving(handler: nr.EventHandler, *addrs: str, **options) -> Iterator[nr.Engine]:
    """Run an engine in a background thread for the ``with`` block; stop it after."""
    engine = nr.Engine(handler, *addrs, **options).start()
    try:
        yield engine
    finally:
        engine.stop()
        assert engine.wait(15), "engine did not stop within 15 s"
        if engine._thread is not None:
            engine._thread.join(5)


@contextlib.contextmanager
def serving_port(handler: nr.EventHandler, **options) -> Iterator[int]:
    """Serve ``handler`` on a free 127.0.0.1 TCP port; yield the port number."""
    engine = nr.Engine(handler, "tcp://127.0.0.1:0", **options)
    engine.start()
    try:
        yield int(engine.addresses[0].rsplit(":", 1)[1])
    finally:
        engine.stop()
        engine.wait(10)


def connect(address: str, timeout: float = 10.0) -> socket.socket:
    """A blocking client socket connected to a bound engine address."""
    if address.startswith("unix://"):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(timeout)
        s.connect(address[len("unix://"):])
        return s
    rest = address.split("://", 1)[1]
    host, port = rest.rsplit(":", 1)
    s = socket.create_connection((host.strip("[]"), int(port)), timeout=timeout)
    return s


def exchange(port: int, data: bytes, wait: float = 5.0):
    """Send ``data`` to 127.0.0.1:``port``; return (all bytes received, whether the server closed).

    Reads until the server closes, or until it stays silent for 0.3 s after
    the first bytes (``wait`` s before any).
    """
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as s:
        s.sendall(data)
        received = b""
        while True:
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                return received, False
            except ConnectionResetError:
                return received, True
            if not chunk:
                return received, True
            received += chunk
            s.settimeout(0.3)


def recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(min(1 << 20, n - len(buf)))
        if not chunk:
            raise ConnectionError(f"EOF after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


def recv_until_eof(sock: socket.socket) -> bytes:
    buf = bytearray()
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return bytes(buf)
        buf += chunk


def wait_for(predicate, timeout: float = 10.0, what: str = "condition") -> None:
    """Poll ``predicate`` until true; fail after ``timeout`` seconds."""
    event = threading.Event()
    deadline = timeout
    step = 0.005
    waited = 0.0
    while not predicate():
        if waited >= deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        event.wait(step)
        waited += step
        step = min(step * 2, 0.05)


@pytest.fixture
def fake_resolver(monkeypatch):
    """Answer ``*.invalid`` with EAI_NONAME and ``slow.test`` only once released,
    without asking any DNS server; other names are not expected here."""
    release = threading.Event()
    real = socket.getaddrinfo

    def getaddrinfo(host, port, family=0, type=0, proto=0, flags=0):
        if isinstance(host, str) and host.endswith(".invalid"):
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        if host == "slow.test":
            release.wait(10)
            return real("127.0.0.1", port, family or socket.AF_INET, type, proto, flags)
        try:
            ipaddress.ip_address(host)  # a literal address: no lookup happens
        except ValueError:
            raise AssertionError(f"unexpected name lookup for {host!r}") from None
        return real(host, port, family, type, proto, flags)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return release


# ---------------------------------------------------------------- TLS


@pytest.fixture(scope="session")
def tls_pki(tmp_path_factory):
    """Certificates made for the test session with trustme (no key is committed):
    a CA; a server certificate for localhost, 127.0.0.1 and ::1; a client one;
    and, from the same CA, an expired server certificate and one for another host."""
    trustme = pytest.importorskip("trustme")
    import datetime

    d = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    files = {}

    def save(name, blob):
        path = d / name
        blob.write_to_path(str(path))
        files[name] = str(path)

    save("ca.pem", ca.cert_pem)
    for name, cert in {
        "server": ca.issue_cert("localhost", "127.0.0.1", "::1"),
        "server2": ca.issue_cert("localhost", "127.0.0.1", "::1"),  # for rotation
        "client": ca.issue_cert("client.test", common_name="client.test"),
        "expired": ca.issue_cert("localhost", "127.0.0.1",
                                 not_after=datetime.datetime(2001, 1, 1, tzinfo=datetime.timezone.utc)),
        "otherhost": ca.issue_cert("other.example", "10.9.9.9"),
    }.items():
        save(f"{name}.pem", cert.cert_chain_pems[0])
        save(f"{name}.key", cert.private_key_pem)
    files["dir"] = str(d)
    return files
