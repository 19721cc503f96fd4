"""Built-in example servers, runnable with ``netreactor example NAME``.

Each entry maps a name to ``"module:factory"``; the factory returns an
:class:`netreactor.EventHandler`. Modules are imported only when their example
is run, so a heavy example costs the others nothing.

An example may have flags of its own (:data:`FLAGS`, declared here so that
``--help`` lists them without importing the example): each is a keyword of
its factory. A flag may stand for an engine option too (``option=``): the
HTTP example's keep-alive timeout is its engine's ``idle_timeout``, and
Redis's ``timeout`` is too. Then each defaults to the other
(:func:`resolve_flags`): given one, the other follows; given both, the
example's flag applies to its connections and the engine option to the rest.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

from ..handler import EventHandler

__all__ = ["EXAMPLES", "DESCRIPTIONS", "FLAGS", "ExampleFlag", "load_example", "default_listen",
           "default_options", "resolve_flags"]

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


@dataclass(frozen=True)
class ExampleFlag:
    """``--NAME VALUE`` of one example: the factory's keyword ``NAME`` (dashes
    as underscores)."""

    name: str
    type: Callable[[str], Any]
    help: str
    metavar: str = "SECONDS"
    #: The engine option this flag is the same setting as, if any.
    option: Optional[str] = None
    #: The factory's default for it, given to ``option`` when neither is given.
    default: Optional[float] = None

    @property
    def keyword(self) -> str:
        return self.name.replace("-", "_")


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"expected a number of seconds, got {text!r}") from None
    if not 0 <= value < float("inf"):
        raise ValueError(f"expected a number of seconds >= 0, got {text!r}")
    return value


FLAGS: Dict[str, Tuple[ExampleFlag, ...]] = {
    "http": (
        ExampleFlag("header-timeout", _seconds,
                    "seconds a request may take to arrive from its first byte (its head, and "
                    "its body if it has one); then 408 and close (default: 10; 0: no limit)"),
        ExampleFlag("keep-alive-timeout", _seconds,
                    "seconds a connection may stay idle (between requests) before it is closed; "
                    "the engine's --idle-timeout unless both are given (default: 5, as uvicorn's; "
                    "0: never)", option="idle_timeout", default=5.0),
    ),
    "redis": (
        ExampleFlag("timeout", _seconds,
                    "close a client idle for this many seconds, as Redis's 'timeout' (0, "
                    "Redis's default: never); the engine's --idle-timeout unless both are given",
                    option="idle_timeout"),
    ),
}


def resolve_flags(name: str, given: Mapping[str, Any],
                  options: Mapping[str, Any]) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """The factory's keywords and the engine options, from the flags of example
    ``name`` given (keyword -> value) and the engine options given. A flag that
    stands for an engine option and the option default to each other."""
    kwargs = dict(given)
    options = dict(options)
    for flag in FLAGS.get(name, ()):
        if flag.option is None:
            continue
        if flag.keyword in kwargs and flag.option not in options:
            options[flag.option] = kwargs[flag.keyword]
        elif flag.option in options and flag.keyword not in kwargs:
            kwargs[flag.keyword] = options[flag.option] or 0.0
        elif flag.option not in options and flag.keyword not in kwargs and flag.default:
            options[flag.option] = flag.default
    return kwargs, options


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


def load_example(name: str) -> Callable[..., EventHandler]:
    """Return the handler factory of example ``name`` (called with the keywords
    of its :data:`FLAGS`, all optional); ``ValueError`` if there is none."""
    try:
        target = EXAMPLES[name]
    except KeyError:
        raise ValueError(f"unknown example {name!r}; available: {', '.join(sorted(EXAMPLES))}") from None
    module_name, _, attr = target.partition(":")
    factory: Callable[..., EventHandler] = getattr(importlib.import_module(module_name), attr)
    return factory
