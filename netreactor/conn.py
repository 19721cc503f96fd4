"""One stream connection (TCP or Unix): inbound and outbound buffers, the
read/write API handed to handlers, and the per-connection half of the I/O path.

Threading: every method belongs to the loop that owns the connection, except
:meth:`Conn.async_write`, :meth:`Conn.async_writev`, :meth:`Conn.wake` and
:meth:`Conn.close`, which may be called from any thread and run on that loop.

The layer between the socket and the buffers is small on purpose: the reads in
:meth:`Conn._io` / :meth:`Conn._recv_more`, the
writes in :meth:`Conn._flush`, and :meth:`Conn._close_now`. A TLS connection
subclasses :class:`Conn` and puts an ``ssl.SSLObject`` with memory BIOs there,
leaving the handler API untouched.
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import threading
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, List, Optional, Union

from .errors import BufferOverflowError, ClosedError, PeerClosedError
from .handler import Action, report
from .inbound import Inbound
from .pollers import EDGE, ERROR, HANGUP, READABLE, WRITABLE

if TYPE_CHECKING:  # pragma: no cover
    from .eventloop import EventLoop

__all__ = ["Conn"]

Buffer = Union[bytes, bytearray, memoryview]
Callback = Callable[["Conn", Optional[BaseException]], Any]

_IN_EV = READABLE | ERROR | HANGUP
_OUT_EV = WRITABLE | ERROR | HANGUP
# sendmsg() takes at most IOV_MAX buffers per call.
_IOV_MAX = 1024
_EMPTY = b""
_get_ident = threading.get_ident
# os.read/os.write on the fd rather than socket.recv/send: same syscalls, but
# Argument Clinic parsing instead of PyArg_ParseTuple — measurably fewer
# instructions per message under callgrind.
_read = os.read
_write = os.write
_writev = os.writev
_readv = os.readv


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
        "_loop", "_alive", "fd", "_handler", "context",
        "_in", "_ipos", "_iend", "_block",
        "_out", "_out_bytes", "_flush_pending", "_events", "_reading", "_paused", "_closing",
        "_close_err", "_raddr", "_laddr", "_framing", "_held", "_autopause",
    )

    def __init__(self, loop: "EventLoop", fd: int, handler: Any = None,
                 pause_on_high_water: bool = True) -> None:
        # The connection owns a bare, non-blocking fd rather than a socket
        # object: an idle connection is the handful of slots below and nothing
        # else (a socket.socket costs another ~110 bytes per connection).
        self._loop = loop
        self._alive = True
        #: The socket's file descriptor (kept after close, for logging).
        self.fd: int = fd
        self._handler = loop.handler if handler is None else handler
        #: Free slot for the handler's per-connection state.
        self.context: Any = None
        self._in: Any = _EMPTY
        self._ipos = 0
        self._iend = 0
        self._block: Optional[bytearray] = None
        self._out: Optional[List[Any]] = None  # a list only while output is queued
        self._out_bytes = 0
        self._flush_pending = False
        self._events = 0
        self._reading = False  # READABLE is registered (a bool: cheaper to test than a bit)
        self._paused = False
        self._closing = False
        self._close_err: Optional[BaseException] = None
        self._raddr: Any = None
        self._laddr: Any = None
        #: Per-connection decoder of a FramedHandler (None until its first read).
        self._framing: Any = None
        self._held = False  # reading paused by the handler (pause_reading)
        # Stop reading at write_high_water. Accepted connections do: their output
        # answers the peer's input, so a peer that does not read cannot make us
        # buffer. Dialed ones do not: their output is the application's own, and
        # two netreactor peers pausing each other would both wait forever.
        self._autopause = pause_on_high_water

    # ------------------------------------------------------------------ writing

    @property
    def outbound_buffered(self) -> int:
        """Bytes queued and not yet accepted by the kernel."""
        return self._out_bytes

    @property
    def closed(self) -> bool:
        """True once the connection is closed or closing (no more writes accepted)."""
        return not self._alive or self._closing

    def write(self, data: Buffer) -> int:
        """Queue ``data`` for sending; return the bytes accepted (0 if closed or closing).

        ``bytes`` are queued without copying; a ``bytearray`` or writable
        ``memoryview`` is copied, so the caller may reuse it at once.
        """
        if self._closing:  # also set once closed
            return 0
        if data.__class__ is not bytes:
            data = _owned(data)
        out = self._out
        if out is None:
            self._out = [data]
        else:
            out.append(data)
        n = len(data)
        self._out_bytes += n
        if not self._flush_pending:
            self._flush_pending = True
            self._loop._dirty.append(self)
        # The high-water mark and the hard cap are checked where output can
        # pile up: in _flush, when the kernel did not take everything. Every
        # write is followed by a flush attempt in the same loop iteration.
        return n

    def writev(self, buffers: Iterable[Buffer]) -> int:
        """Queue several buffers, in order; they go out with one ``sendmsg``. Returns bytes accepted."""
        total = 0
        for data in buffers:
            n = self.write(data)
            if not n and not self._alive:
                break
            total += n
        return total

    def flush(self) -> None:
        """Send queued data now instead of when the callback returns.

        What the kernel does not take stays queued and is sent when the socket is
        writable. An error closes the connection (and ``on_close`` reports it).
        """
        if self._out and self._alive:
            self._flush()

    def _over_high_water(self) -> None:
        loop = self._loop
        if self._out_bytes > loop.write_buffer_cap:
            self._close_now(BufferOverflowError(
                f"outbound buffer of fd {self.fd} passed write_buffer_cap "
                f"({loop.write_buffer_cap} bytes): the peer is not reading"))
        elif self._autopause:
            # Stop reading a peer that does not read our replies: what it sends
            # stays in the kernel and its window closes.
            self._paused = True

    def _flush(self) -> None:
        out = self._out
        try:
            if len(out) == 1:
                sent = _write(self.fd, out[0])
            else:
                sent = _writev(self.fd, out if len(out) <= _IOV_MAX else out[:_IOV_MAX])
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as exc:
            self._close_now(exc)
            return
        self._sent(out, sent)

    def _sent(self, out: List[Any], sent: int) -> None:
        """The kernel took ``sent`` bytes of ``out``: drop them, then settle the
        events, the high-water state and the drain waiters."""
        left = self._out_bytes - sent
        self._out_bytes = left
        if not left:
            self._out = None
            # Paused reading and pending closes always have WRITABLE registered
            # (they only happen with output queued), so one test covers all three.
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
        if left > self._loop.write_high_water:
            self._over_high_water()
            if not self._alive:
                return
        elif left <= self._loop.write_low_water:
            self._paused = False
            if self._loop._drain_waiters:
                self._notify_drained()
        self._update_events()

    def _drained(self) -> None:
        """Everything queued went out: finish a pending close, resume reading, stop watching writability."""
        if self._closing:
            self._close_now(self._close_err)
            return
        self._paused = False
        self._update_events()
        if self._loop._drain_waiters:
            self._notify_drained()

    # ------------------------------------------------------------------ events

    def _wanted_events(self) -> int:
        events = 0
        if not (self._paused or self._closing or self._held):
            events = READABLE
        if self._out_bytes:
            events |= WRITABLE
        return events

    def _update_events(self) -> None:
        events = self._wanted_events()
        if events != self._events and self._alive:
            self._events = events
            self._reading = bool(events & READABLE)
            self._loop.poller.modify(self.fd, events)

    def _io(self, ev: int) -> bool:
        """The loop reports ``ev`` (epoll bits) for this connection: flush if
        writable, then one read and one ``on_traffic``. Returns True when data
        was read and the connection is still open (it may have more to read).

        This is the hot path, so :meth:`_traffic` is written out inline at its
        end; a change to one belongs in the other too.
        """
        if self._out and ev & _OUT_EV:
            self._flush()
            if ev == WRITABLE:
                return False
        if not self._reading:
            return False
        if self._iend:
            if not self._recv_more():
                return False
        else:
            try:
                data = _read(self.fd, self._loop.read_buffer_cap)
            except (BlockingIOError, InterruptedError):
                return False
            except OSError as exc:
                self._close_now(exc)
                return False
            if not data:
                self._on_eof()
                return False
            self._in = data
            self._iend = len(data)
        self._flush_pending = True
        try:
            action = self._handler.on_traffic(self)
        except Exception as exc:
            self._handler_failed(exc, "on_traffic")
            return False
        self._flush_pending = False
        # Closing empties both buffers, so neither test needs a closed check.
        if self._iend:
            self._keep_inbound()
        if action is not None:
            self._apply(action)
        out = self._out
        if out:
            # _flush's common case written out: one reply, taken whole.
            if len(out) == 1:
                try:
                    sent = _write(self.fd, out[0])
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
        return self._alive

    def _open(self) -> None:
        """Register with the loop and run ``on_open`` (on the loop's thread)."""
        loop = self._loop
        self._events = self._wanted_events()
        self._reading = True
        loop._table[self.fd] = self
        loop.poller.register(self.fd, self._events)
        loop.conn_count += 1
        self._flush_pending = True
        try:
            action = self._handler.on_open(self)
        except Exception as exc:
            self._handler_failed(exc, "on_open")
            return
        self._after_callback(action)

    def _traffic(self) -> None:
        """Run ``on_traffic`` and what follows it."""
        self._flush_pending = True  # writes inside the callback are flushed by _after_callback
        try:
            action = self._handler.on_traffic(self)
        except Exception as exc:
            self._handler_failed(exc, "on_traffic")
            return
        self._after_callback(action)

    def _after_callback(self, action: Any) -> None:
        """Keep unconsumed input, apply the callback's action, send what it wrote."""
        self._flush_pending = False
        if self._iend:
            self._keep_inbound()
        if action is not None:
            self._apply(action)
        if self._out:
            self._flush()

    def _keep_inbound(self) -> None:
        """The handler left data unconsumed: keep only that, as compactly as the size allows."""
        pos, end = self._ipos, self._iend
        if self._block is None:
            if pos:
                self._in = self._in[pos:end]  # exact-size bytes; the rest is freed
                self._ipos, self._iend = 0, end - pos
        elif end - pos < self._loop.read_buffer_cap:
            # A block that now holds little is returned; the remainder becomes plain bytes.
            self._in = bytes(self._in[pos:end])
            self._ipos, self._iend = 0, end - pos
            self._loop.pool.put(self._block)
            self._block = None

    def _recv_more(self) -> bool:
        """Read with unconsumed data already held; the new bytes are appended to it."""
        loop = self._loop
        held = self._iend - self._ipos
        room = min(loop.read_buffer_cap, loop.inbound_buffer_cap - held)
        if room <= 0:
            self._close_now(BufferOverflowError(
                f"inbound buffer of fd {self.fd} passed inbound_buffer_cap "
                f"({loop.inbound_buffer_cap} bytes): the handler is not consuming"))
            return False
        try:
            if self._block is None and held < loop.read_buffer_cap:
                data = _read(self.fd, room)
                if data:
                    self._in = self._in[self._ipos:self._iend] + data
                    self._ipos, self._iend = 0, held + len(data)
                n = len(data)
            else:
                if self._block is None or len(self._block) - self._iend < room:
                    self._move_to_block(held + room)
                n = _readv(self.fd, [self._in[self._iend:self._iend + room]])
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
        pool = self._loop.pool
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
        # flushed before the connection closes.
        self._begin_close(PeerClosedError())

    # ------------------------------------------------------------------ actions & closing

    def _apply(self, action: Any) -> None:
        # Identity, not equality: a callback that happens to return an int (say,
        # what write() returned) must not close its connection by accident.
        if action is Action.CLOSE:
            self._begin_close(None)
        elif action is Action.SHUTDOWN:
            self._loop.request_shutdown()

    def _handler_failed(self, exc: BaseException, where: str) -> None:
        self._loop.logger.error(
            "handler %s.%s raised; closing connection fd=%d",
            type(self._handler).__name__, where, self.fd, exc_info=exc,
        )
        self._close_now(exc)

    def _begin_close(self, err: Optional[BaseException]) -> None:
        """Close after flushing what is queued (bounded by ``shutdown_timeout``)."""
        if not self._alive or self._closing:
            return
        if not self._out_bytes:
            self._close_now(err)
            return
        self._closing = True
        self._close_err = err
        self._update_events()
        self._loop.call_later(self._loop.linger_timeout, self._linger_expired)

    def _linger_expired(self) -> None:
        if self._alive:
            self._close_now(self._close_err)

    def _close_now(self, err: Optional[BaseException]) -> None:
        """Close at once: unregister, close the socket, drop buffers, call ``on_close``."""
        if not self._alive:
            return
        self._alive = False
        self._closing = True
        loop = self._loop
        loop._forget(self)
        try:
            os.close(self.fd)
        except OSError:
            pass
        self._out = None
        self._out_bytes = 0
        self._ipos = self._iend = 0
        self._in = _EMPTY
        self._framing = None
        if self._block is not None:
            loop.pool.put(self._block)
            self._block = None
        if loop._drain_waiters:
            loop._drain_waiters.pop(self, None)
        try:
            action = self._handler.on_close(self, err)
        except Exception as exc:
            loop.logger.error("handler %s.on_close raised", type(self._handler).__name__, exc_info=exc)
            return
        if action is Action.SHUTDOWN:
            loop.request_shutdown()

    # ------------------------------------------------------------------ timers

    def call_later(self, delay: float, callback: Callable[..., Any], *args: Any) -> Any:
        """Run ``callback(*args)`` on this connection's loop after ``delay`` seconds
        (loop thread); returns a handle whose ``cancel()`` drops it. For idle and
        read timeouts: check ``conn.closed`` in the callback."""
        return self._loop.call_later(delay, callback, *args)

    # ------------------------------------------------------------------ flow control

    def pause_reading(self) -> None:
        """Stop reading from the peer until :meth:`resume_reading` (loop thread).

        What the peer sends waits in the kernel, and TCP flow control slows the
        peer down: a proxy pauses its source while the destination is slow.
        """
        if not self._held:
            self._held = True
            self._update_events()

    def resume_reading(self) -> None:
        """Undo :meth:`pause_reading`."""
        if self._held:
            self._held = False
            self._update_events()
            self._loop._resumed(self)

    def when_drained(self, callback: Callable[["Conn"], Any]) -> None:
        """Run ``callback(conn)`` on the loop once queued output falls to the
        low-water mark (at once, on the next loop iteration, if it already is).

        Not called if the connection closes first.
        """
        if self._out_bytes <= self._loop.write_low_water:
            self._loop.call_soon(callback, self)
        else:
            self._loop._drain_waiters.setdefault(self, []).append(callback)

    def _notify_drained(self) -> None:
        waiters = self._loop._drain_waiters.pop(self, None)
        if waiters:
            for callback in waiters:
                self._loop.call_soon(callback, self)

    # ------------------------------------------------------------------ any-thread API

    def _on_loop_thread(self) -> bool:
        return self._loop._thread_id == _get_ident()

    def _loop_gone(self, callback: Optional[Callback]) -> bool:
        """The owning loop has finished: nothing will run there any more."""
        if not self._loop.finished:
            return False
        self._notify(callback, ClosedError())
        return True

    def close(self, callback: Optional[Callback] = None) -> None:
        """Close gracefully: stop reading, flush what is queued, then close.

        Safe from any thread. ``on_close`` receives ``None``. ``callback(conn, err)``
        runs on the loop afterwards; ``err`` is :class:`ClosedError` if the
        connection was already closed.
        """
        if callback is None and self._on_loop_thread():
            self._begin_close(None)
        elif not self._loop_gone(callback):
            self._loop.call_soon_threadsafe(self._close_task, callback)

    def _close_task(self, callback: Optional[Callback]) -> None:
        err = ClosedError() if not self._alive or self._closing else None
        self._begin_close(None)
        self._notify(callback, err)

    def async_write(self, data: Buffer, callback: Optional[Callback] = None) -> None:
        """Write from any thread. ``callback(conn, err)`` runs on the loop once the data is
        sent or queued (``err`` None), or with the error (:class:`ClosedError` if closed)."""
        if not self._loop_gone(callback):
            self._loop.call_soon_threadsafe(self._async_write_task, (_owned(data),), callback)

    def async_writev(self, buffers: Iterable[Buffer], callback: Optional[Callback] = None) -> None:
        """:meth:`writev` from any thread; see :meth:`async_write`."""
        if not self._loop_gone(callback):
            self._loop.call_soon_threadsafe(
                self._async_write_task, tuple(_owned(b) for b in buffers), callback)

    def _async_write_task(self, buffers: tuple, callback: Optional[Callback]) -> None:
        if not self._alive or self._closing:
            self._notify(callback, ClosedError())
            return
        for data in buffers:
            self.write(data)
        if self._out and self._alive:
            self._flush()
        self._notify(callback, ClosedError("connection closed while writing") if not self._alive else None)

    def wake(self, callback: Optional[Callback] = None) -> None:
        """From any thread: run ``on_traffic`` for this connection on its loop, even with
        nothing new buffered; then ``callback(conn, err)`` (``ClosedError`` if closed)."""
        if not self._loop_gone(callback):
            self._loop.call_soon_threadsafe(self._wake_task, callback)

    def _wake_task(self, callback: Optional[Callback]) -> None:
        if not self._alive or self._closing:
            self._notify(callback, ClosedError())
            return
        self._traffic()
        self._notify(callback, None)

    def _notify(self, callback: Optional[Callback], err: Optional[BaseException]) -> None:
        report(self._loop.logger, callback, self, err)

    # ------------------------------------------------------------------ addresses & options

    @contextlib.contextmanager
    def _borrowed_socket(self) -> Iterator[socket.socket]:
        """A socket object over our fd for the rare calls that need one; detached after."""
        if not self._alive:
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
        if self._laddr is None and self._alive:
            with self._borrowed_socket() as sock:
                try:
                    self._laddr = sock.getsockname()
                except OSError:
                    pass
        return self._laddr

    @property
    def remote_addr(self) -> Any:
        """Peer address: ``(host, port)`` for TCP, the peer's path (often ``''``) for Unix.

        Read from the kernel on first use and cached (connections do not store it
        up front, to stay small). Once the connection is closed an address never
        read is ``None``: read it in ``on_open`` if ``on_close`` needs it.
        """
        if self._raddr is None and self._alive:
            with self._borrowed_socket() as sock:
                try:
                    self._raddr = sock.getpeername()
                except OSError:
                    pass
        return self._raddr

    def set_no_delay(self, enabled: bool = True) -> None:
        """TCP_NODELAY on or off (TCP only; ignored on Unix sockets)."""
        with self._borrowed_socket() as sock:
            if sock.family != socket.AF_UNIX:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, int(bool(enabled)))

    def set_keep_alive(self, enabled: bool = True, idle: Optional[float] = None,
                       interval: Optional[float] = None, count: Optional[int] = None) -> None:
        """SO_KEEPALIVE, with the idle time, probe interval (seconds) and probe count where the OS has them."""
        with self._borrowed_socket() as sock:
            if sock.family == socket.AF_UNIX:
                return
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, int(bool(enabled)))
            if not enabled:
                return
            for opt, value in (("TCP_KEEPIDLE", idle), ("TCP_KEEPINTVL", interval), ("TCP_KEEPCNT", count)):
                if value is not None and hasattr(socket, opt):
                    sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, opt), max(1, int(value)))

    def set_linger(self, seconds: Optional[int]) -> None:
        """SO_LINGER: None restores the default; 0 makes close() send a reset."""
        value = struct.pack("ii", 0, 0) if seconds is None else struct.pack("ii", 1, int(seconds))
        with self._borrowed_socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, value)

    def set_read_buffer(self, size: int) -> None:
        """SO_RCVBUF in bytes."""
        with self._borrowed_socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, int(size))

    def set_write_buffer(self, size: int) -> None:
        """SO_SNDBUF in bytes."""
        with self._borrowed_socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, int(size))

    def __repr__(self) -> str:
        state = "closed" if not self._alive else ("closing" if self._closing else "open")
        return f"<Conn fd={self.fd} {state} in={self.inbound_buffered} out={self._out_bytes}>"


class EdgeConn(Conn):
    """A connection registered edge-triggered: each wake drains reads until ``EAGAIN``,
    at most ``loop.read_budget`` reads; a connection with more to read is revisited
    on the next iteration, so one busy peer cannot starve the others."""

    __slots__ = ()

    def _wanted_events(self) -> int:
        # Registered once for both directions: edges cost nothing while nothing changes.
        return READABLE | WRITABLE | EDGE

    def _update_events(self) -> None:
        pass

    def _io(self, ev: int) -> None:
        if ev & _OUT_EV and self._out:
            self._flush()
        if ev & _IN_EV:
            self._drain()

    def _drain(self) -> None:
        if self._paused or self._closing or self._held:
            return  # _flush() puts us back on the ready list once drained
        read_once = Conn._io  # the level-triggered path, one read per call
        for _ in range(self._loop.read_budget):
            if not read_once(self, READABLE) or self._paused or self._closing or self._held:
                return
        self._loop._ready.append(self)

    def _flush(self) -> None:
        was_paused = self._paused
        super()._flush()
        if was_paused and not self._paused and self._alive:
            # No new edge will come for data already waiting in the kernel.
            self._loop._ready.append(self)
