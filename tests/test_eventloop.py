"""Unit tests for EventLoop (tasks, urgent tasks, budget, timers, stop/finish) and engine._parse_tick."""

from __future__ import annotations

import logging
import math
import threading
import time

import pytest

from netreactor.ticker import DEFAULT_TICK, parse_tick as _parse_tick
from netreactor.reactor.loop import TASK_BUDGET, EventLoop
from netreactor.handler import Action
from netreactor.options import Options
from netreactor.reactor.pollers import READABLE, epoll_available, new_poller

KINDS = [pytest.param("epoll", marks=pytest.mark.skipif(not epoll_available(), reason="no epoll")),
         "selectors"]


class SpyPoller:
    """A real poller that counts its polls, so a test can tell when the loop is about to sleep."""

    def __init__(self, kind: str) -> None:
        self._p = new_poller(kind)
        self.name = kind
        self.register = self._p.register
        self.modify = self._p.modify
        self.unregister = self._p.unregister
        self.cond = threading.Condition()
        self.polls = 0
        self.sleeps = 0  # polls with a non-zero timeout: the loop had nothing to do
        self.in_sleep = False  # inside such a poll right now

    def poll(self, timeout):
        with self.cond:
            self.polls += 1
            if timeout != 0:
                self.sleeps += 1
                self.in_sleep = True
                self.cond.notify_all()
        try:
            return self._p.poll(timeout)
        finally:
            if timeout != 0:
                with self.cond:
                    self.in_sleep = False

    def wait_sleeps(self, n: int, timeout: float = 5.0) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: self.sleeps >= n, timeout)

    def wait_in_sleep(self, timeout: float = 5.0) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: self.in_sleep, timeout)

    def close(self) -> None:
        self._p.close()


class Harness:
    def __init__(self, kind: str) -> None:
        self.poller = SpyPoller(kind)
        self.loop = EventLoop(0, self.poller, logging.getLogger("netreactor"))
        self.errors = []
        self.ended = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True, name="test-loop")
        self.started = False
        self.closed = False

    def _run(self) -> None:
        try:
            self.loop.run()
        except BaseException as exc:  # recorded: the test asserts on it
            self.errors.append(exc)
        finally:
            self.ended.set()

    def start(self) -> "Harness":
        self.started = True
        self.thread.start()
        return self

    def sleeping(self, timeout: float = 5.0) -> None:
        """Wait until the loop is asleep in poll() (nothing to do but wait for I/O or a timer)."""
        assert self.poller.wait_in_sleep(timeout), "loop never went idle"

    def join(self, timeout: float = 5.0) -> None:
        assert self.ended.wait(timeout), "loop did not stop"
        self.thread.join(timeout)

    def shutdown(self, poke: bool = True, close: bool = True) -> None:
        if self.started and not self.ended.is_set():
            self.loop.call_soon_threadsafe(self.loop.stop)
            if poke:
                # Teardown only: a direct wake so a lost wake-up (see the regression test) cannot hang it.
                self.loop._waker.wake()
            self.join()
        if close and not self.closed:
            self.closed = True
            self.loop.close()


@pytest.fixture(params=KINDS)
def kind(request):
    return request.param


@pytest.fixture
def harness(kind):
    h = Harness(kind)
    try:
        yield h
    finally:
        h.shutdown()
    assert not h.errors, h.errors


# ---------------------------------------------------------------- tasks

def test_threadsafe_tasks_queued_before_run_keep_order(harness):
    ran, done = [], threading.Event()
    for i in range(100):
        harness.loop.call_soon_threadsafe(ran.append, i)
    harness.loop.call_soon_threadsafe(done.set)
    harness.start()
    assert done.wait(5)
    assert ran == list(range(100))


def test_call_soon_from_the_loop_is_fifo_and_on_the_loop_thread(harness):
    ran, done, threads = [], threading.Event(), set()

    def rec(i):
        threads.add(threading.get_ident())
        ran.append(i)

    def setup():
        for i in range(50):
            harness.loop.call_soon(rec, i)
        harness.loop.call_soon(done.set)

    harness.loop.call_soon_threadsafe(setup)
    harness.start()
    assert done.wait(5)
    assert ran == list(range(50))
    assert threads == {harness.thread.ident}


def test_call_soon_threadsafe_wakes_a_sleeping_loop_every_time(harness):
    harness.start()
    for i in range(20):
        harness.sleeping()
        ev = threading.Event()
        harness.loop.call_soon_threadsafe(ev.set)
        assert ev.wait(5), f"task {i} did not run"


def test_args_are_passed(harness):
    got, done = [], threading.Event()
    harness.loop.call_soon_threadsafe(lambda *a: (got.append(a), done.set()), 1, "two", None)
    harness.start()
    assert done.wait(5)
    assert got == [(1, "two", None)]


def test_urgent_tasks_run_before_ordinary_ones(harness):
    ran, done = [], threading.Event()
    loop = harness.loop
    loop.call_soon_threadsafe(ran.append, "a")
    loop.call_soon_threadsafe(ran.append, "b")
    loop.call_soon_threadsafe(ran.append, "u1", urgent=True)
    loop.call_soon_threadsafe(ran.append, "u2", urgent=True)

    def from_the_loop():
        loop.call_soon(ran.append, "x")
        loop.call_soon_threadsafe(ran.append, "z")
        loop.call_soon_threadsafe(ran.append, "y", urgent=True)
        loop.call_soon(done.set)

    loop.call_soon_threadsafe(from_the_loop)
    harness.start()
    assert done.wait(5)
    assert ran == ["u1", "u2", "a", "b", "y", "x", "z"]


class Reader:
    """A registered fd's table entry: ``handle_io`` reads what is there and records the call."""

    is_connection = False

    def __init__(self, sock, on_io):
        self.sock = sock
        self.on_io = on_io

    def handle_io(self, ev):
        assert ev & READABLE
        try:
            self.sock.recv(4096)
        except BlockingIOError:
            pass
        self.on_io()


def test_task_budget_lets_io_in(harness, pair):
    """A flood of queued tasks is run TASK_BUDGET per iteration, with polling in between."""
    a, b = pair
    loop = harness.loop
    ran, at_io, done = [], [], threading.Event()
    loop.add(a.fileno(), Reader(a, lambda: at_io.append(len(ran))), READABLE)
    total = 3 * TASK_BUDGET + 7
    loop.call_soon_threadsafe(b.send, b"!")  # the data arrives during the first batch
    for i in range(total):
        loop.call_soon_threadsafe(ran.append, i)
    loop.call_soon_threadsafe(done.set)
    harness.start()
    assert done.wait(5)
    assert ran == list(range(total))
    assert at_io and 0 < at_io[0] < total
    assert at_io[0] <= TASK_BUDGET


def test_self_requeueing_task_does_not_starve_io(harness, pair):
    a, b = pair
    loop = harness.loop
    state = {"spins": 0, "spins_at_io": None, "stop": False}
    spun, io_seen, spun_after_io = threading.Event(), threading.Event(), threading.Event()

    def on_io():
        state["spins_at_io"] = state["spins"]
        io_seen.set()

    def spin():
        state["spins"] += 1
        if state["spins"] >= 3:
            spun.set()
        if state["spins_at_io"] is not None and state["spins"] > state["spins_at_io"] + 3:
            spun_after_io.set()
        if not state["stop"]:
            loop.call_soon(spin)

    loop.add(a.fileno(), Reader(a, on_io), READABLE)
    loop.call_soon_threadsafe(spin)
    harness.start()
    assert spun.wait(5)
    b.send(b"data")
    assert io_seen.wait(5), "I/O starved by a task that re-queues itself"
    assert spun_after_io.wait(5), "the spinning task stopped after the I/O"
    loop.call_soon_threadsafe(state.__setitem__, "stop", True)


def test_task_exception_is_logged_and_loop_continues(harness, expected_errors):
    done = threading.Event()

    def boom():
        raise RuntimeError("task went wrong")

    harness.loop.call_soon_threadsafe(boom)
    harness.loop.call_soon_threadsafe(done.set)
    harness.start()
    assert done.wait(5)
    assert len(expected_errors) == 1
    rec = expected_errors[0]
    assert "raised" in rec.getMessage()
    assert isinstance(rec.exc_info[1], RuntimeError)


# ---------------------------------------------------------------- the fd table

def test_io_dispatch_and_remove(harness, pair):
    a, b = pair
    loop = harness.loop
    calls, seen = [], threading.Event()

    class Once:
        is_connection = False

        def handle_io(self, ev):
            calls.append(ev)
            loop.remove(a.fileno())  # without reading: level-triggered would report it again
            seen.set()

    loop.add(a.fileno(), Once(), READABLE)
    harness.start()
    b.send(b"unread")
    assert seen.wait(5)
    harness.sleeping()  # at least one more poll after the removal
    barrier = threading.Event()
    loop.call_soon_threadsafe(barrier.set)
    assert barrier.wait(5)
    assert len(calls) == 1 and calls[0] & READABLE
    assert all(e is not None and not isinstance(e, Once) for e in loop.entries())
    harness.shutdown(close=False)
    assert all(fd != a.fileno() for fd, _ in harness.poller._p.poll(0))  # unregistered from the poller


def test_io_exception_is_contained(harness, pair, expected_errors):
    a, b = pair
    loop = harness.loop
    closed, done = [], threading.Event()

    class Broken:
        is_connection = False

        def handle_io(self, ev):
            raise KeyError("bug in a handler path")

        def abort(self, exc):
            closed.append(exc)
            loop.remove(a.fileno())
            done.set()

    loop.add(a.fileno(), Broken(), READABLE)
    harness.start()
    b.send(b"x")
    assert done.wait(5)
    assert len(closed) == 1 and isinstance(closed[0], KeyError)
    assert any("internal error" in r.getMessage() for r in expected_errors)
    alive = threading.Event()
    loop.call_soon_threadsafe(alive.set)
    assert alive.wait(5)


# ---------------------------------------------------------------- timers

def test_timers_fire_in_order_and_cancel_works(harness):
    loop = harness.loop
    fired, done, late = [], threading.Event(), []
    handles = {}

    def rec(name, when):
        late.append(time.monotonic() - when)
        fired.append(name)

    def setup():
        now = time.monotonic()
        for name, delay in [("c", 0.03), ("a", 0.01), ("b", 0.02)]:
            loop.call_later(delay, rec, name, now + delay)
        loop.call_later(0.015, rec, "x", 0).cancel()
        handles["z"] = loop.call_later(0.025, rec, "z", 0)
        loop.call_later(0.005, lambda: (fired.append("y"), handles["z"].cancel()))
        loop.call_later(0.04, done.set)

    loop.call_soon_threadsafe(setup)
    harness.start()
    assert done.wait(5)
    assert fired == ["y", "a", "b", "c"]
    assert all(d >= -0.002 for d in late), late  # none fired early (clock granularity aside)


def test_same_deadline_timers_keep_scheduling_order(harness):
    loop = harness.loop
    fired, done = [], threading.Event()

    def setup():
        for i in range(20):
            loop.call_later(0 if i % 2 else -5, fired.append, i)  # negative delays mean "as soon as possible"
        loop.call_later(0, done.set)

    loop.call_soon_threadsafe(setup)
    harness.start()
    assert done.wait(5)
    assert fired == list(range(20))


def test_timer_wakes_an_idle_loop_without_spinning(harness):
    loop = harness.loop
    done, info = threading.Event(), {}

    def setup():
        info["polls"] = harness.poller.polls
        info["t0"] = time.monotonic()
        loop.call_later(0.05, fire)

    def fire():
        info["elapsed"] = time.monotonic() - info["t0"]
        info["polls"] = harness.poller.polls - info["polls"]
        done.set()

    loop.call_soon_threadsafe(setup)
    harness.start()
    assert done.wait(5)
    assert info["elapsed"] >= 0.045
    assert info["polls"] <= 5, f"{info['polls']} polls while waiting 50 ms for a timer"


def test_timer_rearming_itself(harness):
    loop = harness.loop
    ticks, done = [], threading.Event()

    def tick():
        ticks.append(time.monotonic())
        if len(ticks) < 5:
            loop.call_later(0.002, tick)
        else:
            done.set()

    loop.call_soon_threadsafe(loop.call_later, 0, tick)
    harness.start()
    assert done.wait(5)
    assert all(t2 > t1 for t1, t2 in zip(ticks, ticks[1:]))


def test_cancel_from_another_timer_and_after_firing(harness):
    loop = harness.loop
    fired, done = [], threading.Event()

    def setup():
        h1 = loop.call_later(0.001, fired.append, 1)
        h2 = loop.call_later(0.01, fired.append, 2)
        loop.call_later(0.005, lambda: (h1.cancel(), h2.cancel()))  # h1 has fired: harmless
        loop.call_later(0.02, done.set)

    loop.call_soon_threadsafe(setup)
    harness.start()
    assert done.wait(5)
    assert fired == [1]


# ---------------------------------------------------------------- stop / finish / close

def test_stop_from_a_task_ends_run(harness):
    after = []
    harness.loop.call_soon_threadsafe(harness.loop.stop)
    harness.start()
    harness.join()
    assert not harness.loop._running
    harness.loop.call_soon_threadsafe(after.append, 1)
    assert after == []  # run() has returned: nothing runs until finish()


def test_stop_from_another_thread_ends_an_idle_run(harness):
    harness.start()
    harness.sleeping()
    harness.loop.call_soon_threadsafe(harness.loop.stop)
    harness.join()


def test_stop_ends_a_busy_run(harness):
    loop = harness.loop
    spinning = threading.Event()

    def spin():
        spinning.set()
        loop.call_soon(spin)

    loop.call_soon_threadsafe(spin)
    harness.start()
    assert spinning.wait(5)
    loop.call_soon_threadsafe(loop.stop)
    harness.join()


def test_finish_runs_leftover_tasks(harness):
    loop = harness.loop
    ran = []
    loop.call_soon_threadsafe(loop.stop)
    total = 2 * TASK_BUDGET
    for i in range(total):
        loop.call_soon_threadsafe(ran.append, i)
    harness.start()
    harness.join()
    assert ran == list(range(TASK_BUDGET - 1))  # the rest of the first batch, then run() returned
    loop.call_soon_threadsafe(ran.append, "late")
    loop.call_soon_threadsafe(ran.append, "urgent", urgent=True)
    loop.call_soon_threadsafe(lambda: loop.call_soon(ran.append, "queued-by-a-leftover"))
    assert not loop.finished
    loop.finish()
    assert loop.finished
    assert ran == (list(range(TASK_BUDGET - 1)) + ["urgent"] + list(range(TASK_BUDGET - 1, total))
                   + ["late", "queued-by-a-leftover"])


def test_close_after_run(harness):
    loop = harness.loop
    loop.pool.put(loop.pool.get(1))
    harness.start()
    harness.sleeping()
    harness.shutdown(poke=False)
    assert loop.pool.free_bytes == 0


def test_loop_counters_start_at_zero(kind):
    h = Harness(kind)
    try:
        assert h.loop.conn_count == 0  # (hand-off counts live in the server's loop slots)
        assert not h.loop.stopping and not h.loop.finished
        assert h.loop.connections() == []
    finally:
        h.shutdown()


# ---------------------------------------------------------------- regressions (bugs found and fixed)

def test_no_lost_wakeup_after_a_task_queued_while_tasks_run(kind):
    h = Harness(kind)
    loop = h.loop
    entered, release, second_ran, third_ran = (threading.Event() for _ in range(4))

    def first():
        entered.set()
        release.wait(5)

    try:
        h.start()
        h.sleeping()
        loop.call_soon_threadsafe(first, urgent=True)
        assert entered.wait(5)
        # The loop is inside _run_tasks (flag already cleared): this sets the flag and wakes,
        # and the task runs in this same pass.
        info = {}

        def second():
            info["sleeps"] = h.poller.sleeps
            second_ran.set()

        loop.call_soon_threadsafe(second, urgent=True)
        release.set()
        assert second_ran.wait(5)
        # Next: one poll that drains the waker, then the loop goes to sleep for good.
        h.poller.wait_sleeps(info["sleeps"] + 2, timeout=2)
        loop.call_soon_threadsafe(third_ran.set)  # from another thread: must wake the loop
        assert third_ran.wait(0.5), f"task never ran; _wake_pending={loop._wake_pending}"
    finally:
        loop._waker.wake()
        h.shutdown()


def test_far_future_timer_does_not_crash_the_loop(kind):
    h = Harness(kind)
    loop = h.loop
    try:
        loop.call_soon_threadsafe(loop.call_later, 3e6, lambda: None)  # ~35 days, e.g. on_tick returning 3e6
        h.start()
        assert h.poller.wait_sleeps(1)  # the loop goes to sleep until the timer (or dies trying)
        loop.call_soon_threadsafe(loop.stop)
        h.join()
        assert not h.errors, h.errors
    finally:
        h.shutdown()


# ---------------------------------------------------------------- engine._parse_tick

@pytest.mark.parametrize(
    "result, expected",
    [
        (None, (DEFAULT_TICK, Action.NONE)),
        (0.5, (0.5, Action.NONE)),
        (2, (2.0, Action.NONE)),
        ((0.25, Action.SHUTDOWN), (0.25, Action.SHUTDOWN)),
        ((1, Action.NONE), (1.0, Action.NONE)),
        ((1, None), (1.0, Action.NONE)),
        ((-1, Action.SHUTDOWN), (0.0, Action.SHUTDOWN)),
    ],
)
def test_parse_tick(result, expected):
    delay, action = _parse_tick(result)
    assert (delay, action) == expected
    assert type(delay) is float
    assert isinstance(action, Action)


@pytest.mark.parametrize(
    "result",
    ["1", b"1", True, False, math.nan, [1, Action.NONE], (1,), (1, Action.NONE, 3), (),
     (1, "close"), (1, 99), (3, 2), (1, True), (float("inf"), Action.NONE), ("1", Action.NONE), (None, Action.SHUTDOWN), (True, Action.NONE),
     (math.nan, Action.NONE), object(),
     0, 0.0, -3, -0.5, (0, Action.NONE)],  # a non-positive delay would tick again at once, forever
    ids=repr,
)
def test_parse_tick_rejects(result):
    with pytest.raises(ValueError):
        _parse_tick(result)
