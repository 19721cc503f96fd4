"""The stream layer: connections (:class:`Conn`), their read half, their
transports, and the socket options they set. It builds on the reactor layer
and knows nothing of engines, listeners or clients."""

from .conn import Conn, EdgeConn, Pause, StreamContext
from .transport import PLAIN_TCP, PLAIN_UNIX, PlainTransport, Transport, for_socket

__all__ = ["Conn", "EdgeConn", "Pause", "StreamContext", "Transport", "PlainTransport",
           "PLAIN_TCP", "PLAIN_UNIX", "for_socket"]
