"""The example scripts in netreactor/examples/ (each runnable with
``python3 -m netreactor.examples.NAME``, each exercised here), their
``netreactor example`` registry entries, and the Python blocks of the UDP,
client and worker-pool docs.

The proxy test relays megabytes to a reader that first does not read at all,
then reads slowly, and checks that back-pressure held both directions and
that the proxy's buffers stayed within its high-water mark plus one read.
"""

from __future__ import annotations

import importlib
import os
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import List

import pytest

import netreactor as nr
from conftest import connect, recv_exact, serving, wait_for

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs"
SCRIPTS = ["tcp_proxy", "udp_echo", "push", "blocking_offload"]

tcp_proxy = importlib.import_module("netreactor.examples.tcp_proxy")
udp_echo = importlib.import_module("netreactor.examples.udp_echo")
push_on_tick = importlib.import_module("netreactor.examples.push")
blocking_offload = importlib.import_module("netreactor.examples.blocking_offload")


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def _target(address: str):
    host, port = address.split("://", 1)[1].rsplit(":", 1)
    return host.strip("[]"), int(port)


class Script:
    """A server subprocess, read on stderr until the engine says where it serves."""

    def __init__(self, argv: List[str]) -> None:
        self.proc = subprocess.Popen([sys.executable, *argv], cwd=REPO, env=_env(),
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, start_new_session=True)
        self.log = b""

    def serving(self, timeout: float = 15.0) -> List[str]:
        deadline = time.monotonic() + timeout
        fd = self.proc.stderr.fileno()
        while True:
            match = re.search(rb"serving (.+) on \d+ loop", self.log)
            if match:
                return match.group(1).decode().split(", ")
            left = deadline - time.monotonic()
            readable, _, _ = select.select([fd], [], [], max(0.0, left))
            chunk = os.read(fd, 65536) if readable else b""
            if not chunk:
                pytest.fail(f"{self.proc.args} did not report serving within {timeout}s: {self.log!r}")
            self.log += chunk

    def stop(self) -> int:
        """Ctrl-C, as a user would; the exit status."""
        self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(10)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{self.proc.args} did not stop on SIGINT within 10 s")

    def close(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self.proc.stdout.close()
        self.proc.stderr.close()


class Echo(nr.EventHandler):
    def on_traffic(self, conn):
        conn.write(conn.read())


# ---------------------------------------------------------------- every script runs


@pytest.mark.parametrize("script", SCRIPTS)
def test_script_help(script):
    r = subprocess.run([sys.executable, "-m", f"netreactor.examples.{script}", "--help"], cwd=REPO, env=_env(),
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert "usage:" in r.stdout and "--listen" in r.stdout


def test_registry_lists_udp_echo_and_push():
    from netreactor.examples import DESCRIPTIONS, EXAMPLES as REGISTRY, load_example as load

    for name in ("udp-echo", "push"):
        assert name in REGISTRY and name in DESCRIPTIONS
        handler = load(name)()
        assert isinstance(handler, nr.EventHandler)


# ---------------------------------------------------------------- TCP proxy

SMALL = 64 * 1024  # socket buffers: small, so back-pressure shows after little data


class SmallBufferProxy(tcp_proxy.Proxy):
    """The example proxy, with small kernel buffers on its upstream sockets too."""

    def _dialed(self, pair, destination, err):
        if destination is not None:
            destination.set_read_buffer(SMALL)
            destination.set_write_buffer(SMALL)
        super()._dialed(pair, destination, err)


def test_proxy_relays_megabytes_to_a_slow_reader_with_bounded_buffers():
    size = 8 << 20
    data = os.urandom(size)
    small = dict(socket_recv_buffer=SMALL, socket_send_buffer=SMALL)
    with serving(Echo(), "tcp://127.0.0.1:0", **small) as upstream:
        proxy = SmallBufferProxy(upstream.addresses[0])
        with serving(proxy, "tcp://127.0.0.1:0", loops=2, write_high_water=192 * 1024,
                     write_low_water=48 * 1024, **small) as engine:
            assert proxy.high_water == 128 * 1024  # write_high_water minus one read
            s = connect(engine.addresses[0], timeout=30)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL)
            sender = threading.Thread(target=s.sendall, args=(data,), daemon=True)
            sender.start()
            try:
                # Nobody reads the replies: the proxy stops reading the upstream
                # (destination -> source), the echo server then stops reading the
                # proxy, and the proxy stops reading the source: the sender blocks.
                wait_for(lambda: proxy.pauses["destination"] and proxy.pauses["source"],
                         timeout=15, what="back-pressure in both directions")
                assert sender.is_alive(), "all 8 MiB were taken without anyone reading"
                got = bytearray()
                while len(got) < size:  # a slow reader: small reads
                    chunk = s.recv(16384)
                    if not chunk:
                        pytest.fail(f"proxy closed after {len(got)} of {size} bytes")
                    got += chunk
                sender.join(15)
                assert bytes(got) == data
            finally:
                s.close()
            wait_for(lambda: engine.count_connections() == 0, what="both proxy connections closed")
    # What any proxy connection owed its peer never passed high water plus one read.
    assert 0 < proxy.peak_buffered <= proxy.high_water + engine.options.read_buffer_cap
    assert proxy.relayed >= 2 * size


def test_proxy_closes_the_client_when_the_upstream_refuses(caplog):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as refusing:
        refusing.bind(("127.0.0.1", 0))  # bound, not listening: connects are refused
        proxy = tcp_proxy.Proxy(f"tcp://127.0.0.1:{refusing.getsockname()[1]}")
        with serving(proxy, "tcp://127.0.0.1:0") as engine:
            with connect(engine.addresses[0]) as s:
                assert s.recv(10) == b""
            wait_for(lambda: proxy.dial_errors == 1, what="the dial error counted")
    assert any("failed" in r.getMessage() and r.levelname == "WARNING" for r in caplog.records)


def test_proxy_bad_upstream_address():
    with pytest.raises(ValueError):
        tcp_proxy.Proxy("nonsense")


def test_proxy_script(unix_path):
    with serving(Echo(), f"unix://{unix_path}") as upstream:
        script = Script(["-m", "netreactor.examples.tcp_proxy", "--listen", "tcp://127.0.0.1:0",
                         "--upstream", upstream.addresses[0], "--loops", "2"])
        try:
            address = script.serving()[0]
            for _ in range(3):
                with connect(address) as s:
                    payload = os.urandom(300_000)
                    s.sendall(payload)
                    assert recv_exact(s, len(payload)) == payload
            assert script.stop() == 0
        finally:
            script.close()


# ---------------------------------------------------------------- UDP echo


def test_udp_echo_handler_with_and_without_sessions():
    for opts in ({}, {"udp_session_timeout": 30.0}):
        handler = udp_echo.UDPEcho()
        seen = []
        handler.on_close = lambda conn, err: seen.append(conn.context)
        with serving(handler, "udp://127.0.0.1:0", loops=2, **opts) as engine:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.settimeout(5)
                for n in (0, 1, 1500, 65507):
                    payload = os.urandom(n)
                    s.sendto(payload, _target(engine.addresses[0]))
                    assert s.recv(65536) == payload
        # With sessions, each peer's context counted its datagrams.
        assert seen == ([4] if opts else [])


def test_udp_echo_script_and_client_mode():
    script = Script(["-m", "netreactor.examples.udp_echo", "--listen", "udp://127.0.0.1:0", "--loops", "2"])
    try:
        address = script.serving()[0]
        r = subprocess.run([sys.executable, "-m", "netreactor.examples.udp_echo", "--to", address,
                            "--send", "hello", "--send", "netreactor"], cwd=REPO, env=_env(),
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr
        assert r.stdout.split() == ["hello", "netreactor"]
        assert udp_echo.send(address, [b"in-process", b""]) == [b"in-process", b""]
        assert script.stop() == 0
    finally:
        script.close()


def test_netreactor_example_udp_echo():
    script = Script(["-m", "netreactor", "example", "udp-echo", "--listen", "udp://127.0.0.1:0"])
    try:
        address = script.serving()[0]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(5)
            s.sendto(b"registry", _target(address))
            assert s.recv(100) == b"registry"
        script.stop()
    finally:
        script.close()


# ---------------------------------------------------------------- push on tick


def _read_ticks(s: socket.socket, n: int) -> List[int]:
    buf = b""
    while buf.count(b"\n") < n:
        chunk = s.recv(4096)
        if not chunk:
            pytest.fail(f"connection closed after {buf!r}")
        buf += chunk
    ticks = []
    for line in buf.split(b"\n")[:n]:
        word, number, stamp = line.split()
        assert word == b"tick" and float(stamp) > 0
        ticks.append(int(number))
    return ticks


@pytest.mark.parametrize("loops", [1, 3])
def test_push_reaches_every_client(loops):
    handler = push_on_tick.PushOnTick(interval=0.02)
    with serving(handler, "tcp://127.0.0.1:0", loops=loops, ticker=True) as engine:
        clients = [connect(engine.addresses[0]) for _ in range(6)]
        try:
            wait_for(lambda: engine.count_connections() == 6, what="six clients")
            for s in clients:
                ticks = _read_ticks(s, 3)
                assert ticks == sorted(ticks) and len(set(ticks)) == 3
        finally:
            for s in clients:
                s.close()
        wait_for(lambda: not handler._conns, what="closed clients forgotten")


def test_push_script():
    script = Script(["-m", "netreactor.examples.push", "--listen", "tcp://127.0.0.1:0",
                     "--interval", "0.05", "--loops", "2"])
    try:
        address = script.serving()[0]
        with connect(address) as s:
            assert len(_read_ticks(s, 2)) == 2
        assert script.stop() == 0
    finally:
        script.close()


def test_netreactor_example_push():
    script = Script(["-m", "netreactor", "example", "push", "--ticker",
                     "--listen", "tcp://127.0.0.1:0"])
    try:
        with connect(script.serving()[0]) as s:
            assert len(_read_ticks(s, 1)) == 1  # the first tick comes at once
        script.stop()
    finally:
        script.close()


# ---------------------------------------------------------------- blocking offload


def test_blocking_offload_replies_in_order():
    commands = [b"sleep 0.05", b"upper abc", b"hash netreactor", b"bogus", b"sleep 0.01",
                b"upper z", b"sleep 99"]
    with nr.WorkerPool(4, 8) as pool:
        handler = blocking_offload.BlockingOffload(pool)
        with serving(handler, "tcp://127.0.0.1:0", loops=2) as engine:
            clients = [connect(engine.addresses[0]) for _ in range(3)]
            try:
                for s in clients:
                    s.sendall(b"\n".join(commands) + b"\n")
                for s in clients:
                    buf = b""
                    while buf.count(b"\n") < len(commands):
                        buf += s.recv(4096)
                    lines = buf.decode().splitlines()
                    assert lines[0] == "slept 0.05" and lines[1] == "ABC"
                    assert re.fullmatch(r"[0-9a-f]{64}", lines[2])
                    assert lines[3] == "ERR unknown command 'bogus'"
                    assert lines[4:6] == ["slept 0.01", "Z"]
                    assert lines[6].startswith("ERR sleep takes")
            finally:
                for s in clients:
                    s.close()


def test_blocking_offload_script():
    script = Script(["-m", "netreactor.examples.blocking_offload", "--listen", "tcp://127.0.0.1:0",
                     "--workers", "2"])
    try:
        with connect(script.serving()[0]) as s:
            s.sendall(b"sleep 0.01\nupper ok\n")
            assert recv_exact(s, len(b"slept 0.01\nOK\n")) == b"slept 0.01\nOK\n"
        assert script.stop() == 0
    finally:
        script.close()


# ---------------------------------------------------------------- docs


def _python_blocks(path: Path) -> List[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)


DOC_BLOCKS = [pytest.param(doc, i, id=f"{doc}-{i}")
              for doc in ("udp.md", "client.md", "pool.md", "asyncio.md")
              for i in range(len(_python_blocks(DOCS / doc)) if (DOCS / doc).exists() else 0)]


def test_docs_have_runnable_blocks():
    for doc in ("udp.md", "client.md", "pool.md", "asyncio.md"):
        assert _python_blocks(DOCS / doc), f"docs/{doc} has no python block"


@pytest.mark.parametrize("doc, index", DOC_BLOCKS)
def test_doc_block_runs(doc, index, tmp_path):
    code = _python_blocks(DOCS / doc)[index]
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=_env(),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, f"docs/{doc} block {index} failed:\n{code}\n{r.stdout}\n{r.stderr}"
