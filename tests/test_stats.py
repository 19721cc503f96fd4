"""engine.stats() and the metrics option: every counter moved by what it names, per loop
and in total; /metrics served by the engine itself (checked with prometheus_client's
parser); with workers, one endpoint summing them that never goes back across a worker's
death (checked by a real Prometheus: resets() of the counters is 0)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import urllib.parse
import urllib.request

import pytest
from conftest import connect, recv_exact, serving, wait_for
from prometheus_client.parser import text_string_to_metric_families

import netreactor as nr
from netreactor.codec import LengthFieldCodec
from netreactor.metrics import KEYS, LOOP_KEYS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Commands(nr.EventHandler):
    """Echo, and commands that end a connection each way there is."""

    def __init__(self):
        self.opened = 0

    def on_open(self, conn):
        self.opened += 1

    def on_traffic(self, conn):
        head = conn.peek(5)
        if head.startswith(b"H"):
            return None  # hold: never consume (the inbound cap closes it)
        data = conn.read()
        if data == b"close":
            return nr.Action.CLOSE
        if data == b"raise":
            raise RuntimeError("the handler failed")
        if data == b"timeout":  # what an idle or read timeout hands on_close
            conn.close(error=TimeoutError("idle"))
            return None
        if data == b"pause":
            conn.pause_reading()
            conn.write(b"paused")
            return None
        if data == b"flood":
            conn.write(b"x" * (6 << 20))
            return None
        conn.write(data)
        return None


def _closed_by_server(c: socket.socket) -> None:
    try:
        while c.recv(65536):
            pass
    except ConnectionResetError:
        pass


def test_every_close_cause_and_the_byte_counts(expected_errors):
    handler = Commands()
    with serving(handler, "tcp://127.0.0.1:0", inbound_buffer_cap=4096) as engine:
        addr = engine.addresses[0]
        sent = 0
        for size in (1, 100, 5000, 70000):  # the last spans several reads
            with connect(addr) as c:
                payload = os.urandom(size)
                c.sendall(payload)
                assert recv_exact(c, size) == payload
                sent += size
        for command in (b"close", b"raise", b"timeout"):
            with connect(addr) as c:
                c.sendall(command)
                _closed_by_server(c)
        with connect(addr) as c:
            c.sendall(b"H" * 10000)
            _closed_by_server(c)
        wait_for(lambda: engine.stats()["open"] == 0, what="every connection to close")
        snap = engine.stats()
    assert snap["accepted"] == 8 == handler.opened
    assert (snap["closed.peer"], snap["closed.local"], snap["closed.error"], snap["closed.timeout"],
            snap["closed.cap"]) == (4, 1, 1, 1, 1)
    assert snap["bytes_out"] == sent
    # what the handler consumed, plus the commands, plus what the capped one sent before its cap
    assert sent + len(b"closeraisetimeout") + 4096 <= snap["bytes_in"] <= sent + len(b"closeraisetimeout") + 10000
    assert set(snap.total) == set(KEYS) and len(snap.loops) == 1
    assert len(expected_errors) == 1 and "the handler failed" in str(expected_errors[0].exc_info[1])


def test_gauges_paused_and_queued_output():
    with serving(Commands(), "tcp://127.0.0.1:0") as engine:
        addr = engine.addresses[0]
        flooded = socket.socket()
        flooded.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)  # before connect: no autotuning
        flooded.settimeout(10)
        flooded.connect(("127.0.0.1", int(addr.rsplit(":", 1)[1])))
        with connect(addr) as paused, flooded:
            paused.sendall(b"pause")
            assert paused.recv(6) == b"paused"
            flooded.sendall(b"flood")  # 6 MiB written to a peer that does not read
            # paused by its handler; the flooded one by back-pressure (past write_high_water)
            wait_for(lambda: engine.stats()["paused"] == 2, what="back-pressure")
            snap = engine.stats()
            assert 256 << 10 < snap["queued_out"] <= 6 << 20 and snap["open"] == 2
            got = recv_exact(flooded, 6 << 20)  # read it all: the gauge falls back to 0
            assert got == b"x" * (6 << 20)
            wait_for(lambda: engine.stats()["queued_out"] == 0, what="the queue to drain")
            wait_for(lambda: engine.stats()["paused"] == 1, what="reading to resume")


def test_per_loop_rows_add_up_to_the_total():
    with serving(Commands(), "tcp://127.0.0.1:0", loops=4, lb="round-robin") as engine:
        for _ in range(8):
            with connect(engine.addresses[0]) as c:
                c.sendall(b"abc")
                assert recv_exact(c, 3) == b"abc"
        wait_for(lambda: engine.stats()["open"] == 0, what="the closes")
        snap = engine.stats()
    assert len(snap.loops) == 4 and [row["accepted"] for row in snap.loops] == [2, 2, 2, 2]
    for key in LOOP_KEYS:
        assert sum(row[key] for row in snap.loops) == snap[key]
    assert snap["bytes_in"] == snap["bytes_out"] == 24


class FramedEcho(nr.FramedHandler):
    codec = LengthFieldCodec(2)

    def on_frames(self, conn, frames):
        return frames[:-1]  # one reply fewer than the frames: the counts tell them apart


def test_framed_handlers_count_frames():
    codec = LengthFieldCodec(2)
    with serving(FramedEcho(), "tcp://127.0.0.1:0") as engine, connect(engine.addresses[0]) as c:
        c.sendall(b"".join(codec.encode(b"f%d" % i) for i in range(5)))
        wait_for(lambda: engine.stats()["frames_in"] == 5, what="the frames")
        assert engine.stats()["frames_out"] == 4


def test_pool_queue_depth():
    release = threading.Event()
    pool = nr.WorkerPool(max_workers=2)

    class Offload(nr.EventHandler):
        def on_traffic(self, conn):
            pool.submit(conn, lambda data: release.wait(10) and data, conn.read())

    try:
        with serving(Offload(), "tcp://127.0.0.1:0") as engine, connect(engine.addresses[0]) as c:
            for _ in range(3):
                c.sendall(b"job")
                time.sleep(0.05)
            wait_for(lambda: engine.stats()["pool_queue"] >= 3, what="the jobs to be queued")
            release.set()
            wait_for(lambda: engine.stats()["pool_queue"] == 0, what="the jobs to be delivered")
    finally:
        pool.shutdown()


def test_tls_handshakes_and_failures(tls_pki):
    """Handshakes that complete, and those that fail each way (garbage, a peer that
    leaves, a timeout), per loop and in total, and under their close causes."""
    import ssl

    from netreactor.tls import server_context

    client = ssl.create_default_context(cafile=tls_pki["ca.pem"])
    with serving(Commands(), "tls://127.0.0.1:0", tls=server_context(tls_pki["server.pem"], tls_pki["server.key"]),
                 handshake_timeout=0.5, loops=2, lb="round-robin", metrics="tcp://127.0.0.1:0") as engine:
        addr = engine.addresses[0]
        for _ in range(2):
            with client.wrap_socket(connect(addr), server_hostname="localhost") as c:
                c.sendall(b"over tls")
                assert recv_exact(c, 8) == b"over tls"
        with connect(addr) as c:  # plain text to a TLS port
            c.sendall(b"GET / HTTP/1.0\r\n\r\n")
            _closed_by_server(c)
        with connect(addr) as c:  # silent: the handshake timeout closes it
            _closed_by_server(c)
        connect(addr).close()     # gone before a ClientHello
        wait_for(lambda: engine.stats()["open"] == 0 and engine.stats()["tls_failures"] == 3,
                 what="every connection to close")
        snap = engine.stats()
        scraped = _scrape(engine.metrics_address)
    assert (snap["accepted"], snap["tls_handshakes"], snap["tls_failures"]) == (5, 2, 3)
    assert [row["tls_handshakes"] for row in snap.loops] == [1, 1]
    assert (snap["closed.peer"], snap["closed.error"], snap["closed.timeout"]) == (3, 1, 1)
    assert snap["bytes_in"] == snap["bytes_out"] == 16  # application bytes, not ciphertext
    assert scraped[("netreactor_tls_handshakes_total", ())] == 2
    assert scraped[("netreactor_tls_handshake_failures_total", ())] == 3


def test_start_tls_handshakes_count_too(tls_pki):
    """A STARTTLS upgrade on a plain listener is a TLS handshake of the engine too;
    a client that answers the upgrade with garbage is a failure."""
    import ssl

    from netreactor.tls import server_context

    sctx = server_context(tls_pki["server.pem"], tls_pki["server.key"])

    class StartTLS(nr.EventHandler):
        def on_traffic(self, conn):
            data = conn.read()
            if conn.tls is None and data == b"STARTTLS":
                conn.write(b"go")
                conn.start_tls(sctx, server_side=True)
            else:
                conn.write(data)

    client = ssl.create_default_context(cafile=tls_pki["ca.pem"])
    with serving(StartTLS(), "tcp://127.0.0.1:0") as engine:
        for garbage in (False, True):
            with connect(engine.addresses[0]) as raw:
                raw.sendall(b"STARTTLS")
                assert recv_exact(raw, 2) == b"go"
                if garbage:
                    raw.sendall(b"not a ClientHello\r\n")
                    _closed_by_server(raw)
                    continue
                with client.wrap_socket(raw, server_hostname="localhost") as c:
                    c.sendall(b"secret")
                    assert recv_exact(c, 6) == b"secret"
        wait_for(lambda: engine.stats()["open"] == 0, what="the closes")
        snap = engine.stats()
    assert (snap["tls_handshakes"], snap["tls_failures"]) == (1, 1)


@pytest.mark.parametrize("loops", [1, 3], ids=["1-loop", "main-reactor"])
def test_refusals_over_max_connections_per_ip(loops):
    """A connection refused by max_connections_per_ip is accepted and refused in the
    stats (on a serving loop, whichever thread accepted it), never open."""
    with serving(Commands(), "tcp://127.0.0.1:0", loops=loops, max_connections_per_ip=1) as engine:
        addr = engine.addresses[0]
        with connect(addr) as kept:
            kept.sendall(b"x")
            assert recv_exact(kept, 1) == b"x"
            for _ in range(3):
                with connect(addr) as c:
                    _closed_by_server(c)
            wait_for(lambda: engine.stats()["refused.per_ip"] == 3, what="the refusals")
            snap = engine.stats()
            assert (snap["accepted"], snap["open"]) == (4, 1)
            assert engine.limits.snapshot()["refused"] == 3


def test_stats_before_serving_is_all_zero():
    engine = nr.Engine(Commands(), "tcp://127.0.0.1:0")
    snap = engine.stats()
    assert set(snap.total) == set(KEYS) and not any(snap.total.values())
    assert engine.metrics_address is None


# ---------------------------------------------------------------- /metrics from the engine

def _scrape(address: str) -> dict:
    """{(name, labels): value} of one scrape, parsed by prometheus_client."""
    host_port = address.split("://", 1)[1]
    with urllib.request.urlopen(f"http://{host_port}/metrics", timeout=5) as r:
        assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = r.read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


@pytest.mark.parametrize("loops", [1, 3])
def test_the_engine_serves_metrics_itself(loops):
    with serving(Commands(), "tcp://127.0.0.1:0", loops=loops, metrics="tcp://127.0.0.1:0") as engine:
        assert engine.metrics_address.startswith("tcp://127.0.0.1:")
        for _ in range(3):
            with connect(engine.addresses[0]) as c:
                c.sendall(b"hello")
                assert recv_exact(c, 5) == b"hello"
        wait_for(lambda: engine.stats()["open"] == 0, what="the closes")
        first = _scrape(engine.metrics_address)
        second = _scrape(engine.metrics_address)
        snap = engine.stats()
    # the scrapes themselves are not connections of the application
    assert first[("netreactor_connections_accepted_total", ())] == 3 == snap["accepted"]
    assert second[("netreactor_connections_closed_total", (("cause", "peer"),))] == 3
    assert first[("netreactor_received_bytes_total", ())] == 15 == first[("netreactor_sent_bytes_total", ())]
    assert first[("netreactor_connections_open", ())] == 0


def test_metrics_on_a_unix_socket(tmp_path):
    path = str(tmp_path / "metrics.sock")
    with serving(Commands(), "tcp://127.0.0.1:0", metrics=f"unix://{path}") as engine:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(5)
            s.connect(path)
            s.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        assert data.startswith(b"HTTP/1.0 200") or data.startswith(b"HTTP/1.1 200")
        assert b"netreactor_connections_accepted_total 0" in data
        assert engine.metrics_address == f"unix://{path}"


@pytest.mark.parametrize("options, match", [
    ({"metrics": "udp://127.0.0.1:9100"}, "'metrics' must be a tcp:// or unix:// address"),
    ({"metrics": "127.0.0.1:9100"}, "'metrics': address '127.0.0.1:9100' has no scheme"),
    ({"metrics": "tcp://127.0.0.1:9000"}, "'metrics'.*is also an address to serve"),
    ({"max_connections_per_worker": 10}, "'max_connections_per_worker' needs worker processes"),
    ({"max_worker_rss": 1 << 30}, "'max_worker_rss' needs worker processes"),
    ({"max_worker_rss": 100, "workers": 2}, "'max_worker_rss' must be in"),
    ({"max_connections_per_worker": 0, "workers": 2}, "'max_connections_per_worker' must be in"),
])
def test_bad_options_name_themselves(options, match):
    with pytest.raises(ValueError, match=match):
        nr.Engine(Commands(), "tcp://127.0.0.1:9000", **options)


# ---------------------------------------------------------------- workers: the supervisor's endpoint

APP = textwrap.dedent("""
    import os
    import netreactor as nr

    class Pid(nr.EventHandler):
        def on_traffic(self, conn):
            conn.write(b"%d" % os.getpid())
            conn.read()
            return nr.Action.CLOSE
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Supervised:
    """``netreactor run --workers 2 --metrics ...`` in a subprocess."""

    def __init__(self, tmp_path, *extra: str) -> None:
        (tmp_path / "pidapp.py").write_text(APP)
        self.port, self.metrics_port = _free_port(), _free_port()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "netreactor", "run", "pidapp:Pid", "--app-dir", str(tmp_path),
             "-l", f"tcp://127.0.0.1:{self.port}", "--workers", "2",
             "--metrics", f"tcp://127.0.0.1:{self.metrics_port}", *extra],
            env=dict(os.environ, PYTHONPATH=ROOT), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.metrics = f"tcp://127.0.0.1:{self.metrics_port}"
        wait_for(self._ready, timeout=20, what="the workers to serve")

    def _ready(self) -> bool:
        assert self.proc.poll() is None, self.proc.stderr.read().decode()
        try:
            return len(self.pids(6)) == 2
        except OSError:
            return False

    def ask(self) -> int:
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as c:
            c.sendall(b"?")
            return int(c.recv(20))

    def pids(self, n: int) -> set:
        return {self.ask() for _ in range(n)}

    def value(self, name: str, labels: tuple = ()) -> float:
        return _scrape(self.metrics)[(name, labels)]

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        _, err = self.proc.communicate(timeout=20)
        assert self.proc.returncode == 0, err.decode()
        return err.decode()


def test_the_supervisor_serves_the_sum_and_it_never_goes_back(tmp_path):
    srv = Supervised(tmp_path)
    try:
        accepted = "netreactor_connections_accepted_total"
        for _ in range(20):
            srv.ask()
        wait_for(lambda: srv.value(accepted) >= 20, what="the workers' reports")
        before = srv.value(accepted)
        victim = srv.ask()
        os.kill(victim, signal.SIGKILL)  # its last report stays in the sum
        seen = []
        deadline = time.monotonic() + 15
        while True:
            seen.append(srv.value(accepted))
            pids = srv.pids(6)
            if victim not in pids and len(pids) == 2:
                break
            assert time.monotonic() < deadline, "the killed worker was not replaced"
        for _ in range(10):
            srv.ask()
        wait_for(lambda: srv.value(accepted) >= before + 10, what="the new worker's reports")
        seen.append(srv.value(accepted))
        assert seen == sorted(seen) and seen[0] >= before  # never backwards
        assert srv.value("netreactor_connections_open") <= 2  # gauges: live workers only
    finally:
        srv.stop()


PROMETHEUS = shutil.which("prometheus") or ("/usr/bin/prometheus" if os.access("/usr/bin/prometheus", os.X_OK)
                                            else None)


def _query(api: str, expr: str) -> list:
    url = f"{api}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=2) as r:
        data = json.load(r)
    assert data["status"] == "success", data
    return data["data"]["result"]


@pytest.mark.skipif(PROMETHEUS is None, reason="prometheus is not installed (Debian package 'prometheus')")
def test_prometheus_scrapes_a_supervisor_through_a_worker_restart(tmp_path):
    """A real Prometheus scrapes the workers' sum every 0.5 s while a worker is
    killed and replaced: its resets() of the counters stays 0."""
    srv = Supervised(tmp_path)
    web = _free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(f"""
global:
  scrape_interval: 500ms
  scrape_timeout: 500ms
scrape_configs:
  - job_name: netreactor
    static_configs:
      - targets: ["127.0.0.1:{srv.metrics_port}"]
""")
    log = open(tmp_path / "prometheus.log", "wb")
    proc = subprocess.Popen([PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp_path}/data",
                             f"--web.listen-address=127.0.0.1:{web}", "--log.level=warn"],
                            stdout=log, stderr=subprocess.STDOUT)
    api = f"http://127.0.0.1:{web}"
    expr = 'netreactor_connections_accepted_total{job="netreactor"}'
    try:
        def scraped(at_least: float) -> bool:
            if proc.poll() is not None:
                pytest.skip(f"prometheus would not start (exit {proc.returncode}): "
                            f"{(tmp_path / 'prometheus.log').read_text()[-500:]}")
            try:
                result = _query(api, expr)
            except OSError:
                return False
            return bool(result) and float(result[0]["value"][1]) >= at_least

        for _ in range(10):
            srv.ask()
        wait_for(lambda: scraped(10), timeout=30, what="Prometheus to store the first counts")
        victim = srv.ask()
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: victim not in srv.pids(6) and len(srv.pids(6)) == 2, timeout=15,
                 what="the replacement worker")
        for _ in range(10):
            srv.ask()
        wait_for(lambda: scraped(21), timeout=30, what="Prometheus to store the later counts")
        assert _query(api, f"resets({expr}[5m])")[0]["value"][1] == "0"
        assert _query(api, 'up{job="netreactor"}')[0]["value"][1] == "1"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()
        srv.stop()
