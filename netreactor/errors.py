"""Exceptions netreactor raises, or hands to ``on_close`` and callbacks."""

from __future__ import annotations

__all__ = [
    "NetreactorError",
    "ClosedError",
    "PeerClosedError",
    "BufferOverflowError",
    "EngineStoppedError",
    "IdleTimeoutError",
    "ReadTimeoutError",
    "one_line",
]


class NetreactorError(Exception):
    """Base class of netreactor's own errors."""


class ClosedError(NetreactorError, ConnectionError):
    """The connection is already closed; the operation did nothing."""

    def __init__(self, msg: str = "connection is closed") -> None:
        super().__init__(msg)


class PeerClosedError(NetreactorError, ConnectionError):
    """The peer closed its side of the connection (orderly EOF)."""

    def __init__(self, msg: str = "connection closed by peer") -> None:
        super().__init__(msg)


class BufferOverflowError(NetreactorError, BufferError):
    """A per-connection buffer passed its hard cap; the connection was closed."""


class EngineStoppedError(NetreactorError, RuntimeError):
    """The engine (or client) is stopped; the request cannot be served."""


class IdleTimeoutError(NetreactorError, TimeoutError):
    """No traffic in either direction for the connection's idle timeout
    (``idle_timeout``, ``conn.set_idle_timeout``): it was closed."""


class ReadTimeoutError(NetreactorError, TimeoutError):
    """A read timeout (``conn.set_read_timeout``) passed before it was cleared:
    the connection was closed. Preambles' timeouts (PROXY header, TLS
    handshake) are this too."""


def one_line(exc: BaseException) -> str:
    """``"ValueError: the first line of its message"``, for one-line reports."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
