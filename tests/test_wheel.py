"""The timing wheel (netreactor.reactor.wheel), on a virtual clock."""

from __future__ import annotations

from typing import List, Optional

import pytest

from netreactor.reactor import wheel as wheel_module
from netreactor.reactor.wheel import BATCH, HORIZON, TimingWheel


class Clock:
    def __init__(self) -> None:
        self.t = 500.0

    def __call__(self) -> float:
        return self.t


class Timers:
    """The loop's call_later, recorded: the test runs what is due itself."""

    class Handle:
        def __init__(self, timers: Timers, delay: float, fn) -> None:
            self.timers, self.delay, self.fn = timers, delay, fn

        def cancel(self) -> None:
            self.timers.pending.remove(self)

    def __init__(self) -> None:
        self.pending: List[Timers.Handle] = []

    def call_later(self, delay, fn, *args):
        handle = Timers.Handle(self, delay, fn)
        self.pending.append(handle)
        return handle


class Entry:
    """Due at ``deadline`` (a tick); ``seen`` moves it later, as traffic does."""

    def __init__(self, deadline: Optional[int]) -> None:
        self.deadline = deadline
        self.wheel_bucket = None
        self.visits = 0
        self.expired_at: Optional[int] = None

    def wheel_due(self, now: int) -> Optional[int]:
        self.visits += 1
        if self.deadline is None:
            return None
        if self.deadline <= now:
            self.expired_at = now
            return None
        return self.deadline


@pytest.fixture
def clock(monkeypatch):
    c = Clock()
    monkeypatch.setattr(wheel_module, "monotonic", c)
    return c


@pytest.fixture
def wheel(clock):
    timers = Timers()
    w = TimingWheel(timers)  # type: ignore[arg-type]
    return w


def tick_to(wheel, clock, tick: int) -> None:
    """Move the clock to ``tick`` one tick at a time, running the wheel's timer
    whenever it is armed (as the loop would)."""
    while wheel.now < tick:
        clock.t += wheel.tick
        if not wheel._loop.pending:
            wheel.current()  # an empty wheel reads the clock when asked
        while wheel._loop.pending:
            handle = wheel._loop.pending.pop(0)
            handle.fn()
            if handle.delay > 0:
                break  # the next tick's timer


def test_an_entry_expires_at_its_tick_not_before(wheel, clock):
    now = wheel.current()
    e = Entry(now + 5)
    wheel.file(e, e.deadline)
    tick_to(wheel, clock, now + 4)
    assert e.expired_at is None
    tick_to(wheel, clock, now + 5)
    assert e.expired_at == now + 5
    assert e.visits == 1  # looked at once, when due
    assert len(wheel) == 0 and not wheel._loop.pending  # empty: no timer armed


def test_ticks_never_come_early():
    w = TimingWheel(Timers())  # type: ignore[arg-type]
    for seconds in (0.01, 0.1, 0.15, 1.0, 4.99):
        # deadline = current tick + ticks(s): the current tick began at most one
        # tick ago, and the deadline's tick must begin at least s later.
        assert (w.ticks(seconds) - 1) * w.tick >= seconds - 1e-9
        assert (w.ticks(seconds) - 2) * w.tick < seconds


def test_activity_moves_the_deadline_later_without_refiling(wheel, clock):
    now = wheel.current()
    e = Entry(now + 3)
    wheel.file(e, e.deadline)
    e.deadline = now + 10  # traffic: the entry notes it, the wheel is not told
    tick_to(wheel, clock, now + 9)
    assert e.expired_at is None and e.visits == 1  # seen at +3, filed again for +10
    tick_to(wheel, clock, now + 10)
    assert e.expired_at == now + 10 and e.visits == 2


def test_filing_earlier_moves_filing_later_does_not(wheel, clock):
    now = wheel.current()
    e = Entry(now + 20)
    wheel.file(e, now + 20)
    bucket = e.wheel_bucket
    wheel.file(e, now + 30)  # later: stays where it is
    assert e.wheel_bucket is bucket
    e.deadline = now + 5
    wheel.file(e, now + 5)  # earlier: moves; the old reference is stale
    assert e.wheel_bucket is not bucket and e.wheel_bucket.tick == now + 5
    tick_to(wheel, clock, now + 25)
    assert e.expired_at == now + 5 and e.visits == 1  # the stale reference was skipped


def test_unfiled_and_moved_entries_do_not_pile_up(wheel, clock):
    now = wheel.current()
    live = [Entry(now + 100) for _ in range(10)]
    for e in live:
        wheel.file(e, now + 100)
    for _ in range(1000):  # churn: entries filed and closed, all in one bucket
        e = Entry(now + 100)
        wheel.file(e, now + 100)
        wheel.unfile(e)
    assert len(wheel) <= 2 * len(live) + 40
    for e in live:  # and moved earlier again and again
        for d in range(99, 50, -1):
            wheel.file(e, now + d)
    assert len(wheel) <= 2 * len(live) * 50  # one stale reference per move at most
    tick_to(wheel, clock, now + 101)
    # looked at in the earliest bucket only (then filed again for its deadline)
    assert all(e.visits == 2 and e.expired_at == now + 100 for e in live)


def test_far_deadlines_are_filed_at_the_horizon(wheel, clock):
    now = wheel.current()
    e = Entry(now + 3 * HORIZON)
    wheel.file(e, e.deadline)
    assert e.wheel_bucket.tick == now + HORIZON
    assert len(wheel._buckets) == 1


def test_a_storm_is_expired_in_batches_with_polls_between(wheel, clock):
    now = wheel.current()
    entries = [Entry(now + 2) for _ in range(BATCH * 3 + 7)]
    for e in entries:
        wheel.file(e, now + 2)
    clock.t += 2 * wheel.tick + 0.01
    runs = 0
    while any(e.expired_at is None for e in entries):
        handle = wheel._loop.pending.pop(0)
        expired_before = sum(e.expired_at is not None for e in entries)
        handle.fn()
        runs += 1
        done = sum(e.expired_at is not None for e in entries) - expired_before
        assert done <= BATCH
        if any(e.expired_at is None for e in entries):
            # the rest waits for a timer due at once: the loop polls before it
            assert wheel._loop.pending and wheel._loop.pending[-1].delay == 0.0
    assert runs == 4


def test_entries_filed_while_running_are_kept(wheel, clock):
    now = wheel.current()
    later = Entry(now + 10)

    class Filer(Entry):
        def wheel_due(self, now_: int) -> Optional[int]:
            wheel.file(later, later.deadline)  # e.g. an on_close arming another timeout
            return super().wheel_due(now_)

    f = Filer(now + 1)
    wheel.file(f, now + 1)
    tick_to(wheel, clock, now + 10)
    assert f.expired_at == now + 1 and later.expired_at == now + 10
    assert len(wheel._loop.pending) == 0


def test_a_late_loop_catches_up(wheel, clock):
    now = wheel.current()
    entries = [Entry(now + d) for d in (1, 50, 3000)]
    for e in entries:
        wheel.file(e, e.deadline)
    clock.t += 4000 * wheel.tick  # the loop was blocked for 400 s
    wheel._loop.pending.pop(0).fn()
    assert [e.expired_at for e in entries] == [now + 4000] * 3


def test_clear_forgets_everything(wheel, clock):
    now = wheel.current()
    e = Entry(now + 5)
    wheel.file(e, now + 5)
    wheel.clear()
    assert e.wheel_bucket is None and len(wheel) == 0 and not wheel._loop.pending
