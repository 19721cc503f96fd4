"""A real HAProxy for tests, and a socket server that records what it receives.

    from _haproxy import HAProxy, CaptureServer, haproxy_missing, listening_socket

    front = listening_socket("127.0.0.1")                  # bound by us: no port race
    with CaptureServer("127.0.0.1") as backend, HAProxy(f'''
    frontend fe
        bind fd@{front.fileno()}
        default_backend be
    backend be
        server s1 {backend.host}:{backend.port} send-proxy-v2
    ''', pass_fds=[front]) as haproxy:
        ...                                                # connect to front.getsockname()
        received = backend.wait_connection()               # the header and what followed
        haproxy.command("show stat")                       # the runtime API, e.g. for health checks

Frontends are sockets the test binds itself and hands to HAProxy (``bind fd@N``),
so the port is known before HAProxy starts and nothing can take it in between.
HAProxy runs in the foreground (``-db``) with a ``global`` section (a runtime API
socket) and ``defaults`` (TCP mode, short timeouts) written by this module; the
text given adds the frontends and backends. It is ready once its runtime API
answers ``show info``; it stops on SIGTERM (SIGKILL after 5 s). All addresses
are loopback or Unix sockets.

Tests skip with the reason where HAProxy is missing: ``pytest.mark.skipif(haproxy_missing() ...)``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from types import TracebackType

__all__ = ["HAPROXY_DEFAULTS", "CaptureServer", "HAProxy", "client", "haproxy_missing", "listening_socket"]

#: The ``defaults`` section every configuration gets (a section of its own overrides it).
HAPROXY_DEFAULTS = """\
defaults
    mode tcp
    timeout connect 2s
    timeout client 10s
    timeout server 10s
"""


def haproxy_binary() -> str | None:
    return shutil.which("haproxy") or next(
        (p for p in ("/usr/sbin/haproxy", "/usr/local/sbin/haproxy") if os.access(p, os.X_OK)), None)


def haproxy_missing() -> str | None:
    """Why HAProxy cannot be used here, or None when it can."""
    if haproxy_binary() is None:
        return "haproxy is not installed (Debian package 'haproxy')"
    return None


def listening_socket(host: str = "127.0.0.1", port: int = 0, *, family: int | None = None,
                     path: str | None = None, backlog: int = 64) -> socket.socket:
    """A listening TCP socket on loopback (or a Unix one at ``path``), inheritable by HAProxy."""
    if path is not None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(path)
    else:
        fam = family or (socket.AF_INET6 if ":" in host else socket.AF_INET)
        sock = socket.socket(fam, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    sock.listen(backlog)
    return sock


class HAProxy:
    """``haproxy -db`` running ``config`` (frontends and backends) for a ``with`` block."""

    def __init__(self, config: str, *, pass_fds: Iterable[socket.socket | int] = (),
                 ready_timeout: float = 10.0, global_extra: str = "") -> None:
        binary = haproxy_binary()
        if binary is None:
            raise RuntimeError(haproxy_missing())
        self.binary = binary
        self.config = config
        self.pass_fds = tuple(s if isinstance(s, int) else s.fileno() for s in pass_fds)
        self.ready_timeout = ready_timeout
        self.global_extra = global_extra
        self.dir = ""
        self.admin_path = ""
        self.proc: subprocess.Popen[bytes] | None = None
        self._log = b""

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> HAProxy:
        self.dir = tempfile.mkdtemp(prefix="nr-haproxy-")
        self.admin_path = os.path.join(self.dir, "admin.sock")
        config_path = os.path.join(self.dir, "haproxy.cfg")
        text = (f"global\n    stats socket {self.admin_path} mode 600 level admin\n"
                f"    maxconn 512\n{self.global_extra}\n")
        if "\ndefaults" not in "\n" + self.config:
            text += HAPROXY_DEFAULTS
        text += self.config
        with open(config_path, "w") as f:
            f.write(text)
        check = subprocess.run([self.binary, "-c", "-q", "-f", config_path], capture_output=True, check=False,
                               pass_fds=self.pass_fds, timeout=30)
        if check.returncode != 0:
            raise RuntimeError(f"haproxy refused its configuration:\n{check.stdout.decode()}"
                               f"{check.stderr.decode()}\n--- config ---\n{text}")
        self.proc = subprocess.Popen([self.binary, "-db", "-f", config_path], pass_fds=self.pass_fds,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + self.ready_timeout
        while True:
            if self.proc.poll() is not None:
                out = self.proc.stdout.read().decode() if self.proc.stdout else ""
                raise RuntimeError(f"haproxy exited with status {self.proc.returncode}:\n{out}")
            try:
                if "Pid:" in self.command("show info", timeout=1.0):
                    return self
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"haproxy did not answer on its runtime API within "
                                   f"{self.ready_timeout}s:\n{self.log}")
            time.sleep(0.02)

    def command(self, line: str, timeout: float = 5.0) -> str:
        """One runtime API command (``show stat``, ``disable server be/s1`` ...); its answer."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(self.admin_path)
            s.sendall(line.encode() + b"\n")
            chunks = []
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    return b"".join(chunks).decode()
                chunks.append(chunk)

    @property
    def log(self) -> str:
        """What HAProxy printed (complete once stopped)."""
        return self._log.decode(errors="replace")

    def stop(self) -> None:
        proc = self.proc
        if proc is not None and proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                out, _ = proc.communicate(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                out, _ = proc.communicate(timeout=5)
            self._log = out or b""
        if self.dir:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = ""

    def __enter__(self) -> HAProxy:  # noqa: PYI034 - Self needs Python 3.11
        return self.start()

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


class CaptureServer:
    """Accepts on a loopback (or Unix) socket and records, per connection, every byte
    received until the peer closes its side. ``reply``, when given, is sent once
    ``reply_after`` bytes have arrived (0: at once)."""

    def __init__(self, host: str = "127.0.0.1", *, path: str | None = None, reply: bytes = b"",
                 reply_after: int = 0, timeout: float = 10.0) -> None:
        self.sock = listening_socket(host, path=path)
        self.sock.settimeout(0.2)
        self.path = path
        self.host, self.port = (host, self.sock.getsockname()[1]) if path is None else ("", 0)
        self.reply = reply
        self.reply_after = reply_after
        self.timeout = timeout
        self.received: list[bytes] = []
        self._cond = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._serve, name="capture-server", daemon=True)
        self._workers: list[threading.Thread] = []

    @property
    def address(self) -> str:
        """``host:port`` (IPv6 bracketed), as a HAProxy ``server`` line wants it."""
        if self.path is not None:
            return f"unix@{self.path}"
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def __enter__(self) -> CaptureServer:  # noqa: PYI034 - Self needs Python 3.11
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stopping = True
        self._thread.join(5)
        for t in self._workers:
            t.join(5)
        self.sock.close()

    def _serve(self) -> None:
        while not self._stopping:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            t = threading.Thread(target=self._read, args=(conn,), daemon=True)
            self._workers.append(t)
            t.start()

    def _read(self, conn: socket.socket) -> None:
        data = bytearray()
        replied = not self.reply
        conn.settimeout(self.timeout)
        with conn:
            try:
                while True:
                    if not replied and len(data) >= self.reply_after:
                        conn.sendall(self.reply)
                        replied = True
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    data += chunk
            except OSError:
                pass
        with self._cond:
            self.received.append(bytes(data))
            self._cond.notify_all()

    def wait_connection(self, count: int = 1, timeout: float = 10.0) -> bytes:
        """The bytes of the ``count``-th finished connection (waiting for it)."""
        with self._cond:
            if not self._cond.wait_for(lambda: len(self.received) >= count, timeout):
                raise TimeoutError(f"the capture server saw {len(self.received)} finished "
                                   f"connection(s), not {count}, within {timeout}s")
            return self.received[count - 1]


@contextlib.contextmanager
def client(address: tuple[str, int] | str, timeout: float = 10.0) -> Iterator[socket.socket]:
    """A blocking client socket to a TCP ``(host, port)`` or a Unix path."""
    if isinstance(address, str):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    else:
        sock = socket.socket(socket.AF_INET6 if ":" in address[0] else socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(address)
        yield sock
    finally:
        sock.close()
