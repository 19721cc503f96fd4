"""``netreactor check`` (and a bare ``python3 -m netreactor``): boot the echo
example on loopback TCP and a Unix socket, drive it with concurrent clients
(1 B .. 1 MiB, byte-exact, TCP and Unix), clients that reset mid-transfer,
and a graceful stop, and print a report."""

from __future__ import annotations

import os
import random
import select
import shutil
import socket
import struct
import sys
import tempfile
import threading
from time import monotonic
from typing import Any, List, Optional, Tuple

from .. import __version__, speedups
from ..engine import Engine
from ..errors import one_line
from ..runtime import gil_enabled

__all__ = ["self_check"]

PROG = "netreactor"


_PAYLOAD_SIZES = (1, 2, 100, 4096, 65_537, 300_001, 1 << 20)
_CHECK_CLIENTS = 8  # half TCP, half Unix
_CHECK_TIMEOUT = 20.0


def _roundtrip(sock: socket.socket, payload: bytes, deadline: float) -> bytes:
    """Send ``payload`` and read as many bytes back, interleaving both directions
    (the server stops reading while its replies queue up, so a client that
    wrote everything before reading would deadlock on a large payload)."""
    sock.setblocking(False)
    view = memoryview(payload)
    total, sent = len(payload), 0
    got = bytearray()
    poller = select.poll()
    fd = sock.fileno()
    poller.register(fd, select.POLLIN | select.POLLOUT)
    writing = True
    while len(got) < total:
        if writing and sent >= total:
            writing = False
            poller.modify(fd, select.POLLIN)
        left = deadline - monotonic()
        if left <= 0:
            raise TimeoutError(f"echo of {total} bytes: got {len(got)} in time")
        for _, events in poller.poll(left * 1000):
            if writing and events & select.POLLOUT:
                try:
                    sent += sock.send(view[sent:sent + 262_144])
                except BlockingIOError:
                    pass
            if events & (select.POLLIN | select.POLLHUP | select.POLLERR):
                try:
                    chunk = sock.recv(262_144)
                except BlockingIOError:
                    continue
                if not chunk:
                    raise ConnectionError(f"server closed the connection after {len(got)} of "
                                          f"{total} bytes")
                got += chunk
    return bytes(got)


def _connect(address: str, timeout: float) -> socket.socket:
    if address.startswith("unix://"):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        sock.connect(address[len("unix://"):])
        return sock
    host, port = address.split("://", 1)[1].rsplit(":", 1)
    return socket.create_connection((host.strip("[]"), int(port)), timeout=timeout)


def _check_clients(addresses: List[str], deadline: float) -> Tuple[int, int]:
    """Concurrent clients, every payload size on each; returns (messages, bytes)."""
    results: List[Any] = []
    lock = threading.Lock()

    def client(number: int) -> None:
        rng = random.Random(number)
        sizes = list(_PAYLOAD_SIZES)
        rng.shuffle(sizes)
        done = moved = 0
        try:
            with _connect(addresses[number % len(addresses)], 5.0) as sock:
                for size in sizes:
                    payload = rng.randbytes(size) if hasattr(rng, "randbytes") else os.urandom(size)
                    echoed = _roundtrip(sock, payload, deadline)
                    if echoed != payload:
                        first = next(i for i, (a, b) in enumerate(zip(echoed, payload, strict=False)) if a != b)
                        raise AssertionError(f"echo of {size} bytes differs at byte {first}")
                    done += 1
                    moved += size
            outcome: Any = (done, moved)
        except Exception as exc:
            outcome = exc
        with lock:
            results.append(outcome)

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(_CHECK_CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(max(0.0, deadline - monotonic()))
    if len(results) < len(threads):
        raise TimeoutError("some clients did not finish in time")
    errors = [r for r in results if isinstance(r, BaseException)]
    if errors:
        raise errors[0]
    return sum(r[0] for r in results), sum(r[1] for r in results)


def _check_reset(engine: Engine, address: str, deadline: float) -> None:
    """A client that resets mid-transfer must cost the server that connection only."""
    for _ in range(3):
        sock = _connect(address, 5.0)
        sock.sendall(b"x" * 200_000)  # the echo is still flowing back when the RST lands
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
    with _connect(address, 5.0) as sock:
        if _roundtrip(sock, b"still there?", deadline) != b"still there?":
            raise AssertionError("echo after a client reset differs")
    while engine.count_connections():
        if monotonic() > deadline:
            raise TimeoutError(f"{engine.count_connections()} connections still open after the "
                               "clients left")
        threading.Event().wait(0.01)


def self_check(out: Any = None) -> int:
    """Boot the echo example on loopback TCP and a Unix socket, check it, print a report.

    Returns 0 when every check passed, 1 otherwise. Takes about a second.
    """
    from ..examples import load_example

    out = out or sys.stdout
    started = monotonic()
    deadline = started + _CHECK_TIMEOUT
    build = "GIL" if gil_enabled() else "free-threaded"
    print(f"{PROG} {__version__} self-check: Python {sys.version.split()[0]} ({build}), "
          f"{os.cpu_count()} CPUs; {speedups.describe()}", file=out)
    tmp = tempfile.mkdtemp(prefix="netreactor-check-")
    path = os.path.join(tmp, "echo.sock")
    failed = 0
    engine: Optional[Engine] = None

    def report(ok: bool, what: str) -> None:
        nonlocal failed
        failed += not ok
        print(f"  {'ok  ' if ok else 'FAIL'}  {what}", file=out, flush=True)

    try:
        try:
            engine = Engine(load_example("echo")(), "tcp://127.0.0.1:0", f"unix://{path}")
            engine.start(timeout=10.0)
            addresses = engine.addresses
            report(True, f"echo example serving {' and '.join(addresses)} ({engine.num_loops} loop(s))")
        except Exception as exc:
            report(False, f"booting the echo example: {one_line(exc)}")
            return 1
        t0 = monotonic()
        try:
            messages, moved = _check_clients(addresses, deadline)
            elapsed = monotonic() - t0
            report(True, f"{_CHECK_CLIENTS} concurrent clients (TCP and Unix), payloads "
                         f"1 B .. 1 MiB: {messages} echoes, {moved / (1 << 20):.1f} MiB byte-exact "
                         f"in {elapsed:.2f} s")
        except Exception as exc:
            report(False, f"concurrent echo clients: {one_line(exc)}")
        try:
            _check_reset(engine, addresses[0], deadline)
            report(True, "clients resetting mid-transfer: server kept serving, no connection left")
        except Exception as exc:
            report(False, f"client reset: {one_line(exc)}")
        engine.stop()
        stopped = engine.wait(10.0)
        report(stopped and not os.path.exists(path),
               "graceful stop: engine stopped and its Unix socket file removed" if stopped
               else "graceful stop: engine did not stop within 10 s")
    finally:
        if engine is not None:
            engine.stop()
            engine.wait(5.0)
        shutil.rmtree(tmp, ignore_errors=True)
    verdict = "passed" if not failed else f"FAILED ({failed} check{'s' if failed > 1 else ''})"
    print(f"{verdict} in {monotonic() - started:.2f} s", file=out)
    return 0 if not failed else 1
