"""A TCP proxy: every connection accepted on ``--listen`` is relayed, byte for
byte, to a new connection to ``--upstream``.

    python3 -m netreactor.examples.tcp_proxy --listen tcp://127.0.0.1:8888 --upstream tcp://127.0.0.1:9000

How it is built, and why:

* **One loop per pair.** The server (an engine) and the client that dials the
  upstream share the engine's loops: ``nr.Client(handler, engine=engine)``,
  and ``dial_async(..., near=inbound)`` puts the outbound connection on the
  inbound connection's loop. Relaying is then a plain ``write`` from one
  connection's callback to the other: no thread hop, no lock, no copy.
* **Back-pressure in both directions.** After relaying a read, the proxy looks
  at what the receiving side still owes (``outbound_buffered``). Above the high
  -water mark it stops reading the sending side (``pause_reading``) and resumes
  when the receiver has drained (``when_drained``). So a slow destination
  slows the source, and a source that reads its replies slowly slows the
  destination, through TCP flow control, and each direction holds at most
  about ``high_water`` plus one read (``read_buffer_cap``) in the proxy.
* **Nothing read before the upstream answers.** The inbound connection is
  paused from ``on_open`` until the outbound one is open; if the dial fails the
  inbound connection is closed.
* **Closing.** When either side closes, the other is closed after what is owed
  to it has been flushed. (netreactor closes a connection when its peer
  half-closes, so a client that shuts down its sending side before reading the
  whole reply loses the rest of the reply.)
"""

from __future__ import annotations

import argparse
import functools
import logging
import sys
import threading
from typing import List, Optional

import netreactor as nr
from netreactor.address import parse_address

log = logging.getLogger("netreactor.examples.tcp_proxy")

DEFAULT_LISTEN = "tcp://127.0.0.1:8888"
DEFAULT_UPSTREAM = "tcp://127.0.0.1:9000"


class _Pair:
    """The two connections of one relayed session (``context`` of both)."""

    __slots__ = ("source", "destination")

    def __init__(self, source: nr.Conn) -> None:
        self.source = source
        self.destination: Optional[nr.Conn] = None


class Proxy(nr.EventHandler):
    """Relay each inbound connection to ``upstream``.

    ``high_water`` (bytes) is how much one side may owe before the other side
    stops being read. It must leave room for one more read below the engine's
    ``write_high_water`` (default: ``write_high_water - read_buffer_cap``):
    past ``write_high_water`` the engine itself stops reading the side that
    owes, and two peers that have both stopped reading (this proxy and an
    echo-like upstream, say) would wait for each other forever.
    ``connect_timeout`` bounds each upstream dial.

    Counters, for tests and monitoring (updated from every loop, so only
    approximate with several loops): ``peak_buffered`` — the most any proxy
    connection has owed its peer right after a relay; ``pauses`` — how often
    each direction was paused; ``dial_errors``.
    """

    def __init__(self, upstream: str, *, high_water: Optional[int] = None,
                 connect_timeout: float = 5.0) -> None:
        parse_address(upstream)  # a bad address is a ValueError now, not at the first dial
        self.upstream = upstream
        self._asked_high_water = high_water
        self.high_water = high_water or 0  # settled in on_boot, against the engine's marks
        self.connect_timeout = connect_timeout
        self.client: Optional[nr.Client] = None
        self.peak_buffered = 0
        self.pauses = {"source": 0, "destination": 0}
        self.dial_errors = 0
        self.relayed = 0
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ lifecycle

    def on_boot(self, engine: nr.Engine) -> None:
        opts = engine.options
        # The most a side may owe and still take one more read without passing
        # the engine's own mark (see the class docstring).
        ceiling = max(1, opts.write_high_water - opts.read_buffer_cap)
        asked = self._asked_high_water
        if asked is None:
            self.high_water = ceiling
        elif asked > ceiling:
            engine.logger.warning("proxy: high_water %d lowered to %d (write_high_water %d minus "
                                  "read_buffer_cap %d)", asked, ceiling,
                                  opts.write_high_water, opts.read_buffer_cap)
            self.high_water = ceiling
        # The upstream connections live on the engine's loops, beside the inbound ones.
        self.client = nr.Client(_Upstream(self), engine=engine).start()

    def on_shutdown(self, engine: nr.Engine) -> None:
        if self.client is not None:
            self.client.stop()

    # ------------------------------------------------------------------ the inbound side

    def on_open(self, conn: nr.Conn) -> None:
        pair = _Pair(conn)
        conn.context = pair
        conn.pause_reading()  # nowhere to relay to yet
        assert self.client is not None  # on_boot made it
        self.client.dial_async(self.upstream, functools.partial(self._dialed, pair),
                               timeout=self.connect_timeout, near=conn)

    def _dialed(self, pair: _Pair, destination: Optional[nr.Conn],
                err: Optional[BaseException]) -> None:
        # On the inbound connection's loop (near=), after the upstream's on_open.
        source = pair.source
        if err is not None:
            with self._lock:
                self.dial_errors += 1
            log.warning("proxy: dialing %s for %s failed: %s", self.upstream, source.remote_addr, err)
            source.close()
            return
        assert destination is not None  # no error: a connection
        if source.closed:  # the client gave up while we were dialing
            destination.close()
            return
        pair.destination = destination
        destination.context = pair
        source.resume_reading()

    def on_traffic(self, conn: nr.Conn) -> None:
        destination = conn.context.destination
        if destination is not None:
            self._relay(conn, destination, "source")

    def on_close(self, conn: nr.Conn, err: Optional[BaseException]) -> None:
        destination = conn.context.destination if conn.context is not None else None
        if destination is not None:
            destination.close()  # after flushing what the source sent

    # ------------------------------------------------------------------ relaying

    def _relay(self, sender: nr.Conn, receiver: nr.Conn, direction: str) -> None:
        """Move what ``sender`` delivered to ``receiver``; pause ``sender`` while
        ``receiver`` owes more than the high-water mark."""
        data = sender.read()
        receiver.write(data)
        # Send now rather than at the end of the loop iteration, so that the
        # backlog below is what the receiving peer really has not taken yet.
        receiver.flush()
        backlog = receiver.outbound_buffered
        if backlog > self.peak_buffered:
            self.peak_buffered = backlog
        self.relayed += len(data)
        if backlog > self.high_water and not receiver.closed:
            sender.pause_reading()
            with self._lock:
                self.pauses[direction] += 1
            receiver.when_drained(lambda _receiver: sender.resume_reading())


class _Upstream(nr.EventHandler):
    """The outbound side: relays back to the inbound connection."""

    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy

    def on_traffic(self, conn: nr.Conn) -> None:
        pair = conn.context
        if pair is not None:
            self.proxy._relay(conn, pair.source, "destination")

    def on_close(self, conn: nr.Conn, err: Optional[BaseException]) -> None:
        pair = conn.context
        if pair is not None:
            pair.source.close()  # after flushing what the destination sent


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description="TCP proxy on netreactor: relays every connection "
                                             "accepted on --listen to --upstream, with back-pressure.")
    ap.add_argument("--listen", "-l", default=DEFAULT_LISTEN,
                    help="address to accept on (default %(default)s)")
    ap.add_argument("--upstream", "-u", default=DEFAULT_UPSTREAM,
                    help="address to relay to (default %(default)s)")
    ap.add_argument("--loops", type=int, default=1, help="event loops (default %(default)s)")
    ap.add_argument("--high-water", type=int, default=256 * 1024,
                    help="bytes one side may owe before the other stops being read "
                         "(default %(default)s)")
    ap.add_argument("--read-buffer", type=int, default=256 * 1024,
                    help="bytes read from a socket at a time (default %(default)s)")
    ap.add_argument("--connect-timeout", type=float, default=5.0,
                    help="seconds to wait for the upstream (default %(default)s)")
    ap.add_argument("--log-level", default="INFO", help="logging level (default %(default)s)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(message)s")
    proxy = Proxy(args.upstream, high_water=args.high_water, connect_timeout=args.connect_timeout)
    high = max(args.high_water, 1)
    read_cap = args.read_buffer
    # The engine's marks follow the proxy's: its own back-pressure starts one read
    # above the proxy's (see Proxy), and a paused side resumes at a quarter of it.
    nr.run(proxy, args.listen, loops=args.loops, read_buffer_cap=read_cap,
           write_high_water=high + read_cap, write_low_water=high // 4,
           write_buffer_cap=max(8 * 1024 * 1024, 4 * (high + read_cap)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
