"""Transports: the syscalls of one stream, under :class:`netreactor.Conn`.

A connection never calls ``os.read``/``os.write`` on its fd itself; it asks
its transport. The plain transport is the kernel's own calls, shared by every
connection (one object, no per-connection cost); a TLS transport is one
object per connection that encrypts on the way out and decrypts on the way in
behind the same five calls, so buffering, back-pressure, caps and the handler
API are the same over TLS.

The contract, in the kernel's terms (and a TLS transport must keep it):

* ``read(fd, size)`` returns up to ``size`` bytes of application data, ``b""``
  at the peer's orderly end of stream, or raises ``BlockingIOError`` when
  there is nothing to deliver now (for TLS also when only protocol records
  arrived), or another ``OSError`` when the stream failed.
* ``readv(fd, [view])`` is the same into a buffer, returning the count.
* ``write(fd, data)`` / ``writev(fd, buffers)`` take what they can and return
  how many bytes of ``data`` they took, or raise ``BlockingIOError`` when
  nothing can be taken now (for TLS: retry later with the same bytes first).
* ``shutdown_write(fd)`` ends our direction (a FIN; for TLS after close_notify).
* ``close(fd)`` releases the fd.
* ``linger`` says whether closing with input still unread would reset the
  stream (TCP answers it with RST, which also discards the reply still in the
  kernel's send queue; a Unix peer gets ECONNRESET instead of EOF), so a local
  close shuts the write side down first and drains the input until the
  peer's EOF.

Byte counters (``StreamContext.bytes_in``/``bytes_out``): :data:`PLAIN_TCP`
counts nothing, the kernel does (:mod:`netreactor.stream.traffic`: the
connection adds its kernel counts when it closes, ``stats()`` reads the live
ones). Where the kernel does not count what the counters mean a transport
counts itself: :class:`CountingPlain` (Unix sockets; TCP where TCP_INFO has no
byte counts), TLS (plaintext, not the records).
"""

from __future__ import annotations

import os
import socket
from typing import Any, Protocol, Type, Union

__all__ = ["Transport", "PlainTCP", "PlainUnix", "PlainTransport", "PLAIN_TCP", "PLAIN_UNIX", "PLAIN_UNCOUNTED",
           "CountingPlain", "Counters", "for_socket"]

Buffer = Union[bytes, bytearray, memoryview]


class Counters(Protocol):
    """What a counting transport adds to (a StreamContext)."""

    bytes_in: int
    bytes_out: int


class Transport(Protocol):
    @property
    def linger(self) -> bool: ...
    @property
    def info(self) -> Any: ...  # a TLSInfo for TLS, None for plain

    def read(self, fd: int, size: int, /) -> bytes: ...
    def readv(self, fd: int, buffers: Any, /) -> int: ...
    def write(self, fd: int, data: Any, /) -> int: ...
    def writev(self, fd: int, buffers: Any, /) -> int: ...
    def shutdown_write(self, fd: int, /) -> None: ...
    def close(self, fd: int, /) -> None: ...


class PlainTCP:
    """The kernel's own calls, for TCP. The class itself is the transport (one
    for every plain connection, no instance): ``read``/``write``... are the
    ``os`` functions themselves, so a call costs no Python frame, and a method
    load on a class is one CPython specialises (on an instance's dict entry it
    would not). ``os.read`` over ``socket.recv`` also skips PyArg_ParseTuple:
    measurably fewer instructions per message under callgrind."""

    linger = True
    #: ``conn.tls`` of a plain connection.
    info = None
    read = os.read
    readv = os.readv
    write = os.write
    writev = os.writev

    @staticmethod
    def shutdown_write(fd: int) -> None:
        sock = socket.socket(fileno=fd)
        try:
            sock.shutdown(socket.SHUT_WR)
        finally:
            sock.detach()

    @staticmethod
    def close(fd: int) -> None:
        try:
            os.close(fd)
        except OSError:
            pass


class PlainUnix(PlainTCP):
    """Unix stream sockets. They linger too: what we sent waits in the peer's
    queue whatever we leave unread, but Linux still reports ECONNRESET, not
    EOF, to a peer whose data we closed on unread."""


class PlainUncounted(PlainTCP):
    """Plain TCP whose kernel counts are not application bytes: a TLS
    connection's fd before its TLS transport takes over (the TLS transport
    counts plaintext)."""


class CountingPlain:
    """The kernel's calls, counting the bytes into ``counters`` (one per
    StreamContext, not per connection): for sockets the kernel keeps no
    byte counts of (Unix), or where TCP_INFO has none."""

    __slots__ = ("_counters",)
    linger = True
    info = None

    def __init__(self, counters: Counters) -> None:
        self._counters = counters

    def read(self, fd: int, size: int, /) -> bytes:
        data = os.read(fd, size)
        self._counters.bytes_in += len(data)
        return data

    def readv(self, fd: int, buffers: Any, /) -> int:
        n = os.readv(fd, buffers)
        self._counters.bytes_in += n
        return n

    def write(self, fd: int, data: Any, /) -> int:
        n = os.write(fd, data)
        self._counters.bytes_out += n
        return n

    def writev(self, fd: int, buffers: Any, /) -> int:
        n = os.writev(fd, buffers)
        self._counters.bytes_out += n
        return n

    shutdown_write = staticmethod(PlainTCP.shutdown_write)
    close = staticmethod(PlainTCP.close)


PlainTransport = Type[PlainTCP]
#: TCP and Unix: a local close lingers (see the module docstring).
PLAIN_TCP: PlainTransport = PlainTCP
PLAIN_UNIX: PlainTransport = PlainUnix
PLAIN_UNCOUNTED: PlainTransport = PlainUncounted


def for_socket(sock: socket.socket) -> PlainTransport:
    """The plain transport for an accepted or dialed stream socket. Neither
    counts bytes, and PLAIN_UNIX has no kernel counts either: an engine's
    connections get theirs from ``StreamContext.transport_for``."""
    return PLAIN_UNIX if sock.family == socket.AF_UNIX else PLAIN_TCP

