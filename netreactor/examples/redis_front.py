"""A RESP front end over a real Redis, awaiting ``redis.asyncio`` per command:
``netreactor example redis-front`` (it turns ``--asyncio`` on).

Clients speak Redis to it (``redis-cli``, ``redis-benchmark``, any client
library); every command is forwarded by a coroutine that awaits the backend
through `redis-py <https://pypi.org/project/redis/>`_'s asyncio client, on the
connection's own loop thread, and its reply is written back in the order the
commands came, pipelining included. A slow command (``DEBUG SLEEP`` on the
backend, a big ``KEYS``) delays only the connection that sent it.

The backend is ``NETREACTOR_REDIS_URL`` (default ``redis://127.0.0.1:6379/0``).
Forwarded: PING, ECHO, GET, SET (with EX/PX/NX/XX), DEL, EXISTS, INCR, DECR,
INCRBY, MGET, DEBUG SLEEP; QUIT closes after the replies owed; anything else gets
Redis's ``-ERR unknown command``. A backend error (``-WRONGTYPE``...) is
relayed as an error reply; a backend that is down gets ``-ERR backend: ...``
for that command, and the connection stays open.

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
from typing import Any, Awaitable, Callable, Dict, List, Optional, Set

from ..handler import Action, EventHandler
from ..protocols.resp import (NULL_BULK, OK, CommandParser, ProtocolError, encode_bulk,
                              encode_error, encode_integer)

__all__ = ["RedisFront", "DEFAULT_URL"]

DEFAULT_URL = "redis://127.0.0.1:6379/0"
_PONG = b"+PONG\r\n"

Command = List[bytes]


async def _constant(reply: bytes) -> bytes:
    return reply


class RedisFront(EventHandler):
    """The handler: ``RedisFront(url=None, **client_options)``; ``client_options``
    go to ``redis.asyncio.Redis.from_url`` (``max_connections``, timeouts...)."""

    def __init__(self, url: Optional[str] = None, **client_options: Any) -> None:
        self.url = url or os.environ.get("NETREACTOR_REDIS_URL", DEFAULT_URL)
        self.client_options = client_options
        self._clients: Dict[Any, Any] = {}  # asyncio loop -> redis.asyncio.Redis
        self._closers: Set[asyncio.Task[None]] = set()  # asyncio keeps only weak references
        self._commands: Dict[bytes, Callable[[Any, Command], Awaitable[bytes]]] = {
            b"get": self._get, b"set": self._set, b"del": self._integer, b"exists": self._integer,
            b"incr": self._integer, b"decr": self._integer, b"incrby": self._integer,
            b"mget": self._mget, b"echo": self._echo, b"ping": self._ping, b"debug": self._debug,
        }

    def on_boot(self, engine: Any) -> None:
        try:
            import redis.asyncio  # noqa: F401
        except ImportError:
            raise RuntimeError("example redis-front needs redis-py: pip install redis") from None
        if engine.spawner is None:
            raise RuntimeError("example redis-front awaits redis per command: give the engine "
                               "asyncio=True (CLI --asyncio)")

    def on_open(self, conn: Any) -> None:
        conn.context = CommandParser()

    def on_traffic(self, conn: Any) -> Optional[Action]:
        try:
            commands = conn.context.feed(conn.read())
        except ProtocolError as exc:
            self._serve(conn, exc.commands or [])
            # After what came before the bad bytes: the error, then close.
            conn.spawn(_constant(exc.reply), on_result=_write_and_close)
            return None
        self._serve(conn, commands)
        return None

    def _serve(self, conn: Any, commands: List[Command]) -> None:
        table = self._commands
        for args in commands:
            if not args:
                continue
            name = args[0].lower()
            run = table.get(name)
            if run is not None:
                conn.spawn(self._call(run, args))
            elif name == b"quit":
                conn.spawn(_constant(OK), on_result=_write_and_close)
            else:
                shown = args[0].decode("utf-8", "replace")[:128]
                conn.spawn(_constant(encode_error(f"ERR unknown command '{shown}'")))

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

    async def _call(self, run: Callable[[Any, Command], Awaitable[bytes]], args: Command) -> bytes:
        import redis

        try:
            return await run(self.client(), args)
        except redis.ResponseError as exc:  # the backend's own error reply, relayed as sent
            code = getattr(exc, "status_code", None)  # redis-py strips the codes it knows
            return encode_error(f"{code} {exc}" if code else str(exc))
        except (redis.RedisError, OSError) as exc:
            return encode_error(f"ERR backend: {exc}")
        except (TypeError, ValueError, IndexError):
            return encode_error(f"ERR wrong number of arguments for '{args[0].decode('utf-8', 'replace')}' command")

    @staticmethod
    async def _get(client: Any, args: Command) -> bytes:
        if len(args) != 2:
            raise IndexError
        return encode_bulk(await client.get(args[1]))

    @staticmethod
    async def _set(client: Any, args: Command) -> bytes:
        if len(args) < 3:
            raise IndexError
        done = await client.execute_command(*args)
        return OK if done else NULL_BULK

    @staticmethod
    async def _integer(client: Any, args: Command) -> bytes:
        return encode_integer(int(await client.execute_command(*args)))

    @staticmethod
    async def _mget(client: Any, args: Command) -> bytes:
        values = await client.execute_command(*args)
        return b"*%d\r\n" % len(values) + b"".join(encode_bulk(v) for v in values)

    @staticmethod
    async def _echo(client: Any, args: Command) -> bytes:
        if len(args) != 2:
            raise IndexError
        return encode_bulk(args[1])

    @staticmethod
    async def _ping(client: Any, args: Command) -> bytes:
        return _PONG if len(args) == 1 else encode_bulk(args[1])

    @staticmethod
    async def _debug(client: Any, args: Command) -> bytes:
        if len(args) != 3 or args[1].lower() != b"sleep":
            return encode_error("ERR only DEBUG SLEEP is forwarded")
        await client.execute_command(*args)
        return OK


def _write_and_close(conn: Any, reply: Any, exc: Optional[BaseException]) -> None:
    if exc is None:
        conn.write(reply)
    conn.close()
