"""The server layer: listeners and accepting (:mod:`.listener`, :mod:`.acceptor`),
sockets inherited from a parent (:mod:`.activation`: ``fd://N``, systemd
socket activation), load balancing, UDP endpoints, and :class:`Server`, one
process's whole server. It builds on the stream and reactor layers; the
public :class:`netreactor.Engine` drives it."""

from .server import Server

__all__ = ["Server"]
