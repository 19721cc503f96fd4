"""asyncio on a netreactor event loop's thread: two ways to share one thread.

**Shared poller** (:class:`ReactorEventLoop`, :func:`run_with_asyncio`): an
asyncio event loop whose selector *is* a netreactor :class:`EventLoop`. The
sockets asyncio watches (its self-pipe, the connections async libraries
open) are registered in the netreactor loop's poller, so one ``epoll_wait``
serves netreactor's connections, asyncio's sockets and both sets of timers.

Why this way in, of the ones asyncio offers in public:

* ``SelectorEventLoop(selector=...)`` takes any ``selectors.BaseSelector``;
  nothing else of asyncio needs to be replaced or reached into. The selector
  is :class:`ReactorSelector`: ``register``/``modify``/``unregister`` become
  entries of the netreactor loop's fd table, and ``select(timeout)`` *runs the
  netreactor loop* until asyncio has something to do.
* The netreactor dispatch loop keeps running flat out inside ``select()``: it
  returns to asyncio only when one of asyncio's fds is ready, asyncio's
  timeout passes, or a netreactor callback handed asyncio work
  (``call_soon``/``call_at``, which :class:`ReactorEventLoop` overrides to
  interrupt the netreactor loop). A server with asyncio on and no coroutine
  running therefore runs the very same per-message path as without asyncio,
  and asyncio's own iteration is paid only when asyncio has work.
* The other direction (netreactor stepping asyncio) needs asyncio's private
  ``_run_once``, or a ``run_forever()`` per step (``call_soon(stop)``), which
  costs a loop start and stop per iteration and still cannot learn asyncio's
  next timer deadline.

The rules of the hand-over: asyncio calls ``select(timeout)``; the netreactor
loop runs (``EventLoop.run``) until :meth:`EventLoop.interrupt` and returns the
asyncio fds its last poll reported. ``timeout=0`` runs one netreactor
iteration with a zero poll, ``timeout=t`` arms a netreactor timer that
interrupts after ``t``, ``None`` waits for an fd or an interrupt. Work that
asyncio code queues on the netreactor loop between two ``select()`` calls (a
coroutine's ``conn.write``) is seen at once: ``EventLoop.run`` starts with a
zero poll when anything is queued. When the netreactor loop is stopped for
good (:meth:`EventLoop.stop`), ``select()`` stops the asyncio loop too.

**Nested poller** (:class:`NestedEventLoop`, :class:`NestedDriver`): a
netreactor loop run *by* a foreign asyncio loop (asyncio's own, or uvloop, which
takes no custom selector): the netreactor poller's own fd (an epoll fd is
readable while it has ready events) is one reader of the asyncio loop, whose
callback runs one netreactor iteration with a zero poll; netreactor timers
and queued work arm asyncio ``call_later``/``call_soon``. This costs one more
``epoll_wait`` per wake than the shared poller, and works with any loop that has
``add_reader``. ``netreactor.serve()`` embeds a server in an asyncio program
this way.

Everything here runs on the loop's own thread. This module knows nothing of
connections; ``netreactor.spawner`` builds ``conn.spawn`` on it.
"""

from __future__ import annotations

import asyncio
import contextvars
import selectors
from time import monotonic
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Dict, Iterator, List, Mapping, Optional, Tuple

from .loop import ConnectionEntry, EventLoop
from .pollers import READABLE, WRITABLE, Poller
from .timers import TimerHandle

if TYPE_CHECKING:  # pragma: no cover
    from typing_extensions import TypeVarTuple, Unpack

    _Ts = TypeVarTuple("_Ts")

__all__ = ["ReactorSelector", "ReactorEventLoop", "run_with_asyncio", "run_nested",
           "NestedEventLoop", "NestedDriver", "reactor_of"]

_READ = selectors.EVENT_READ
_WRITE = selectors.EVENT_WRITE
#: Seconds the asyncio loop's shutdown may take at most (tasks cancelled at a
#: loop's end that refuse to finish must not hang the engine's stop).
CLEANUP_TIMEOUT = 5.0
#: A nested loop on the portable poller wakes at least this often when idle:
#: that poller probes its parked fds for errors from inside ``poll()``.
_PORTABLE_IDLE_WAKE = 1.0


def _fd_of(fileobj: Any) -> int:
    """The fd of ``fileobj`` (an int, or an object with ``fileno()``), as selectors do."""
    if isinstance(fileobj, int):
        fd = fileobj
    else:
        try:
            fd = int(fileobj.fileno())
        except (AttributeError, TypeError, ValueError):
            raise ValueError(f"Invalid file object: {fileobj!r}") from None
    if fd < 0:
        raise ValueError(f"Invalid file descriptor: {fd}")
    return fd


def _bits(events: int) -> int:
    return (READABLE if events & _READ else 0) | (WRITABLE if events & _WRITE else 0)


class _AsyncioFd:
    """An asyncio fd's slot in the netreactor loop's fd table."""

    __slots__ = ("selector", "key")
    is_connection = False

    def __init__(self, selector: ReactorSelector, key: selectors.SelectorKey) -> None:
        self.selector = selector
        self.key = key

    def handle_io(self, events: int) -> None:
        # What selectors.EpollSelector reports: an error or hang-up is both
        # readable and writable, so that asyncio's read or write finds it.
        mask = (_WRITE if events & ~READABLE else 0) | (_READ if events & ~WRITABLE else 0)
        mask &= self.key.events
        if mask:
            selector = self.selector
            selector._events.append((self.key, mask))
            selector._interrupt()

    def abort(self, err: Optional[BaseException]) -> None:
        pass


class _KeyMap(Mapping[Any, selectors.SelectorKey]):
    """``get_map()``: fileobj (or fd) -> key, read-only."""

    def __init__(self, keys: Dict[int, selectors.SelectorKey]) -> None:
        self._keys = keys

    def __len__(self) -> int:
        return len(self._keys)

    def __getitem__(self, fileobj: Any) -> selectors.SelectorKey:
        try:
            return self._keys[_fd_of(fileobj)]
        except (KeyError, ValueError):
            raise KeyError(f"{fileobj!r} is not registered") from None

    def __iter__(self) -> Iterator[Any]:
        return iter(self._keys)


class ReactorSelector(selectors.BaseSelector):
    """A ``selectors`` selector whose fds live in a netreactor :class:`EventLoop`,
    and whose ``select()`` runs that loop (see the module docstring).

    ``on_stopped()`` is called from ``select()`` once the netreactor loop was
    stopped for good (the asyncio loop's ``stop``, as :class:`ReactorEventLoop`
    sets it); ``select()`` keeps serving asyncio afterwards.
    """

    def __init__(self, loop: EventLoop) -> None:
        self.loop = loop
        self._keys: Dict[int, selectors.SelectorKey] = {}
        self._entries: Dict[int, _AsyncioFd] = {}
        self._events: List[Tuple[selectors.SelectorKey, int]] = []
        self._interrupt = loop.interrupt
        self._deadline: Optional[TimerHandle] = None
        self._deadline_at = 0.0
        self._closed = False
        #: Called once from select() when the netreactor loop stopped for good.
        self.on_stopped: Optional[Callable[[], None]] = None

    # ------------------------------------------------------------------ registry

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        if not events or events & ~(_READ | _WRITE):
            raise ValueError(f"Invalid events: {events!r}")
        fd = _fd_of(fileobj)
        if fd in self._keys:
            raise KeyError(f"{fileobj!r} (FD {fd}) is already registered")
        key = selectors.SelectorKey(fileobj, fd, events, data)
        entry = _AsyncioFd(self, key)
        self.loop.add(fd, entry, _bits(events))
        self._keys[fd] = key
        self._entries[fd] = entry
        return key

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        fd = self._lookup(fileobj)
        key = self._keys.pop(fd)
        del self._entries[fd]
        self.loop.remove(fd)
        return key

    def modify(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        if not events or events & ~(_READ | _WRITE):
            raise ValueError(f"Invalid events: {events!r}")
        fd = self._lookup(fileobj)
        old = self._keys[fd]
        if events != old.events:
            self.loop.modify(fd, _bits(events))
        key = old._replace(events=events, data=data)
        self._keys[fd] = key
        self._entries[fd].key = key
        return key

    def _lookup(self, fileobj: Any) -> int:
        try:
            fd = _fd_of(fileobj)
        except ValueError:
            # A closed file object: find it by identity, as selectors do.
            for key in self._keys.values():
                if key.fileobj is fileobj:
                    return key.fd
            raise
        if fd not in self._keys:
            raise KeyError(f"{fileobj!r} is not registered")
        return fd

    def get_key(self, fileobj: Any) -> selectors.SelectorKey:
        if self._closed:
            raise RuntimeError("Selector is closed")
        try:
            return self._keys[self._lookup(fileobj)]
        except ValueError:
            raise KeyError(f"{fileobj!r} is not registered") from None

    def get_map(self) -> Mapping[Any, selectors.SelectorKey]:
        return _KeyMap(self._keys)

    def close(self) -> None:
        """Drop asyncio's fds from the netreactor loop (which is not closed: its owner closes it)."""
        for fd in list(self._keys):
            self.loop.remove(fd)
        self._keys.clear()
        self._entries.clear()
        self._cancel_deadline()
        self._closed = True

    # ------------------------------------------------------------------ select

    def select(self, timeout: Optional[float] = None) -> List[Tuple[selectors.SelectorKey, int]]:
        loop = self.loop
        if loop.stop_requested and self.on_stopped is not None:
            # Stopped from asyncio code, outside run(): nothing would interrupt it.
            timeout = 0
        if timeout is not None:
            if timeout <= 0:
                self._cancel_deadline()
                loop.call_soon(self._interrupt)  # one iteration, its poll with timeout 0
            else:
                self._arm_deadline(monotonic() + timeout)
        events: List[Tuple[selectors.SelectorKey, int]] = []
        self._events = events
        loop.run()
        if loop.stop_requested and self.on_stopped is not None:
            on_stopped, self.on_stopped = self.on_stopped, None
            on_stopped()
        return events

    def _arm_deadline(self, when: float) -> None:
        # asyncio asks again with the same deadline (its earliest timer) after
        # every wake: keep the timer armed for it rather than make a new one.
        if self._deadline is not None:
            if abs(self._deadline_at - when) < 0.0005:
                return
            self._deadline.cancel()
        self._deadline_at = when
        self._deadline = self.loop.call_later(when - monotonic(), self._deadline_passed)

    def _deadline_passed(self) -> None:
        self._deadline = None
        self._interrupt()

    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None


class ReactorEventLoop(asyncio.SelectorEventLoop):
    """An asyncio event loop served by the netreactor loop ``reactor`` (its selector
    is a :class:`ReactorSelector`). Run it with ``run_forever()`` on the thread
    that owns ``reactor``: :func:`run_with_asyncio` does, and tidies up after."""

    def __init__(self, reactor: EventLoop) -> None:
        self.reactor = reactor
        self._reactor_interrupt = reactor.interrupt
        selector = ReactorSelector(reactor)
        super().__init__(selector)
        selector.on_stopped = self.stop

    # Work handed to asyncio from a netreactor callback (which runs inside
    # select()) must reach asyncio now, not at the next fd or timeout: both
    # interrupt the netreactor loop. From asyncio's own callbacks the
    # interrupt does nothing (the netreactor loop is not running then).
    def call_soon(self, callback: Callable[[Unpack[_Ts]], object], *args: Unpack[_Ts],
                  context: Optional[contextvars.Context] = None) -> asyncio.Handle:
        handle = super().call_soon(callback, *args, context=context)
        self._reactor_interrupt()
        return handle

    def call_at(self, when: float, callback: Callable[[Unpack[_Ts]], object], *args: Unpack[_Ts],
                context: Optional[contextvars.Context] = None) -> asyncio.TimerHandle:
        handle = super().call_at(when, callback, *args, context=context)
        self._reactor_interrupt()
        return handle


def reactor_of(aio_loop: Any) -> Optional[EventLoop]:
    """The netreactor loop serving ``aio_loop`` as its selector, or None."""
    return aio_loop.reactor if isinstance(aio_loop, ReactorEventLoop) else None


def run_with_asyncio(loop: EventLoop, *,
                     on_start: Optional[Callable[[ReactorEventLoop], None]] = None,
                     before_close: Optional[Callable[[ReactorEventLoop], Awaitable[Any]]] = None) -> None:
    """Run ``loop`` (on its thread) under a :class:`ReactorEventLoop` until it is stopped.

    ``on_start(aio)`` runs once the asyncio loop exists (and is this thread's
    current loop). When ``loop`` stops, ``before_close(aio)`` is awaited (for
    at most :data:`CLEANUP_TIMEOUT` s), then, as ``asyncio.run`` does, every
    task left is cancelled and awaited, async generators and the default
    executor are shut down, and the asyncio loop is closed.
    """
    aio = ReactorEventLoop(loop)
    asyncio.set_event_loop(aio)
    try:
        if on_start is not None:
            on_start(aio)
        aio.run_forever()
    finally:
        try:
            _wind_down(aio, before_close)
        finally:
            asyncio.set_event_loop(None)
            aio.close()


def run_nested(loop: NestedEventLoop, new_loop: Callable[[], asyncio.AbstractEventLoop], *,
               on_start: Optional[Callable[[asyncio.AbstractEventLoop], None]] = None,
               before_close: Optional[Callable[[Any], Awaitable[Any]]] = None) -> None:
    """Run ``loop`` (on its thread) nested in a new asyncio loop ``new_loop()`` (uvloop's,
    say) until it is stopped; then wind the asyncio loop down as :func:`run_with_asyncio` does."""
    aio = new_loop()
    asyncio.set_event_loop(aio)
    driver = NestedDriver(loop, aio)
    try:
        if on_start is not None:
            on_start(aio)
        driver.start()
        aio.run_until_complete(driver.stopped)
    finally:
        driver.detach()
        try:
            _wind_down(aio, before_close)
        finally:
            asyncio.set_event_loop(None)
            aio.close()


def _wind_down(aio: asyncio.AbstractEventLoop,
               before_close: Optional[Callable[[Any], Awaitable[Any]]]) -> None:
    """After the netreactor loop stopped: let asyncio finish what it was doing.

    The netreactor loop still serves asyncio's fds here (``select()`` runs it
    again; it has no connections left)."""
    if aio.is_closed():
        return

    if before_close is not None:
        try:
            aio.run_until_complete(asyncio.wait_for(before_close(aio), CLEANUP_TIMEOUT))
        except (asyncio.TimeoutError, asyncio.CancelledError):
            pass
    tasks = asyncio.all_tasks(aio)
    for task in tasks:
        task.cancel()
    if tasks:
        aio.run_until_complete(asyncio.wait(tasks, timeout=CLEANUP_TIMEOUT))
    aio.run_until_complete(aio.shutdown_asyncgens())
    aio.run_until_complete(aio.shutdown_default_executor())


# ---------------------------------------------------------------------------- nested


class NestedEventLoop(EventLoop):
    """A netreactor loop that a foreign asyncio loop runs (:class:`NestedDriver`).

    Work queued on it from outside its own iteration (a coroutine's
    ``conn.write``, a ``call_soon`` or ``call_later`` from asyncio code) asks the
    driver for an iteration soon: no iteration would come otherwise until
    the next I/O. Inside an iteration the asks cost one test each.
    """

    def __init__(self, index: int, poller: Poller, logger: Any) -> None:
        super().__init__(index, poller, logger)
        self._kick: Callable[[], None] = _nothing
        self._kick_flush: Callable[[], None] = _nothing
        flush_append = self.schedule_flush
        read_append = self.schedule_read

        def schedule_flush(conn: ConnectionEntry) -> None:
            flush_append(conn)
            self._kick_flush()  # a flush, not a whole iteration: no poll needed for it

        def schedule_read(conn: ConnectionEntry) -> None:
            read_append(conn)
            self._kick()

        self.schedule_flush = schedule_flush
        self.schedule_read = schedule_read

    def call_soon(self, callback: Callable[..., Any], *args: Any) -> None:
        super().call_soon(callback, *args)
        self._kick()

    def call_later(self, delay: float, callback: Callable[..., Any], *args: Any) -> TimerHandle:
        handle = super().call_later(delay, callback, *args)
        self._kick()
        return handle

    def stop(self) -> None:
        super().stop()
        self._kick()  # from asyncio code: no iteration would come to see it

    def set_kick(self, kick: Callable[[], None], kick_flush: Callable[[], None]) -> None:
        """``kick()`` is called whenever work is queued, ``kick_flush()`` when only
        writes are (the driver's :meth:`NestedDriver.kick` and :meth:`NestedDriver.kick_flush`)."""
        self._kick = kick
        self._kick_flush = kick_flush


def _nothing() -> None:
    pass


class NestedDriver:
    """Run a :class:`NestedEventLoop` inside the asyncio loop ``aio`` (on ``aio``'s
    thread): the poller's fd is a reader of ``aio``, each wake runs one
    iteration. ``stopped`` is a future of ``aio`` done once the netreactor loop
    was stopped for good (:meth:`EventLoop.stop`); the driver then detaches."""

    def __init__(self, loop: NestedEventLoop, aio: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.aio = aio
        self.stopped: asyncio.Future[None] = aio.create_future()
        self._fd = loop.poller.fileno()
        self._scheduled = False       # an iteration is queued on aio (call_soon)
        self._flush_scheduled = False  # a flush is
        self._timer: Optional[asyncio.TimerHandle] = None
        self._timer_at = 0.0
        self._in_step = False
        self._idle_wake = _PORTABLE_IDLE_WAKE if loop.poller.name == "selectors" else None
        self._attached = False

    def start(self) -> None:
        """Begin: watch the poller and run a first iteration."""
        self.aio.add_reader(self._fd, self._step)
        self._attached = True
        self.loop.set_kick(self.kick, self.kick_flush)
        self.kick()

    def kick(self) -> None:
        """Ask for an iteration soon (once; any thread but via call_soon_threadsafe's waker)."""
        if not (self._scheduled or self._in_step) and self._attached:
            self._scheduled = True
            self.aio.call_soon(self._step)

    def kick_flush(self) -> None:
        """Ask for the deferred writes to be sent soon: every write made by the
        callbacks of one asyncio iteration goes out with one flush after them."""
        if not (self._flush_scheduled or self._scheduled or self._in_step) and self._attached:
            self._flush_scheduled = True
            self.aio.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._attached:
            loop = self.loop
            loop.flush_deferred_writes()
            if loop.pending_work():
                self.kick()

    def _step(self) -> None:
        if not self._attached:
            return
        self._scheduled = False
        loop = self.loop
        self._in_step = True
        try:
            loop.call_soon(loop.interrupt)  # one iteration, its poll with timeout 0
            loop.run()
        finally:
            self._in_step = False
        if loop.stop_requested:
            self.detach()
            if not self.stopped.done():
                self.stopped.set_result(None)
            return
        if loop.pending_work():
            self.kick()
            return
        deadline = loop.next_deadline()
        if self._idle_wake is not None:
            idle = monotonic() + self._idle_wake
            deadline = idle if deadline is None else min(deadline, idle)
        if deadline is None:
            self._cancel_timer()
        elif self._timer is None or abs(self._timer_at - deadline) >= 0.0005:
            self._cancel_timer()
            self._timer_at = deadline
            self._timer = self.aio.call_later(max(0.0, deadline - monotonic()), self._timer_fired)

    def _timer_fired(self) -> None:
        self._timer = None
        self._step()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def detach(self) -> None:
        """Stop driving the loop (it stopped, or its owner gave up on it)."""
        if not self._attached:
            return
        self._attached = False
        self.loop.set_kick(_nothing, _nothing)
        self._cancel_timer()
        if not self.aio.is_closed():
            self.aio.remove_reader(self._fd)

