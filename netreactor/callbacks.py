"""Calling user code: one guard, and one written rule per kind of callback.

Every handler callback and every outcome callback netreactor calls goes
through :func:`call` (or, on the per-message hot path, an inline ``try`` whose
``except`` calls :func:`log_failure`, the same function :func:`call` uses; a
test checks that both paths log and close alike). What happens when one
raises an ``Exception``:

====================================================  =====================================================
callback                                              when it raises
====================================================  =====================================================
``on_open``, ``on_traffic`` of a connection             logged with its traceback; the connection is closed
(stream, or UDP session)                                at once and ``on_close`` gets the exception
``on_traffic`` of a per-datagram UDP connection        logged; that datagram is dropped
``on_close``                                           logged
``on_boot``                                            not caught: the engine does not start, and
                                                       ``start()``/``run()`` raise it
``on_tick``                                            logged; the next tick comes after ``DEFAULT_TICK``
``on_shutdown``                                        logged
outcome callbacks (``async_write``, ``wake``,           logged
``close``, ``dial_async``, ``when_drained``,
``WorkerPool`` ``on_result``)
====================================================  =====================================================

``SystemExit`` and ``KeyboardInterrupt`` are never caught here: they stop the
engine, which closes every connection and then raises them from ``run()``.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Optional

__all__ = ["Failed", "call", "log_failure", "report"]


class Failed:
    """What :func:`call` returns when the callback raised (it is already logged)."""

    __slots__ = ("exc",)

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


def log_failure(logger: Any, owner: Any, where: str, conn: Any, exc: BaseException,
                closing: bool = True) -> None:
    """Log that ``owner.where`` raised for ``conn``, with the traceback."""
    # __class__, not type(): debug mode's DebugHandler passes for the handler's class.
    name = f"{owner.__class__.__name__}.{where}" if owner is not None else where
    if conn is None:
        logger.error("%s raised", name, exc_info=exc)
    elif closing:
        logger.error("handler %s raised; closing connection %r", name, conn, exc_info=exc)
    else:
        logger.error("handler %s raised (connection %r)", name, conn, exc_info=exc)


def call(logger: Any, owner: Any, where: str, conn: Any, fn: Callable[..., Any], *args: Any,
         closing: bool = True) -> Any:
    """``fn(*args)``; when it raises, log it (see :func:`log_failure`) and return
    :class:`Failed` instead, for the caller to apply its rule from the table."""
    try:
        return fn(*args)
    except Exception as exc:
        log_failure(logger, owner, where, conn, exc, closing)
        return Failed(exc)


def report(logger: Optional[logging.Logger], callback: Optional[Callable[..., Any]], conn: Any,
           err: Optional[BaseException]) -> None:
    """Tell an outcome callback ``callback(conn, err)``; one that raises is logged."""
    if callback is None:
        return
    try:
        callback(conn, err)
    except Exception as exc:
        (logger or logging.getLogger("netreactor")).error("callback %r raised", callback, exc_info=exc)
