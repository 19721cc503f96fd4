"""netreactor: event-driven reactor networking on epoll, in the style of gnet.

    import netreactor as nr

    class Echo(nr.EventHandler):
        def on_traffic(self, conn):
            conn.write(conn.read())

    nr.run(Echo(), "tcp://127.0.0.1:9000")
"""

from typing import Any

from . import codec
from .client import Client
from .engine import Engine, run
from .errors import (BufferOverflowError, ClosedError, EngineStoppedError, IdleTimeoutError,
                     NetreactorError, PeerClosedError, ReadTimeoutError)
from .framed import FramedHandler
from .handler import Action, EventHandler
from .options import Options
from .pool import WorkerPool
from .runtime import gil_enabled
from .stream import Conn, Pause

__version__ = "0.1.0"


def serve(handler: EventHandler, *addresses: str, **options: Any) -> Any:
    """``async with netreactor.serve(handler, *addresses, **options) as engine``: serve
    inside the running asyncio program, on its thread (see :mod:`netreactor.embed`;
    asyncio is imported only when this is called)."""
    from .embed import serve as _serve

    return _serve(handler, *addresses, **options)

__all__ = [
    "Action", "EventHandler", "FramedHandler", "codec", "Conn", "Pause", "Client", "Engine", "Options",
    "WorkerPool", "run", "serve", "gil_enabled",
    "NetreactorError", "ClosedError", "PeerClosedError", "BufferOverflowError", "EngineStoppedError",
    "IdleTimeoutError", "ReadTimeoutError", "__version__",
]
