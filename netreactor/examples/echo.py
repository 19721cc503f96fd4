"""The echo server: every byte received is written back."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..handler import EventHandler

if TYPE_CHECKING:
    from ..stream.conn import Conn


class Echo(EventHandler):
    """Write back whatever arrives. The whole protocol is one line."""

    def on_traffic(self, conn: Conn) -> None:
        conn.write(conn.read())
