#!/usr/bin/env python3
"""A server that pushes a line to all its clients on each tick.

    python3 examples/push_on_tick.py                       # tcp://127.0.0.1:9000, every second
    python3 examples/push_on_tick.py --interval 0.1 --loops 4
    nc 127.0.0.1 9000                                      # tick 1 1700000000.123 ...

The handler (``netreactor.examples.push.PushOnTick``, also served by
``netreactor example push --ticker``) keeps the open connections, and its
``on_tick`` (``ticker=True``) writes to each of them. ``on_tick`` runs on the
engine's primary loop; connections on that loop are written directly, those
owned by other loops (``--loops`` > 1) through ``async_write``, which is safe
from any thread.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Optional

try:
    import netreactor as nr
except ImportError:  # run from a source checkout without installing
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import netreactor as nr
from netreactor.examples.push import PushOnTick

DEFAULT_LISTEN = "tcp://127.0.0.1:9000"

__all__ = ["PushOnTick", "main"]


def main(argv: Optional[list] = None) -> int:
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
