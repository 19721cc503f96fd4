"""The portable backend on the standard ``selectors`` module.

This is what macOS and the BSDs (kqueue), and other platforms (poll/select)
get. It is level-triggered only. Results are translated to the epoll-style
bits the loop understands.

``selectors`` refuses a registration with no events; a connection whose
interest drops to nothing (paused reading, nothing to write) is parked —
removed from the selector — and put back when interest returns. epoll keeps
reporting errors and hang-ups of such fds; here nothing would, so a parked fd
is probed with ``poll(2)`` (which, unlike select, tells POLLERR and POLLHUP
apart from data) every :data:`PROBE_INTERVAL` seconds, and its ERROR/HANGUP
reported as epoll would. A paused connection whose peer resets is thereby
closed on this backend too, within a second.
"""

from __future__ import annotations

import select
import selectors
from time import monotonic
from typing import Dict, List, Tuple

from . import EDGE, ERROR, EXCLUSIVE, HANGUP, READABLE, WRITABLE

__all__ = ["SelectorsPoller"]

_MASK = READABLE | WRITABLE
#: Seconds between probes of parked fds for errors and hang-ups.
PROBE_INTERVAL = 1.0


class SelectorsPoller:
    name = "selectors"

    def __init__(self) -> None:
        self._sel = selectors.DefaultSelector()
        self._parked: Dict[int, int] = {}
        self._next_probe = 0.0

    @staticmethod
    def _to_sel(events: int) -> int:
        if events & EDGE:
            raise ValueError("the selectors poller is level-triggered only")
        mask = 0
        if events & READABLE:
            mask |= selectors.EVENT_READ
        if events & WRITABLE:
            mask |= selectors.EVENT_WRITE
        return mask

    def register(self, fd: int, events: int) -> None:
        mask = self._to_sel(events & ~EXCLUSIVE)
        if mask:
            self._sel.register(fd, mask)
        else:
            self._parked[fd] = 0

    def modify(self, fd: int, events: int) -> None:
        mask = self._to_sel(events & ~EXCLUSIVE)
        if fd in self._parked:
            if mask:
                del self._parked[fd]
                self._sel.register(fd, mask)
            return
        if mask:
            self._sel.modify(fd, mask)
        else:
            self._sel.unregister(fd)
            self._parked[fd] = 0

    def unregister(self, fd: int) -> None:
        if self._parked.pop(fd, None) is not None:
            return
        try:
            self._sel.unregister(fd)
        except (KeyError, ValueError, OSError):
            pass

    def poll(self, timeout: float) -> List[Tuple[int, int]]:
        if self._parked:
            # Wake up in time for the next probe.
            due = max(0.0, self._next_probe - monotonic())
            timeout = due if timeout < 0 else min(timeout, due)
        ready = self._sel.select(None if timeout < 0 else timeout)
        out = self._probe_parked() if self._parked and monotonic() >= self._next_probe else []
        for key, mask in ready:
            ev = 0
            if mask & selectors.EVENT_READ:
                ev |= READABLE
            if mask & selectors.EVENT_WRITE:
                ev |= WRITABLE
            out.append((key.fd, ev))
        return out

    def _probe_parked(self) -> List[Tuple[int, int]]:
        self._next_probe = monotonic() + PROBE_INTERVAL
        if not hasattr(select, "poll"):
            return []
        probe = select.poll()
        for fd in self._parked:
            probe.register(fd, 0)  # POLLERR and POLLHUP are always reported
        out = []
        for fd, bits in probe.poll(0):
            ev = (ERROR if bits & (select.POLLERR | select.POLLNVAL) else 0) | \
                 (HANGUP if bits & select.POLLHUP else 0)
            if ev:
                out.append((fd, ev))
        return out

    def close(self) -> None:
        self._sel.close()

    def fileno(self) -> int:
        """The selector's fd (epoll, kqueue, devpoll); select() and poll() have none."""
        fileno = getattr(self._sel, "fileno", None)
        if fileno is None:
            raise ValueError(f"the {type(self._sel).__name__} backend has no fd of its own to nest")
        return int(fileno())

