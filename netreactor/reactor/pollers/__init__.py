"""Poller backends behind one small interface.

A poller watches file descriptors and reports which are ready. The event loop
only ever calls these five methods, so a backend is one module:

* ``register(fd, events)`` / ``modify(fd, events)`` / ``unregister(fd)``
* ``poll(timeout) -> list[(fd, events)]`` — ``timeout`` in seconds, ``-1`` blocks
* ``close()``
* ``fileno()`` -- the poller's own fd, readable while it has ready events (for
  nesting it in another poller); ``ValueError`` where the backend has none

``events`` uses the epoll bit values on every backend (:data:`READABLE`,
:data:`WRITABLE`, :data:`ERROR`, :data:`HANGUP`, plus the epoll-only
:data:`EDGE` and :data:`EXCLUSIVE` registration flags), so the epoll backend
passes them straight to the kernel with no translation on the hot path.

Kernel facts the loop relies on:

* epoll reports ERROR and HANGUP for every registered fd whatever its
  interest, even an interest of 0 (``epoll_ctl(2)``: "epoll_wait will always
  wait for this event; it is not necessary to set it in events"), and keeps
  reporting them level-triggered. A connection that stops reading must
  therefore act on them (close on an error, unregister on a hang-up) or the
  loop spins.
* A TCP reset raises ERROR (``SO_ERROR`` holds ECONNRESET) together with
  HANGUP; a Unix stream peer that closes raises HANGUP alone, with its last
  bytes still readable.
* ``selectors`` cannot watch an fd for errors alone, so the portable backend
  probes the fds it has parked (interest 0) once a second and reports their
  ERROR/HANGUP the way epoll would.
"""

from __future__ import annotations

import select
import sys
from typing import List, Protocol, Tuple

__all__ = ["Poller", "READABLE", "WRITABLE", "ERROR", "HANGUP", "EDGE", "EXCLUSIVE",
           "new_poller", "epoll_available"]

READABLE = getattr(select, "EPOLLIN", 0x001)
WRITABLE = getattr(select, "EPOLLOUT", 0x004)
ERROR = getattr(select, "EPOLLERR", 0x008)
HANGUP = getattr(select, "EPOLLHUP", 0x010)
EDGE = getattr(select, "EPOLLET", 1 << 31)
EXCLUSIVE = getattr(select, "EPOLLEXCLUSIVE", 1 << 28)


class Poller(Protocol):
    """What the event loop needs from a backend."""

    name: str

    def register(self, fd: int, events: int) -> None: ...
    def modify(self, fd: int, events: int) -> None: ...
    def unregister(self, fd: int) -> None: ...
    def poll(self, timeout: float) -> List[Tuple[int, int]]: ...
    def close(self) -> None: ...
    def fileno(self) -> int: ...


def epoll_available() -> bool:
    return hasattr(select, "epoll")


def new_poller(kind: str = "auto") -> Poller:
    """Create a poller: ``"epoll"``, ``"selectors"``, or ``"auto"`` (epoll where it exists)."""
    if kind == "auto":
        kind = "epoll" if epoll_available() else "selectors"
    if kind == "epoll":
        if not epoll_available():
            raise ValueError(f"option 'poller': epoll is not available on {sys.platform}; use 'selectors'")
        from .epoll import EpollPoller

        return EpollPoller()
    if kind == "selectors":
        from .portable import SelectorsPoller

        return SelectorsPoller()
    raise ValueError(f"option 'poller' must be 'auto', 'epoll' or 'selectors', got {kind!r}")
