"""netreactor.server.activation and fd:// addresses: adopting inherited sockets, in
process, from a parent that passes a descriptor, and under Debian's
systemd-socket-activate (TCP, Unix, datagram, several named sockets)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time

import pytest
from conftest import recv_until_eof

import netreactor as nr
from netreactor.address import MAX_FD, parse_address
from netreactor.server.activation import (
    SD_LISTEN_FDS_START,
    inherit_fd,
    listen_fds,
    socket_address,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ACTIVATE = shutil.which("systemd-socket-activate") or (
    "/usr/bin/systemd-socket-activate" if os.access("/usr/bin/systemd-socket-activate", os.X_OK) else None)


# ---------------------------------------------------------------- fd:// addresses

def test_fd_address_parses():
    a = parse_address("fd://3")
    assert (a.scheme, a.transport, a.family, a.fd) == ("fd", "fd", None, 3)
    assert str(a) == "fd://3" and parse_address(str(a)) == a
    assert parse_address("FD://0").fd == 0 and parse_address(f"fd://{MAX_FD}").fd == MAX_FD
    with pytest.raises(ValueError, match="bound already"):
        a.sockaddr()
    with pytest.raises(ValueError, match="read from the descriptor"):
        _ = a.is_stream


@pytest.mark.parametrize("text, fragment", [
    ("fd://", "no descriptor number"),
    ("fd://x", "descriptor 'x' is not a number"),
    ("fd://-1", "descriptor '-1' is not a number"),
    ("fd://+3", "is not a number"),
    ("fd://3:4", "descriptor '3:4'"),
    ("fd:// 3", "is not a number"),
    ("fd://３", "is not a number"),                 # a full-width digit
    (f"fd://{MAX_FD + 1}", "out of range"),
])
def test_bad_fd_addresses(text, fragment):
    with pytest.raises(ValueError, match=fragment):
        parse_address(text)


def test_unknown_scheme_message_lists_fd():
    with pytest.raises(ValueError, match=r"fd://N"):
        parse_address("sctp://127.0.0.1:1")


# ---------------------------------------------------------------- adopting a descriptor, in process

def _adopt(sock: socket.socket, name: str = ""):
    """inherit_fd on a duplicate, so the test's socket and the record each own a descriptor."""
    fd = os.dup(sock.fileno())
    os.set_inheritable(fd, True)
    return inherit_fd(fd, name)


@pytest.mark.parametrize("family, kind, bind, expected", [
    (socket.AF_INET, socket.SOCK_STREAM, ("127.0.0.1", 0), "tcp://127.0.0.1:{port}"),
    (socket.AF_INET6, socket.SOCK_STREAM, ("::1", 0), "tcp://[::1]:{port}"),
    (socket.AF_INET, socket.SOCK_DGRAM, ("127.0.0.1", 0), "udp://127.0.0.1:{port}"),
    (socket.AF_INET6, socket.SOCK_DGRAM, ("::1", 0), "udp://[::1]:{port}"),
])
def test_inherit_ip_sockets(family, kind, bind, expected):
    with socket.socket(family, kind) as s:
        s.bind(bind)
        if kind == socket.SOCK_STREAM:
            s.listen()
        record = _adopt(s, "web")
        try:
            assert (record.family, record.type, record.name) == (family, kind, "web")
            assert record.is_stream == (kind == socket.SOCK_STREAM)
            assert record.address == expected.format(port=s.getsockname()[1])
            assert parse_address(record.address).port == s.getsockname()[1]
            assert record.sock.fileno() == record.fd and not os.get_inheritable(record.fd)  # CLOEXEC
            assert str(record.fd) in repr(record)
        finally:
            record.sock.close()


def test_inherit_unix_sockets(unix_path):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.bind(unix_path)
        s.listen()
        record = _adopt(s)
        assert record.address == f"unix://{unix_path}" and parse_address(record.address).path == unix_path
        record.sock.close()
    name = f"nr-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.bind("\0" + name)
        s.listen()
        record = _adopt(s)
        assert record.address == f"unix://@{name}" and parse_address(record.address).sockaddr() == "\0" + name
        record.sock.close()
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind(unix_path + ".d")
        record = _adopt(s)
        assert record.type == socket.SOCK_DGRAM and record.address == f"unix://{unix_path}.d"
        record.sock.close()
        os.unlink(unix_path + ".d")


def _refused(fd: int, fragment: str) -> None:
    before = os.fstat(fd)
    with pytest.raises(ValueError, match=fragment) as info:
        inherit_fd(fd)
    assert f"fd {fd}" in str(info.value)
    assert os.fstat(fd).st_ino == before.st_ino  # left open and untouched


def test_inherit_refuses_what_is_not_a_serving_socket(tmp_path):
    with open(tmp_path / "f", "w") as f:
        _refused(f.fileno(), "is a regular file, not a socket")
    r, w = os.pipe()
    try:
        _refused(r, "is a pipe, not a socket")
    finally:
        os.close(r)
        os.close(w)
    with socket.socket() as s:
        _refused(s.fileno(), "not listening")  # neither bound nor listening
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        with socket.create_connection(srv.getsockname()) as conn:
            _refused(conn.fileno(), "stream socket that is not listening")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
        _refused(u.fileno(), "datagram socket that is not bound")
    if hasattr(socket, "AF_NETLINK"):
        with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0) as nl:
            _refused(nl.fileno(), "family")
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as sp:
        sp.bind(f"\0nr-seqpacket-{os.getpid()}")
        sp.listen()
        _refused(sp.fileno(), "type")
    fd = os.open(os.devnull, os.O_RDONLY)
    os.close(fd)
    with pytest.raises(ValueError, match=f"fd {fd} is not an open descriptor"):
        inherit_fd(fd)
    for bad in (-1, True, "3", 3.0):
        with pytest.raises(ValueError, match="integer"):
            inherit_fd(bad)  # type: ignore[arg-type]


def test_socket_address_of_a_wildcard_listener():
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
        s.bind(("::1", 0))
        assert socket_address(s) == f"tcp://[::1]:{s.getsockname()[1]}"


# ---------------------------------------------------------------- listen_fds' environment rules

def test_listen_fds_environment_rules():
    me = str(os.getpid())
    assert listen_fds(environ={}) == []
    env = {"LISTEN_PID": str(os.getpid() + 1), "LISTEN_FDS": "2", "LISTEN_FDNAMES": "a:b"}
    assert listen_fds(environ=env) == [] and env == {}  # another process's: none, and unset (sd_listen_fds)
    env = {"LISTEN_PID": str(os.getpid() + 1), "LISTEN_FDS": "2"}
    assert listen_fds(False, environ=env) == [] and len(env) == 2
    env = {"LISTEN_PID": me, "LISTEN_FDS": "0", "OTHER": "x"}
    assert listen_fds(environ=env) == [] and env == {"OTHER": "x"}
    env = {"LISTEN_PID": me}
    assert listen_fds(environ=env) == []
    for env, fragment in [({"LISTEN_PID": "abc", "LISTEN_FDS": "1"}, r"\$LISTEN_PID='abc'"),
                          ({"LISTEN_PID": me, "LISTEN_FDS": "-1"}, r"\$LISTEN_FDS='-1'"),
                          ({"LISTEN_PID": me, "LISTEN_FDS": "99999"}, "more than"),
                          ({"LISTEN_PID": me, "LISTEN_FDS": "2", "LISTEN_FDNAMES": "a"}, "1 name"),
                          ({"LISTEN_PID": me, "LISTEN_FDS": "1", "LISTEN_FDNAMES": "a:b"}, "2 name")]:
        with pytest.raises(ValueError, match=fragment):
            listen_fds(environ=env)
        assert not any(k.startswith("LISTEN_") for k in env)  # unset even when malformed


# ---------------------------------------------------------------- real children

# A child that adopts what it was given, reports it as one JSON line, then serves
# one echo per stream socket and one reply per datagram socket with plain sockets.
CHILD = textwrap.dedent("""
    import json, os, socket, sys
    from netreactor.address import parse_address
    from netreactor.server.activation import inherit_fd, listen_fds
    mode = sys.argv[1]
    try:
        if mode == "fd":
            socks = [inherit_fd(parse_address(a).fd) for a in sys.argv[2:]]
        else:
            socks = listen_fds()
    except ValueError as exc:
        print(json.dumps({"error": str(exc), "env": sorted(k for k in os.environ if k.startswith("LISTEN_"))}),
              flush=True)
        sys.exit(3)
    report = {"pid": os.getpid(), "env": sorted(k for k in os.environ if k.startswith("LISTEN_")),
              "socks": [{"fd": s.fd, "name": s.name, "stream": s.is_stream, "address": s.address,
                         "cloexec": not os.get_inheritable(s.fd)} for s in socks]}
    print(json.dumps(report), flush=True)
    for s in socks:
        s.sock.settimeout(10)
        if s.is_stream:
            conn, _ = s.sock.accept()
            with conn:
                data = conn.recv(1024)
                conn.sendall(b"echo:" + data + b":" + s.name.encode())
        else:
            data, peer = s.sock.recvfrom(1024)
            s.sock.sendto(b"echo:" + data, peer)
""")


@pytest.fixture
def child_script(tmp_path):
    path = tmp_path / "child.py"
    path.write_text(CHILD)
    return str(path)


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LISTEN_")}
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _report(proc: subprocess.Popen) -> dict:
    line = proc.stdout.readline()
    assert line, f"the child said nothing; stderr: {proc.stderr.read().decode()}"
    return json.loads(line)


def _finish(proc: subprocess.Popen, status: int = 0) -> None:
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
        raise AssertionError("the child did not finish within 10 s") from None
    assert proc.returncode == status, proc.stderr.read().decode()


def _echo(address, data: bytes) -> bytes:
    family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as c:
        c.settimeout(10)
        c.connect(address)
        c.sendall(data)
        return recv_until_eof(c)


def test_parent_passes_fds_to_a_child(child_script, unix_path):
    with socket.socket() as tcp, socket.socket(socket.AF_UNIX) as unix, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        tcp.bind(("127.0.0.1", 0))
        tcp.listen()
        unix.bind(unix_path)
        unix.listen()
        udp.bind(("127.0.0.1", 0))
        fds = [tcp.fileno(), unix.fileno(), udp.fileno()]
        proc = subprocess.Popen([sys.executable, child_script, "fd"] + [f"fd://{fd}" for fd in fds],
                                pass_fds=fds, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            report = _report(proc)
            assert [s["fd"] for s in report["socks"]] == fds
            assert [s["address"] for s in report["socks"]] == [
                f"tcp://127.0.0.1:{tcp.getsockname()[1]}", f"unix://{unix_path}",
                f"udp://127.0.0.1:{udp.getsockname()[1]}"]
            assert [s["stream"] for s in report["socks"]] == [True, True, False]
            assert all(s["cloexec"] for s in report["socks"])
            assert _echo(tcp.getsockname(), b"hi") == b"echo:hi:"
            assert _echo(unix_path, b"there") == b"echo:there:"
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
                c.settimeout(10)
                c.sendto(b"dgram", udp.getsockname())
                assert c.recvfrom(1024)[0] == b"echo:dgram"
            _finish(proc)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)


def test_a_child_refuses_a_passed_connection(child_script):
    """fd:// naming a connected socket (not a listener): a clear error naming the fd."""
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        with socket.create_connection(srv.getsockname()) as conn:
            proc = subprocess.Popen([sys.executable, child_script, "fd", f"fd://{conn.fileno()}"],
                                    pass_fds=[conn.fileno()], env=_env(), stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE)
            report = _report(proc)
            _finish(proc, 3)
            fd = conn.fileno()
    assert report["error"].startswith(f"fd {fd} is a stream socket that is not listening")


LAUNCHER = textwrap.dedent("""
    # Puts the given descriptors at 3, 4, ... and sets LISTEN_* as systemd would, then execs.
    import os, sys
    n = int(sys.argv[1]); fds = [int(x) for x in sys.argv[2:2 + n]]; argv = sys.argv[2 + n:]
    moved = [os.dup(fd) for fd in fds]          # out of the way of 3..3+n first
    for i, fd in enumerate(moved):
        if fd != 3 + i:
            os.dup2(fd, 3 + i)
        os.set_inheritable(3 + i, True)   # os.dup() made it close-on-exec
    os.environ["LISTEN_FDS"] = str(n)
    os.environ["LISTEN_PID"] = os.environ.pop("PID_OVERRIDE", str(os.getpid()))
    os.execv(argv[0], argv)
""")


@pytest.mark.parametrize("names, pid, outcome", [
    ("web:admin", None, "ok"),
    (None, None, "unnamed"),
    ("only-one", None, "error"),
    ("web:admin", "1", "not ours"),
])
def test_listen_fds_in_a_child(child_script, tmp_path, names, pid, outcome):
    """The LISTEN_* protocol with the real descriptors 3 and 4, set up by a launcher."""
    launcher = tmp_path / "launch.py"
    launcher.write_text(LAUNCHER)
    with socket.socket() as a, socket.socket() as b:
        for s in (a, b):
            s.bind(("127.0.0.1", 0))
            s.listen()
        env = _env()
        if names is not None:
            env["LISTEN_FDNAMES"] = names
        if pid is not None:
            env["PID_OVERRIDE"] = pid
        proc = subprocess.Popen([sys.executable, str(launcher), "2", str(a.fileno()), str(b.fileno()),
                                 sys.executable, child_script, "systemd"],
                                pass_fds=[a.fileno(), b.fileno()], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
        try:
            report = _report(proc)
            if outcome == "error":
                assert "$LISTEN_FDNAMES has 1 name(s) for $LISTEN_FDS=2" in report["error"]
                assert report["env"] == []
                _finish(proc, 3)
                return
            assert report["env"] == []  # unset after reading
            if outcome == "not ours":
                assert report["socks"] == []
                _finish(proc)
                return
            assert "socks" in report, report
            socks = report["socks"]
            assert [s["fd"] for s in socks] == [SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + 1]
            assert [s["name"] for s in socks] == (["web", "admin"] if names else ["unknown", "unknown"])
            assert [s["address"] for s in socks] == [f"tcp://127.0.0.1:{s.getsockname()[1]}" for s in (a, b)]
            assert all(s["cloexec"] for s in socks)
            assert _echo(a.getsockname(), b"1") == b"echo:1:" + socks[0]["name"].encode()
            assert _echo(b.getsockname(), b"2") == b"echo:2:" + socks[1]["name"].encode()
            _finish(proc)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)


# ---------------------------------------------------------------- systemd-socket-activate

needs_activate = pytest.mark.skipif(ACTIVATE is None, reason="systemd-socket-activate is not installed "
                                                              "(Debian package 'systemd')")


def _free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _activate(args: list[str], child_script: str) -> subprocess.Popen:
    return subprocess.Popen([ACTIVATE, *args, "-E", f"PYTHONPATH={_env()['PYTHONPATH']}",
                             sys.executable, child_script, "systemd"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _first_connection(proc: subprocess.Popen, port: int) -> socket.socket:
    """Connect once the tool listens (it binds at start; the child is started by this connection)."""
    deadline = time.monotonic() + 10
    while True:
        c = socket.socket()
        c.settimeout(10)
        try:
            c.connect(("127.0.0.1", port))
            return c
        except ConnectionRefusedError:
            c.close()
            assert proc.poll() is None, f"systemd-socket-activate exited: {proc.stderr.read().decode()}"
            assert time.monotonic() < deadline, "systemd-socket-activate did not listen within 10 s"
            time.sleep(0.02)


@needs_activate
def test_systemd_socket_activate_tcp_and_unix_with_names(child_script, unix_path):
    port = _free_port()
    proc = _activate(["-l", f"127.0.0.1:{port}", "-l", unix_path, "--fdname=web:admin"], child_script)
    try:
        with _first_connection(proc, port) as c:
            report = _report(proc)
            c.sendall(b"tcp")
            assert recv_until_eof(c) == b"echo:tcp:web"
        socks = report["socks"]
        assert report["env"] == []
        assert [(s["fd"], s["name"], s["stream"]) for s in socks] == [(3, "web", True), (4, "admin", True)]
        assert [s["address"] for s in socks] == [f"tcp://127.0.0.1:{port}", f"unix://{unix_path}"]
        assert all(s["cloexec"] for s in socks)
        assert _echo(unix_path, b"unix") == b"echo:unix:admin"
        _finish(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


@needs_activate
def test_systemd_socket_activate_datagram(child_script):
    port = _free_port(socket.SOCK_DGRAM)
    proc = _activate(["--datagram", "-l", f"127.0.0.1:{port}"], child_script)
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
            c.settimeout(0.1)
            deadline = time.monotonic() + 10
            # The tool starts the child on the first datagram; until it has bound, datagrams
            # are lost, so one is sent every 100 ms until the child reports.
            while True:
                assert proc.poll() is None, f"systemd-socket-activate exited: {proc.stderr.read().decode()}"
                assert time.monotonic() < deadline, "no child within 10 s"
                c.sendto(b"ping", ("127.0.0.1", port))
                try:
                    reply = c.recvfrom(1024)[0]
                    break
                except TimeoutError:
                    continue
        report = _report(proc)
        assert reply == b"echo:ping"
        (sock,) = report["socks"]
        assert (sock["fd"], sock["name"], sock["stream"]) == (3, "unknown", False)
        assert sock["address"] == f"udp://127.0.0.1:{port}"
        _finish(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


# ---------------------------------------------------------------- the engine (wiring pending)

class _Echo(nr.EventHandler):
    def on_traffic(self, conn):
        conn.write(conn.read())
        return nr.Action.CLOSE


def test_engine_serves_an_inherited_socket(monkeypatch):
    """The engine adopts fd://N and binds nothing for it: any bind() is refused
    here, so an engine that fell back to binding 0.0.0.0 would fail."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        fd = os.dup(s.fileno())

        def no_bind(self, *args):
            raise AssertionError(f"the engine bound {args!r} for an fd:// address")

        monkeypatch.setattr(socket.socket, "bind", no_bind)
        engine = nr.Engine(_Echo(), f"fd://{fd}").start()
        monkeypatch.undo()
        try:
            assert engine.addresses == [f"tcp://127.0.0.1:{s.getsockname()[1]}"]
            assert _echo(s.getsockname(), b"x") == b"x"
        finally:
            engine.stop()
            engine.wait(10)


def test_engine_serves_tls_on_an_inherited_socket(tls_pki):
    """With the tls option, an inherited TCP socket serves TLS (a socket unit cannot
    say tls://); the address reports it."""
    import ssl

    from netreactor.tls import server_context

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        fd = os.dup(s.fileno())
        engine = nr.Engine(_Echo(), f"fd://{fd}", tls=server_context(tls_pki["server.pem"], tls_pki["server.key"]))
        engine.start()
        try:
            assert engine.addresses == [f"tls://127.0.0.1:{s.getsockname()[1]}"]
            client = ssl.create_default_context(cafile=tls_pki["ca.pem"])
            with client.wrap_socket(socket.create_connection(s.getsockname(), timeout=10),
                                    server_hostname="localhost") as c:
                c.sendall(b"over tls")
                assert recv_until_eof(c) == b"over tls"
                assert c.version().startswith("TLSv1.")
            assert engine.stats()["tls_handshakes"] == 1
        finally:
            engine.stop()
            engine.wait(10)


# ---------------------------------------------------------------- netreactor run, for real

APP = """
import os
import netreactor as nr

class Pid(nr.EventHandler):
    # Replies with the serving process's pid and the bytes it got, then closes.
    def on_traffic(self, conn):
        conn.write(b"%d:%s" % (os.getpid(), conn.read()))
        return nr.Action.CLOSE
"""


@pytest.fixture
def app_dir(tmp_path):
    (tmp_path / "pidapp.py").write_text(APP)
    return str(tmp_path)


def _run_cmd(app_dir: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "netreactor", "run", "pidapp:Pid", "--app-dir", app_dir, *args]


def _ask(address, data: bytes = b"x") -> tuple[int, bytes]:
    pid, _, rest = _echo(address, data).partition(b":")
    return int(pid), rest


def _stop(proc: subprocess.Popen) -> str:
    """SIGTERM, then the process's stderr (its log)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate(timeout=5)
        raise AssertionError(f"did not stop on SIGTERM: {err.decode()}") from None
    assert proc.returncode == 0, err.decode()
    return err.decode()


@needs_activate
@pytest.mark.parametrize("workers", [1, 2])
def test_netreactor_run_under_systemd_socket_activate(app_dir, unix_path, workers):
    """No --listen: the sockets the tool passes (named) are served, by the process
    itself or by its workers (the supervisor adopts them before forking)."""
    port = _free_port()
    proc = subprocess.Popen([ACTIVATE, "-l", f"127.0.0.1:{port}", "-l", unix_path, "--fdname=web:admin",
                             "-E", f"PYTHONPATH={_env()['PYTHONPATH']}",
                             *_run_cmd(app_dir, "--workers", str(workers))],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        with _first_connection(proc, port) as c:  # starts the service
            c.sendall(b"tcp")
            first_pid, rest = recv_until_eof(c).split(b":")
            assert rest == b"tcp"
        pids = {int(first_pid)}
        for _ in range(10):
            pid, rest = _ask(unix_path, b"unix")
            assert rest == b"unix"
            pids.add(pid)
            pids.add(_ask(("127.0.0.1", port))[0])
        if workers == 1:
            assert pids == {proc.pid}  # the tool exec'd netreactor: one process
        else:
            assert proc.pid not in pids  # the workers serve, not the supervisor
        log = _stop(proc)
        assert f"socket activation: serving fd://3 (web: tcp://127.0.0.1:{port}), " \
               f"fd://4 (admin: unix://{unix_path})" in log
        assert os.path.exists(unix_path)  # systemd's socket file: never ours to remove
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


@needs_activate
@pytest.mark.parametrize("workers", [1, 2])
def test_netreactor_run_tls_under_systemd_socket_activate(app_dir, tls_pki, workers):
    """--ssl-certfile/--ssl-keyfile with socket activation: the socket systemd passes
    serves TLS, in the process itself or in each worker."""
    import ssl

    port = _free_port()
    proc = subprocess.Popen([ACTIVATE, "-l", f"127.0.0.1:{port}", "-E", f"PYTHONPATH={_env()['PYTHONPATH']}",
                             *_run_cmd(app_dir, "--workers", str(workers), "--ssl-certfile",
                                       tls_pki["server.pem"], "--ssl-keyfile", tls_pki["server.key"])],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    client = ssl.create_default_context(cafile=tls_pki["ca.pem"])
    try:
        for i in range(4):
            raw = _first_connection(proc, port) if i == 0 else socket.create_connection(("127.0.0.1", port), 10)
            with client.wrap_socket(raw, server_hostname="localhost") as c:
                c.sendall(b"tls")
                assert recv_until_eof(c).split(b":")[1] == b"tls"
        log = _stop(proc)
        assert f"socket activation: serving fd://3 (unknown: tcp://127.0.0.1:{port})" in log
        assert f"serving tls://127.0.0.1:{port} on " in log  # what the socket serves
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


@pytest.mark.parametrize("workers", [1, 2])
def test_a_deploy_on_an_inherited_socket_refuses_and_drops_nothing(app_dir, workers):
    """The zero-downtime deploy of docs/workers.md: the parent (systemd, in production)
    holds the listening socket and passes it to `netreactor run --fd N`. The new server
    starts on the same socket while the old one serves; then SIGUSR1 tells the old one
    to stop accepting, finish its open connections and exit. Clients connect all along:
    not one is refused, reset or left without its reply."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(128)
        fd = listener.fileno()
        address = listener.getsockname()

        def start() -> subprocess.Popen:
            return subprocess.Popen(_run_cmd(app_dir, "--fd", str(fd), "--workers", str(workers)),
                                    pass_fds=[fd], env=_env(), stdout=subprocess.DEVNULL,
                                    stderr=subprocess.PIPE)

        procs = [start()]
        try:
            errors: list[BaseException] = []
            seen: list[int] = []
            done = threading.Event()

            def clients() -> None:
                while not done.is_set():
                    try:
                        pid, rest = _ask(address, b"ping")
                        assert rest == b"ping"
                        seen.append(pid)
                    except BaseException as exc:  # reported below
                        errors.append(exc)
                        return

            def served_by_new(count: int) -> None:
                deadline = time.monotonic() + 15
                while len(seen) < count and not errors:
                    assert time.monotonic() < deadline, f"{len(seen)} requests served, not {count}"
                    time.sleep(0.02)

            threads = [threading.Thread(target=clients) for _ in range(4)]
            for t in threads:
                t.start()
            served_by_new(20)
            old_served = set(seen)
            procs.append(start())
            # Both serve the socket for a while: the new one takes connections too.
            deadline = time.monotonic() + 15
            while set(seen) <= old_served and not errors:
                assert time.monotonic() < deadline, "the new server served nobody"
                time.sleep(0.02)
            procs[0].send_signal(signal.SIGUSR1)
            procs[0].wait(15)
            assert procs[0].returncode == 0, procs[0].stderr.read().decode()
            count = len(seen)
            served_by_new(count + 20)  # and the new one alone serves on
            done.set()
            for t in threads:
                t.join(15)
            assert errors == []
            log = _stop(procs[1])
            assert "Traceback" not in log
        finally:
            done.set()
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait(5)
