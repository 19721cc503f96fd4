"""The ``netreactor`` command line (also ``python -m netreactor``).

::

    netreactor run MODULE:ATTR --listen ADDR [--listen ADDR ...] [options]
    netreactor example NAME [--listen ADDR ...] [options]
    netreactor example --list
    netreactor check                   # self-check; also what a bare `netreactor` does
    netreactor bench [SUITE] [ARGS]    # runs bench/SUITE.py (default suite) from a source tree
    netreactor --version

Every option of :class:`netreactor.Options` (except ``logger``) is a flag of
``run`` and ``example`` (:mod:`.flags`). The self-check is :mod:`.selfcheck`.

Errors are one line on stderr, ``netreactor: error: ...``, with exit status 2
for a usage error (bad flag or value, bad address, an app that cannot be found
or is not a handler) and 1 for a runtime failure (the app raised while loading,
the address is in use, the server failed or its workers kept crashing).
"""

from __future__ import annotations

import argparse
import errno
import importlib
import logging
import os
import subprocess
import sys
from typing import Any, Callable, Dict, List, NoReturn, Optional, Sequence

from .. import __version__, speedups
from ..engine import Engine
from ..errors import one_line
from ..handler import EventHandler
from ..supervisor import SupervisorError
from ..supervisor import worker_count
from .flags import NO_FLAG, add_option_flags, options_from_args
from .tlsflags import add_tls_flags, reload_on_sighup, tls_option
from .selfcheck import self_check

__all__ = ["main", "build_parser", "load_app", "self_check", "UsageError", "RunError", "NO_FLAG"]

PROG = "netreactor"
EXIT_USAGE = 2
EXIT_RUNTIME = 1

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


# ---------------------------------------------------------------------------- the parser


def build_parser() -> argparse.ArgumentParser:
    """The whole command line (exposed for documentation and tests)."""
    parser = _Parser(prog=PROG, allow_abbrev=False,
                     description="Event-driven reactor networking on epoll, in the style of gnet. "
                                 "With no command: run the self-check (same as 'netreactor check').")
    parser.add_argument("--version", action="version",
                        version=f"{PROG} {__version__} ({speedups.describe()})")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    serving = _Parser(add_help=False, allow_abbrev=False)
    group = serving.add_argument_group("engine options (see netreactor.Options)")
    add_option_flags(group)
    add_tls_flags(serving)
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
    run.add_argument("--listen", "-l", action="append", metavar="ADDR", default=[],
                     help="address to serve; repeat for several: tcp://HOST:PORT, tcp4://, tcp6://, "
                          "udp://HOST:PORT, unix://PATH, fd://N (port 0 picks a free port; the log "
                          "says which). Under systemd socket activation the sockets systemd passes "
                          "are served instead")
    run.add_argument("--fd", action="append", type=int, metavar="N", default=[],
                     help="serve the socket inherited bound on descriptor N (same as --listen fd://N; "
                          "uvicorn's and gunicorn's --fd)")
    run.add_argument("--app-dir", default=".", metavar="DIR",
                     help="directory put first on the import path (default: the current directory)")

    from ..examples import EXAMPLES

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
    _add_example_flags(example)

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


def _add_example_flags(parser: argparse.ArgumentParser) -> None:
    """Each example's own flags, in a group of its own (netreactor.examples.FLAGS)."""
    from ..examples import FLAGS

    for name in sorted(FLAGS):
        group = parser.add_argument_group(f"flags of the {name} example")
        for flag in FLAGS[name]:
            group.add_argument(f"--{flag.name}", dest=f"{_EXAMPLE_FLAG}{name}:{flag.keyword}",
                               type=_argument_type(flag.type), metavar=flag.metavar,
                               default=argparse.SUPPRESS, help=flag.help.replace("%", "%%"))


_EXAMPLE_FLAG = "example-flag:"


def _argument_type(convert: Any) -> Any:
    def parse(text: str) -> Any:
        try:
            return convert(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse.__name__ = getattr(convert, "__name__", "value")
    return parse


def _example_flags(args: argparse.Namespace, name: str) -> Dict[str, Any]:
    """The flags of example ``name`` given on the command line, as factory keywords;
    a flag of another example is a usage error."""
    given: Dict[str, Any] = {}
    for dest, value in vars(args).items():
        if not dest.startswith(_EXAMPLE_FLAG):
            continue
        owner, keyword = dest[len(_EXAMPLE_FLAG):].split(":", 1)
        if owner != name:
            flag = "--" + keyword.replace("_", "-")
            raise UsageError(f"{flag} is a flag of the {owner} example, not of {name}")
        given[keyword] = value
    return given


# ---------------------------------------------------------------------------- loading the app


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
        raise RunError(f"importing {module_name!r} failed: {one_line(exc)}") from None
    except Exception as exc:  # the module's own code raised (SyntaxError included)
        raise RunError(f"importing {module_name!r} failed: {one_line(exc)}") from None
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
        raise RunError(f"calling {spec}() failed: {one_line(exc)}") from None
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


def _serve(handler: EventHandler, listen: Sequence[str], args: argparse.Namespace,
           options: Optional[Dict[str, Any]] = None) -> int:
    if options is None:
        options = options_from_args(args)
    try:
        tls = tls_option(args)
        if tls is not None:
            options["tls"] = tls
        engine = Engine(handler, *listen, **options)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    restore: Callable[[], None] = lambda: None
    if tls is not None and worker_count(engine.options) <= 1:
        restore = reload_on_sighup(engine, tls)  # with workers, SIGHUP rolls them instead
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
        raise RunError(f"the server failed: {one_line(exc)} (--log-level debug shows the "
                       f"traceback)") from None
    except Exception as exc:
        _log.debug("the server failed", exc_info=True)
        raise RunError(f"the server failed: {one_line(exc)} (--log-level debug shows the "
                       f"traceback)") from None
    finally:
        restore()
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    _setup_logging(args.log_level)
    app_dir = os.path.abspath(args.app_dir)
    if not os.path.isdir(app_dir):
        raise UsageError(f"--app-dir {args.app_dir!r} is not a directory")
    if app_dir not in sys.path:
        sys.path.insert(0, app_dir)
    listen = list(args.listen) + [f"fd://{fd}" for fd in args.fd]
    if not listen and os.environ.get("LISTEN_PID") != str(os.getpid()):
        raise UsageError("the following arguments are required: --listen ADDR (or --fd N, or start "
                         "under systemd socket activation)")
    handler = load_app(args.app)
    return _serve(handler, listen, args)


def _cmd_example(args: argparse.Namespace) -> int:
    from ..examples import DESCRIPTIONS, EXAMPLES, default_listen, default_options, load_example, resolve_flags

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
    kwargs, options = resolve_flags(args.name, _example_flags(args, args.name), options_from_args(args))
    _setup_logging(args.log_level)
    try:
        handler = factory(**kwargs) if kwargs else _make_handler(factory, f"example {args.name}")
    except ValueError as exc:
        raise UsageError(f"example {args.name}: {exc}") from None
    # What the example needs (redis-front: asyncio), under what the command line gives.
    options = {**default_options(args.name), **options}
    return _serve(handler, args.listen or [default_listen(args.name)], args, options)


def _bench_dir() -> Optional[str]:
    """``bench/`` of the source tree this package sits in, if there is one."""
    package_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
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
