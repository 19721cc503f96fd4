"""The benchmark's yardsticks serve the protocol they claim to.

``bench/servers.py`` kinds ``py-floor`` and ``c-floor`` set the floors that
netreactor's CPU per message is compared with; a floor that cut corners (lost
bytes, answered partial frames) would make every comparison meaningless. Each
is checked here byte for byte, echo and framed, with frames split across reads.
So are the TLS kinds of bench/tls.py (the two TLS floors, asyncio's and
uvloop's TLS servers): ciphertext cut at random, a trickled handshake, coalesced
records, close_notify answered, a plaintext client on the TLS port.
"""

from __future__ import annotations

import random
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import recv_exact

REPO = Path(__file__).resolve().parents[1]
SERVERS = REPO / "bench" / "servers.py"
HAVE_CC = any(shutil.which(c) for c in ("cc", "gcc", "clang"))

_NEEDS_CC = pytest.mark.skipif(not HAVE_CC, reason="no C compiler")
CASES = [pytest.param(kind, proto, id=f"{kind}-{proto}", marks=[_NEEDS_CC] if kind == "c-floor" else [])
         for kind in ("py-floor", "c-floor", "netreactor") for proto in ("echo", "framed")]
CASES.append(pytest.param("py-api-floor", "echo", id="py-api-floor-echo"))


def _serve(kind: str, proto: str, port: int) -> subprocess.Popen:
    check = subprocess.run([sys.executable, str(SERVERS), "--check", kind, "--proto", proto],
                           capture_output=True, text=True, timeout=120)
    assert check.returncode == 0, check.stderr
    return subprocess.Popen([sys.executable, str(SERVERS), kind, "--port", str(port), "--proto", proto],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _connect(port: int, proc: subprocess.Popen):
    import socket

    deadline = time.monotonic() + 20
    while True:
        try:
            return socket.create_connection(("127.0.0.1", port), timeout=10)
        except OSError:
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "server did not start listening"
            time.sleep(0.05)


@pytest.mark.parametrize("kind, proto", CASES)
def test_floor_servers_serve_their_protocol(kind, proto):
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = _serve(kind, proto, port)
    try:
        rng = random.Random(3)
        payloads = [rng.randbytes(rng.choice([0, 1, 64, 3000, 70_000])) for _ in range(200)]
        stream = b"".join(struct.pack(">I", len(p)) + p for p in payloads)
        with _connect(port, proc) as s:
            i = 0
            if proto == "framed":
                # Half a header gets no reply until the rest arrives.
                s.sendall(stream[:3])
                s.settimeout(0.2)
                with pytest.raises(socket.timeout):
                    s.recv(1)
                i = 3
            echoed = bytearray()
            while i < len(stream):  # random cuts; take what came back after each
                n = rng.choice([1, 5, 68, 4096, 65_536])
                s.settimeout(10)
                s.sendall(stream[i:i + n])
                i += n
                s.setblocking(False)
                try:
                    while chunk := s.recv(1 << 20):
                        echoed += chunk
                except BlockingIOError:
                    pass
            s.settimeout(10)
            echoed += recv_exact(s, len(stream) - len(echoed))
        assert echoed == stream
    finally:
        proc.kill()
        proc.wait(10)


# ---------------------------------------------------------------------------- TLS kinds
#
# bench/tls.py compares netreactor's TLS transport with uvloop's and asyncio's
# and with two bare pure-Python TLS loops; a loop that mishandled a partial
# record, coalesced records or a trickled handshake would look cheaper than it
# is.  The client below drives an ssl.SSLObject over memory BIOs on a blocking
# socket, so each test decides exactly which TLS bytes reach the server when.

import socket  # noqa: E402
import ssl  # noqa: E402

TLS_KINDS = ["py-floor-tls-bio", "py-floor-tls-sock", "asyncio-tls", "uvloop-tls"]


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory):
    trustme = pytest.importorskip("trustme")
    d = tmp_path_factory.mktemp("tls")
    ca = trustme.CA(key_type=trustme.KeyType.RSA)
    leaf = ca.issue_cert("localhost", "127.0.0.1", key_type=trustme.KeyType.RSA)
    leaf.private_key_and_cert_chain_pem.write_to_path(str(d / "server.pem"))
    ca.cert_pem.write_to_path(str(d / "ca.pem"))
    return d


@pytest.fixture(params=TLS_KINDS)
def tls_server(request, tls_files):
    kind = request.param
    check = subprocess.run([sys.executable, str(SERVERS), "--check", kind], capture_output=True,
                           text=True, timeout=120)
    if check.returncode != 0:
        pytest.skip(check.stderr.strip())
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    pem = str(tls_files / "server.pem")
    proc = subprocess.Popen([sys.executable, str(SERVERS), kind, "--port", str(port),
                             "--certfile", pem, "--keyfile", pem],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _connect(port, proc).close()
    yield port, str(tls_files / "ca.pem")
    proc.kill()
    proc.wait(10)


class _Client:
    """TLS 1.3 over memory BIOs on a blocking socket: who sends what, when, is the test's."""

    def __init__(self, port: int, ca: str):
        ctx = ssl.create_default_context(cafile=ca)
        self.inc, self.out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.obj = ctx.wrap_bio(self.inc, self.out, server_hostname="localhost")
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)

    def handshake(self, trickle: bool = False) -> None:
        while True:
            try:
                self.obj.do_handshake()
            except ssl.SSLWantReadError:
                pass
            else:
                self.flush()
                return
            data = self.out.read()
            if trickle:  # one byte per send, a pause between: many partial records
                for i in range(len(data)):
                    self.sock.sendall(data[i:i + 1])
                    time.sleep(0.0005)
            else:
                self.sock.sendall(data)
            self.feed()

    def flush(self) -> None:
        data = self.out.read()
        if data:
            self.sock.sendall(data)

    def feed(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("server closed")
        self.inc.write(chunk)

    def recv_exact(self, n: int) -> bytes:
        got = bytearray()
        while len(got) < n:
            try:
                got += self.obj.read(n - len(got))
            except ssl.SSLWantReadError:
                self.feed()
        return bytes(got)


def test_tls_echo_random_cuts(tls_server):
    """Byte-exact echo of 200 messages of 0 B .. 70 KB, the ciphertext cut at random."""
    port, ca = tls_server
    c = _Client(port, ca)
    c.handshake()
    rng = random.Random(5)
    payload = b"".join(rng.randbytes(rng.choice([1, 64, 3000, 70_000])) for _ in range(200))
    for i in range(0, len(payload), 50_000):
        c.obj.write(payload[i:i + 50_000])
    cipher = c.out.read()
    i, echoed = 0, bytearray()
    c.sock.settimeout(10)
    while i < len(cipher):  # random cuts through records; read back between sends
        n = rng.choice([1, 5, 100, 4096, 20_000])
        c.sock.sendall(cipher[i:i + n])
        i += n
        c.sock.setblocking(False)
        try:
            while chunk := c.sock.recv(1 << 20):
                c.inc.write(chunk)
        except BlockingIOError:
            pass
        c.sock.settimeout(10)
        while True:
            try:
                echoed += c.obj.read(1 << 20)
            except ssl.SSLWantReadError:
                break
    echoed += c.recv_exact(len(payload) - len(echoed))
    assert echoed == payload


def test_tls_trickled_handshake_and_record(tls_server):
    """A handshake sent one byte at a time, then one record in three pieces: no stall."""
    port, ca = tls_server
    c = _Client(port, ca)
    c.handshake(trickle=True)
    c.obj.write(b"hello, trickle")
    record = c.out.read()
    for piece in (record[:3], record[3:10], record[10:]):
        c.sock.sendall(piece)
        time.sleep(0.05)
    assert c.recv_exact(14) == b"hello, trickle"


def test_tls_coalesced_records_all_echoed(tls_server):
    """Twenty records in one TCP write: each is decrypted and echoed, none waits in OpenSSL
    for a readable event that will not come."""
    port, ca = tls_server
    c = _Client(port, ca)
    c.handshake()
    msgs = [bytes([65 + i]) * (i + 1) for i in range(20)]
    for m in msgs:
        c.obj.write(m)  # one record each
    c.sock.sendall(c.out.read())
    assert c.recv_exact(sum(map(len, msgs))) == b"".join(msgs)


def test_tls_close_notify_is_answered(tls_server):
    """The client's close_notify gets the server's close_notify back (a graceful TLS close)."""
    port, ca = tls_server
    c = _Client(port, ca)
    c.handshake()
    c.obj.write(b"x")
    c.flush()
    assert c.recv_exact(1) == b"x"
    try:
        c.obj.unwrap()
    except ssl.SSLWantReadError:
        pass
    c.flush()
    while True:
        try:
            c.obj.unwrap()
            break
        except ssl.SSLWantReadError:
            c.feed()


def test_tls_plaintext_client_costs_only_its_connection(tls_server):
    """Garbage on the TLS port closes that connection; a TLS client beside it is served."""
    port, ca = tls_server
    good = _Client(port, ca)
    good.handshake()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as bad:
        bad.sendall(b"GET / HTTP/1.0\r\n\r\n" * 20)
        bad.settimeout(10)
        try:
            while bad.recv(65536):  # an alert, perhaps, then EOF
                pass
        except ConnectionResetError:
            pass
    good.obj.write(b"still here")
    good.flush()
    assert good.recv_exact(10) == b"still here"
