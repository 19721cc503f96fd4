"""The benchmark's yardsticks serve the protocol they claim to.

``bench/servers.py`` kinds ``py-floor`` and ``c-floor`` set the floors that
netreactor's CPU per message is compared with; a floor that cut corners (lost
bytes, answered partial frames) would make every comparison meaningless. Each
is checked here byte for byte, echo and framed, with frames split across reads.
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
