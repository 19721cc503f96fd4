"""Serving infrastructure around the event loops.

* :mod:`netreactor.server.activation` — listening sockets inherited from a
  parent: ``fd://N`` and systemd socket activation.
"""

__all__ = ["activation"]
