"""Unit tests for the poller backends and the cross-thread waker, on socketpairs."""

from __future__ import annotations

import os
import socket
import threading
import time

import pytest

from netreactor.reactor.pollers import (EDGE, ERROR, EXCLUSIVE, HANGUP, READABLE, WRITABLE, epoll_available,
                                new_poller)
from netreactor.reactor.waker import Waker

BACKENDS = [pytest.param("epoll", marks=pytest.mark.skipif(not epoll_available(), reason="no epoll")),
            "selectors"]
needs_epoll = pytest.mark.skipif(not epoll_available(), reason="no epoll")


@pytest.fixture(params=BACKENDS)
def poller(request):
    p = new_poller(request.param)
    assert p.name == request.param
    try:
        yield p
    finally:
        p.close()


def events_of(result, fd):
    """The event bits reported for ``fd`` (0 if not reported); each fd at most once."""
    hits = [ev for f, ev in result if f == fd]
    assert len(hits) <= 1, result
    return hits[0] if hits else 0


# ---------------------------------------------------------------- construction

def test_new_poller_auto_and_names():
    p = new_poller("auto")
    try:
        assert p.name == ("epoll" if epoll_available() else "selectors")
    finally:
        p.close()
    p = new_poller()
    p.close()


@pytest.mark.parametrize("kind", ["kqueue", "", None, "EPOLL"])
def test_new_poller_unknown(kind):
    with pytest.raises(ValueError, match="'poller'"):
        new_poller(kind)


# ---------------------------------------------------------------- readiness

def test_timeout_zero_returns_empty(poller, pair):
    a, _ = pair
    poller.register(a.fileno(), READABLE)
    assert poller.poll(0) == []
    assert poller.poll(0.0) == []


def test_timeout_in_seconds_is_honoured(poller, pair):
    a, _ = pair
    poller.register(a.fileno(), READABLE)
    t0 = time.monotonic()
    assert poller.poll(0.05) == []
    elapsed = time.monotonic() - t0
    assert 0.04 <= elapsed < 2.0, elapsed


def test_writable_reported(poller, pair):
    a, _ = pair
    poller.register(a.fileno(), WRITABLE)
    ev = events_of(poller.poll(0), a.fileno())
    assert ev & WRITABLE
    assert not ev & READABLE


def test_readable_only_with_data(poller, pair):
    a, b = pair
    poller.register(a.fileno(), READABLE)
    assert poller.poll(0) == []
    b.send(b"hello")
    ev = events_of(poller.poll(5), a.fileno())
    assert ev & READABLE
    assert not ev & WRITABLE  # not asked for


def test_level_triggered_reports_unread_data_again(poller, pair):
    a, b = pair
    poller.register(a.fileno(), READABLE)
    b.send(b"abcdef")
    for _ in range(3):
        assert events_of(poller.poll(5), a.fileno()) & READABLE
    assert a.recv(2) == b"ab"  # a partial read leaves data: still reported
    assert events_of(poller.poll(5), a.fileno()) & READABLE
    assert a.recv(100) == b"cdef"
    assert poller.poll(0) == []


def test_modify_changes_interest(poller, pair):
    a, b = pair
    fd = a.fileno()
    poller.register(fd, READABLE)
    b.send(b"x")
    assert events_of(poller.poll(5), fd) & READABLE
    poller.modify(fd, WRITABLE)
    ev = events_of(poller.poll(0), fd)
    assert ev & WRITABLE and not ev & READABLE
    poller.modify(fd, READABLE | WRITABLE)
    ev = events_of(poller.poll(0), fd)
    assert ev & WRITABLE and ev & READABLE
    poller.modify(fd, READABLE)
    ev = events_of(poller.poll(0), fd)
    assert ev & READABLE and not ev & WRITABLE


def test_unregister(poller, pair):
    a, b = pair
    fd = a.fileno()
    poller.register(fd, READABLE | WRITABLE)
    b.send(b"x")
    assert events_of(poller.poll(0), fd)
    poller.unregister(fd)
    assert poller.poll(0) == []
    poller.unregister(fd)  # twice: tolerated
    poller.register(fd, READABLE)  # and it can come back
    assert events_of(poller.poll(0), fd) & READABLE


def test_unregister_unknown_fd_is_tolerated(poller, pair):
    a, _ = pair
    poller.unregister(a.fileno())


def test_many_fds(poller):
    pairs = [socket.socketpair() for _ in range(40)]
    try:
        for a, _ in pairs:
            poller.register(a.fileno(), READABLE)
        for _, b in pairs[::2]:
            b.send(b"!")
        got = {fd for fd, ev in poller.poll(5) if ev & READABLE}
        assert got == {a.fileno() for a, _ in pairs[::2]}
    finally:
        for a, b in pairs:
            a.close()
            b.close()


def test_peer_close_is_reported(poller, pair):
    a, b = pair
    poller.register(a.fileno(), READABLE)
    b.close()
    ev = events_of(poller.poll(5), a.fileno())
    assert ev & (READABLE | HANGUP | ERROR)
    assert a.recv(10) == b""


def test_interest_zero_silences_then_restores(poller, pair):
    """An fd with no interest (a paused, idle connection) reports nothing; it returns on modify."""
    a, b = pair
    fd = a.fileno()
    poller.register(fd, READABLE)
    b.send(b"pending")
    assert events_of(poller.poll(5), fd) & READABLE
    poller.modify(fd, 0)
    assert poller.poll(0) == []
    poller.modify(fd, 0)  # still nothing, still fine
    assert poller.poll(0) == []
    poller.modify(fd, READABLE)
    assert events_of(poller.poll(5), fd) & READABLE
    poller.unregister(fd)


def test_exclusive_flag_accepted_at_register(poller, pair):
    a, b = pair
    poller.register(a.fileno(), READABLE | EXCLUSIVE)
    b.send(b"x")
    assert events_of(poller.poll(5), a.fileno()) & READABLE


# ---------------------------------------------------------------- the portable backend's parking

def test_selectors_parks_fd_registered_with_no_events(pair):
    p = new_poller("selectors")
    try:
        a, b = pair
        fd = a.fileno()
        p.register(fd, 0)  # selectors itself refuses this; the backend parks it
        b.send(b"x")
        assert p.poll(0) == []
        p.modify(fd, READABLE)
        assert events_of(p.poll(5), fd) & READABLE
        p.modify(fd, 0)
        assert p.poll(0) == []
        p.unregister(fd)  # a parked fd unregisters cleanly ...
        p.register(fd, READABLE)  # ... and leaves nothing behind
        assert events_of(p.poll(5), fd) & READABLE
        p.unregister(fd)
        p.unregister(fd)
        assert p.poll(0) == []
    finally:
        p.close()


def test_selectors_rejects_edge(pair):
    p = new_poller("selectors")
    try:
        a, _ = pair
        with pytest.raises(ValueError, match="level-triggered"):
            p.register(a.fileno(), READABLE | EDGE)
        p.register(a.fileno(), READABLE)
        with pytest.raises(ValueError, match="level-triggered"):
            p.modify(a.fileno(), READABLE | EDGE)
        p.modify(a.fileno(), 0)
        with pytest.raises(ValueError, match="level-triggered"):
            p.modify(a.fileno(), READABLE | EDGE)  # parked fd too
    finally:
        p.close()


# ---------------------------------------------------------------- epoll edge-triggered

@needs_epoll
def test_epoll_edge_triggered_reports_once_per_new_data(pair):
    p = new_poller("epoll")
    try:
        a, b = pair
        fd = a.fileno()
        p.register(fd, READABLE | EDGE)
        b.send(b"one")
        assert events_of(p.poll(5), fd) & READABLE
        assert p.poll(0) == []  # unread data is not reported again
        assert p.poll(0) == []
        b.send(b"two")  # new data: a new edge
        assert events_of(p.poll(5), fd) & READABLE
        assert p.poll(0) == []
        assert a.recv(100) == b"onetwo"
        assert p.poll(0) == []
    finally:
        p.close()


@needs_epoll
def test_epoll_edge_triggered_writable_once(pair):
    p = new_poller("epoll")
    try:
        a, _ = pair
        p.register(a.fileno(), WRITABLE | EDGE)
        assert events_of(p.poll(5), a.fileno()) & WRITABLE
        assert p.poll(0) == []
        p.modify(a.fileno(), WRITABLE | EDGE)  # re-arming reports the current state again
        assert events_of(p.poll(5), a.fileno()) & WRITABLE
    finally:
        p.close()


@needs_epoll
def test_epoll_level_is_default_edge_is_opt_in(pair):
    """The same data: reported repeatedly without EDGE, once with it."""
    p = new_poller("epoll")
    try:
        a, b = pair
        p.register(a.fileno(), READABLE)
        b.send(b"x")
        assert events_of(p.poll(5), a.fileno())
        assert events_of(p.poll(5), a.fileno())
        p.modify(a.fileno(), READABLE | EDGE)
        assert events_of(p.poll(5), a.fileno())  # re-arm reports what is there
        assert p.poll(0) == []
    finally:
        p.close()


# ---------------------------------------------------------------- waker

@pytest.fixture(params=["eventfd", "pipe"])
def waker(request, monkeypatch):
    if request.param == "pipe":
        monkeypatch.delattr(os, "eventfd", raising=False)
    elif not hasattr(os, "eventfd"):
        pytest.skip("no os.eventfd")
    w = Waker()
    assert (w.fd == w._wfd) is (request.param == "eventfd")
    try:
        yield w
    finally:
        w.close()


def test_waker_wakes_a_blocked_poll_from_another_thread(poller, waker):
    poller.register(waker.fd, READABLE)
    result = []
    polling = threading.Event()

    def blocked():
        polling.set()
        t0 = time.monotonic()
        result.append((poller.poll(10), time.monotonic() - t0))

    t = threading.Thread(target=blocked)
    t.start()
    assert polling.wait(5)
    threading.Thread(target=waker.wake).start()
    t.join(10)
    assert not t.is_alive()
    ready, elapsed = result[0]
    assert events_of(ready, waker.fd) & READABLE
    assert elapsed < 9


def test_waker_blocking_poll_minus_one(poller, waker):
    """timeout -1 blocks until woken."""
    poller.register(waker.fd, READABLE)
    result = []
    t = threading.Thread(target=lambda: result.append(poller.poll(-1)))
    t.start()
    waker.wake()
    t.join(10)
    assert not t.is_alive()
    assert events_of(result[0], waker.fd) & READABLE


def test_many_wakes_drained_by_one_drain(poller, waker):
    poller.register(waker.fd, READABLE)
    assert poller.poll(0) == []
    threads = [threading.Thread(target=lambda: [waker.wake() for _ in range(500)]) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert events_of(poller.poll(0), waker.fd) & READABLE
    waker.drain()
    assert poller.poll(0) == []
    waker.drain()  # nothing pending: returns at once
    assert poller.poll(0) == []
    waker.wake()  # and it works again after draining
    assert events_of(poller.poll(0), waker.fd) & READABLE
    waker.drain()
    assert poller.poll(0) == []


def test_pipe_waker_never_blocks_when_full(monkeypatch):
    monkeypatch.delattr(os, "eventfd", raising=False)
    w = Waker()
    p = new_poller("selectors")
    try:
        p.register(w.fd, READABLE)
        for _ in range(70_000):  # more than a pipe holds (64 KiB): the extra wakes are dropped
            w.wake()
        assert events_of(p.poll(0), w.fd) & READABLE
        w.drain()
        assert p.poll(0) == []
    finally:
        p.close()
        w.close()


def test_waker_close_is_idempotent():
    w = Waker()
    w.close()
    w.close()
