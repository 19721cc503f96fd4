"""The ``netreactor`` command line: every error path is one line on stderr with
exit status 2 (usage) or 1 (runtime); ``run`` takes a handler class, instance
or factory; ``example``, ``--version``, ``--help``, ``bench`` and the bare
self-check.

Servers run as ``python -m netreactor ...`` subprocesses on 127.0.0.1 port 0
or Unix sockets in temp dirs, each killed (with its process group) at the end.
"""

from __future__ import annotations

import dataclasses
import os
import re
import select
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import List

import pytest

import netreactor as nr
from netreactor import cli
from netreactor.examples import DESCRIPTIONS, EXAMPLES

REPO = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"

APP = textwrap.dedent('''
    import netreactor as nr

    class Echo(nr.EventHandler):
        def on_traffic(self, conn):
            conn.write(conn.read())

    instance = Echo()

    def factory():
        return Echo()

    class Holder:
        handler = Echo()

    class NotAHandler:
        pass

    def factory_raises():
        raise KeyError("no config")

    def factory_wrong():
        return 42

    not_callable = 7

    class BootFails(nr.EventHandler):
        def on_boot(self, engine):
            raise RuntimeError("boot failed on purpose")
''')


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    return env


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    (tmp_path / "capp.py").write_text(APP)
    (tmp_path / "raises_on_import.py").write_text("raise RuntimeError('bad module')\n")
    (tmp_path / "needs_missing_dep.py").write_text("import no_such_dependency_xyz\n")
    (tmp_path / "syntax_error.py").write_text("def broken(:\n")
    return tmp_path


def run_cli(args: List[str], cwd: Path, timeout: float = 20.0) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "netreactor", *args], cwd=cwd, env=_env(),
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def assert_one_line_error(proc: subprocess.CompletedProcess, code: int, *needles: str) -> str:
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    error_lines = [line for line in lines if re.match(r"netreactor( \w+)?: error: ", line)]
    assert len(error_lines) == 1, proc.stderr
    for needle in needles:
        assert needle in error_lines[0], (needle, error_lines[0])
    return error_lines[0]


# ---------------------------------------------------------------------------- error paths

USAGE_ERRORS = [
    (["run"], ["required", "MODULE:ATTR"]),
    (["run", "capp:Echo"], ["required", "--listen"]),
    (["run", "capp", "--listen", "tcp://127.0.0.1:0"], ["MODULE:ATTR"]),
    (["run", ":Echo", "--listen", "tcp://127.0.0.1:0"], ["MODULE:ATTR"]),
    (["run", "no_such_module_xyz:Echo", "--listen", "tcp://127.0.0.1:0"],
     ["cannot import module 'no_such_module_xyz'"]),
    (["run", "capp:Missing", "--listen", "tcp://127.0.0.1:0"], ["no attribute 'Missing'"]),
    (["run", "capp:Holder.nothing", "--listen", "tcp://127.0.0.1:0"], ["no attribute 'Holder.nothing'"]),
    (["run", "capp:NotAHandler", "--listen", "tcp://127.0.0.1:0"], ["not a netreactor.EventHandler"]),
    (["run", "capp:factory_wrong", "--listen", "tcp://127.0.0.1:0"], ["returned a int"]),
    (["run", "capp:not_callable", "--listen", "tcp://127.0.0.1:0"], ["is a int"]),
    (["run", "capp:Echo", "--listen", "127.0.0.1:9000"], ["no scheme"]),
    (["run", "capp:Echo", "--listen", "tcp://127.0.0.1:99999"], ["out of range"]),
    (["run", "capp:Echo", "--listen", "tcp://127.0.0.1:0", "--loops", "0"], ["'loops'"]),
    (["run", "capp:Echo", "--listen", "tcp://127.0.0.1:0", "--loops", "many"], ["--loops"]),
    (["run", "capp:Echo", "--listen", "tcp://127.0.0.1:0", "--workers", "0"], ["'workers'"]),
    (["run", "capp:Echo", "--listen", "tcp://127.0.0.1:0", "--lb", "random"], ["--lb", "invalid choice"]),
    (["run", "capp:Echo", "--listen", "tcp://127.0.0.1:0", "--write-low-water", "1m"],
     ["'write_low_water'"]),
    (["run", "capp:Echo", "--listen", "tcp://127.0.0.1:0", "--edge-triggered", "--poller", "selectors"],
     ["'edge_triggered'"]),
    (["run", "capp:Echo", "--listen", "tcp://127.0.0.1:0", "--shutdown-timeout", "soon"],
     ["--shutdown-timeout"]),
    (["run", "capp:Echo", "--listen", "tcp://127.0.0.1:0", "--no-such-flag"], ["unrecognized", "--no-such-flag"]),
    (["run", "capp:Echo", "--listen", "tcp://127.0.0.1:0", "--app-dir", "/nonexistent/dir"], ["--app-dir"]),
    (["example"], ["which example"]),
    (["example", "no-such-example"], ["unknown example"]),
    (["nonsense"], ["invalid choice"]),
    (["--no-such-flag"], ["unrecognized"]),
    (["bench", "no_such_suite"], ["no benchmark 'no_such_suite'"]),
]


@pytest.mark.parametrize("args,needles", USAGE_ERRORS, ids=[" ".join(a) or "none" for a, _ in USAGE_ERRORS])
def test_usage_errors_are_one_line_and_status_2(app_dir, args, needles):
    assert_one_line_error(run_cli(args, app_dir), 2, *needles)


RUNTIME_ERRORS = [
    (["run", "raises_on_import:X"], ["importing 'raises_on_import' failed", "RuntimeError: bad module"]),
    (["run", "needs_missing_dep:X"], ["importing 'needs_missing_dep' failed", "no_such_dependency_xyz"]),
    (["run", "syntax_error:X"], ["importing 'syntax_error' failed", "SyntaxError"]),
    (["run", "capp:factory_raises"], ["capp:factory_raises() failed", "KeyError"]),
    (["run", "capp:BootFails"], ["RuntimeError: boot failed on purpose"]),
]


@pytest.mark.parametrize("args,needles", RUNTIME_ERRORS, ids=[a[1] for a, _ in RUNTIME_ERRORS])
def test_runtime_errors_are_one_line_and_status_1(app_dir, args, needles):
    proc = run_cli(args + ["--listen", f"tcp://{HOST}:0"], app_dir)
    assert_one_line_error(proc, 1, *needles)


@pytest.mark.parametrize("workers", [None, "2"])
def test_address_in_use_is_a_runtime_error(app_dir, workers):
    with socket.socket() as taken:
        taken.bind((HOST, 0))
        taken.listen()
        address = f"tcp://{HOST}:{taken.getsockname()[1]}"
        args = ["run", "capp:Echo", "--listen", address] + (["--workers", workers] if workers else [])
        assert_one_line_error(run_cli(args, app_dir), 1, f"cannot listen on {address}", "in use")


def test_unix_address_in_use_is_a_runtime_error(app_dir, tmp_path):
    path = str(tmp_path / "taken.sock")
    with socket.socket(socket.AF_UNIX) as taken:
        taken.bind(path)
        taken.listen()
        proc = run_cli(["run", "capp:Echo", "--listen", f"unix://{path}"], app_dir)
    assert_one_line_error(proc, 1, f"unix://{path}", "in use")


def test_main_returns_status_instead_of_raising(capsys):
    assert cli.main(["run"]) == 2
    assert cli.main(["--version"]) == 0
    from netreactor import speedups

    assert capsys.readouterr().out.strip() == f"netreactor {nr.__version__} ({speedups.describe()})"


# ---------------------------------------------------------------------------- serving


class Running:
    """A server subprocess whose stderr is read until it says where it serves."""

    def __init__(self, args: List[str], cwd: Path) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "netreactor", *args], cwd=cwd, env=_env(),
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, start_new_session=True)

    def serving(self, timeout: float = 10.0) -> List[str]:
        """The addresses from the engine's "serving ... on N loop(s)" log line."""
        deadline = time.monotonic() + timeout
        fd = self.proc.stderr.fileno()
        buf = b""
        while True:
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                match = re.search(r"serving (.+) on \d+ loop", line.decode())
                if match:
                    return match.group(1).split(", ")
            left = deadline - time.monotonic()
            readable, _, _ = select.select([fd], [], [], max(0.0, left))
            chunk = os.read(fd, 65536) if readable else b""
            if not chunk:
                pytest.fail(f"the server did not report serving within {timeout}s: {buf!r}")
            buf += chunk

    def stop(self) -> int:
        os.kill(self.proc.pid, signal.SIGTERM)
        try:
            return self.proc.wait(10)
        except subprocess.TimeoutExpired:
            pytest.fail("server did not stop on SIGTERM within 10 s")

    def kill(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.proc.wait(10)
        self.proc.stdout.close()
        self.proc.stderr.close()


def echo_once(address: str, payload: bytes = b"hello netreactor") -> bytes:
    if address.startswith("unix://"):
        sock = socket.socket(socket.AF_UNIX)
        sock.settimeout(5)
        sock.connect(address[len("unix://"):])
    else:
        host, port = address.split("://", 1)[1].rsplit(":", 1)
        sock = socket.create_connection((host, int(port)), timeout=5)
    with sock:
        sock.sendall(payload)
        got = b""
        while len(got) < len(payload):
            chunk = sock.recv(65536)
            if not chunk:
                break
            got += chunk
        return got


@pytest.mark.parametrize("attr", ["Echo", "instance", "factory", "Holder.handler"])
def test_run_takes_a_class_an_instance_or_a_factory(app_dir, tmp_path, attr):
    unix = f"unix://{tmp_path / 'e.sock'}"
    server = Running(["run", f"capp:{attr}", "--listen", f"tcp://{HOST}:0", "--listen", unix,
                      "--loops", "2"], app_dir)
    try:
        addresses = server.serving()
        assert addresses[1] == unix and re.fullmatch(rf"tcp://{HOST}:\d+", addresses[0])
        for address in addresses:
            assert echo_once(address) == b"hello netreactor"
        assert server.stop() == 0
    finally:
        server.kill()


def test_run_finds_modules_in_app_dir(app_dir, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    server = Running(["run", "capp:Echo", "--app-dir", str(app_dir), "--listen", f"tcp://{HOST}:0"],
                     elsewhere)
    try:
        (address,) = server.serving()
        assert echo_once(address) == b"hello netreactor"
    finally:
        server.kill()


def test_sigint_stops_a_single_process_server_cleanly(app_dir):
    server = Running(["run", "capp:Echo", "--listen", f"tcp://{HOST}:0"], app_dir)
    try:
        server.serving()
        os.kill(server.proc.pid, signal.SIGINT)
        assert server.proc.wait(10) == 0
        assert b"Traceback" not in server.proc.stderr.read()
    finally:
        server.kill()


def test_example_runs_a_registered_example(app_dir):
    server = Running(["example", "echo", "--listen", f"tcp://{HOST}:0"], app_dir)
    try:
        (address,) = server.serving()
        assert echo_once(address, b"x" * 100_000) == b"x" * 100_000
        assert server.stop() == 0
    finally:
        server.kill()


def test_example_list_shows_every_registered_example(app_dir):
    proc = run_cli(["example", "--list"], app_dir)
    assert proc.returncode == 0, proc.stderr
    for name in EXAMPLES:
        line = next(l for l in proc.stdout.splitlines() if l.split()[0] == name)
        assert DESCRIPTIONS.get(name, "") in line


def test_version(app_dir):
    proc = run_cli(["--version"], app_dir)
    # It says which path runs: "C speedups active (...)" or "pure Python (...)" (issue 15).
    assert proc.returncode == 0 and proc.stdout.startswith(f"netreactor {nr.__version__} (")
    assert "C speedups active" in proc.stdout or "pure Python" in proc.stdout


def test_every_option_has_a_documented_flag():
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices
    for command in ("run", "example"):
        flags = {}
        for action in sub[command]._actions:
            for opt in action.option_strings:
                flags[opt] = action
        for field in dataclasses.fields(nr.Options):
            if field.name.startswith("_") or field.name in cli.NO_FLAG:
                continue
            flag = "--" + field.name.replace("_", "-")
            assert flag in flags, f"{command}: no {flag}"
            help_text = flags[flag].help or ""
            assert help_text and "the engine option" not in help_text, f"{flag} has no real help"
            if field.type == "bool":
                assert "--no-" + field.name.replace("_", "-") in flags
    text = sub["run"].format_help()
    assert "--workers" in text and "--listen" in text and "--log-level" in text


def test_flags_reach_the_engine(monkeypatch):
    seen = {}

    class FakeEngine:
        def __init__(self, handler, *addrs, **options):
            seen.update(options, addrs=addrs)

        def run(self):
            return None

    monkeypatch.setattr(cli, "Engine", FakeEngine)
    code = cli.main(["example", "echo", "-l", "tcp://127.0.0.1:0", "--loops", "3", "--lb",
                     "least-connections", "--reuse-port", "--no-tcp-no-delay", "--read-buffer-cap",
                     "128k", "--tcp-keepalive", "30", "--socket-recv-buffer", "none",
                     "--shutdown-timeout", "0.5", "--workers", "2", "--cpu-affinity",
                     "--log-level", "warning"])
    assert code == 0
    assert seen == {"addrs": ("tcp://127.0.0.1:0",), "loops": 3, "lb": "least-connections",
                    "reuse_port": True, "tcp_no_delay": False, "read_buffer_cap": 128 * 1024,
                    "tcp_keepalive": 30.0, "socket_recv_buffer": None, "shutdown_timeout": 0.5,
                    "workers": 2, "cpu_affinity": True}


# ---------------------------------------------------------------------------- bench


def test_bench_forwards_arguments(monkeypatch, tmp_path, capfd):
    bench = tmp_path / "bench"
    bench.mkdir()
    (bench / "echo.py").write_text("import sys; print('echo', sys.argv[1:]); sys.exit(7)\n")
    (bench / "workers.py").write_text("import sys; print('workers', sys.argv[1:])\n")
    monkeypatch.setattr(cli, "_bench_dir", lambda: str(bench))
    assert cli.main(["bench", "--quick", "--json", "out.json"]) == 7
    assert cli.main(["bench", "workers", "--duration", "1"]) == 0
    out = capfd.readouterr().out
    assert "echo ['--quick', '--json', 'out.json']" in out
    assert "workers ['--duration', '1']" in out


def test_bench_without_a_source_tree_is_a_usage_error(monkeypatch, capsys):
    monkeypatch.setattr(cli, "_bench_dir", lambda: None)
    assert cli.main(["bench", "--quick"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("netreactor: error: ") and "bench/" in err and "\n" not in err


# ---------------------------------------------------------------------------- self-check


def test_bare_module_runs_the_self_check_from_a_fresh_tree():
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # as from a fresh clone
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "netreactor"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert time.monotonic() - started < 15
    lines = proc.stdout.splitlines()
    assert lines[0].startswith(f"netreactor {nr.__version__} self-check")
    assert lines[-1].startswith("passed in ")
    assert not [line for line in lines if "FAIL" in line]
    assert any("1 MiB" in line and "byte-exact" in line for line in lines)
    assert any("reset" in line for line in lines)


def test_self_check_reports_failure(monkeypatch, capsys):
    def broken_clients(addresses, deadline):
        raise AssertionError("echo of 7 bytes differs at byte 3")

    from netreactor.cli import selfcheck

    monkeypatch.setattr(selfcheck, "_check_clients", broken_clients)
    assert cli.self_check() == 1
    out = capsys.readouterr().out
    assert "FAIL  concurrent echo clients: AssertionError: echo of 7 bytes differs" in out
    assert out.splitlines()[-1].startswith("FAILED (1 check)")
