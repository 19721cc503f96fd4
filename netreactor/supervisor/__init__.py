"""Worker processes under a supervisor: the supervisor (:class:`Supervisor`)
and what each forked worker does (:mod:`.worker`). See the module docstring
of :mod:`netreactor.supervisor.supervisor` for how it works."""

from .supervisor import (BACKOFF_BASE, BACKOFF_MAX, CRASH_LIMIT, CRASH_WINDOW, KILL_GRACE, Supervisor,
                         SupervisorError, worker_count)
from .worker import (EXIT_FAILED, EXIT_OK, EXIT_SHUTDOWN, WorkerInfo, WorkerTarget, current_worker)

__all__ = [
    "Supervisor", "SupervisorError", "WorkerInfo", "WorkerTarget", "current_worker", "worker_count",
    "CRASH_WINDOW", "CRASH_LIMIT", "BACKOFF_BASE", "BACKOFF_MAX", "KILL_GRACE",
    "EXIT_OK", "EXIT_FAILED", "EXIT_SHUTDOWN",
]
