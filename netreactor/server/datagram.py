"""UDP: datagram endpoints on a loop, and the connection object handlers see.

Each datagram is one ``on_traffic``. By default the connection handed to the
handler stands for that one datagram: ``read()`` returns exactly the datagram,
``write()`` replies to its sender, ``send_to()`` sends anywhere, and what the
handler leaves unread is dropped (datagram boundaries are kept). Such a
connection may be kept and written to later (``async_write`` from a worker
thread, say); it has no ``on_open``/``on_close`` and its ``context`` starts
empty with every datagram.

With ``udp_session_timeout=SECONDS`` a peer gets a *session* instead: one
persistent connection per peer address, with ``on_open`` at its first
datagram, its own ``context``, and ``on_close`` after it has been idle for the
timeout (``err`` is a ``TimeoutError``), after ``close()`` (``err`` None), or
at shutdown. ``udp_max_sessions`` bounds how many exist at once; datagrams
from new peers beyond it are dropped, so a flood of sources costs bounded
memory.

A send that fails (full socket buffer, unreachable peer, datagram too large)
costs that datagram only: ``write`` returns 0 and the loop goes on. ICMP errors
reported on the socket (``ECONNREFUSED`` after replying to a closed port) are
ignored the same way.
"""

from __future__ import annotations

import logging
import sys
from time import monotonic
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterable, Optional, Tuple, Union

from ..callbacks import Failed, call, log_failure, report
from ..errors import ClosedError
from ..handler import Action
from ..reactor import READABLE
from ..stream.inbound import Inbound

if TYPE_CHECKING:  # pragma: no cover
    import socket

    from ..reactor import EventLoop, TimerHandle

__all__ = ["DatagramConn", "DatagramEndpoint", "MAX_DATAGRAM"]

#: Largest UDP payload over IPv4 (65,535 minus IP and UDP headers).
MAX_DATAGRAM = 65507
#: Datagrams read per readiness event before other sockets get a turn.
DATAGRAM_BUDGET = 64
_RECV_SIZE = 65536
_EMPTY = b""
# CPython's reference count: tells whether a handler kept a per-datagram
# connection (then it must not be reused). Elsewhere: never reuse.
_getrefcount = getattr(sys, "getrefcount", None)

Buffer = Union[bytes, bytearray, memoryview]
Callback = Callable[["DatagramConn", Optional[BaseException]], Any]


class DatagramConn(Inbound):
    """A UDP peer as handlers see it: the read API over one datagram, ``write`` to
    reply, ``send_to`` to send anywhere. Writes go out at once, one datagram each."""

    __slots__ = ("_loop", "_endpoint", "fd", "context", "_in", "_ipos", "_iend",
                 "_block", "_raddr", "_alive", "_last", "_session", "_sendto")

    def __init__(self, endpoint: DatagramEndpoint, remote_addr: Any, session: bool = False) -> None:
        self._loop = endpoint.loop
        self._endpoint = endpoint
        #: The UDP socket's file descriptor (shared by every peer of the endpoint).
        self.fd: int = endpoint.fd
        #: Free slot for the handler's state (per datagram, or per session).
        self.context: Any = None
        self._in: Any = _EMPTY
        self._ipos = 0
        self._iend = 0
        self._block = None
        self._raddr = remote_addr
        self._alive = True
        self._last = 0.0
        self._session = session
        # write() calls this directly: one Python call less per reply than
        # going through the endpoint (a connected endpoint keeps that path).
        self._sendto = endpoint._send_to_peer if endpoint._connected else endpoint.sock.sendto

    # ------------------------------------------------------------------ writing

    @property
    def outbound_buffered(self) -> int:
        """Always 0: datagrams are sent at once or dropped."""
        return 0

    @property
    def closed(self) -> bool:
        return not self._alive

    @property
    def loop(self) -> EventLoop:
        """The event loop that owns this connection's endpoint."""
        return self._loop

    def write(self, data: Buffer) -> int:
        """Send ``data`` as one datagram to this peer; the bytes sent, or 0 if it was dropped."""
        if not self._alive:
            return 0
        try:
            return self._sendto(data, self._raddr)
        except OSError:
            # As in DatagramEndpoint.send: this datagram is lost, nothing else is.
            self._endpoint.send_errors += 1
            return 0

    def writev(self, buffers: Iterable[Buffer]) -> int:
        """Send the buffers joined as one datagram."""
        return self.write(b"".join(buffers))

    def send_to(self, data: Buffer, addr: Any) -> int:
        """Send ``data`` as one datagram to ``addr`` (a ``(host, port)`` tuple)."""
        return self._endpoint.send(data, addr)

    def count_frames(self, received: int = 0, sent: int = 0) -> None:
        """Stream connections count frames for ``engine.stats()``; datagrams are not counted."""

    def flush(self) -> None:
        """Nothing to do: datagrams are never queued."""

    # ------------------------------------------------------------------ any-thread API

    def async_write(self, data: Buffer, callback: Optional[Callback] = None) -> None:
        """Send from any thread; ``callback(conn, err)`` runs on the loop afterwards."""
        self._loop.post(self._async_write_task, bytes(data), callback)

    def async_writev(self, buffers: Iterable[Buffer], callback: Optional[Callback] = None) -> None:
        self._loop.post(self._async_write_task, b"".join(buffers), callback)

    def _async_write_task(self, data: bytes, callback: Optional[Callback]) -> None:
        if not self._alive or self._loop.finished:
            err: Optional[BaseException] = ClosedError()
        else:
            err = None if self.write(data) or not data else OSError("datagram dropped")
        _notify(self, callback, err)

    def wake(self, callback: Optional[Callback] = None) -> None:
        """Run ``on_traffic`` for this peer on the loop (with nothing to read)."""
        self._loop.post(self._wake_task, callback)

    def _wake_task(self, callback: Optional[Callback]) -> None:
        if not self._alive or self._loop.finished:
            _notify(self, callback, ClosedError())
            return
        self._endpoint.dispatch(self, _EMPTY)
        _notify(self, callback, None)

    def close(self, callback: Optional[Callback] = None) -> None:
        """End a session (``on_close`` with ``None``); for a per-datagram
        connection, just stop accepting writes. Safe from any thread."""
        self._loop.post(self._close_task, callback)

    def _close_task(self, callback: Optional[Callback]) -> None:
        err = None if self._alive else ClosedError()
        self._endpoint.end(self, None)
        _notify(self, callback, err)

    # ------------------------------------------------------------------ addresses

    @property
    def local_addr(self) -> Any:
        return self._endpoint.local_addr

    @property
    def remote_addr(self) -> Any:
        return self._raddr

    def __repr__(self) -> str:
        kind = "session" if self._session else "datagram"
        return f"<DatagramConn {kind} fd={self.fd} peer={self._raddr} in={self.inbound_buffered}>"


def _notify(conn: DatagramConn, callback: Optional[Callback], err: Optional[BaseException]) -> None:
    report(conn._loop.logger, callback, conn, err)


class DatagramEndpoint:
    """A bound (or connected) UDP socket on one loop, dispatching datagrams.

    ``connected_conn`` makes it a client endpoint: one peer, ``send``/``recv``.
    """

    is_connection = False

    def __init__(self, loop: EventLoop, sock: Any, handler: Any, options: Any,
                 request_shutdown: Callable[[], None], connected: bool = False) -> None:
        self.loop = loop
        self.sock: socket.socket = sock
        self.fd = sock.fileno()
        self.handler = handler
        self.request_shutdown = request_shutdown
        self.local_addr = sock.getsockname()
        self.logger: logging.Logger = loop.logger
        self._connected = connected
        self._timeout: Optional[float] = options.udp_session_timeout
        self._max_sessions: int = options.udp_max_sessions
        self._sessions: Dict[Any, DatagramConn] = {}
        self._sweeper: Optional[TimerHandle] = None
        self._stopped = False
        self._full_warned = False
        #: Datagrams dropped on send (full buffer, unreachable peer...).
        self.send_errors = 0
        #: The one connection of a connected (client) endpoint.
        self.peer: Optional[DatagramConn] = None
        if connected:
            self.peer = DatagramConn(self, sock.getpeername(), session=True)
        # A per-datagram connection that no handler kept, reused for the next datagram.
        self._spare: Optional[DatagramConn] = None
        # The common case (unconnected, no sessions) gets its own flat loop.
        self._flat = not connected and self._timeout is None

    def open_peer(self) -> None:
        """A connected (client) endpoint: run ``on_open`` for its one peer. A handler
        that raises is logged and the connection closed, as for a stream."""
        conn = self.peer
        if conn is None:
            raise RuntimeError("open_peer() on an endpoint that is not connected")
        self.loop.connection_opened()
        action = call(self.logger, self.handler, "on_open", conn, self.handler.on_open, conn)
        if action.__class__ is Failed:
            self.end(conn, action.exc)
        elif action is Action.CLOSE:
            self.end(conn, None)
        elif action is Action.SHUTDOWN:
            self.request_shutdown()

    def start(self) -> None:
        self.loop.add(self.fd, self, READABLE)
        if self._timeout is not None and not self._connected:
            self._sweeper = self.loop.call_later(self._sweep_interval(), self._sweep)

    def stop(self) -> None:
        """Stop receiving; end every session (``on_close`` with ``None``)."""
        if self._stopped:
            return
        self._stopped = True
        self.loop.remove(self.fd)
        if self._sweeper is not None:
            self._sweeper.cancel()
        for conn in list(self._sessions.values()):
            self.end(conn, None)
        if self.peer is not None:
            self.end(self.peer, None)

    # ------------------------------------------------------------------ receiving

    def handle_io(self, events: int) -> None:
        if self._flat:
            self._receive_datagrams()
            return
        sock = self.sock
        for _ in range(DATAGRAM_BUDGET):
            try:
                if self._connected:
                    data, addr = sock.recv(_RECV_SIZE), None
                else:
                    data, addr = sock.recvfrom(_RECV_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                # An ICMP error queued on the socket (e.g. ECONNREFUSED after a
                # reply to a closed port): it concerns one earlier datagram only.
                continue
            if self._connected:
                conn = self.peer
                if conn is None or not conn._alive:
                    continue
            else:
                conn = self._session_for(addr)
                if conn is None:
                    continue
            self.dispatch(conn, data)

    def abort(self, err: Optional[BaseException]) -> None:
        self.stop()

    def _receive_datagrams(self) -> None:
        """``handle_io`` of an unconnected endpoint without sessions: the hot path.

        :meth:`dispatch` written out inline (``tests/test_hot_paths.py`` runs
        both on the same datagrams and handlers), and one connection object reused
        for datagram after datagram as long as no handler keeps a reference to
        it (stores it, hands it to a worker, schedules a call on it): the
        reference count after ``on_traffic`` equals the one before. A kept
        connection stays the handler's; the next datagram gets a new one.
        """
        recvfrom = self.sock.recvfrom
        on_traffic = self.handler.on_traffic
        refcount = _getrefcount
        conn = self._spare
        # References to ``conn`` held here (this frame, and ``_spare`` while it
        # is the spare): constant through the loop, so measured once per object.
        refs = refcount(conn) if conn is not None and refcount is not None else -1
        try:
            for _ in range(DATAGRAM_BUDGET):
                try:
                    data, addr = recvfrom(_RECV_SIZE)
                except (BlockingIOError, InterruptedError):
                    return
                except OSError:
                    continue  # an ICMP error queued on the socket: one earlier datagram only
                if conn is None:
                    conn = DatagramConn(self, addr)
                    refs = refcount(conn) if refcount is not None else -1
                else:
                    conn._raddr = addr
                conn._in = data
                conn._iend = len(data)
                try:
                    action = on_traffic(conn)
                except Exception as exc:
                    log_failure(self.logger, self.handler, "on_traffic", conn, exc, closing=False)
                    action = None
                if conn._iend:  # what was not read of a datagram is dropped
                    conn._in = _EMPTY
                    conn._ipos = conn._iend = 0
                if action is not None:
                    if action is Action.CLOSE:
                        conn._alive = False
                    elif action is Action.SHUTDOWN:
                        self.request_shutdown()
                if refs < 0 or refcount(conn) != refs:  # type: ignore[misc]  # refs >= 0: it exists
                    conn = None  # kept by the handler: it is no longer ours to reuse
                else:
                    conn.context = None  # a fresh connection for the next datagram
                    conn._alive = True
        finally:
            self._spare = conn

    def dispatch(self, conn: DatagramConn, data: bytes) -> None:
        """One ``on_traffic`` for ``conn`` with ``data`` as its datagram."""
        conn._in = data
        conn._ipos = 0
        conn._iend = len(data)
        if conn._session:
            conn._last = monotonic()
        action = call(self.logger, self.handler, "on_traffic", conn, self.handler.on_traffic, conn,
                      closing=conn._session)
        conn._in = _EMPTY  # what was not read of a datagram is dropped
        conn._ipos = conn._iend = 0
        if action.__class__ is Failed:
            if conn._session:
                self.end(conn, action.exc)
        elif action is Action.CLOSE:
            self.end(conn, None)
        elif action is Action.SHUTDOWN:
            self.request_shutdown()

    # ------------------------------------------------------------------ sessions

    def _session_for(self, addr: Any) -> Optional[DatagramConn]:
        conn = self._sessions.get(addr)
        if conn is not None:
            return conn
        if len(self._sessions) >= self._max_sessions:
            if not self._full_warned:
                self._full_warned = True
                self.logger.warning("udp %s: %d sessions open (udp_max_sessions); dropping datagrams "
                                    "from new peers", self.local_addr, self._max_sessions)
            return None
        conn = DatagramConn(self, addr, session=True)
        conn._last = monotonic()
        self._sessions[addr] = conn
        self.loop.connection_opened()
        action = call(self.logger, self.handler, "on_open", conn, self.handler.on_open, conn)
        if action.__class__ is Failed:
            self.end(conn, action.exc)
            return None
        if action is Action.CLOSE:
            self.end(conn, None)
            return None
        if action is Action.SHUTDOWN:
            self.request_shutdown()
        return conn

    def end(self, conn: DatagramConn, err: Optional[BaseException]) -> None:
        """Close ``conn``: a session gets ``on_close``; a per-datagram conn just stops writing."""
        if not conn._alive:
            return
        conn._alive = False
        if not conn._session:
            return
        if conn is not self.peer:
            if self._sessions.pop(conn._raddr, None) is None:
                return
            self._full_warned = False
        else:
            self.loop.remove(self.fd)
            try:
                self.sock.close()
            except OSError:
                pass
        action = call(self.logger, self.handler, "on_close", conn, self.handler.on_close, conn, err,
                      closing=False)
        self.loop.connection_closed()
        if action is Action.SHUTDOWN:
            self.request_shutdown()

    def _sweep_interval(self) -> float:
        timeout: float = self._timeout  # type: ignore[assignment]  # sessions: never None
        return max(0.01, min(1.0, timeout / 4))

    def _sweep(self) -> None:
        if self._stopped:
            return
        deadline = monotonic() - self._timeout  # type: ignore[operator]  # sessions: never None
        idle = [c for c in self._sessions.values() if c._last <= deadline]
        for conn in idle:
            self.end(conn, TimeoutError(f"udp session with {conn._raddr} idle for {self._timeout}s"))
        self._sweeper = self.loop.call_later(self._sweep_interval(), self._sweep)

    # ------------------------------------------------------------------ sending

    def _send_to_peer(self, data: Buffer, addr: Any) -> int:
        # DatagramConn.write on a connected (client) endpoint; errors are the caller's.
        if addr is None or addr == self.peer._raddr:  # type: ignore[union-attr]  # connected: a peer
            return self.sock.send(data)
        return self.sock.sendto(data, addr)

    def send(self, data: Buffer, addr: Any) -> int:
        """One datagram; the bytes sent, or 0 when it was dropped (counted in ``send_errors``)."""
        try:
            if self._connected and (addr is None or addr == self.peer._raddr):  # type: ignore[union-attr]
                return self.sock.send(data)
            return self.sock.sendto(data, addr)
        except OSError:
            # Full buffer, unreachable or refused peer, oversized datagram: this
            # datagram is lost, nothing else is. (A malformed address is a
            # handler bug and raises.)
            self.send_errors += 1
            return 0

    def connections(self) -> Tuple[DatagramConn, ...]:
        return tuple(self._sessions.values())
