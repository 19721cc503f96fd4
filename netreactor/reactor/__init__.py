"""The reactor layer: pollers, the cross-thread waker, timers, the per-loop
block pool, the timing wheel, and the event loop that ties them together.

It depends on nothing else in netreactor; the stream, server and client
layers build on its public interface (:class:`EventLoop`, :class:`Entry`,
:class:`ConnectionEntry`, :class:`TimerHandle`, :func:`new_poller` and the
event bits).
"""

from .buffers import BlockPool
from .loop import TASK_BUDGET, ConnectionEntry, Entry, EventLoop, Source
from .pollers import EDGE, ERROR, EXCLUSIVE, HANGUP, READABLE, WRITABLE, Poller, epoll_available, new_poller
from .timers import TimerHandle
from .wheel import TimingWheel

__all__ = [
    "BlockPool", "EventLoop", "Entry", "ConnectionEntry", "Source", "TimerHandle", "TimingWheel",
    "TASK_BUDGET",
    "Poller", "new_poller", "epoll_available",
    "READABLE", "WRITABLE", "ERROR", "HANGUP", "EDGE", "EXCLUSIVE",
]
