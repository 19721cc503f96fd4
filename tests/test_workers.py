"""Worker processes under a supervisor (netreactor.workers), through the real
command line: every server here is ``python -m netreactor run ...`` in its
own process group, bound to 127.0.0.1 port 0 or a Unix socket in a temp dir,
and killed (the whole group) when the test ends.

Nothing sleeps to wait for a race to settle: tests wait for log lines the
supervisor and workers print, or for a connection to answer, always with a
deadline.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import List, Optional, Set

import pytest

import netreactor as nr
from netreactor import supervisor as workers

REPO = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"

pytestmark = pytest.mark.skipif(not hasattr(os, "fork") or not hasattr(socket, "SO_REUSEPORT"),
                                reason="worker processes need fork and SO_REUSEPORT")

# The application every test serves. Each connection is greeted with the
# worker's pid as soon as it is accepted (so a client learns who serves it
# without sending anything), then each request line gets an answer.
APP = textwrap.dedent('''
    import os, time
    import netreactor as nr

    class Greet(nr.EventHandler):
        def on_open(self, conn):
            conn.write(b"%d\\n" % os.getpid())

        def on_traffic(self, conn):
            data = conn.peek()
            end = data.rfind(b"\\n")
            if end < 0:
                return None
            conn.discard(end + 1)
            for line in data[:end].split(b"\\n"):
                if line.startswith(b"big "):
                    conn.write(b"B" * int(line[4:]))
                elif line == b"sleep":          # keep this worker busy for a second
                    conn.write(b"sleeping\\n")
                    conn.flush()
                    time.sleep(1.0)
                    conn.write(b"woke\\n")
                elif line == b"hang":           # a worker that never gets back to its loop
                    conn.write(b"hanging\\n")
                    conn.flush()
                    time.sleep(60)
                elif line == b"quit":
                    conn.write(b"bye\\n")
                    return nr.Action.SHUTDOWN
                else:
                    conn.write(b"%d\\n" % os.getpid())
            return None

    class UdpPid(nr.EventHandler):
        def on_traffic(self, conn):
            conn.read()
            conn.write(b"%d\\n" % os.getpid())

    class Crash(nr.EventHandler):
        def on_boot(self, engine):
            raise RuntimeError("boom at boot")
''')

READY = re.compile(r"all (\d+) workers ready on (\S+?)(?:, \S+)* \(pids ([\d, ]+)\)")


class Server:
    """``python -m netreactor ARGS`` in a new session; stderr lines collected by a thread."""

    def __init__(self, args: List[str], cwd: Path, preexec_fn=None) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        env["PYTHONUNBUFFERED"] = "1"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "netreactor", *args], cwd=cwd, env=env,
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            start_new_session=True, preexec_fn=preexec_fn)
        self.lines: List[str] = []
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for raw in self.proc.stderr:
            with self._cond:
                self.lines.append(raw.decode("utf-8", "replace").rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self.lines.append("<EOF>")
            self._cond.notify_all()

    def wait_line(self, pattern: str, timeout: float = 10.0, start: int = 0) -> re.Match:
        """First line (from index ``start``) matching ``pattern``; fail after ``timeout``."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._cond:
            i = start
            while True:
                while i < len(self.lines):
                    match = regex.search(self.lines[i])
                    if match:
                        return match
                    i += 1
                left = deadline - time.monotonic()
                if left <= 0 or (self.lines and self.lines[-1] == "<EOF>"):
                    pytest.fail(f"no line matching {pattern!r} within {timeout}s; got:\n" +
                                "\n".join(self.lines[-40:]))
                self._cond.wait(left)

    def mark(self) -> int:
        with self._cond:
            return len(self.lines)

    def ready(self, timeout: float = 15.0, start: int = 0):
        """(port or address, [worker pids]) from the supervisor's "all N workers ready" line."""
        match = self.wait_line(READY.pattern, timeout, start)
        pids = [int(p) for p in match.group(3).split(",")]
        return match.group(2), pids

    def signal(self, sig: int) -> None:
        os.kill(self.proc.pid, sig)

    def wait_exit(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"server did not exit within {timeout}s:\n" + "\n".join(self.lines[-40:]))

    def kill(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # the supervisor and every worker
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            pass
        self._reader.join(5)
        self.proc.stderr.close()


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    (tmp_path / "wapp.py").write_text(APP)
    return tmp_path


@pytest.fixture
def serve(app_dir: Path):
    started: List[Server] = []

    def start(*args: str, app: str = "wapp:Greet", preexec_fn=None) -> Server:
        server = Server(["run", app, *args], app_dir, preexec_fn)
        started.append(server)
        return server

    yield start
    for server in started:
        server.kill()


def tcp_port(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


def connect(target, timeout: float = 5.0) -> socket.socket:
    if isinstance(target, str):  # a Unix socket path
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        sock.connect(target)
        return sock
    return socket.create_connection((HOST, target), timeout=timeout)


def readline(sock: socket.socket) -> bytes:
    buf = bytearray()
    while not buf.endswith(b"\n"):
        chunk = sock.recv(1)
        if not chunk:
            raise ConnectionError(f"EOF after {bytes(buf)!r}")
        buf += chunk
    return bytes(buf[:-1])


def greeting_pid(target, timeout: float = 5.0) -> int:
    """Open a connection and return the pid of the worker that accepted it."""
    with connect(target, timeout) as sock:
        return int(readline(sock))


def pids_answering(target, want: Set[int], timeout: float = 10.0, avoid: Optional[int] = None) -> Set[int]:
    """Connect repeatedly until every pid in ``want`` has answered; never ``avoid``."""
    seen: Set[int] = set()
    deadline = time.monotonic() + timeout
    while not want <= seen:
        assert time.monotonic() < deadline, f"only {seen} answered within {timeout}s, wanted {want}"
        pid = greeting_pid(target)
        assert pid != avoid, f"dead worker {avoid} answered"
        seen.add(pid)
    return seen


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie nobody reaped counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    return state not in (b"Z", b"X")


def parent_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat", "rb") as f:
        return int(f.read().rsplit(b")", 1)[1].split()[1])


def wait_gone(pids, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while any(alive(p) for p in pids):
        assert time.monotonic() < deadline, f"still running after {timeout}s: {[p for p in pids if alive(p)]}"
        time.sleep(0.02)


# ---------------------------------------------------------------------------- serving


def test_two_workers_both_serve(serve):
    server = serve("--listen", f"tcp://{HOST}:0", "--workers", "2")
    address, pids = server.ready()
    assert len(set(pids)) == 2 and server.proc.pid not in pids
    # SO_REUSEPORT spreads connections by hash: both workers answer soon enough.
    assert pids_answering(tcp_port(address), set(pids)) == set(pids)
    for pid in pids:
        assert parent_of(pid) == server.proc.pid
    # Logs say which worker speaks.
    for pid in pids:
        server.wait_line(rf"\[worker \d pid {pid}\] serving tcp://{HOST}:\d+ on 1 loop")
    server.signal(signal.SIGTERM)
    assert server.wait_exit(10) == 0
    wait_gone(pids)


def test_kill_9_of_a_worker_is_repaired(serve):
    server = serve("--listen", f"tcp://{HOST}:0", "--workers", "2")
    address, pids = server.ready()
    port = tcp_port(address)
    victim, survivor = pids
    mark = server.mark()
    os.kill(victim, signal.SIGKILL)
    server.wait_line(rf"worker 0 \(pid {victim}\) was killed by SIGKILL", start=mark)
    new_pid = int(server.wait_line(r"\[worker 0 pid (\d+)\] serving", start=mark).group(1))
    assert new_pid not in pids
    # Service continues on both slots; the dead pid never answers again (connections
    # queued on its socket while it was down are served by its replacement).
    assert pids_answering(port, {survivor, new_pid}, avoid=victim) == {survivor, new_pid}
    assert not alive(victim)


def test_worker_stopped_by_a_foreign_signal_is_replaced(serve):
    server = serve("--listen", f"tcp://{HOST}:0", "--workers", "2")
    address, pids = server.ready()
    mark = server.mark()
    os.kill(pids[1], signal.SIGTERM)  # not from the supervisor: a replacement, not a shutdown
    server.wait_line(rf"worker 1 \(pid {pids[1]}\) stopped on a signal the supervisor did not send",
                     start=mark)
    new_pid = int(server.wait_line(r"\[worker 1 pid (\d+)\] serving", start=mark).group(1))
    assert pids_answering(tcp_port(address), {pids[0], new_pid}, avoid=pids[1])


def test_sigterm_stops_everything_and_delivers_inflight_replies(serve):
    server = serve("--listen", f"tcp://{HOST}:0", "--workers", "2", "--shutdown-timeout", "5")
    address, pids = server.ready()
    port = tcp_port(address)
    size = 4_000_000
    busy = connect(port)
    idle = connect(port)
    try:
        readline(busy), readline(idle)
        busy.sendall(b"big %d\n" % size)
        first = busy.recv(1)  # the reply has started; most of it is queued in the worker
        assert first == b"B"
        started = time.monotonic()
        server.signal(signal.SIGTERM)
        server.wait_line(r"received SIGTERM: stopping 2 worker")
        assert idle.recv(1) == b""  # an idle connection is closed at once
        idle.close()  # as a peer does on EOF (the worker's lingering close waits for it)
        received = 1
        while True:
            chunk = busy.recv(1 << 20)
            if not chunk:
                break
            received += len(chunk)
        busy.close()
        assert received == size  # the in-flight reply was delivered whole, then EOF
        assert server.wait_exit(10) == 0
        assert time.monotonic() - started < 5 + workers.KILL_GRACE
    finally:
        busy.close()
        idle.close()
    wait_gone(pids)


def test_sigterm_gives_up_on_a_client_that_never_reads(serve):
    server = serve("--listen", f"tcp://{HOST}:0", "--workers", "2", "--shutdown-timeout", "0.5")
    address, pids = server.ready()
    with connect(tcp_port(address)) as stuck:
        readline(stuck)
        stuck.sendall(b"big 4000000\n")
        assert stuck.recv(1) == b"B"
        started = time.monotonic()
        server.signal(signal.SIGTERM)
        assert server.wait_exit(10) == 0  # the worker closed the connection after 0.5 s
        assert time.monotonic() - started < 0.5 + workers.KILL_GRACE
    wait_gone(pids)


def test_a_worker_stuck_in_a_callback_is_killed(serve):
    server = serve("--listen", f"tcp://{HOST}:0", "--workers", "2", "--shutdown-timeout", "0.2")
    address, pids = server.ready()
    port = tcp_port(address)
    hung = None
    with connect(port) as sock:
        hung = int(readline(sock))
        sock.sendall(b"hang\n")
        assert readline(sock) == b"hanging"  # that worker now sleeps in on_traffic, away from its loop
        started = time.monotonic()
        server.signal(signal.SIGTERM)
        server.wait_line(r"did not stop within .*; killing it", timeout=10)
        assert server.wait_exit(10) == 0
    assert time.monotonic() - started < 0.2 + workers.KILL_GRACE + 3
    server.wait_line(rf"worker \d \(pid {hung}\) was killed by SIGKILL")
    wait_gone(pids)


def test_sighup_rolls_workers_without_refusing_a_connection(serve):
    server = serve("--listen", f"tcp://{HOST}:0", "--workers", "2")
    address, old = server.ready()
    port = tcp_port(address)
    errors: List[BaseException] = []
    answered: List[int] = []
    stop = threading.Event()

    def client() -> None:
        # A fresh connection every time: each must be accepted and greeted,
        # before, during and after the roll.
        while not stop.is_set():
            try:
                answered.append(greeting_pid(port))
            except BaseException as exc:  # refused, reset, timeout: all failures
                errors.append(exc)
                return

    thread = threading.Thread(target=client, daemon=True)
    thread.start()
    try:
        pids_seen_before = len(answered)
        mark = server.mark()
        server.signal(signal.SIGHUP)
        match = server.wait_line(r"restarted all 2 workers \(pids (\d+), (\d+)\)", start=mark)
        new = [int(match.group(1)), int(match.group(2))]
        assert not set(new) & set(old)
        deadline = time.monotonic() + 10
        while not set(new) <= set(answered[pids_seen_before:]) and not errors:
            assert time.monotonic() < deadline, "the new workers did not both answer"
            time.sleep(0.01)
    finally:
        stop.set()
        thread.join(10)
    assert not errors, f"a client failed during the roll: {errors[0]!r}"
    wait_gone(old)
    assert set(answered) <= set(old) | set(new)
    server.signal(signal.SIGTERM)
    assert server.wait_exit(10) == 0


def test_sighup_roll_lets_open_connections_finish(serve):
    """A retired worker stops accepting but serves its open connections until
    they close (issue 10, item 7): no EOF one second after SIGHUP."""
    server = serve("--listen", f"tcp://{HOST}:0", "--workers", "2", "--graceful-timeout", "30")
    address, old = server.ready()
    port = tcp_port(address)
    with connect(port) as sock:
        pid = int(readline(sock))
        mark = server.mark()
        server.signal(signal.SIGHUP)
        server.wait_line(r"restarted all 2 workers", start=mark)
        time.sleep(1.5)  # the old code closed every connection about a second after SIGHUP
        for _ in range(3):
            sock.sendall(b"who\n")
            assert int(readline(sock)) == pid  # still served by the retired worker
        assert alive(pid)
    wait_gone([pid])  # it leaves once its last connection is closed


def test_sighup_roll_closes_stragglers_after_graceful_timeout(serve):
    server = serve("--listen", f"tcp://{HOST}:0", "--workers", "2", "--graceful-timeout", "1")
    address, old = server.ready()
    with connect(tcp_port(address), timeout=15) as sock:
        pid = int(readline(sock))
        mark = server.mark()
        started = time.monotonic()
        server.signal(signal.SIGHUP)
        server.wait_line(r"restarted all 2 workers", start=mark)
        assert sock.recv(1) == b""  # a clean EOF once graceful_timeout has passed
        assert 1.0 <= time.monotonic() - started < 1.0 + 5 + workers.KILL_GRACE
    wait_gone([pid])


def test_unix_socket_shared_by_several_workers(serve, tmp_path):
    path = str(tmp_path / "w.sock")
    server = serve("--listen", f"unix://{path}", "--workers", "3")
    address, pids = server.ready()
    assert address == f"unix://{path}" and len(pids) == 3
    # Keep one worker busy: the next connection must be accepted by another one
    # (the shared socket wakes an idle worker, EPOLLEXCLUSIVE).
    with connect(path) as busy:
        first = int(readline(busy))
        busy.sendall(b"sleep\n")
        assert readline(busy) == b"sleeping"
        other = greeting_pid(path)
        assert other != first and other in pids
        assert readline(busy) == b"woke"
    # A worker dying does not take the socket file with it.
    mark = server.mark()
    os.kill(first, signal.SIGKILL)
    server.wait_line(r"\[worker \d pid \d+\] serving", start=mark)
    assert os.path.exists(path)
    assert greeting_pid(path) != first
    server.signal(signal.SIGTERM)
    assert server.wait_exit(10) == 0
    assert not os.path.exists(path)  # the supervisor removes it when it stops


def test_udp_datagrams_spread_over_workers(serve):
    server = serve("--listen", f"udp://{HOST}:0", "--workers", "2", "--loops", "2", app="wapp:UdpPid")
    address, pids = server.ready()
    port = tcp_port(address)
    seen: Set[int] = set()
    deadline = time.monotonic() + 10
    while seen != set(pids):  # every new source port hashes anew over the workers' sockets
        assert time.monotonic() < deadline, f"only {seen} answered, wanted {pids}"
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(5)
            sock.sendto(b"who?", (HOST, port))
            pid = int(sock.recv(100))
        assert pid in pids
        seen.add(pid)
    server.signal(signal.SIGTERM)
    assert server.wait_exit(10) == 0


def test_crash_loop_gives_up_with_a_clear_message(serve):
    server = serve("--listen", f"tcp://{HOST}:0", "--workers", "2", app="wapp:Crash")
    assert server.wait_exit(30) == 1
    server.wait_line("<EOF>")
    last = [line for line in server.lines if line != "<EOF>"][-1]
    assert last.startswith("netreactor: error: worker ")
    assert f"crashed {workers.CRASH_LIMIT} times in a row" in last
    assert "giving up" in last and "RuntimeError: boom at boot" in last
    with pytest.raises(ProcessLookupError):  # no worker left behind
        os.killpg(server.proc.pid, 0)


def test_application_shutdown_stops_every_worker(serve):
    server = serve("--listen", f"tcp://{HOST}:0", "--workers", "2")
    address, pids = server.ready()
    with connect(tcp_port(address)) as sock:
        readline(sock)
        sock.sendall(b"quit\n")
        assert readline(sock) == b"bye"
    assert server.wait_exit(10) == 0
    server.wait_line(r"the application shut its engine down; stopping all workers")
    wait_gone(pids)


def test_workers_exit_when_the_supervisor_dies(serve):
    server = serve("--listen", f"tcp://{HOST}:0", "--workers", "2")
    address, pids = server.ready()
    os.kill(server.proc.pid, signal.SIGKILL)
    server.wait_exit(5)
    wait_gone(pids, timeout=10)  # the lifeline pipe closed: each worker stopped itself


def _two_cpus() -> List[int]:
    return sorted(os.sched_getaffinity(0))[:2]


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs sched_setaffinity")
def test_cpu_affinity_pins_each_worker(serve):
    cpus = sorted(os.sched_getaffinity(0))
    server = serve("--listen", f"tcp://{HOST}:0", "--workers", "2", "--cpu-affinity")
    _, pids = server.ready()
    index = {}
    for pid in pids:
        match = server.wait_line(rf"\[worker (\d) pid {pid}\] serving")
        index[pid] = int(match.group(1))
    for pid in pids:
        assert os.sched_getaffinity(pid) == {cpus[index[pid] % len(cpus)]}


@pytest.mark.skipif(not nr.gil_enabled() or not hasattr(os, "sched_setaffinity"),
                    reason="multicore means worker processes on GIL builds")
def test_multicore_starts_one_worker_per_cpu(serve):
    cpus = _two_cpus()
    # Limit the server to (at most) two CPUs so this stays cheap on a big machine.
    server = serve("--listen", f"tcp://{HOST}:0", "--multicore",
                   preexec_fn=lambda: os.sched_setaffinity(0, cpus))
    match = server.wait_line(READY.pattern, timeout=15)
    if len(cpus) == 1:
        pytest.skip("one CPU: multicore serves in one process")
    assert int(match.group(1)) == len(cpus)


# ---------------------------------------------------------------------------- in-process API


def test_worker_count_follows_the_options():
    assert workers.worker_count(nr.Options()) == 1
    assert workers.worker_count(nr.Options(workers=1)) == 1
    assert workers.worker_count(nr.Options(workers=3)) == 3
    assert workers.worker_count(nr.Options(workers=2, multicore=True)) == 2
    expected = len(os.sched_getaffinity(0)) if nr.gil_enabled() else 1
    assert workers.worker_count(nr.Options(multicore=True)) == expected


def test_current_worker_is_none_outside_workers():
    assert workers.current_worker() is None


def test_start_with_workers_needs_the_main_thread():
    engine = nr.Engine(nr.EventHandler(), f"tcp://{HOST}:0", workers=2)
    with pytest.raises(RuntimeError, match="main thread"):
        engine.start(timeout=10)
