"""A RESP front end over a real Redis, awaiting ``redis.asyncio`` per command:
``netreactor example redis-front`` (it turns ``--asyncio`` on).

Clients speak Redis to it (``redis-cli``, ``redis-benchmark``, any client
library); every command is forwarded by a coroutine that awaits the backend
through `redis-py <https://pypi.org/project/redis/>`_'s asyncio client, on the
connection's own loop thread, and its reply is written back in the order the
commands came, pipelining included. A slow command (``DEBUG SLEEP`` on the
backend, a big ``KEYS``) delays only the connection that sent it.

The backend is ``NETREACTOR_REDIS_URL`` (default ``redis://127.0.0.1:6379/0``).
Forwarded: GET, SET (all its options), DEL, EXISTS, INCR, DECR, INCRBY, DECRBY,
MGET, DEBUG SLEEP; answered here: PING, ECHO; QUIT closes after the replies
owed; anything else gets Redis's ``-ERR unknown command``. The backend's error
replies (``-ERR``, ``-WRONGTYPE``, wrong arity...) are relayed as sent; a
backend that is down gets ``-ERR backend: ...`` for those commands, and the
connection stays open.

It needs redis-py (``pip install redis``) and an engine with ``asyncio=True``,
or ``netreactor.serve()`` inside an asyncio program::

    import asyncio, netreactor as nr
    from netreactor.examples.redis_front import RedisFront

    async def main():
        async with nr.serve(RedisFront(), "tcp://127.0.0.1:7000") as engine:
            await engine.wait_stopped()

    asyncio.run(main())

One redis client (and its connection pool) per asyncio loop: a client belongs
to the loop it was made on. It is closed when that loop winds down: a small
task waits for the loop's end (it is cancelled then) and closes the client.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any, Callable, Dict, List, Optional, Set

from ..handler import Action, EventHandler
from ..protocols.resp import (NULL_BULK, OK, CommandParser, ProtocolError, encode_bulk,
                              encode_error, encode_integer)

__all__ = ["RedisFront", "DEFAULT_URL", "ENCODERS", "local_reply", "error_reply"]

DEFAULT_URL = "redis://127.0.0.1:6379/0"
_PONG = b"+PONG\r\n"

Command = List[bytes]


async def _constant(reply: bytes) -> bytes:
    return reply


def _simple(value: Any) -> bytes:
    return b"+" + (value if isinstance(value, bytes) else str(value).encode()) + b"\r\n"


def _set_reply(value: Any) -> bytes:
    if value is None:
        return NULL_BULK          # NX/XX not met
    if value in (b"OK", "OK", True):
        return OK
    return encode_bulk(value)     # SET ... GET: the old value


def _integer(value: Any) -> bytes:
    return encode_integer(int(value))


def _array(values: Any) -> bytes:
    return b"*%d\r\n" % len(values) + b"".join(encode_bulk(v) for v in values)


#: Forwarded commands, and how the backend's reply (as redis-py parses it with no
#: response callback: the command names are bytes) is encoded again.
ENCODERS: Dict[bytes, Callable[[Any], bytes]] = {
    b"get": encode_bulk, b"set": _set_reply, b"del": _integer, b"exists": _integer,
    b"incr": _integer, b"decr": _integer, b"incrby": _integer, b"decrby": _integer,
    b"mget": _array, b"debug": _simple,
}


def local_reply(args: Command) -> Optional[bytes]:
    """The reply of a command answered here, without the backend; None if it is not one."""
    name = args[0].lower()
    if name == b"ping" and len(args) <= 2:
        return _PONG if len(args) == 1 else encode_bulk(args[1])
    if name == b"echo" and len(args) == 2:
        return encode_bulk(args[1])
    if name in (b"ping", b"echo"):
        return encode_error(f"ERR wrong number of arguments for '{name.decode()}' command")
    if name == b"debug" and (len(args) != 3 or args[1].lower() != b"sleep"):
        return encode_error("ERR only DEBUG SLEEP is forwarded")
    if name not in ENCODERS:
        shown = args[0].decode("utf-8", "replace")[:128]
        return encode_error(f"ERR unknown command '{shown}'")
    return None


def error_reply(exc: BaseException) -> bytes:
    import redis

    if isinstance(exc, redis.ResponseError):  # the backend's own error reply, relayed as sent
        code = getattr(exc, "status_code", None)  # redis-py strips the codes it knows
        return encode_error(f"{code} {exc}" if code else str(exc))
    return encode_error(f"ERR backend: {exc}")


class _State:
    """Per connection: the parser, and the coroutine of its latest batch."""

    __slots__ = ("parser", "tail")

    def __init__(self) -> None:
        self.parser = CommandParser()
        self.tail: Optional[asyncio.Task[Any]] = None


class RedisFront(EventHandler):
    """The handler: ``RedisFront(url=None, **client_options)``; ``client_options``
    go to ``redis.asyncio.Redis.from_url`` (``max_connections``, timeouts...).

    The commands one read completes are one batch: one coroutine forwards them
    (as a redis pipeline when there are several) and returns their replies
    joined. A connection's batches run one after the other (each awaits the
    one before): the backend sees a connection's commands in the order sent,
    as it would if the client spoke to it directly, while other connections'
    batches run meanwhile.
    """

    def __init__(self, url: Optional[str] = None, **client_options: Any) -> None:
        self.url = url or os.environ.get("NETREACTOR_REDIS_URL", DEFAULT_URL)
        self.client_options = client_options
        self._clients: Dict[Any, Any] = {}  # asyncio loop -> redis.asyncio.Redis
        self._closers: Set[asyncio.Task[None]] = set()  # asyncio keeps only weak references

    def on_boot(self, engine: Any) -> None:
        try:
            import redis.asyncio  # noqa: F401
        except ImportError:
            raise RuntimeError("example redis-front needs redis-py: pip install redis") from None
        if engine.spawner is None:
            raise RuntimeError("example redis-front awaits redis per command: give the engine "
                               "asyncio=True (CLI --asyncio)")

    def on_open(self, conn: Any) -> None:
        conn.context = _State()

    def on_traffic(self, conn: Any) -> Optional[Action]:
        state: _State = conn.context
        try:
            commands = state.parser.feed(conn.read())
        except ProtocolError as exc:
            self._serve(conn, state, exc.commands or [])
            # After what came before the bad bytes: the error, then close.
            conn.spawn(_constant(exc.reply), on_result=_write_and_close)
            return None
        if len(commands) == 1 and commands[0] and commands[0][0].lower() != b"quit":
            state.tail = conn.spawn(self.forward(commands, state.tail))  # the common case
        elif commands:
            self._serve(conn, state, commands)
        return None

    def _serve(self, conn: Any, state: _State, commands: List[Command]) -> None:
        batch = []
        quit_ = False
        for args in commands:
            if args:
                if args[0].lower() == b"quit":
                    quit_ = True
                    break
                batch.append(args)
        if batch:
            state.tail = conn.spawn(self.forward(batch, state.tail))
        if quit_:
            conn.spawn(_constant(OK), on_result=_write_and_close)

    # ------------------------------------------------------------------ the backend

    def client(self) -> Any:
        """The redis client of the running asyncio loop (made on first use)."""
        aio = asyncio.get_running_loop()
        client = self._clients.get(aio)
        if client is None:
            import redis.asyncio

            client = redis.asyncio.Redis.from_url(self.url, **self.client_options)
            self._clients[aio] = client
            closer = aio.create_task(self._close_at_end(aio, client))
            self._closers.add(closer)
            closer.add_done_callback(self._closers.discard)
        return client

    async def _close_at_end(self, aio: Any, client: Any) -> None:
        try:
            await aio.create_future()  # never done: cancelled when the loop winds down
        finally:
            self._clients.pop(aio, None)
            await client.aclose()

    async def forward(self, batch: List[Command], previous: Optional[asyncio.Task[Any]] = None) -> bytes:
        """The replies of ``batch`` (commands), joined, once ``previous`` (the
        connection's batch before, if any) is done."""
        if previous is not None and not previous.done():
            await asyncio.wait([previous])  # this connection's commands, in order
        if len(batch) == 1:  # the common case: no pipeline object
            args = batch[0]
            encode = ENCODERS.get(args[0].lower())
            if encode is None or encode is _simple:  # answered here, or DEBUG: checked here
                reply = local_reply(args)
                if reply is not None:
                    return reply
            try:
                return encode(await self.client().execute_command(*args))  # type: ignore[misc]
            except Exception as exc:
                return error_reply(exc)
        replies: List[Optional[bytes]] = [local_reply(args) for args in batch]
        remote = [args for args, reply in zip(batch, replies, strict=True) if reply is None]
        if remote:
            pipe = self.client().pipeline(transaction=False)
            for args in remote:
                pipe.execute_command(*args)
            try:
                results = await pipe.execute(raise_on_error=False)
            except Exception as exc:
                results = [exc] * len(remote)
            it = iter(zip(remote, results, strict=True))
            for i, reply in enumerate(replies):
                if reply is None:
                    args, result = next(it)
                    replies[i] = (error_reply(result) if isinstance(result, Exception)
                                  else ENCODERS[args[0].lower()](result))
        return b"".join(replies)  # type: ignore[arg-type]


def _write_and_close(conn: Any, reply: Any, exc: Optional[BaseException]) -> None:
    if exc is None:
        conn.write(reply)
    conn.close()
