#!/usr/bin/env python3
"""A UDP echo server: every datagram goes back to its sender, unchanged.

    python3 examples/udp_echo.py                                  # udp://127.0.0.1:9000
    python3 examples/udp_echo.py --listen udp://127.0.0.1:9000 --loops 4
    python3 examples/udp_echo.py --sessions 30                    # per-peer sessions
    python3 examples/udp_echo.py --send "hello" --to udp://127.0.0.1:9000   # a client

The handler (``netreactor.examples.udp_echo.UDPEcho``, also served by
``netreactor example udp-echo``) is the TCP echo's one line: each datagram is
one ``on_traffic``, ``read()`` returns exactly that datagram and ``write()``
replies to its sender. With ``--loops N`` every loop reads the address through
its own SO_REUSEPORT socket and the kernel spreads the peers over them. With
``--sessions SECONDS`` each peer is a session (``on_open``, its own
``context``, ``on_close`` after SECONDS of silence).

``--send`` is a small client on ``netreactor.Client``: it dials the server,
sends one datagram per ``--send`` and prints the echoes.
"""

from __future__ import annotations

import argparse
import logging
import os
import queue
import sys
from typing import List, Optional

try:
    import netreactor as nr
except ImportError:  # run from a source checkout without installing
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import netreactor as nr
from netreactor.examples.udp_echo import UDPEcho

DEFAULT_LISTEN = "udp://127.0.0.1:9000"

__all__ = ["UDPEcho", "send", "main"]


class _Collect(nr.EventHandler):
    """Client side: hand every datagram received to the waiting thread."""

    def __init__(self) -> None:
        self.received: "queue.Queue[bytes]" = queue.Queue()

    def on_traffic(self, conn) -> None:
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


def main(argv: Optional[list] = None) -> int:
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
