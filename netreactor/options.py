"""Engine options: defaults, documentation and up-front validation.

Every option is checked before anything is bound; a wrong value is a
``ValueError`` naming the option and what it accepts.
"""

from __future__ import annotations

import difflib
import logging
import os
from dataclasses import dataclass, field, fields
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, Union

__all__ = ["Options", "LOAD_BALANCERS", "POLLERS", "PROXY_PROTOCOLS", "ASYNCIO_LOOPS", "option_docs",
           "debug_from_environment"]

LOAD_BALANCERS = ("round-robin", "least-connections", "source-addr-hash")
POLLERS = ("auto", "epoll", "selectors")
PROXY_PROTOCOLS = ("off", "v1", "v2", "auto")
ASYNCIO_LOOPS = ("reactor", "uvloop")

KiB = 1024
MiB = 1024 * KiB


def opt(default: Any, doc: str) -> Any:
    """A field of :class:`Options` with its one-line documentation (the CLI's ``--help``)."""
    return field(default=default, metadata={"doc": doc})


def option_docs() -> Dict[str, str]:
    """Option name -> its documentation line."""
    return {f.name: f.metadata["doc"] for f in fields(Options)}


@dataclass
class Options:
    """All options of :func:`netreactor.run` / :class:`netreactor.Engine`, with defaults."""

    loops: int = opt(1, "Number of event loops (threads). See the README on threads versus processes.")
    multicore: bool = opt(False, "One worker process per CPU (GIL builds) or one loop per CPU "
                                 "(free-threaded builds).")
    lb: str = opt("round-robin", "How the main reactor spreads new connections over loops.")
    reuse_port: bool = opt(False, "Each loop owns its own SO_REUSEPORT listener instead of a main "
                                  "reactor accepting.")
    reuse_addr: bool = opt(True, "SO_REUSEADDR on TCP listeners (a port in TIME_WAIT can be bound).")
    ticker: bool = opt(False, "Call ``on_tick``.")
    read_buffer_cap: int = opt(64 * KiB, "Most bytes read from a socket per readable event (reads "
                                         "start small and grow while they fill up).")
    inbound_buffer_cap: int = opt(4 * MiB, "Hard cap of one connection's unconsumed inbound bytes; "
                                           "past it the connection is closed.")
    write_high_water: int = opt(256 * KiB, "Outbound bytes above which a connection stops being read "
                                           "(back-pressure).")
    write_low_water: int = opt(64 * KiB, "Outbound bytes below which a paused connection is read again.")
    write_buffer_cap: int = opt(8 * MiB, "Hard cap of one connection's queued outbound bytes; past it "
                                         "the connection is closed.")
    tcp_no_delay: bool = opt(True, "TCP_NODELAY on accepted TCP connections.")
    tcp_keepalive: Optional[float] = opt(None, "Keep-alive idle seconds on accepted TCP connections "
                                               "(None: off).")
    socket_recv_buffer: Optional[int] = opt(None, "SO_RCVBUF in bytes (None: kernel default).")
    socket_send_buffer: Optional[int] = opt(None, "SO_SNDBUF in bytes (None: kernel default).")
    edge_triggered: bool = opt(False, "Edge-triggered epoll (drain reads until EAGAIN, with a "
                                      "per-wake budget).")
    workers: Optional[int] = opt(None, "Worker processes (None or 1: serve in this process).")
    cpu_affinity: bool = opt(False, "Pin worker i to CPU i (workers only).")
    logger: Optional[Any] = opt(None, "Logger to use instead of ``logging.getLogger(\"netreactor\")``.")
    poller: str = opt("auto", "Poller backend: \"epoll\" (Linux), \"selectors\" (portable) or \"auto\".")
    shutdown_timeout: float = opt(5.0, "Seconds a graceful close may take (flushing what is owed, "
                                       "then waiting for the peer's EOF) before closing anyway.")
    graceful_timeout: float = opt(30.0, "Seconds a worker being replaced (SIGHUP roll) keeps serving "
                                        "its open connections before it stops.")
    backlog: int = opt(4096, "listen() backlog.")
    tls: Optional[Any] = opt(None, "TLS for tls:// addresses: an ssl.SSLContext (see netreactor.tls."
                                   "server_context), or a function returning one (called where "
                                   "serving starts, so each worker process builds its own).")
    handshake_timeout: float = opt(10.0, "Seconds a TLS handshake may take before its connection "
                                         "is closed.")
    udp_session_timeout: Optional[float] = opt(None, "UDP: give each peer a persistent session closed "
                                                     "after this many idle seconds (None: per-datagram).")
    udp_max_sessions: int = opt(65536, "UDP: most sessions at once; datagrams from new peers beyond "
                                       "it are dropped.")
    multicast_interface: Optional[str] = opt(None, "UDP multicast: the interface to join on (an IPv4 "
                                                   "address or an interface name).")
    idle_timeout: Optional[float] = opt(None, "Close a connection with no traffic in either direction "
                                              "for this many seconds (on_close gets IdleTimeoutError); "
                                              "None or 0: never. Off by default: what is idle depends "
                                              "on the protocol (see the README).")
    max_connections: Optional[int] = opt(None, "Most accepted connections at once (per worker process); "
                                               "past it, accepting pauses and newcomers wait in the "
                                               "listen backlog (None: no limit).")
    max_connections_per_ip: Optional[int] = opt(None, "Most accepted connections at once from one IP "
                                                      "address; more are closed at once, counted and "
                                                      "logged (None: no limit).")
    debug: bool = opt(False, "Debug mode: wrong-thread calls raise, slow callbacks are logged, unclosed "
                             "connections and engines warn (also NETREACTOR_DEBUG=1).")
    slow_callback_duration: float = opt(0.1, "Debug mode: seconds past which a callback is logged as "
                                             "slow.")
    proxy_protocol: str = opt("off", "PROXY protocol header before each TCP, TLS or Unix connection's "
                                     "data, read before a TLS handshake (HAProxy send-proxy, nginx "
                                     "proxy_protocol): \"off\", \"v1\", \"v2\" or \"auto\" (either "
                                     "version; one is required).")
    proxy_allow_from: Union[str, Sequence[str]] = opt(
        "127.0.0.1,::1", "Peers allowed to send a PROXY header: addresses and CIDR networks, "
                         "comma-separated, or \"*\"; other peers are refused (Unix peers always pass).")
    proxy_header_timeout: float = opt(5.0, "Seconds a connection may take to send its whole PROXY "
                                           "header before it is closed.")
    metrics: Optional[str] = opt(None, "Serve Prometheus text at /metrics on this address (tcp:// or "
                                       "unix://), from the engine itself; with workers, the supervisor "
                                       "serves the sum over them.")
    max_connections_per_worker: Optional[int] = opt(
        None, "Workers only: replace a worker (gracefully, as SIGHUP does) once it has accepted this "
              "many connections (gunicorn's --max-requests).")
    max_connections_per_worker_jitter: int = opt(
        0, "Workers only: add a random 0..N to each worker's max_connections_per_worker, so that "
           "workers are not all replaced at once.")
    max_worker_rss: Optional[int] = opt(
        None, "Workers only: replace a worker (gracefully) whose resident memory passes this many "
              "bytes (granian's --workers-max-rss; sizes may end in k, m, g).")
    asyncio: bool = opt(False, "Run an asyncio event loop on every event loop's thread, on the same "
                               "poller, for ``conn.spawn(coroutine)``.")
    asyncio_loop: str = opt("reactor", "asyncio: \"reactor\" (asyncio's loop polling through netreactor's "
                                       "poller: one epoll_wait for both) or \"uvloop\" (a uvloop loop "
                                       "running netreactor's, nested: faster coroutines, one more "
                                       "epoll_wait per wake-up).")
    asyncio_max_tasks: int = opt(1024, "asyncio: coroutines in flight per engine before spawning "
                                       "connections stop being read.")
    asyncio_low_water: Optional[int] = opt(None, "asyncio: coroutines in flight at or below which "
                                                 "paused connections are read again (None: half of "
                                                 "asyncio_max_tasks).")

    @classmethod
    def from_kwargs(cls, kwargs: Mapping[str, Any]) -> Options:
        """Build and validate options from keyword arguments."""
        names = [f.name for f in fields(cls)]
        for key in kwargs:
            if key not in names:
                close = difflib.get_close_matches(key, names, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else f"; accepted options: {', '.join(names)}"
                raise ValueError(f"unknown option {key!r}{hint}")
        if "debug" not in kwargs and debug_from_environment():
            kwargs = dict(kwargs, debug=True)
        opts = cls(**kwargs)
        opts.validate()
        return opts

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first option whose value is wrong."""
        _int("loops", self.loops, 1, 4096)
        for name in ("multicore", "reuse_port", "reuse_addr", "ticker", "tcp_no_delay",
                     "edge_triggered", "cpu_affinity", "debug", "asyncio"):
            _bool(name, getattr(self, name))
        _choice("lb", self.lb, LOAD_BALANCERS)
        _choice("poller", self.poller, POLLERS)
        _int("read_buffer_cap", self.read_buffer_cap, 512, 64 * MiB)
        _int("inbound_buffer_cap", self.inbound_buffer_cap, 512, 1 << 40)
        _int("write_buffer_cap", self.write_buffer_cap, 1, 1 << 40)
        _int("write_high_water", self.write_high_water, 1, 1 << 40)
        _int("write_low_water", self.write_low_water, 0, 1 << 40)
        if self.write_low_water > self.write_high_water:
            raise ValueError(
                f"option 'write_low_water' ({self.write_low_water}) must not exceed "
                f"'write_high_water' ({self.write_high_water})"
            )
        if self.write_high_water > self.write_buffer_cap:
            raise ValueError(
                f"option 'write_high_water' ({self.write_high_water}) must not exceed "
                f"'write_buffer_cap' ({self.write_buffer_cap})"
            )
        if self.tcp_keepalive is not None:
            _positive_seconds("tcp_keepalive", self.tcp_keepalive, allow_none=True)
        for name in ("socket_recv_buffer", "socket_send_buffer"):
            value = getattr(self, name)
            if value is not None:
                _int(name, value, 1, 1 << 31)
        if self.workers is not None:
            _int("workers", self.workers, 1, 1024)
        _positive_seconds("shutdown_timeout", self.shutdown_timeout, zero_ok=True)
        _positive_seconds("graceful_timeout", self.graceful_timeout, zero_ok=True)
        _int("backlog", self.backlog, 1, 1 << 20)
        if self.tls is not None:
            import ssl

            if not (isinstance(self.tls, ssl.SSLContext) or callable(self.tls)):
                raise ValueError("option 'tls' must be an ssl.SSLContext (netreactor.tls."
                                 f"server_context(...)) or a function returning one, got "
                                 f"{type(self.tls).__name__}")
        _positive_seconds("handshake_timeout", self.handshake_timeout)
        if self.udp_session_timeout is not None:
            _positive_seconds("udp_session_timeout", self.udp_session_timeout, allow_none=True)
        _int("udp_max_sessions", self.udp_max_sessions, 1, 1 << 24)
        if self.multicast_interface is not None:
            _interface("multicast_interface", self.multicast_interface)
        if self.idle_timeout is not None:
            _positive_seconds("idle_timeout", self.idle_timeout, zero_ok=True, allow_none=True)
        for name in ("max_connections", "max_connections_per_ip"):
            value = getattr(self, name)
            if value is not None:
                _int(name, value, 1, 1 << 24)
        _positive_seconds("slow_callback_duration", self.slow_callback_duration)
        _choice("asyncio_loop", self.asyncio_loop, ASYNCIO_LOOPS)
        if self.asyncio and self.asyncio_loop == "uvloop":
            import importlib.util

            if importlib.util.find_spec("uvloop") is None:
                raise ValueError("option 'asyncio_loop': 'uvloop' needs uvloop installed "
                                 "(pip install uvloop); or use 'reactor'")
        _int("asyncio_max_tasks", self.asyncio_max_tasks, 1, 1 << 24)
        if self.asyncio_low_water is not None:
            _int("asyncio_low_water", self.asyncio_low_water, 0, self.asyncio_max_tasks - 1)
        if self.logger is not None and not all(
            hasattr(self.logger, m) for m in ("debug", "info", "warning", "error", "exception")
        ):
            raise ValueError(
                f"option 'logger' must be a logging.Logger (or LoggerAdapter), got {type(self.logger).__name__}"
            )
        self._validate_deployment()
        if self.edge_triggered and self.poller == "selectors":
            raise ValueError(
                "option 'edge_triggered' needs the epoll poller; poller='selectors' is level-triggered only"
            )

    def _validate_deployment(self) -> None:
        from .address import parse_address
        from .protocols.proxy import AllowList

        _choice("proxy_protocol", self.proxy_protocol, PROXY_PROTOCOLS)
        spec = self.proxy_allow_from
        if not isinstance(spec, str) and not (isinstance(spec, (list, tuple, frozenset, set))
                                              and all(isinstance(s, str) for s in spec)):
            raise ValueError(f"option 'proxy_allow_from' must be a string of addresses and networks "
                             f"(comma-separated) or a list of them, got {spec!r}")
        try:
            AllowList(spec)
        except ValueError as exc:
            raise ValueError(f"option 'proxy_allow_from': {exc}".replace(": proxy_allow_from:", ":")) from None
        _positive_seconds("proxy_header_timeout", self.proxy_header_timeout)
        if self.metrics is not None:
            if not isinstance(self.metrics, str):
                raise ValueError(f"option 'metrics' must be an address such as 'tcp://127.0.0.1:9100', "
                                 f"got {self.metrics!r}")
            try:
                addr = parse_address(self.metrics)
            except ValueError as exc:
                raise ValueError(f"option 'metrics': {exc}") from None
            if addr.transport not in ("tcp", "unix"):
                raise ValueError(f"option 'metrics' must be a tcp:// or unix:// address, got {self.metrics!r}")
        if self.max_connections_per_worker is not None:
            _int("max_connections_per_worker", self.max_connections_per_worker, 1, 1 << 62)
        _int("max_connections_per_worker_jitter", self.max_connections_per_worker_jitter, 0, 1 << 62)
        if self.max_worker_rss is not None:
            _int("max_worker_rss", self.max_worker_rss, 1 << 20, 1 << 50)

    def get_logger(self) -> logging.Logger:
        return self.logger if self.logger is not None else logging.getLogger("netreactor")


def debug_from_environment() -> bool:
    """``NETREACTOR_DEBUG`` set to anything but empty or ``0`` turns debug mode on
    (as ``PYTHONASYNCIODEBUG`` does for asyncio) where ``debug`` is not given."""
    return os.environ.get("NETREACTOR_DEBUG", "") not in ("", "0")


def _int(name: str, value: Any, lo: int, hi: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"option {name!r} must be an integer in {lo}..{hi}, got {value!r}")
    if not lo <= value <= hi:
        raise ValueError(f"option {name!r} must be in {lo}..{hi}, got {value}")


def _bool(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"option {name!r} must be True or False, got {value!r}")


def _choice(name: str, value: Any, choices: Tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"option {name!r} must be one of {', '.join(repr(c) for c in choices)}; got {value!r}")


def _positive_seconds(name: str, value: Any, zero_ok: bool = False, allow_none: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value == value
    if ok and (value > 0 or (zero_ok and value == 0)) and value != float("inf"):
        return
    want = "a number of seconds >= 0" if zero_ok else "a number of seconds > 0"
    if allow_none:
        want += " or None"
    raise ValueError(f"option {name!r} must be {want}, got {value!r}")


def _interface(name: str, value: Any) -> None:
    import ipaddress
    import socket

    if isinstance(value, str) and value:
        try:
            ipaddress.IPv4Address(value)
            return
        except ValueError:
            pass
        try:
            socket.if_nametoindex(value)
            return
        except OSError:
            pass
    names = ", ".join(n for _, n in socket.if_nameindex()) if hasattr(socket, "if_nameindex") else ""
    raise ValueError(f"option {name!r} must be an IPv4 address or an interface name "
                     f"(here: {names}), got {value!r}")
