"""How a finished job's outcome reaches its connection.

The rule the :class:`~netreactor.pool.WorkerPool` (a function on a thread)
and the :class:`~netreactor.spawner.Spawner` (a coroutine) share, run on the
connection's loop in per-connection order: with ``on_result`` given, it gets
``(conn, result, exc)`` and decides everything (its own failure is logged);
without it, a bytes-like result is written, ``None`` writes nothing, and any
other value is an error. What is left to report — the job's exception, or
that error — goes back to the owner, which knows its own special cases
(cancellation, a full pool) and how to report the rest.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Optional

__all__ = ["deliver"]

_BYTES_LIKE = (bytes, bytearray, memoryview)


def deliver(conn: Any, result: Any, exc: Optional[BaseException],
            on_result: Optional[Callable[[Any, Any, Optional[BaseException]], Any]], *,
            write: Callable[[Any], Any], logger: logging.Logger, owner: str, kind: str,
            name: str) -> Optional[BaseException]:
    """Apply the rule to one outcome; return the exception the owner still has
    to report (None: nothing left). ``owner`` names the owner in log lines
    ("worker pool"), ``kind`` and ``name`` the job ("coroutine", its name)."""
    if on_result is not None:
        try:
            on_result(conn, result, exc)
        except Exception as cb_exc:
            logger.error("%s: on_result callback %r for %r raised", owner, on_result, conn,
                         exc_info=cb_exc)
        return None
    if exc is not None:
        return exc
    if result is None:
        return None
    if isinstance(result, _BYTES_LIKE):
        write(result)
        return None
    return TypeError(f"{kind} {name} returned {type(result).__name__}; without on_result a {kind} "
                     "must return bytes, bytearray, memoryview or None")
