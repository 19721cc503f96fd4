"""Child processes of the benchmarks: servers, load generators, and their cleanup.

Every child runs in its own session (so Ctrl-C reaches only the harness,
which then stops them in order), optionally pinned to CPUs before it execs
(so every thread it creates inherits the pinning), with ``PR_SET_PDEATHSIG``
so that even a ``kill -9`` of the harness leaves nothing behind, and with the
source tree first on ``PYTHONPATH``.  It is stopped with its whole process
group: SIGTERM, then SIGKILL.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import resource
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import IO, Any, Callable, Iterable, Optional, Sequence

from _common import HOST, REPO_ROOT, BenchError, Interrupted

try:
    _prctl: Optional[Callable[..., int]] = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):  # not glibc/Linux: no parent-death signal
    _prctl = None

_PR_SET_PDEATHSIG = 1


def child_setup(cpus: Optional[Iterable[int]] = None) -> Callable[[], None]:
    """A ``preexec_fn``: die with the harness, and run on ``cpus`` if given."""
    pinned = set(cpus) if cpus is not None else None

    def setup() -> None:
        if _prctl is not None:
            _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if pinned:
            os.sched_setaffinity(0, pinned)

    return setup


def child_env() -> dict:
    """The environment of a child: ours, with the source tree first on PYTHONPATH."""
    path = os.pathsep.join(filter(None, [REPO_ROOT, os.environ.get("PYTHONPATH")]))
    return dict(os.environ, PYTHONPATH=path)


def spawn(cmd: Sequence[str], cpus: Optional[Iterable[int]] = None, **kw: Any) -> subprocess.Popen:
    """Start ``cmd`` in its own session, pinned to ``cpus``, dying with us."""
    kw.setdefault("env", child_env())
    return subprocess.Popen(list(cmd), start_new_session=True, preexec_fn=child_setup(cpus),
                            close_fds=True, **kw)


def kill_group(proc: subprocess.Popen, grace: float = 3.0) -> None:
    """Stop a child we started and every process it started (its own group).

    SIGTERM, ``grace`` seconds, then SIGKILL.  Once the leader we signalled
    is gone, what is left of its group (a supervisor's workers) gets SIGKILL
    too: nothing of a run may outlive it.  A child that had exited on its own
    before this call is only reaped (its group id may be free again).
    """
    if proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        if proc.poll() is not None:
            break
        try:
            os.killpg(proc.pid, sig)  # the child leads its own session/group
        except ProcessLookupError:
            break
        except PermissionError:
            proc.send_signal(sig)
        try:
            proc.wait(wait)
            break
        except subprocess.TimeoutExpired:
            continue
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def raise_fd_limit() -> None:
    """Soft RLIMIT_NOFILE up to the hard limit: thousands of connections need fds."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# ---------------------------------------------------------------------------- readiness probes


def tcp_accepts(port: int) -> bool:
    """True once something accepts TCP connections on 127.0.0.1:``port``."""
    try:
        with socket.create_connection((HOST, port), timeout=0.5):
            return True
    except OSError:
        return False


def udp_echoes(port: int) -> bool:
    """True once a probe datagram to 127.0.0.1:``port`` comes back."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect((HOST, port))
        s.settimeout(0.05)
        try:
            s.send(b"probe")
            return s.recv(100) == b"probe"
        except OSError:  # refused (not bound yet) or timed out
            return False


# ---------------------------------------------------------------------------- servers


class ServerProc:
    """A server subprocess (stdout and stderr to a log file), stopped on exit.

    ``cpu``: the CPU (or CPUs) it is pinned to from before it execs.

    The log is deleted after a successful run and kept, with its path printed,
    when the run failed.  ``what`` names it in messages ("server", "proxy").
    """

    def __init__(self, name: str, argv: Sequence[str], port: int,
                 cpu: Optional[int | Sequence[int]] = None, cwd: Optional[str] = None,
                 what: str = "server"):
        self.name, self.port = name, port
        self.label = f"{name} {what}" if what and not name.endswith(what) else name
        self.what = what
        self.log = tempfile.NamedTemporaryFile(prefix=f"bench-{name}-", suffix=".log", delete=False)
        cpus = [cpu] if isinstance(cpu, int) else cpu
        self.proc = spawn(argv, cpus, cwd=cwd,
                          stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT)
        self.pid = self.proc.pid

    def tail(self, n: int = 2000) -> str:
        """The last ``n`` bytes the server wrote."""
        try:
            with open(self.log.name, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - n))
                return f.read().decode(errors="replace").strip()
        except OSError:
            return ""

    def log_matches(self, pattern: str, count: int = 1) -> bool:
        """True when ``count`` lines of the log match ``pattern``."""
        try:
            with open(self.log.name, "rb") as f:
                text = f.read().decode(errors="replace")
        except OSError:
            return False
        return len(re.findall(pattern, text, re.M)) >= count

    def wait_ready(self, timeout: float = 20.0,
                   probe: Optional[Callable[[], bool]] = None) -> None:
        """Poll ``probe`` (default: a TCP connect to the port) until it is true.

        Fails, with the end of the server's log, if the server exits first or
        ``timeout`` passes.
        """
        ready = probe or (lambda: tcp_accepts(self.port))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive(verb="exited")
            if ready():
                return
            time.sleep(0.02)
        raise BenchError(f"{self.label} was not ready within {timeout:.0f} s:\n{self.tail()}")

    def check_alive(self, verb: str = "died") -> None:
        if self.proc.poll() is not None:
            raise BenchError(f"{self.label} {verb} (exit {self.proc.returncode}):\n{self.tail()}")

    def stop(self, failed: bool = False) -> None:
        """Kill the server's group and close its log; keep the log only if ``failed``."""
        kill_group(self.proc)
        self.log.close()
        if failed:
            print(f"  ({self.what} log kept at {self.log.name})", file=sys.stderr)
        else:
            try:
                os.unlink(self.log.name)
            except OSError:
                pass

    def __enter__(self) -> "ServerProc":
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        failed = exc_type is not None and not issubclass(exc_type, (KeyboardInterrupt, Interrupted))
        self.stop(failed)


# ---------------------------------------------------------------------------- load generators


class LoadgenProc:
    """A load generator and its line protocol: one JSON object per line on stdout.

    loadgen.c, tlsloadgen.c, udploadgen.c and the Python generators all print
    ``connected``, ``start``, ``end`` and ``result`` events; :meth:`expect`
    waits for one.  Closing stdin (:meth:`release`) lets a ``--hold``
    generator close its connections and print its result.
    """

    def __init__(self, argv: Sequence[str], cpus: Optional[Iterable[int]] = None):
        self.err: IO[bytes] = tempfile.TemporaryFile()
        self.proc = spawn(argv, cpus, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.err)
        self.sel = selectors.DefaultSelector()
        assert self.proc.stdout is not None and self.proc.stdin is not None
        self.stdout, self.stdin = self.proc.stdout, self.proc.stdin
        self.sel.register(self.stdout, selectors.EVENT_READ)
        self.buf = b""
        self.events: list[dict] = []

    def stderr(self) -> str:
        self.err.seek(0)
        return self.err.read().decode(errors="replace").strip()[-2000:]

    def expect(self, name: str, timeout: float) -> dict:
        """Block until the event ``name`` arrives; fail on a result, garbage, exit or timeout."""
        deadline = time.monotonic() + timeout
        fd = self.stdout.fileno()
        while True:
            while b"\n" in self.buf:
                line, self.buf = self.buf.split(b"\n", 1)
                try:
                    ev = json.loads(line)
                except ValueError:
                    raise BenchError(f"load generator printed garbage: {line[:200]!r}") from None
                self.events.append(ev)
                if ev.get("event") == name:
                    return ev
                if ev.get("event") == "result":
                    raise BenchError(f"load generator ended before {name!r}: {ev}\n{self.stderr()}")
            left = deadline - time.monotonic()
            if left <= 0:
                raise BenchError(f"timed out waiting for the load generator's {name!r}\n"
                                 f"{self.stderr()}")
            if self.sel.select(left):
                chunk = os.read(fd, 65536)
                if not chunk:
                    self.proc.wait(5)
                    raise BenchError(f"load generator exited ({self.proc.returncode}) before "
                                     f"{name!r}\n{self.stderr()}")
                self.buf += chunk

    def send(self, line: str) -> None:
        """Write one line to the generator's stdin."""
        self.stdin.write(line.encode() + b"\n")
        self.stdin.flush()

    def release(self) -> None:
        """Let the generator close its connections and print its result."""
        try:
            self.stdin.close()
        except OSError:
            pass

    def close(self) -> None:
        self.release()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            pass
        kill_group(self.proc, grace=1.0)
        self.sel.close()
        self.stdout.close()
        self.err.close()


def run_to_end(argv: Sequence[str], cpus: Optional[Iterable[int]], timeout: float,
               cwd: Optional[str] = None) -> tuple[str, float]:
    """Run a load generator (redis-benchmark, wrk) to completion: (stdout, its CPU seconds)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = spawn(argv, cpus, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                 stderr=subprocess.PIPE)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(proc, grace=1.0)
        raise BenchError(f"{argv[0]} did not finish within {timeout:.0f} s") from None
    finally:
        if proc.poll() is None:
            kill_group(proc, grace=1.0)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if proc.returncode != 0:
        raise BenchError(f"{os.path.basename(argv[0])} failed ({proc.returncode}): "
                         f"{err.decode(errors='replace')[-600:]} {out.decode(errors='replace')[-600:]}")
    return out.decode(errors="replace"), cpu
