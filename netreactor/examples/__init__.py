"""Built-in example servers, runnable with ``netreactor example NAME``.

Each entry maps a name to ``"module:factory"``; the factory takes no
arguments and returns an :class:`netreactor.EventHandler`. Modules are imported
only when their example is run, so a heavy example costs the others nothing.
"""

from __future__ import annotations

import importlib
from typing import Callable, Dict

from ..handler import EventHandler

__all__ = ["EXAMPLES", "DESCRIPTIONS", "load_example", "default_listen", "default_options"]

EXAMPLES: Dict[str, str] = {
    "echo": "netreactor.examples.echo:Echo",
    "redis": "netreactor.examples.redis:RedisExample",
    "http": "netreactor.examples.http:HTTPExample",
    "udp-echo": "netreactor.examples.udp_echo:UDPEcho",
    "push": "netreactor.examples.push:PushOnTick",
    "redis-front": "netreactor.examples.redis_front:RedisFront",
}

DESCRIPTIONS: Dict[str, str] = {
    "echo": "TCP/Unix echo server: writes back every byte it receives",
    "redis": "Redis-compatible (RESP2) in-memory key-value server: works with redis-cli and redis-benchmark",
    "http": "HTTP/1.1 server: GET /plaintext, GET /json, POST /echo (keep-alive, pipelining, chunked bodies)",
    "udp-echo": "UDP echo server: sends every datagram back to its sender",
    "push": "pushes a 'tick N TIME' line to every client each second (give --ticker)",
    "redis-front": "RESP front end awaiting a real Redis (NETREACTOR_REDIS_URL) with redis.asyncio "
                   "per command, replies in order (asyncio on; needs redis-py)",
}


#: Where an example listens when no --listen is given: its own transport.
_DEFAULT_LISTEN: Dict[str, str] = {"udp-echo": "udp://127.0.0.1:9000"}


#: Engine options an example needs, under whatever the command line gives.
_DEFAULT_OPTIONS: Dict[str, Dict[str, object]] = {"redis-front": {"asyncio": True}}


def default_options(name: str) -> Dict[str, object]:
    """The engine options example ``name`` runs with unless told otherwise."""
    return dict(_DEFAULT_OPTIONS.get(name, {}))


def default_listen(name: str) -> str:
    """The address example ``name`` serves when none is given."""
    return _DEFAULT_LISTEN.get(name, "tcp://127.0.0.1:9000")


def load_example(name: str) -> Callable[[], EventHandler]:
    """Return the handler factory of example ``name``; ``ValueError`` if there is none."""
    try:
        target = EXAMPLES[name]
    except KeyError:
        raise ValueError(f"unknown example {name!r}; available: {', '.join(sorted(EXAMPLES))}") from None
    module_name, _, attr = target.partition(":")
    return getattr(importlib.import_module(module_name), attr)
