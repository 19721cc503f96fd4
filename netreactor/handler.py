"""The user-facing callback API: :class:`Action` and :class:`EventHandler`."""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Optional, Tuple, Union

if TYPE_CHECKING:  # pragma: no cover
    from .stream.conn import Conn
    from .engine import Engine

__all__ = ["Action", "EventHandler", "TickResult"]


class Action(enum.IntEnum):
    """What the engine should do after a callback returns.

    Returning ``None`` from a callback is the same as :attr:`NONE`.
    """

    NONE = 0
    #: Close the connection the callback was about (pending output is flushed first).
    CLOSE = 1
    #: Stop the whole engine gracefully.
    SHUTDOWN = 2


TickResult = Union[float, Tuple[float, Action], None]


class EventHandler:
    """Base class for handlers. Every callback is optional.

    All connection callbacks run on the event loop that owns the connection;
    they must not block. ``on_boot``, ``on_tick`` and ``on_shutdown`` run on the
    engine's first loop (the one in the thread that called :func:`netreactor.run`).
    """

    def on_boot(self, engine: Engine) -> Optional[Action]:
        """The engine is bound and about to serve. ``Action.SHUTDOWN`` aborts start."""
        return None

    def on_open(self, conn: Conn) -> Optional[Action]:
        """A connection was opened. Writes made here are sent before any reply."""
        return None

    def on_traffic(self, conn: Conn) -> Optional[Action]:
        """Data arrived on ``conn`` (or :meth:`Conn.wake` was called)."""
        return None

    def on_close(self, conn: Conn, err: Optional[BaseException]) -> Optional[Action]:
        """``conn`` was closed: ``err`` is ``None`` for a local close, else the cause."""
        return None

    def on_tick(self) -> TickResult:
        """Called when ``ticker=True``; return seconds until the next tick, or ``(seconds, Action)``."""
        return None

    def on_shutdown(self, engine: Engine) -> None:
        """The engine has stopped serving and every connection is closed."""
        return None
