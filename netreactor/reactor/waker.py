"""Cross-thread wake-up of a sleeping event loop.

``os.eventfd`` where it exists (one fd, an 8-byte counter the kernel folds, so
any number of wakes costs one read), a non-blocking pipe elsewhere.
"""

from __future__ import annotations

import os

__all__ = ["Waker"]


class Waker:
    """A file descriptor that becomes readable when :meth:`wake` is called."""

    __slots__ = ("fd", "_wfd", "_eventfd")

    def __init__(self) -> None:
        if hasattr(os, "eventfd"):
            self.fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
            self._wfd = self.fd
            self._eventfd = True
        else:
            r, w = os.pipe()
            os.set_blocking(r, False)
            os.set_blocking(w, False)
            self.fd, self._wfd, self._eventfd = r, w, False

    def wake(self) -> None:
        """Make the fd readable. Safe from any thread; never blocks."""
        try:
            if self._eventfd:
                os.eventfd_write(self._wfd, 1)
            else:
                os.write(self._wfd, b"\0")
        except (BlockingIOError, OSError):
            # Counter saturated / pipe full: the fd is readable already.
            pass

    def drain(self) -> None:
        """Consume pending wakes (called by the loop when the fd is readable)."""
        try:
            if self._eventfd:
                os.eventfd_read(self.fd)
            else:
                while os.read(self.fd, 4096):
                    pass
        except (BlockingIOError, OSError):
            pass

    def close(self) -> None:
        for fd in {self.fd, self._wfd}:
            try:
                os.close(fd)
            except OSError:
                pass
