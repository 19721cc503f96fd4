"""An HTTP/1.1 server: ``netreactor example http``.

Routes of the example (the TechEmpower "plaintext" and "json" tests, plus one
to see request bodies arrive):

* ``GET /plaintext`` → ``Hello, World!`` (``text/plain``)
* ``GET /json`` → ``{"message":"Hello, World!"}`` (``application/json``,
  serialised for each request as TechEmpower requires)
* ``POST /echo`` → the request body back (``application/octet-stream``)
* ``HEAD`` of the GET routes; another method on a known path → 405; any other
  path → 404.

Protocol behaviour (parsing is :mod:`netreactor.protocols.http1`): keep-alive,
pipelining (all responses of one read leave in one write), ``Content-Length``
and chunked request bodies, ``Expect: 100-continue``, ``Connection: close``,
HTTP/1.0 clients (closed after the response unless they ask for keep-alive).
Malformed requests get 400, heads over the limit 431 (414 for a long request
line), bodies over the limit 413, unknown methods 501, HTTP/2+ request lines
505; the connection is closed after those. Every response has ``Date``
(formatted once per second), ``Server`` and ``Content-Length``.

Timeouts: a request must arrive whole within ``header_timeout`` (10 s) of its
first byte, or the client gets 408 and is closed (a slowloris client that
trickles a head never holds a connection longer); a connection idle between
requests for ``keep_alive_timeout`` (5 s, uvicorn's) is closed. The latter is
the connection's idle timeout: the engine's ``idle_timeout`` when they agree
(``netreactor example http`` makes them agree), else set per connection.

Memory per connection is bounded by the parser's limits (``max_head`` of an
unfinished head, ``max_body`` of an unfinished body) and, on the way out, by
the engine's write back-pressure: a pipelining client that does not read stops
being read, and is closed past ``write_buffer_cap``.

Hot path: a static route's complete response (status line, headers, body) is
built once per second per connection mode, so answering ``GET /plaintext`` is
one dict lookup after parsing.

``httptools`` is not needed: the parser is pure Python, with a C head splitter
when the optional speedups are built (see :mod:`netreactor.protocols.http1`
and docs/protocols.md for the measurements against httptools).
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any, Callable, Dict, Iterable, Optional, Sequence, Set, Tuple, Union

from ..handler import Action, EventHandler
from ..protocols.http1 import (DEFAULT_MAX_BODY, DEFAULT_MAX_HEAD, DEFAULT_MAX_HEADERS,
                               DEFAULT_MAX_REQUEST_LINE, REASONS, HTTPError, Request,
                               RequestParser, encode_response, http_date)

__all__ = ["HTTPServer", "StaticRoute", "Response", "example_routes", "HTTPExample"]

HeaderList = Sequence[Tuple[Union[str, bytes], Union[str, bytes]]]
#: What a route function returns: (status, headers, body). Content-Length, Date
#: and Server are added by the server.
Response = Tuple[int, HeaderList, bytes]
RouteFunction = Callable[[Request], Response]

_logger = logging.getLogger("netreactor")
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_KEEP_ALIVE_10 = ((b"Connection", b"keep-alive"),)


class StaticRoute:
    """A route whose response never changes but for its Date: built once per second."""

    __slots__ = ("content_type", "body", "methods")

    def __init__(self, content_type: Union[str, bytes], body: Union[str, bytes],
                 methods: Iterable[Union[str, bytes]] = (b"GET", b"HEAD")) -> None:
        self.content_type = content_type.encode("latin-1") if isinstance(content_type, str) else content_type
        self.body = body.encode() if isinstance(body, str) else body
        self.methods = frozenset(m.encode("ascii") if isinstance(m, str) else m for m in methods)


class _FunctionRoute:
    __slots__ = ("function", "methods")

    def __init__(self, function: RouteFunction, methods: Iterable[bytes]) -> None:
        self.function = function
        self.methods = frozenset(methods)


def _json_route(request: Request) -> Response:
    return 200, ((b"Content-Type", b"application/json"),), \
        json.dumps({"message": "Hello, World!"}, separators=(",", ":")).encode()


def _echo_route(request: Request) -> Response:
    return 200, ((b"Content-Type", b"application/octet-stream"),), request.body


def example_routes() -> Dict[bytes, Any]:
    """The routes of ``netreactor example http``."""
    return {
        b"/plaintext": StaticRoute(b"text/plain", b"Hello, World!"),
        b"/json": _FunctionRoute(_json_route, (b"GET", b"HEAD")),
        b"/echo": _FunctionRoute(_echo_route, (b"POST", b"PUT")),
    }


class HTTPServer(EventHandler):
    """HTTP/1.1 handler serving ``routes``: ``{path: StaticRoute | function}``.

    A function route takes the :class:`~netreactor.protocols.http1.Request` and
    returns ``(status, headers, body)``; pass ``(function, methods)`` to accept
    methods other than GET and HEAD. Limits are those of
    :class:`~netreactor.protocols.http1.RequestParser`.
    """

    def __init__(self, routes: Optional[Dict[Union[str, bytes], Any]] = None, *,
                 max_head: int = DEFAULT_MAX_HEAD, max_body: int = DEFAULT_MAX_BODY,
                 max_headers: int = DEFAULT_MAX_HEADERS,
                 max_request_line: int = DEFAULT_MAX_REQUEST_LINE,
                 server_name: Union[str, bytes] = b"netreactor",
                 header_timeout: Optional[float] = 10.0,
                 keep_alive_timeout: Optional[float] = 5.0) -> None:
        self._limits: Dict[str, Any] = dict(max_head=max_head, max_body=max_body, max_headers=max_headers,
                                            max_request_line=max_request_line)
        RequestParser(**self._limits)  # validate now rather than per connection
        self.server_name = server_name.encode("latin-1") if isinstance(server_name, str) else server_name
        self.routes: Dict[bytes, Any] = {}
        for path, route in (example_routes() if routes is None else routes).items():
            key = path.encode("latin-1") if isinstance(path, str) else path
            if isinstance(route, (StaticRoute, _FunctionRoute)):
                self.routes[key] = route
            elif isinstance(route, tuple):
                function, methods = route
                self.routes[key] = _FunctionRoute(
                    function, (m.encode("ascii") if isinstance(m, str) else m for m in methods))
            elif callable(route):
                self.routes[key] = _FunctionRoute(route, (b"GET", b"HEAD"))
            else:
                raise ValueError(f"route {path!r}: expected a StaticRoute or a function, got {route!r}")
        self._second = -1
        self._date = b""
        # path → the complete response to "GET path" on a keep-alive HTTP/1.1
        # connection, for static routes; rebuilt when the second changes.
        self._fast: Dict[bytes, bytes] = {}
        # Checked request heads shared by all connections (see RequestParser).
        self._head_cache: Dict[bytes, Any] = {}
        for name, value in (("header_timeout", header_timeout), ("keep_alive_timeout", keep_alive_timeout)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or not 0 <= value < float("inf")):
                raise ValueError(f"{name} must be a number of seconds >= 0 or None, got {value!r}")
        self.header_timeout = header_timeout or None
        self.keep_alive_timeout = keep_alive_timeout or None
        # Connections with a request on its way (its header timeout armed).
        self._arriving: Set[Any] = set()
        self._own_idle = False  # set per connection: the engine's idle_timeout differs

    # ------------------------------------------------------------------ callbacks

    def on_boot(self, engine: Any) -> None:
        idle = getattr(getattr(engine, "options", None), "idle_timeout", None) or None
        self._own_idle = idle != self.keep_alive_timeout
        return None

    def on_open(self, conn: Any) -> None:
        conn.context = RequestParser(**self._limits, head_cache=self._head_cache)
        if self._own_idle:
            conn.set_idle_timeout(self.keep_alive_timeout)
        return None

    def on_close(self, conn: Any, err: Optional[BaseException]) -> None:
        self._arriving.discard(conn)
        return None

    def on_traffic(self, conn: Any) -> Optional[Action]:
        parser = conn.context
        error = None
        try:
            requests = parser.feed(conn.read())
        except HTTPError as exc:
            requests, error = exc.requests, exc
        second = int(time.time())
        if second != self._second:
            self._new_second(second)
        action = None
        if len(requests) == 1 and error is None:
            request = requests[0]
            response = None
            if request.keep_alive and request.method == b"GET" and request.version == b"1.1":
                response = self._fast.get(request.target)
            if response is None:
                response = self._respond(request)
                if not request.keep_alive:
                    action = Action.CLOSE
            conn.write(response)
        elif requests or error is not None:
            fast = self._fast
            out = []
            for request in requests:
                response = None
                if request.keep_alive and request.method == b"GET" and request.version == b"1.1":
                    response = fast.get(request.target)
                if response is None:
                    response = self._respond(request)
                    if not request.keep_alive:
                        out.append(response)
                        action = Action.CLOSE
                        error = None  # what follows a closing request is not answered
                        break
                out.append(response)
            if error is not None:
                out.append(self._error_response(error))
                action = Action.CLOSE
            conn.write(b"".join(out))
        elif self.header_timeout:  # nothing complete yet: a request is on its way
            self._request_started(conn)
        if requests and self._arriving:
            self._request_done(conn)
        if parser.expect_continue and action is None:
            parser.expect_continue = False
            conn.write(_CONTINUE)
        return action

    # ------------------------------------------------------------------ timeouts

    def _request_started(self, conn: Any) -> None:
        if conn not in self._arriving:
            self._arriving.add(conn)
            conn.set_read_timeout(self.header_timeout, on_timeout=self._request_timeout)

    def _request_done(self, conn: Any) -> None:
        # A later request already on its way is timed from the next read.
        if conn in self._arriving:
            self._arriving.discard(conn)
            conn.set_read_timeout(None)

    def _request_timeout(self, conn: Any) -> None:
        self._arriving.discard(conn)
        conn.write(encode_response(408, ((b"Content-Type", b"text/plain"),), b"408 Request Timeout\n",
                                   date=self._date, server=self.server_name, keep_alive=False))

    # ------------------------------------------------------------------ responses

    def _new_second(self, second: int) -> None:
        self._second = second
        self._date = date = http_date(second)
        server = self.server_name
        self._fast = {
            path: encode_response(200, ((b"Content-Type", route.content_type),), route.body,
                                  date=date, server=server)
            for path, route in self.routes.items()
            if isinstance(route, StaticRoute) and b"GET" in route.methods
        }

    def _respond(self, request: Request) -> bytes:
        """The response to any request the fast path did not answer."""
        route = self.routes.get(request.path)
        headers: Tuple[Tuple[bytes, bytes], ...]
        head_only = request.method == b"HEAD"
        if route is None:
            status, headers, body = 404, ((b"Content-Type", b"text/plain"),), b"Not Found"
        elif request.method not in route.methods:
            allow = b", ".join(sorted(route.methods))
            status, headers, body = 405, ((b"Content-Type", b"text/plain"), (b"Allow", allow)), \
                b"Method Not Allowed"
        elif isinstance(route, StaticRoute):
            status, headers, body = 200, ((b"Content-Type", route.content_type),), route.body
        else:
            try:
                status, headers, body = route.function(request)
            except Exception:
                # A failing route costs its request a 500, not the connection.
                _logger.exception("route %r failed", request.path)
                status, headers, body = 500, ((b"Content-Type", b"text/plain"),), b"Internal Server Error"
        if request.keep_alive and request.version == b"1.0":
            headers = tuple(headers) + _KEEP_ALIVE_10
        return encode_response(status, headers, body, date=self._date, server=self.server_name,
                               keep_alive=request.keep_alive, head_only=head_only)

    def _error_response(self, error: HTTPError) -> bytes:
        body = f"{error.status} {REASONS.get(error.status, '')}: {error.detail}\n".encode("latin-1", "replace")
        return encode_response(error.status, ((b"Content-Type", b"text/plain"),), body,
                               date=self._date, server=self.server_name, keep_alive=False)


def HTTPExample(**kwargs: Any) -> HTTPServer:
    """Factory used by ``netreactor example http`` (keywords: its flags)."""
    return HTTPServer(**kwargs)
