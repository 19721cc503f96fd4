"""One process's server: listeners, event loops, load balancing and lifecycle.

Two serving models, as in gnet:

* **main reactor** (default with ``loops > 1``): one loop accepts and hands
  each connection to a sub-reactor chosen by the load balancer. With
  ``loops=1`` there is no hand-off at all: the listener lives on the only loop.
* **reuse_port**: every loop owns its own SO_REUSEPORT listener (Unix
  listeners, which SO_REUSEPORT does not spread, are shared with
  ``EPOLLEXCLUSIVE``) and the kernel spreads connections.

The loop that runs in the caller's thread (the main reactor, or loop 0) also
runs ``on_boot``, ``on_tick`` and ``on_shutdown``. The other loops are threads.

Lifecycle of :meth:`Server.serve`: bind every address (a failure raises before
anything serves) -> ``on_boot`` -> serve until :meth:`stop` (or SHUTDOWN, or
SIGINT/SIGTERM when allowed to own signals) -> close every connection after
flushing (at most ``shutdown_timeout``) -> ``on_shutdown`` -> release.
:meth:`retire` is the gentler stop of a worker being replaced: stop accepting,
let open connections finish on their own for up to ``graceful_timeout``, then
stop.

``SystemExit`` and ``KeyboardInterrupt`` from a handler are not contained: the
server stops, every connection is closed (``EngineStoppedError``),
``on_shutdown`` runs, and :meth:`serve` raises the exception.

This module knows nothing of worker processes; the supervisor drives a
Server through this public interface.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
import threading
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Sequence, Union

if TYPE_CHECKING:  # pragma: no cover
    import ssl

from .. import metrics
from ..address import Address, parse_address
from ..callbacks import call
from ..debug import DebugHandler, check_setup, conn_class
from ..errors import EngineStoppedError
from ..handler import Action, EventHandler
from ..options import Options
from ..pool import queue_depth
from ..reactor import EventLoop, new_poller
from ..runtime import gil_enabled
from ..spawner import Spawner
from ..stream import StreamContext
from ..stream.conn import Preamble
from ..stream.proxy_preamble import proxy_preamble_factory
from ..stream.sockopts import tune_tcp
from ..ticker import run_tick
from .acceptor import Acceptor
from .activation import InheritedSocket
from .balancer import make_balancer
from .datagram import DatagramEndpoint
from .limits import ConnectionLimits
from .listener import Listener, bind_group

__all__ = ["Server", "STATS_INTERVAL"]

#: Seconds between two stats reports to a ``stats_sink`` (a worker's supervisor).
STATS_INTERVAL = 1.0

Source = Union[Acceptor, DatagramEndpoint]
#: ``factory(peer_address, ctx)``: the preambles of one accepted connection.
PreambleFactory = Callable[[Any, StreamContext], Sequence[Preamble]]


def _proxy_only(proxy: Callable[[Any], Preamble]) -> PreambleFactory:
    return lambda peer, ctx: (proxy(peer),)


def _count_refused(slot: _LoopSlot) -> None:
    """On the slot's loop: one connection accepted and refused over max_connections_per_ip."""
    counts = slot.ctx.counts
    counts["accepted"] += 1
    counts["refused.per_ip"] += 1
#: ``factory(index, poller, logger)``: an event loop.
LoopFactory = Callable[[int, Any, Any], EventLoop]


def _nothing() -> None:
    pass


class _LoopSlot:
    """A serving loop as the server sees it: the loop, its connection context,
    and the hand-off counts of the least-connections balancer."""

    __slots__ = ("loop", "ctx", "handed", "adopted")

    def __init__(self, loop: EventLoop, ctx: StreamContext) -> None:
        self.loop = loop
        self.ctx = ctx
        #: Connections handed to this loop by the main reactor (written only by it).
        self.handed = 0
        #: Of those, adopted by this loop (written only by this loop's thread).
        self.adopted = 0

    @property
    def conn_count(self) -> int:
        return self.loop.conn_count


class Server:
    """Serve ``handler`` on ``addresses`` in this process.

    ``facade`` is what ``on_boot``/``on_shutdown`` receive (the public Engine);
    ``prebound`` maps address indexes to listeners a supervisor bound
    already; ``inherited`` holds sockets adopted already (systemd's), by
    descriptor, for ``fd://N`` addresses; ``own_signals`` lets :meth:`serve`
    handle SIGINT/SIGTERM when it runs on the main thread. With ``stats_sink``
    (a worker: its supervisor serves the metrics), the ``metrics`` option is
    not served here; instead ``stats_sink(snapshot)`` is called every
    :data:`STATS_INTERVAL` seconds and once more after the last connection closed.
    """

    def __init__(self, handler: EventHandler, addresses: Sequence[Address], options: Options,
                 logger: Any, *, facade: Any = None, prebound: Optional[Dict[int, Listener]] = None,
                 own_signals: bool = True, inherited: Optional[Dict[int, InheritedSocket]] = None,
                 stats_sink: Optional[Callable[[metrics.Snapshot], None]] = None,
                 primary_loop: Optional[LoopFactory] = None) -> None:
        # Debug mode sees the handler through a proxy that times its callbacks.
        self.handler: Any = DebugHandler(handler, options.slow_callback_duration, logger) \
            if options.debug else handler
        self.options = options
        self.logger = logger
        #: max_connections / max_connections_per_ip, or None when neither is set.
        self.limits: Optional[ConnectionLimits] = None
        if options.max_connections is not None or options.max_connections_per_ip is not None:
            self.limits = ConnectionLimits(options.max_connections, options.max_connections_per_ip,
                                           logger)
        self._conn_class = conn_class(options)
        self._addresses = list(addresses)
        self._facade: Any = facade if facade is not None else self  # the public Engine, duck-typed
        self._prebound = dict(prebound or {})
        self._own_signals = own_signals
        # Reentrant: the SIGINT/SIGTERM handler calls stop() on the main thread,
        # which may be inside stop() already when the signal lands.
        self._lock = threading.RLock()
        self._stop_requested = False
        self._serving = False
        self._escaped: Optional[BaseException] = None  # SystemExit/KeyboardInterrupt from a loop thread
        self._listeners: List[Listener] = []
        self._bound: List[Listener] = []       # one per address, in the order given
        self._slots: List[_LoopSlot] = []      # loops that own connections
        self._all_loops: List[EventLoop] = []  # plus the main reactor, if any
        self._sources: List[Source] = []
        self._primary: Optional[EventLoop] = None
        self._inherited = inherited if inherited is not None else {}
        self._stats_sink = stats_sink
        self._metrics: Optional[Listener] = None
        self._metrics_ctx: Optional[StreamContext] = None
        self._tls: Optional[ssl.SSLContext] = None  # set when serving starts (see _setup_tls)
        self._threads: List[threading.Thread] = []
        self._restore_signals: Callable[[], None] = _nothing
        #: ``primary_loop(index, poller, logger)`` makes the loop that serve()'s
        #: caller drives (embedding: netreactor.embed); None: a plain EventLoop.
        self._primary_factory = primary_loop
        self._spawner: Optional[Spawner] = None
        if options.asyncio or primary_loop is not None:
            self._spawner = Spawner(options.asyncio_max_tasks, options.asyncio_low_water,
                                    logger=logger, shutdown_timeout=options.shutdown_timeout)

    # ------------------------------------------------------------------ public

    @property
    def addresses(self) -> List[str]:
        """The bound addresses (with real port numbers), once bound."""
        return [lst.bound_address() for lst in self._bound]

    @property
    def loops(self) -> List[EventLoop]:
        """The loops that own connections."""
        return [slot.loop for slot in self._slots]

    def count_connections(self) -> int:
        return sum(slot.loop.conn_count for slot in self._slots)

    @property
    def metrics_address(self) -> Optional[str]:
        """Where ``/metrics`` is served (the real port), once bound; None without it."""
        return self._metrics.bound_address() if self._metrics is not None else None

    def stats(self) -> metrics.Snapshot:
        """The counters of every serving loop and their total, now; from any thread
        (each value is read as its loop left it a moment ago)."""
        rows = []
        for slot in self._slots:
            ctx = slot.ctx
            counts = dict(ctx.counts)  # one C-level copy: the loop may add to it meanwhile
            row = {key: counts.get(key, 0) for key in metrics.LOOP_KEYS}
            row["open"] = ctx.open
            row["bytes_in"], row["bytes_out"] = ctx.traffic()
            row["frames_in"] = ctx.frames_in
            row["frames_out"] = ctx.frames_out
            row["tls_handshakes"] = ctx.tls_handshakes
            row["tls_failures"] = ctx.tls_handshake_failures
            row["paused"], row["queued_out"] = ctx.gauges()
            rows.append(row)
        return metrics.Snapshot.from_loops(rows, {"pool_queue": queue_depth()})

    @property
    def spawner(self) -> Optional[Spawner]:
        """What runs ``conn.spawn`` coroutines (None without asyncio)."""
        return self._spawner

    @property
    def primary(self) -> Optional[EventLoop]:
        """The loop on the thread that called :meth:`serve` (or :meth:`begin`)."""
        return self._primary

    def stop(self) -> None:
        """Stop gracefully, from any thread (or a callback). A second call does nothing."""
        with self._lock:
            if self._stop_requested:
                return
            self._stop_requested = True
            loops = list(self._all_loops) if self._serving else []
        for loop in loops:
            loop.call_soon_threadsafe(self._shutdown_loop, loop, urgent=True)

    def retire(self, timeout: float) -> None:
        """From any thread: stop accepting, keep serving the open connections until
        they have all closed or ``timeout`` seconds have passed, then stop."""
        with self._lock:
            if self._stop_requested or not self._serving:
                return
            loops = list(self._all_loops)
        remaining = [len(loops)]

        def idle() -> None:
            remaining[0] -= 1
            if remaining[0] == 0:
                self.stop()

        def retire_loop(loop: EventLoop) -> None:
            for source in self._sources:
                if source.loop is loop:
                    source.stop()
            if self._metrics_ctx is not None and self._metrics_ctx.loop is loop:
                for conn in self._metrics_ctx.connections():  # a scraper's keep-alive is not work
                    conn.close()
            loop.when_empty(idle)

        for loop in loops:
            loop.call_soon_threadsafe(retire_loop, loop, urgent=True)
        self._primary.call_soon_threadsafe(  # type: ignore[union-attr]
            self._primary.call_later, timeout, self.stop)  # type: ignore[union-attr]

    # ------------------------------------------------------------------ serving

    def serve(self, on_ready: Optional[Callable[[], None]] = None) -> None:
        """Bind, boot, serve on the calling thread until stopped, then shut down.
        ``on_ready()`` runs once bound and booted, just before serving."""
        try:
            if not self.begin():
                return
            try:
                self.launch(on_ready)
                self._loop_main(self._primary)  # type: ignore[arg-type]
            finally:
                self.end()
            self.raise_escaped()
        finally:
            self.release()

    # serve() in steps, for a caller that drives the primary loop itself (an
    # asyncio program: netreactor.embed): begin() -> launch() -> (the primary
    # loop runs until stopped) -> end() -> release(), release() always.

    def begin(self) -> bool:
        """Set up TLS and the loops, bind, run ``on_boot``; False if it said SHUTDOWN."""
        self._setup_tls()
        self._setup_loops()
        self._bind()
        if self.options.debug:
            check_setup(self.handler, self.options, self.logger)
        if self.handler.on_boot(self._facade) is Action.SHUTDOWN:
            self.logger.info("on_boot returned SHUTDOWN; not serving")
            return False
        with self._lock:
            self._serving = True
            if self._stop_requested:  # stop() during on_boot
                for loop in self._all_loops:
                    loop.call_soon_threadsafe(self._shutdown_loop, loop, urgent=True)
        return True

    def launch(self, on_ready: Optional[Callable[[], None]] = None) -> None:
        """Start the other loops' threads, the ticker and the signal handlers; then ``on_ready()``."""
        primary: EventLoop = self._primary  # type: ignore[assignment]
        self._threads = [threading.Thread(target=self._loop_main, args=(loop,), daemon=True,
                                          name=f"netreactor-loop-{loop.index}")
                         for loop in self._all_loops if loop is not primary]
        if self.options.ticker:
            primary.call_soon(self._tick)
        if self._stats_sink is not None:
            primary.call_later(STATS_INTERVAL, self._report_stats)
        for t in self._threads:
            t.start()
        self._restore_signals = self._install_signals()
        # Logged once SIGINT/SIGTERM are handled, so whoever reads it may stop us gracefully.
        self.logger.info("serving %s on %d loop(s)", ", ".join(self.addresses), len(self._slots))
        if on_ready is not None:
            on_ready()

    def join_loops(self, timeout: Optional[float] = None) -> None:
        """Stop, and wait for the other loops' threads (any thread)."""
        self.stop()
        for t in self._threads:
            t.join(timeout)

    def end(self) -> None:
        """After the primary loop returned: stop and join the others, close what is
        left, run ``on_shutdown``."""
        try:
            self.join_loops()
            self._restore_signals()
        finally:
            # Also when SystemExit or KeyboardInterrupt escaped a handler:
            # every peer gets its close, and the handler its on_shutdown.
            self._close_leftovers()
            call(self.logger, self.handler, "on_shutdown", None, self.handler.on_shutdown,
                 self._facade)
            if self._stats_sink is not None:
                self._send_stats()  # the last word: every connection is counted closed

    def raise_escaped(self) -> None:
        """Raise the SystemExit/KeyboardInterrupt that escaped a loop thread, if one did."""
        if self._escaped is not None:
            raise self._escaped

    def _setup_tls(self) -> None:
        """Build (or take) the TLS context here, where serving starts: in a
        worker process, after the fork, so that no two workers share one."""
        tls = self.options.tls
        if tls is None or not callable(tls):  # an SSLContext (which is not callable), or none
            self._tls = tls
            return
        import ssl

        context = tls()
        if not isinstance(context, ssl.SSLContext):
            raise ValueError(f"option 'tls': the function returned {type(context).__name__}, "
                             "not an ssl.SSLContext")
        self._tls = context

    def _loop_count(self) -> int:
        if self.options.multicore and not gil_enabled():
            return os.cpu_count() or 1
        return self.options.loops

    def _setup_loops(self) -> None:
        opts = self.options
        n = self._loop_count()
        main_reactor = n > 1 and not opts.reuse_port
        for i in range(n):
            loop = self._new_loop(i, primary=i == 0 and not main_reactor)
            ctx = StreamContext(loop, self.handler, opts, self.stop, counts=metrics.loop_stats())
            ctx.spawner = self._spawner
            if self.limits is not None:
                ctx.on_closed = self.limits.closed
            self._slots.append(_LoopSlot(loop, ctx))
        self._all_loops = [slot.loop for slot in self._slots]
        if main_reactor:
            self._primary = self._new_loop(-1, primary=True)
            self._all_loops.insert(0, self._primary)
        else:
            self._primary = self._slots[0].loop

    def _new_loop(self, index: int, primary: bool = False) -> EventLoop:
        factory: LoopFactory = EventLoop
        if primary and self._primary_factory is not None:
            factory = self._primary_factory
        elif self.options.asyncio and self.options.asyncio_loop != "reactor":
            from ..reactor.aio import NestedEventLoop  # a loop that uvloop runs

            factory = NestedEventLoop
        loop = factory(index, new_poller(self.options.poller), self.logger)
        if self.options.debug:
            loop.set_debug(self.options.slow_callback_duration)
        return loop

    # ------------------------------------------------------------------ binding

    def _bind(self) -> None:
        opts = self.options
        main_reactor = self._primary is not self._slots[0].loop
        for index, addr in enumerate(self._addresses):
            prebound = self._prebound.pop(index, None)
            if addr.transport == "fd":
                self._serve_inherited(prebound if prebound is not None else
                                      Listener.from_fd(addr.fd, self._inherited, tls=opts.tls is not None),
                                      main_reactor)
            elif addr.transport == "udp":
                # Every loop reads the address through its own socket; SO_REUSEPORT
                # lets the kernel spread datagrams (and worker processes share it).
                reuse = opts.reuse_port or len(self._slots) > 1
                for slot, lst in zip(self._slots, self._bind_per_loop(addr, reuse, prebound), strict=True):
                    self._sources.append(DatagramEndpoint(slot.loop, lst.sock, self.handler, opts,
                                                          self.stop))
            elif opts.reuse_port and addr.transport != "unix" and prebound is None:
                for slot, lst in zip(self._slots, self._bind_per_loop(addr, True), strict=True):
                    self._sources.append(self._acceptor(slot.loop, lst, self._local_dispatch(slot, lst)))
            else:
                lst = prebound if prebound is not None else Listener(addr, opts, reuse_port=opts.reuse_port)
                self._listeners.append(lst)
                self._bound.append(lst)
                self._accept_on(lst, main_reactor)
        if opts.metrics is not None and self._stats_sink is None:
            self._serve_metrics(parse_address(opts.metrics))
        for source in self._sources:
            source.start()

    def _accept_on(self, lst: Listener, main_reactor: bool) -> None:
        """Accept on the stream listener ``lst``: on the main reactor, or on every loop."""
        if main_reactor:
            self._sources.append(self._acceptor(self._primary, lst,  # type: ignore[arg-type]
                                                self._handoff_dispatch(lst)))
        else:
            shared = len(self._slots) > 1
            for slot in self._slots:
                self._sources.append(self._acceptor(slot.loop, lst, self._local_dispatch(slot, lst), shared))

    def _serve_inherited(self, lst: Listener, main_reactor: bool) -> None:
        """Serve a socket bound by someone else (``fd://N``, systemd). It is one
        socket whatever ``reuse_port`` says: a stream one is accepted on as a
        shared listener; a datagram one is read by the first loop. A TCP one
        serves TLS with the ``tls`` option (see :meth:`Listener.from_fd`)."""
        self._listeners.append(lst)
        self._bound.append(lst)
        if lst.transport == "udp":
            slot = self._slots[0]
            self._sources.append(DatagramEndpoint(slot.loop, lst.sock, self.handler, self.options, self.stop))
        else:
            self._accept_on(lst, main_reactor)

    def _serve_metrics(self, addr: Address) -> None:
        """``GET /metrics`` on ``addr``, served by a MetricsHandler on the primary
        loop (no thread: a scrape is one more connection there). Its connections
        have a context of their own, so they are not counted in the stats."""
        primary: EventLoop = self._primary  # type: ignore[assignment]
        lst = Listener(addr, self.options)
        self._listeners.append(lst)
        self._metrics = lst
        handler = metrics.MetricsHandler(self.stats)
        self._metrics_ctx = StreamContext(primary, handler, self.options, lambda: None)
        slot = _LoopSlot(primary, self._metrics_ctx)
        adopt = self._adopt
        tcp = lst.transport == "tcp"

        def dispatch(sock: socket.socket, peer: Any) -> None:
            adopt(slot, sock, peer, tcp, None)

        self._sources.append(Acceptor(primary, lst, dispatch))

    def _bind_per_loop(self, addr: Address, reuse_port: bool,
                       first: Optional[Listener] = None) -> List[Listener]:
        """One socket per loop for ``addr``. ``first`` is the socket a worker
        supervisor bound for this process (its SO_REUSEPORT group is ours
        already); otherwise the whole group is bound here, checked first."""
        if first is None:
            group = (bind_group(addr, self.options, len(self._slots)) if reuse_port
                     else [Listener(addr, self.options)])
        else:
            if addr.port == 0:
                addr = dataclasses.replace(addr, port=first.sock.getsockname()[1])
            group = [first] + [Listener(addr, self.options, reuse_port=True) for _ in self._slots[1:]]
        self._listeners.extend(group)
        self._bound.append(group[0])
        return group

    # ------------------------------------------------------------------ accepting

    def _acceptor(self, loop: EventLoop, lst: Listener, dispatch: Callable[[socket.socket, Any], None],
                  shared: bool = False) -> Acceptor:
        acceptor = Acceptor(loop, lst, dispatch, shared, gate=self.limits)
        if self.limits is not None:
            self.limits.on_resume(lambda: loop.post(acceptor.release))
        return acceptor

    def _preambles_for(self, lst: Listener) -> Optional[PreambleFactory]:
        """What a connection accepted on ``lst`` runs before ``on_open``, as
        ``factory(peer_address, ctx) -> [Preamble, ...]`` (``ctx``: the
        StreamContext of the loop it goes to, which counts TLS handshakes);
        None for nothing.

        The PROXY protocol header comes first: a load balancer writes it before
        anything of the client's, a TLS ClientHello included; the TLS handshake
        goes after it and gets the bytes read past the header."""
        proxy = proxy_preamble_factory(self.options, lst.transport)
        if not lst.address.tls:
            return None if proxy is None else _proxy_only(proxy)
        from ..stream.tls import TLSHandshake  # plain servers do not even import ssl

        context_of = self._tls_context
        timeout = self.options.handshake_timeout

        def tls(peer: Any, ctx: StreamContext) -> Sequence[Preamble]:
            handshake = TLSHandshake(context_of, server_side=True, timeout=timeout, stats=ctx)
            return [handshake] if proxy is None else [proxy(peer), handshake]

        return tls

    def _tls_context(self) -> ssl.SSLContext:
        context = self._tls
        if context is None:
            raise ValueError("no TLS context")  # Engine checks tls:// against tls= up front
        return context

    def set_tls(self, context: ssl.SSLContext) -> None:
        """New TLS connections use ``context`` (a reference swap: any thread)."""
        self._tls = context

    def _local_dispatch(self, slot: _LoopSlot, lst: Listener) -> Callable[[socket.socket, Any], None]:
        adopt = self._adopt
        tcp = lst.transport == "tcp"
        preambles = self._preambles_for(lst)
        limits = self.limits
        if limits is not None:
            admit = limits.admit

            def admitted(sock: socket.socket, addr: Any) -> None:
                key = admit(addr)
                if key is None:
                    sock.close()  # over max_connections_per_ip
                    _count_refused(slot)
                else:
                    adopt(slot, sock, addr, tcp, preambles, False, key)

            return admitted

        def dispatch(sock: socket.socket, addr: Any) -> None:
            adopt(slot, sock, addr, tcp, preambles)

        return dispatch

    def _handoff_dispatch(self, lst: Listener) -> Callable[[socket.socket, Any], None]:
        pick = make_balancer(self.options.lb, self._slots)
        adopt = self._adopt
        tcp = lst.transport == "tcp"
        preambles = self._preambles_for(lst)
        limits = self.limits

        def dispatch(sock: socket.socket, addr: Any) -> None:
            key = None
            if limits is not None:
                key = limits.admit(addr)
                if key is None:
                    sock.close()  # over max_connections_per_ip
                    refused = pick(addr)  # counted on a serving loop, by its own thread
                    refused.loop.call_soon_threadsafe(_count_refused, refused)
                    return
            slot = pick(addr)
            slot.handed += 1
            slot.loop.call_soon_threadsafe(adopt, slot, sock, addr, tcp, preambles, True, key)

        return dispatch

    def _adopt(self, slot: _LoopSlot, sock: socket.socket, addr: Any, tcp: bool,
               preambles: Optional[PreambleFactory], handed: bool = False,
               key: Optional[str] = None) -> None:
        """On the slot's loop: set the socket up, register it, run its preambles
        and ``on_open``. ``key`` is what the connection limits admitted it
        under (None without limits)."""
        if handed:
            slot.adopted += 1
        loop = slot.loop
        counts = slot.ctx.counts
        counts["accepted"] += 1
        try:
            if loop.stopping:
                raise ConnectionAbortedError
            sock.setblocking(False)
            if tcp:
                tune_tcp(sock, self.options)
        except OSError:  # stopping, or the peer is already gone
            sock.close()
            counts["closed.local" if loop.stopping else "closed.peer"] += 1
            if key is not None:
                self.limits.cancelled(key)  # type: ignore[union-attr]
            return
        transport = slot.ctx.transport_for(sock.family)
        conn = self._conn_class(slot.ctx, sock.detach(), transport)
        if key is not None:
            self.limits.adopted(conn, key)  # type: ignore[union-attr]
        conn.start(preambles(addr, slot.ctx) if preambles is not None else ())

    # ------------------------------------------------------------------ running & stopping

    def _loop_main(self, loop: EventLoop) -> None:
        try:
            self._run_loop(loop)
        except (SystemExit, KeyboardInterrupt) as exc:
            # Not contained (as in asyncio): the server stops and serve() raises it.
            self.logger.info("%s raised on event loop %d; stopping", type(exc).__name__, loop.index)
            self.stop()
            if loop is self._primary:
                raise
            if self._escaped is None:  # raised again on the thread that called serve()
                self._escaped = exc
        except BaseException:
            self.logger.exception("event loop %d crashed", loop.index)
            self.stop()
            raise

    def _run_loop(self, loop: EventLoop) -> None:
        """Run ``loop`` until it stops: alone, or with asyncio on its thread and poller."""
        spawner = self._spawner
        if not self.options.asyncio or spawner is None:
            loop.run()
            return
        # asyncio (and uvloop) are imported only when asked for.
        from ..reactor.aio import NestedEventLoop, run_nested, run_with_asyncio

        try:
            if isinstance(loop, NestedEventLoop):
                import uvloop

                run_nested(loop, uvloop.new_event_loop, on_start=lambda aio: spawner.attach(loop, aio),
                           before_close=spawner.drain)
            else:
                run_with_asyncio(loop, on_start=lambda aio: spawner.attach(loop, aio),
                                 before_close=spawner.drain)
        finally:
            spawner.detach(loop)

    def _shutdown_loop(self, loop: EventLoop) -> None:
        """On ``loop``: stop accepting, close every connection after flushing, then stop."""
        loop.shutdown(self.options.shutdown_timeout, [s for s in self._sources if s.loop is loop])

    def _close_leftovers(self) -> None:
        # A loop that crashed leaves connections behind; close them here so
        # on_close still runs once for each before on_shutdown.
        for loop in self._all_loops:
            for conn in loop.connections():
                conn.abort(EngineStoppedError("engine stopped"))
            loop.finish()

    def release(self) -> None:
        """Close the listeners and the loops (last, whatever happened before)."""
        for lst in self._listeners:
            lst.close()
        for loop in self._all_loops:
            try:
                loop.close()
            except OSError:
                pass

    def _install_signals(self) -> Callable[[], None]:
        if not self._own_signals or threading.current_thread() is not threading.main_thread():
            return lambda: None
        previous = {}

        def on_signal(signum: int, frame: Any) -> None:
            self.logger.info("received %s, shutting down", signal.Signals(signum).name)
            self.stop()

        def on_retire(signum: int, frame: Any) -> None:
            timeout = self.options.graceful_timeout
            self.logger.info("received %s: no longer accepting; stopping once the open connections "
                             "have closed (at most %g s)", signal.Signals(signum).name, timeout)
            self.retire(timeout)

        handlers: Dict[int, Callable[[int, Any], None]] = {signal.SIGINT: on_signal, signal.SIGTERM: on_signal}
        if hasattr(signal, "SIGUSR1"):  # what a supervisor sends a worker it replaces, too
            handlers[signal.SIGUSR1] = on_retire
        for sig, handler in handlers.items():
            try:
                previous[sig] = signal.signal(sig, handler)
            except (ValueError, OSError):
                pass

        def restore() -> None:
            for sig, old in previous.items():
                try:
                    signal.signal(sig, old)
                except (ValueError, OSError, TypeError):
                    pass

        return restore

    # ------------------------------------------------------------------ stats

    def _report_stats(self) -> None:
        if self._stop_requested:
            return
        self._send_stats()
        self._primary.call_later(STATS_INTERVAL, self._report_stats)  # type: ignore[union-attr]

    def _send_stats(self) -> None:
        try:
            self._stats_sink(self.stats())  # type: ignore[misc]
        except Exception:
            self.logger.exception("reporting stats failed")

    # ------------------------------------------------------------------ ticker

    def _tick(self) -> None:
        if self._stop_requested:
            return
        delay, action = run_tick(self.handler, self.logger)
        if action is Action.SHUTDOWN:
            self.stop()
            return
        self._primary.call_later(delay, self._tick)  # type: ignore[union-attr]

