"""The UDP echo server: every datagram goes back to its sender, unchanged.

``netreactor example udp-echo --listen udp://127.0.0.1:9000`` serves it (the
script ``examples/udp_echo.py`` too). Each datagram is one ``on_traffic``:
``read()`` returns exactly that datagram and ``write()`` replies to its sender,
so the protocol is the same one line as the TCP echo. Given a stream address
it echoes that too.

With ``udp_session_timeout=SECONDS`` every peer becomes a session: ``on_open``
at its first datagram and ``on_close`` once it has been quiet for the timeout;
this handler then counts each peer's datagrams in its ``context``.
"""

from __future__ import annotations

from typing import Any, Optional

from ..handler import EventHandler


class UDPEcho(EventHandler):
    """Write each datagram back to its sender; with sessions, count them per peer."""

    def on_open(self, conn: Any) -> None:
        conn.context = 0  # datagrams echoed to this peer (sessions only)

    def on_traffic(self, conn: Any) -> None:
        conn.write(conn.read())
        if conn.context is not None:
            conn.context += 1

    def on_close(self, conn: Any, err: Optional[BaseException]) -> None:
        pass  # a session ended: idle (TimeoutError), closed (None) or shut down
