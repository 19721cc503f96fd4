"""One reactor: a poller, its fd table, a task queue, timers, and the dispatch loop.

Everything registered here runs on the loop's own thread. Other threads talk
to a loop only through :meth:`EventLoop.call_soon_threadsafe`, which queues a
task and wakes the poller.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
from collections import deque
from time import monotonic
from typing import Any, Callable, Deque, Dict, List, Optional, Tuple

from .buffers import BlockPool
from .pollers import EDGE, Poller, READABLE

__all__ = ["EventLoop", "TimerHandle"]

#: Ordinary tasks run per iteration at most, so a task flood cannot starve I/O.
TASK_BUDGET = 256
#: Edge-triggered reads per connection per wake-up.
READ_BUDGET = 16
#: Longest single poll() sleep, in seconds; a later timer just takes several.
MAX_POLL_TIMEOUT = 3600.0
#: The heap is rebuilt without its cancelled entries once they are more than
#: this many and more than half of it (asyncio's rule): re-arming a timer per
#: message then costs O(1) amortised and bounded memory.
MIN_CANCELLED_TO_COMPACT = 100


class TimerHandle:
    """A scheduled call; :meth:`cancel` it before it runs to drop it.

    Cancelling releases the callback and its arguments at once (a cancelled
    timer must not pin a connection until its deadline), and the loop drops
    cancelled entries from its heap once they are most of it.
    """

    __slots__ = ("when", "callback", "args", "cancelled", "_loop")

    def __init__(self, when: float, callback: Callable[..., Any], args: tuple,
                 loop: "EventLoop") -> None:
        self.when = when
        self.callback: Optional[Callable[..., Any]] = callback
        self.args = args
        self.cancelled = False
        self._loop: Optional[EventLoop] = loop

    def cancel(self) -> None:
        if self.cancelled:
            return
        self.cancelled = True
        self.callback = None
        self.args = ()
        loop, self._loop = self._loop, None
        if loop is not None:  # None once it ran: nothing is left in the heap
            loop._timer_cancelled()


class _WakerEntry:
    """The waker's slot in the fd table: readable means "tasks were queued"."""

    __slots__ = ("loop",)

    def __init__(self, loop: "EventLoop") -> None:
        self.loop = loop

    def _io(self, ev: int) -> None:
        self.loop._waker.drain()
        # Cleared after the drain, before this iteration runs its tasks: a task
        # queued from now on finds the flag clear and wakes the loop again, and
        # one queued before is run by this iteration.
        self.loop._wake_pending = False


class EventLoop:
    """A single-threaded reactor. Create it, then call :meth:`run` on the thread that owns it."""

    def __init__(self, index: int, poller: Poller, handler: Any, options: Any,
                 logger: logging.Logger, on_shutdown_request: Callable[[], None]) -> None:
        from .waker import Waker

        self.index = index
        self.poller = poller
        self.handler = handler
        self.logger = logger
        self.pool = BlockPool()
        # Option values read on the hot path, copied to plain attributes.
        self.read_buffer_cap: int = options.read_buffer_cap
        self.inbound_buffer_cap: int = options.inbound_buffer_cap
        self.write_high_water: int = options.write_high_water
        self.write_low_water: int = options.write_low_water
        self.write_buffer_cap: int = options.write_buffer_cap
        self.linger_timeout: float = options.shutdown_timeout
        self.edge_triggered: bool = options.edge_triggered
        self.read_budget = READ_BUDGET
        self._request_shutdown = on_shutdown_request

        self._table: Dict[int, Any] = {}
        self._urgent: Deque[Tuple[Callable[..., Any], tuple]] = deque()
        self._tasks: Deque[Tuple[Callable[..., Any], tuple]] = deque()
        self._timers: List[Tuple[float, int, TimerHandle]] = []
        self._timer_seq = itertools.count()
        self._cancelled_timers = 0
        self._dirty: List[Any] = []   # connections written to outside their own callback
        self._drain_waiters: Dict[Any, List[Callable[..., Any]]] = {}  # Conn.when_drained
        self._ready: List[Any] = []   # edge-triggered connections with reads left over
        self._waker = Waker()
        self._wake_pending = False
        self._table[self._waker.fd] = _WakerEntry(self)
        poller.register(self._waker.fd, READABLE)

        self._running = False
        self._thread_id: Optional[int] = None
        #: Set when the engine shuts this loop down: new connections are refused.
        self.closing_down = False
        #: Called when the last connection closes (used by shutdown).
        self.on_empty: Optional[Callable[[], None]] = None
        #: Set once the loop has run for the last time.
        self.finished = False
        #: Connections this loop owns (written only by this loop's thread).
        self.conn_count = 0
        #: Connections handed to this loop and adopted (written only by this loop's thread).
        self.adopted = 0
        #: Connections handed to this loop by the main reactor (written only by it).
        self.handed = 0

    # ------------------------------------------------------------------ scheduling

    def call_soon(self, callback: Callable[..., Any], *args: Any) -> None:
        """Run ``callback(*args)`` on this loop after the current I/O (loop thread only)."""
        self._tasks.append((callback, args))

    def call_soon_threadsafe(self, callback: Callable[..., Any], *args: Any, urgent: bool = False) -> None:
        """Queue ``callback(*args)`` from any thread and wake the loop. Urgent tasks run first."""
        (self._urgent if urgent else self._tasks).append((callback, args))
        # Only the first task since the loop last drained the waker pays for a
        # wake-up (see _WakerEntry). The loop's own thread wakes it too: a signal
        # handler runs there while the loop sleeps in poll().
        if not self._wake_pending:
            self._wake_pending = True
            self._waker.wake()

    def call_later(self, delay: float, callback: Callable[..., Any], *args: Any) -> TimerHandle:
        """Run ``callback(*args)`` after ``delay`` seconds (loop thread only)."""
        handle = TimerHandle(monotonic() + max(0.0, delay), callback, args, self)
        heapq.heappush(self._timers, (handle.when, next(self._timer_seq), handle))
        return handle

    def timer_count(self) -> int:
        """Entries in the timer heap, cancelled ones not yet dropped included."""
        return len(self._timers)

    def _timer_cancelled(self) -> None:
        self._cancelled_timers += 1
        if (self._cancelled_timers > MIN_CANCELLED_TO_COMPACT
                and self._cancelled_timers * 2 > len(self._timers)):
            self._timers[:] = [entry for entry in self._timers if not entry[2].cancelled]
            heapq.heapify(self._timers)
            self._cancelled_timers = 0

    # ------------------------------------------------------------------ fd table

    def add(self, fd: int, obj: Any, events: int) -> None:
        """Watch ``fd``; readiness calls ``obj._io(events)``."""
        self._table[fd] = obj
        self.poller.register(fd, events)

    def remove(self, fd: int) -> None:
        if self._table.pop(fd, None) is not None:
            self.poller.unregister(fd)

    def _forget(self, conn: Any) -> None:
        """A connection closes: drop it from the table (before its fd is closed)."""
        if self._table.pop(conn.fd, None) is not None:
            self.poller.unregister(conn.fd)
            self.conn_closed()

    def conn_closed(self) -> None:
        """One connection this loop owned is gone (stream or UDP session)."""
        self.conn_count -= 1
        if not self.conn_count and self.on_empty is not None:
            self.on_empty()

    def connections(self) -> List[Any]:
        from .conn import Conn

        return [obj for obj in self._table.values() if isinstance(obj, Conn)]

    def request_shutdown(self) -> None:
        """Ask the engine to stop (what ``Action.SHUTDOWN`` does)."""
        self._request_shutdown()

    # ------------------------------------------------------------------ the loop

    def run(self) -> None:
        """Dispatch until :meth:`stop`. Must be called on the thread that owns the loop."""
        self._thread_id = threading.get_ident()
        self._running = True
        poll = self.poller.poll
        table = self._table
        urgent = self._urgent
        tasks = self._tasks
        timers = self._timers
        try:
            while self._running:
                if urgent or tasks or self._ready or self._dirty:
                    timeout = 0.0
                elif timers:
                    # Capped: epoll and select reject timeouts past ~24.8 days.
                    timeout = min(max(0.0, timers[0][0] - monotonic()), MAX_POLL_TIMEOUT)
                else:
                    timeout = -1.0
                for fd, ev in poll(timeout):
                    obj = table.get(fd)
                    if obj is not None:
                        try:
                            obj._io(ev)
                        except Exception as exc:  # a bug of ours: cost one connection, not the loop
                            self._internal_error(obj, exc)
                if self._ready:
                    self._run_ready()
                if self._dirty:
                    self._flush_dirty()
                if timers and timers[0][0] <= monotonic():
                    self._run_timers()
                if urgent or tasks:
                    self._run_tasks()
        finally:
            self._running = False

    def stop(self) -> None:
        """Make :meth:`run` return after the current iteration (loop thread; use
        ``call_soon_threadsafe(loop.stop)`` from elsewhere)."""
        self._running = False

    def _resumed(self, conn: Any) -> None:
        """A connection's reading was resumed; edge-triggered ones must look again,
        since no new edge comes for data already waiting in the kernel."""
        if conn._events & EDGE:
            self._ready.append(conn)

    def shutdown(self, timeout: float, sources: List[Any] = ()) -> None:
        """On the loop: stop ``sources`` (acceptors, datagram endpoints), close every
        connection after flushing what it owes (at most ``timeout`` seconds), then
        stop the loop. Calling it again does nothing."""
        if self.closing_down:
            return
        self.closing_down = True
        for source in sources:
            source.stop()
        for conn in self.connections():
            conn._begin_close(None)
        if self.conn_count <= 0:
            self.stop()
            return
        self.on_empty = self.stop
        self.call_later(timeout + 0.1, self._force_close)

    def _force_close(self) -> None:
        for conn in self.connections():
            conn._close_now(None)
        self.stop()

    def _run_ready(self) -> None:
        ready, self._ready = self._ready, []
        for conn in ready:
            if conn._alive:
                conn._drain()

    def _flush_dirty(self) -> None:
        dirty, self._dirty = self._dirty, []
        for conn in dirty:
            if conn._flush_pending:
                conn._flush_pending = False
                if conn._out:
                    conn._flush()

    def _run_timers(self) -> None:
        timers = self._timers
        now = monotonic()
        while timers and timers[0][0] <= now:
            handle = heapq.heappop(timers)[2]
            if handle.cancelled:
                self._cancelled_timers -= 1
                continue
            callback, args = handle.callback, handle.args
            handle._loop = handle.callback = None  # a late cancel() has nothing to do
            handle.args = ()
            self._call(callback, args)

    def _run_tasks(self) -> None:
        urgent = self._urgent
        while urgent:
            callback, args = urgent.popleft()
            self._call(callback, args)
        tasks = self._tasks
        for _ in range(min(len(tasks), TASK_BUDGET)):
            callback, args = tasks.popleft()
            self._call(callback, args)

    def _call(self, callback: Callable[..., Any], args: tuple) -> None:
        try:
            callback(*args)
        except Exception as exc:
            self.logger.error("task %r raised", callback, exc_info=exc)

    def _internal_error(self, obj: Any, exc: BaseException) -> None:
        self.logger.error("internal error handling fd event for %r", obj, exc_info=exc)
        close = getattr(obj, "_close_now", None)
        if close is not None:
            try:
                close(exc)
            except Exception:
                self.logger.exception("closing %r after an internal error failed", obj)

    def finish(self) -> None:
        """After :meth:`run` returned for good: run what is still queued, so every
        callback given to ``async_write``/``wake``/``close`` learns its outcome."""
        self._thread_id = threading.get_ident()
        self.finished = True
        # Bounded: a task that keeps re-queuing itself must not hang shutdown.
        for _ in range(100):
            if not (self._urgent or self._tasks):
                break
            self._run_tasks()

    def close(self) -> None:
        """Release the poller and waker (after :meth:`run` returned)."""
        self.poller.unregister(self._waker.fd)
        self._waker.close()
        self.poller.close()
        self.pool.clear()
