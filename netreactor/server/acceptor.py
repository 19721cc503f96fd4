"""Accepting connections: a listener's entry in one loop's fd table.

With ``reuse_port`` each loop has its own listener; a listener shared by
several loops (a Unix socket, which SO_REUSEPORT does not spread, or any
listener of ``loops=N`` without a main reactor) is registered with
``EPOLLEXCLUSIVE`` so that a new connection wakes one loop, not all.

Accept runs until ``EAGAIN``. Errors that concern one pending connection are
skipped; running out of descriptors or memory (EMFILE, ENFILE, ENOBUFS,
ENOMEM) would make a readable listener spin, so accepting pauses, from
:data:`BACKOFF_MIN` doubling to :data:`BACKOFF_MAX` seconds, with a warning.
"""

from __future__ import annotations

import errno
import os
import socket
from typing import TYPE_CHECKING, Any, Callable, Optional

from ..reactor import EXCLUSIVE, READABLE
from .listener import Listener

if TYPE_CHECKING:  # pragma: no cover
    from ..reactor import EventLoop

__all__ = ["Acceptor", "BACKOFF_MIN", "BACKOFF_MAX"]

# Errors that mean "this one pending connection is gone", not "the listener is broken".
_TRANSIENT_ACCEPT = {errno.ECONNABORTED, errno.EPROTO, errno.EPERM, errno.ENETDOWN,
                     errno.ENOPROTOOPT, errno.EHOSTDOWN, errno.ENONET, errno.EHOSTUNREACH,
                     errno.EOPNOTSUPP, errno.ENETUNREACH, errno.ETIMEDOUT}
# Out of descriptors or memory: back off instead of spinning on a readable listener.
_RESOURCE_ACCEPT = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}

BACKOFF_MIN = 0.05
BACKOFF_MAX = 1.0


Dispatch = Callable[[socket.socket, Any], None]


class Acceptor:
    """A listener's entry in one loop: accepts until ``EAGAIN`` and hands each
    connection to ``dispatch(sock, addr)``."""

    __slots__ = ("loop", "listener", "fd", "_dispatch", "_shared", "_backoff", "_paused", "_stopped")
    is_connection = False

    def __init__(self, loop: "EventLoop", listener: Listener, dispatch: Dispatch,
                 shared: bool = False) -> None:
        self.loop = loop
        self.listener = listener
        self.fd = listener.sock.fileno()
        self._dispatch = dispatch
        self._shared = shared
        self._backoff = 0.0
        self._paused = False
        self._stopped = False

    def start(self) -> None:
        self.loop.add(self.fd, self, READABLE | (EXCLUSIVE if self._shared else 0))

    def stop(self) -> None:
        if not self._paused:
            self.loop.remove(self.fd)
        self._paused = True
        self._stopped = True

    def handle_io(self, events: int) -> None:
        accept = self.listener.sock.accept
        dispatch = self._dispatch
        while True:
            try:
                sock, addr = accept()
            except (BlockingIOError, InterruptedError):
                self._backoff = 0.0
                return
            except OSError as exc:
                if exc.errno in _TRANSIENT_ACCEPT:
                    continue
                if exc.errno in _RESOURCE_ACCEPT:
                    self._pause(exc)
                    return
                raise
            dispatch(sock, addr)

    def abort(self, err: Optional[BaseException]) -> None:
        """accept() failed in a way we did not expect: stop accepting here
        rather than spin on a listener that stays readable."""
        self.stop()

    def _pause(self, exc: OSError) -> None:
        # The pending connection stays in the backlog; polling the listener now
        # would spin. Stop watching it, and look again after a growing delay.
        self._backoff = min(BACKOFF_MAX, max(BACKOFF_MIN, self._backoff * 2))
        self.loop.logger.warning(
            "accept on %s failed (%s); pausing accepts for %.2fs",
            self.listener.address, os.strerror(exc.errno or 0), self._backoff,
        )
        self.loop.remove(self.fd)
        self._paused = True
        self.loop.call_later(self._backoff, self._resume)

    def _resume(self) -> None:
        if self._paused and not self._stopped:
            self._paused = False
            self.start()
