"""One reactor: a poller, its fd table, task queues, timers, and the dispatch loop.

The loop knows nothing of connections, handlers or options. What it hosts are
*entries* (:class:`Entry`): objects registered for an fd, called with the
events the poller reported. Connections are entries that also take part in
the loop's two deferred queues (:class:`ConnectionEntry`): writes made outside
their own callback are flushed at the end of the iteration
(:meth:`EventLoop.schedule_flush`), and reads left over by an edge-triggered
connection, or by a transport that holds data the fd no longer signals, are
retried on the next one (:meth:`EventLoop.schedule_read`).

Threading: everything here runs on the loop's own thread, except
:meth:`EventLoop.call_soon_threadsafe` and :meth:`EventLoop.post`, which any
thread may call; they queue a task and wake the poller.

One iteration::

    poll (0 when work is queued, else until the next timer)
    -> handle_io(events) of each ready entry
    -> read_again() of each connection scheduled to read again
    -> flush_deferred() of each connection written to outside its callback
    -> due timers -> urgent tasks, then at most TASK_BUDGET ordinary tasks
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from time import monotonic
from typing import Any, Callable, Deque, Dict, Iterable, List, Optional, Protocol, Tuple

from .buffers import BlockPool
from .pollers import READABLE, Poller
from .timers import TimerHandle, TimerHeap
from .waker import Waker
from .wheel import TimingWheel

__all__ = ["EventLoop", "Entry", "ConnectionEntry", "Source", "TimerHandle", "TASK_BUDGET"]

#: Ordinary tasks run per iteration at most, so a task flood cannot starve I/O.
TASK_BUDGET = 256
#: Longest single poll() sleep, in seconds; a later timer just takes several.
#: (epoll and select reject timeouts past ~24.8 days.)
MAX_POLL_TIMEOUT = 3600.0
#: Tasks run by :meth:`EventLoop.finish` at most: one that re-queues itself
#: must not hang a shutdown.
FINISH_ROUNDS = 100

Task = Tuple[Callable[..., Any], Tuple[Any, ...]]


class Entry(Protocol):
    """What the loop calls for a registered fd."""

    #: True for entries that are connections (see :class:`ConnectionEntry`).
    is_connection: bool

    def handle_io(self, events: int) -> object:
        """The poller reported ``events`` (epoll bits) for this entry's fd."""

    def abort(self, err: Optional[BaseException]) -> None:
        """``handle_io`` raised ``err`` (a bug of ours): release what the entry
        holds. The loop logs the error and goes on."""


class ConnectionEntry(Entry, Protocol):
    """An entry that is a connection the loop owns."""

    def flush_deferred(self) -> None:
        """Send what was written since :meth:`EventLoop.schedule_flush`."""

    def read_again(self) -> None:
        """Read again (after :meth:`EventLoop.schedule_read`)."""

    def close(self) -> None:
        """Close gracefully: flush, then close (loop shutdown)."""


class Source(Protocol):
    """Something that brings connections to a loop (an acceptor, a UDP endpoint)."""

    def stop(self) -> None:
        """Stop bringing new connections (and end UDP sessions)."""


class _WakerEntry:
    """The waker's slot in the fd table: readable means "tasks were queued"."""

    __slots__ = ("loop",)
    is_connection = False

    def __init__(self, loop: EventLoop) -> None:
        self.loop = loop

    def handle_io(self, events: int) -> None:
        self.loop._waker.drain()
        # Cleared after the drain, before this iteration runs its tasks: a task
        # queued from now on finds the flag clear and wakes the loop again, and
        # one queued before is run by this iteration.
        self.loop._wake_pending = False

    def abort(self, err: Optional[BaseException]) -> None:
        pass


class EventLoop:
    """A single-threaded reactor. Create it, then :meth:`run` it on the thread that owns it."""

    def __init__(self, index: int, poller: Poller, logger: logging.Logger) -> None:
        #: Position among its engine's loops (-1 for a main reactor that only accepts).
        self.index = index
        self.poller = poller
        self.logger = logger
        #: Blocks for large inbound frames, shared by this loop's connections.
        self.pool = BlockPool()

        self._table: Dict[int, Entry] = {}
        self._urgent: Deque[Task] = deque()
        self._tasks: Deque[Task] = deque()
        self._timers = TimerHeap()
        #: Coarse deadlines of many entries (idle and read timeouts), on this loop's timers.
        self.wheel = TimingWheel(self)
        #: Seconds past which a task or timer callback is logged as slow (debug mode), or None.
        self.slow_callback_duration: Optional[float] = None
        self._dirty: List[ConnectionEntry] = []
        self._ready: List[ConnectionEntry] = []
        #: ``schedule_flush(conn)``: call ``conn.flush_deferred()`` at the end of this
        #: iteration. (The list's own append: this runs on every write made
        #: outside a callback, and costs no Python frame.)
        self.schedule_flush: Callable[[ConnectionEntry], None] = self._dirty.append
        #: ``schedule_read(conn)``: call ``conn.read_again()`` in this iteration.
        self.schedule_read: Callable[[ConnectionEntry], None] = self._ready.append
        #: ``modify(fd, events)``: change what is watched (the poller's own method).
        self.modify: Callable[[int, int], None] = poller.modify
        self._waker = Waker()
        self._wake_pending = False
        self._table[self._waker.fd] = _WakerEntry(self)
        poller.register(self._waker.fd, READABLE)

        self._running = False
        #: Set by :meth:`stop` (never by :meth:`interrupt`): whoever drives the
        #: loop from outside (netreactor.reactor.aio) tells the two apart by it.
        self.stop_requested = False
        self._thread_id: Optional[int] = None
        self._conn_count = 0
        self._on_empty: Optional[Callable[[], None]] = None
        #: Set once the loop began shutting down: sources refuse new connections.
        self.stopping = False
        #: Set once the loop has run for the last time.
        self.finished = False

    # ------------------------------------------------------------------ threads

    def on_loop_thread(self) -> bool:
        """True when called on the thread running this loop."""
        return self._thread_id == threading.get_ident()

    # ------------------------------------------------------------------ scheduling

    def call_soon(self, callback: Callable[..., Any], *args: Any) -> None:
        """Run ``callback(*args)`` after the current I/O (loop thread only)."""
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

    def post(self, callback: Callable[..., Any], *args: Any) -> None:
        """Run ``callback(*args)`` on this loop as a task, from any thread.

        Never inline while the loop lives, even from its own thread (a caller
        never sees the callback run inside its own call). Once the loop has
        finished for good the callback runs at once on the caller's thread:
        nothing runs on the loop any more, so it cannot race it, and it finds
        the loop's objects closed.
        """
        if self.finished:
            callback(*args)
        else:
            self.call_soon_threadsafe(callback, *args)

    def call_later(self, delay: float, callback: Callable[..., Any], *args: Any) -> TimerHandle:
        """Run ``callback(*args)`` after ``delay`` seconds (loop thread only)."""
        return self._timers.schedule(delay, callback, args)

    def flush_deferred_writes(self) -> None:
        """Send now what connections wrote outside their callbacks (what the end of
        an iteration does; for a driver that runs the loop from outside)."""
        if self._dirty:
            self._flush_dirty()

    def pending_work(self) -> bool:
        """Tasks, reads or flushes are queued: the next iteration polls without waiting."""
        return bool(self._urgent or self._tasks or self._ready or self._dirty)

    def next_deadline(self) -> Optional[float]:
        """The earliest timer's ``time.monotonic()`` deadline (possibly of a cancelled one), or None."""
        return self._timers.next_deadline()

    def timer_count(self) -> int:
        """Entries in the timer heap, cancelled ones not yet dropped included."""
        return len(self._timers)

    # ------------------------------------------------------------------ fd table

    def add(self, fd: int, entry: Entry, events: int) -> None:
        """Watch ``fd`` for ``events``; readiness calls ``entry.handle_io(events)``."""
        self._table[fd] = entry
        self.poller.register(fd, events)

    def remove(self, fd: int) -> bool:
        """Stop watching ``fd`` (before it is closed); False if it was not watched."""
        if self._table.pop(fd, None) is None:
            return False
        self.poller.unregister(fd)
        return True

    def mute(self, fd: int) -> None:
        """Keep ``fd``'s entry but stop polling it, until :meth:`unmute`: for an fd
        whose poller would report the same hang-up on every iteration."""
        self.poller.unregister(fd)

    def unmute(self, fd: int, events: int) -> None:
        self.poller.register(fd, events)

    def entries(self) -> Iterable[Entry]:
        return self._table.values()

    # ------------------------------------------------------------------ connections

    @property
    def conn_count(self) -> int:
        """Connections this loop owns (stream connections and UDP sessions)."""
        return self._conn_count

    def connection_opened(self) -> None:
        self._conn_count += 1

    def connection_closed(self) -> None:
        self._conn_count -= 1
        if not self._conn_count and self._on_empty is not None:
            callback, self._on_empty = self._on_empty, None
            callback()

    def when_empty(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` once, when this loop owns no connection (at once if none)."""
        if self._conn_count <= 0:
            callback()
        else:
            self._on_empty = callback

    def connections(self) -> List[ConnectionEntry]:
        """The stream connections registered on this loop."""
        return [e for e in self._table.values() if e.is_connection]  # type: ignore[misc]

    # ------------------------------------------------------------------ the loop

    def run(self) -> None:
        """Dispatch until :meth:`stop`, on the thread that owns the loop."""
        self._thread_id = threading.get_ident()
        self._running = True
        poll = self.poller.poll
        table = self._table
        urgent = self._urgent
        tasks = self._tasks
        timers = self._timers.heap
        ready = self._ready
        dirty = self._dirty
        try:
            while self._running:
                if urgent or tasks or ready or dirty:
                    timeout = 0.0
                elif timers:
                    timeout = min(max(0.0, timers[0][0] - monotonic()), MAX_POLL_TIMEOUT)
                else:
                    timeout = -1.0
                for fd, ev in poll(timeout):
                    entry = table.get(fd)
                    if entry is not None:
                        try:
                            entry.handle_io(ev)
                        except Exception as exc:  # a bug of ours: cost one entry, not the loop
                            self._internal_error(entry, exc)
                if ready:
                    self._run_ready()
                if dirty:
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
        self.stop_requested = True

    def interrupt(self) -> None:
        """Make :meth:`run` return after the current iteration without stopping the
        loop: its driver runs something else on this thread, then calls
        :meth:`run` again (loop thread). An interrupt while :meth:`run` is not
        running does nothing (:meth:`run` starts afresh)."""
        self._running = False

    def shutdown(self, timeout: float, sources: Iterable[Source] = ()) -> None:
        """On the loop: stop ``sources``, close every connection gracefully (at most
        ``timeout`` seconds, then at once), then stop. A second call does nothing."""
        if self.stopping:
            return
        self.stopping = True
        for source in sources:
            source.stop()
        for conn in self.connections():
            conn.close()
        self.when_empty(self.stop)
        if self._conn_count > 0:
            self.call_later(timeout + 0.1, self._force_close)

    def _force_close(self) -> None:
        for conn in self.connections():
            conn.abort(None)
        self.stop()

    def _run_ready(self) -> None:
        ready = self._ready[:]
        del self._ready[:]  # the same list: schedule_read is its bound append
        for conn in ready:
            conn.read_again()

    def _flush_dirty(self) -> None:
        dirty = self._dirty[:]
        del self._dirty[:]
        for conn in dirty:
            conn.flush_deferred()

    def _run_timers(self) -> None:
        now = monotonic()
        pop = self._timers.pop_due
        handle = pop(now)
        while handle is not None:
            self._call(handle.callback, handle.args)  # type: ignore[arg-type]
            handle = pop(now)

    def _run_tasks(self) -> None:
        urgent = self._urgent
        while urgent:
            callback, args = urgent.popleft()
            self._call(callback, args)
        tasks = self._tasks
        for _ in range(min(len(tasks), TASK_BUDGET)):
            callback, args = tasks.popleft()
            self._call(callback, args)

    def _call(self, callback: Callable[..., Any], args: Tuple[Any, ...]) -> None:
        try:
            callback(*args)
        except Exception as exc:
            self.logger.error("task %r raised", callback, exc_info=exc)

    def set_debug(self, slow_callback_duration: Optional[float]) -> None:
        """Log a warning for every task or timer callback that runs longer than
        ``slow_callback_duration`` seconds (None: stop). Costs nothing while off:
        the timed call replaces the plain one."""
        self.slow_callback_duration = slow_callback_duration
        if slow_callback_duration is None:
            self.__dict__.pop("_call", None)
        else:
            self._call = self._timed_call  # type: ignore[method-assign]

    def _timed_call(self, callback: Callable[..., Any], args: Tuple[Any, ...]) -> None:
        start = monotonic()
        EventLoop._call(self, callback, args)
        took = monotonic() - start
        slow = self.slow_callback_duration
        if slow is not None and took > slow:
            self.logger.warning("netreactor debug: callback %r on event loop %d took %.3f s "
                                "(slow_callback_duration is %s s): it blocked the loop",
                                callback, self.index, took, slow)

    def _internal_error(self, entry: Entry, exc: BaseException) -> None:
        self.logger.error("internal error handling fd event for %r", entry, exc_info=exc)
        try:
            entry.abort(exc)
        except Exception:
            self.logger.exception("closing %r after an internal error failed", entry)

    def finish(self) -> None:
        """After :meth:`run` returned for good: run what is still queued, so every
        callback given to ``async_write``/``wake``/``close`` learns its outcome."""
        self._thread_id = threading.get_ident()
        self.finished = True
        for _ in range(FINISH_ROUNDS):
            if not (self._urgent or self._tasks):
                break
            self._run_tasks()

    def close(self) -> None:
        """Release the poller and waker (after :meth:`run` returned)."""
        self.poller.unregister(self._waker.fd)
        self._waker.close()
        self.poller.close()
        self.pool.clear()
        self.wheel.clear()
        self._timers.clear()
