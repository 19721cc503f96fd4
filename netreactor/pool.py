"""A bounded pool of worker threads for blocking work: gnet's "multi-reactors +
goroutine pool" model on ``concurrent.futures``.

Callbacks run on an event loop and must not block. Work that does (a database
call, a file read, CPU-heavy work) goes to a :class:`WorkerPool`, in one line::

    import netreactor as nr

    def lookup(key: bytes) -> bytes:       # runs on a worker thread; may block
        return database.get(key) + b"\\n"

    class Server(nr.EventHandler):
        def __init__(self):
            self.pool = nr.WorkerPool(max_workers=8)

        def on_traffic(self, conn):
            self.pool.submit(conn, lookup, conn.read())   # the result is written to conn

What :meth:`WorkerPool.submit` guarantees:

* **Delivery on the loop.** The job runs on a worker thread; its outcome is
  handled on the loop that owns the connection. Without ``on_result``, a
  ``bytes``/``bytearray``/``memoryview`` result is written to the connection
  and ``None`` writes nothing. With ``on_result=callback``,
  ``callback(conn, result, exc)`` runs there instead (``exc`` is None on
  success), and may use the whole loop-thread API (``write``, ``close``...).
  It never runs inside ``submit()`` itself, even for an outcome known at once.
* **Order per connection.** Outcomes are delivered in the order the jobs were
  submitted for that connection, even when a later job finishes first: the
  pool keeps a queue of futures per connection and delivers its head once it
  is done. Jobs of different connections do not wait for each other.
* **Errors are reported, not lost.** A job that raises hands the exception to
  ``on_result``; without a callback it is logged at ERROR with its traceback
  (on the engine's ``netreactor`` logger unless ``logger=`` says otherwise) and
  the connection is closed, since a reply the peer expects will never come.
  A result that is neither bytes-like nor None is treated the same way (a
  ``TypeError``).
* **Bounded memory (back-pressure).** At most ``max_workers`` jobs run and
  ``max_queue`` more wait. When a job is submitted while the pool is full, it is
  still accepted, but reading from that connection is paused
  (``conn.pause_reading()``): what the peer sends stays in the kernel and TCP
  slows it down. Once the jobs in flight fall to ``low_water`` (half the
  capacity by default) every connection the pool paused is resumed, on its own
  loop. The overshoot is bounded by what one read of each paused connection
  can submit.
* **UDP.** A datagram connection cannot be paused, so a job submitted for one
  while the pool is full is **dropped**: ``on_result`` gets a
  :class:`PoolFullError`; without a callback a WARNING is logged (once until
  the pool has room again) and the job is counted in :attr:`WorkerPool.dropped`.

The pool's pause and the handler's own ``pause_reading()`` are separate
switches (``Pause.POOL`` and ``Pause.HANDLER``): a connection reads again only
when neither holds it, so the pool never resumes what the handler paused.

Jobs submitted for a connection that is closed, or closes meanwhile, still run
(they may have side effects); their result is dropped (``write`` on a closed
connection does nothing) and ``on_result`` still learns the outcome. If the
connection's loop has stopped for good, the outcome is handled on the worker
thread, where the connection is already closed.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import weakref
from collections import deque
from typing import Any, Callable, Deque, Dict, List, Optional

from .errors import NetreactorError
from .holds import ReadingHolds
from .outcomes import deliver
from .stream.conn import Pause

__all__ = ["WorkerPool", "PoolFullError", "queue_depth"]

#: ``on_result(conn, result, exc)``: ``exc`` is None when the job returned ``result``.
ResultCallback = Callable[[Any, Any, Optional[BaseException]], Any]



#: Every pool alive in this process, for the engine's ``pool_queue`` gauge.
_POOLS: weakref.WeakSet[WorkerPool] = weakref.WeakSet()


def queue_depth() -> int:
    """Jobs submitted to the worker pools of this process and not yet delivered
    (running or waiting): the ``pool_queue`` gauge of ``engine.stats()``."""
    # The WeakSet's own iterator is Python code another thread may race;
    # copying its set of references is one C call.
    pools = (ref() for ref in tuple(_POOLS.data))  # type: ignore[attr-defined]
    return sum(pool.in_flight for pool in pools if pool is not None)


class PoolFullError(NetreactorError):
    """A job for a datagram (UDP) connection was dropped because the pool was full."""


class _Job:
    """One submitted job, queued per connection until its outcome is delivered."""

    __slots__ = ("fn", "future", "on_result", "counted")

    def __init__(self, fn: Callable[..., Any], on_result: Optional[ResultCallback]) -> None:
        self.fn = fn
        # None until the executor has it: the delivery path treats that as "not done".
        self.future: Optional[concurrent.futures.Future[Any]] = None
        self.on_result = on_result
        self.counted = False  # holds a slot of the pool's capacity


class WorkerPool(ReadingHolds):
    """A bounded pool of worker threads whose results come back on the connection's loop.

    ``max_workers`` threads (default: ``min(32, CPUs + 4)``, as
    ``ThreadPoolExecutor``) run jobs; ``max_queue`` more (default: 4 per
    worker) may wait. ``low_water`` (default: half of ``max_workers +
    max_queue``) is the number of jobs in flight at or below which connections
    paused by the pool are resumed. ``logger`` replaces the ``netreactor``
    logger for failed jobs. Usable as a context manager (``shutdown(wait=True)``
    on exit). Every method is safe from any thread.
    """

    def __init__(self, max_workers: Optional[int] = None, max_queue: Optional[int] = None, *,
                 low_water: Optional[int] = None, logger: Optional[logging.Logger] = None,
                 thread_name_prefix: str = "netreactor-worker") -> None:
        if max_workers is None:
            max_workers = min(32, (os.cpu_count() or 1) + 4)
        if isinstance(max_workers, bool) or not isinstance(max_workers, int) or max_workers < 1:
            raise ValueError(f"max_workers must be an integer >= 1, got {max_workers!r}")
        if max_queue is None:
            max_queue = 4 * max_workers
        if isinstance(max_queue, bool) or not isinstance(max_queue, int) or max_queue < 0:
            raise ValueError(f"max_queue must be an integer >= 0, got {max_queue!r}")
        capacity = max_workers + max_queue
        if low_water is None:
            low_water = capacity // 2
        if (isinstance(low_water, bool) or not isinstance(low_water, int)
                or not 0 <= low_water < capacity):
            raise ValueError(f"low_water must be an integer in 0..{capacity - 1} "
                             f"(below max_workers + max_queue), got {low_water!r}")
        #: Worker threads.
        self.max_workers: int = max_workers
        #: Jobs that may wait for a worker before submitters are paused.
        self.max_queue: int = max_queue
        #: ``max_workers + max_queue``: jobs in flight before the pool counts as full.
        self.capacity: int = capacity
        #: Jobs in flight at or below which paused connections are resumed.
        self.low_water: int = low_water
        self.logger = logger if logger is not None else logging.getLogger("netreactor")
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers, thread_name_prefix)
        super().__init__(Pause.POOL)  # the bound's pauses (self.pauses counts them)
        self._in_flight = 0                       # counted jobs not yet delivered
        self._queues: Dict[Any, Deque[_Job]] = {}  # conn -> its jobs, in submission order
        self._drop_warned = False
        self._closed = False
        _POOLS.add(self)
        #: Jobs dropped because the pool was full (datagram connections only).
        self.dropped = 0

    # ------------------------------------------------------------------ public API

    @property
    def in_flight(self) -> int:
        """Jobs accepted whose outcome has not been delivered yet (running, waiting or done)."""
        return self._in_flight

    @property
    def paused_connections(self) -> int:
        """Connections whose reading the pool holds paused right now."""
        return len(self._holding)

    def submit(self, conn: Any, fn: Callable[..., Any], *args: Any,
               on_result: Optional[ResultCallback] = None) -> concurrent.futures.Future[Any]:
        """Run ``fn(*args)`` on a worker thread and deliver its outcome to ``conn``'s loop.

        Without ``on_result`` a bytes-like result is written to ``conn``; with it,
        ``on_result(conn, result, exc)`` runs on the loop. Returns the job's
        ``concurrent.futures.Future`` (for waiting or cancelling; outcomes are
        delivered through the pool either way). Use ``functools.partial`` to pass
        keyword arguments. Raises ``RuntimeError`` after :meth:`shutdown`.
        """
        if self._closed:
            raise RuntimeError("cannot submit to a WorkerPool after shutdown()")
        job = _Job(fn, on_result)
        # Stream connections can be paused; datagram connections cannot (duck-typed,
        # so TLS or other Conn subclasses need nothing special).
        pausable = hasattr(conn, "pause_reading")
        sync = False
        with self._lock:
            full = self._in_flight >= self.capacity
            drop = full and not pausable
            if drop:
                self.dropped += 1
            else:
                self._in_flight += 1
                job.counted = True
                if full:
                    self._waiting[conn] = None
                    # Also when already waiting: the handler may have resumed it meanwhile.
                    sync = conn not in self._holding
            queue = self._queues.get(conn)
            if queue is None:
                self._queues[conn] = queue = deque()
            queue.append(job)
        if sync:
            self._on_loop(conn, self._sync, conn)
        if drop:
            future: concurrent.futures.Future[Any] = concurrent.futures.Future()
            future.set_exception(PoolFullError(
                f"worker pool full ({self.capacity} jobs in flight): job {_name(fn)} dropped"))
        else:
            try:
                future = self._executor.submit(fn, *args)
            except RuntimeError as exc:  # shutdown() raced with us
                future = concurrent.futures.Future()
                future.set_exception(exc)
        job.future = future
        # Added after job.future is set: a job that is already done calls back at
        # once, and the delivery it schedules must find the future.
        future.add_done_callback(lambda _f: self._on_loop(conn, self._deliver, conn, defer=True))
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop accepting jobs; with ``wait``, block until every accepted job has run.

        ``cancel_futures=True`` cancels jobs that have not started; their
        ``on_result`` gets a ``concurrent.futures.CancelledError`` (without a
        callback they are dropped silently, as a deliberate shutdown is no
        error). Outcomes are still delivered on the loops, which must be running
        for that (if a loop has stopped they are handled on the calling thread).
        """
        self._closed = True
        self._executor.shutdown(wait=wait, cancel_futures=cancel_futures)

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.shutdown(wait=True)

    def __repr__(self) -> str:
        return (f"<WorkerPool workers={self.max_workers} in_flight={self._in_flight}/{self.capacity} "
                f"paused={len(self._holding)} dropped={self.dropped}>")

    # ------------------------------------------------------------------ delivery (on the loop)

    @staticmethod
    def _on_loop(conn: Any, task: Callable[..., None], *args: Any, defer: bool = False) -> None:
        """Run ``task(*args)`` on ``conn``'s loop (``EventLoop.post``), or at once
        when already on it and not ``defer``: a pause decided inside
        ``submit()`` takes effect before the handler's callback returns, while
        an outcome (``defer``) never runs ``on_result`` inside the caller."""
        loop = conn._loop
        if not defer and loop.on_loop_thread():
            task(*args)
        else:
            loop.post(task, *args)

    def _deliver(self, conn: Any) -> None:
        """Deliver the outcomes at the head of ``conn``'s queue that are done, in order."""
        while True:
            with self._lock:
                queue = self._queues.get(conn)
                if not queue:
                    return
                job = queue[0]
                future = job.future
                if future is None or not future.done():
                    return  # a later job finished first: it waits for this one
                queue.popleft()
                if not queue:
                    del self._queues[conn]
                resume: List[Any] = []
                if job.counted:
                    self._in_flight -= 1
                    if self._in_flight <= self.low_water:
                        self._drop_warned = False
                        if self._waiting:
                            # Every waiter at once: resuming only as many as there is
                            # room for could strand the rest if those never submit again.
                            resume = list(self._waiting)
                            self._waiting.clear()
            for waiter in resume:
                self._on_loop(waiter, self._sync, waiter)
            self._report(conn, job, future)

    def _report(self, conn: Any, job: _Job, future: concurrent.futures.Future[Any]) -> None:
        """Hand one job's outcome to its callback, or write / log it."""
        result: Any = None
        exc: Optional[BaseException]
        if future.cancelled():
            exc = concurrent.futures.CancelledError(f"job {_name(job.fn)} cancelled")
        else:
            exc = future.exception()
            if exc is None:
                result = future.result()
        exc = deliver(conn, result, exc, job.on_result, write=conn.write, logger=self.logger,
                      owner="worker pool", kind="job", name=_name(job.fn))
        if exc is None or isinstance(exc, concurrent.futures.CancelledError):
            return
        if isinstance(exc, PoolFullError):
            if not self._drop_warned:
                self._drop_warned = True
                self.logger.warning("%s (datagram connections cannot be paused; further drops "
                                    "are counted in WorkerPool.dropped)", exc)
            return
        self.logger.error("worker pool: job %s for %r raised; closing the connection",
                          _name(job.fn), conn, exc_info=exc)
        conn.close()


def _name(fn: Any) -> str:
    return getattr(fn, "__qualname__", None) or repr(fn)
