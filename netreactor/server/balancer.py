"""Load balancers: which sub-reactor serves a newly accepted connection.

Used only by the main reactor's thread, over the server's loop slots (any
objects; ``least-connections`` counts what a loop owns, ``conn_count``, plus
what was ``handed`` to it and not yet ``adopted``, so a burst of accepts is
spread instead of piling onto the loop that looked emptiest).
"""

from __future__ import annotations

import zlib
from typing import Any, Callable, Dict, Sequence

__all__ = ["make_balancer"]

Balancer = Callable[[Any], Any]


def make_balancer(name: str, loops: Sequence[Any]) -> Balancer:
    """Return ``pick(remote_addr) -> loop`` for the named policy."""
    return _POLICIES[name](loops)


def _round_robin(loops: Sequence[Any]) -> Balancer:
    n = len(loops)
    state = [0]

    def pick(addr: Any) -> Any:
        i = state[0]
        state[0] = i + 1 if i + 1 < n else 0
        return loops[i]

    return pick


def _least_connections(loops: Sequence[Any]) -> Balancer:
    def pick(addr: Any) -> Any:
        return min(loops, key=lambda lp: lp.conn_count + lp.handed - lp.adopted)

    return pick


def _source_addr_hash(loops: Sequence[Any]) -> Balancer:
    n = len(loops)

    def pick(addr: Any) -> Any:
        # The host only: one client's connections land on one loop whatever their ports.
        # Unix peers are usually unnamed (''), so they all share a loop.
        host = addr[0] if isinstance(addr, tuple) else addr
        if not isinstance(host, (bytes, str)):
            host = str(host)
        key = host.encode() if isinstance(host, str) else host
        return loops[zlib.crc32(key) % n]

    return pick


_POLICIES: Dict[str, Callable[[Sequence[Any]], Balancer]] = {
    "round-robin": _round_robin,
    "least-connections": _least_connections,
    "source-addr-hash": _source_addr_hash,
}
