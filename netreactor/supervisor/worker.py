"""The worker side of worker processes: what a forked child does.

A worker is told, by the supervisor that forked it, which listening sockets
are its own, and runs a :class:`WorkerTarget` (the engine, through its
public worker interface) on them until one of:

* SIGTERM or SIGINT from the supervisor (or anyone): stop gracefully;
* SIGUSR1 from the supervisor (a SIGHUP roll retires this worker): stop
  accepting, let open connections finish for up to ``graceful_timeout``;
* the lifeline breaks (the supervisor died): stop gracefully;
* the application stopped its engine (``Action.SHUTDOWN``, ``engine.stop()``).

It tells the supervisor ``ready`` and ``error <text>`` lines on its status
pipe, and ``stats {...}`` lines (:func:`netreactor.metrics.encode_stats`)
every second or so, which the supervisor sums into its metrics endpoint and
reads to recycle workers; its exit code says which way it ended
(:data:`EXIT_OK`, :data:`EXIT_FAILED`, :data:`EXIT_SHUTDOWN`).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import select
import signal
import sys
import threading
from typing import Any, Callable, Dict, List, Optional, Protocol

from ..errors import one_line
from ..metrics import Snapshot, encode_stats
from ..server.listener import Listener

__all__ = ["WorkerInfo", "WorkerTarget", "current_worker", "run_worker", "Prefixed",
           "EXIT_OK", "EXIT_FAILED", "EXIT_SHUTDOWN", "RETIRE_SIGNAL"]

#: Worker exit codes (the supervisor reads them).
EXIT_OK = 0        # stopped by a signal, or because the supervisor went away
EXIT_FAILED = 1    # an exception (boot failure, crashed loop); its text went up the status pipe
EXIT_SHUTDOWN = 3  # the application stopped the engine: stop the whole server

#: What the supervisor sends a worker it retires during a SIGHUP roll.
RETIRE_SIGNAL = signal.SIGUSR1


@dataclasses.dataclass(frozen=True)
class WorkerInfo:
    """Who this worker is (see :func:`current_worker`)."""

    #: Slot number, 0 .. count-1; a restarted worker keeps its slot's number.
    index: int
    #: Number of worker slots.
    count: int
    #: This process's id.
    pid: int
    #: How many workers this slot had before this one (0 for the first).
    generation: int


_current: Optional[WorkerInfo] = None


def current_worker() -> Optional[WorkerInfo]:
    """This process's :class:`WorkerInfo` inside a worker; ``None`` elsewhere."""
    return _current


class WorkerTarget(Protocol):
    """What a worker runs: the engine's worker interface."""

    def serve_worker(self, listeners: Dict[int, Listener], logger: Any,
                     on_ready: Callable[[], None], on_stats: Callable[[Snapshot], None]) -> None:
        """Serve on ``listeners`` (address index -> inherited listener) until
        stopped; call ``on_ready()`` once booted, and ``on_stats(snapshot)``
        now and then (and once at the end) with the engine's counters. Raises on failure."""

    def stop(self) -> None:
        """Stop gracefully, from any thread."""

    def retire(self, timeout: float) -> None:
        """Stop accepting; stop once open connections closed or ``timeout`` passed."""


class Prefixed(logging.LoggerAdapter):  # type: ignore[type-arg]
    """Prefix every message with who speaks: ``[worker 2 pid 1234] ...``."""

    def process(self, msg: Any, kwargs: Any) -> Any:
        return f"[{self.extra['who']}] {msg}", kwargs  # type: ignore[index]


def run_worker(target: WorkerTarget, info: WorkerInfo, listeners: List[Listener],
               status_fd: int, lifeline_fd: int, base_logger: Any, graceful_timeout: float,
               cpu: Optional[int], traceback: bool = True, restore_mask: Any = None) -> int:
    """In the forked child, after the supervisor's own descriptors are closed:
    serve, and return the exit code. Signals are blocked on entry, so that none
    reaches the child while it still has the supervisor's handlers; they are
    unblocked (``restore_mask``) once this worker's own are in place."""
    global _current
    _current = info
    ended_by_signal = threading.Event()

    def on_stop(signum: int, frame: Any) -> None:
        ended_by_signal.set()
        target.stop()

    def on_retire(signum: int, frame: Any) -> None:
        ended_by_signal.set()
        target.retire(graceful_timeout)

    signal.set_wakeup_fd(-1)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_stop)
    signal.signal(RETIRE_SIGNAL, on_retire)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # SIGHUP is for the supervisor
    if restore_mask is not None:
        signal.pthread_sigmask(signal.SIG_SETMASK, restore_mask)

    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    log = Prefixed(base_logger, {"who": f"worker {info.index} pid {info.pid}"})
    orphaned = threading.Event()
    threading.Thread(target=_watch_lifeline, args=(target, lifeline_fd, orphaned, log),
                     name="netreactor-worker-lifeline", daemon=True).start()
    inherited = {i: Listener.inherit(lst) for i, lst in enumerate(listeners)}
    try:
        target.serve_worker(inherited, log, lambda: send_line(status_fd, "ready"),
                            lambda snapshot: send_stats(status_fd, snapshot))
    except BaseException as exc:
        text = one_line(exc)
        # ``traceback``: once per crash streak; the repeats say the same.
        log.error("failed: %s", text, exc_info=exc if traceback else None)
        send_line(status_fd, "error " + text)
        return EXIT_FAILED
    if orphaned.is_set() or ended_by_signal.is_set():
        return EXIT_OK
    return EXIT_SHUTDOWN


def _watch_lifeline(target: WorkerTarget, life_fd: int, orphaned: threading.Event,
                    log: logging.LoggerAdapter) -> None:  # type: ignore[type-arg]
    """Worker thread: stop the engine when the supervisor's end of the lifeline
    closes (the supervisor is gone, however it died)."""
    poller = select.poll()
    poller.register(life_fd, select.POLLIN)
    while True:
        try:
            events = poller.poll(None)
        except InterruptedError:
            continue
        if events:
            orphaned.set()
            log.warning("the supervisor is gone; stopping")
            target.stop()
            return


def send_line(fd: int, line: str) -> None:
    try:
        os.write(fd, (line.replace("\n", " ") + "\n").encode("utf-8", "replace"))
    except OSError:  # the supervisor is gone; the lifeline will stop us
        pass


def send_stats(fd: int, snapshot: Snapshot) -> None:
    """One stats line to the supervisor, unless its pipe is full: this runs on a
    serving loop, which must not block on a supervisor that is slow to read (the
    next report comes a second later; a line is shorter than PIPE_BUF, so it is
    written whole or not at all)."""
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    if not poller.poll(0):
        return
    try:
        os.write(fd, encode_stats(snapshot))
    except OSError:  # the supervisor is gone; the lifeline will stop us
        pass


def flush_output() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (AttributeError, OSError, ValueError):
            pass
