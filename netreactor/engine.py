"""The engine: listeners, event loops, load balancing and lifecycle.

Two serving models, as in gnet:

* **main reactor** (default): one loop accepts and hands each connection to a
  sub-reactor chosen by the load balancer. With ``loops=1`` there is no
  hand-off at all: the listener lives on the only loop.
* **reuse_port**: every loop owns its own SO_REUSEPORT listener (Unix
  listeners, which SO_REUSEPORT does not spread, are shared with
  ``EPOLLEXCLUSIVE``) and the kernel spreads connections.

The loop that runs in the caller's thread (the main reactor, or loop 0) also
runs ``on_boot``, ``on_tick`` and ``on_shutdown``. The other loops are threads.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
import sys
import threading
from typing import Any, List, Optional, Sequence, Tuple

from .address import Address, parse_address
from .balancer import make_balancer
from .conn import Conn, EdgeConn
from .datagram import DatagramEndpoint
from .errors import EngineStoppedError
from .eventloop import EventLoop
from .framed import FramedHandler
from .handler import Action, EventHandler
from .listener import Acceptor, Listener, bind_group, tune_tcp
from .options import Options
from .pollers import new_poller

__all__ = ["Engine", "run", "gil_enabled"]

#: Delay between ticks when ``on_tick`` returns None or something unusable.
DEFAULT_TICK = 1.0


def gil_enabled() -> bool:
    """False on a free-threaded CPython build running without the GIL."""
    check = getattr(sys, "_is_gil_enabled", None)
    return True if check is None else bool(check())


def _check_handler(handler: Any) -> None:
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
        raise ValueError("no address given; pass at least one, e.g. 'tcp://127.0.0.1:9000'")
    parsed = [parse_address(a) for a in addrs]
    seen = set()
    for text, addr in zip(addrs, parsed):
        key = str(addr)
        if key in seen and not (addr.transport != "unix" and addr.port == 0):
            raise ValueError(f"address {text!r} is given twice")
        seen.add(key)
    return parsed


class Engine:
    """A server: ``Engine(handler, *addresses, **options)``.

    Nothing is bound until :meth:`run` (blocking) or :meth:`start` (in a
    background thread). A bad address or option raises ``ValueError`` here.
    """

    def __init__(self, handler: EventHandler, *addrs: str, **options: Any) -> None:
        _check_handler(handler)
        self.handler = handler
        self.options = Options.from_kwargs(options)
        self._addresses = parse_addresses(addrs)
        self.logger = self.options.get_logger()
        # Reentrant: the SIGINT/SIGTERM handler calls stop() on the main thread,
        # which may be inside stop() already when the signal lands.
        self._lock = threading.RLock()
        self._state = "new"
        self._stop_requested = False
        self._booted = threading.Event()
        self._done = threading.Event()
        self._boot_error: Optional[BaseException] = None
        self._escaped: Optional[BaseException] = None  # SystemExit/KeyboardInterrupt from a loop thread
        self._thread: Optional[threading.Thread] = None
        self._listeners: List[Listener] = []
        self._bound: List[Listener] = []         # one per address, in the order given
        self._loops: List[EventLoop] = []      # loops that own connections
        self._all_loops: List[EventLoop] = []  # plus the main reactor, if any
        self._acceptors: List[Any] = []  # Acceptors and DatagramEndpoints: start()/stop() on their loop
        self._primary: Optional[EventLoop] = None
        # Address index -> listener bound beforehand by a worker supervisor (netreactor.workers).
        self._prebound: dict = {}

    # ------------------------------------------------------------------ public API

    @property
    def addresses(self) -> List[str]:
        """The bound addresses (with real port numbers), once running."""
        return [lst.bound_address() for lst in self._bound]

    @property
    def num_loops(self) -> int:
        """Event loops serving connections."""
        return len(self._loops)

    def count_connections(self) -> int:
        """Open connections across all loops."""
        return sum(loop.conn_count for loop in self._loops)

    def stop(self) -> None:
        """Stop gracefully, from any thread (or a callback). A second call does nothing."""
        with self._lock:
            if self._stop_requested:
                return
            self._stop_requested = True
            loops = list(self._all_loops)
        for loop in loops:
            loop.call_soon_threadsafe(self._shutdown_loop, loop, urgent=True)

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Block until the engine has stopped; False on timeout."""
        return self._done.wait(timeout)

    def start(self, timeout: float = 30.0) -> "Engine":
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

    def __enter__(self) -> "Engine":
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
        from .workers import supervise, worker_count  # lazy: workers imports this module

        try:
            if worker_count(self.options) > 1:
                supervise(self)  # forks workers, each of which calls _serve()
            else:
                self._serve()
        except BaseException as exc:
            if not self._booted.is_set():
                self._boot_error = exc
            raise
        finally:
            self._state = "stopped"
            self._booted.set()
            self._done.set()

    # ------------------------------------------------------------------ boot

    def _run_quietly(self) -> None:
        try:
            self.run()
        except BaseException:
            if self._booted.is_set() and self._boot_error is None:
                self.logger.exception("engine stopped with an error")

    def _loop_count(self) -> int:
        opts = self.options
        if opts.multicore and not gil_enabled():
            return os.cpu_count() or 1
        return opts.loops

    def _serve(self) -> None:
        opts = self.options
        n = self._loop_count()
        main_reactor = n > 1 and not opts.reuse_port
        try:
            for i in range(n):
                self._loops.append(self._new_loop(i))
            self._all_loops = list(self._loops)
            if main_reactor:
                self._primary = self._new_loop(-1)
                self._all_loops.insert(0, self._primary)
            else:
                self._primary = self._loops[0]
            self._bind(main_reactor)
            action = self.handler.on_boot(self)
            if action is Action.SHUTDOWN:
                self.logger.info("on_boot returned SHUTDOWN; not serving")
                return
            with self._lock:
                self._state = "running"
                if self._stop_requested:  # stop() during on_boot
                    for loop in self._all_loops:
                        loop.call_soon_threadsafe(self._shutdown_loop, loop, urgent=True)
            self._booted.set()
            try:
                self._run_loops()
            finally:
                # Also when SystemExit or KeyboardInterrupt escaped a handler:
                # every peer gets its close, and the handler its on_shutdown.
                self._close_leftovers()
                try:
                    self.handler.on_shutdown(self)
                except Exception:
                    self.logger.exception("handler %s.on_shutdown raised", type(self.handler).__name__)
            if self._escaped is not None:  # it escaped on a loop thread: raise it here
                raise self._escaped
        finally:
            self._release()

    def _new_loop(self, index: int) -> EventLoop:
        return EventLoop(index, new_poller(self.options.poller), self.handler, self.options,
                         self.logger, self.stop)

    def _bind(self, main_reactor: bool) -> None:
        opts = self.options
        for index, addr in enumerate(self._addresses):
            prebound = self._prebound.pop(index, None)
            if addr.transport == "udp":
                # Every loop reads the address through its own socket; SO_REUSEPORT
                # lets the kernel spread datagrams (and worker processes share it).
                reuse = opts.reuse_port or len(self._loops) > 1
                for loop, lst in zip(self._loops, self._bind_per_loop(addr, reuse, prebound)):
                    self._acceptors.append(DatagramEndpoint(loop, lst.sock, self.handler, opts))
            elif opts.reuse_port and addr.transport != "unix" and prebound is None:
                for loop, lst in zip(self._loops, self._bind_per_loop(addr, True)):
                    self._acceptors.append(Acceptor(loop, lst, self._local_dispatch(loop, lst)))
            else:
                lst = prebound if prebound is not None else Listener(addr, opts, reuse_port=opts.reuse_port)
                self._listeners.append(lst)
                self._bound.append(lst)
                if main_reactor:
                    self._acceptors.append(Acceptor(self._primary, lst, self._handoff_dispatch(lst)))
                else:
                    shared = len(self._loops) > 1
                    for loop in self._loops:
                        self._acceptors.append(Acceptor(loop, lst, self._local_dispatch(loop, lst), shared))
        for acc in self._acceptors:
            acc.start()

    def _bind_per_loop(self, addr: Address, reuse_port: bool,
                       first: Optional[Listener] = None) -> List[Listener]:
        """One socket per loop for ``addr``. ``first`` is the socket a worker
        supervisor bound for this process (its SO_REUSEPORT group is ours
        already); otherwise the whole group is bound here, checked first."""
        if first is None:
            group = (bind_group(addr, self.options, len(self._loops)) if reuse_port
                     else [Listener(addr, self.options)])
        else:
            if addr.port == 0:
                addr = dataclasses.replace(addr, port=first.sock.getsockname()[1])
            group = [first] + [Listener(addr, self.options, reuse_port=True)
                               for _ in self._loops[1:]]
        self._listeners.extend(group)
        self._bound.append(group[0])
        return group

    # ------------------------------------------------------------------ accepting

    def _local_dispatch(self, loop: EventLoop, lst: Listener):
        adopt = self._adopt
        tcp = lst.is_tcp

        def dispatch(sock: socket.socket, addr: Any) -> None:
            adopt(loop, sock, addr, tcp)

        return dispatch

    def _handoff_dispatch(self, lst: Listener):
        pick = make_balancer(self.options.lb, self._loops)
        adopt = self._adopt
        tcp = lst.is_tcp

        def dispatch(sock: socket.socket, addr: Any) -> None:
            loop = pick(addr)
            loop.handed += 1
            loop.call_soon_threadsafe(adopt, loop, sock, addr, tcp, True)

        return dispatch

    def _adopt(self, loop: EventLoop, sock: socket.socket, addr: Any, tcp: bool, handed: bool = False) -> None:
        """On ``loop``'s thread: set the socket up, register it, run ``on_open``."""
        if handed:
            loop.adopted += 1
        if getattr(loop, "closing_down", False):
            sock.close()
            return
        try:
            sock.setblocking(False)
            if tcp:
                tune_tcp(sock, self.options)
        except OSError:
            sock.close()  # the peer is already gone
            return
        conn = (EdgeConn if loop.edge_triggered else Conn)(loop, sock.detach())
        conn._open()

    # ------------------------------------------------------------------ running & stopping

    def _run_loops(self) -> None:
        threads = []
        for loop in self._all_loops:
            if loop is self._primary:
                continue
            t = threading.Thread(target=self._loop_main, args=(loop,), daemon=True,
                                 name=f"netreactor-loop-{loop.index}")
            threads.append(t)
        if self.options.ticker:
            self._primary.call_soon(self._tick)
        for t in threads:
            t.start()
        restore = self._install_signals()
        # Logged once SIGINT/SIGTERM are handled, so whoever reads it may stop us gracefully.
        self.logger.info("serving %s on %d loop(s)", ", ".join(self.addresses), len(self._loops))
        try:
            self._loop_main(self._primary)
        finally:
            self.stop()
            for t in threads:
                t.join()
            restore()

    def _loop_main(self, loop: EventLoop) -> None:
        try:
            loop.run()
        except (SystemExit, KeyboardInterrupt) as exc:
            # Not contained (as in asyncio): the engine stops and run() raises it.
            self.logger.info("%s raised on event loop %d; stopping", type(exc).__name__, loop.index)
            self.stop()
            if loop is self._primary:
                raise
            if self._escaped is None:  # raised again on the thread that called run()
                self._escaped = exc
        except BaseException:
            self.logger.exception("event loop %d crashed", loop.index)
            self.stop()
            raise

    def _shutdown_loop(self, loop: EventLoop) -> None:
        """On ``loop``: stop accepting, close every connection after flushing, then stop."""
        loop.shutdown(self.options.shutdown_timeout,
                      [acc for acc in self._acceptors if acc.loop is loop])

    def _close_leftovers(self) -> None:
        # A loop that crashed leaves connections behind; close them here so
        # on_close still runs once for each before on_shutdown.
        for loop in self._all_loops:
            for conn in loop.connections():
                conn._close_now(EngineStoppedError("engine stopped"))
            loop.finish()

    def _release(self) -> None:
        for lst in self._listeners:
            lst.close()
        for loop in self._all_loops:
            try:
                loop.close()
            except OSError:
                pass

    def _install_signals(self):
        if threading.current_thread() is not threading.main_thread():
            return lambda: None
        previous = {}

        def on_signal(signum: int, frame: Any) -> None:
            self.logger.info("received %s, shutting down", signal.Signals(signum).name)
            self.stop()

        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                previous[sig] = signal.signal(sig, on_signal)
            except (ValueError, OSError):
                pass

        def restore() -> None:
            for sig, old in previous.items():
                try:
                    signal.signal(sig, old)
                except (ValueError, OSError, TypeError):
                    pass

        return restore

    # ------------------------------------------------------------------ ticker

    def _tick(self) -> None:
        if self._stop_requested:
            return
        delay, action = run_tick(self.handler, self.logger)
        if action is Action.SHUTDOWN:
            self.stop()
            return
        self._primary.call_later(delay, self._tick)


def run_tick(handler: EventHandler, logger: Any) -> Tuple[float, Action]:
    """Call ``handler.on_tick()`` once: the delay until the next tick and the action.
    A tick that raises, or returns something unusable, is logged and ticks again
    after :data:`DEFAULT_TICK`."""
    try:
        result = handler.on_tick()
    except Exception:
        logger.exception("handler %s.on_tick raised", type(handler).__name__)
        return DEFAULT_TICK, Action.NONE
    try:
        return _parse_tick(result)
    except ValueError as exc:
        logger.error("on_tick returned %r: %s; ticking again in %ss", result, exc, DEFAULT_TICK)
        return DEFAULT_TICK, Action.NONE


def _parse_tick(result: Any):
    if result is None:
        return DEFAULT_TICK, Action.NONE
    action = Action.NONE
    if isinstance(result, tuple):
        if len(result) != 2:
            raise ValueError("expected seconds or (seconds, Action)")
        result, action = result
        if action is None:
            action = Action.NONE
        elif not isinstance(action, Action):
            raise ValueError(f"expected an Action, got {action!r}")
    if (isinstance(result, bool) or not isinstance(result, (int, float)) or result != result
            or result == float("inf")):
        raise ValueError("the delay must be a finite number of seconds > 0")
    if result <= 0 and action is not Action.SHUTDOWN:
        # Zero would call on_tick again at once, forever: a spinning core.
        raise ValueError("the delay must be a number of seconds > 0")
    return max(0.0, float(result)), action


def run(handler: EventHandler, *addrs: str, **options: Any) -> None:
    """Serve ``handler`` on ``addrs`` until stopped (``Action.SHUTDOWN``,
    :meth:`Engine.stop`, SIGINT/SIGTERM). See :class:`netreactor.options.Options`."""
    Engine(handler, *addrs, **options).run()
