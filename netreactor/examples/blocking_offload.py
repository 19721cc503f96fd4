"""A line server whose commands block, offloaded to a ``WorkerPool``.

    python3 -m netreactor.examples.blocking_offload                  # tcp://127.0.0.1:9000, 8 workers
    printf 'sleep 0.2\\nhash abc\\nupper hi\\nnope\\n' | nc -q1 127.0.0.1 9000

Commands, one per line; each reply is one line, in the order of the commands:

* ``sleep SECONDS`` — stands for a database call or any blocking I/O (at most 5 s);
  replies ``slept SECONDS``.
* ``hash TEXT`` — CPU work (PBKDF2-SHA256, 50,000 rounds; ``hashlib``
  releases the GIL while it runs); replies the hex digest.
* ``upper TEXT`` — replies TEXT in capitals.
* anything else — replies ``ERR ...``.

The handler never blocks its loop: each line is one ``pool.submit(conn, run,
line, on_result=...)``. The job runs on a worker thread; the pool delivers
its outcome on the connection's loop, in the order the lines came even when a
later job finishes first, and ``on_result`` turns it into a reply (a job that
raises becomes ``ERR``). When more lines wait than the pool takes (``--workers``
+ ``--queue``), the pool stops reading that connection until it has room, so a
client that floods us is slowed down by TCP instead of filling our memory.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import sys
import time
from typing import List, Optional

import netreactor as nr
from netreactor.codec import LineCodec

DEFAULT_LISTEN = "tcp://127.0.0.1:9000"
MAX_SLEEP = 5.0
HASH_ROUNDS = 50_000


def run_command(line: bytes) -> bytes:
    """One command, on a worker thread: may block, may raise (becomes ``ERR``)."""
    verb, _, arg = line.partition(b" ")
    if verb == b"sleep":
        seconds = float(arg)
        if not 0 <= seconds <= MAX_SLEEP:
            raise ValueError(f"sleep takes 0..{MAX_SLEEP} seconds")
        time.sleep(seconds)  # the blocking call a loop must never make
        return b"slept " + arg
    if verb == b"hash":
        return hashlib.pbkdf2_hmac("sha256", arg, b"netreactor", HASH_ROUNDS).hex().encode()
    if verb == b"upper":
        return arg.upper()
    raise ValueError(f"unknown command {verb.decode(errors='replace')!r}")


class BlockingOffload(nr.FramedHandler):
    """Decode lines; run each one's command on the pool; reply in order."""

    codec = LineCodec(newline=b"\n", max_frame_length=4096)

    def __init__(self, pool: nr.WorkerPool) -> None:
        super().__init__()
        self.pool = pool

    def on_frame(self, conn: nr.Conn, line: bytes) -> None:
        self.pool.submit(conn, run_command, line, on_result=self._reply)

    def _reply(self, conn: nr.Conn, result: Optional[bytes], exc: Optional[BaseException]) -> None:
        # On the connection's loop, in submission order.
        if exc is not None or result is None:
            result = f"ERR {exc}".encode()
        self.send(conn, result)


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description="Line server whose blocking commands run on a "
                                             "netreactor WorkerPool.")
    ap.add_argument("--listen", "-l", action="append", metavar="ADDR",
                    help=f"address to serve, repeatable (default {DEFAULT_LISTEN})")
    ap.add_argument("--loops", type=int, default=1, help="event loops (default %(default)s)")
    ap.add_argument("--workers", type=int, default=8, help="worker threads (default %(default)s)")
    ap.add_argument("--queue", type=int, default=32,
                    help="jobs that may wait for a worker before clients are paused "
                         "(default %(default)s)")
    ap.add_argument("--log-level", default="INFO", help="logging level (default %(default)s)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(message)s")
    with nr.WorkerPool(args.workers, args.queue) as pool:
        nr.run(BlockingOffload(pool), *(args.listen or [DEFAULT_LISTEN]), loops=args.loops)
    return 0


if __name__ == "__main__":
    sys.exit(main())
