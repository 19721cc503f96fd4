"""``/metrics`` served by a worker supervisor, from its own ``select`` loop.

With ``workers=N`` the counters live in N processes; Prometheus wants one
endpoint whose counters are their sum and never go back when a worker is
replaced. The supervisor is the one process that outlives every worker, so
it serves it. It has no event loop, and must not start threads (it forks:
a thread holding a lock at ``fork()`` leaves that lock held forever in the
child), so it serves the endpoint from the selector it already waits on for
its workers' status pipes: a non-blocking listening socket and a few
connections, each answered by the sans-IO core of
:class:`netreactor.metrics.MetricsHandler` (:meth:`~netreactor.metrics.MetricsHandler.answer`).
The values come from the :class:`~netreactor.metrics.Aggregator` fed by the
workers' stats lines.

Bounds: at most :data:`MAX_CLIENTS` connections (more are closed at once),
:data:`MAX_PENDING` bytes of unsent replies per connection (a client that
pipelines without reading is closed), connections idle for
``idle_timeout`` seconds are closed; the request parser bounds what it holds.
A scrape costs the supervisor one render of a few kilobytes.
"""

from __future__ import annotations

import selectors
import socket
from time import monotonic
from typing import Callable, Dict, Optional

from ..metrics import MetricsHandler, Snapshot
from ..protocols.http1 import RequestParser
from ..server.listener import Listener

__all__ = ["MetricsEndpoint", "MAX_CLIENTS", "MAX_PENDING"]

MAX_CLIENTS = 64
MAX_PENDING = 1 << 20


class _Client:
    __slots__ = ("sock", "parser", "out", "close_after", "last")

    def __init__(self, sock: socket.socket, parser: RequestParser) -> None:
        self.sock = sock
        self.parser = parser
        self.out = b""
        self.close_after = False
        self.last = monotonic()


class MetricsEndpoint:
    """Serves ``GET /metrics`` on ``listener`` with ``render(snapshot())``,
    registered on ``selector`` (whose keys' ``data`` are this endpoint's
    callbacks: call ``key.data(mask)`` for them)."""

    def __init__(self, listener: Listener, snapshot: Callable[[], Snapshot],
                 selector: selectors.BaseSelector, *, idle_timeout: float = 120.0) -> None:
        self.listener = listener
        self.handler = MetricsHandler(snapshot, idle_timeout=idle_timeout)
        self.idle_timeout = idle_timeout
        self._sel = selector
        self._clients: Dict[int, _Client] = {}
        listener.sock.setblocking(False)
        selector.register(listener.sock.fileno(), selectors.EVENT_READ, self._accept)

    def _accept(self, mask: int) -> None:
        while True:
            try:
                sock, _ = self.listener.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return  # out of descriptors, or the peer left: try again on the next event
            if len(self._clients) >= MAX_CLIENTS:
                sock.close()
                continue
            sock.setblocking(False)
            client = _Client(sock, self.handler.new_parser())
            self._clients[sock.fileno()] = client
            self._sel.register(sock.fileno(), selectors.EVENT_READ,
                               lambda mask, c=client: self._io(c, mask))

    def _io(self, client: _Client, mask: int) -> None:
        client.last = monotonic()
        if mask & selectors.EVENT_READ and not client.out:
            try:
                data = client.sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                data = None
            except OSError:
                self._drop(client)
                return
            if data is not None:
                if not data:
                    self._drop(client)
                    return
                reply, close = self.handler.answer(client.parser, data)
                client.out += reply
                client.close_after = close
                if len(client.out) > MAX_PENDING:
                    self._drop(client)
                    return
        self._send(client)

    def _send(self, client: _Client) -> None:
        if client.out:
            try:
                sent = client.sock.send(client.out)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                self._drop(client)
                return
            client.out = client.out[sent:]
        if not client.out and client.close_after:
            self._drop(client)
            return
        events = selectors.EVENT_WRITE if client.out else selectors.EVENT_READ
        key = self._sel.get_key(client.sock.fileno())
        if key.events != events:
            self._sel.modify(client.sock.fileno(), events, key.data)

    def _drop(self, client: _Client) -> None:
        fd = client.sock.fileno()
        if self._clients.pop(fd, None) is not None:
            self._sel.unregister(fd)
        client.sock.close()

    def sweep(self, now: Optional[float] = None) -> None:
        """Close the connections idle for ``idle_timeout`` seconds (call it now and then)."""
        now = monotonic() if now is None else now
        for client in [c for c in self._clients.values() if now - c.last >= self.idle_timeout]:
            self._drop(client)

    @property
    def clients(self) -> int:
        return len(self._clients)

    def close(self) -> None:
        """Close every connection (the listener is the caller's to close)."""
        for client in list(self._clients.values()):
            self._drop(client)
        try:
            self._sel.unregister(self.listener.sock.fileno())
        except (KeyError, ValueError):
            pass

    def forget(self) -> None:
        """In a forked worker: close this process's copies of the connections'
        descriptors without touching the supervisor's connections."""
        for client in self._clients.values():
            client.sock.close()
        self._clients.clear()
