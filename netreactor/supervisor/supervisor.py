"""Worker processes: multi-core serving under a supervisor.

CPython's GIL keeps one process's loops on one core at a time, so real
multi-core serving is N worker processes, each a whole engine, under a
supervisor -- the gunicorn/uvicorn habit. ``run(..., workers=N)`` (or
``multicore=True`` on a GIL build) makes :meth:`Engine.run` run a
:class:`Supervisor`, which forks workers that each run the engine through
its worker interface (:class:`~netreactor.supervisor.worker.WorkerTarget`);
this package never imports the engine.

How it works
------------

* **Process creation: plain ``os.fork()``.** The supervisor runs on the main
  thread and starts no thread and no event loop of its own, so forking it is
  safe, and the handler object the user built is simply inherited by every
  worker (nothing has to be pickled, and ``on_boot`` runs in each worker on
  its own copy). ``multiprocessing`` would add a helper thread or pickling
  for nothing. Each child runs the engine and leaves with ``os._exit()``, so
  it never returns into the caller's stack. Signals are blocked around
  ``fork()`` so that none reaches a child before it has dropped the
  supervisor's handlers and wake-up fd.
* **Listening sockets are bound by the supervisor and inherited** (nginx does
  the same with ``reuseport``). For TCP and UDP, worker slot *i* gets its own
  SO_REUSEPORT socket, so the kernel spreads connections (datagrams) over the
  workers; a worker with several loops binds extra SO_REUSEPORT UDP sockets
  for its other loops itself.
  For a Unix address, SO_REUSEPORT does not spread, so one socket is shared by
  all workers (each registers it with ``EPOLLEXCLUSIVE``). Because the
  supervisor keeps every socket open, a worker that dies or is replaced drops
  nothing: connections queued on its socket wait there for the next worker of
  that slot. That is what lets SIGHUP roll the workers without refusing or
  resetting a single connection, and keeps the port reserved at all times.
  (The supervisor never accepts on them.)
* **Restarts.** A worker that dies unexpectedly is started again. A death
  within :data:`CRASH_WINDOW` seconds of the start is an *immediate crash*;
  the restart then waits ``BACKOFF_BASE * 2**(k-1)`` seconds for the k-th in
  a row, and after :data:`CRASH_LIMIT` of them in a row the supervisor gives
  up: it stops the other workers and :meth:`Supervisor.run` raises
  :class:`SupervisorError` with the last worker's error.
* **Signals to the supervisor.** SIGTERM/SIGINT: stop every worker gracefully
  (SIGTERM, which each worker's engine turns into a graceful stop), wait up
  to ``shutdown_timeout`` + :data:`KILL_GRACE` seconds, then SIGKILL what is
  left; a second SIGINT kills at once. SIGHUP: restart the workers one by
  one; each replacement is started and must report ready before the worker
  it replaces is retired (SIGUSR1: it stops accepting and serves its open
  connections until they close, for at most ``graceful_timeout``, then
  stops as on SIGTERM). The replacements are forked from the supervisor,
  so they start from fresh state with the same code: SIGHUP does not reload
  modules (restart the supervisor to deploy new code). SIGUSR1 (RETIRE_SIGNAL):
  retire every worker that way and exit once they are done -- the last step
  of a zero-downtime deploy, when a new supervisor already serves the same
  inherited sockets (docs/workers.md).
* **Worker -> supervisor.** A pipe per worker carries ``ready`` once the
  engine is bound and booted, and ``error <text>`` when it fails. The exit
  code says why a worker ended: :data:`EXIT_OK` (stopped by a signal, or the
  supervisor went away), :data:`EXIT_FAILED`, or :data:`EXIT_SHUTDOWN` (the
  application stopped its engine: ``Action.SHUTDOWN``, ``engine.stop()``),
  which stops the whole server, as it would in a single process.
* **Supervisor -> worker: the lifeline.** Every worker holds the read end of
  one pipe whose write end only the supervisor holds. When the supervisor
  dies, however it dies, the pipe reports EOF and each worker stops
  gracefully. A small thread per worker blocks on it (it holds no GIL while
  blocked, so it costs the event loops nothing).
* **Logs say which worker speaks**: every engine log line of a worker starts
  with ``[worker I pid P]``, and the supervisor's with ``[supervisor pid P]``.
  Handler code can ask :func:`current_worker`.
* ``cpu_affinity=True`` pins worker *i* to the *i*-th CPU this process may use
  (``os.sched_getaffinity``), before its loops start, so every loop thread of
  the worker inherits the pin.
* **Inherited sockets** (``fd://N``, systemd socket activation) are adopted
  here, before any fork, and shared by every worker as a Unix socket is
  (each worker registers it with ``EPOLLEXCLUSIVE``): there is one socket, so
  there is no SO_REUSEPORT group to spread over.
* **Stats and metrics.** Each worker sends a ``stats`` line on its status
  pipe every second (and a last one when it stops). The supervisor folds
  them into one :class:`~netreactor.metrics.Aggregator` (counters: the sum
  over live workers plus what exited workers had reported, so they never go
  back; gauges: live workers only): :meth:`Supervisor.stats`, and with the
  ``metrics`` option the ``/metrics`` endpoint, served from this process's
  own select loop (:mod:`.metrics_endpoint`; why there: that module's docstring).
* **Recycling** (``max_connections_per_worker`` + jitter, gunicorn's
  ``--max-requests``; ``max_worker_rss``, granian's ``--workers-max-rss``): a
  worker whose reported ``accepted`` count, or whose resident memory (read
  from ``/proc/PID/statm`` every :data:`RSS_INTERVAL` seconds), passes its
  limit is replaced the way SIGHUP replaces workers: its successor starts
  and reports ready, then it is retired gracefully (``RETIRE_SIGNAL``).

Linux is the target (SO_REUSEPORT balancing, EPOLLEXCLUSIVE); other POSIX
systems fork and supervise the same way but may not spread TCP connections.
"""

from __future__ import annotations

import os
import random
import selectors
import signal
import threading
from time import monotonic
from typing import Any, Dict, List, Optional, Sequence

from ..address import Address, parse_address
from ..errors import NetreactorError, one_line
from ..metrics import MAX_WIRE_LINE, WIRE_PREFIX, Aggregator, Snapshot, decode_stats
from ..options import Options
from ..runtime import gil_enabled, usable_cpus
from ..server.activation import InheritedSocket
from ..server.listener import Listener, bind_group
from .metrics_endpoint import MetricsEndpoint
from .worker import (EXIT_FAILED, EXIT_OK, EXIT_SHUTDOWN, RETIRE_SIGNAL, Prefixed, WorkerInfo,
                     WorkerTarget, flush_output, run_worker, send_line)

__all__ = [
    "Supervisor", "SupervisorError", "worker_count",
    "CRASH_WINDOW", "CRASH_LIMIT", "BACKOFF_BASE", "BACKOFF_MAX", "KILL_GRACE", "RSS_INTERVAL",
]

#: A worker that dies sooner than this (seconds) after it was started crashed "immediately".
CRASH_WINDOW = 2.0
#: Immediate crashes in a row (of one worker slot) after which the supervisor gives up.
CRASH_LIMIT = 5
#: Delay before restarting after the first immediate crash; doubles with each one in a row.
BACKOFF_BASE = 0.1
#: Longest restart delay.
BACKOFF_MAX = 5.0
#: Seconds, beyond ``shutdown_timeout``, a stopping worker gets before SIGKILL.
KILL_GRACE = 2.0
#: Seconds between two looks at the workers' resident memory (``max_worker_rss``).
RSS_INTERVAL = 1.0

# Longest the supervisor sleeps: it also polls Engine.stop() called from another thread.
_POLL = 0.25
_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD, RETIRE_SIGNAL)


class SupervisorError(NetreactorError, RuntimeError):
    """The supervisor gave up: a worker kept crashing right after it started."""


def worker_count(options: Options) -> int:
    """Worker processes these options ask for; 1 means "serve in this process".

    ``workers`` wins when given; otherwise ``multicore`` on a GIL build asks for
    one worker per CPU this process may run on. (On a free-threaded build
    ``multicore`` means one loop per CPU in one process; the engine does that.)
    """
    if options.workers is not None:
        return options.workers
    if options.multicore and gil_enabled():
        return len(usable_cpus())
    return 1


class _Worker:
    """The supervisor's record of one worker process."""

    __slots__ = ("slot", "pid", "status_fd", "started", "ready", "retiring", "retired_at", "kill_at",
                 "killed", "error", "buf", "conn_limit", "recycling")

    def __init__(self, slot: int, pid: int, status_fd: int, conn_limit: Optional[int] = None) -> None:
        self.slot = slot
        self.pid = pid
        self.status_fd = status_fd
        self.started = monotonic()
        self.ready = False
        self.retiring = False     # we asked it to stop: its exit is expected
        self.retired_at = 0.0     # when we asked
        self.kill_at = 0.0        # SIGKILL deadline once retiring
        self.killed = False
        self.error = ""           # last "error" line it sent
        self.buf = b""
        self.conn_limit = conn_limit  # max_connections_per_worker (+ jitter), or None
        self.recycling = False    # a successor is on its way (a limit was passed)


class _Slot:
    """Worker number ``index``: its listening sockets and the process serving them."""

    __slots__ = ("index", "listeners", "current", "successor", "crashes", "restart_at",
                 "generation")

    def __init__(self, index: int, listeners: List[Listener]) -> None:
        self.index = index
        self.listeners = listeners                  # aligned with the engine's addresses
        self.current: Optional[_Worker] = None      # the worker serving this slot
        self.successor: Optional[_Worker] = None    # its replacement during a SIGHUP roll
        self.crashes = 0                            # immediate crashes in a row
        self.restart_at: Optional[float] = None     # when to start a worker again
        self.generation = 0                         # workers started so far


class Supervisor:
    """Serve ``target`` with ``count`` worker processes on ``addresses``.

    :meth:`run` binds every address first (so a busy port is an ``OSError``
    there, before any worker exists), starts the workers, restarts those that
    die, rolls them on SIGHUP, and stops them all on SIGTERM/SIGINT, on
    :meth:`stop`, or when a worker's application shuts down. It returns after
    a graceful stop and raises :class:`SupervisorError` after giving up. It
    must run on the main thread (it owns signals and forks).
    """

    def __init__(self, target: WorkerTarget, addresses: Sequence[Address], options: Options,
                 logger: Any, count: int, *, inherited: Optional[Dict[int, InheritedSocket]] = None) -> None:
        self.target = target
        self.addresses = list(addresses)
        self.opts = options
        self.count = count
        self.base_log = logger
        self.log = Prefixed(logger, {"who": f"supervisor pid {os.getpid()}"})
        self.cpus = usable_cpus()
        self._stop_requested = False
        self.slots: List[_Slot] = []
        self.bound: List[Listener] = []        # every socket bound here; closed at the end
        self.workers: Dict[int, _Worker] = {}  # live worker processes by pid
        self.stopping: Optional[str] = None    # why we stop, once we do
        self.failure: Optional[str] = None     # the give-up message
        self.roll: List[int] = []              # slots still to restart on SIGHUP
        self.announced = False
        self.sel: Optional[selectors.BaseSelector] = None
        self.wake_r = self.wake_w = -1         # signal wake-up pipe
        self.life_r = self.life_w = -1         # the lifeline (see module docstring)
        self.saved_signals: Dict[int, Any] = {}
        self.saved_wakeup: Optional[int] = None
        self.inherited = inherited if inherited is not None else {}
        self.rolling_all = False               # the roll under way is SIGHUP's (not a recycle)
        self.aggregate = Aggregator()
        self.aggregate_lock = threading.Lock()  # stats() may be called from another thread
        self.metrics_listener: Optional[Listener] = None
        self.metrics: Optional[MetricsEndpoint] = None
        self.next_rss_check = 0.0

    # ------------------------------------------------------------------ main

    @property
    def bound_addresses(self) -> List[str]:
        """The addresses the workers serve (real port numbers), once bound."""
        return [lst.bound_address() for lst in self.slots[0].listeners] if self.slots else []

    def stop(self) -> None:
        """Stop every worker gracefully; from any thread."""
        self._stop_requested = True

    def stats(self) -> Snapshot:
        """The sum over the workers, as they last reported; from any thread."""
        with self.aggregate_lock:
            return self.aggregate.snapshot()

    @property
    def metrics_address(self) -> Optional[str]:
        """Where the supervisor serves ``/metrics``, once bound; None without it."""
        return self.metrics_listener.bound_address() if self.metrics_listener is not None else None

    def run(self) -> None:
        if not hasattr(os, "fork"):
            raise RuntimeError("worker processes need os.fork(); use workers=None on this platform")
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError("an engine with worker processes must run on the main thread "
                               "(use run(), not start(): the supervisor owns signals and forks)")
        if self.opts.cpu_affinity and not hasattr(os, "sched_setaffinity"):
            raise ValueError("option 'cpu_affinity' needs os.sched_setaffinity (Linux)")
        if self.opts.max_worker_rss is not None and _rss(os.getpid()) is None:
            raise ValueError("option 'max_worker_rss' needs /proc/PID/statm (Linux)")
        try:
            self._bind()
            addrs = ", ".join(lst.bound_address() for lst in self.slots[0].listeners)
            self.log.info("listening on %s; starting %d workers", addrs, self.count)
            try:
                self._setup()
                for slot in self.slots:
                    slot.current = self._spawn(slot)
                self._loop()
            finally:
                self._kill_all()
                self._teardown()
        finally:
            for lst in self.bound:
                lst.close()
        if self.failure:
            raise SupervisorError(self.failure)
        self.log.info("stopped")

    def _bind(self) -> None:
        """Bind every address for every slot, before any worker exists."""
        addrs = self.addresses
        per_slot: List[List[Listener]] = [[] for _ in range(self.count)]
        if self.opts.metrics is not None:
            self.metrics_listener = Listener(parse_address(self.opts.metrics), self.opts)
            self.bound.append(self.metrics_listener)
        for addr in addrs:
            if addr.transport in ("unix", "fd"):
                # One socket for every worker: SO_REUSEPORT does not spread Unix
                # connections, and an inherited socket is one socket.
                lst = (Listener(addr, self.opts) if addr.transport == "unix"
                       else Listener.from_fd(addr.fd, self.inherited, tls=self.opts.tls is not None))
                self.bound.append(lst)
                for lsts in per_slot:
                    lsts.append(lst)
                continue
            group = bind_group(addr, self.opts, self.count)
            self.bound.extend(group)
            for lsts, lst in zip(per_slot, group, strict=True):
                lsts.append(lst)
        self.slots = [_Slot(i, lsts) for i, lsts in enumerate(per_slot)]

    def _setup(self) -> None:
        self.sel = selectors.DefaultSelector()
        self.wake_r, self.wake_w = os.pipe()
        self.life_r, self.life_w = os.pipe()
        for fd in (self.wake_r, self.wake_w):
            os.set_blocking(fd, False)
        self.sel.register(self.wake_r, selectors.EVENT_READ, None)
        if self.metrics_listener is not None:
            self.metrics = MetricsEndpoint(self.metrics_listener, self.stats, self.sel)
        # The handlers do nothing: the signal number written to the wake-up
        # pipe is the whole message, read and acted on in _read_signals().
        self.saved_wakeup = signal.set_wakeup_fd(self.wake_w, warn_on_full_buffer=False)
        for sig in _SIGNALS:
            self.saved_signals[sig] = signal.signal(sig, _ignore_signal)

    def _teardown(self) -> None:
        for sig, old in self.saved_signals.items():
            try:
                signal.signal(sig, old if old is not None else signal.SIG_DFL)
            except (ValueError, OSError, TypeError):
                pass
        if self.saved_wakeup is not None:
            signal.set_wakeup_fd(self.saved_wakeup)
        if self.metrics is not None:
            self.metrics.close()
        if self.sel is not None:
            self.sel.close()
        for fd in (self.wake_r, self.wake_w, self.life_r, self.life_w):
            if fd >= 0:
                os.close(fd)

    def _loop(self) -> None:
        while True:
            # Signals first: a Ctrl-C reaches the workers too, and their exits
            # must be read knowing that we are stopping.
            self._read_signals()
            if self._stop_requested and not self.stopping:
                self._begin_stop("stop() was called")
            self._reap()
            now = monotonic()
            if self.stopping and not self.workers:
                return
            self._enforce_deadlines(now)
            if not self.stopping:
                self._start_due(now)
                self._check_rss(now)
                self._advance_roll()
            if self.metrics is not None:
                self.metrics.sweep(now)
            for key, mask in self._selector().select(self._timeout(monotonic())):
                data = key.data
                if isinstance(data, _Worker):
                    self._read_status(data)
                elif data is not None:
                    data(mask)  # the metrics endpoint's

    def _timeout(self, now: float) -> float:
        timeout = _POLL
        for slot in self.slots:
            if slot.restart_at is not None and not self.stopping:
                timeout = min(timeout, slot.restart_at - now)
        for w in self.workers.values():
            if w.retiring and not w.killed:
                timeout = min(timeout, w.kill_at - now)
        return max(0.0, timeout)

    # ------------------------------------------------------------------ signals

    def _read_signals(self) -> None:
        try:
            data = os.read(self.wake_r, 512)
        except BlockingIOError:
            return
        for signum in data:
            if signum in (signal.SIGINT, signal.SIGTERM):
                name = signal.Signals(signum).name
                if not self.stopping:
                    self._begin_stop(f"received {name}")
                elif signum == signal.SIGINT:
                    self.log.warning("second SIGINT: killing the workers now")
                    for w in self.workers.values():
                        self._kill(w)
            elif signum == signal.SIGHUP:
                self._begin_roll()
            elif signum == RETIRE_SIGNAL and not self.stopping:
                # A graceful exit for a deploy: the new server already serves the same
                # (inherited) sockets; the workers finish their open connections first.
                self._begin_stop(f"received {signal.Signals(signum).name}", graceful=True)

    # ------------------------------------------------------------------ workers

    def _spawn(self, slot: _Slot) -> Optional[_Worker]:
        """Fork a worker for ``slot``; None if fork failed (a restart is scheduled)."""
        status_r, status_w = os.pipe()
        flush_output()
        # Blocked across fork: a signal must not reach the child while it still
        # has our handlers and wake-up fd (it would land in *our* wake-up pipe).
        old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
        try:
            pid = os.fork()
        except OSError as exc:
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
            os.close(status_r)
            os.close(status_w)
            self.log.error("cannot start worker %d: %s", slot.index, exc)
            self._crashed(slot, f"fork failed: {exc}", immediate=True)
            return None
        if pid == 0:  # the child: never returns
            code = EXIT_FAILED
            try:
                os.close(status_r)
                code = self._worker_main(slot, status_w, old_mask)
            except BaseException as exc:  # set-up failed before the engine ran (e.g. affinity)
                send_line(status_w, "error " + one_line(exc))
                code = EXIT_FAILED
            finally:
                flush_output()
                os._exit(code)
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        os.close(status_w)
        os.set_blocking(status_r, False)
        limit = self.opts.max_connections_per_worker
        if limit is not None:
            limit += random.randint(0, self.opts.max_connections_per_worker_jitter)
        w = _Worker(slot.index, pid, status_r, limit)
        self.workers[pid] = w
        self._selector().register(status_r, selectors.EVENT_READ, w)
        slot.generation += 1
        slot.restart_at = None
        self.log.debug("started worker %d (pid %d)", slot.index, pid)
        return w

    def _read_status(self, w: _Worker) -> None:
        while True:
            try:
                chunk = os.read(w.status_fd, 4096)
            except BlockingIOError:
                return
            except OSError:
                chunk = b""
            if not chunk:
                self._selector().unregister(w.status_fd)
                os.close(w.status_fd)
                w.status_fd = -1
                return
            w.buf += chunk
            while b"\n" in w.buf:
                line, w.buf = w.buf.split(b"\n", 1)
                if line.startswith(WIRE_PREFIX):
                    self._worker_stats(w, line)
                    continue
                text = line.decode("utf-8", "replace")
                if text == "ready":
                    w.ready = True
                    self._announce()
                elif text.startswith("error "):
                    w.error = text[6:]
            if len(w.buf) > MAX_WIRE_LINE:  # no newline in sight: not one of our lines
                w.buf = b""

    def _selector(self) -> selectors.BaseSelector:
        sel = self.sel
        if sel is None:  # set up by serve() before any worker exists
            raise RuntimeError("the supervisor's selector is used before serve() set it up")
        return sel

    def _announce(self) -> None:
        if self.announced or self.stopping:
            return
        if all(s.current is not None and s.current.ready for s in self.slots):
            self.announced = True
            pids = ", ".join(str(s.current.pid) for s in self.slots if s.current is not None)
            addrs = ", ".join(lst.bound_address() for lst in self.slots[0].listeners)
            self.log.info("all %d workers ready on %s (pids %s)", self.count, addrs, pids)

    def _reap(self) -> None:
        for pid, w in list(self.workers.items()):
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:  # reaped by someone else: we cannot know how it ended
                done, status = pid, 0
            if done == 0:
                continue
            del self.workers[pid]
            if w.status_fd >= 0:  # what it said just before exiting is in the pipe
                self._read_status(w)
                if w.status_fd >= 0:
                    self._selector().unregister(w.status_fd)
                    os.close(w.status_fd)
                    w.status_fd = -1
            self._exited(w, os.waitstatus_to_exitcode(status))

    def _worker_stats(self, w: _Worker, line: bytes) -> None:
        try:
            snapshot = decode_stats(line)
        except ValueError as exc:
            self.log.debug("worker %d (pid %d) sent a bad stats line: %s", w.slot, w.pid, exc)
            return
        with self.aggregate_lock:
            self.aggregate.update(w.pid, snapshot)
        limit = w.conn_limit
        if limit is not None and snapshot["accepted"] >= limit:
            self._recycle(w, f"it has accepted {int(snapshot['accepted'])} connections "
                             f"(max_connections_per_worker, with jitter: {limit})")

    def _check_rss(self, now: float) -> None:
        limit = self.opts.max_worker_rss
        if limit is None or now < self.next_rss_check:
            return
        self.next_rss_check = now + RSS_INTERVAL
        for slot in self.slots:
            w = slot.current
            if w is None or not w.ready:
                continue
            rss = _rss(w.pid)
            if rss is not None and rss > limit:
                self._recycle(w, f"its resident memory is {rss / 2**20:.1f} MiB "
                                 f"(max_worker_rss: {limit / 2**20:.1f} MiB)")

    def _recycle(self, w: _Worker, why: str) -> None:
        """Replace ``w`` as a SIGHUP roll would: successor first, then a graceful retire."""
        slot = self.slots[w.slot]
        if w.recycling or w.retiring or slot.current is not w or self.stopping:
            return
        w.recycling = True
        self.log.info("recycling worker %d (pid %d): %s", w.slot, w.pid, why)
        if slot.index not in self.roll:
            self.roll.append(slot.index)

    def _exited(self, w: _Worker, code: int) -> None:
        with self.aggregate_lock:
            self.aggregate.retire(w.pid)  # its counters stay in the sums; its gauges leave them
        slot = self.slots[w.slot]
        was_successor = slot.successor is w
        if slot.current is w:
            slot.current = None
        if was_successor:
            slot.successor = None
        how = _describe_exit(code, w.error)
        who = f"worker {w.slot} (pid {w.pid})"
        if w.retiring or self.stopping:
            self.log.info("%s %s", who, "stopped" if code == EXIT_OK else how)
            return
        if code == EXIT_SHUTDOWN:
            self.log.info("%s: the application shut its engine down; stopping all workers", who)
            self._begin_stop("a worker's application shut down")
            return
        if code == EXIT_OK:
            # Stopped by a signal someone else sent: not a crash; replace it at once.
            self.log.warning("%s stopped on a signal the supervisor did not send; starting a new one",
                             who)
            self._schedule(slot, 0.0)
            return
        uptime = monotonic() - w.started
        immediate = uptime < CRASH_WINDOW
        self.log.warning("%s %s after %.2f s", who, how, uptime)
        if was_successor and slot.current is not None:
            self.log.error("replacement for worker %d failed; keeping pid %d and abandoning the "
                           "restart of the remaining workers", w.slot, slot.current.pid)
            self.roll.clear()
            self.rolling_all = False
            slot.current.recycling = False  # it may be recycled again later
            if immediate:
                slot.crashes += 1
            return
        self._crashed(slot, how, immediate)

    def _crashed(self, slot: _Slot, how: str, immediate: bool) -> None:
        if not immediate:
            slot.crashes = 0  # it ran for a while: not a crash loop
            self._schedule(slot, 0.0)
            return
        slot.crashes += 1
        if slot.crashes >= CRASH_LIMIT:
            self.failure = (f"worker {slot.index} crashed {slot.crashes} times in a row, each within "
                            f"{CRASH_WINDOW:g} s of starting; giving up. Last time it {how}")
            self.log.error("%s", self.failure)
            self._begin_stop("giving up")
            return
        self._schedule(slot, min(BACKOFF_MAX, BACKOFF_BASE * 2 ** (slot.crashes - 1)))

    def _schedule(self, slot: _Slot, delay: float) -> None:
        if slot.current is None and slot.successor is None:
            slot.restart_at = monotonic() + delay
            if delay:
                self.log.info("restarting worker %d in %.2f s", slot.index, delay)

    def _start_due(self, now: float) -> None:
        for slot in self.slots:
            if slot.restart_at is not None and slot.restart_at <= now and slot.current is None:
                slot.restart_at = None
                slot.current = self._spawn(slot)

    def _retire(self, w: _Worker, graceful: bool = False) -> None:
        """Ask ``w`` to stop gracefully (``graceful``: once its open connections
        are done, as in a SIGHUP roll); SIGKILL it if it is still there at the deadline."""
        if w.retiring:
            return
        w.retiring = True
        grace = self.opts.graceful_timeout if graceful else 0.0
        w.retired_at = monotonic()
        w.kill_at = w.retired_at + grace + self.opts.shutdown_timeout + KILL_GRACE
        try:
            os.kill(w.pid, RETIRE_SIGNAL if graceful else signal.SIGTERM)
        except ProcessLookupError:
            pass

    def _kill(self, w: _Worker) -> None:
        w.retiring = True
        w.killed = True
        try:
            os.kill(w.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def _enforce_deadlines(self, now: float) -> None:
        for w in self.workers.values():
            if w.retiring and not w.killed and w.kill_at <= now:
                self.log.warning("worker %d (pid %d) did not stop within %.1f s; killing it",
                                 w.slot, w.pid, w.kill_at - w.retired_at)
                self._kill(w)

    def _begin_stop(self, reason: str, graceful: bool = False) -> None:
        self.stopping = reason
        self.roll.clear()
        self.rolling_all = False
        for slot in self.slots:
            slot.restart_at = None
        if self.workers:
            self.log.info("%s: stopping %d worker(s)", reason, len(self.workers))
        for w in list(self.workers.values()):
            if w.retiring and not w.killed and not graceful:
                # A roll was retiring it gently: stopping now means stopping now.
                w.retired_at = monotonic()
                w.kill_at = min(w.kill_at, w.retired_at + self.opts.shutdown_timeout + KILL_GRACE)
                try:
                    os.kill(w.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
            self._retire(w, graceful=graceful)

    def _kill_all(self) -> None:
        """Last resort on the way out (an exception in the supervisor): no orphans."""
        for w in list(self.workers.values()):
            self._kill(w)
            try:
                os.waitpid(w.pid, 0)
            except ChildProcessError:
                pass
            if w.status_fd >= 0:
                os.close(w.status_fd)
        self.workers.clear()

    # ------------------------------------------------------------------ SIGHUP

    def _begin_roll(self) -> None:
        if self.stopping:
            return
        if self.rolling_all:
            self.log.info("SIGHUP: a restart is already under way")
            return
        # Slots already being recycled stay where they are in the queue.
        self.roll += [s.index for s in self.slots if s.index not in self.roll]
        self.rolling_all = True
        self.log.info("SIGHUP: restarting %d workers one by one", len(self.roll))

    def _advance_roll(self) -> None:
        if not self.roll:
            return
        while self.roll:
            slot = self.slots[self.roll[0]]
            if slot.successor is not None:
                if not slot.successor.ready:
                    return  # the old worker serves until its replacement is ready
                old, slot.current, slot.successor = slot.current, slot.successor, None
                if old is not None:
                    self._retire(old, graceful=True)
                self.roll.pop(0)
                continue
            if slot.current is None:  # dead and due to restart anyway
                self.roll.pop(0)
                continue
            slot.successor = self._spawn(slot)
            if slot.successor is None:  # fork failed: give up this roll
                self.roll.clear()
                self.rolling_all = False
            return
        if self.rolling_all:
            self.rolling_all = False
            pids = ", ".join(str(s.current.pid) if s.current else "-" for s in self.slots)
            self.log.info("restarted all %d workers (pids %s)", self.count, pids)

    # ------------------------------------------------------------------ the child

    def _worker_main(self, slot: _Slot, status_w: int, old_mask: Any) -> int:
        """Run in the forked child: become worker ``slot.index``; return the exit code."""
        # Close what belongs to the supervisor and to the other slots.
        self.sel.close()  # type: ignore[union-attr]
        for fd in (self.wake_r, self.wake_w, self.life_w):
            os.close(fd)
        for w in self.workers.values():
            if w.status_fd >= 0:
                os.close(w.status_fd)
        if self.metrics is not None:
            self.metrics.forget()
        mine = {id(lst) for lst in slot.listeners}
        for lst in self.bound:
            if id(lst) not in mine:
                lst.sock.close()  # our copy only; never Listener.close(), which unlinks
        info = WorkerInfo(slot.index, self.count, os.getpid(), slot.generation)
        cpu = self.cpus[slot.index % len(self.cpus)] if self.opts.cpu_affinity else None
        # run_worker installs its handlers first; signals stay blocked until then.
        return run_worker(self.target, info, slot.listeners, status_w, self.life_r, self.base_log,
                          self.opts.graceful_timeout, cpu, traceback=slot.crashes == 0,
                          restore_mask=old_mask)


def _rss(pid: int) -> Optional[int]:
    """Resident memory of process ``pid`` in bytes (``/proc/PID/statm``); None if unknown."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _ignore_signal(signum: int, frame: Any) -> None:
    """Installed so that the signal reaches the wake-up pipe; the loop acts on it."""


def _describe_exit(code: int, error: str) -> str:
    """``killed by SIGKILL``, ``exited with code 1``, ``failed: ValueError: x (exit code 1)``."""
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"was killed by {name}"
    return f"failed: {error} (exit code {code})" if error else f"exited with code {code}"

