"""TLS under a connection: the handshake (a :class:`~netreactor.stream.conn.Preamble`)
and the transport that encrypts and decrypts behind the plain transport's five
calls, so buffering, back-pressure, caps and the handler API are the same over TLS.

Built on ``ssl.SSLObject`` over two memory BIOs (what asyncio, uvloop and trio
do), measured faster than a non-blocking ``SSLSocket`` on every figure of
``bench/tls.py`` (bench/README.md, "TLS: SSLObject vs SSLSocket"): the loop
reads and writes the fd itself, one syscall per record or better, and never
gives OpenSSL the socket.

How the rules of the transport contract (stream/transport.py) are kept:

* **Reads.** Ciphertext is read from the fd at most one record (16 KiB + 256)
  at a time, so the incoming BIO (which never shrinks) stays about one record
  large whatever the peer sends, and decrypted in reads that start small
  and grow while they fill (as the plain path's: a small bytes object is
  the cheapest to make), with no exception per read: OpenSSL is only asked
  when the BIO holds something. When complete records remain in the BIO after
  a read (the peer sent several in one segment), or a read filled its size
  (OpenSSL holds the rest of the record), the connection is scheduled to
  read again: the fd will not signal them. Records with no
  application data (handshake messages, session tickets, a KeyUpdate) raise
  ``BlockingIOError``: nothing for the handler, and ``on_traffic`` is not
  called. The peer's close_notify is ``b""`` (an orderly end); a TCP EOF
  without it is ``ssl.SSLEOFError`` in ``on_close`` (a truncated stream).
* **Writes.** At most one record of plaintext is encrypted per call, and its
  ciphertext written at once. What the kernel does not take waits in the
  transport (at most one record), and the transport reports the last byte it
  encrypted as not taken until that ciphertext is out: the connection keeps
  that byte queued, so it keeps watching for writability and its queued-byte
  count never reads 0 while output is pending; when asked to write it again,
  the transport sends the waiting ciphertext and reports the byte taken,
  without encrypting it twice.
* **Shutdown.** close_notify, then the TCP write side; the lingering close
  that follows reads and drops raw bytes.
* Renegotiation is refused by the contexts :mod:`netreactor.tls` builds
  (``OP_NO_RENEGOTIATION``); TLS 1.3 has none.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import ssl
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence, Union

from ..errors import ReadTimeoutError
from ..tls import TLSInfo, client_hello_server_name

if TYPE_CHECKING:  # pragma: no cover
    from .conn import Conn

__all__ = ["TLSTransport", "TLSHandshake", "RECORD"]

Buffer = Union[bytes, bytearray, memoryview]
#: Plaintext bytes in one TLS record at most.
RECORD = 16384
#: Ciphertext read per call at most: a whole record and its header and tag.
_CIPHERTEXT_READ = RECORD + 256
#: First ciphertext read size; grows eightfold while reads fill it (as the
#: plain path does: a small read costs far fewer instructions).
_FIRST_READ = 479
_os_read = os.read
_os_write = os.write
_log = logging.getLogger("netreactor.tls")

class TLSTransport:
    """A connection's TLS transport, once the handshake is done (see the module docstring)."""

    __slots__ = ("_conn", "_sslobj", "_incoming", "_outgoing", "_plain_size", "_more", "_read_size",
                 "_backlog", "_held", "_shut", "_server_name", "_info", "_counters")
    linger = True

    def __init__(self, conn: Conn, sslobj: ssl.SSLObject, incoming: ssl.MemoryBIO,
                 outgoing: ssl.MemoryBIO, server_name: Optional[str], read_size: int) -> None:
        self._conn = conn
        #: bytes_in/bytes_out count plaintext, here (the kernel's counts are records).
        self._counters = conn.counters
        self._sslobj = sslobj
        self._incoming = incoming
        self._outgoing = outgoing
        # Plaintext and ciphertext read sizes: small first (a bytes object that
        # CPython's small-object allocator serves), eightfold while reads fill.
        self._plain_size = _FIRST_READ
        self._more = False  # OpenSSL may hold decrypted bytes of the last record
        self._read_size = read_size
        self._backlog: Optional[memoryview] = None  # ciphertext the kernel did not take
        self._held = 0       # plaintext bytes reported as not taken while the backlog waits
        self._shut = False   # close_notify sent: reads drop raw bytes
        self._server_name = server_name
        self._info: Optional[TLSInfo] = None

    @property
    def info(self) -> TLSInfo:
        """What ``conn.tls`` returns (built on first use: an idle connection
        that nobody asks about keeps no copy of its certificate)."""
        info = self._info
        if info is None:
            loop = self._conn.loop
            if loop.on_loop_thread() or loop.finished:
                info = self._read_info()
            else:
                # OpenSSL objects are not thread-safe: while the loop thread
                # reads a post-handshake message (a session ticket) the object
                # reports "handshake in progress". Read it on the loop.
                ready = threading.Event()

                def read_on_loop() -> None:
                    self._read_info()
                    ready.set()

                loop.call_soon_threadsafe(read_on_loop)
                if not ready.wait(5.0) or self._info is None:
                    raise RuntimeError("conn.tls: the connection's loop did not answer")
                info = self._info
        return info

    def _read_info(self) -> TLSInfo:
        if self._info is None:
            self._info = TLSInfo.from_ssl(self._sslobj, server_name=self._server_name)
        return self._info

    # ------------------------------------------------------------------ reading

    def read(self, fd: int, size: int) -> bytes:
        incoming = self._incoming
        if self._shut:
            return _os_read(fd, 65536)
        while True:
            if incoming.pending or self._more:
                self._more = False
                want = self._plain_size
                try:
                    data = self._sslobj.read(want)
                except ssl.SSLWantReadError:
                    pass  # only part of a record is here, or one without application data
                else:
                    if self._outgoing.pending:  # OpenSSL answered something (a KeyUpdate)
                        self._send_protocol_output(fd)
                    if not data:
                        return data  # close_notify: the peer's orderly end
                    self._counters.bytes_in += len(data)
                    if len(data) == want:
                        # The record may hold more (OpenSSL keeps it decrypted, out of
                        # the BIO's sight), and the next reads should be larger.
                        self._more = True
                        if want < RECORD:
                            self._plain_size = min(RECORD, want << 3)
                        self._conn.loop.schedule_read(self._conn)
                    elif incoming.pending:
                        # Complete records may wait in the BIO: the fd will not say so.
                        self._conn.loop.schedule_read(self._conn)
                    return data
            want = self._read_size
            data = _os_read(fd, want)  # BlockingIOError: nothing more now
            if not data:
                raise ssl.SSLEOFError("EOF without close_notify: the TLS stream was truncated")
            if len(data) == want and want < _CIPHERTEXT_READ:
                self._read_size = min(_CIPHERTEXT_READ, want << 3)
            incoming.write(data)

    def readv(self, fd: int, buffers: Sequence[Any]) -> int:
        view = buffers[0]
        data = self.read(fd, len(view))
        n = len(data)
        view[:n] = data
        return n

    # ------------------------------------------------------------------ writing

    def write(self, fd: int, data: Buffer) -> int:
        if self._backlog is not None:
            if not self._flush_backlog(fd):
                raise BlockingIOError
            held, self._held = self._held, 0
            if held:
                self._counters.bytes_out += held
                return held  # those bytes went out with the backlog
        taken = len(data)
        if taken > RECORD:
            data = memoryview(data)[:RECORD]
            taken = RECORD
        self._sslobj.write(data)
        if not self._send_ciphertext(fd):
            # Keep the connection writing (see the module docstring).
            self._held = 1
            self._counters.bytes_out += taken - 1
            return taken - 1
        self._counters.bytes_out += taken
        return taken

    def writev(self, fd: int, buffers: Sequence[Buffer]) -> int:
        if len(buffers) == 1:
            return self.write(fd, buffers[0])
        joined = bytearray()
        for buf in buffers:
            joined += buf[:RECORD - len(joined)]
            if len(joined) >= RECORD:
                break
        return self.write(fd, joined)

    def _send_ciphertext(self, fd: int) -> bool:
        """Write what the outgoing BIO holds; False when part of it had to wait."""
        ciphertext = self._outgoing.read()
        try:
            sent = _os_write(fd, ciphertext)
        except (BlockingIOError, InterruptedError):
            sent = 0
        if sent < len(ciphertext):
            self._backlog = memoryview(ciphertext)[sent:]
            return False
        return True

    def _flush_backlog(self, fd: int) -> bool:
        backlog: memoryview = self._backlog  # type: ignore[assignment]
        try:
            sent = _os_write(fd, backlog)
        except (BlockingIOError, InterruptedError):
            return False
        if sent < len(backlog):
            self._backlog = backlog[sent:]
            return False
        self._backlog = None
        return True

    def _send_protocol_output(self, fd: int) -> None:
        """Output OpenSSL produced while reading (best effort: it waits with the rest)."""
        if self._backlog is None:
            self._send_ciphertext(fd)

    # ------------------------------------------------------------------ closing

    def shutdown_write(self, fd: int) -> None:
        """close_notify, then the TCP write side."""
        self._shut = True
        try:
            self._sslobj.unwrap()
        except ssl.SSLWantReadError:
            pass  # the peer's close_notify is not awaited: we linger for its EOF
        except ssl.SSLError:
            pass
        if self._backlog is not None:
            self._flush_backlog(fd)
        if self._outgoing.pending:
            self._send_ciphertext(fd)
        sock = socket.socket(fileno=fd)
        try:
            sock.shutdown(socket.SHUT_WR)
        finally:
            sock.detach()

    def close(self, fd: int) -> None:
        """Release the fd; a close_notify goes first if none went yet (best effort:
        the peer that sent its own, or any peer, is owed ours)."""
        if not self._shut:
            self._shut = True
            try:
                self._sslobj.unwrap()
            except ssl.SSLError:
                pass
            if self._outgoing.pending:
                try:
                    _os_write(fd, self._outgoing.read())
                except OSError:
                    pass
        try:
            os.close(fd)
        except OSError:
            pass


Outcome = Callable[["Conn", Optional[BaseException]], None]


class TLSHandshake:
    """The TLS handshake as a connection preamble; on success the connection's
    transport becomes a :class:`TLSTransport` and the handler meets it.

    ``context_of()`` returns the context to use (read when the handshake
    begins, so a new one installed by ``engine.set_tls`` serves new
    connections); ``server_hostname`` is the name a client verifies; ``on_outcome``
    (conn, err) learns how it ended (the Client completes a dial with it);
    ``timeout`` bounds the whole handshake. ``stats``, if given, counts
    ``tls_handshakes`` and ``tls_handshake_failures``.
    """

    def __init__(self, context_of: Callable[[], ssl.SSLContext], *, server_side: bool,
                 server_hostname: Optional[str] = None, timeout: Optional[float] = None,
                 on_outcome: Optional[Outcome] = None, stats: Any = None,
                 upgrade: bool = False) -> None:
        self._context_of = context_of
        self._server_side = server_side
        self._server_hostname = server_hostname
        self._timeout = timeout
        self._on_outcome = on_outcome
        self._stats = stats
        self._upgrade = upgrade
        self._sslobj: Optional[ssl.SSLObject] = None
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._pending: Optional[memoryview] = None  # handshake output the kernel did not take
        self._hello = b""            # server side: the ClientHello's first bytes, for SNI
        self._sni_done = not server_side
        self._server_name: Optional[str] = None
        self._read_size = _FIRST_READ

    # ------------------------------------------------------------------ the Preamble protocol

    def begin(self, conn: Conn, initial: bytes) -> None:
        conn.hand_counting_to_tls(len(initial))
        try:
            self._sslobj = self._context_of().wrap_bio(
                self._incoming, self._outgoing, server_side=self._server_side,
                server_hostname=self._server_hostname)
        except (ssl.SSLError, ValueError) as exc:
            self._fail(conn, exc)
            return
        if self._timeout is not None:
            # On the loop's timing wheel, as every connection timeout: no heap
            # timer per handshake. Cleared by preamble_done/preamble_failed.
            conn.set_read_timeout(self._timeout, on_timeout=self._timed_out)
        if initial:
            self._received(initial)
        self._step(conn)

    def handle_io(self, conn: Conn, events: int) -> None:
        if self._pending is not None and not self._flush(conn):
            return
        fd = conn.fd
        while True:  # until EAGAIN: edge-triggered epoll reports new bytes once
            try:
                data = _os_read(fd, self._read_size)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                self._fail(conn, exc)
                return
            if not data:
                self._fail(conn, ConnectionResetError("the peer closed the connection during the "
                                                      "TLS handshake"))
                return
            if len(data) == self._read_size and self._read_size < _CIPHERTEXT_READ:
                self._read_size = min(_CIPHERTEXT_READ, self._read_size << 3)
            self._received(data)
        self._step(conn)

    def abandon(self, conn: Conn) -> None:
        pass  # the connection's close drops its read timeout; nothing else is held

    # ------------------------------------------------------------------ steps

    def _received(self, data: bytes) -> None:
        self._incoming.write(data)
        if not self._sni_done:
            self._hello += data
            done, name = client_hello_server_name(self._hello)
            if done:
                self._sni_done = True
                self._server_name = name
                self._hello = b""

    def _step(self, conn: Conn) -> None:
        sslobj: ssl.SSLObject = self._sslobj  # type: ignore[assignment]
        try:
            sslobj.do_handshake()
        except ssl.SSLWantReadError:
            self._flush(conn)
            return
        except (ssl.SSLError, OSError) as exc:
            self._flush(conn)  # the alert that says why, where the kernel takes it
            self._fail(conn, exc)
            return
        # Done. What the handshake still owes (the server's tickets, a client's
        # Finished) goes out first, then the application's data.
        if self._outgoing.pending:
            self._pending = self._merge_pending(self._outgoing.read())
        transport = TLSTransport(conn, sslobj, self._incoming, self._outgoing, self._server_name,
                                 self._read_size)
        if self._pending is not None:
            transport._backlog = self._pending
            transport._held = 0
            self._flush_into(transport, conn.fd)
        conn.set_transport(transport)
        if self._stats is not None:
            self._stats.tls_handshakes += 1
        if self._incoming.pending:
            conn.loop.schedule_read(conn)  # application data came with the handshake's end
        outcome = self._on_outcome
        conn.preamble_done()
        if outcome is not None:
            outcome(conn, None)

    @staticmethod
    def _flush_into(transport: TLSTransport, fd: int) -> None:
        transport._flush_backlog(fd)

    def _merge_pending(self, more: bytes) -> memoryview:
        if self._pending is None:
            return memoryview(more)
        return memoryview(bytes(self._pending) + more)

    def _flush(self, conn: Conn) -> bool:
        """Write handshake output; True when none waits."""
        if self._outgoing.pending:
            self._pending = self._merge_pending(self._outgoing.read())
        pending = self._pending
        if pending is None:
            conn.preamble_wants_write(False)
            return True
        try:
            sent = _os_write(conn.fd, pending)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            sent = len(pending)  # the read side will see the error
        if sent < len(pending):
            self._pending = pending[sent:]
            conn.preamble_wants_write(True)
            return False
        self._pending = None
        conn.preamble_wants_write(False)
        return True

    def _timed_out(self, conn: Conn) -> None:
        self._fail(conn, ReadTimeoutError(f"TLS handshake not completed within {self._timeout}s"))

    def _fail(self, conn: Conn, exc: BaseException) -> None:
        if self._stats is not None:
            self._stats.tls_handshake_failures += 1
        # A port scan or a plain-text client must not flood the log: debug, no traceback.
        _log.debug("TLS handshake with fd %d failed: %s", conn.fd, exc)
        outcome = self._on_outcome
        conn.preamble_failed(exc)
        if outcome is not None:
            outcome(conn, exc)
