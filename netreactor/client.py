"""Outbound connections with the same handler API as the server.

    import netreactor as nr

    class Greeter(nr.EventHandler):
        def on_traffic(self, conn):
            print(conn.read())

    with nr.Client(Greeter()) as client:
        conn = client.dial("tcp://127.0.0.1:9000", timeout=5)
        conn.async_write(b"hello")

A client runs its own event loops in threads, or shares a running engine's
loops (``Client(handler, engine=engine)``), so that a proxy relays between an
inbound and an outbound connection on one loop, without crossing threads
(``dial_async(..., near=inbound_conn)``).

``dial`` blocks the calling thread until the connection is open and
``on_open`` has run; it refuses to run on one of the client's loop threads,
where it would stall every connection of that loop. Callbacks use
``dial_async``, which never blocks: name resolution of host names happens on a
helper thread, the connect itself is non-blocking on the loop.
"""

from __future__ import annotations

import concurrent.futures
import errno
import ipaddress
import os
import socket
import threading
from typing import Any, Callable, Dict, List, Optional, Set, Tuple, Union

from .address import Address, parse_address
from .callbacks import report
from .engine import check_handler
from .errors import EngineStoppedError
from .handler import Action, EventHandler
from .options import Options
from .reactor import WRITABLE, EventLoop, TimerHandle, new_poller
from .server.datagram import DatagramConn, DatagramEndpoint
from .debug import DebugHandler, conn_class
from .stream import Conn, StreamContext
from .stream.sockopts import apply_buffer_sizes, tune_tcp
from .ticker import run_tick

__all__ = ["Client"]

AnyConn = Union[Conn, DatagramConn]
DialCallback = Callable[[Optional[AnyConn], Optional[BaseException]], Any]

# Options that only make sense for a server.
_SERVER_ONLY = ("lb", "reuse_port", "reuse_addr", "workers", "cpu_affinity", "multicore", "backlog",
                "graceful_timeout",
                "udp_session_timeout", "udp_max_sessions", "multicast_interface",
                "max_connections", "max_connections_per_ip",
                "asyncio", "asyncio_loop", "asyncio_max_tasks", "asyncio_low_water")
_IN_PROGRESS = {errno.EINPROGRESS, errno.EALREADY, errno.EWOULDBLOCK}


class Client:
    """Dial and adopt connections served by ``handler``.

    Options are those of :class:`netreactor.Engine` that apply to connections
    (``loops``, buffer caps and water marks, ``tcp_no_delay``, ``tcp_keepalive``,
    socket buffer sizes, ``edge_triggered``, ``poller``, ``logger``,
    ``shutdown_timeout``). ``engine=`` shares that engine's loops instead of
    starting new ones (then ``loops`` and the poller are the engine's).
    """

    def __init__(self, handler: EventHandler, *, engine: Any = None, **options: Any) -> None:
        check_handler(handler)
        for name in _SERVER_ONLY:
            if name in options:
                raise ValueError(f"option {name!r} does not apply to a Client")
        self.options = Options.from_kwargs(options)
        self.logger = self.options.get_logger()
        # Debug mode sees the handler through a proxy that times its callbacks.
        self.handler: Any = DebugHandler(handler, self.options.slow_callback_duration, self.logger) \
            if self.options.debug else handler
        self._conn_class = conn_class(self.options)
        self._engine = engine
        self._loops: List[EventLoop] = []
        self._contexts: Dict[EventLoop, StreamContext] = {}
        self._threads: List[threading.Thread] = []
        self._conns: Set[Any] = set()
        self._endpoints: List[DatagramEndpoint] = []  # connected UDP sockets
        self._lock = threading.Lock()
        self._state = "new"
        self._next = 0
        self._resolver: Optional[concurrent.futures.ThreadPoolExecutor] = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> Client:
        """Start the client's loops (or attach to the engine's). Returns ``self``."""
        with self._lock:
            if self._state != "new":
                raise RuntimeError("a client can be started once")
            self._state = "running"
        if self._engine is not None:
            loops = list(self._engine.loops)
            if not loops or any(lp.finished for lp in loops):
                raise EngineStoppedError("the engine is not running")
            self._loops = loops
            self._make_contexts()
            return self
        for i in range(self.options.loops):
            loop = EventLoop(i, new_poller(self.options.poller), self.logger)
            if self.options.debug:
                loop.set_debug(self.options.slow_callback_duration)
            self._loops.append(loop)
            started = threading.Event()
            thread = threading.Thread(target=self._loop_main, args=(loop, started), daemon=True,
                                      name=f"netreactor-client-loop-{i}")
            self._threads.append(thread)
            thread.start()
            started.wait()
        self._make_contexts()
        return self

    def _make_contexts(self) -> None:
        # Dialed connections do not pause at write_high_water (see StreamContext).
        for loop in self._loops:
            self._contexts[loop] = StreamContext(loop, self.handler, self.options, self._request_stop,
                                                 pause_on_high_water=False)

    def _loop_main(self, loop: EventLoop, started: threading.Event) -> None:
        loop.call_soon(started.set)
        if self.options.ticker and loop.index == 0:
            loop.call_soon(self._tick, loop)
        try:
            loop.run()
        except BaseException:
            self.logger.exception("client event loop %d crashed", loop.index)

    def _request_stop(self) -> None:
        # Action.SHUTDOWN from a client callback: stop without waiting (we are on a loop thread).
        threading.Thread(target=self.stop, name="netreactor-client-stop", daemon=True).start()

    def stop(self, timeout: Optional[float] = None) -> None:
        """Close every connection of this client (``on_close`` with ``None``, after
        flushing what each owes) and stop the client's own loops. Idempotent."""
        with self._lock:
            if self._state != "running":
                self._state = "stopped"
                return
            self._state = "stopped"
        if self._engine is not None:
            for conn in list(self._conns):
                if not conn.closed:
                    conn.close()
            return
        for loop in self._loops:
            endpoints = [ep for ep in self._endpoints if ep.loop is loop]
            loop.call_soon_threadsafe(loop.shutdown, self.options.shutdown_timeout, endpoints, urgent=True)
        current = threading.current_thread()
        for thread in self._threads:
            if thread is not current:
                thread.join(timeout)
        for loop in self._loops:
            loop.finish()
            loop.close()
        if self._resolver is not None:
            self._resolver.shutdown(wait=False)

    def __enter__(self) -> Client:
        if self._state == "new":
            self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # ------------------------------------------------------------------ dialing

    def dial(self, address: str, timeout: Optional[float] = None, *, tls: Any = None,
             server_hostname: Optional[str] = None) -> AnyConn:
        """Connect to ``address`` (``tcp://``, ``udp://``, ``unix://``, ``tls://``...) and
        return the connection once ``on_open`` has run. Raises ``ConnectionRefusedError``,
        ``TimeoutError``, ``socket.gaierror``, ``ssl.SSLCertVerificationError``... with
        the address in the message. Not for use on the client's loop threads (see
        :meth:`dial_async`).

        ``tls://``: ``tls`` is the ``ssl.SSLContext`` (default:
        ``ssl.create_default_context()``, which verifies the certificate and the
        host name); ``server_hostname`` the name to verify and send as SNI
        (default: the address's host). ``timeout`` bounds the connect and the
        handshake together."""
        if self._on_a_loop_thread():
            raise RuntimeError("dial() would block the event loop; use dial_async() in callbacks")
        future: concurrent.futures.Future[AnyConn] = concurrent.futures.Future()

        def done(conn: Optional[AnyConn], err: Optional[BaseException]) -> None:
            if err is not None:
                future.set_exception(err)
            else:
                assert conn is not None  # a dial without an error has its connection
                future.set_result(conn)

        self.dial_async(address, done, timeout=timeout, tls=tls, server_hostname=server_hostname)
        return future.result()

    def dial_async(self, address: str, callback: DialCallback, timeout: Optional[float] = None,
                   near: Optional[AnyConn] = None, *, tls: Any = None,
                   server_hostname: Optional[str] = None) -> None:
        """Connect without blocking; ``callback(conn, err)`` runs on the connection's loop
        after ``on_open`` (or with the error). ``near=conn`` puts the new connection on
        ``conn``'s loop. ``tls``/``server_hostname``: as for :meth:`dial`. A bad address
        raises ``ValueError`` here, at once."""
        addr = parse_address(address)
        if timeout is not None and not (isinstance(timeout, (int, float)) and timeout > 0):
            raise ValueError(f"timeout must be a number of seconds > 0, got {timeout!r}")
        if addr.tls:
            callback = _TLSDial(callback, tls, server_hostname or addr.host, address,
                                timeout if timeout is not None else self.options.handshake_timeout)
        elif tls is not None or server_hostname is not None:
            raise ValueError(f"tls= and server_hostname= go with a tls:// address, not {address!r}")
        self._require_running()
        loop = near.loop if near is not None else self._pick_loop()
        if addr.transport == "unix":
            loop.call_soon_threadsafe(self._dial_step, callback, self._connect, loop, addr, address,
                                      socket.AF_UNIX, addr.sockaddr(), timeout, callback)
            return
        literal = _ip_literal(addr)
        if literal is not None:
            family, sockaddr = literal
            loop.call_soon_threadsafe(self._dial_step, callback, self._connect, loop, addr, address,
                                      family, sockaddr, timeout, callback)
            return
        # A host name: getaddrinfo blocks, so it runs on a helper thread.
        if self._resolver is None:
            self._resolver = concurrent.futures.ThreadPoolExecutor(4, thread_name_prefix="netreactor-resolve")
        self._resolver.submit(self._resolve, loop, addr, address, timeout, callback)

    def _resolve(self, loop: EventLoop, addr: Address, address: str, timeout: Optional[float],
                 callback: DialCallback) -> None:
        kind = socket.SOCK_DGRAM if addr.transport == "udp" else socket.SOCK_STREAM
        try:
            infos = socket.getaddrinfo(addr.host, addr.port, addr.family or socket.AF_UNSPEC, kind)
        except socket.gaierror as exc:
            err: BaseException = socket.gaierror(exc.errno, f"{exc.strerror} ({address})")
            loop.call_soon_threadsafe(report, self.logger, callback, None, err)
            return
        except Exception as exc:  # e.g. UnicodeError from IDNA for an over-long label
            err = socket.gaierror(socket.EAI_NONAME, f"cannot resolve {address}: {exc}")
            loop.call_soon_threadsafe(report, self.logger, callback, None, err)
            return
        family, _, _, _, sockaddr = infos[0]
        loop.call_soon_threadsafe(self._dial_step, callback, self._connect, loop, addr, address,
                                  family, sockaddr, timeout, callback)

    def _dial_step(self, callback: DialCallback, step: Callable[..., None], *args: Any) -> None:
        """Run one step of a dial on the loop; a bug in it still ends the dial
        (with the error), so that dial() cannot wait forever."""
        try:
            step(*args)
        except Exception as exc:
            self.logger.error("dialing failed inside netreactor", exc_info=exc)
            report(self.logger, callback, None, exc)

    def _connect(self, loop: EventLoop, addr: Address, address: str, family: int, sockaddr: Any,
                 timeout: Optional[float], callback: DialCallback) -> None:
        """On the loop: a non-blocking connect; completion is a writable socket."""
        if loop.stopping or self._state != "running":
            report(self.logger, callback, None, EngineStoppedError(f"client stopped; not dialing {address}"))
            return
        kind = socket.SOCK_DGRAM if addr.transport == "udp" else socket.SOCK_STREAM
        try:
            sock = socket.socket(family, kind)
        except OSError as exc:
            report(self.logger, callback, None, _with_address(exc, address))
            return
        sock.setblocking(False)
        try:
            # Before connecting, so TCP window scaling agrees with the buffer sizes.
            apply_buffer_sizes(sock, self.options)
        except OSError as exc:
            sock.close()
            report(self.logger, callback, None, _with_address(exc, address))
            return
        err = sock.connect_ex(sockaddr)
        if err == 0 or kind == socket.SOCK_DGRAM:
            if err:
                sock.close()
                report(self.logger, callback, None, _with_address(OSError(err, os.strerror(err)), address))
                return
            self._adopt(loop, sock, callback)
        elif err in _IN_PROGRESS and family != socket.AF_UNIX:
            _Connector(self, loop, sock, address, timeout, callback).start()
        else:
            sock.close()
            report(self.logger, callback, None, _with_address(OSError(err, os.strerror(err)), address))

    def enroll(self, sock: socket.socket) -> AnyConn:
        """Adopt an already connected socket (stream or datagram); returns the connection
        after ``on_open``. The client owns the socket from now on."""
        self._require_running()
        loop = self._pick_loop()
        if loop.on_loop_thread():
            box: List[Any] = []
            self._adopt(loop, sock, lambda c, e: box.append((c, e)))
            conn, err = box[0]
        else:
            if self._on_a_loop_thread():
                raise RuntimeError("enroll() from another loop's thread would block it")
            future: concurrent.futures.Future[Any] = concurrent.futures.Future()
            done: DialCallback = lambda c, e: future.set_result((c, e))
            loop.call_soon_threadsafe(self._dial_step, done, self._adopt, loop, sock, done)
            conn, err = future.result()
        if err is not None:
            raise err
        return conn  # type: ignore[no-any-return]  # the future holds (AnyConn, None) here

    def _adopt(self, loop: EventLoop, sock: socket.socket, callback: DialCallback) -> None:
        """On the loop: make ``sock`` a connection and run ``on_open``."""
        try:
            sock.setblocking(False)
            if sock.type == socket.SOCK_DGRAM:
                endpoint = DatagramEndpoint(loop, sock, self.handler, self.options, self._request_stop,
                                            connected=True)
                conn: Any = endpoint.peer
                endpoint.start()
                self._endpoints.append(endpoint)
                self._track(conn)
                endpoint.open_peer()
            else:
                if sock.family != socket.AF_UNIX:
                    tune_tcp(sock, self.options)
                ctx = self._contexts[loop]
                conn = self._conn_class(ctx, sock.detach(), ctx.transport_for(sock.family))
                self._track(conn)
                if isinstance(callback, _TLSDial):
                    # The dial completes when the handshake does (on_open has run then).
                    conn.start([callback.handshake()])
                    return
                conn.start()
        except OSError as exc:
            sock.close()
            report(self.logger, callback, None, exc)
            return
        report(self.logger, callback, conn, None)

    # ------------------------------------------------------------------ helpers

    def _track(self, conn: Any) -> None:
        conns = self._conns
        if len(conns) > 64 and len(conns) & 63 == 0:  # drop closed ones now and then
            for dead in [c for c in conns if c.closed]:
                conns.discard(dead)
        conns.add(conn)

    def _pick_loop(self) -> EventLoop:
        loops = self._loops
        self._next = (self._next + 1) % len(loops)
        return loops[self._next]

    def _require_running(self) -> None:
        if self._state != "running":
            raise EngineStoppedError("the client is not running; call start() first"
                                     if self._state == "new" else "the client is stopped")

    def _on_a_loop_thread(self) -> bool:
        return any(loop.on_loop_thread() and not loop.finished for loop in self._loops)

    def _tick(self, loop: EventLoop) -> None:
        if self._state != "running":
            return
        delay, action = run_tick(self.handler, self.logger)
        if action is Action.SHUTDOWN:
            self._request_stop()
            return
        loop.call_later(delay, self._tick, loop)


class _TLSDial:
    """A ``tls://`` dial's callback, and what its handshake needs. Errors
    before the handshake pass through as they are; a failed handshake names
    the address."""

    def __init__(self, callback: DialCallback, context: Any, server_hostname: str, address: str,
                 timeout: float) -> None:
        self.callback = callback
        self.context = context
        self.server_hostname = server_hostname
        self.address = address
        self.timeout = timeout

    def __call__(self, conn: Optional[AnyConn], err: Optional[BaseException]) -> None:
        self.callback(conn, err)

    def handshake(self) -> Any:
        import ssl

        from .stream.tls import TLSHandshake

        context = self.context
        if context is None:
            context = ssl.create_default_context()
        return TLSHandshake(lambda: context, server_side=False, server_hostname=self.server_hostname,
                            timeout=self.timeout, on_outcome=self._outcome)

    def _outcome(self, conn: Any, err: Optional[BaseException]) -> None:
        if err is None:
            self.callback(conn, None)
        else:
            self.callback(None, _tls_error(err, self.address))


def _tls_error(err: BaseException, address: str) -> BaseException:
    """The handshake's error, of the same kind, naming the address."""
    import ssl

    if isinstance(err, ssl.SSLCertVerificationError):
        named = ssl.SSLCertVerificationError(err.errno, f"{err.strerror or err} ({address})")
        named.verify_code = err.verify_code
        named.verify_message = err.verify_message
        named.reason = getattr(err, "reason", None)  # type: ignore[assignment]
        return named
    if isinstance(err, OSError) and err.errno is not None:
        return type(err)(err.errno, f"{err.strerror or err} ({address})")
    return type(err)(f"{err} ({address})") if isinstance(err, (TimeoutError, ConnectionError)) else err


class _Connector:
    """A connect in progress: its fd waits for writability in the loop's table."""

    __slots__ = ("client", "loop", "sock", "fd", "address", "callback", "timer")
    is_connection = False

    def __init__(self, client: Client, loop: EventLoop, sock: socket.socket, address: str,
                 timeout: Optional[float], callback: DialCallback) -> None:
        self.client = client
        self.loop = loop
        self.sock = sock
        self.fd = sock.fileno()
        self.address = address
        self.callback = callback
        self.timer: Optional[TimerHandle] = None
        if timeout is not None:
            self.timer = loop.call_later(timeout, self._timed_out, timeout)

    def start(self) -> None:
        self.loop.add(self.fd, self, WRITABLE)

    def _finish(self) -> None:
        self.loop.remove(self.fd)
        if self.timer is not None:
            self.timer.cancel()

    def handle_io(self, events: int) -> None:
        self._finish()
        err = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self.sock.close()
            report(self.client.logger, self.callback, None,
                    _with_address(OSError(err, os.strerror(err)), self.address))
            return
        self.client._adopt(self.loop, self.sock, self.callback)

    def abort(self, err: Optional[BaseException]) -> None:
        # The loop's last resort after an internal error.
        self._finish()
        self.sock.close()

    def _timed_out(self, timeout: float) -> None:
        self.timer = None
        self._finish()
        self.sock.close()
        report(self.client.logger, self.callback, None,
                TimeoutError(errno.ETIMEDOUT, f"connecting to {self.address} timed out after {timeout}s"))


def _ip_literal(addr: Address) -> Optional[Tuple[int, Any]]:
    host = addr.host or ("::1" if addr.family == socket.AF_INET6 else "127.0.0.1")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    if ip.version == 4:
        return socket.AF_INET, (host, addr.port)
    return socket.AF_INET6, (host, addr.port, 0, 0)


def _with_address(exc: OSError, address: str) -> OSError:
    """The same kind of error (OSError picks the subclass from errno), naming the address."""
    if exc.errno is None:
        return exc
    return OSError(exc.errno, f"{os.strerror(exc.errno)} ({address})")
