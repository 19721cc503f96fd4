"""A netreactor server inside an asyncio program: ``async with netreactor.serve(...)``.

::

    import asyncio
    import netreactor as nr

    async def main():
        async with nr.serve(Front(), "tcp://127.0.0.1:9000") as engine:
            await engine.wait_stopped()        # or do other work; leaving the block stops it

    asyncio.run(main())                        # uvloop.run(main()) works the same

The server's first event loop (with ``loops=1``, the one that serves every
connection) runs on the program's own thread, inside the program's asyncio
loop: its poller's fd is one reader of that loop (``add_reader``), and each
wake-up runs one netreactor iteration (:class:`netreactor.reactor.aio.NestedDriver`).
So its handlers may ``conn.spawn()`` coroutines on the program's loop, with
no thread hop, and those coroutines share the program's clients, pools and
locks. This works with any asyncio loop that has ``add_reader``: asyncio's own
and uvloop's (which cannot take netreactor's poller as its selector). It costs one
more ``epoll_wait`` per wake-up than an engine with ``asyncio=True``, whose
asyncio loop polls through netreactor's poller.

With ``loops=N`` the other loops run on threads of their own (with
``asyncio=True`` each has its own asyncio loop for ``spawn``); with the main
reactor model (``loops > 1`` without ``reuse_port``) the program's thread only
accepts. ``workers`` does not apply (the program is one process), nor does
signal handling: the program owns its signals.

Leaving the block (normally, by an exception, or by cancellation) stops the
server gracefully: listeners close, every connection is flushed and closed
(at most ``shutdown_timeout``), coroutines its connections spawned with
``cancel_on_close=False`` get ``shutdown_timeout`` to finish and are then
cancelled with the rest, ``on_shutdown`` runs, and the block's exception, if
any, goes on.
"""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import Any, Optional, Type

from .engine import Engine
from .handler import EventHandler
from .reactor.aio import NestedDriver, NestedEventLoop
from .server.server import Server
from .supervisor import worker_count

__all__ = ["serve"]


def serve(handler: EventHandler, *addresses: str, **options: Any) -> Serving:
    """``async with serve(handler, *addresses, **options) as engine``: serve inside
    the running asyncio program (see the module docstring). Addresses and
    options are those of :class:`netreactor.Engine`, checked here (``ValueError``)."""
    return Serving(Engine(handler, *addresses, **options))


class Serving:
    """The async context manager :func:`serve` returns."""

    def __init__(self, engine: Engine) -> None:
        if worker_count(engine.options) > 1:
            raise ValueError("options 'workers' and 'multicore' (worker processes) do not apply to "
                             "netreactor.serve(): the asyncio program is one process")
        self.engine = engine
        self._server: Optional[Server] = None
        self._driver: Optional[NestedDriver] = None
        self._aio: Optional[asyncio.AbstractEventLoop] = None

    async def __aenter__(self) -> Engine:
        aio = asyncio.get_running_loop()
        self._aio = aio
        engine = self.engine
        server = engine._embedded_server(NestedEventLoop)
        self._server = server
        stopped: asyncio.Future[None] = aio.create_future()
        engine._embedded_stopped = stopped
        try:
            if not server.begin():  # on_boot said SHUTDOWN: nothing serves
                stopped.set_result(None)
                server.release()
                engine._embedded_done()
                return engine
            server.launch()
            primary = server.primary
            assert isinstance(primary, NestedEventLoop)
            spawner = server.spawner
            assert spawner is not None
            spawner.attach(primary, aio)
            driver = NestedDriver(primary, aio)
            driver.stopped.add_done_callback(lambda _f: _settle(stopped))
            driver.start()
            self._driver = driver
        except BaseException:
            try:
                server.end()
            finally:
                server.release()
                engine._embedded_done()
            raise
        engine._ready()
        return engine

    async def __aexit__(self, exc_type: Optional[Type[BaseException]], exc: Optional[BaseException],
                        tb: Optional[TracebackType]) -> None:
        server, driver, aio = self._server, self._driver, self._aio
        if server is None or driver is None or aio is None:
            return  # never served (on_boot said SHUTDOWN)
        spawner = server.spawner
        assert spawner is not None
        try:
            server.stop()
            # The loop's own deadline (shutdown_timeout, then it closes what is
            # left) bounds this wait.
            await asyncio.shield(driver.stopped)
            await aio.run_in_executor(None, server.join_loops)
            await spawner.drain(aio)
            await _cancel_spawned(spawner, aio)
        finally:
            driver.detach()
            primary = server.primary
            if primary is not None:
                spawner.detach(primary)
            try:
                server.end()
            finally:
                server.release()
                self.engine._embedded_done()
        server.raise_escaped()


def _settle(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


async def _cancel_spawned(spawner: Any, aio: asyncio.AbstractEventLoop) -> None:
    """Cancel what connections of the program's loop spawned and still runs, and
    wait for it (their outcomes are delivered, to closed connections)."""
    tasks = spawner.running(aio)
    for task in tasks:
        task.cancel()
    if tasks:
        await asyncio.wait(tasks, timeout=spawner.shutdown_timeout)
