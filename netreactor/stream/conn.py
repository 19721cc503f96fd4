"""One stream connection (TCP or Unix): the handler's read/write API over
inbound and outbound buffers, and the connection's half of the I/O path.

Threading: every method belongs to the loop that owns the connection, except
:meth:`Conn.async_write`, :meth:`Conn.async_writev`, :meth:`Conn.wake` and
:meth:`Conn.close`, which may be called from any thread and run on that loop.
``write``/``writev``/``flush``/``pause_reading``/``resume_reading`` called from
another thread raise ``RuntimeError`` (checked where it costs nothing: when a
write would schedule a flush, which a write inside a callback never does;
``debug=True`` checks every loop-only call).

The syscalls belong to the connection's :class:`~netreactor.stream.transport.Transport`.

State (``_state``), one value at a time::

    OPENING   registered; a preamble (TLS handshake, PROXY header) runs first;
              the handler has not seen the connection and never will if it fails
    OPEN      on_open ran; reading unless a pause reason is set
    CLOSING   a close was asked for: nothing more is read or accepted for
              writing; queued output drains (for at most ``close_timeout``)
    LINGER    closed locally: output sent and our write side shut down;
              on_close ran, and for the handler the connection is closed; the
              loop still reads and drops the peer's input until its EOF (a
              close() with unread input would answer with RST and destroy the
              reply still in the kernel's send queue), then closes the fd.
              It still counts in count_connections (it holds an fd).
    CLOSED    fd closed, buffers dropped, on_close ran

    OPENING -> OPEN      preamble done, or none: on_open
    OPEN    -> CLOSING   close(), Action.CLOSE, engine stop (linger), peer EOF
                         (no linger: it sends no more; what we owe still goes)
    CLOSING -> LINGER    output drained, local close, transport lingers
    CLOSING -> CLOSED    output drained otherwise
    LINGER  -> CLOSED    peer EOF or error
    any     -> CLOSED    error, cap passed, handler raised, abort(), and the
                         close deadline (``close_timeout`` after CLOSING began)

Reasons reading is paused (``_paused``, a bit set; a connection reads when
it is OPEN and no bit is set): :data:`Pause.BACKLOG` (queued output passed
``write_high_water``; cleared at ``write_low_water``; accepted connections
only), :data:`Pause.HANDLER` (``pause_reading()``), :data:`Pause.POOL` (a
full :class:`netreactor.WorkerPool`), :data:`Pause.SPAWN` (too many coroutines
in flight: :meth:`Conn.spawn`). Each owner sets and clears its own bit.

A connection that is not reading still gets errors and hang-ups from the
poller: an error closes it; a hang-up with no error (a Unix peer that closed,
its last bytes still unread) mutes the fd until reading resumes, then what
the peer sent is delivered and its close reported.

Preambles (:class:`Preamble`): work done in OPENING, before the handler
meets the connection, such as reading a PROXY protocol header or completing
a TLS handshake. ``start(preambles)`` runs them in order; each reads the fd
itself (``conn.transport``) and ends with :meth:`Conn.preamble_done` (the
bytes it read past its own part go to the next preamble, or become the
handler's first input) or :meth:`Conn.preamble_failed` (the connection is
closed, and the handler never hears of it). On edge-triggered epoll a
preamble must read until ``EAGAIN``.
"""

from __future__ import annotations

import collections
import contextlib
import enum
import os
import socket
import sys
import threading
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterable, Iterator, List, Optional, Protocol, Sequence, Union

from ..callbacks import Failed, call, log_failure, report
from ..errors import (BufferOverflowError, ClosedError, EngineStoppedError, IdleTimeoutError,
                      PeerClosedError, ReadTimeoutError, RefusedError)
from ..handler import Action
from ..reactor import EDGE, ERROR, HANGUP, READABLE, WRITABLE
from . import sockopts, traffic
from .inbound import Inbound
from .transport import PLAIN_TCP, PLAIN_UNCOUNTED, CountingPlain, Transport

if TYPE_CHECKING:  # pragma: no cover
    from ..reactor import EventLoop, TimerHandle
    from ..reactor.wheel import Bucket

__all__ = ["Conn", "EdgeConn", "StreamContext", "Pause", "State", "Preamble", "close_cause"]

Buffer = Union[bytes, bytearray, memoryview]
Callback = Callable[["Conn", Optional[BaseException]], Any]



class State(enum.IntEnum):
    """A connection's state (see the module docstring), ordered: ``>= CLOSING``
    means no more writes. The hot path compares by identity (``is OPEN``), which
    costs no truth test."""

    OPEN = 0
    OPENING = 1
    CLOSING = 2
    LINGER = 3
    CLOSED = 4


OPEN, OPENING, CLOSING, LINGER, CLOSED = State

_IN_EV = READABLE | ERROR | HANGUP
_OUT_EV = WRITABLE | ERROR | HANGUP
_TROUBLE = ERROR | HANGUP
#: ``_events`` of a muted fd (see the module docstring).
_MUTED = -1
# sendmsg() takes at most IOV_MAX buffers per call.
_IOV_MAX = 1024
#: Reads per event while lingering, and their size.
_LINGER_READS = 16
_LINGER_READ_SIZE = 65536
#: The first read size of a connection, and the smallest: the largest bytes
#: object CPython's small-object allocator serves (512 bytes less the 33 of
#: a bytes header). A read of it costs ~780 fewer instructions than one of
#: 64 KiB, which goes to malloc and is shrunk after (bench/instructions.sh).
SMALL_READ = 479
_EMPTY = b""
_get_ident = threading.get_ident


class Pause(enum.IntFlag):
    """Why a connection is not reading; each owner sets and clears its own bit."""

    BACKLOG = 1
    HANDLER = 2
    POOL = 4
    SPAWN = 8


_BACKLOG = int(Pause.BACKLOG)


def close_cause(err: Optional[BaseException]) -> str:
    """The counter a connection that ended with ``err`` (what ``on_close`` got)
    counts under: ``closed.local`` (None: the server closed it), ``closed.peer``
    (EOF, reset, broken pipe; a TLS peer that left without ``close_notify``, as
    Python's own clients do), ``closed.cap`` (a buffer cap), ``closed.timeout``
    (any ``TimeoutError``: idle, read or header timeouts, TCP keep-alive),
    ``refused.<reason>`` (:class:`RefusedError`, before ``on_open``), else
    ``closed.error`` (a socket error, a handler that raised, a peer's garbage)."""
    if err is None or err.__class__ is EngineStoppedError:
        return "closed.local"
    if isinstance(err, (PeerClosedError, ConnectionResetError, BrokenPipeError)):
        return "closed.peer"
    if isinstance(err, BufferOverflowError):
        return "closed.cap"
    if isinstance(err, TimeoutError):
        return "closed.timeout"
    if isinstance(err, RefusedError):
        return "refused." + err.reason
    ssl = sys.modules.get("ssl")  # only TLS raises it, and a plain server never imports ssl
    if ssl is not None and isinstance(err, ssl.SSLEOFError):
        return "closed.peer"
    return "closed.error"


class StreamContext:
    """What the connections of one owner (an engine or a client) on one loop share:
    the loop, the handler, the option values the I/O path reads, and the counters.

    Counters (written on the loop's thread only; any thread may read them, they
    are plain ints): ``bytes_in``/``bytes_out``, application bytes received
    and sent, but on plain TCP (where :data:`traffic.KERNEL_COUNTS`) only
    those of closed connections: :meth:`traffic` adds the open ones', which
    the kernel counts (see :mod:`netreactor.stream.traffic`; a PROXY header is
    not application bytes, TLS counts plaintext), ``frames_in``/``frames_out`` (where a
    codec or protocol counts them: :meth:`Conn.count_frames`), ``open``
    (connections not yet closed), ``tls_handshakes``/``tls_handshake_failures``
    (TLS handshakes that completed / failed, when the context is the handshake's
    ``stats``), and ``counts``, a dict of event counters keyed
    like :mod:`netreactor.metrics` (``accepted``, ``closed.<cause>``,
    ``refused.<reason>``): the owner passes
    the dict (an engine: :func:`netreactor.metrics.loop_stats`), else any key counts.
    """

    __slots__ = ("loop", "handler", "logger", "read_buffer_cap", "inbound_buffer_cap",
                 "write_high_water", "write_low_water", "write_buffer_cap", "close_timeout",
                 "pause_on_high_water", "read_budget", "request_shutdown", "wheel", "idle_ticks",
                 "on_closed", "bytes_in", "bytes_out", "frames_in", "frames_out", "open", "counts",
                 "tls_handshakes", "tls_handshake_failures", "spawner", "_counting", "_reported",
                 "_traffic_lock")

    def __init__(self, loop: EventLoop, handler: Any, options: Any,
                 request_shutdown: Callable[[], None], *, pause_on_high_water: bool = True,
                 counts: Optional[Dict[str, int]] = None) -> None:
        self.loop = loop
        self.handler = handler
        self.logger = loop.logger
        self.read_buffer_cap: int = options.read_buffer_cap
        self.inbound_buffer_cap: int = options.inbound_buffer_cap
        self.write_high_water: int = options.write_high_water
        self.write_low_water: int = options.write_low_water
        self.write_buffer_cap: int = options.write_buffer_cap
        self.close_timeout: float = options.shutdown_timeout
        # Accepted connections stop reading at write_high_water: their output
        # answers the peer's input, so a peer that does not read cannot make us
        # buffer. Dialed ones do not: their output is the application's own, and
        # two netreactor peers pausing each other would both wait forever.
        self.pause_on_high_water = pause_on_high_water
        #: Edge-triggered reads per connection per wake-up.
        self.read_budget = 16
        #: What ``Action.SHUTDOWN`` calls.
        self.request_shutdown = request_shutdown
        #: The loop's timing wheel (idle and read timeouts); its ``now`` is the
        #: tick the I/O path notes as a connection's last traffic.
        self.wheel = loop.wheel
        idle = getattr(options, "idle_timeout", None)
        #: ``idle_timeout`` in wheel ticks (0: off).
        self.idle_ticks: int = self.wheel.ticks(idle) if idle else 0
        #: Called with each connection once its fd is closed (the server's
        #: connection limits), or None.
        self.on_closed: Optional[Callable[[Conn], None]] = None
        self.bytes_in = 0
        self.bytes_out = 0
        self.frames_in = 0
        self.frames_out = 0
        self.open = 0
        #: What a TLSHandshake given this context as ``stats`` counts.
        self.tls_handshakes = 0
        self.tls_handshake_failures = 0
        self.counts: Dict[str, int] = counts if counts is not None else collections.defaultdict(int)
        #: What runs ``conn.spawn`` coroutines (a :class:`netreactor.spawner.Spawner`),
        #: or None when the owner runs no asyncio.
        self.spawner: Any = None
        self._counting: Optional[CountingPlain] = None
        self._reported = (0, 0)
        self._traffic_lock = threading.Lock()

    def transport_for(self, family: int) -> Transport:
        """The plain transport of a new stream socket of ``family``: the kernel
        counts TCP's bytes where it can; otherwise the transport counts them."""
        if family != socket.AF_UNIX and traffic.KERNEL_COUNTS:
            return PLAIN_TCP
        counting = self._counting
        if counting is None:
            counting = self._counting = CountingPlain(self)
        return counting

    def traffic(self) -> tuple[int, int]:
        """``(bytes_in, bytes_out)`` of this context's connections, open ones
        included, from any thread. The loop moves counts between the
        connections' kernels and ``bytes_in``/``bytes_out`` while the scan
        runs: a connection that closes adds its own as it leaves the scan (so
        the value read before the scan holds them at most once), a PROXY
        header is taken off as its connection joins the scan (so the value
        read after it does): the lesser of the two can miss a count once, never
        hold one twice; and the result is never less than an earlier one:
        counters must not go back."""
        before_in, before_out = self.bytes_in, self.bytes_out
        received = sent = 0
        for entry in self.connections():
            # Not before a preamble is done: none of those bytes count unless it succeeds.
            if entry._transport is PLAIN_TCP and OPENING is not entry._state is not CLOSED:
                counts = traffic.tcp_traffic(entry.fd, None)
                # Closed meanwhile: the fd may be another socket's already.
                if counts is not None and entry._state is not CLOSED:
                    received += counts[0]
                    sent += counts[1]
        received += min(before_in, self.bytes_in)
        sent += min(before_out, self.bytes_out)
        with self._traffic_lock:
            last_in, last_out = self._reported
            self._reported = result = (max(last_in, received), max(last_out, sent))
        return result

    def count_closed(self, err: Optional[BaseException]) -> None:
        """A connection of this context closed (or was refused) with ``err``."""
        self.open -= 1
        counts = self.counts
        key = close_cause(err)
        counts[key] = counts.get(key, 0) + 1

    def connections(self) -> List[Conn]:
        """This context's connections on its loop (a moment's view; any thread:
        tuple() copies the fd table in one C call, so no loop code runs meanwhile)."""
        return [e for e in tuple(self.loop.entries()) if isinstance(e, Conn) and e._ctx is self]

    def gauges(self) -> tuple[int, int]:
        """``(paused, queued_out)``: this context's connections on its loop that
        are not being read now, and the output bytes they have queued. Safe from
        any thread (a moment's view: the loop may be changing them meanwhile)."""
        paused = queued = 0
        for entry in self.connections():
            if entry._paused:
                paused += 1
            queued += entry._out_bytes
        return paused, queued


class Preamble(Protocol):
    """Work a connection does before its handler meets it (see the module docstring)."""

    def begin(self, conn: Conn, initial: bytes) -> None:
        """Start; ``initial`` holds bytes an earlier preamble read past its own part."""

    def handle_io(self, conn: Conn, events: int) -> None:
        """The fd is ready (``events``, epoll bits) while this preamble runs."""

    def abandon(self, conn: Conn) -> None:
        """The connection closes before the preamble finished: release what it holds."""


class _Extras:
    """Per-connection state that most connections never need, allocated on first use."""

    __slots__ = ("close_err", "linger", "close_timer", "drain_waiters", "preambles",
                 "preamble_wants_write", "proxy", "upgrading", "when_empty", "local_addr", "timeouts")

    def __init__(self) -> None:
        self.close_err: Optional[BaseException] = None
        self.linger = False
        self.close_timer: Optional[TimerHandle] = None
        self.drain_waiters: Optional[List[Callable[[Conn], Any]]] = None
        #: The preamble running now, then those still to run (OPENING only).
        self.preambles: Optional[List[Preamble]] = None
        self.preamble_wants_write = False
        #: (header, peer) once a PROXY protocol preamble read a header.
        self.proxy: Optional[tuple[Any, Any]] = None
        #: A preamble runs on a connection the handler knows already (start_tls).
        self.upgrading = False
        #: Callbacks for when all queued output has gone (start_tls waits for it).
        self.when_empty: Optional[List[Callable[[], Any]]] = None
        self.local_addr: Any = None
        self.timeouts: Optional[_Timeouts] = None


class _Timeouts:
    """A connection's own timeouts (the engine's ``idle_timeout`` needs none of this)."""

    __slots__ = ("idle_ticks", "read_at", "read_seconds", "on_read_timeout")

    def __init__(self) -> None:
        #: Idle timeout in ticks (0: none), or None for the engine's.
        self.idle_ticks: Optional[int] = None
        #: The read deadline, a wheel tick, or None.
        self.read_at: Optional[int] = None
        self.read_seconds = 0.0
        self.on_read_timeout: Optional[Callable[[Conn], Any]] = None


def _owned(data: Buffer) -> Union[bytes, memoryview]:
    """Bytes we may keep after write() returns: immutable data as is, mutable data copied."""
    if type(data) is bytes:
        return data
    if isinstance(data, memoryview):
        if data.readonly and data.c_contiguous:
            return data.cast("B") if data.format != "B" or data.ndim != 1 else data
        return data.tobytes()
    if isinstance(data, (bytes, bytearray)):
        return bytes(data)
    raise TypeError(f"data must be bytes, bytearray or memoryview, not {type(data).__name__}")


class Conn(Inbound):
    """A connection, as handlers see it.

    Reading (loop thread only). Everything returned is ``bytes`` that stays valid
    after the callback returns.

    * :meth:`read` ``(n=-1)`` — up to ``n`` bytes (all when ``n < 0``), consumed.
    * :meth:`peek` ``(n=-1)`` — the same without consuming.
    * :meth:`discard` ``(n=-1)`` — drop up to ``n`` bytes, return how many.
    * :meth:`next` ``(n)`` — exactly ``n`` bytes, consumed; ``None`` and nothing
      consumed when fewer than ``n`` are buffered (wait for the next ``on_traffic``).

    Whatever ``on_traffic`` leaves unconsumed is kept and offered again, with the
    new data appended, on the next ``on_traffic``.

    Writing (loop thread only): :meth:`write`/:meth:`writev` queue data and return
    the byte count accepted (0 if the connection is closed or closing — never an
    exception). Writes made during one callback are sent together, with one
    ``send``/``sendmsg``, when the callback returns; writes made elsewhere on the
    loop thread are sent at the end of the current loop iteration, or at once by
    :meth:`flush`. Order is always preserved.
    """

    __slots__ = (
        "_ctx", "_transport", "fd", "context", "handler_state",
        "_in", "_ipos", "_iend", "_block",
        "_out", "_out_bytes", "_flush_pending", "_events", "_state", "_paused",
        "_writing", "_reading", "_rsize", "_raddr", "_extras", "_seen", "wheel_bucket",
    )

    #: The loop's fd table holds connections (see netreactor.reactor.ConnectionEntry).
    is_connection = True

    def __init__(self, ctx: StreamContext, fd: int, transport: Transport) -> None:
        # The connection owns a bare, non-blocking fd rather than a socket
        # object: an idle connection is the handful of slots below and nothing
        # else (a socket.socket costs another ~110 bytes per connection).
        self._ctx = ctx
        self._transport = transport
        #: The socket's file descriptor (kept after close, for logging).
        self.fd: int = fd
        #: Free slot for the application's per-connection state.
        self.context: Any = None
        #: A second free slot, for handler base classes (FramedHandler keeps its
        #: decoder here) so that ``context`` stays the application's.
        self.handler_state: Any = None
        self._in: Any = _EMPTY
        self._ipos = 0
        self._iend = 0
        self._block: Optional[bytearray] = None
        self._rsize = SMALL_READ  # the next read's size (adaptive; read_buffer_cap >= 512)
        self._out: Optional[List[Any]] = None  # a list only while output is queued
        self._out_bytes = 0
        # True inside a callback (its writes are sent when it returns) and while
        # the connection waits in the loop's flush queue.
        self._flush_pending = False
        self._events = 0
        self._state = OPENING
        self._paused = 0
        # Caches of the two questions the per-message path asks, kept by
        # _settle() whenever _state or _paused changes: a bool costs the
        # interpreter one test, an enum or int comparison several.
        self._writing = False  # _state is OPEN: write() accepts data
        self._reading = False  # _state is OPEN and nothing pauses reading
        self._raddr: Any = None
        self._extras: Optional[_Extras] = None
        # Timeouts (see set_idle_timeout): the wheel tick of the last traffic,
        # and the wheel bucket this connection is filed in.
        self._seen = 0
        self.wheel_bucket: Optional[Bucket] = None

    # ------------------------------------------------------------------ state

    @property
    def closed(self) -> bool:
        """True once the connection is closed or closing (no more writes accepted)."""
        return self._state >= CLOSING

    @property
    def loop(self) -> EventLoop:
        """The event loop that owns this connection."""
        return self._ctx.loop

    @property
    def _loop(self) -> EventLoop:  # type: ignore[override]  # an attribute in Inbound's eyes
        # What the read half (Inbound) and the worker pool reach for; the
        # connection itself goes through _ctx and spends no slot on it.
        return self._ctx.loop

    @property
    def outbound_buffered(self) -> int:
        """Bytes queued and not yet accepted by the kernel."""
        return self._out_bytes

    def _settle(self) -> None:
        """Refresh the hot-path caches after ``_state`` or ``_paused`` changed."""
        self._writing = writing = self._state is OPEN
        self._reading = writing and not self._paused

    def _x(self) -> _Extras:
        extras = self._extras
        if extras is None:
            extras = self._extras = _Extras()
        return extras

    def _wrong_thread(self, what: str) -> RuntimeError:
        return RuntimeError(
            f"Conn.{what}() called from thread {threading.current_thread().name!r}, not the "
            f"connection's loop thread; from other threads use conn.async_write() / "
            f"conn.async_writev() / conn.wake() / conn.close(), which are thread-safe")

    # ------------------------------------------------------------------ writing

    def write(self, data: Buffer) -> int:
        """Queue ``data`` for sending; return the bytes accepted (0 if closed or closing).

        ``bytes`` are queued without copying; a ``bytearray`` or writable
        ``memoryview`` is copied, so the caller may reuse it at once.
        """
        if not self._writing:  # closing, closed (or opening: nobody holds it then)
            return 0
        if data.__class__ is not bytes:
            data = _owned(data)
        if not self._flush_pending:
            # Outside a callback of this connection: the flush goes to the loop's
            # queue, which only its own thread may touch.
            if not self._ctx.loop.on_loop_thread():
                raise self._wrong_thread("write")
            self._flush_pending = True
            self._ctx.loop.schedule_flush(self)
        n = len(data)
        out = self._out
        if out is None:  # then nothing is queued: _out_bytes is 0
            self._out = [data]
            self._out_bytes = n
        else:
            out.append(data)
            self._out_bytes += n
        # The high-water mark and the hard cap are checked where output can
        # pile up: in _sent, when the kernel did not take everything. Every
        # write is followed by a flush attempt in the same loop iteration.
        return n

    def writev(self, buffers: Iterable[Buffer]) -> int:
        """Queue several buffers, in order; they go out with one ``sendmsg``. Returns bytes accepted."""
        total = 0
        for data in buffers:
            n = self.write(data)
            if not n and not self._writing:
                break
            total += n
        return total

    def flush(self) -> None:
        """Send queued data now instead of when the callback returns.

        What the kernel does not take stays queued and is sent when the socket is
        writable. An error closes the connection (and ``on_close`` reports it).
        """
        if not self._out or self._state >= LINGER:
            return
        if not self._ctx.loop.on_loop_thread():
            raise self._wrong_thread("flush")
        self._flush()

    def flush_deferred(self) -> None:
        """The loop's flush queue reached this connection (see EventLoop.schedule_flush)."""
        if self._flush_pending:
            self._flush_pending = False
            if self._out and self._state < LINGER:
                self._flush()

    def _flush(self) -> None:
        out: List[Any] = self._out  # type: ignore[assignment]
        try:
            if len(out) == 1:
                sent = self._transport.write(self.fd, out[0])
            else:
                sent = self._transport.writev(self.fd, out if len(out) <= _IOV_MAX else out[:_IOV_MAX])
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as exc:
            self._close_now(exc)
            return
        else:
            self._seen = self._ctx.wheel.now  # traffic out (handle_io notes what it sends itself)
        self._sent(out, sent)

    def _sent(self, out: List[Any], sent: int) -> None:
        """The kernel took ``sent`` bytes of ``out``: drop them, then settle the
        events, the back-pressure state and the drain waiters."""
        left = self._out_bytes - sent
        self._out_bytes = left
        if not left:
            self._out = None
            # A pause, a pending close or a drain waiter always has WRITABLE
            # registered (each only happens with output queued), so one test covers them.
            if self._events != READABLE:
                self._drained()
            return
        # Drop what went out; the first partly sent buffer becomes a view of its tail.
        i = 0
        while sent:
            size = len(out[i])
            if sent >= size:
                sent -= size
                i += 1
            else:
                out[i] = memoryview(out[i])[sent:]
                sent = 0
        if i:
            del out[:i]
        ctx = self._ctx
        if left > ctx.write_high_water:
            if left > ctx.write_buffer_cap:
                self._close_now(BufferOverflowError(
                    f"outbound buffer of fd {self.fd} passed write_buffer_cap "
                    f"({ctx.write_buffer_cap} bytes): the peer is not reading"))
                return
            if ctx.pause_on_high_water:
                # Stop reading a peer that does not read our replies: what it sends
                # stays in the kernel and its window closes.
                self._paused |= _BACKLOG
                self._reading = False
        elif left <= ctx.write_low_water:
            self._below_low_water()
        self._update_events()

    def _below_low_water(self) -> None:
        self._backlog_done(update_events=False)  # _sent settles the events itself

    def _drained(self) -> None:
        """Everything queued went out: finish a pending close, resume reading, stop watching writability."""
        if self._state is CLOSING:
            self._finish_close()
            return
        extras = self._extras
        if extras is not None and extras.when_empty:
            callbacks, extras.when_empty = extras.when_empty, None
            for callback in callbacks:
                callback()
        self._backlog_done(update_events=True)

    def _backlog_done(self, update_events: bool) -> None:
        """Queued output fell to the low-water mark: reading resumes if back-pressure
        alone held it, and the drain waiters are told."""
        was = self._paused
        self._paused = was & ~_BACKLOG
        self._settle()
        if update_events:
            self._update_events()
        if was & _BACKLOG and not self._paused:
            self._reading_resumed()
        extras = self._extras
        if extras is not None and extras.drain_waiters:
            self._notify_drained()

    # ------------------------------------------------------------------ events

    def _wanted_events(self) -> int:
        state = self._state
        if state is OPEN:
            events = 0 if self._paused else READABLE
        elif state is LINGER:
            events = READABLE
        elif state is OPENING:
            extras = self._extras
            events = READABLE | (WRITABLE if extras is not None and extras.preamble_wants_write else 0)
        else:
            events = 0
        if self._out_bytes:
            events |= WRITABLE
        return events

    def _update_events(self) -> None:
        events = self._wanted_events()
        if events == self._events or self._state is CLOSED:
            return
        if self._events == _MUTED:
            if not events & READABLE:
                return  # the peer hung up: only resumed reading is worth watching for
            self._ctx.loop.unmute(self.fd, events)
        else:
            self._ctx.loop.modify(self.fd, events)
        self._events = events

    def _reading_resumed(self) -> None:
        """Reading is on again (a hook: edge-triggered connections look again at once)."""

    def handle_io(self, ev: int) -> bool:
        """The loop reports ``ev`` (epoll bits): flush if writable, then one read
        and one ``on_traffic``. Returns True when data was read (there may be
        more to read; the caller checks whether the connection still reads).

        This is the hot path: :meth:`_traffic` and :meth:`_flush` are written
        out inline here (``tests/test_conn_paths.py`` runs both ways over the
        same inputs).
        """
        if self._out and ev & _OUT_EV:
            self._flush()
            if ev == WRITABLE:
                return False
        if not self._reading:
            self._io_halted(ev)
            return False
        ctx = self._ctx
        if self._iend:
            if not self._recv_more():
                return False
        else:
            size = self._rsize
            try:
                data = self._transport.read(self.fd, size)
            except (BlockingIOError, InterruptedError):
                return False
            except OSError as exc:
                self._close_now(exc)
                return False
            n = len(data)
            if not n:
                self._on_eof()
                return False
            # Reads start at SMALL_READ; one that fills the buffer makes the next
            # eight times larger, up to read_buffer_cap. They never shrink back:
            # a test for that on every read costs more (bench/instructions.sh,
            # pipelined) than the malloc it would save a connection that once
            # carried a burst.
            if n == size:
                self._grow_reads(size)
            self._in = data
            self._iend = n
        # The timeouts' note of traffic: one store of the wheel's shared tick.
        self._seen = ctx.wheel.now
        self._flush_pending = True
        try:
            action = ctx.handler.on_traffic(self)
        except Exception as exc:
            self._callback_failed("on_traffic", exc)
            return False
        self._flush_pending = False
        # Closing empties both buffers, so neither test needs a closed check.
        if self._iend:
            self._keep_inbound()
        if action is not None:
            self._apply(action)
        out = self._out
        if out:
            if len(out) == 1:  # _flush's common case: one reply, taken whole
                try:
                    sent = self._transport.write(self.fd, out[0])
                except (BlockingIOError, InterruptedError):
                    sent = 0
                except OSError as exc:
                    self._close_now(exc)
                    return False
                if sent == self._out_bytes:
                    self._out = None
                    self._out_bytes = 0
                    if self._events != READABLE:
                        self._drained()
                else:
                    self._sent(out, sent)
            else:
                self._flush()
        return True

    def _grow_reads(self, size: int) -> None:
        cap = self._ctx.read_buffer_cap
        if size < cap:
            self._rsize = min(cap, size << 3)

    def _io_halted(self, ev: int) -> None:
        """An event for a connection that is not reading right now."""
        state = self._state
        if state is LINGER:
            self._linger_read()
        elif state is OPENING:
            extras = self._extras
            if extras is not None and extras.preambles:
                extras.preambles[0].handle_io(self, ev)
        elif ev & _TROUBLE and state < CLOSED:
            err = self._socket_error()
            if err is not None:
                self._close_now(err)
            elif ev & HANGUP and self._events != _MUTED and state is OPEN:
                # A clean hang-up while paused (a Unix peer closed; its last bytes
                # are still readable): epoll would report it on every poll.
                self._ctx.loop.mute(self.fd)
                self._events = _MUTED

    def _socket_error(self) -> Optional[OSError]:
        """The socket's pending error (SO_ERROR), consumed; None if there is none."""
        try:
            with self.borrow_socket() as sock:
                code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        except OSError as exc:
            return exc
        if not code:
            return None
        return OSError(code, os.strerror(code))

    def read_again(self) -> None:
        """Read again after ``EventLoop.schedule_read`` (a transport holds data the fd no longer signals)."""
        if self._reading:
            self.handle_io(READABLE)

    def start(self, preambles: Sequence[Preamble] = ()) -> None:
        """Register with the loop, run the ``preambles`` (if any), then ``on_open``
        (on the loop's thread). Called once by whoever made the connection (the
        engine, the client)."""
        loop = self._ctx.loop
        events = self._events = self._registration()
        loop.add(self.fd, self, events)
        loop.connection_opened()
        self._ctx.open += 1
        if preambles:
            self._x().preambles = list(preambles)
            preambles[0].begin(self, _EMPTY)
        else:
            self._opened()

    # ------------------------------------------------------------------ preambles

    @property
    def transport(self) -> Transport:
        """The transport that owns this connection's syscalls (for preambles)."""
        return self._transport

    def set_transport(self, transport: Transport) -> None:
        """Put ``transport`` under this connection (a TLS preamble, once its
        handshake is done); loop thread."""
        self._transport = transport

    @property
    def counters(self) -> StreamContext:
        """The context whose counters this connection adds to (a transport that
        counts its own bytes adds to its ``bytes_in``/``bytes_out``)."""
        return self._ctx

    def exclude_received(self, n: int) -> None:
        """``n`` bytes received so far are not application bytes (a PROXY
        protocol header, read by a preamble through the connection's
        transport): take them out of ``bytes_in``."""
        self._ctx.bytes_in -= n

    def hand_counting_to_tls(self, held: int) -> None:
        """From now on a TLS handshake, then the TLS transport (which counts
        plaintext), carries this connection's bytes: what the kernel counted
        so far becomes the context's, less what it received that the
        application did not read (``held``: read and handed to the handshake)."""
        ctx = self._ctx
        if self._transport is PLAIN_TCP:
            counts = traffic.tcp_read_so_far(self.fd)
            if counts is not None:
                ctx.bytes_in += counts[0] - held
                ctx.bytes_out += counts[1]
            self._transport = PLAIN_UNCOUNTED
        elif isinstance(self._transport, CountingPlain):  # it counted what it read
            ctx.bytes_in -= held

    def set_addresses(self, remote: Any, local: Any) -> None:
        """What ``remote_addr`` and ``local_addr`` report from now on (a PROXY
        protocol preamble: the original client's, and the address it dialled)."""
        self._raddr = remote
        self._x().local_addr = local

    def set_proxy(self, header: Any, peer: Any) -> None:
        """Record the PROXY protocol ``header`` a preamble read, and ``peer``, the
        address of the proxy that sent it (see :attr:`proxy_header`)."""
        self._x().proxy = (header, peer)

    @property
    def proxy_header(self) -> Any:
        """The :class:`netreactor.protocols.proxy.ProxyHeader` the load balancer
        sent before this connection's data (its v2 TLVs: ``.alpn``,
        ``.authority``, ``.ssl``, ``.unique_id``, ``.tlvs``...); None when the
        listener does not take PROXY headers. Readable until ``on_close`` returns."""
        extras = self._extras
        return extras.proxy[0] if extras is not None and extras.proxy is not None else None

    @property
    def proxy_peer(self) -> Any:
        """The address of the proxy itself (the socket's real peer) when a PROXY
        header was read: ``remote_addr`` is then the original client's. None
        otherwise. Readable until ``on_close`` returns."""
        extras = self._extras
        return extras.proxy[1] if extras is not None and extras.proxy is not None else None

    @property
    def tls(self) -> Any:
        """A :class:`netreactor.tls.TLSInfo` on a TLS connection (version, cipher,
        ALPN protocol, SNI server name, peer certificate); None on a plain one."""
        return self._transport.info

    def start_tls(self, context: Any, *, server_side: bool, server_hostname: Optional[str] = None,
                  callback: Optional[Callback] = None, timeout: Optional[float] = 10.0) -> None:
        """Upgrade this open plain connection to TLS, as STARTTLS protocols (SMTP,
        IMAP, PostgreSQL) do, and as asyncio's ``loop.start_tls`` does (loop thread).

        What is queued is sent first, in plain text; then the handshake runs
        (nothing more is read for the handler, and writes are refused, until it
        ends). Bytes already received and not consumed are the handshake's
        first bytes. ``callback(conn, err)`` runs when it ends: ``err`` None,
        and the connection goes on over TLS (``conn.tls`` tells the details); or
        the error, and the connection is closed (``on_close`` gets it too).
        ``timeout`` bounds the handshake (None: no bound).
        """
        if not self._ctx.loop.on_loop_thread():
            raise self._wrong_thread("start_tls")
        if self._state is not OPEN:
            raise ClosedError("start_tls() on a connection that is not open")
        if self._transport.info is not None:
            raise RuntimeError("start_tls() on a connection that uses TLS already")
        from .tls import TLSHandshake  # TLS costs plain connections nothing, not even an import

        handshake = TLSHandshake(lambda: context, server_side=server_side,
                                 server_hostname=server_hostname, timeout=timeout,
                                 on_outcome=callback, stats=self._ctx)

        def begin() -> None:
            if self._state is not OPEN:
                self._notify(callback, ClosedError("closed before start_tls() could begin"))
                return
            extras = self._x()
            extras.upgrading = True
            extras.preambles = [handshake]
            self._state = OPENING
            self._settle()
            rest = b""
            if self._iend:
                rest = bytes(self._in[self._ipos:self._iend])
                self._consumed_all()
            self._update_events()
            handshake.begin(self, rest)
            if self._state is OPENING:
                self._reading_resumed()

        if self._out:
            self._flush()
        if self._out_bytes:
            extras = self._x()
            if extras.when_empty is None:
                extras.when_empty = []
            extras.when_empty.append(begin)
        else:
            begin()

    def preamble_wants_write(self, wanted: bool) -> None:
        """The running preamble has output the kernel did not take (watch WRITABLE)."""
        extras = self._x()
        if extras.preamble_wants_write != wanted:
            extras.preamble_wants_write = wanted
            self._update_events()

    def preamble_done(self, rest: bytes = _EMPTY) -> None:
        """The running preamble finished; ``rest`` holds bytes it read beyond its
        own part. The next preamble begins with them, or the handler meets the
        connection (``on_open``) and gets them as its first input."""
        extras = self._extras
        if self._state is not OPENING or extras is None or not extras.preambles:
            return
        extras.preambles.pop(0)
        extras.preamble_wants_write = False
        timeouts = extras.timeouts
        if timeouts is not None:  # the finished preamble's timeout, and what its callback holds
            if timeouts.idle_ticks is None:
                extras.timeouts = None
            else:
                timeouts.read_at = timeouts.on_read_timeout = None
        if extras.preambles:
            extras.preambles[0].begin(self, rest)
            if self._state is OPENING:
                self._reading_resumed()  # edge-triggered: the next one looks at what waits
            return
        extras.preambles = None
        self._update_events()
        if rest:
            self._in = rest
            self._iend = len(rest)
        if extras.upgrading:  # start_tls: the handler met it long ago
            extras.upgrading = False
            self._state = OPEN
            self._settle()
            self._arm_idle()  # the wheel let it go while the handshake ran
            self._update_events()
        else:
            self._opened()
        if self._iend and self._reading:
            self._traffic()
        if self._reading:
            self._reading_resumed()  # edge-triggered: look at what waits in the kernel

    def preamble_failed(self, err: Optional[BaseException] = None, consumed: int = 0) -> None:
        """The running preamble failed (a bad header, a failed handshake): close
        the connection; its handler never hears of it. ``consumed``: the bytes
        it read through the connection's transport (none of a connection that
        never opened are application bytes)."""
        if self._state is OPENING:
            if consumed and isinstance(self._transport, CountingPlain):
                self._ctx.bytes_in -= consumed  # the kernel's counts are not taken (_close_now)
            extras = self._extras
            if extras is not None and extras.preambles:
                extras.preambles.pop(0)  # the one failing needs no abandon()
            self._close_now(err)

    def _registration(self) -> int:
        return READABLE

    def _opened(self) -> None:
        """The preamble (if any) is done: the handler meets the connection."""
        self._state = OPEN
        self._settle()
        idle = self._idle_ticks()  # _arm_idle() inlined: once per connection
        if idle:
            wheel = self._ctx.wheel
            self._seen = now = wheel.current()
            wheel.file(self, now + idle)
        self._flush_pending = True
        result = call(self._ctx.logger, self._ctx.handler, "on_open", self,
                      self._ctx.handler.on_open, self)
        if result.__class__ is Failed:
            self._close_now(result.exc)
            return
        self._after_callback(result)

    def _arm_idle(self) -> None:
        """Count the idle timeout (if any) from now: the connection became OPEN."""
        idle = self._idle_ticks()
        if idle:
            wheel = self._ctx.wheel
            self._seen = now = wheel.current()
            wheel.file(self, now + idle)

    def _traffic(self) -> None:
        """Run ``on_traffic`` and what follows it (the slow-path twin of handle_io's)."""
        self._flush_pending = True  # writes inside the callback are flushed by _after_callback
        try:
            action = self._ctx.handler.on_traffic(self)
        except Exception as exc:
            self._callback_failed("on_traffic", exc)
            return
        self._after_callback(action)

    def _after_callback(self, action: Any) -> None:
        """Keep unconsumed input, apply the callback's action, send what it wrote."""
        self._flush_pending = False
        if self._iend:
            self._keep_inbound()
        if action is not None:
            self._apply(action)
        if self._out and self._state < LINGER:
            self._flush()

    def _callback_failed(self, where: str, exc: BaseException) -> None:
        log_failure(self._ctx.logger, self._ctx.handler, where, self, exc)
        self._close_now(exc)

    # ------------------------------------------------------------------ reading

    def _keep_inbound(self) -> None:
        """The handler left data unconsumed: keep only that, as compactly as the size allows."""
        pos, end = self._ipos, self._iend
        if self._block is None:
            if pos:
                self._in = self._in[pos:end]  # exact-size bytes; the rest is freed
                self._ipos, self._iend = 0, end - pos
        elif end - pos < self._ctx.read_buffer_cap:
            # A block that now holds little is returned; the remainder becomes plain bytes.
            self._in = bytes(self._in[pos:end])
            self._ipos, self._iend = 0, end - pos
            self._ctx.loop.pool.put(self._block)
            self._block = None

    def _recv_more(self) -> bool:
        """Read with unconsumed data already held; the new bytes are appended to it."""
        ctx = self._ctx
        held = self._iend - self._ipos
        room = min(ctx.read_buffer_cap, ctx.inbound_buffer_cap - held)
        if room <= 0:
            self._close_now(BufferOverflowError(
                f"inbound buffer of fd {self.fd} passed inbound_buffer_cap "
                f"({ctx.inbound_buffer_cap} bytes): the handler is not consuming"))
            return False
        try:
            if self._block is None and held < ctx.read_buffer_cap:
                data = self._transport.read(self.fd, room)
                if data:
                    self._in = self._in[self._ipos:self._iend] + data
                    self._ipos, self._iend = 0, held + len(data)
                n = len(data)
            else:
                if self._block is None or len(self._block) - self._iend < room:
                    self._move_to_block(held + room)
                n = self._transport.readv(self.fd, [self._in[self._iend:self._iend + room]])
                self._iend += n
        except (BlockingIOError, InterruptedError):
            return False
        except OSError as exc:
            self._close_now(exc)
            return False
        if not n:
            self._on_eof()
            return False
        return True

    def _move_to_block(self, need: int) -> None:
        """Move held data to the front of a pooled block with room for ``need`` bytes."""
        pool = self._ctx.loop.pool
        held = self._iend - self._ipos
        block = pool.get(need)  # power-of-two classes make growth geometric
        view = memoryview(block)
        view[:held] = self._in[self._ipos:self._iend]
        if self._block is not None:
            pool.put(self._block)
        self._block = block
        self._in = view
        self._ipos, self._iend = 0, held

    def _on_eof(self) -> None:
        # Half-close from the peer: what it sent was delivered; what we owe it is
        # flushed before the connection closes. It sends no more: no linger.
        self._begin_close(PeerClosedError(), linger=False)

    def _linger_read(self) -> None:
        """LINGER: drop what the peer still sends, until its EOF."""
        read = self._transport.read
        failed = False
        for _ in range(_LINGER_READS):
            try:
                data = read(self.fd, _LINGER_READ_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                data = _EMPTY
                failed = True
            if not data:
                self._close_now(self._extras.close_err if self._extras is not None else None,
                                eof=not failed)
                return
        self._more_to_linger()

    def _more_to_linger(self) -> None:
        """The peer keeps sending: level-triggered polling reports the rest."""

    # ------------------------------------------------------------------ actions & closing

    def _apply(self, action: Any) -> None:
        # Identity, not equality: a callback that happens to return an int (say,
        # what write() returned) must not close its connection by accident.
        if action is Action.CLOSE:
            self._begin_close(None)
        elif action is Action.SHUTDOWN:
            self._ctx.request_shutdown()

    def _begin_close(self, err: Optional[BaseException], linger: bool = True) -> None:
        """Close after flushing what is queued (bounded by ``close_timeout``)."""
        if self._state >= CLOSING:
            return
        if self._state is OPENING:
            self._close_now(err)
            return
        extras = self._x()
        extras.close_err = err
        extras.linger = linger
        self._state = CLOSING
        self._settle()
        if not self._out_bytes:
            self._finish_close()
            return
        self._update_events()
        extras.close_timer = self._ctx.loop.call_later(self._ctx.close_timeout, self._close_expired)

    def _finish_close(self) -> None:
        """CLOSING with nothing left to send: linger (local TCP close) or close."""
        extras: _Extras = self._extras  # type: ignore[assignment]
        if not (extras.linger and self._transport.linger):
            self._close_now(extras.close_err)
            return
        try:
            self._transport.shutdown_write(self.fd)
        except OSError:  # the peer is gone already
            self._close_now(extras.close_err)
            return
        self._state = LINGER
        self._settle()
        if extras.close_timer is None:
            extras.close_timer = self._ctx.loop.call_later(self._ctx.close_timeout, self._close_expired)
        self._update_events()
        self._drop_buffers()
        self._closed_for_handler(extras.close_err)
        if self._state is LINGER:
            self._linger_read()  # the EOF may be waiting already

    def _close_expired(self) -> None:
        if self._state < CLOSED:
            self._close_now(self._extras.close_err if self._extras is not None else None)

    def abort(self, err: Optional[BaseException] = None) -> None:
        """Close at once (loop thread): queued output is dropped, ``on_close(conn, err)``."""
        self._close_now(err)

    def _close_now(self, err: Optional[BaseException], eof: bool = False) -> None:
        """Close at once: unregister, close the fd, drop buffers, call ``on_close``.
        ``eof``: a read just returned the peer's EOF."""
        state = self._state
        if state is CLOSED:
            return
        self._state = CLOSED
        self._writing = self._reading = False
        ctx = self._ctx
        loop = ctx.loop
        if loop.remove(self.fd):
            loop.connection_closed()
        if self._transport is PLAIN_TCP and state is not OPENING:
            # (A connection whose preamble failed carried no application bytes.)
            # The kernel's counts become the context's, after remove() (see
            # StreamContext.traffic) and before the fd closes.
            extras = self._extras
            counts = traffic.tcp_traffic(self.fd, eof or isinstance(err, PeerClosedError) or (
                extras is not None and isinstance(extras.close_err, PeerClosedError)))
            if counts is not None:
                ctx.bytes_in += counts[0]
                ctx.bytes_out += counts[1]
        self._transport.close(self.fd)
        if ctx.on_closed is not None:
            ctx.on_closed(self)
        if self.wheel_bucket is not None:
            ctx.wheel.unfile(self)
        self._drop_buffers()
        self._ctx.count_closed(err)
        extras = self._extras
        if extras is not None and extras.close_timer is not None:
            extras.close_timer.cancel()
        if state is OPENING:
            if extras is not None and extras.preambles:
                for preamble in extras.preambles:
                    preamble.abandon(self)
            if extras is not None and extras.upgrading:
                self._closed_for_handler(err)  # start_tls failed: the handler knows this one
        elif state is not LINGER:
            self._closed_for_handler(err)  # extras kept for it: proxy_header stays readable
        self._extras = None
        if extras is not None and extras.local_addr is not None:  # still reported once closed, as remote_addr is
            self._x().local_addr = extras.local_addr

    def _drop_buffers(self) -> None:
        self._out = None
        self._out_bytes = 0
        self._ipos = self._iend = 0
        self._in = _EMPTY
        self.handler_state = None
        if self._block is not None:
            self._ctx.loop.pool.put(self._block)
            self._block = None

    def _closed_for_handler(self, err: Optional[BaseException]) -> None:
        ctx = self._ctx
        if ctx.spawner is not None:
            ctx.spawner.connection_closed(self)  # cancel what it spawned
        action = call(ctx.logger, ctx.handler, "on_close", self, ctx.handler.on_close, self, err,
                      closing=False)
        if action is Action.SHUTDOWN:
            ctx.request_shutdown()

    # ------------------------------------------------------------------ timers

    def call_later(self, delay: float, callback: Callable[..., Any], *args: Any) -> Any:
        """Run ``callback(*args)`` on this connection's loop after ``delay`` seconds
        (loop thread); returns a handle whose ``cancel()`` drops it. For idle and
        read timeouts: check ``conn.closed`` in the callback."""
        return self._ctx.loop.call_later(delay, callback, *args)

    # ------------------------------------------------------------------ timeouts

    @property
    def idle_timeout(self) -> Optional[float]:
        """Seconds without traffic after which this connection is closed (the
        engine's ``idle_timeout`` or :meth:`set_idle_timeout`'s), or None."""
        ticks = self._idle_ticks()
        return (ticks - 1) * self._ctx.wheel.tick if ticks else None

    def set_idle_timeout(self, seconds: Optional[float]) -> None:
        """Close this connection after ``seconds`` with no traffic in either
        direction, counted from now: ``on_close`` gets an
        :class:`~netreactor.IdleTimeoutError`. ``None`` or 0: no idle timeout
        for this connection. Overrides the engine's ``idle_timeout`` (loop
        thread). Timeouts are coarse: the connection is closed at most two
        ticks of the loop's timing wheel (0.1 s each) after the deadline.
        """
        ticks = self._timeout_ticks("set_idle_timeout", seconds)
        self._own_timeouts().idle_ticks = ticks
        if ticks and self._state is OPEN:
            wheel = self._ctx.wheel
            self._seen = now = wheel.current()
            wheel.file(self, now + ticks)

    def set_read_timeout(self, seconds: Optional[float],
                         on_timeout: Optional[Callable[[Conn], Any]] = None) -> None:
        """Close this connection unless this is cleared (``set_read_timeout(None)``)
        within ``seconds`` from now, whatever arrives meanwhile: for a protocol
        waiting for the rest of a frame, or a header (a peer that trickles a
        byte at a time does not extend it). ``on_close`` gets a
        :class:`~netreactor.ReadTimeoutError`. ``on_timeout(conn)``, if given,
        runs first and may write a last reply (an HTTP 408), which is flushed
        before the close. Calling it again re-arms it from now. Loop thread.

        Preambles arm their own timeout with it (a PROXY header, a TLS
        handshake): :meth:`preamble_done` and :meth:`preamble_failed` clear it,
        and when it passes the connection is closed and every preamble's
        ``abandon()`` runs (``on_timeout`` too, if given; the handler never
        hears of the connection).
        """
        if seconds is None:
            timeouts = self._extras.timeouts if self._extras is not None else None
            if timeouts is not None:
                timeouts.read_at = None
                timeouts.on_read_timeout = None
            return
        ticks = self._timeout_ticks("set_read_timeout", seconds)
        if not ticks:
            raise ValueError(f"set_read_timeout: seconds must be > 0 (None clears it), got {seconds!r}")
        if self._state is not OPEN and self._state is not OPENING:
            return
        timeouts = self._own_timeouts()
        wheel = self._ctx.wheel
        timeouts.read_at = due = wheel.current() + ticks
        timeouts.read_seconds = float(seconds)
        timeouts.on_read_timeout = on_timeout
        wheel.file(self, due)

    def _timeout_ticks(self, what: str, seconds: Optional[float]) -> int:
        if seconds is None:
            return 0
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or \
                not 0 <= seconds < float("inf"):
            raise ValueError(f"{what}: seconds must be a number >= 0 or None, got {seconds!r}")
        return self._ctx.wheel.ticks(seconds) if seconds else 0

    def _own_timeouts(self) -> _Timeouts:
        extras = self._x()
        if extras.timeouts is None:
            extras.timeouts = _Timeouts()
        return extras.timeouts

    def _idle_ticks(self) -> int:
        extras = self._extras
        if extras is not None and extras.timeouts is not None and extras.timeouts.idle_ticks is not None:
            return extras.timeouts.idle_ticks
        return self._ctx.idle_ticks

    def wheel_due(self, now: int) -> Optional[int]:
        """The timing wheel looks at this connection at tick ``now``: close it
        if a timeout passed, else return the tick to look again (None: it has
        no timeout left)."""
        state = self._state
        if state is not OPEN and state is not OPENING:
            return None  # closing: close_timeout bounds what is left
        extras = self._extras
        timeouts = extras.timeouts if extras is not None else None
        due = None
        if state is OPEN:
            idle = self._ctx.idle_ticks if timeouts is None or timeouts.idle_ticks is None \
                else timeouts.idle_ticks
            if idle:
                due = self._seen + idle
                if due <= now:
                    self._idle_expired(idle)
                    return None
        if timeouts is not None and timeouts.read_at is not None:
            if timeouts.read_at <= now:
                self._read_expired(timeouts)
                return None
            if due is None or timeouts.read_at < due:
                due = timeouts.read_at
        return due

    def _idle_expired(self, ticks: int) -> None:
        err = IdleTimeoutError(
            f"no traffic for {(ticks - 1) * self._ctx.wheel.tick:.1f} s (idle timeout)")
        if self._out_bytes:
            self._close_now(err)  # the peer does not even read what we owe it
        else:
            self._begin_close(err, linger=False)

    def _read_expired(self, timeouts: _Timeouts) -> None:
        err = ReadTimeoutError(f"read timeout: {timeouts.read_seconds:g} s passed")
        callback = timeouts.on_read_timeout
        timeouts.read_at = None
        timeouts.on_read_timeout = None
        opening = self._state is OPENING
        if callback is not None:
            self._flush_pending = True  # as in a callback: what it writes goes out after it
            result = call(self._ctx.logger, None, "read timeout callback", self, callback, self)
            self._flush_pending = False
            if result.__class__ is Failed:
                self._close_now(result.exc)
                return
        if opening:
            self._close_now(err)  # a preamble's: the handler never met the connection
            return
        self._begin_close(err, linger=False)
        if self._out and self._state < LINGER:
            self._flush()

    # ------------------------------------------------------------------ coroutines

    def spawn(self, coro: Any, on_result: Optional[Callable[[Conn, Any, Optional[BaseException]], Any]] = None,
              *, cancel_on_close: bool = True) -> Any:
        """Run the coroutine ``coro`` on this connection's loop thread (loop thread;
        the engine needs ``asyncio=True``, or ``netreactor.serve()``). Returns its
        ``asyncio.Task``.

        A bytes-like result is written to the connection, in the order the
        coroutines were spawned for it; ``on_result(conn, result, exc)`` runs
        instead when given. A coroutine that raises is logged and its
        connection closed, unless ``on_result`` takes the exception. Closing the
        connection cancels it, unless ``cancel_on_close=False``. Too many in
        flight per engine pause this connection's reading until there is room.
        See :mod:`netreactor.spawner`.
        """
        spawner = self._ctx.spawner
        if spawner is None:
            if hasattr(coro, "close"):
                coro.close()  # never awaited: no "coroutine was never awaited" warning on top
            raise RuntimeError("conn.spawn() needs asyncio: start the engine with asyncio=True "
                               "(CLI --asyncio), or serve it with netreactor.serve() inside an "
                               "asyncio program")
        return spawner.spawn_for(self, self._loop, not self._writing, coro, on_result, cancel_on_close)

    def write_now(self, data: Buffer) -> int:
        """:meth:`write`, then send at once what is queued (loop thread): for writes
        made outside any callback (a coroutine's result) that should not wait for
        the end of the loop iteration. Returns the bytes accepted."""
        if not self._writing:
            return 0
        if not self._loop.on_loop_thread():
            raise self._wrong_thread("write_now")
        if data.__class__ is not bytes:
            data = _owned(data)
        out = self._out
        if out is None:
            self._out = [data]
        else:
            out.append(data)
        n = len(data)
        self._out_bytes += n
        if not self._flush_pending:  # else: inside a callback, or a flush is queued anyway
            self._flush()
        return n

    # ------------------------------------------------------------------ flow control

    def pause_reading(self, by: Pause = Pause.HANDLER) -> None:
        """Stop reading from the peer until :meth:`resume_reading` (loop thread).

        What the peer sends waits in the kernel, and TCP flow control slows the
        peer down: a proxy pauses its source while the destination is slow.
        ``by`` names who pauses (the handler by default); each pauser resumes
        only its own pause.
        """
        if self._state is CLOSED:
            return
        if not self._ctx.loop.on_loop_thread():
            raise self._wrong_thread("pause_reading")
        bit = int(by)
        if not self._paused & bit:
            self._paused |= bit
            self._reading = False
            self._update_events()

    def resume_reading(self, by: Pause = Pause.HANDLER) -> None:
        """Undo :meth:`pause_reading` (of the same ``by``)."""
        if self._state is CLOSED:
            return
        if not self._ctx.loop.on_loop_thread():
            raise self._wrong_thread("resume_reading")
        bit = int(by)
        if self._paused & bit:
            self._paused &= ~bit
            self._settle()
            self._update_events()
            if not self._paused and self._state is OPEN:
                self._reading_resumed()

    def paused_by(self, by: Pause) -> bool:
        """Whether ``by`` holds reading paused."""
        return bool(self._paused & int(by))

    @property
    def paused(self) -> bool:
        """Whether any pause reason holds reading off (back-pressure, the handler, a pool)."""
        return bool(self._paused)

    def count_frames(self, received: int = 0, sent: int = 0) -> None:
        """Add to the engine's ``frames_in``/``frames_out`` counters (loop thread):
        for codecs and protocols that know their messages (``FramedHandler`` does)."""
        ctx = self._ctx
        ctx.frames_in += received
        ctx.frames_out += sent

    def when_drained(self, callback: Callable[[Conn], Any]) -> None:
        """Run ``callback(conn)`` on the loop once queued output falls to the
        low-water mark (at once, on the next loop iteration, if it already is).

        Not called if the connection closes first.
        """
        if self._out_bytes <= self._ctx.write_low_water:
            self._ctx.loop.call_soon(callback, self)
            return
        extras = self._x()
        if extras.drain_waiters is None:
            extras.drain_waiters = []
        extras.drain_waiters.append(callback)

    def _notify_drained(self) -> None:
        extras: _Extras = self._extras  # type: ignore[assignment]
        waiters, extras.drain_waiters = extras.drain_waiters, None
        for callback in waiters or ():
            self._ctx.loop.call_soon(callback, self)

    # ------------------------------------------------------------------ any-thread API

    def close(self, callback: Optional[Callback] = None, *,
              error: Optional[BaseException] = None) -> None:
        """Close gracefully: stop reading, flush what is queued, then close.

        Safe from any thread. ``on_close`` receives ``error`` (None by default:
        a local close). ``callback(conn, err)`` runs on the loop afterwards;
        ``err`` is :class:`ClosedError` if the connection was already closed.
        """
        if callback is None and self._ctx.loop.on_loop_thread():
            self._begin_close(error)
        else:
            self._ctx.loop.post(self._close_task, callback, error)

    def _close_task(self, callback: Optional[Callback], error: Optional[BaseException]) -> None:
        err = ClosedError() if self._state >= CLOSING else None
        self._begin_close(error)
        self._notify(callback, err)

    def async_write(self, data: Buffer, callback: Optional[Callback] = None) -> None:
        """Write from any thread. ``callback(conn, err)`` runs on the loop once the data is
        sent or queued (``err`` None), or with the error (:class:`ClosedError` if closed)."""
        self._ctx.loop.post(self._async_write_task, (_owned(data),), callback)

    def async_writev(self, buffers: Iterable[Buffer], callback: Optional[Callback] = None) -> None:
        """:meth:`writev` from any thread; see :meth:`async_write`."""
        self._ctx.loop.post(self._async_write_task, tuple(_owned(b) for b in buffers), callback)

    def _async_write_task(self, buffers: tuple[Any, ...], callback: Optional[Callback]) -> None:
        if not self._writing:
            self._notify(callback, ClosedError())
            return
        self._flush_pending = True  # as inside a callback: one flush for the lot
        for data in buffers:
            self.write(data)
        self._flush_pending = False
        if self._out and self._state < LINGER:
            self._flush()
        self._notify(callback, None if self._writing else ClosedError("connection closed while writing"))

    def wake(self, callback: Optional[Callback] = None) -> None:
        """From any thread: run ``on_traffic`` for this connection on its loop, even with
        nothing new buffered; then ``callback(conn, err)`` (``ClosedError`` if closed)."""
        self._ctx.loop.post(self._wake_task, callback)

    def _wake_task(self, callback: Optional[Callback]) -> None:
        if not self._writing:
            self._notify(callback, ClosedError())
            return
        self._traffic()
        self._notify(callback, None)

    def _notify(self, callback: Optional[Callback], err: Optional[BaseException]) -> None:
        report(self._ctx.logger, callback, self, err)

    # ------------------------------------------------------------------ addresses & options

    @contextlib.contextmanager
    def borrow_socket(self) -> Iterator[socket.socket]:
        """A ``socket.socket`` over this connection's fd, for the calls netreactor
        does not wrap (``getsockopt``...); detached, not closed, after the block."""
        if self._state is CLOSED:
            raise ClosedError()
        sock = socket.socket(fileno=self.fd)
        try:
            yield sock
        finally:
            sock.detach()

    @property
    def local_addr(self) -> Any:
        """Local address: ``(host, port)`` for TCP, the path for Unix; None if unknown.

        Read from the kernel on first use and cached.
        """
        # Kept with the rarely used state: few handlers ask, and a slot costs
        # every connection 8 bytes.
        extras = self._extras
        if (extras is None or extras.local_addr is None) and self._state is not CLOSED:
            with self.borrow_socket() as sock:
                try:
                    self._x().local_addr = sock.getsockname()
                except OSError:
                    pass
            extras = self._extras
        return extras.local_addr if extras is not None else None

    @property
    def remote_addr(self) -> Any:
        """Peer address: ``(host, port)`` for TCP, the peer's path (often ``''``) for Unix.

        Read from the kernel on first use and cached (connections do not store it
        up front, to stay small). Once the connection is closed an address never
        read is ``None``: read it in ``on_open`` if ``on_close`` needs it.
        """
        if self._raddr is None and self._state is not CLOSED:
            with self.borrow_socket() as sock:
                try:
                    self._raddr = sock.getpeername()
                except OSError:
                    pass
        return self._raddr

    def set_no_delay(self, enabled: bool = True) -> None:
        """TCP_NODELAY on or off (TCP only; ignored on Unix sockets)."""
        with self.borrow_socket() as sock:
            sockopts.set_no_delay(sock, enabled)

    def set_keep_alive(self, enabled: bool = True, idle: Optional[float] = None,
                       interval: Optional[float] = None, count: Optional[int] = None) -> None:
        """SO_KEEPALIVE, with the idle time, probe interval (seconds) and probe count where the OS has them."""
        with self.borrow_socket() as sock:
            sockopts.set_keep_alive(sock, enabled, idle, interval, count)

    def set_linger(self, seconds: Optional[int]) -> None:
        """SO_LINGER: None restores the default; 0 makes close() send a reset."""
        with self.borrow_socket() as sock:
            sockopts.set_linger(sock, seconds)

    def set_read_buffer(self, size: int) -> None:
        """SO_RCVBUF in bytes."""
        with self.borrow_socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, int(size))

    def set_write_buffer(self, size: int) -> None:
        """SO_SNDBUF in bytes."""
        with self.borrow_socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, int(size))

    def __repr__(self) -> str:
        state = self._state.name.lower()
        return f"<Conn fd={self.fd} {state} in={self.inbound_buffered} out={self._out_bytes}>"


class EdgeConn(Conn):
    """A connection registered edge-triggered: each wake drains reads until ``EAGAIN``,
    at most ``read_budget`` reads; a connection with more to read is revisited
    on the next iteration, so one busy peer cannot starve the others."""

    __slots__ = ()

    def _registration(self) -> int:
        # Registered once for both directions: edges cost nothing while nothing changes.
        return READABLE | WRITABLE | EDGE

    def _update_events(self) -> None:
        pass

    def handle_io(self, ev: int) -> None:  # type: ignore[override]
        if ev & _OUT_EV and self._out:
            self._flush()
        if self._state is OPENING:
            self._io_halted(ev)  # the preamble, also on a WRITABLE-only edge
        elif ev & _IN_EV:
            self._drain(ev)

    def read_again(self) -> None:
        if self._state is OPENING:
            self._io_halted(READABLE)
        else:
            self._drain(READABLE)

    def _drain(self, ev: int) -> None:
        if not self._reading:
            # Not reading: an edge will not come again for what waits, so act now.
            if self._state is LINGER or self._state is OPENING or ev & _TROUBLE:
                self._io_halted(ev & ~HANGUP if self._state is OPEN else ev)
            return  # resuming schedules a read (_reading_resumed)
        read_once = Conn.handle_io  # the level-triggered path, one read per call
        for _ in range(self._ctx.read_budget):
            if not read_once(self, READABLE) or not self._reading:
                return
        self._ctx.loop.schedule_read(self)

    def _reading_resumed(self) -> None:
        # No new edge will come for data already waiting in the kernel.
        self._ctx.loop.schedule_read(self)

    def _more_to_linger(self) -> None:
        self._ctx.loop.schedule_read(self)
