"""The Linux backend: ``select.epoll`` driven directly.

Level-triggered by default: a socket left with unread data is reported again
on the next ``epoll_wait``, so a handler that reads a little at a time loses
nothing. Edge-triggered registrations (the :data:`EDGE` flag) are reported only
when new data arrives; the connection layer then drains until ``EAGAIN``.

Listeners shared by several loops are registered with ``EPOLLEXCLUSIVE`` so
that one incoming connection wakes one loop rather than all of them.
"""

from __future__ import annotations

import select
__all__ = ["EpollPoller"]


class EpollPoller:
    name = "epoll"

    def __init__(self) -> None:
        self._ep = select.epoll()
        # Bound methods cached once: the loop calls poll() every iteration.
        self.register = self._ep.register
        self.modify = self._ep.modify
        # poll(timeout) straight from the C method: no Python frame per loop iteration.
        self.poll = self._ep.poll

    def unregister(self, fd: int) -> None:
        try:
            self._ep.unregister(fd)
        except (OSError, ValueError):
            # Already closed fds are dropped from the epoll set by the kernel.
            pass

    def close(self) -> None:
        self._ep.close()

    def fileno(self) -> int:
        return self._ep.fileno()
