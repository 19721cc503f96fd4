"""The PROXY protocol on accepted connections: a :class:`~netreactor.stream.conn.Preamble`
that reads the header a load balancer (HAProxy ``send-proxy``/``send-proxy-v2``,
nginx ``proxy_protocol on``, a cloud NLB) sends before the client's bytes.

What it does, in order:

1. **Who may send one.** A peer outside ``proxy_allow_from`` is refused at
   once, before anything is read (:class:`~netreactor.errors.RefusedError`,
   counted as ``refused.proxy``); Unix-socket peers are always allowed (the
   socket file's permissions decide who reaches it), as in gunicorn.
2. **The header.** Bytes are read (512 at a time, until ``EAGAIN``, as
   edge-triggered polling needs) and fed to the sans-IO
   :class:`~netreactor.protocols.proxy.ProxyParser`, which refuses a
   malformed, oversized or wrong-version header at its first impossible byte.
   A peer that closes or fails first costs its connection only.
3. **The header timeout.** A header that is not complete ``timeout`` seconds
   after the connection was accepted closes it (a
   :class:`~netreactor.errors.ReadTimeoutError`, counted as ``closed.timeout``):
   a slow or silent peer cannot hold a connection. It is the connection's read
   timeout (``conn.set_read_timeout``), on the loop's timing wheel, which
   ``preamble_done``/``preamble_failed`` clear.
4. **Done.** For a PROXY header, ``conn.remote_addr``/``conn.local_addr``
   become the original client's and the address it dialled
   (:meth:`Conn.set_addresses`); LOCAL (health checks), UNKNOWN and UNSPEC keep
   the real ones. The header and the proxy's own address stay readable
   (``conn.proxy_header``, ``conn.proxy_peer``). The bytes read past the header
   go to the next preamble (a TLS handshake) or become the handler's first input.

Failures never reach the handler: it meets only connections whose header was valid.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Optional

from ..errors import PeerClosedError, ReadTimeoutError, RefusedError
from ..protocols.proxy import AllowList, ProxyParser, ProxyProtocolError

if TYPE_CHECKING:  # pragma: no cover
    from .conn import Conn

__all__ = ["ProxyPreamble", "proxy_preamble_factory", "READ_SIZE"]

#: Bytes asked for per read while the header is incomplete: more than a v1
#: header (107) and most v2 ones; a longer header takes several reads.
READ_SIZE = 512


def _show(peer: Any) -> str:
    if isinstance(peer, tuple) and len(peer) >= 2:
        host = f"[{peer[0]}]" if ":" in str(peer[0]) else peer[0]
        return f"{host}:{peer[1]}"
    return repr(peer) if peer else "a Unix socket peer"


class ProxyPreamble:
    """Reads one PROXY protocol header (see the module docstring).

    ``mode`` is ``"v1"``, ``"v2"`` or ``"auto"``; ``allow`` who may send it;
    ``timeout`` seconds for the whole header; ``peer`` the address accept()
    returned (the proxy's).
    """

    __slots__ = ("_parser", "_allow", "_timeout", "_peer", "_fed")

    def __init__(self, mode: str, allow: AllowList, timeout: float, peer: Any) -> None:
        self._parser: Optional[ProxyParser] = ProxyParser(mode)
        self._allow = allow
        self._timeout = timeout
        self._peer = peer
        self._fed = 0  # bytes read through the connection's transport (counted there)

    # ------------------------------------------------------------------ Preamble

    def begin(self, conn: Conn, initial: bytes) -> None:
        if not self._allow.allows(self._peer):
            self._fail(conn, RefusedError(
                "proxy", f"{_show(self._peer)} may not send a PROXY protocol header (proxy_allow_from)"))
            return
        self._arm(conn)
        if initial:
            self._feed(conn, initial)

    def handle_io(self, conn: Conn, events: int) -> None:
        read = conn.transport.read
        while self._parser is not None:
            try:
                data = read(conn.fd, READ_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self._fail(conn, exc)
                return
            if not data:
                self._fail(conn, PeerClosedError("the peer closed before its PROXY protocol header was complete"))
                return
            self._feed(conn, data)

    def abandon(self, conn: Conn) -> None:
        self._parser = None  # the connection's close drops its read timeout

    # ------------------------------------------------------------------ parsing

    def _feed(self, conn: Conn, data: bytes) -> None:
        parser = self._parser
        assert parser is not None
        self._fed += len(data)
        try:
            header = parser.feed(data)
        except ProxyProtocolError as exc:
            self._fail(conn, RefusedError("proxy", f"{_show(self._peer)}: {exc}"))
            return
        if header is None:
            return  # incomplete: wait for more (or the timeout)
        self._parser = None
        if header.proxied:
            conn.set_addresses(header.source, header.destination)
        conn.set_proxy(header, self._peer)
        conn.exclude_received(self._fed - len(parser.rest))  # the header is not application bytes
        conn.preamble_done(parser.rest)

    def _fail(self, conn: Conn, err: BaseException) -> None:
        self._parser = None
        conn.preamble_failed(err, self._fed)

    # ------------------------------------------------------------------ the header timeout

    def _arm(self, conn: Conn) -> None:
        # On the loop's timing wheel, as every connection timeout (no heap timer
        # per connection); preamble_done()/preamble_failed() clear it.
        conn.set_read_timeout(self._timeout, on_timeout=self._expired)

    def _expired(self, conn: Conn) -> None:
        if self._parser is not None:
            got = self._parser.buffered
            self._fail(conn, ReadTimeoutError(
                f"{_show(self._peer)}: no complete PROXY protocol header within {self._timeout:g} s "
                f"({got} byte{'' if got == 1 else 's'} received)"))


def proxy_preamble_factory(options: Any, transport: str) -> Optional[Callable[[Any], ProxyPreamble]]:
    """``factory(peer) -> ProxyPreamble`` for a stream listener of ``transport``
    (``"tcp"`` or ``"unix"``) under ``options``; None when ``proxy_protocol`` is off."""
    mode = options.proxy_protocol
    if mode == "off" or transport not in ("tcp", "unix"):
        return None
    allow = AllowList(options.proxy_allow_from)
    timeout = options.proxy_header_timeout

    def factory(peer: Any) -> ProxyPreamble:
        return ProxyPreamble(mode, allow, timeout, peer)

    return factory
