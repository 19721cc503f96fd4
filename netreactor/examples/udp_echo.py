"""The UDP echo server: every datagram goes back to its sender, unchanged.

``netreactor example udp-echo --listen udp://127.0.0.1:9000`` serves it (and
``python3 -m netreactor.examples.udp_echo``). Each datagram is one ``on_traffic``:
``read()`` returns exactly that datagram and ``write()`` replies to its sender,
so the protocol is the same one line as the TCP echo. Given a stream address
it echoes that too.

With ``udp_session_timeout=SECONDS`` every peer becomes a session: ``on_open``
at its first datagram and ``on_close`` once it has been quiet for the timeout;
this handler then counts each peer's datagrams in its ``context``.

Run as a script (``python3 -m netreactor.examples.udp_echo``) it takes
``--listen``, ``--loops`` and ``--sessions SECONDS``, and ``--send TEXT --to
ADDR`` makes it a small client on ``netreactor.Client`` that prints the echoes.
"""

from __future__ import annotations

import argparse
import logging
import queue
import sys
from typing import Any, List, Optional

import netreactor as nr

from ..handler import EventHandler

__all__ = ["UDPEcho", "send", "main"]


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


DEFAULT_LISTEN = "udp://127.0.0.1:9000"

class _Collect(nr.EventHandler):
    """Client side: hand every datagram received to the waiting thread."""

    def __init__(self) -> None:
        self.received: queue.Queue[bytes] = queue.Queue()

    def on_traffic(self, conn: Any) -> None:  # a DatagramConn (EventHandler names the stream Conn)
        self.received.put(conn.read())


def send(address: str, messages: List[bytes], timeout: float = 2.0) -> List[bytes]:
    """Send each message as one datagram to ``address``; return the replies in
    the order they came (``TimeoutError`` if one does not come in time)."""
    collect = _Collect()
    with nr.Client(collect) as client:
        conn = client.dial(address, timeout=timeout)
        replies = []
        for message in messages:
            conn.async_write(message)
            try:
                replies.append(collect.received.get(timeout=timeout))
            except queue.Empty:
                raise TimeoutError(f"no echo from {address} within {timeout}s") from None
        return replies


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description="UDP echo server on netreactor (and a tiny client).")
    ap.add_argument("--listen", "-l", action="append", metavar="ADDR",
                    help=f"address to serve, repeatable (default {DEFAULT_LISTEN})")
    ap.add_argument("--loops", type=int, default=1, help="event loops (default %(default)s)")
    ap.add_argument("--sessions", type=float, metavar="SECONDS",
                    help="per-peer sessions closed after SECONDS of silence")
    ap.add_argument("--send", action="append", metavar="TEXT",
                    help="client mode: send TEXT as one datagram (repeatable) and print the echo")
    ap.add_argument("--to", default=DEFAULT_LISTEN, help="client mode: server address "
                                                         "(default %(default)s)")
    ap.add_argument("--log-level", default="INFO", help="logging level (default %(default)s)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(message)s")
    if args.send:
        for reply in send(args.to, [text.encode() for text in args.send]):
            print(reply.decode(errors="replace"))
        return 0
    options = {"loops": args.loops}
    if args.sessions is not None:
        options["udp_session_timeout"] = args.sessions
    nr.run(UDPEcho(), *(args.listen or [DEFAULT_LISTEN]), **options)
    return 0


if __name__ == "__main__":
    sys.exit(main())
