"""The byte counters' kernel source: what a TCP socket's ``TCP_INFO`` says it
carried, so that plain TCP connections count nothing per message.

Linux keeps, per TCP socket, ``tcpi_bytes_received`` (every sequence number
received in order: the data, plus 1 for the peer's FIN) and, since 5.5,
``tcpi_bytes_sent`` (payload bytes transmitted, retransmissions included;
FIN carries none) and ``tcpi_bytes_retrans``. Application bytes are then:

* received: ``bytes_received``, less 1 once the peer's FIN is in. The FIN
  moves the socket to CLOSE_WAIT, LAST_ACK, CLOSING or TIME_WAIT; but once
  our own FIN is acknowledged too the socket is CLOSE, as it is after a
  reset, and only the connection knows whether it read the FIN (a read that
  returned EOF): the caller says so (``peer_eof``).
* sent: ``bytes_sent - bytes_retrans``, each byte once as it went on the wire.
  Bytes the kernel took but never transmitted (queued behind a closed
  window when a reset or an abort dropped them) are not counted;
  ``bytes_acked`` would also leave out what is in flight, and counts our FIN.

Where TCP_INFO lacks these fields (not Linux, or Linux before 5.5)
:data:`KERNEL_COUNTS` is False and connections count in Python instead.
"""

from __future__ import annotations

import _socket
import fcntl
import socket
import struct
import sys
import termios
from typing import Optional, Tuple

__all__ = ["KERNEL_COUNTS", "tcp_traffic", "tcp_read_so_far"]

_TCP_INFO = getattr(socket, "TCP_INFO", None)
#: Bytes of struct tcp_info up to tcpi_bytes_retrans (Linux 5.5).
_INFO_LEN = 216
#: tcpi_state (offset 0), tcpi_bytes_received (128), tcpi_bytes_sent (200) and
#: tcpi_bytes_retrans (208), in one unpack.
_FIELDS = struct.Struct("=B127xQ64xQQ")
# tcpi_state values (include/net/tcp_states.h).
_TIME_WAIT, _CLOSE, _CLOSE_WAIT, _LAST_ACK, _CLOSING = 6, 7, 8, 9, 11
#: States in which the peer's FIN has been received for certain.
_FIN_IN = frozenset((_TIME_WAIT, _CLOSE_WAIT, _LAST_ACK, _CLOSING))
_AF_INET = socket.AF_INET
_SOCK_STREAM = socket.SOCK_STREAM
_IPPROTO_TCP = socket.IPPROTO_TCP


def _probe() -> bool:
    if _TCP_INFO is None or not sys.platform.startswith("linux"):
        return False
    try:
        with socket.socket() as sock:
            return len(sock.getsockopt(_IPPROTO_TCP, _TCP_INFO, _INFO_LEN)) >= _INFO_LEN
    except OSError:
        return False


#: Whether :func:`tcp_traffic` can answer on this system.
KERNEL_COUNTS: bool = _probe()


def tcp_traffic(fd: int, peer_eof: Optional[bool] = False) -> Optional[Tuple[int, int]]:
    """``(received, sent)`` application bytes of the TCP socket ``fd`` so far,
    from its TCP_INFO (any thread); None when the kernel does not say (see
    :data:`KERNEL_COUNTS`) or ``fd`` is not a TCP socket now.

    ``peer_eof``: whether a read on it returned EOF (the peer's FIN), which the
    socket's state no longer tells once it is CLOSE; None when the caller
    cannot know (another thread than the connection's, while the peer's
    FIN may be arriving): then a CLOSE socket is taken to have received a
    FIN, and TCP_INFO is read twice, the counts from the first and the state
    from the second, because the kernel loads the state before it locks the
    socket to copy the counts (a FIN processed in between is in the counts
    and not in the state). Either can only under-count by one byte.
    """
    info = _tcp_info(fd)
    if info is None:
        return None
    state, received, sent, retrans = _FIELDS.unpack(info)
    if peer_eof is None:
        again = _tcp_info(fd)
        if again is None:
            return None
        state = again[0]
    if received and (state in _FIN_IN or (state == _CLOSE and peer_eof is not False)):
        received -= 1
    return received, sent - retrans


def _tcp_info(fd: int) -> Optional[bytes]:
    # family/type/proto given: socket.socket(fileno=fd) would ask the kernel
    # for each with a getsockopt of its own. The family is only the object's
    # idea of addresses: TCP_INFO is the same on an AF_INET6 socket.
    # OSError: the fd is not a socket, or not open (another thread than its
    # connection's may find it closed meanwhile).
    try:
        sock = _socket.socket(_AF_INET, _SOCK_STREAM, 0, fd)
    except OSError:
        return None
    try:
        info = sock.getsockopt(_IPPROTO_TCP, _TCP_INFO, _INFO_LEN)  # type: ignore[arg-type]
    except OSError:
        return None
    finally:
        sock.detach()
    return info if len(info) == _INFO_LEN else None


def tcp_read_so_far(fd: int) -> Optional[Tuple[int, int]]:
    """``(read, sent)``: :func:`tcp_traffic`, less what waits unread in the
    socket's receive queue. The two are separate calls and the peer's bytes
    may land between them: they are read again until nothing did (a few
    tries; None when the peer never lets up, or the kernel does not say)."""
    for _ in range(8):
        first = tcp_traffic(fd)
        waiting = _unread(fd)
        again = tcp_traffic(fd)
        if first is None or waiting is None:
            return None
        if again == first:
            return first[0] - waiting, first[1]
    return None


def _unread(fd: int) -> Optional[int]:
    """Bytes waiting in the socket's receive queue (FIONREAD), None if it cannot say."""
    buf = bytearray(4)
    try:
        fcntl.ioctl(fd, termios.FIONREAD, buf)
    except OSError:
        return None
    return int.from_bytes(buf, sys.byteorder, signed=True)
