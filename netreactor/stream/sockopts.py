"""Socket options of stream connections, in one place for accepted sockets,
dialed sockets and :class:`netreactor.Conn`'s setters."""

from __future__ import annotations

import socket
import struct
from typing import Any, Optional

__all__ = ["set_no_delay", "set_keep_alive", "set_linger", "tune_tcp", "apply_buffer_sizes"]


def set_no_delay(sock: socket.socket, enabled: bool = True) -> None:
    """TCP_NODELAY on or off; nothing on a Unix socket."""
    if sock.family != socket.AF_UNIX:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, int(bool(enabled)))


def set_keep_alive(sock: socket.socket, enabled: bool = True, idle: Optional[float] = None,
                   interval: Optional[float] = None, count: Optional[int] = None) -> None:
    """SO_KEEPALIVE, with the idle time, probe interval (seconds) and probe count
    where the OS has them; nothing on a Unix socket."""
    if sock.family == socket.AF_UNIX:
        return
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, int(bool(enabled)))
    if not enabled:
        return
    for opt, value in (("TCP_KEEPIDLE", idle), ("TCP_KEEPINTVL", interval), ("TCP_KEEPCNT", count)):
        if value is not None and hasattr(socket, opt):
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, opt), max(1, int(value)))


def set_linger(sock: socket.socket, seconds: Optional[int]) -> None:
    """SO_LINGER: None restores the default; 0 makes close() send a reset."""
    value = struct.pack("ii", 0, 0) if seconds is None else struct.pack("ii", 1, int(seconds))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, value)


def tune_tcp(sock: socket.socket, options: Any) -> None:
    """The per-connection TCP options of an accepted or dialed socket:
    ``tcp_no_delay``, and ``tcp_keepalive`` seconds as both the idle time and
    the probe interval."""
    if options.tcp_no_delay:
        set_no_delay(sock)
    if options.tcp_keepalive:
        secs = max(1, int(options.tcp_keepalive))
        set_keep_alive(sock, True, idle=secs, interval=secs)


def apply_buffer_sizes(sock: socket.socket, options: Any) -> None:
    """SO_RCVBUF/SO_SNDBUF from the options, set before listen() or connect():
    accepted sockets inherit a listener's, and TCP window scaling agrees."""
    if options.socket_recv_buffer:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, options.socket_recv_buffer)
    if options.socket_send_buffer:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, options.socket_send_buffer)
