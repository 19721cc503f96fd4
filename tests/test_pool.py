"""WorkerPool: blocking work off the loop, outcomes delivered on the connection's
loop, in order per connection; errors reported; back-pressure when full."""

from __future__ import annotations

import concurrent.futures
import functools
import logging
import random
import socket
import threading

import pytest

import netreactor as nr
from netreactor.pool import PoolFullError
from conftest import connect, recv_exact, recv_until_eof, serving, wait_for


def udp_target(address: str):
    host, port = address.split("://", 1)[1].rsplit(":", 1)
    return host, int(port)


class LinePool(nr.EventHandler):
    """Each line is one job ``job(line)``; the job's bytes are the reply."""

    def __init__(self, pool: nr.WorkerPool, job, on_result=None):
        self.pool = pool
        self.job = job
        self.on_result = on_result
        self.conns = []
        self.loop_threads = {}
        self.opened = threading.Event()

    def on_open(self, conn):
        conn.context = b""
        self.conns.append(conn)
        self.loop_threads[conn] = threading.get_ident()
        self.opened.set()

    def on_traffic(self, conn):
        data = conn.context + conn.read()
        *lines, conn.context = data.split(b"\n")
        for line in lines:
            if self.on_result is None:
                self.pool.submit(conn, self.job, line)
            else:
                self.pool.submit(conn, self.job, line, on_result=self.on_result)


def _echo_line_after_random_sleep(line: bytes) -> bytes:
    threading.Event().wait(random.random() * 0.003)  # a blocking call of random length
    return line + b"\n"


@pytest.mark.parametrize("loops", [1, 3])
def test_results_in_order_per_connection(loops):
    with nr.WorkerPool(max_workers=8, max_queue=200) as pool:
        handler = LinePool(pool, _echo_line_after_random_sleep)
        with serving(handler, "tcp://127.0.0.1:0", loops=loops) as engine:
            clients = [connect(engine.addresses[0]) for _ in range(4)]
            expected = []
            for i, s in enumerate(clients):
                lines = b"".join(b"c%d-line-%04d\n" % (i, n) for n in range(150))
                expected.append(lines)
                s.sendall(lines)
            for s, want in zip(clients, expected):
                assert recv_exact(s, len(want)) == want
                s.close()
        assert pool.in_flight == 0


def test_a_later_job_that_finishes_first_waits_for_the_earlier_one():
    first_may_finish = threading.Event()
    finished = []

    def job(line):
        if line == b"first":
            first_may_finish.wait(5)
        else:
            first_may_finish.set()  # the second job finishes, then lets the first go
        finished.append(line)
        return line + b"\n"

    with nr.WorkerPool(max_workers=2) as pool:
        with serving(LinePool(pool, job), "tcp://127.0.0.1:0") as engine:
            with connect(engine.addresses[0]) as s:
                s.sendall(b"first\nsecond\n")
                assert recv_exact(s, 13) == b"first\nsecond\n"
    assert finished == [b"second", b"first"]


def test_on_result_runs_on_the_connections_loop_in_order():
    seen = []

    def on_result(conn, result, exc):
        seen.append((threading.get_ident(), result, exc))
        conn.write(b"<" + result + b">")

    with nr.WorkerPool(max_workers=4) as pool:
        handler = LinePool(pool, lambda line: line.upper(), on_result=on_result)
        with serving(handler, "tcp://127.0.0.1:0", loops=2) as engine:
            with connect(engine.addresses[0]) as s:
                s.sendall(b"a\nbb\nccc\n")
                assert recv_exact(s, 12) == b"<A><BB><CCC>"
                loop_thread = handler.loop_threads[handler.conns[0]]
    assert [r for _, r, _ in seen] == [b"A", b"BB", b"CCC"]
    assert all(t == loop_thread and e is None for t, _, e in seen)


def test_submit_from_another_thread_delivers_on_the_loop():
    seen = []
    delivered = threading.Event()
    with nr.WorkerPool(max_workers=1) as pool:
        handler = LinePool(pool, None)
        with serving(handler, "tcp://127.0.0.1:0") as engine:
            with connect(engine.addresses[0]) as s:
                assert handler.opened.wait(5)
                conn = handler.conns[0]
                future = pool.submit(conn, lambda: b"from a thread",
                                     on_result=lambda c, r, e: (seen.append(threading.get_ident()),
                                                                c.write(r), delivered.set()))
                assert future.result(5) == b"from a thread"
                assert recv_exact(s, 13) == b"from a thread"
                assert delivered.wait(5)
                assert seen == [handler.loop_threads[conn]]


# ---------------------------------------------------------------- errors


def _maybe_raise(line: bytes) -> bytes:
    if line.startswith(b"boom"):
        raise ValueError(f"job failed on {line!r}")
    return line + b"\n"


def test_raising_job_is_reported_to_on_result():
    outcomes = []

    def on_result(conn, result, exc):
        outcomes.append((result, exc))
        conn.write(b"ERR %s\n" % str(exc).encode() if exc else result)

    with nr.WorkerPool(max_workers=2) as pool:
        with serving(LinePool(pool, _maybe_raise, on_result), "tcp://127.0.0.1:0") as engine:
            with connect(engine.addresses[0]) as s:
                s.sendall(b"ok1\nboom\nok2\n")
                want = b"ok1\nERR job failed on b'boom'\nok2\n"
                assert recv_exact(s, len(want)) == want
    assert outcomes[0] == (b"ok1\n", None)
    assert outcomes[1][0] is None and isinstance(outcomes[1][1], ValueError)


def test_raising_job_without_callback_is_logged_and_closes(expected_errors):
    handler_closed = []

    class Handler(LinePool):
        def on_close(self, conn, err):
            handler_closed.append(err)

    with nr.WorkerPool(max_workers=2) as pool:
        with serving(Handler(pool, _maybe_raise), "tcp://127.0.0.1:0") as engine:
            with connect(engine.addresses[0]) as s:
                s.sendall(b"ok1\nboom\nok2\n")
                # The reply before the failure arrives, then the connection closes.
                assert recv_until_eof(s) == b"ok1\n"
            wait_for(lambda: handler_closed, what="on_close")
    assert handler_closed == [None]
    failures = [r for r in expected_errors if "raised; closing the connection" in r.getMessage()]
    assert len(failures) == 1
    assert failures[0].exc_info and isinstance(failures[0].exc_info[1], ValueError)
    assert "_maybe_raise" in failures[0].getMessage()


def test_result_that_is_not_bytes_is_an_error(expected_errors):
    with nr.WorkerPool(max_workers=1) as pool:
        with serving(LinePool(pool, lambda line: 42), "tcp://127.0.0.1:0") as engine:
            with connect(engine.addresses[0]) as s:
                s.sendall(b"x\n")
                assert recv_until_eof(s) == b""
    assert any(isinstance(r.exc_info[1], TypeError) for r in expected_errors if r.exc_info)


def test_on_result_that_raises_is_logged(expected_errors):
    def bad_callback(conn, result, exc):
        raise RuntimeError("callback bug")

    with nr.WorkerPool(max_workers=1) as pool:
        handler = LinePool(pool, lambda line: line, bad_callback)
        with serving(handler, "tcp://127.0.0.1:0") as engine:
            with connect(engine.addresses[0]) as s:
                s.sendall(b"x\n")
                wait_for(lambda: expected_errors, what="the logged error")
                # The loop goes on serving the connection.
                pool.submit(handler.conns[0], lambda: b"still here")
                assert recv_exact(s, 10) == b"still here"
    assert "on_result callback" in expected_errors[0].getMessage()


# ---------------------------------------------------------------- back-pressure


def test_full_pool_pauses_reading_and_resumes():
    gate = threading.Event()

    def job(line):
        gate.wait(10)
        return line + b"\n"

    pool = nr.WorkerPool(max_workers=1, max_queue=1)  # capacity 2, resumes at 1
    handler = LinePool(pool, job)
    try:
        with serving(handler, "tcp://127.0.0.1:0", loops=1) as engine:
            s1 = connect(engine.addresses[0])
            s1.sendall(b"a\n")
            wait_for(lambda: pool.in_flight == 1, what="job a accepted")
            s1.sendall(b"b\n")
            wait_for(lambda: pool.in_flight == 2, what="job b accepted (pool now full)")
            s1.sendall(b"c\n")  # accepted anyway, and the connection is paused
            wait_for(lambda: pool.paused_connections == 1, what="connection paused")
            assert pool.in_flight == 3
            flood = b"".join(b"line-%05d\n" % n for n in range(3000))
            s1.sendall(flood)  # fits in the kernel's buffers; the server must not read it
            # A second connection on the same loop is the barrier: by the time its
            # line is taken, the loop has had every chance to read the first one.
            s2 = connect(engine.addresses[0])
            s2.sendall(b"z\n")
            wait_for(lambda: pool.paused_connections == 2, what="second connection paused")
            assert pool.in_flight == 4, "a paused connection was read"
            gate.set()
            want = b"a\nb\nc\n" + flood
            assert recv_exact(s1, len(want)) == want
            assert recv_exact(s2, 2) == b"z\n"
            wait_for(lambda: pool.in_flight == 0 and pool.paused_connections == 0,
                     what="pool drained and every connection resumed")
            assert pool.pauses >= 2
            s1.close()
            s2.close()
    finally:
        gate.set()
        pool.shutdown()


def test_handler_pause_is_left_alone_by_the_pool():
    gate = threading.Event()
    with nr.WorkerPool(max_workers=1, max_queue=0) as pool:
        handler = LinePool(pool, lambda line: (gate.wait(10), line + b"\n")[1])
        with serving(handler, "tcp://127.0.0.1:0") as engine:
            with connect(engine.addresses[0]) as s:
                s.sendall(b"a\n")
                wait_for(lambda: pool.in_flight == 1, what="job a")
                conn = handler.conns[0]
                done = threading.Event()
                # The handler pauses the connection itself, then submits into a full pool.
                conn.wake(lambda c, e: (c.pause_reading(), pool.submit(c, lambda: b"b\n"), done.set()))
                assert done.wait(5)
                # The pool holds its own pause (Pause.POOL), beside the handler's.
                assert pool.paused_connections == 1
                assert conn.paused_by(nr.Pause.HANDLER) and conn.paused_by(nr.Pause.POOL)
                gate.set()
                assert recv_exact(s, 4) == b"a\nb\n"
                wait_for(lambda: pool.paused_connections == 0, what="the pool to release its pause")
                # Still paused: the pool resumes only what it paused.
                conn.wake(lambda c, e: c.resume_reading())
                s.sendall(b"c\n")
                assert recv_exact(s, 2) == b"c\n"


def _udp_server(pool, job, **opts):
    class Handler(nr.EventHandler):
        inside = False

        def on_traffic(self, conn):
            Handler.inside = True
            pool.submit(conn, job, conn.read(), on_result=self.reply)
            Handler.inside = False

        @staticmethod
        def reply(conn, result, exc):
            # Even an outcome known at once (a drop) is delivered later, never inside submit().
            assert not Handler.inside
            conn.write(b"dropped" if isinstance(exc, PoolFullError) else result)

    return serving(Handler(), "udp://127.0.0.1:0", **opts)


@pytest.mark.parametrize("sessions", [False, True])
def test_udp_jobs_are_dropped_when_full(sessions):
    gate = threading.Event()

    def job(data):
        gate.wait(10)
        return b"ok:" + data

    opts = {"udp_session_timeout": 30.0} if sessions else {}
    with nr.WorkerPool(max_workers=1, max_queue=0) as pool:
        with _udp_server(pool, job, **opts) as engine:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.settimeout(5)
                s.connect(udp_target(engine.addresses[0]))
                s.send(b"one")
                wait_for(lambda: pool.in_flight == 1, what="first job")
                s.send(b"two")  # the pool is full and a datagram cannot be paused
                wait_for(lambda: pool.dropped == 1, what="second job dropped")
                if not sessions:
                    # Each datagram is its own connection: the drop is reported at once.
                    assert s.recv(100) == b"dropped"
                    gate.set()
                    assert s.recv(100) == b"ok:one"
                else:
                    # One session per peer: outcomes keep their order.
                    gate.set()
                    assert s.recv(100) == b"ok:one"
                    assert s.recv(100) == b"dropped"
                wait_for(lambda: pool.in_flight == 0, what="pool drained")


def test_udp_drop_without_callback_logs_a_warning(caplog):
    gate = threading.Event()

    class Handler(nr.EventHandler):
        def on_traffic(self, conn):
            pool.submit(conn, lambda data: (gate.wait(10), data)[1], conn.read())

    caplog.set_level(logging.WARNING, logger="netreactor")
    with nr.WorkerPool(max_workers=1, max_queue=0) as pool:
        with serving(Handler(), "udp://127.0.0.1:0") as engine:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.settimeout(5)
                s.connect(udp_target(engine.addresses[0]))
                s.send(b"one")
                wait_for(lambda: pool.in_flight == 1, what="first job")
                s.send(b"two")
                s.send(b"three")
                wait_for(lambda: pool.dropped == 2, what="two jobs dropped")
                wait_for(lambda: any("dropped" in r.getMessage() for r in caplog.records),
                         what="the warning")
                gate.set()
                assert s.recv(100) == b"one"
    warnings = [r for r in caplog.records if "dropped" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING  # once, not per drop


# ---------------------------------------------------------------- lifecycle


def test_shutdown_stops_accepting():
    pool = nr.WorkerPool(max_workers=1)
    pool.shutdown(wait=True)
    with pytest.raises(RuntimeError, match="after shutdown"):
        pool.submit(object(), len, b"")


def test_shutdown_cancel_reports_cancelled_jobs():
    gate = threading.Event()
    outcomes = []
    pool = nr.WorkerPool(max_workers=1)
    handler = LinePool(pool, None)
    with serving(handler, "tcp://127.0.0.1:0") as engine:
        with connect(engine.addresses[0]):
            assert handler.opened.wait(5)
            conn = handler.conns[0]
            futures = [pool.submit(conn, lambda n=n: (gate.wait(10), n)[1],
                                   on_result=lambda c, r, e: outcomes.append((r, type(e))))
                       for n in range(3)]
            wait_for(futures[0].running, what="the first job running")
            stopper = threading.Thread(target=pool.shutdown,
                                       kwargs={"wait": True, "cancel_futures": True})
            stopper.start()
            # The running job finishes; the two waiting ones are cancelled.
            wait_for(lambda: futures[1].cancelled() and futures[2].cancelled(), what="cancellation")
            gate.set()
            stopper.join(5)
            wait_for(lambda: len(outcomes) == 3, what="three outcomes")
    assert outcomes == [(0, type(None))] + [(None, concurrent.futures.CancelledError)] * 2


@pytest.mark.parametrize("kwargs, match", [
    ({"max_workers": 0}, "max_workers"),
    ({"max_workers": 2, "max_queue": -1}, "max_queue"),
    ({"max_workers": 2, "max_queue": 2, "low_water": 4}, "low_water"),
    ({"max_workers": True}, "max_workers"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        nr.WorkerPool(**kwargs)


def test_defaults():
    with nr.WorkerPool() as pool:
        assert pool.max_workers >= 1
        assert pool.capacity == pool.max_workers + pool.max_queue
        assert 0 <= pool.low_water < pool.capacity
        assert "WorkerPool" in repr(pool)


def test_works_with_client_connections():
    """The pool serves Client connections the same way (they are Conns on loops)."""
    got = []
    done = threading.Event()

    class Echo(nr.EventHandler):
        def on_traffic(self, conn):
            conn.write(conn.read())

    class Caller(nr.EventHandler):
        def on_traffic(self, conn):
            got.append(conn.read())
            if b"".join(got).endswith(b"3"):
                done.set()

    with nr.WorkerPool(max_workers=3) as pool:
        with serving(Echo(), "tcp://127.0.0.1:0") as engine:
            with nr.Client(Caller()) as client:
                conn = client.dial(engine.addresses[0], timeout=5)
                for n in (1, 2, 3):
                    pool.submit(conn, functools.partial(lambda n: b"%d" % n, n))
                assert done.wait(5)
    assert b"".join(got) == b"123"
