"""One-shot timers of an event loop: a binary heap of deadlines.

Rules:

* :meth:`TimerHandle.cancel` releases the callback and its arguments at once:
  a cancelled timer must not keep a connection (or anything its callback
  refers to) alive until its deadline.
* The cancelled entry itself stays in the heap (removing it from the middle
  would cost O(n)) until it reaches the top, or until cancelled entries are
  more than :data:`MIN_CANCELLED_TO_COMPACT` and more than half the heap; then
  the heap is rebuilt without them (asyncio's rule). Re-arming a timer per
  message therefore costs O(log n) amortised and bounded memory.
* Deadlines are ``time.monotonic()`` seconds. Timers due at the same moment
  run in the order they were scheduled.

All of it runs on the owning loop's thread.
"""

from __future__ import annotations

import heapq
import itertools
from time import monotonic
from typing import Any, Callable, List, Optional, Tuple

__all__ = ["TimerHandle", "TimerHeap", "MIN_CANCELLED_TO_COMPACT"]

MIN_CANCELLED_TO_COMPACT = 100


class TimerHandle:
    """A scheduled call; :meth:`cancel` it before it runs to drop it."""

    __slots__ = ("when", "callback", "args", "cancelled", "_heap")

    def __init__(self, when: float, callback: Callable[..., Any], args: Tuple[Any, ...],
                 heap: TimerHeap) -> None:
        #: The ``time.monotonic()`` deadline.
        self.when = when
        self.callback: Optional[Callable[..., Any]] = callback
        self.args = args
        self.cancelled = False
        self._heap: Optional[TimerHeap] = heap  # None once it ran or was cancelled

    def cancel(self) -> None:
        """Drop the call (nothing happens if it already ran)."""
        heap = self._heap
        if heap is None:
            return
        self._heap = None
        self.cancelled = True
        self.callback = None
        self.args = ()
        heap._cancelled_one()

    def __repr__(self) -> str:
        state = "cancelled" if self.cancelled else ("done" if self._heap is None else "pending")
        return f"<TimerHandle {state} when={self.when:.3f} {self.callback!r}>"


class TimerHeap:
    """The heap; the loop asks it for the next deadline and for what is due."""

    __slots__ = ("heap", "_seq", "_cancelled")

    def __init__(self) -> None:
        #: The ``(when, seq, handle)`` entries, a heap: ``heap[0][0]`` is the
        #: earliest deadline. Read-only outside this class; the loop tests it
        #: directly on every iteration, where a method call would cost more
        #: than the test.
        self.heap: List[Tuple[float, int, TimerHandle]] = []
        self._seq = itertools.count()
        self._cancelled = 0

    def __len__(self) -> int:
        """Entries held, cancelled ones not yet dropped included."""
        return len(self.heap)

    def __bool__(self) -> bool:
        return bool(self.heap)

    def schedule(self, delay: float, callback: Callable[..., Any], args: Tuple[Any, ...]) -> TimerHandle:
        handle = TimerHandle(monotonic() + max(0.0, delay), callback, args, self)
        heapq.heappush(self.heap, (handle.when, next(self._seq), handle))
        return handle

    def next_deadline(self) -> Optional[float]:
        """The earliest deadline held (possibly of a cancelled entry), or None."""
        heap = self.heap
        return heap[0][0] if heap else None

    def pop_due(self, now: float) -> Optional[TimerHandle]:
        """Remove and return the earliest live timer due at ``now``, or None.
        One at a time: a callback may cancel a timer due at the same moment."""
        heap = self.heap
        while heap and heap[0][0] <= now:
            handle = heapq.heappop(heap)[2]
            if handle.cancelled:
                self._cancelled -= 1
                continue
            handle._heap = None  # done: a late cancel() has nothing to drop
            return handle
        return None

    def clear(self) -> None:
        self.heap.clear()
        self._cancelled = 0

    def _cancelled_one(self) -> None:
        self._cancelled += 1
        if self._cancelled > MIN_CANCELLED_TO_COMPACT and self._cancelled * 2 > len(self.heap):
            self.heap[:] = [entry for entry in self.heap if not entry[2].cancelled]
            heapq.heapify(self.heap)
            self._cancelled = 0
