"""Debug mode: ``debug=True``, ``--debug``, or ``NETREACTOR_DEBUG=1`` (after asyncio's).

What it checks, and how it costs nothing when off (every check is a
different object chosen once, at set-up, never a test on the per-message
path):

* **Wrong thread.** Connections are :class:`DebugConn` / :class:`DebugEdgeConn`,
  whose loop-only methods (:data:`LOOP_ONLY`: ``read``, ``peek``, ``discard``,
  ``next``, ``write``, ``writev``, ``flush``, ``pause_reading``...) raise a
  ``RuntimeError`` naming the method and the thread when called off the
  connection's loop. (Without debug mode only the checks that cost nothing
  are made: a write that would queue a flush, ``flush``, the pauses.)
* **Slow callbacks.** The handler is seen through :class:`DebugHandler`, which
  times every callback and logs a warning, naming the handler method and the
  connection, for one that takes longer than ``slow_callback_duration``
  (0.1 s by default); the loops time their tasks and timers the same way
  (:meth:`netreactor.reactor.EventLoop.set_debug`).
* **Left unclosed.** A debug connection garbage-collected while not closed,
  and an engine still running when it is collected or when the interpreter
  exits, emit a ``ResourceWarning`` (shown with ``-W default`` or
  ``-X dev``) and log a warning; the connection's fd is closed.
* **Mistakes reported once.** ``on_tick`` defined without ``ticker=True``
  (it would never run), and a :class:`~netreactor.FramedHandler` whose
  ``on_frame`` returned None for every frame of a read while nothing was
  written (a reply that was computed and not returned).
"""

from __future__ import annotations

import atexit
import threading
import warnings
import weakref
from time import monotonic
from typing import Any, Callable, Type

from .framed import FramedHandler, debug_framing
from .handler import EventHandler
from .stream.conn import CLOSED, Conn, EdgeConn

__all__ = ["DebugConn", "DebugEdgeConn", "DebugHandler", "LOOP_ONLY", "conn_class",
           "check_setup", "track_engine"]

#: The Conn methods that belong to the connection's loop.
LOOP_ONLY = ("read", "peek", "discard", "next", "write", "writev", "flush", "pause_reading",
             "resume_reading", "when_drained", "call_later", "set_idle_timeout",
             "set_read_timeout", "abort", "borrow_socket", "set_no_delay", "set_keep_alive",
             "set_linger", "set_read_buffer", "set_write_buffer", "set_transport",
             "set_addresses", "preamble_done", "preamble_failed", "preamble_wants_write",
             "exclude_received", "hand_counting_to_tls")


def _checked(base: Type[Conn], name: str) -> Callable[..., Any]:
    method = getattr(base, name)

    def checked(self: Conn, *args: Any, **kwargs: Any) -> Any:
        if not self._ctx.loop.on_loop_thread():
            raise self._wrong_thread(name)
        return method(self, *args, **kwargs)

    checked.__name__ = name
    checked.__qualname__ = f"{base.__name__}.{name}"
    checked.__doc__ = method.__doc__
    return checked


def _unclosed(conn: Conn) -> None:
    if conn._state is CLOSED:
        return
    try:
        warnings.warn(f"unclosed connection {conn!r}", ResourceWarning, stacklevel=2, source=conn)
        conn._ctx.logger.warning("netreactor debug: connection %r was garbage-collected without "
                                 "being closed; its fd is closed now", conn)
        conn._transport.close(conn.fd)
    except Exception:  # pragma: no cover - interpreter shutdown
        pass


class DebugConn(Conn):
    """A :class:`~netreactor.Conn` whose loop-only methods check the thread."""

    __slots__ = ()

    def __del__(self) -> None:
        _unclosed(self)


class DebugEdgeConn(EdgeConn):
    """The edge-triggered :class:`DebugConn`."""

    __slots__ = ()

    def __del__(self) -> None:
        _unclosed(self)


for _name in LOOP_ONLY:
    setattr(DebugConn, _name, _checked(Conn, _name))
    setattr(DebugEdgeConn, _name, _checked(EdgeConn, _name))


def conn_class(options: Any) -> Type[Conn]:
    """The connection class the options ask for."""
    if options.debug:
        return DebugEdgeConn if options.edge_triggered else DebugConn
    return EdgeConn if options.edge_triggered else Conn


# ---------------------------------------------------------------------------- the handler

_CALLBACKS = ("on_boot", "on_open", "on_traffic", "on_close", "on_tick", "on_shutdown")


class DebugHandler:
    """Stands for a handler in debug mode: its callbacks, timed. Everything
    else is the handler's own (attributes are read through), and it passes
    for the handler's class (``isinstance``, and the name in log lines)."""

    def __init__(self, handler: EventHandler, slow_callback_duration: float, logger: Any) -> None:
        self.handler = handler
        self.slow_callback_duration = slow_callback_duration
        self.logger = logger
        self._framing_reported = False
        for name in _CALLBACKS:
            setattr(self, name, self._timed(name, getattr(handler, name)))
        if isinstance(handler, FramedHandler):
            traffic = debug_framing(handler, self._report_framing)
            if traffic is not None:
                self.on_traffic = self._timed("on_traffic", traffic)

    @property  # type: ignore[misc]
    def __class__(self) -> Type[Any]:
        return type(self.handler)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.handler, name)

    def _timed(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        slow = self.slow_callback_duration
        logger = self.logger
        where = f"{type(self.handler).__name__}.{name}"
        about_conn = name in ("on_open", "on_traffic", "on_close")

        def timed(*args: Any) -> Any:
            start = monotonic()
            try:
                return fn(*args)
            finally:
                took = monotonic() - start
                if took > slow:
                    logger.warning("netreactor debug: %s took %.3f s%s (slow_callback_duration is "
                                   "%g s): nothing else ran on its event loop meanwhile", where,
                                   took, f" for {args[0]!r}" if about_conn and args else "", slow)

        timed.__name__ = name
        return timed

    def _report_framing(self, frames: int) -> None:
        if not self._framing_reported:
            self._framing_reported = True
            self.logger.warning(
                "netreactor debug: %s.on_frame returned None for all %d frame(s) of a read and "
                "nothing was written: return the reply (bytes) from on_frame, or write it "
                "(reported once)", type(self.handler).__name__, frames)


def check_setup(handler: Any, options: Any, logger: Any) -> None:
    """Mistakes in how a handler is set up, reported once at boot."""
    real = handler.handler if isinstance(handler, DebugHandler) else handler
    if type(real).on_tick is not EventHandler.on_tick and not options.ticker:
        logger.warning("netreactor debug: %s defines on_tick but ticker=True is not set: "
                       "on_tick will never run", type(real).__name__)


# ---------------------------------------------------------------------------- engines

_running: weakref.WeakSet[Any] = weakref.WeakSet()
_lock = threading.Lock()
_atexit_registered = False


def _warn_engine(engine: Any, when: str) -> None:
    try:
        warnings.warn(f"engine {engine!r} was not stopped ({when})", ResourceWarning, stacklevel=2,
                      source=engine)
        engine.logger.warning("netreactor debug: engine serving %s was not stopped (%s); call "
                              "engine.stop()", ", ".join(engine.addresses) or "nothing", when)
    except Exception:  # pragma: no cover - interpreter shutdown
        pass


def _at_exit() -> None:
    for engine in list(_running):
        if engine.running:
            _warn_engine(engine, "still running at interpreter exit")


def track_engine(engine: Any) -> None:
    """Debug mode: warn if ``engine`` is still running when collected or at exit."""
    global _atexit_registered
    with _lock:
        _running.add(engine)
        if not _atexit_registered:
            _atexit_registered = True
            atexit.register(_at_exit)


def engine_collected(engine: Any) -> None:
    """From ``Engine.__del__`` in debug mode."""
    if engine.running:
        _warn_engine(engine, "garbage-collected while running")

