"""Accepting connections: a listener's entry in one loop's fd table.

With ``reuse_port`` each loop has its own listener; a listener shared by
several loops (a Unix socket, which SO_REUSEPORT does not spread, or any
listener of ``loops=N`` without a main reactor) is registered with
``EPOLLEXCLUSIVE`` so that a new connection wakes one loop, not all.

Accept runs until ``EAGAIN``. Errors that concern one pending connection are
skipped; running out of descriptors or memory (EMFILE, ENFILE, ENOBUFS,
ENOMEM) would make a readable listener spin, so accepting pauses, from
:data:`BACKOFF_MIN` doubling to :data:`BACKOFF_MAX` seconds, with a warning.

A *gate* (``max_connections``, see :mod:`.limits`) is asked before each
accept: while it is full the acceptor holds, its listener out of the poller
and newcomers in the kernel's backlog, until :meth:`Acceptor.release`.
The listener is watched exactly when the acceptor is neither stopped, backing
off, nor held.
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
    from .limits import Gate

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

    __slots__ = ("loop", "listener", "fd", "_dispatch", "_shared", "_backoff", "_paused", "_stopped",
                 "_gate", "_held", "_watched")
    is_connection = False

    def __init__(self, loop: EventLoop, listener: Listener, dispatch: Dispatch,
                 shared: bool = False, gate: Optional[Gate] = None) -> None:
        self.loop = loop
        self.listener = listener
        self.fd = listener.sock.fileno()
        self._dispatch = dispatch
        self._shared = shared
        self._backoff = 0.0
        self._paused = False   # backing off after EMFILE & co
        self._stopped = False
        self._gate = gate
        self._held = False     # the gate is full
        self._watched = False

    def start(self) -> None:
        self._watch()

    def stop(self) -> None:
        self._stopped = True
        self._watch()

    def _watch(self) -> None:
        """Register or unregister the listener as the flags now say."""
        want = not (self._stopped or self._paused or self._held)
        if want and not self._watched:
            self.loop.add(self.fd, self, READABLE | (EXCLUSIVE if self._shared else 0))
        elif self._watched and not want:
            self.loop.remove(self.fd)
        self._watched = want

    def release(self) -> None:
        """The gate has room again (on this acceptor's loop): accept again."""
        if self._held and not self.loop.finished:
            self._held = False
            self._watch()

    def handle_io(self, events: int) -> None:
        accept = self.listener.sock.accept
        dispatch = self._dispatch
        gate = self._gate
        while True:
            if gate is not None and gate.full:
                self._held = True
                self._watch()
                return
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
        self._paused = True
        self._watch()
        self.loop.call_later(self._backoff, self._resume)

    def _resume(self) -> None:
        if self._paused:
            self._paused = False
            self._watch()
