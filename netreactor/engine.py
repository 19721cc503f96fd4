"""The public :class:`Engine` and :func:`run`: options and addresses checked up
front, then serving in this process (:class:`netreactor.server.Server`) or
under a worker supervisor (:class:`netreactor.supervisor.Supervisor`). The
choice between the two is made here, above both, so neither imports the other.

**Systemd socket activation** (``sd_listen_fds(3)``, as gunicorn does it): when
this process was started with sockets (``$LISTEN_PID`` is its pid and
``$LISTEN_FDS`` > 0), the engine serves those sockets -- ``fd://3``,
``fd://4``... in the socket unit's order -- *instead of* the addresses given
(they are logged as ignored), so one command line serves both with and
without activation. The variables are removed from the environment once read.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

from .address import Address, parse_address
from .debug import engine_collected, track_engine
from .framed import FramedHandler
from .handler import EventHandler
from .metrics import Snapshot
from .options import Options
from .reactor import EventLoop
from .server.activation import InheritedSocket, check_fd, listen_fds
from .server.limits import ConnectionLimits
from .server.listener import Listener
from .server.server import Server
from .supervisor import Supervisor, worker_count

__all__ = ["Engine", "run", "parse_addresses", "check_handler"]


def check_handler(handler: Any) -> None:
    """``ValueError`` unless ``handler`` is a usable handler instance."""
    if isinstance(handler, type):
        raise ValueError(
            f"handler must be an instance, not the class {handler.__name__}: pass {handler.__name__}()")
    if not isinstance(handler, EventHandler):
        raise ValueError(
            f"handler must be an instance of netreactor.EventHandler, got {type(handler).__name__}")
    if isinstance(handler, FramedHandler):
        handler.check_codec()


def parse_addresses(addrs: Sequence[Any]) -> List[Address]:
    """Parse and check a list of addresses (at least one, no duplicates)."""
    if not addrs:
        raise ValueError("no address given; pass at least one, e.g. 'tcp://127.0.0.1:9000' "
                         "(or start under systemd socket activation)")
    parsed = [parse_address(a) for a in addrs]
    seen = set()
    for text, addr in zip(addrs, parsed, strict=True):
        key = str(addr)
        if key in seen and not (addr.transport != "unix" and addr.port == 0):
            raise ValueError(f"address {text!r} is given twice")
        seen.add(key)
    return parsed


def _check_tls(addresses: Sequence[Address], texts: Sequence[Any], options: Options) -> None:
    tls_addrs = [str(t) for a, t in zip(addresses, texts, strict=True) if a.tls]
    if tls_addrs and options.tls is None:
        raise ValueError(f"address {tls_addrs[0]!r} needs option 'tls' (an ssl.SSLContext, e.g. "
                         f"netreactor.tls.server_context(certfile, keyfile))")
    inherited = any(a.transport == "fd" for a in addresses)  # TCP ones serve TLS (see Server)
    if options.tls is not None and not tls_addrs and not inherited:
        raise ValueError("option 'tls' is set but no address uses it: give a tls://, tls4://, "
                         f"tls6:// or an inherited fd:// address (got {', '.join(map(str, texts))})")


class Engine:
    """A server: ``Engine(handler, *addresses, **options)``.

    Nothing is bound until :meth:`run` (blocking) or :meth:`start` (in a
    background thread). A bad address or option raises ``ValueError`` here.
    """

    def __init__(self, handler: EventHandler, *addrs: str, **options: Any) -> None:
        check_handler(handler)
        self.handler = handler
        self.options = Options.from_kwargs(options)
        self.logger: Any = self.options.get_logger()
        #: Sockets systemd passed (socket activation), by descriptor, until served.
        self._inherited: Dict[int, InheritedSocket] = {s.fd: s for s in listen_fds()}
        if self._inherited:
            served = ", ".join(f"fd://{s.fd} ({s.name}: {s.address})" for s in self._inherited.values())
            ignored = f"; ignoring {', '.join(map(str, addrs))}" if addrs else ""
            self.logger.info("socket activation: serving %s%s", served, ignored)
            addrs = tuple(f"fd://{fd}" for fd in self._inherited)
        self._addresses = parse_addresses(addrs)
        _check_tls(self._addresses, addrs, self.options)
        self._check_deployment()
        self._lock = threading.RLock()
        self._state = "new"
        self._stop_requested = False
        self._booted = threading.Event()
        self._done = threading.Event()
        self._boot_error: Optional[BaseException] = None
        self._thread: Optional[threading.Thread] = None
        # What serves: a Server (one process, or inside a worker), or a Supervisor.
        self._impl: Union[Server, Supervisor, None] = None
        #: netreactor.serve(): an asyncio future done once the server stopped serving.
        self._embedded_stopped: Any = None

    def _check_deployment(self) -> None:
        """What Options cannot check alone: inherited descriptors, the metrics
        address against the served ones, options that need worker processes."""
        for addr in self._addresses:
            if addr.transport == "fd" and addr.fd not in self._inherited:
                try:
                    check_fd(addr.fd)
                except ValueError as exc:
                    raise ValueError(f"address 'fd://{addr.fd}': {exc}") from None
        opts = self.options
        if opts.metrics is not None:
            metrics_addr = parse_address(opts.metrics)
            if any(str(a) == str(metrics_addr) for a in self._addresses) and \
                    (metrics_addr.transport == "unix" or metrics_addr.port != 0):
                raise ValueError(f"option 'metrics': {opts.metrics!r} is also an address to serve")
        if worker_count(opts) <= 1:
            for name in ("max_connections_per_worker", "max_worker_rss"):
                if getattr(opts, name) is not None:
                    raise ValueError(f"option {name!r} needs worker processes (workers=N): "
                                     f"it replaces workers, and there are none")

    # ------------------------------------------------------------------ public API

    def stats(self) -> Snapshot:
        """The engine's counters now (:class:`netreactor.metrics.Snapshot`):
        ``snapshot["accepted"]``, ``snapshot.total``, and per loop
        ``snapshot.loops[i]``. Under a worker supervisor, the sum over the
        workers as they last reported (about once a second), counters
        including those of workers that have exited. Safe from any thread."""
        impl = self._impl
        if impl is None:
            return Snapshot.from_loops([])
        return impl.stats()

    @property
    def metrics_address(self) -> Optional[str]:
        """Where ``/metrics`` is served (with the real port when 0 was asked),
        once bound; None when the ``metrics`` option is not set."""
        impl = self._impl
        return impl.metrics_address if impl is not None else None

    @property
    def addresses(self) -> List[str]:
        """The bound addresses (with real port numbers), once running."""
        impl = self._impl
        if isinstance(impl, Supervisor):
            return impl.bound_addresses
        return impl.addresses if impl is not None else []

    @property
    def loops(self) -> List[EventLoop]:
        """The event loops serving connections in this process (empty until it
        serves, and in a worker supervisor)."""
        impl = self._impl
        return impl.loops if isinstance(impl, Server) else []

    @property
    def num_loops(self) -> int:
        """Event loops serving connections (in this process)."""
        impl = self._impl
        return len(impl.loops) if isinstance(impl, Server) else 0

    @property
    def spawner(self) -> Any:
        """What runs ``conn.spawn`` coroutines in this process (a
        :class:`netreactor.spawner.Spawner`: its ``in_flight``, ``capacity``,
        ``paused_connections`` and ``pauses``), or None without asyncio."""
        impl = self._impl
        return impl.spawner if isinstance(impl, Server) else None

    @property
    def running(self) -> bool:
        """True from :meth:`run` (or :meth:`start`) until it has stopped."""
        return self._state in ("booting", "running")

    @property
    def limits(self) -> Optional[ConnectionLimits]:
        """The connection limits' counts (``max_connections``,
        ``max_connections_per_ip``) of this process, once serving; None
        without limits or in a worker supervisor."""
        impl = self._impl
        return impl.limits if isinstance(impl, Server) else None

    def count_connections(self) -> int:
        """Open connections across all loops (of this process)."""
        impl = self._impl
        return impl.count_connections() if isinstance(impl, Server) else 0

    def stop(self) -> None:
        """Stop gracefully, from any thread (or a callback). A second call does nothing."""
        with self._lock:
            self._stop_requested = True
            impl = self._impl
        if impl is not None:
            impl.stop()

    def set_tls(self, context: Any) -> None:
        """Serve new TLS connections with ``context`` (an ``ssl.SSLContext``): certificate
        rotation without a restart. Build a new context; never change a live one.
        Connections already open keep theirs. From any thread. With worker
        processes, send the supervisor SIGHUP instead: the workers it starts
        build their contexts anew."""
        import ssl

        if not isinstance(context, ssl.SSLContext):
            raise ValueError(f"set_tls() needs an ssl.SSLContext, got {type(context).__name__}")
        impl = self._impl
        if isinstance(impl, Supervisor):
            raise RuntimeError("set_tls() in a worker supervisor: send it SIGHUP, and the new "
                               "workers build their contexts from the certificate files")
        self.options.tls = context
        if isinstance(impl, Server):
            impl.set_tls(context)

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Block until the engine has stopped; False on timeout."""
        return self._done.wait(timeout)

    def start(self, timeout: float = 30.0) -> Engine:
        """Run in a background thread; return once serving (or raise what boot raised)."""
        with self._lock:
            if self._state != "new":
                raise RuntimeError("an engine can be started once")
        self._thread = threading.Thread(target=self._run_quietly, name="netreactor-engine", daemon=True)
        self._thread.start()
        if not self._booted.wait(timeout):
            self.stop()
            raise TimeoutError(f"engine did not boot within {timeout}s")
        if self._boot_error is not None:
            raise self._boot_error
        return self

    def __enter__(self) -> Engine:
        if self._state == "new":
            self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()
        self.wait()
        if self._thread is not None:
            self._thread.join()

    def run(self) -> None:
        """Bind, boot, serve on the calling thread until stopped, then shut down."""
        with self._lock:
            if self._state != "new":
                raise RuntimeError("an engine can be run once")
            self._state = "booting"
            if self.options.debug:
                track_engine(self)
            count = worker_count(self.options)
            impl: Union[Server, Supervisor]
            if count > 1:
                impl = Supervisor(_EngineWorker(self), self._addresses, self.options, self.logger, count,
                                  inherited=self._inherited)
            else:
                impl = Server(self.handler, self._addresses, self.options, self.logger, facade=self,
                              inherited=self._inherited)
            self._impl = impl
            if self._stop_requested:
                impl.stop()
        try:
            if isinstance(impl, Supervisor):
                impl.run()
            else:
                impl.serve(on_ready=self._ready)
        except BaseException as exc:
            if not self._booted.is_set():
                self._boot_error = exc
            raise
        finally:
            self._state = "stopped"
            self._booted.set()
            self._done.set()

    # ------------------------------------------------------------------ embedding (netreactor.embed)

    def _embedded_server(self, primary_loop: Callable[[int, Any, Any], EventLoop]) -> Server:
        """The Server of this engine for ``netreactor.serve()``: its primary loop is
        made by ``primary_loop`` and driven by the asyncio program, not by run()."""
        with self._lock:
            if self._state != "new":
                raise RuntimeError("an engine can be run once")
            self._state = "booting"
            impl = Server(self.handler, self._addresses, self.options, self.logger, facade=self,
                          own_signals=False, primary_loop=primary_loop)
            self._impl = impl
            if self._stop_requested:
                impl.stop()
        return impl

    def _embedded_done(self) -> None:
        self._state = "stopped"
        self._booted.set()
        self._done.set()

    async def wait_stopped(self) -> None:
        """From an asyncio program: return once the engine has stopped serving
        (``stop()``, ``Action.SHUTDOWN``). Inside ``async with netreactor.serve(...)``
        this is the way to serve until a handler stops the engine."""
        import asyncio

        stopped = self._embedded_stopped
        if stopped is not None:
            await asyncio.shield(stopped)
        elif not self._done.is_set():
            await asyncio.get_running_loop().run_in_executor(None, self._done.wait)

    def __del__(self) -> None:
        options = self.__dict__.get("options")  # None if __init__ raised
        if options is not None and options.debug:
            engine_collected(self)

    def __repr__(self) -> str:
        where = ", ".join(self.addresses) if "_impl" in self.__dict__ else ""
        return f"<Engine {self.__dict__.get('_state', 'new')} {where or 'unbound'}>"

    def _ready(self) -> None:
        self._state = "running"
        self._booted.set()

    def _run_quietly(self) -> None:
        try:
            self.run()
        except BaseException:
            if self._booted.is_set() and self._boot_error is None:
                self.logger.exception("engine stopped with an error")


class _EngineWorker:
    """The engine's face to its worker processes (a supervisor's WorkerTarget):
    inside a forked worker, the engine serves through a Server of its own."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def serve_worker(self, listeners: Dict[int, Listener], logger: Any,
                     on_ready: Callable[[], None], on_stats: Callable[[Snapshot], None]) -> None:
        engine = self._engine
        engine.logger = logger
        server = Server(engine.handler, engine._addresses, engine.options, logger, facade=engine,
                        prebound=listeners, own_signals=False, stats_sink=on_stats)
        with engine._lock:
            engine._impl = server
            stop = engine._stop_requested  # a signal that came before the server existed
        if stop:
            server.stop()
        server.serve(on_ready=on_ready)

    def stop(self) -> None:
        self._engine.stop()

    def retire(self, timeout: float) -> None:
        impl = self._engine._impl
        if isinstance(impl, Server):
            impl.retire(timeout)


def run(handler: EventHandler, *addrs: str, **options: Any) -> None:
    """Serve ``handler`` on ``addrs`` until stopped (``Action.SHUTDOWN``,
    :meth:`Engine.stop`, SIGINT/SIGTERM). See :class:`netreactor.options.Options`."""
    Engine(handler, *addrs, **options).run()
