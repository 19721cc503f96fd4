"""netreactor: event-driven reactor networking on epoll, in the style of gnet.

    import netreactor as nr

    class Echo(nr.EventHandler):
        def on_traffic(self, conn):
            conn.write(conn.read())

    nr.run(Echo(), "tcp://127.0.0.1:9000")
"""

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

__all__ = [
    "Action", "EventHandler", "FramedHandler", "codec", "Conn", "Pause", "Client", "Engine", "Options",
    "WorkerPool", "run", "gil_enabled",
    "NetreactorError", "ClosedError", "PeerClosedError", "BufferOverflowError", "EngineStoppedError",
    "IdleTimeoutError", "ReadTimeoutError", "__version__",
]
