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
from threading import get_ident
from types import CoroutineType
from typing import Any, Callable, Coroutine, Dict, List, NoReturn, Optional, Tuple

from .holds import ReadingHolds
from .outcomes import deliver
from .stream.conn import Pause

__all__ = ["Spawner", "ResultCallback"]

#: ``on_result(conn, result, exc)``: ``exc`` is None when the coroutine returned ``result``.
ResultCallback = Callable[[Any, Any, Optional[BaseException]], Any]



#: A job: ``[task, on_result, cancel_on_close]`` (a list: made and read on every spawn).
_TASK, _ON_RESULT, _CANCEL_ON_CLOSE = 0, 1, 2


class Spawner(ReadingHolds):
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
        super().__init__(Pause.SPAWN)  # the bound's pauses (self.pauses counts them)
        self._in_flight = 0
        self._queues: Dict[Any, List[List[Any]]] = {}  # conn -> its jobs, in spawn order
        #: netreactor loop -> (its asyncio loop, the thread both run on)
        self._loops: Dict[Any, Tuple[asyncio.AbstractEventLoop, int]] = {}
        #: Coroutines spawned in all.
        self.spawned = 0

    # ------------------------------------------------------------------ loops

    def attach(self, loop: Any, aio: asyncio.AbstractEventLoop) -> None:
        """Coroutines of connections on netreactor ``loop`` run on ``aio``: both run
        on the calling thread."""
        self._loops[loop] = (aio, get_ident())

    def detach(self, loop: Any) -> None:
        """``loop``'s asyncio loop is gone: its connections can spawn no more."""
        self._loops.pop(loop, None)

    def asyncio_loop(self, loop: Any) -> Optional[asyncio.AbstractEventLoop]:
        """The asyncio loop serving netreactor ``loop``'s coroutines, or None."""
        slot = self._loops.get(loop)
        return slot[0] if slot is not None else None

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
        ``conn.spawn()`` is the same.
        """
        return self.spawn_for(conn, conn.loop, conn.closed, coro, on_result, cancel_on_close)

    def spawn_for(self, conn: Any, loop: Any, closed: bool, coro: Any,
                  on_result: Optional[ResultCallback], cancel_on_close: bool) -> asyncio.Task[Any]:
        """:meth:`spawn`, told ``conn``'s loop and whether it is closed (``Conn.spawn``
        knows both for free; this runs once per request)."""
        slot = self._loops.get(loop)
        if slot is None or slot[1] != get_ident() or (
                coro.__class__ is not CoroutineType and not asyncio.iscoroutine(coro)):
            self._refuse(slot, coro)
        try:
            task = slot[0].create_task(coro)
        except BaseException:  # the asyncio loop is closing, say: never started, never awaited
            coro.close()
            raise
        job = [task, on_result, cancel_on_close]
        with self._lock:
            full = self._in_flight >= self.capacity
            self._in_flight += 1
            self.spawned += 1
            queue = self._queues.get(conn)
            if queue is None:
                self._queues[conn] = [job]
            else:
                queue.append(job)
            if full:
                self._waiting[conn] = None
        if closed:
            if cancel_on_close:
                task.cancel()
        elif full:
            self._sync(conn)
        task.add_done_callback(functools.partial(self._done, conn))
        return task

    @staticmethod
    def _refuse(slot: Optional[Tuple[Any, int]], coro: Any) -> NoReturn:
        if not asyncio.iscoroutine(coro):
            raise TypeError(f"conn.spawn() takes a coroutine (call the async function: "
                            f"spawn(fetch(key)), not spawn(fetch)); got {type(coro).__name__}")
        coro.close()  # never run: no "coroutine was never awaited" warning on top of the error
        if slot is None:
            raise RuntimeError("this connection's event loop runs no asyncio loop: start the "
                               "engine with asyncio=True (CLI --asyncio), or serve it with "
                               "netreactor.serve() from the asyncio program's thread")
        raise RuntimeError("conn.spawn() called off the connection's loop thread; from other "
                           "threads use asyncio.run_coroutine_threadsafe and conn.async_write")

    def connection_closed(self, conn: Any) -> None:
        """``conn`` closed (its loop thread): cancel what it spawned (unless told not to)."""
        if conn not in self._queues and conn not in self._waiting:
            return
        with self._lock:
            self._waiting.pop(conn, None)
            self._holding.discard(conn)
            queue = self._queues.get(conn)
            jobs = list(queue) if queue else []
        for task, _on_result, cancel_on_close in jobs:
            if cancel_on_close and not task.done() and not task.get_loop().is_closed():
                task.cancel()

    def running(self, aio: asyncio.AbstractEventLoop) -> List[asyncio.Task[Any]]:
        """The spawned coroutines of ``aio`` not finished yet."""
        with self._lock:
            return [job[_TASK] for queue in self._queues.values() for job in queue
                    if not job[_TASK].done() and job[_TASK].get_loop() is aio]

    async def drain(self, aio: asyncio.AbstractEventLoop) -> None:
        """Wait (at most ``shutdown_timeout`` s) for the coroutines of ``aio`` that
        were told to outlive their connection (``cancel_on_close=False``)."""
        with self._lock:
            tasks = [job[_TASK] for queue in self._queues.values() for job in queue
                     if not job[_CANCEL_ON_CLOSE] and not job[_TASK].done()
                     and job[_TASK].get_loop() is aio]
        if tasks:
            await asyncio.wait(tasks, timeout=self.shutdown_timeout)

    # ------------------------------------------------------------------ delivery (on the loop)

    def _done(self, conn: Any, task: asyncio.Task[Any]) -> None:
        """A coroutine of ``conn`` finished: deliver the outcomes at the head of its
        queue that are done, in spawn order (a later one that finished first waits)."""
        with self._lock:
            queue = self._queues.get(conn)
            if not queue or not queue[0][_TASK].done():
                return
            if len(queue) == 1:  # the common case: one in flight
                done = queue
                del self._queues[conn]
            else:
                n = 1
                while n < len(queue) and queue[n][_TASK].done():
                    n += 1
                done = queue[:n]
                del queue[:n]
                if not queue:
                    del self._queues[conn]
            self._in_flight -= len(done)
            resume: Optional[List[Any]] = None
            if self._waiting and self._in_flight <= self.low_water:
                # Every waiter at once: resuming only as many as there is room
                # for could strand the rest if those never spawn again.
                resume = list(self._waiting)
                self._waiting.clear()
        if resume is not None:
            for waiter in resume:
                waiter_loop = waiter.loop
                if waiter_loop.on_loop_thread():
                    self._sync(waiter)
                else:
                    waiter_loop.post(self._sync, waiter)
        for task, on_result, _cancel in done:
            if on_result is None and not task.cancelled() and task.exception() is None:
                result = task.result()
                if result.__class__ is bytes:  # the common case, written out now
                    conn.write_now(result)
                    continue
            self._report(conn, task, on_result)

    def _report(self, conn: Any, task: asyncio.Task[Any], callback: Optional[ResultCallback]) -> None:
        """Hand one coroutine's outcome to its callback, or write / log it."""
        result: Any = None
        exc: Optional[BaseException]
        if task.cancelled():
            exc = asyncio.CancelledError(f"coroutine {_name(task)} cancelled")
        else:
            exc = task.exception()
            if exc is None:
                result = task.result()
        exc = deliver(conn, result, exc, callback, write=conn.write_now, logger=self.logger,
                      owner="conn.spawn", kind="coroutine", name=_name(task))
        if exc is None or isinstance(exc, asyncio.CancelledError):
            return
        self.logger.error("conn.spawn: coroutine %s for %r raised; closing the connection",
                          _name(task), conn, exc_info=exc)
        conn.close()


def _name(task: asyncio.Task[Any]) -> str:
    coro = task.get_coro()
    return getattr(coro, "__qualname__", None) or repr(coro)
