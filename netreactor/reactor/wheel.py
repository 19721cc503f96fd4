"""Coarse deadlines for many entries: a timing wheel with lazy re-filing.

What it is for: idle and read timeouts of thousands of connections, where a
heap timer re-armed on every message would cost a heap push per message and
leave a dead entry behind each time. Here time is counted in *ticks*
(:data:`TICK` seconds), and the wheel keeps one *bucket* per tick at which
some entry is due: a list of entries.

Rules:

* The wheel's clock, :attr:`TimingWheel.now`, is an ``int`` tick that the
  wheel advances once per tick while it holds entries. An entry that wants to
  note "I was active now" stores ``wheel.now`` (a shared object: no
  allocation, one store) and nothing else; the wheel is not told.
* An entry is filed in one bucket at a time (``entry.wheel_bucket``). When
  that bucket's tick comes, the wheel calls ``entry.wheel_due(now)``: the
  entry computes its real deadline from what it noted, and either expires
  (returns None) or returns the tick to be looked at again, and is filed
  there. An entry active all the time is therefore looked at once per
  timeout, whatever its traffic; an idle one once, when it expires.
* :meth:`TimingWheel.file` moves an entry only to an *earlier* tick (a later
  one is found when the current bucket comes due). What it leaves behind,
  and what :meth:`TimingWheel.unfile` leaves behind, is a stale reference,
  recognised because ``entry.wheel_bucket`` is no longer that bucket; a
  bucket whose stale references pass half of it is compacted at once, so
  memory stays proportional to the live entries (as in :mod:`.timers`).
* A deadline more than :data:`HORIZON` ticks away is filed at the horizon and
  looked at again there: the number of buckets stays bounded.
* Expiring is done :data:`BATCH` entries at a time; the rest goes on after
  the loop has polled again, so thousands of connections timing out at once
  do not stall I/O.
* Precision: a bucket is looked at within one tick after its tick begins,
  later only if the loop is busy.

All of it runs on the owning loop's thread.
"""

from __future__ import annotations

import math
from time import monotonic
from typing import TYPE_CHECKING, Dict, List, Optional, Protocol

if TYPE_CHECKING:  # pragma: no cover
    from .loop import EventLoop
    from .timers import TimerHandle

__all__ = ["TimingWheel", "WheelEntry", "Bucket", "TICK", "HORIZON", "BATCH"]

#: Seconds per tick.
TICK = 0.1
#: Ticks ahead at most a bucket is made for (409.6 s at 0.1 s per tick).
HORIZON = 4096
#: Entries looked at per run of the wheel, at most.
BATCH = 512
#: Stale references a bucket keeps before compaction is considered.
_MIN_STALE_TO_COMPACT = 32


class Bucket(List["WheelEntry"]):
    """The entries due at one tick (stale references included)."""

    __slots__ = ("tick", "stale")

    def __init__(self, tick: int) -> None:
        super().__init__()
        self.tick = tick
        self.stale = 0


class WheelEntry(Protocol):
    """What the wheel files."""

    #: The bucket this entry is filed in, or None. Written by the wheel only.
    wheel_bucket: Optional[Bucket]

    def wheel_due(self, now: int) -> Optional[int]:
        """The entry's bucket came due at tick ``now`` (it is no longer filed):
        expire, or return the tick (> ``now``) to be looked at again."""


class TimingWheel:
    """One loop's wheel. Nothing runs, and no timer is armed, while it is empty."""

    __slots__ = ("now", "tick", "_loop", "_origin", "_buckets", "_done", "_timer")

    def __init__(self, loop: EventLoop, tick: float = TICK) -> None:
        self._loop = loop
        #: Seconds per tick.
        self.tick = tick
        self._origin = monotonic()
        #: The current tick: advanced once per tick while the wheel holds entries.
        #: Read it to note activity; call :meth:`current` to compute a deadline.
        self.now = 0
        self._buckets: Dict[int, Bucket] = {}
        self._done = 0  # buckets up to this tick have been looked at
        self._timer: Optional[TimerHandle] = None

    def ticks(self, seconds: float) -> int:
        """Ticks to wait so that at least ``seconds`` pass, however the
        current tick is advanced: a deadline ``current() + ticks(s)`` never
        comes before ``s`` seconds, and at most two ticks after."""
        return math.ceil(seconds / self.tick) + 1

    def current(self) -> int:
        """The current tick, read from the clock (the wheel may be idle)."""
        if self._buckets:
            return self.now
        now = self.now = int((monotonic() - self._origin) / self.tick)
        return now

    def __len__(self) -> int:
        """References held, stale ones included."""
        return sum(len(bucket) for bucket in self._buckets.values())

    def file(self, entry: WheelEntry, due: int) -> None:
        """Look at ``entry`` at tick ``due`` (see the module docstring: an
        entry filed for an earlier tick stays there)."""
        bucket = entry.wheel_bucket
        if bucket is not None:
            if bucket.tick <= due:
                return
            self._left(bucket)
        buckets = self._buckets
        if not buckets and self._timer is None:
            self._start()
        now = self.now
        if due <= now:
            due = now + 1
        elif due > now + HORIZON:
            due = now + HORIZON
        bucket = buckets.get(due)
        if bucket is None:
            bucket = buckets[due] = Bucket(due)
        bucket.append(entry)
        entry.wheel_bucket = bucket

    def unfile(self, entry: WheelEntry) -> None:
        """Forget ``entry`` (it closed)."""
        bucket = entry.wheel_bucket
        if bucket is not None:
            entry.wheel_bucket = None
            self._left(bucket)

    def _left(self, bucket: Bucket) -> None:
        bucket.stale += 1
        if bucket.stale > _MIN_STALE_TO_COMPACT and bucket.stale * 2 > len(bucket):
            bucket[:] = [e for e in bucket if e.wheel_bucket is bucket]
            bucket.stale = 0

    def clear(self) -> None:
        """Drop every entry and stop (the loop is closing)."""
        for bucket in self._buckets.values():
            for entry in bucket:
                if entry.wheel_bucket is bucket:
                    entry.wheel_bucket = None
        self._buckets.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # ------------------------------------------------------------------ running

    def _start(self) -> None:
        # From empty: nothing older than now is waiting.
        self._done = self.current()
        self._arm()

    def _arm(self, delay: Optional[float] = None) -> None:
        if self._timer is not None:  # filed from inside _run: one timer at a time
            self._timer.cancel()
        if delay is None:
            # Just past the next tick's start, so that the clock reads that tick.
            delay = (self.now + 1) * self.tick + self._origin - monotonic() + 1e-4
        self._timer = self._loop.call_later(max(0.0, delay), self._run)

    def _run(self) -> None:
        self._timer = None
        now = self.now = int((monotonic() - self._origin) / self.tick)
        buckets = self._buckets
        budget = BATCH
        tick = self._done
        if now - tick > len(buckets):  # a long gap (a busy loop): visit what exists
            due = sorted(t for t in buckets if t <= now)
        else:
            due = [t for t in range(tick + 1, now + 1) if t in buckets]
        horizon = now + HORIZON
        for tick in due:
            bucket = buckets.pop(tick)
            i = 0
            for entry in bucket:
                i += 1
                if entry.wheel_bucket is not bucket:
                    continue
                entry.wheel_bucket = None
                again = entry.wheel_due(now)
                if again is not None:
                    # file(), written out: this is the per-entry cost of the wheel.
                    if again <= now:
                        again = now + 1
                    elif again > horizon:
                        again = horizon
                    into = buckets.get(again)
                    if into is None:
                        into = buckets[again] = Bucket(again)
                    into.append(entry)
                    entry.wheel_bucket = into
                budget -= 1
                if not budget:
                    break
            if not budget:
                if i < len(bucket):
                    del bucket[:i]
                    buckets[tick] = bucket
                    self._done = tick - 1
                else:
                    self._done = tick
                self._arm(0.0)  # after the loop has polled again
                return
        self._done = now
        if buckets and self._timer is None:
            self._arm()
