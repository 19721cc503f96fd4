"""Sans-IO protocol parsers: bytes in, messages out, no sockets.

* :mod:`netreactor.protocols.resp` — RESP2, the Redis protocol (commands and replies).
* :mod:`netreactor.protocols.http1` — HTTP/1.1 requests (keep-alive, pipelining,
  ``Content-Length`` and chunked bodies) and response helpers.
* :mod:`netreactor.protocols.proxy` — the PROXY protocol v1/v2 header that load
  balancers put before a connection's bytes (HAProxy ``send-proxy``).

They are usable from any event loop or none; the example servers in
:mod:`netreactor.examples` drive them from ``on_traffic``.
"""

__all__ = ["resp", "http1", "proxy"]
