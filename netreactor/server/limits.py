"""Connection limits of one server process: ``max_connections`` and
``max_connections_per_ip``.

Rules:

* A connection counts from the moment it is accepted until its fd is closed
  (a connection lingering for the peer's EOF still holds an fd, so it still
  counts; so does one accepted and waiting for its loop to adopt it).
* ``max_connections``: once that many are open, every acceptor stops
  accepting (its listener leaves the poller): newcomers wait in the kernel's
  listen backlog, where TCP holds them without a byte of our memory, rather
  than being accepted and closed. The first close below the limit resumes
  every acceptor.
* ``max_connections_per_ip``: a connection from an IP address that already
  has that many is closed as soon as it is accepted (the kernel cannot be
  asked to hold back one peer). Refusals are counted and logged as a
  warning at most once per :data:`REPORT_INTERVAL` seconds, with the count
  since the last report. Unix-socket peers have no IP address and are not
  limited per IP.
* Thread-safe: accepting runs on the acceptors' loops and closing on the
  connections' loops; one lock guards the counts.
"""

from __future__ import annotations

import threading
from time import monotonic
from typing import Any, Callable, Dict, List, Optional, Protocol

__all__ = ["ConnectionLimits", "REPORT_INTERVAL", "Gate"]

#: Seconds between two log lines about refused or held connections.
REPORT_INTERVAL = 10.0


class Gate(Protocol):
    """What an acceptor asks before each ``accept()``."""

    #: True while no connection may be accepted.
    full: bool


class ConnectionLimits:
    """The counts, and the acceptors to hold and resume."""

    def __init__(self, max_connections: Optional[int], max_per_ip: Optional[int],
                 logger: Any) -> None:
        self.max_connections = max_connections
        self.max_per_ip = max_per_ip
        self.logger = logger
        #: No connection may be accepted now (read by the acceptors without the lock).
        self.full = False
        #: Connections counted now.
        self.open = 0
        #: Connections refused because their IP address had max_connections_per_ip.
        self.refused = 0
        #: Times accepting was paused at max_connections.
        self.holds = 0
        self._lock = threading.Lock()
        self._per_ip: Dict[str, int] = {}
        self._keys: Dict[Any, str] = {}  # connection -> its IP (per-IP limit only)
        self._resumers: List[Callable[[], None]] = []
        self._refused_since_report = 0
        self._last_refusal_report = -REPORT_INTERVAL
        self._last_hold_report = -REPORT_INTERVAL

    def on_resume(self, resume: Callable[[], None]) -> None:
        """Call ``resume()`` (from any thread) each time accepting may go on."""
        self._resumers.append(resume)

    # ------------------------------------------------------------------ accepting

    def admit(self, addr: Any) -> Optional[str]:
        """A connection from ``addr`` was accepted: count it and return its key
        (its IP address, or ``""``), or None when it must be closed."""
        ip: Optional[str] = addr[0] if self.max_per_ip is not None and isinstance(addr, tuple) else ""
        report = 0
        held = False
        with self._lock:
            if ip:
                have = self._per_ip.get(ip, 0)
                if have >= self.max_per_ip:  # type: ignore[operator]
                    self.refused += 1
                    self._refused_since_report += 1
                    if self._due("_last_refusal_report"):
                        report, self._refused_since_report = self._refused_since_report, 0
                    ip = None
                else:
                    self._per_ip[ip] = have + 1
            if ip is not None:
                self.open += 1
                if self.max_connections is not None and self.open >= self.max_connections \
                        and not self.full:
                    self.full = True
                    self.holds += 1
                    held = self._due("_last_hold_report")
        if report:
            self.logger.warning("refused %d connection(s) over max_connections_per_ip=%d in the "
                                "last %.0f s (the last from %s)", report, self.max_per_ip,
                                REPORT_INTERVAL, addr[0])
        if held:
            self.logger.warning("max_connections=%d reached: accepting paused, new connections "
                                "wait in the listen backlog", self.max_connections)
        return ip

    def _due(self, name: str) -> bool:
        now = monotonic()
        if now - getattr(self, name) >= REPORT_INTERVAL:
            setattr(self, name, now)
            return True
        return False

    def adopted(self, conn: Any, key: str) -> None:
        """``conn`` is the connection admitted under ``key``."""
        if key:
            with self._lock:
                self._keys[conn] = key

    def closed(self, conn: Any) -> None:
        """``conn``, adopted, closed its fd."""
        self._release(self._keys.pop(conn, "") if self._keys else "")

    def cancelled(self, key: str) -> None:
        """An admitted connection was dropped before it was adopted."""
        self._release(key)

    def _release(self, key: str) -> None:
        with self._lock:
            if key:
                left = self._per_ip[key] - 1
                if left:
                    self._per_ip[key] = left
                else:
                    del self._per_ip[key]
            self.open -= 1
            resume = self.full and (self.max_connections is None or self.open < self.max_connections)
            if resume:
                self.full = False
        if resume:
            for fn in self._resumers:
                fn()

    def snapshot(self) -> Dict[str, int]:
        """The counts: open, refused (per IP), holds (accepting paused)."""
        return {"open": self.open, "refused": self.refused, "holds": self.holds}
