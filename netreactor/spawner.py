"""Coroutines per connection, on the connection's own loop thread: ``conn.spawn``.

With ``asyncio=True`` every event loop of the engine also runs an asyncio
event loop, on the same thread and the same poller
(:mod:`netreactor.reactor.aio`). A handler starts a coroutine for a
connection with :meth:`netreactor.Conn.spawn`; its outcome comes back to that
connection the way a :class:`netreactor.WorkerPool` job's does, with the same
rules, written once more here for coroutines::

    class Front(nr.EventHandler):
        def on_traffic(self, conn):
            for key in conn.read().split():
                conn.spawn(lookup(key))        # lookup's bytes are written to conn

    async def lookup(key: bytes) -> bytes:
        return (await redis.get(key) or b"") + b"\\n"

What :meth:`Spawner.spawn` guarantees:

* **No thread hop.** The coroutine runs as an ``asyncio.Task`` on the asyncio
  loop that shares the connection's thread; it may use the connection's whole
  loop-thread API (``write``, ``close``...), and so may ``on_result``.
* **Order per connection.** Without ``on_result`` a bytes-like result is
  written to the connection (``None`` writes nothing), in the order the
  coroutines were spawned for it: the result of a later one waits for the
  earlier ones. With ``on_result=callback``, ``callback(conn, result, exc)``
  runs instead, in the same order (``exc`` None on success).
* **Errors are reported, not lost.** A coroutine that raises hands the
  exception to ``on_result``; without one it is logged at ERROR with its
  traceback and the connection is closed (the reply the peer waits for will
  never come). A result that is neither bytes-like nor None is treated the
  same way (a ``TypeError``).
* **Closing cancels.** When the connection closes, its coroutines still
  running are cancelled (``on_result`` gets the ``CancelledError``; without
  one nothing is logged). ``cancel_on_close=False`` lets one finish; its
  result is then dropped (``write`` on a closed connection does nothing) and
  ``on_result`` still learns it. At engine stop such coroutines get
  ``shutdown_timeout`` seconds, then are cancelled too.
* **Bounded (back-pressure), the WorkerPool's rule and counters.** At most
  ``asyncio_max_tasks`` coroutines count as in flight per engine (a
  coroutine counts until its outcome is delivered). A spawn while the engine is
  full is still accepted, but the spawning connection stops being read
  (``Pause.SPAWN``): what its peer sends waits in the kernel and TCP slows it
  down. Once in flight falls to ``asyncio_low_water`` (half the bound by
  default) every connection paused so is read again, on its own loop. The
  overshoot is bounded by what one read of each paused connection spawns.
  :attr:`Spawner.in_flight`, :attr:`Spawner.paused_connections` and
  :attr:`Spawner.pauses` count as the pool's do.

The spawner's pause and the handler's own ``pause_reading()`` are separate
switches, as are the pool's: a connection reads again only when no owner
holds it. Datagram (UDP) connections have no ``spawn``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
from collections import deque
from typing import Any, Callable, Coroutine, Deque, Dict, List, Optional, Set

from .stream.conn import Pause

__all__ = ["Spawner", "ResultCallback"]

#: ``on_result(conn, result, exc)``: ``exc`` is None when the coroutine returned ``result``.
ResultCallback = Callable[[Any, Any, Optional[BaseException]], Any]

_BYTES_LIKE = (bytes, bytearray, memoryview)


class _Job:
    """One spawned coroutine, queued per connection until its outcome is delivered."""

    __slots__ = ("task", "on_result", "cancel_on_close")

    def __init__(self, on_result: Optional[ResultCallback], cancel_on_close: bool) -> None:
        self.task: Optional[asyncio.Task[Any]] = None
        self.on_result = on_result
        self.cancel_on_close = cancel_on_close


class Spawner:
    """An engine's coroutines: the asyncio loop of each of its event loops, the
    bound, and the per-connection order of outcomes (see the module docstring).

    ``max_tasks`` is the bound, ``low_water`` (default ``max_tasks // 2``) the
    count at or below which paused connections are resumed. Counters may be
    read from any thread; :meth:`spawn` belongs to the connection's loop thread.
    """

    def __init__(self, max_tasks: int, low_water: Optional[int] = None, *,
                 logger: Optional[logging.Logger] = None, shutdown_timeout: float = 5.0) -> None:
        if low_water is None:
            low_water = max_tasks // 2
        if not 0 <= low_water < max_tasks:
            raise ValueError(f"low_water must be in 0..{max_tasks - 1}, got {low_water!r}")
        #: Coroutines in flight before spawning connections are paused.
        self.capacity: int = max_tasks
        #: In flight at or below which paused connections are resumed.
        self.low_water: int = low_water
        self.logger = logger if logger is not None else logging.getLogger("netreactor")
        self.shutdown_timeout = shutdown_timeout
        self._lock = threading.Lock()
        self._in_flight = 0
        self._queues: Dict[Any, Deque[_Job]] = {}  # conn -> its jobs, in spawn order
        self._waiting: Dict[Any, None] = {}        # conns the spawner wants paused (ordered set)
        self._holding: Set[Any] = set()            # conns it has actually paused
        self._loops: Dict[Any, asyncio.AbstractEventLoop] = {}  # netreactor loop -> asyncio loop
        #: Times a connection was paused because the engine was full.
        self.pauses = 0
        #: Coroutines spawned in all.
        self.spawned = 0

    # ------------------------------------------------------------------ loops

    def attach(self, loop: Any, aio: asyncio.AbstractEventLoop) -> None:
        """Coroutines of connections on netreactor ``loop`` run on ``aio`` (same thread)."""
        self._loops[loop] = aio

    def detach(self, loop: Any) -> None:
        """``loop``'s asyncio loop is gone: its connections can spawn no more."""
        self._loops.pop(loop, None)

    def asyncio_loop(self, loop: Any) -> Optional[asyncio.AbstractEventLoop]:
        """The asyncio loop serving netreactor ``loop``'s coroutines, or None."""
        return self._loops.get(loop)

    # ------------------------------------------------------------------ counters

    @property
    def in_flight(self) -> int:
        """Coroutines spawned whose outcome has not been delivered yet."""
        return self._in_flight

    @property
    def paused_connections(self) -> int:
        """Connections whose reading the spawner holds paused right now."""
        return len(self._holding)

    def __repr__(self) -> str:
        return (f"<Spawner in_flight={self._in_flight}/{self.capacity} "
                f"paused={len(self._holding)} pauses={self.pauses}>")

    # ------------------------------------------------------------------ spawning

    def spawn(self, conn: Any, coro: Coroutine[Any, Any, Any],
              on_result: Optional[ResultCallback] = None, *,
              cancel_on_close: bool = True) -> asyncio.Task[Any]:
        """Run ``coro`` for ``conn`` on its loop's asyncio loop (see the module docstring).

        Returns the ``asyncio.Task``. Raises ``TypeError`` for something that is
        not a coroutine, ``RuntimeError`` off the connection's loop thread or
        where its loop runs no asyncio loop (the coroutine is closed then).
        """
        if not asyncio.iscoroutine(coro):
            raise TypeError(f"conn.spawn() takes a coroutine (call the async function: "
                            f"spawn(fetch(key)), not spawn(fetch)); got {type(coro).__name__}")
        loop = conn.loop
        aio = self._loops.get(loop)
        if aio is None or not loop.on_loop_thread():
            coro.close()
            if aio is None:
                raise RuntimeError("this connection's event loop runs no asyncio loop: start the "
                                   "engine with asyncio=True (CLI --asyncio), or serve it with "
                                   "netreactor.serve() from the asyncio program's thread")
            raise RuntimeError("conn.spawn() called off the connection's loop thread; from other "
                               "threads use asyncio.run_coroutine_threadsafe and conn.async_write")
        job = _Job(on_result, cancel_on_close)
        with self._lock:
            full = self._in_flight >= self.capacity
            self._in_flight += 1
            self.spawned += 1
            if full:
                self._waiting[conn] = None
            queue = self._queues.get(conn)
            if queue is None:
                self._queues[conn] = queue = deque()
            queue.append(job)
        try:
            task = aio.create_task(coro)
        except BaseException:
            coro.close()
            with self._lock:
                queue.remove(job)
                if not queue:
                    self._queues.pop(conn, None)
                self._in_flight -= 1
            raise
        job.task = task
        if conn.closed:
            if cancel_on_close:
                task.cancel()
        elif full:
            self._sync(conn)
        task.add_done_callback(functools.partial(self._deliver, conn))
        return task

    def connection_closed(self, conn: Any) -> None:
        """``conn`` closed (its loop thread): cancel what it spawned (unless told not to)."""
        if conn not in self._queues and conn not in self._waiting:
            return
        with self._lock:
            self._waiting.pop(conn, None)
            self._holding.discard(conn)
            queue = self._queues.get(conn)
            jobs = list(queue) if queue else []
        for job in jobs:
            task = job.task
            if job.cancel_on_close and task is not None and not task.done() \
                    and not task.get_loop().is_closed():
                task.cancel()

    def running(self, aio: asyncio.AbstractEventLoop) -> List[asyncio.Task[Any]]:
        """The spawned coroutines of ``aio`` not finished yet."""
        with self._lock:
            return [job.task for queue in self._queues.values() for job in queue
                    if job.task is not None and not job.task.done() and job.task.get_loop() is aio]

    async def drain(self, aio: asyncio.AbstractEventLoop) -> None:
        """Wait (at most ``shutdown_timeout`` s) for the coroutines of ``aio`` that
        were told to outlive their connection (``cancel_on_close=False``)."""
        with self._lock:
            tasks = [job.task for queue in self._queues.values() for job in queue
                     if job.task is not None and not job.cancel_on_close
                     and not job.task.done() and job.task.get_loop() is aio]
        if tasks:
            await asyncio.wait(tasks, timeout=self.shutdown_timeout)

    # ------------------------------------------------------------------ delivery (on the loop)

    def _deliver(self, conn: Any, _task: asyncio.Task[Any]) -> None:
        """Deliver the outcomes at the head of ``conn``'s queue that are done, in order."""
        while True:
            with self._lock:
                queue = self._queues.get(conn)
                if not queue:
                    return
                job = queue[0]
                task = job.task
                if task is None or not task.done():
                    return  # a later coroutine finished first: it waits for this one
                queue.popleft()
                if not queue:
                    del self._queues[conn]
                self._in_flight -= 1
                resume: List[Any] = []
                if self._in_flight <= self.low_water and self._waiting:
                    # Every waiter at once: resuming only as many as there is room
                    # for could strand the rest if those never spawn again.
                    resume = list(self._waiting)
                    self._waiting.clear()
            for waiter in resume:
                waiter_loop = waiter.loop
                if waiter_loop.on_loop_thread():
                    self._sync(waiter)
                else:
                    waiter_loop.post(self._sync, waiter)
            self._report(conn, job, task)

    def _sync(self, conn: Any) -> None:
        """On ``conn``'s loop: make its reading match what the spawner wants now
        (decided under the lock, applied here: a late pause never outlives the
        resume that followed it)."""
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
        action(Pause.SPAWN)

    def _report(self, conn: Any, job: _Job, task: asyncio.Task[Any]) -> None:
        """Hand one coroutine's outcome to its callback, or write / log it."""
        result: Any = None
        exc: Optional[BaseException]
        if task.cancelled():
            exc = asyncio.CancelledError(f"coroutine {_name(task)} cancelled")
        else:
            exc = task.exception()
            if exc is None:
                result = task.result()
        callback = job.on_result
        if callback is not None:
            try:
                callback(conn, result, exc)
            except Exception as cb_exc:
                self.logger.error("conn.spawn: on_result callback %r for %r raised",
                                  callback, conn, exc_info=cb_exc)
            return
        if exc is None:
            if result is None:
                return
            if isinstance(result, _BYTES_LIKE):
                conn.write(result)
                return
            exc = TypeError(f"coroutine {_name(task)} returned {type(result).__name__}; without "
                            "on_result a coroutine must return bytes, bytearray, memoryview or None")
        if isinstance(exc, asyncio.CancelledError):
            return
        self.logger.error("conn.spawn: coroutine %s for %r raised; closing the connection",
                          _name(task), conn, exc_info=exc)
        conn.close()


def _name(task: asyncio.Task[Any]) -> str:
    coro = task.get_coro()
    return getattr(coro, "__qualname__", None) or repr(coro)
