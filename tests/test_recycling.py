"""Worker recycling: max_connections_per_worker (+ jitter, gunicorn's --max-requests) and
max_worker_rss (granian's --workers-max-rss) replace a worker the way SIGHUP does --
successor first, then a graceful retire -- so no request fails meanwhile."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest
from conftest import wait_for

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
APP = textwrap.dedent("""
    import os
    import netreactor as nr

    HOARD = []

    class Pid(nr.EventHandler):
        def on_traffic(self, conn):
            if conn.read() == b"grow":   # a leak: 96 MiB, every page touched
                HOARD.append(b"x" * (96 << 20))
            conn.write(b"%d" % os.getpid())
            return nr.Action.CLOSE
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(tmp_path, *options: str) -> tuple[subprocess.Popen, int]:
    (tmp_path / "pidapp.py").write_text(APP)
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "netreactor", "run", "pidapp:Pid", "--app-dir", str(tmp_path),
                             "-l", f"tcp://127.0.0.1:{port}", "--workers", "2", *options],
                            env=dict(os.environ, PYTHONPATH=ROOT), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    return proc, port


def _ask(port: int, data: bytes = b"?") -> int:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as c:
        c.sendall(data)
        return int(c.recv(20))


def _serving(proc: subprocess.Popen, port: int) -> bool:
    assert proc.poll() is None, proc.stderr.read().decode()  # type: ignore[union-attr]
    try:
        _ask(port)
        return True
    except OSError:
        return False


def _stop(proc: subprocess.Popen) -> str:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err.decode()
    return err.decode()


def test_max_connections_per_worker_with_jitter(tmp_path):
    proc, port = _start(tmp_path, "--max-connections-per-worker", "5",
                        "--max-connections-per-worker-jitter", "3", "--graceful-timeout", "2")
    try:
        wait_for(lambda: _serving(proc, port), timeout=20, what="the workers")
        pids = []
        deadline = time.monotonic() + 30
        while len(set(pids)) < 5:  # every request is answered while workers are replaced
            pids.append(_ask(port))
            assert time.monotonic() < deadline, f"only {len(set(pids))} workers in {len(pids)} requests"
            time.sleep(0.01)
    finally:
        log = _stop(proc)
    limits = [int(n) for n in re.findall(r"max_connections_per_worker, with jitter: (\d+)", log)]
    assert limits and all(5 <= n <= 8 for n in limits), log
    assert "Traceback" not in log and "crash" not in log


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="max_worker_rss reads /proc (Linux)")
def test_max_worker_rss_replaces_a_leaking_worker(tmp_path):
    proc, port = _start(tmp_path, "--max-worker-rss", "80m", "--graceful-timeout", "2")
    try:
        wait_for(lambda: _serving(proc, port), timeout=20, what="the workers")
        leaky = _ask(port, b"grow")
        seen = set()
        deadline = time.monotonic() + 20
        while True:
            pid = _ask(port)
            seen.add(pid)
            if leaky not in seen and len(seen) >= 2:
                break  # two workers answer, neither the leaky one
            if leaky in seen:
                seen.clear()
            assert time.monotonic() < deadline, "the leaking worker was not replaced"
            time.sleep(0.02)
        wait_for(lambda: not os.path.exists(f"/proc/{leaky}"), timeout=10, what="the leaky worker to exit")
    finally:
        log = _stop(proc)
    assert re.search(rf"recycling worker \d \(pid {leaky}\): its resident memory is \d+\.\d MiB "
                     r"\(max_worker_rss: 80\.0 MiB\)", log), log
