"""Pausing the connections that wait for room in a bounded queue.

The rule the :class:`~netreactor.pool.WorkerPool` and the asyncio
:class:`~netreactor.spawner.Spawner` share: past its bound, a connection that
submits more stops being read until there is room again. The owner decides
*who* should be paused under its lock, from any thread (a worker finishing,
a coroutine completing); :meth:`ReadingHolds.sync` applies the decision on
the connection's own loop, in whatever order those calls arrive. Each call
applies the latest decision, so a late pause never outlives the resume that
followed it.
"""

from __future__ import annotations

import threading
from typing import Any, Dict, Set

from .stream.conn import Pause

__all__ = ["ReadingHolds"]


class ReadingHolds:
    """The connections an owner wants paused, and those it has paused.

    ``waiting`` (an ordered set: a dict of None) and ``holding`` are read and
    written under ``lock``, which the owner shares for its own bookkeeping;
    ``pauses`` counts the pauses applied.
    """

    def __init__(self, reason: Pause) -> None:
        self._reason = reason
        self._lock = threading.Lock()
        self._waiting: Dict[Any, None] = {}  # conns the owner wants paused (ordered set)
        self._holding: Set[Any] = set()      # conns it has actually paused
        self.pauses = 0

    def _sync(self, conn: Any) -> None:
        """On ``conn``'s loop: make its reading match what the owner wants now."""
        with self._lock:
            want = conn in self._waiting
            held = conn in self._holding
            if want and not held:
                if conn.closed:
                    return
                self._holding.add(conn)
                self.pauses += 1
                action = conn.pause_reading
            elif held and not want:
                self._holding.discard(conn)
                action = conn.resume_reading
            else:
                return
        action(self._reason)
