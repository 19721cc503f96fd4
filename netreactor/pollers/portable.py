"""The portable backend on the standard ``selectors`` module.

This is what macOS and the BSDs (kqueue), and other platforms (poll/select)
get. It is level-triggered only. Results are translated to the epoll-style
bits the loop understands.

``selectors`` refuses a registration with no events; a connection whose
interest drops to nothing (paused reading, nothing to write) is parked —
removed from the selector — and put back when interest returns.
"""

from __future__ import annotations

import selectors
from typing import Dict, List, Tuple

from . import EDGE, ERROR, EXCLUSIVE, HANGUP, READABLE, WRITABLE

__all__ = ["SelectorsPoller"]

_MASK = READABLE | WRITABLE


class SelectorsPoller:
    name = "selectors"

    def __init__(self) -> None:
        self._sel = selectors.DefaultSelector()
        self._parked: Dict[int, int] = {}

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
        ready = self._sel.select(None if timeout < 0 else timeout)
        out = []
        for key, mask in ready:
            ev = 0
            if mask & selectors.EVENT_READ:
                ev |= READABLE
            if mask & selectors.EVENT_WRITE:
                ev |= WRITABLE
            out.append((key.fd, ev))
        return out

    def close(self) -> None:
        self._sel.close()


# ERROR and HANGUP never appear here: selectors folds them into readiness, and
# the connection layer learns the cause from recv()/send() — the same path
# epoll's ERROR/HANGUP bits take.
del ERROR, HANGUP
