"""The echo server: every byte received is written back."""

from __future__ import annotations

from ..handler import EventHandler


class Echo(EventHandler):
    """Write back whatever arrives. The whole protocol is one line."""

    def on_traffic(self, conn):
        conn.write(conn.read())
