"""The ``netreactor`` command line (also ``python -m netreactor``).

::

    netreactor run MODULE:ATTR --listen ADDR [--listen ADDR ...] [options]
    netreactor example NAME [--listen ADDR ...] [options]
    netreactor example --list
    netreactor check                   # self-check; also what a bare `netreactor` does
    netreactor bench [SUITE] [ARGS]    # runs bench/SUITE.py (default suite) from a source tree
    netreactor --version

Every option of :class:`netreactor.Options` (except ``logger``) is a flag of
``run`` and ``example``, generated from the dataclass so that a new option gets
its flag, type and ``--help`` text (the option's ``#:`` comment) without a
change here. Values are validated by the engine itself, so the command line
and the Python API reject the same things with the same words.

Errors are one line on stderr, ``netreactor: error: ...``, with exit status 2
for a usage error (bad flag or value, bad address, an app that cannot be found
or is not a handler) and 1 for a runtime failure (the app raised while loading,
the address is in use, the server failed or its workers kept crashing).
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import importlib
import inspect
import logging
import os
import random
import re
import select
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
from time import monotonic
from typing import Any, Callable, Dict, List, NoReturn, Optional, Sequence, Tuple

from . import __version__
from . import options as _options_module
from .engine import Engine, gil_enabled
from .handler import EventHandler
from .options import Options
from .workers import SupervisorError

__all__ = ["main", "build_parser", "load_app", "self_check", "UsageError", "RunError"]

PROG = "netreactor"
EXIT_USAGE = 2
EXIT_RUNTIME = 1
#: Options that have no command-line form.
NO_FLAG = frozenset({"logger"})

_log = logging.getLogger("netreactor.cli")


class CliError(Exception):
    """An error reported as one line on stderr, with an exit status."""

    code = EXIT_RUNTIME


class UsageError(CliError):
    """The command line is wrong (exit status 2)."""

    code = EXIT_USAGE


class RunError(CliError):
    """The command was right but failed (exit status 1)."""

    code = EXIT_RUNTIME


class _Parser(argparse.ArgumentParser):
    """argparse, but an error is one line (no usage dump) and exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


# ---------------------------------------------------------------------------- option flags


def _option_fields() -> List[dataclasses.Field]:
    return [f for f in dataclasses.fields(Options) if not f.name.startswith("_") and f.name not in NO_FLAG]


def _option_docs() -> Dict[str, str]:
    """The ``#:`` comment above each Options field. A field right below another
    with no comment of its own shares that one (``socket_recv_buffer`` /
    ``socket_send_buffer``)."""
    try:
        source = inspect.getsource(Options)
    except (OSError, TypeError):  # no source (frozen app): flags still work, help is generic
        return {}
    docs: Dict[str, str] = {}
    pending: List[str] = []
    previous: Optional[str] = None
    for line in source.splitlines():
        text = line.strip()
        if text.startswith("#:"):
            pending.append(text[2:].strip())
            continue
        match = re.match(r"([A-Za-z_]\w*)\s*:", text)
        if match and not text.startswith(("def ", "class ", "@", "return")):
            name = match.group(1)
            if pending:
                docs[name] = " ".join(pending)
            elif previous is not None and previous in docs:
                docs[name] = docs[previous]
            pending, previous = [], name
        else:
            pending, previous = [], None
    return docs


def _base_type(annotation: Any) -> Tuple[str, bool]:
    """``"Optional[int]"`` -> ``("int", True)``; annotations are strings here."""
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
    text = text.replace("typing.", "").strip()
    match = re.fullmatch(r"Optional\[(.+)\]", text) or re.fullmatch(r"(.+?)\s*\|\s*None", text)
    if match:
        return match.group(1).strip(), True
    return text, False


_SIZE_SUFFIXES = {"k": 1 << 10, "kb": 1 << 10, "kib": 1 << 10, "m": 1 << 20, "mb": 1 << 20,
                  "mib": 1 << 20, "g": 1 << 30, "gb": 1 << 30, "gib": 1 << 30}


def _int_arg(text: str) -> int:
    """An integer, with an optional binary size suffix: ``64k``, ``4MiB``, ``1g``."""
    match = re.fullmatch(r"\s*(\d+)\s*([A-Za-z]*)\s*", text)
    if match:
        number, suffix = int(match.group(1)), match.group(2).lower()
        if not suffix:
            return number
        if suffix in _SIZE_SUFFIXES:
            return number * _SIZE_SUFFIXES[suffix]
    raise argparse.ArgumentTypeError(f"expected an integer (sizes may end in k, m or g), got {text!r}")


def _float_arg(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None


def _optional(convert: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        return None if text.strip().lower() in ("none", "off") else convert(text)

    parse.__name__ = convert.__name__
    return parse


def _add_option_flags(group: Any) -> None:
    docs = _option_docs()
    choices = {"lb": _options_module.LOAD_BALANCERS, "poller": _options_module.POLLERS}
    for f in _option_fields():
        flag = "--" + f.name.replace("_", "-")
        help_text = (docs.get(f.name) or f"the engine option {f.name!r}").replace("``", "'")
        help_text = help_text.replace("%", "%%")
        default = None if f.default is dataclasses.MISSING else f.default
        base, optional = _base_type(f.type)
        common = {"dest": f.name, "default": argparse.SUPPRESS}
        if base == "bool":
            group.add_argument(flag, action=argparse.BooleanOptionalAction,
                               help=f"{help_text} (default: {'on' if default else 'off'})", **common)
            continue
        if base == "int":
            sized = any(word in f.name for word in ("buffer", "cap", "water"))
            convert, metavar = _int_arg, ("BYTES" if sized else "N")
        elif base == "float":
            convert, metavar = _float_arg, "SECONDS"
        else:
            convert, metavar = str, f.name.rsplit("_", 1)[-1].upper()
        if optional:
            convert = _optional(convert)
        shown = "none" if default is None else default
        extra = "; 'none' turns it off" if optional and "None" not in help_text else ""
        kwargs: Dict[str, Any] = {"type": convert, "metavar": metavar,
                                  "help": f"{help_text} (default: {shown}{extra})", **common}
        if f.name in choices:
            kwargs["choices"] = choices[f.name]
            kwargs["metavar"] = "{" + ",".join(choices[f.name]) + "}"
        group.add_argument(flag, **kwargs)


# ---------------------------------------------------------------------------- the parser


def build_parser() -> argparse.ArgumentParser:
    """The whole command line (exposed for documentation and tests)."""
    parser = _Parser(prog=PROG, allow_abbrev=False,
                     description="Event-driven reactor networking on epoll, in the style of gnet. "
                                 "With no command: run the self-check (same as 'netreactor check').")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    serving = _Parser(add_help=False, allow_abbrev=False)
    group = serving.add_argument_group("engine options (see netreactor.Options)")
    _add_option_flags(group)
    misc = serving.add_argument_group("logging")
    misc.add_argument("--log-level", default="info", type=str.lower,
                      choices=("critical", "error", "warning", "info", "debug"),
                      help="log level of the netreactor loggers and the app's (default: info)")

    run = sub.add_parser(
        "run", parents=[serving], allow_abbrev=False, help="serve a handler from your code",
        description="Serve MODULE:ATTR, where ATTR is an EventHandler subclass, an instance, or a "
                    "factory (a callable returning an EventHandler). The current directory is "
                    "importable, as with uvicorn. Example: netreactor run app:Echo --listen "
                    "tcp://127.0.0.1:9000 --workers 4")
    run.add_argument("app", metavar="MODULE:ATTR", help="where the handler is, e.g. 'myapp:Echo' "
                     "or 'pkg.server:make_handler'")
    run.add_argument("--listen", "-l", action="append", metavar="ADDR", required=True,
                     help="address to serve; repeat for several: tcp://HOST:PORT, tcp4://, tcp6://, "
                          "udp://HOST:PORT, unix://PATH (port 0 picks a free port; the log "
                          "says which)")
    run.add_argument("--app-dir", default=".", metavar="DIR",
                     help="directory put first on the import path (default: the current directory)")

    from .examples import EXAMPLES

    names = ", ".join(sorted(EXAMPLES))
    example = sub.add_parser(
        "example", parents=[serving], allow_abbrev=False, help="run a built-in example server",
        description=f"Run a built-in example server. Available: {names}. "
                    "'netreactor example --list' describes them.")
    example.add_argument("name", nargs="?", metavar="NAME", help=f"the example to run ({names})")
    example.add_argument("--list", action="store_true", help="list the examples and exit")
    example.add_argument("--listen", "-l", action="append", metavar="ADDR",
                         help="address to serve; repeat for several (default: tcp://127.0.0.1:9000, "
                              "udp://127.0.0.1:9000 for udp-echo)")

    sub.add_parser("check", allow_abbrev=False, help="self-check: boot the echo example and test it",
                   description="Boot the echo example on a free loopback TCP port and a Unix "
                               "socket, check it with concurrent clients (1 B .. 1 MiB, byte-exact) "
                               "and a client reset, and print a report. Exit status 0 if all passed.")

    sub.add_parser("bench", add_help=False, allow_abbrev=False,
                   help="run a benchmark from the source tree's bench/ directory (default: suite)",
                   description="netreactor bench [SUITE] [ARGS...]: runs bench/SUITE.py (default "
                               "suite) with ARGS, e.g. 'netreactor bench --quick' or "
                               "'netreactor bench workers --quick'.")
    return parser


# ---------------------------------------------------------------------------- loading the app


def _describe(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def load_app(spec: str) -> EventHandler:
    """Resolve ``MODULE:ATTR`` to a handler instance.

    ATTR (dots allowed: ``mod:obj.attr``) may be an :class:`EventHandler`
    instance, an EventHandler subclass (instantiated with no arguments) or a
    factory (called with no arguments; must return an EventHandler).
    Raises :class:`UsageError` when the spec does not lead to a handler and
    :class:`RunError` when the user's code raised.
    """
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise UsageError(f"app {spec!r} must be MODULE:ATTR, for example 'myapp:Echo'")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if missing and (module_name == missing or module_name.startswith(missing + ".")):
            raise UsageError(f"cannot import module {module_name!r}: no module named {missing!r} "
                             f"(looked in the current directory and on sys.path)") from None
        raise RunError(f"importing {module_name!r} failed: {_describe(exc)}") from None
    except Exception as exc:  # the module's own code raised (SyntaxError included)
        raise RunError(f"importing {module_name!r} failed: {_describe(exc)}") from None
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise UsageError(f"module {module_name!r} has no attribute {attr!r}") from None
    return _make_handler(obj, spec)


def _make_handler(obj: Any, spec: str) -> EventHandler:
    if isinstance(obj, EventHandler):
        return obj
    if isinstance(obj, type) and not issubclass(obj, EventHandler):
        raise UsageError(f"{spec} is the class {obj.__name__}, which is not a netreactor.EventHandler "
                         f"subclass")
    if not callable(obj):
        raise UsageError(f"{spec} is a {type(obj).__name__}, not an EventHandler class, instance "
                         f"or factory")
    try:
        made = obj()
    except Exception as exc:
        raise RunError(f"calling {spec}() failed: {_describe(exc)}") from None
    if not isinstance(made, EventHandler):
        raise UsageError(f"{spec}() returned a {type(made).__name__}, not a netreactor.EventHandler")
    return made


# ---------------------------------------------------------------------------- commands


def _setup_logging(level: str) -> None:
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s",
                                               "%H:%M:%S"))
        root.addHandler(handler)
    root.setLevel(level.upper())


def _serve(handler: EventHandler, listen: Sequence[str], args: argparse.Namespace) -> int:
    options = {f.name: getattr(args, f.name) for f in _option_fields() if hasattr(args, f.name)}
    try:
        engine = Engine(handler, *listen, **options)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    try:
        engine.run()
    except SupervisorError as exc:
        raise RunError(str(exc)) from None
    except OSError as exc:
        if exc.errno in (errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES) or \
                isinstance(exc, FileExistsError):
            reason = exc.strerror or str(exc)
            if not reason.startswith("cannot listen on"):  # the engine names the address it was
                reason = f"cannot listen on {', '.join(listen)}: {reason}"
            raise RunError(reason) from None
        _log.debug("the server failed", exc_info=True)
        raise RunError(f"the server failed: {_describe(exc)} (--log-level debug shows the "
                       f"traceback)") from None
    except Exception as exc:
        _log.debug("the server failed", exc_info=True)
        raise RunError(f"the server failed: {_describe(exc)} (--log-level debug shows the "
                       f"traceback)") from None
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    _setup_logging(args.log_level)
    app_dir = os.path.abspath(args.app_dir)
    if not os.path.isdir(app_dir):
        raise UsageError(f"--app-dir {args.app_dir!r} is not a directory")
    if app_dir not in sys.path:
        sys.path.insert(0, app_dir)
    handler = load_app(args.app)
    return _serve(handler, args.listen, args)


def _cmd_example(args: argparse.Namespace) -> int:
    from .examples import DESCRIPTIONS, EXAMPLES, default_listen, load_example

    if args.list:
        width = max(len(name) for name in EXAMPLES)
        for name in sorted(EXAMPLES):
            print(f"{name:<{width}}  {DESCRIPTIONS.get(name, '')}")
        return 0
    if not args.name:
        raise UsageError("which example? give a NAME, or --list to see them "
                         f"(available: {', '.join(sorted(EXAMPLES))})")
    try:
        factory = load_example(args.name)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    _setup_logging(args.log_level)
    return _serve(_make_handler(factory, f"example {args.name}"),
                  args.listen or [default_listen(args.name)], args)


def _bench_dir() -> Optional[str]:
    """``bench/`` of the source tree this package sits in, if there is one."""
    package_dir = os.path.dirname(os.path.abspath(__file__))
    bench = os.path.join(os.path.dirname(package_dir), "bench")
    return bench if os.path.isfile(os.path.join(bench, "echo.py")) else None


def _cmd_bench(rest: List[str]) -> int:
    bench = _bench_dir()
    if bench is None:
        raise UsageError("the benchmarks live in the bench/ directory of a netreactor source tree, "
                         "and there is none next to this installation; run them from a clone "
                         "(python3 bench/echo.py --help)")
    suites = sorted(name[:-3] for name in os.listdir(bench)
                    if name.endswith(".py") and not name.startswith("_"))
    script = "suite" if "suite" in suites else "echo"
    if rest and not rest[0].startswith("-"):
        script, rest = rest[0], rest[1:]
        if script not in suites:
            raise UsageError(f"no benchmark {script!r} in {bench}; available: {', '.join(suites)}")
    cmd = [sys.executable, os.path.join(bench, script + ".py"), *rest]
    proc = subprocess.Popen(cmd, cwd=os.path.dirname(bench))
    try:
        return proc.wait()
    except KeyboardInterrupt:  # the benchmark got the same Ctrl-C: let it clean up and report
        return proc.wait()


# ---------------------------------------------------------------------------- self-check


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
                        first = next(i for i, (a, b) in enumerate(zip(echoed, payload)) if a != b)
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
    from .examples import load_example

    out = out or sys.stdout
    started = monotonic()
    deadline = started + _CHECK_TIMEOUT
    build = "GIL" if gil_enabled() else "free-threaded"
    print(f"{PROG} {__version__} self-check: Python {sys.version.split()[0]} ({build}), "
          f"{os.cpu_count()} CPUs", file=out)
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
            report(False, f"booting the echo example: {_describe(exc)}")
            return 1
        t0 = monotonic()
        try:
            messages, moved = _check_clients(addresses, deadline)
            elapsed = monotonic() - t0
            report(True, f"{_CHECK_CLIENTS} concurrent clients (TCP and Unix), payloads "
                         f"1 B .. 1 MiB: {messages} echoes, {moved / (1 << 20):.1f} MiB byte-exact "
                         f"in {elapsed:.2f} s")
        except Exception as exc:
            report(False, f"concurrent echo clients: {_describe(exc)}")
        try:
            _check_reset(engine, addresses[0], deadline)
            report(True, "clients resetting mid-transfer: server kept serving, no connection left")
        except Exception as exc:
            report(False, f"client reset: {_describe(exc)}")
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


# ---------------------------------------------------------------------------- main


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line; returns the exit status (never raises for a user error)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args, rest = parser.parse_known_args(argv)
        if args.command == "bench":
            return _cmd_bench(rest)
        if rest:
            prog = f"{PROG} {args.command}" if args.command else PROG
            _Parser(prog=prog).error(f"unrecognized arguments: {' '.join(rest)}")
        if args.command == "run":
            return _cmd_run(args)
        if args.command == "example":
            return _cmd_example(args)
        return self_check()  # "check", or no command at all
    except SystemExit as exc:  # argparse: --help, --version, or a usage error already printed
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else EXIT_USAGE)
    except CliError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        return 130
