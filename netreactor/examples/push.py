"""A server that pushes a line to every connected client on each tick.

``netreactor example push --ticker`` serves it, and so does
``python3 -m netreactor.examples.push [--interval SECONDS]``. Clients only listen: whatever they send is
discarded.

``on_tick`` runs on the engine's primary loop (the main reactor with several
loops, else the only loop), while connections belong to whichever loop
adopted them. A connection is written directly only from its own loop's
thread; for the others the handler uses ``async_write``, which is safe from any
thread and runs the write on the owning loop. The handler remembers, per
connection, the thread of the loop that opened it (``on_open`` runs there).

A client that does not read is not pushed to once it owes more than
``max_backlog`` bytes (checked for the connections of the ticking loop, the only
ones whose ``outbound_buffered`` may be read there); elsewhere such a client is
closed by the engine when it passes ``write_buffer_cap``.
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading
import time
from typing import Any, Dict, List, Optional

import netreactor as nr

from ..handler import EventHandler

#: Seconds between pushes.
DEFAULT_INTERVAL = 1.0


class PushOnTick(EventHandler):
    """Push ``b"tick N UNIXTIME\\n"`` to every open connection every ``interval`` seconds."""

    def __init__(self, interval: float = DEFAULT_INTERVAL, max_backlog: int = 64 * 1024) -> None:
        if not interval > 0:
            raise ValueError(f"interval must be > 0 seconds, got {interval!r}")
        self.interval = interval
        self.max_backlog = max_backlog
        #: Ticks so far, and pushes skipped because a client owed too much.
        self.ticks = 0
        self.skipped = 0
        # conn -> ident of the thread of the loop that owns it. on_open/on_close
        # run on every loop, on_tick on the primary one: hence the lock.
        self._conns: Dict[Any, int] = {}
        self._lock = threading.Lock()

    def on_boot(self, engine: Any) -> None:
        if not engine.options.ticker:
            engine.logger.warning("push example: ticker is off, so nothing will be pushed "
                                  "(pass ticker=True, or --ticker on the command line)")

    def on_open(self, conn: Any) -> None:
        with self._lock:
            self._conns[conn] = threading.get_ident()

    def on_traffic(self, conn: Any) -> None:
        conn.discard()  # clients only listen

    def on_close(self, conn: Any, err: Optional[BaseException]) -> None:
        with self._lock:
            self._conns.pop(conn, None)

    def on_tick(self) -> float:
        self.ticks += 1
        message = b"tick %d %.3f\n" % (self.ticks, time.time())
        me = threading.get_ident()
        with self._lock:
            targets = list(self._conns.items())
        for conn, owner in targets:
            if owner == me:
                # Our own loop: a direct write, gathered with the others into
                # one send per connection at the end of this loop iteration.
                if conn.outbound_buffered > self.max_backlog:
                    self.skipped += 1
                    continue
                conn.write(message)
            else:
                conn.async_write(message)
        return self.interval


DEFAULT_LISTEN = "tcp://127.0.0.1:9000"

def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description="Push a 'tick N TIME' line to every client on each tick.")
    ap.add_argument("--listen", "-l", action="append", metavar="ADDR",
                    help=f"address to serve, repeatable (default {DEFAULT_LISTEN})")
    ap.add_argument("--loops", type=int, default=1, help="event loops (default %(default)s)")
    ap.add_argument("--interval", type=float, default=1.0, help="seconds between pushes "
                                                                "(default %(default)s)")
    ap.add_argument("--log-level", default="INFO", help="logging level (default %(default)s)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(message)s")
    nr.run(PushOnTick(args.interval), *(args.listen or [DEFAULT_LISTEN]), loops=args.loops, ticker=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
