"""The read half of the connection API, shared by stream and datagram connections.

Inbound bytes are ``self._in[self._ipos:self._iend]``: ``_in`` is the ``bytes``
object a socket read returned (or, for a large accumulating frame, a view of a
pooled block, then ``_block`` is that block). Everything handed out is ``bytes``
that stays valid after the callback returns.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

if TYPE_CHECKING:  # pragma: no cover
    from ..reactor import EventLoop

__all__ = ["Inbound"]

_EMPTY = b""


class Inbound:
    """``read`` / ``peek`` / ``discard`` / ``next`` over the bytes received so far.

    A mixin: the class using it has these slots (declared here for the type
    checker only; ``__slots__`` stays empty so the mixin adds no layout).
    """

    if TYPE_CHECKING:  # pragma: no cover
        _in: Any
        _ipos: int
        _iend: int
        _block: Optional[bytearray]
        _loop: EventLoop
    else:
        __slots__ = ()  # the slots are the using class's

    @property
    def inbound_buffered(self) -> int:
        """Bytes received and not yet consumed."""
        return self._iend - self._ipos

    def read(self, n: int = -1) -> bytes:
        """Consume and return up to ``n`` buffered bytes (all of them when ``n < 0``)."""
        pos = self._ipos
        if n < 0 or pos + n >= self._iend:
            data = self._in
            if pos or self._block is not None:
                data = bytes(data[pos:self._iend])
                if self._block is not None:
                    self._release_block()
                self._ipos = 0
            # else: the bytes the socket read returned, whole — handed over without a
            # copy (and _ipos is 0 already: one store fewer on the per-message path)
            self._in = b""  # the empty bytes singleton, as a constant: no global lookup
            self._iend = 0
            return data  # type: ignore[no-any-return]
        stop = pos + n
        self._ipos = stop
        return bytes(self._in[pos:stop])

    def peek(self, n: int = -1) -> bytes:
        """Return up to ``n`` buffered bytes (all when ``n < 0``) without consuming them."""
        pos = self._ipos
        end = self._iend
        stop = end if n < 0 or pos + n >= end else pos + n
        return bytes(self._in[pos:stop])

    def discard(self, n: int = -1) -> int:
        """Drop up to ``n`` buffered bytes (all when ``n < 0``); return how many were dropped."""
        pos = self._ipos
        end = self._iend
        stop = end if n < 0 or pos + n >= end else pos + n
        if stop == end:
            self._consumed_all()
        else:
            self._ipos = stop
        return stop - pos

    def next(self, n: int) -> Optional[bytes]:
        """Consume and return exactly ``n`` bytes, or ``None`` (consuming nothing) if fewer are buffered.

        ``n < 0`` behaves like :meth:`read`.
        """
        if n < 0:
            return self.read()
        stop = self._ipos + n
        if stop > self._iend:
            return None
        data = bytes(self._in[self._ipos:stop])
        if stop == self._iend:
            self._consumed_all()
        else:
            self._ipos = stop
        return data

    def _consumed_all(self) -> None:
        self._ipos = self._iend = 0
        self._in = _EMPTY
        if self._block is not None:
            self._release_block()

    def _release_block(self) -> None:
        self._loop.pool.put(self._block)  # type: ignore[arg-type]
        self._block = None
