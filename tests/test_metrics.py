"""netreactor.metrics: the stats table, the text exposition (checked by prometheus_client's
parser), the worker aggregate and its wire form, and MetricsHandler on a real Engine,
scraped by raw sockets, curl and a real Prometheus server."""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import socket
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator

import pytest
from conftest import recv_until_eof, serving
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from netreactor import metrics
from netreactor.metrics import (
    CLOSE_CAUSES,
    CONTENT_TYPE,
    KEYS,
    LOOP_KEYS,
    METRICS,
    REFUSAL_REASONS,
    Aggregator,
    Metric,
    MetricsHandler,
    Snapshot,
    StatsDecoder,
    decode_stats,
    encode_stats,
    loop_stats,
    render,
)

COUNTERS = [k for m in METRICS if m.kind == "counter" for k in m.keys]
GAUGES = [k for m in METRICS if m.kind == "gauge" for k in m.keys]


def families(text: str) -> dict:
    return {f.name: f for f in text_string_to_metric_families(text)}


def samples(text: str) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} of an exposition."""
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            key = (s.name, tuple(sorted(s.labels.items())))
            assert key not in out, f"duplicate series {key}"
            out[key] = s.value
    return out


def busy_snapshot() -> Snapshot:
    a, b = loop_stats(), loop_stats()
    a.update({"open": 3, "accepted": 10, "closed.peer": 4, "closed.timeout": 2, "refused.proxy": 1,
              "bytes_in": 1000, "bytes_out": 2048, "frames_in": 7, "paused": 1, "queued_out": 512,
              "tls_handshakes": 5, "tls_failures": 1})
    b.update({"open": 1, "accepted": 5, "closed.local": 3, "closed.cap": 1, "refused.max_connections": 2,
              "refused.per_ip": 6, "bytes_in": 24, "bytes_out": 1, "frames_out": 9, "closed.error": 1})
    return Snapshot.from_loops([a, b], {"pool_queue": 4})


# ---------------------------------------------------------------- the table

def test_table_follows_prometheus_naming():
    for m in METRICS:
        assert m.full_name.startswith("netreactor_")
        assert m.name.endswith("_total") == (m.kind == "counter")
        if "bytes" in m.key or m.key == "queued_out":
            assert "_bytes" in m.name  # units in the name
    assert {m.full_name for m in METRICS} >= {
        "netreactor_connections_open", "netreactor_connections_accepted_total",
        "netreactor_connections_closed_total", "netreactor_connections_refused_total",
        "netreactor_received_bytes_total", "netreactor_sent_bytes_total", "netreactor_frames_received_total",
        "netreactor_frames_sent_total", "netreactor_connections_paused", "netreactor_output_queued_bytes",
        "netreactor_tls_handshakes_total", "netreactor_tls_handshake_failures_total",
        "netreactor_pool_queue_depth"}
    assert CLOSE_CAUSES == ("peer", "local", "error", "timeout", "cap")
    assert REFUSAL_REASONS == ("max_connections", "per_ip", "proxy")
    assert "closed.timeout" in LOOP_KEYS and "pool_queue" in KEYS and "pool_queue" not in LOOP_KEYS


def test_one_row_adds_a_metric(monkeypatch):
    row = Metric("widgets", "widgets_made_total", "counter", "Widgets made.", "colour", ("red", "blue"))
    monkeypatch.setattr(metrics, "METRICS", METRICS + (row,))
    text = render(Snapshot({"widgets.red": 2}))
    assert samples(text)[("netreactor_widgets_made_total", (("colour", "red"),))] == 2
    assert samples(text)[("netreactor_widgets_made_total", (("colour", "blue"),))] == 0
    assert families(text)["netreactor_widgets_made"].type == "counter"


def test_loop_stats_is_a_plain_counting_dict():
    s = loop_stats()
    assert set(s) == set(LOOP_KEYS) and not any(s.values())
    s["accepted"] += 1
    assert loop_stats()["accepted"] == 0


def test_snapshot_totals_and_checks():
    snap = busy_snapshot()
    assert snap["accepted"] == 15 and snap["open"] == 4 and snap["pool_queue"] == 4
    assert snap["closed.peer"] == 4 and snap["closed.local"] == 3 and snap["refused.per_ip"] == 6
    assert len(snap.loops) == 2 and snap.loops[1]["accepted"] == 5
    assert set(snap.total) == set(KEYS)
    with pytest.raises(ValueError, match="unknown loop stats key 'acepted'"):
        Snapshot.from_loops([{"acepted": 1}])
    with pytest.raises(ValueError, match="unknown process stats key 'accepted'"):
        Snapshot.from_loops([], {"accepted": 1})
    with pytest.raises(ValueError, match="must be a number"):
        Snapshot.from_loops([{"accepted": True}])
    with pytest.raises(KeyError):
        snap["nope"]


# ---------------------------------------------------------------- exposition

def test_render_totals_parse_with_prometheus_client():
    snap = busy_snapshot()
    text = render(snap)
    fams = families(text)
    for m in METRICS:
        fam = fams[m.full_name.removesuffix("_total") if m.kind == "counter" else m.full_name]
        assert fam.type == m.kind and fam.documentation == m.help
    got = samples(text)
    assert got[("netreactor_connections_accepted_total", ())] == 15
    assert got[("netreactor_connections_open", ())] == 4
    for cause in CLOSE_CAUSES:
        assert got[("netreactor_connections_closed_total", (("cause", cause),))] == snap[f"closed.{cause}"]
    for reason in REFUSAL_REASONS:
        assert got[("netreactor_connections_refused_total", (("reason", reason),))] == snap[f"refused.{reason}"]
    assert got[("netreactor_pool_queue_depth", ())] == 4
    assert len(got) == len(KEYS)  # every series, zeros included
    assert text.endswith("\n") and "\n\n" not in text


def test_render_per_loop():
    snap = busy_snapshot()
    got = samples(render(snap, per_loop=True))
    assert got[("netreactor_connections_accepted_total", (("loop", "0"),))] == 10
    assert got[("netreactor_connections_accepted_total", (("loop", "1"),))] == 5
    assert got[("netreactor_connections_closed_total", (("cause", "peer"), ("loop", "0")))] == 4
    assert got[("netreactor_pool_queue_depth", ())] == 4  # process scope: no loop label
    assert len(got) == 2 * len(LOOP_KEYS) + 1
    # an aggregate has no loops: per_loop falls back to the totals
    assert samples(render(Snapshot(snap.total), per_loop=True)) == samples(render(snap))


NASTY = 'a "quoted" \\back\\slash\nnew line, ünïcode'


def test_escaping_of_label_values_and_help(monkeypatch):
    text = render(busy_snapshot(), const_labels={"service": NASTY, "zone": ""})
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            assert s.labels["service"] == NASTY and s.labels["zone"] == ""
    assert '\\"quoted\\"' in text and "\\\\back\\\\slash\\nnew" in text
    row = Metric("x", "odd_help", "gauge", "Backslash \\ and\nnewline and \"quotes\" kept.")
    monkeypatch.setattr(metrics, "METRICS", (row,))
    text = render(Snapshot({"x": 1}))
    assert "# HELP netreactor_odd_help Backslash \\\\ and\\nnewline and \"quotes\" kept.\n" in text
    assert families(text)["netreactor_odd_help"].documentation == row.help


@pytest.mark.parametrize("labels", [{"loop": "x"}, {"cause": "x"}, {"__name__": "x"}, {"1abc": "x"},
                                    {"a-b": "x"}, {"ok": 3}])
def test_bad_const_labels(labels):
    with pytest.raises(ValueError):
        render(busy_snapshot(), const_labels=labels)


@pytest.mark.parametrize("value, text", [(0, "0"), (12345678901234567890, "12345678901234567890"),
                                         (2.5, "2.5"), (3.0, "3"), (1e300, "1e+300"),
                                         (float("nan"), "NaN"), (float("inf"), "+Inf"),
                                         (float("-inf"), "-Inf")])
def test_value_formatting(value, text):
    out = render(Snapshot({"open": value}))
    assert f"\nnetreactor_connections_open {text}\n" in out
    parsed = samples(out)[("netreactor_connections_open", ())]
    assert (math.isnan(parsed) and math.isnan(value)) or float(parsed) == float(value)


# ---------------------------------------------------------------- the worker aggregate

def test_aggregator_counters_survive_worker_death_gauges_do_not():
    agg = Aggregator()
    agg.update("w1", Snapshot.from_loops([{"accepted": 10, "open": 4}]))
    agg.update("w2", Snapshot.from_loops([{"accepted": 5, "open": 1}], {"pool_queue": 2}))
    s = agg.snapshot()
    assert s["accepted"] == 15 and s["open"] == 5 and s["pool_queue"] == 2 and agg.workers == 2
    agg.retire("w1")                                   # w1 dies with 10 accepted, 4 open
    s = agg.snapshot()
    assert s["accepted"] == 15 and s["open"] == 1 and agg.workers == 1 and agg.retired_workers == 1
    agg.update("w3", Snapshot.from_loops([{"accepted": 1, "open": 1}]))   # its replacement
    s = agg.snapshot()
    assert s["accepted"] == 16 and s["open"] == 2
    agg.retire("unknown")                              # ignored
    assert agg.snapshot()["accepted"] == 16


def test_aggregator_same_id_restart_is_detected():
    """A replacement reporting under the dead worker's id (a slot number) before
    retire() was called: its counters went down, so the old ones are kept."""
    agg = Aggregator()
    agg.update(0, Snapshot.from_loops([{"accepted": 100, "bytes_in": 5000}]))
    agg.update(0, Snapshot.from_loops([{"accepted": 3, "bytes_in": 6000}]))
    s = agg.snapshot()
    assert s["accepted"] == 103 and s["bytes_in"] == 11000


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["work", "report", "die"]), st.integers(0, 3),
                          st.integers(0, 50)), max_size=60))
def test_aggregator_counters_never_go_back(ops):
    """Random workers doing work, reporting, dying and being replaced (new ids): the
    aggregate's counters never decrease, and equal all the work ever reported."""
    agg = Aggregator()
    live: dict[int, dict[str, int]] = {}   # slot -> counters of the current incarnation
    gen: dict[int, int] = {}
    reported_total = 0
    last_reported: dict[tuple[int, int], int] = {}
    previous = dict.fromkeys(COUNTERS, 0)
    for op, slot, amount in ops:
        incarnation = (slot, gen.get(slot, 0))
        if op == "work":
            live.setdefault(slot, {"accepted": 0})["accepted"] += amount
        elif op == "report" and slot in live:
            agg.update(incarnation, Snapshot.from_loops([live[slot]]))
            reported_total += live[slot]["accepted"] - last_reported.get(incarnation, 0)
            last_reported[incarnation] = live[slot]["accepted"]
        elif op == "die":
            agg.retire(incarnation)
            live.pop(slot, None)
            gen[slot] = gen.get(slot, 0) + 1
        now = agg.snapshot()
        for k in COUNTERS:
            assert now[k] >= previous[k]
        previous = dict(now.total)
        assert now["accepted"] == reported_total


# ---------------------------------------------------------------- the wire form

def test_wire_round_trip():
    snap = busy_snapshot()
    line = encode_stats(snap)
    assert line.startswith(b"stats {") and line.endswith(b"\n") and line.count(b"\n") == 1
    assert len(line) < 512  # fits one atomic pipe write (PIPE_BUF is 4096)
    back = decode_stats(line)
    assert dict(back.total) == dict(snap.total)
    assert json.loads(line[6:])["t"].get("closed.peer") == 4


@pytest.mark.parametrize("line", [
    b"", b"ready", b"stats", b"stats {", b"stats []", b'stats {"v":2,"t":{}}', b'stats {"v":1}',
    b'stats {"v":1,"t":[]}', b'stats {"v":1,"t":{"accepted":-1}}', b'stats {"v":1,"t":{"accepted":"1"}}',
    b'stats {"v":1,"t":{"accepted":true}}', b'stats {"v":1,"t":{"accepted":1e999}}',
    b'stats {"v":1,"t":{"accepted":NaN}}', b"stats " + b"[" * 100000 + b"]" * 100000,
    b"stats \xff\xfe",
])
def test_decode_refuses_garbage(line):
    with pytest.raises(ValueError):
        decode_stats(line)


def test_decode_ignores_unknown_keys():
    snap = decode_stats(b'stats {"v":1,"t":{"accepted":3,"from_the_future":9}}')
    assert snap["accepted"] == 3 and "from_the_future" not in snap.total


def test_stream_decoder_is_bounded_and_tolerant():
    good = encode_stats(busy_snapshot())
    d = StatsDecoder(max_line=1024)
    stream = b"garbage\n" + good + b"x" * 5000 + b"\n" + b"ready\n" + good
    out = []
    for i in range(0, len(stream), 13):
        out += d.feed(stream[i:i + 13])
        assert len(d._buf) <= 1024 + 13
    assert len(out) == 2 and all(dict(s.total) == dict(busy_snapshot().total) for s in out)
    assert d.rejected == 3  # "garbage", the 5000-byte line, "ready"
    with pytest.raises(ValueError):
        StatsDecoder(max_line=10)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=200), max_size=20))
def test_stream_decoder_never_raises(chunks):
    d = StatsDecoder(max_line=256)
    for c in chunks:
        d.feed(c)
        assert len(d._buf) <= 256


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(1, 40), max_size=10))
def test_stream_decoder_any_split(cuts):
    stream = encode_stats(busy_snapshot()) * 3
    d = StatsDecoder()
    out, pos = [], 0
    for c in cuts:
        out += d.feed(stream[pos:pos + c])
        pos += c
    out += d.feed(stream[pos:])
    assert len(out) == 3 and d.rejected == 0


# ---------------------------------------------------------------- MetricsHandler on a real engine

class Counting:
    """A snapshot source whose counters move at each scrape."""

    def __init__(self) -> None:
        self.calls = 0
        self.lock = threading.Lock()

    def __call__(self) -> Snapshot:
        with self.lock:
            self.calls += 1
            n = self.calls
        return Snapshot.from_loops([{"accepted": n, "open": 2, "closed.peer": n // 2}, {"accepted": 1}])


@contextlib.contextmanager
def metrics_server(**kw) -> Iterator[tuple[int, Counting]]:
    source = kw.pop("source", None) or Counting()
    with serving(MetricsHandler(source, **kw), "tcp://127.0.0.1:0") as engine:
        yield int(engine.addresses[0].rsplit(":", 1)[1]), source


_leftover: dict[int, bytes] = {}


def read_response(sock: socket.socket, head_only: bool = False) -> tuple[int, dict[str, str], bytes]:
    """One response; bytes of the next (pipelined) one are kept for the next call."""
    buf = _leftover.pop(sock.fileno(), b"")
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        assert chunk, f"EOF before the head: {buf!r}"
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = 0 if head_only else int(headers.get("content-length", 0))
    while len(rest) < length:
        chunk = sock.recv(65536)
        assert chunk, "EOF in the body"
        rest += chunk
    if len(rest) > length:
        _leftover[sock.fileno()] = rest[length:]
    return status, headers, rest[:length]


def test_handler_get_keep_alive_head_and_errors():
    with metrics_server() as (port, source), socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        status, headers, body = read_response(s)
        assert status == 200 and headers["content-type"] == CONTENT_TYPE
        got = samples(body.decode())
        assert got[("netreactor_connections_accepted_total", ())] == 2  # 1 + 1
        # same connection: keep-alive, and the counters moved
        s.sendall(b"GET /metrics?debug=1 HTTP/1.1\r\nHost: x\r\n\r\n")
        status, _, body = read_response(s)
        assert status == 200 and samples(body.decode())[("netreactor_connections_accepted_total", ())] == 3
        # HEAD: same headers, no body
        s.sendall(b"HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        status, headers, body = read_response(s, head_only=True)
        assert status == 200 and int(headers["content-length"]) > 1000 and body == b""
        # 404, 405 (with Allow), all on the same connection, pipelined
        s.sendall(b"GET /other HTTP/1.1\r\nHost: x\r\n\r\n"
                  b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
                  b"DELETE /metrics HTTP/1.1\r\nHost: x\r\n\r\n"
                  b"HEAD /nope HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(s)[0] == 404
        status, headers, _ = read_response(s)
        assert status == 405 and headers["allow"] == "GET, HEAD"
        assert read_response(s)[0] == 405
        status, headers, body = read_response(s, head_only=True)
        assert status == 404 and body == b""
        # Connection: close is honoured
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        status, headers, _ = read_response(s)
        assert status == 200 and headers["connection"] == "close"
        assert recv_until_eof(s) == b"" and s.fileno() not in _leftover
        assert source.calls == 4  # GET, GET, HEAD, GET: errors never take a snapshot


def test_handler_http10_and_bad_requests():
    with metrics_server() as (port, _):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
            status, headers, _ = read_response(s)
            assert status == 200 and headers["connection"] == "close"
            assert recv_until_eof(s) == b""  # 1.0 without keep-alive: closed after the response
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"GET /metrics HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            status, headers, _ = read_response(s)
            assert status == 200 and headers["connection"] == "keep-alive"
            s.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
            assert read_response(s)[0] == 200
        for bad, code in [(b"GARBAGE\r\n\r\n", 400), (b"GET /metrics HTTP/1.1\r\n\r\n", 400),
                          (b"BREW /metrics HTTP/1.1\r\nHost: x\r\n\r\n", 501),
                          (b"GET /metrics HTTP/2.0\r\nHost: x\r\n\r\n", 505),
                          (b"GET /" + b"a" * 10000 + b" HTTP/1.1\r\n\r\n", 414)]:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                s.sendall(bad)
                status, _, _ = read_response(s)
                assert status == code, bad[:40]
                assert recv_until_eof(s) == b""


def test_handler_snapshot_failure_is_a_500(expected_errors):
    def broken() -> Snapshot:
        raise RuntimeError("stats unavailable")

    with metrics_server(source=broken) as (port, _), socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(s)[0] == 500
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")  # the connection goes on
        assert read_response(s)[0] == 500
    assert any("snapshot could not be taken" in r.getMessage() for r in expected_errors)


def test_handler_closes_idle_and_stalled_connections():
    with metrics_server(idle_timeout=0.3) as (port, _):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            assert read_response(s)[0] == 200
            start = time.monotonic()
            assert recv_until_eof(s) == b""
            assert time.monotonic() - start < 4
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"GET /metr")  # a request that never finishes
            assert recv_until_eof(s) == b""


def test_handler_options_are_checked():
    for kw in ({"path": "metrics"}, {"path": "/a b"}, {"idle_timeout": 0}, {"idle_timeout": True},
               {"const_labels": {"loop": "1"}}, {"max_head": 0}):
        with pytest.raises(ValueError):
            MetricsHandler(Counting(), **kw)
    with pytest.raises(ValueError, match="callable"):
        MetricsHandler("nope")  # type: ignore[arg-type]


def test_handler_custom_path_and_labels():
    with metrics_server(path="/stats", const_labels={"service": "api"}, per_loop=True) as (port, _), \
            socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\nGET /stats HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(s)[0] == 404
        status, _, body = read_response(s)
        got = samples(body.decode())
        assert status == 200
        assert got[("netreactor_connections_accepted_total", (("loop", "1"), ("service", "api")))] == 1


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_scrapes_twice_on_one_connection():
    with metrics_server() as (port, source):
        url = f"http://127.0.0.1:{port}/metrics"
        out = subprocess.run(["curl", "-sS", "-v", "--max-time", "10", url, url], capture_output=True,
                             timeout=20, check=True)
    text = out.stdout.decode()
    assert text.count("# TYPE netreactor_connections_accepted_total counter") == 2
    assert "Re-using existing connection" in out.stderr.decode() or \
        "Reusing existing connection" in out.stderr.decode()
    parts = text.split("# HELP netreactor_connections_open ")
    assert len(parts) == 3
    for part in parts[1:]:
        samples("# HELP netreactor_connections_open " + part)
    assert source.calls == 2


# ---------------------------------------------------------------- a real Prometheus

PROMETHEUS = shutil.which("prometheus") or ("/usr/bin/prometheus" if os.access("/usr/bin/prometheus", os.X_OK)
                                            else None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _query(api: str, expr: str) -> list:
    url = f"{api}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=2) as r:
        data = json.load(r)
    assert data["status"] == "success", data
    return data["data"]["result"]


@pytest.mark.skipif(PROMETHEUS is None, reason="prometheus is not installed (Debian package 'prometheus')")
def test_prometheus_scrapes_the_endpoint(tmp_path):
    with metrics_server(const_labels={"service": "it"}) as (port, source):
        web = _free_port()  # Prometheus cannot inherit a socket; the port stays free in between
        config = tmp_path / "prometheus.yml"
        config.write_text(f"""
global:
  scrape_interval: 1s
  scrape_timeout: 1s
scrape_configs:
  - job_name: netreactor
    static_configs:
      - targets: ["127.0.0.1:{port}"]
""")
        with open(tmp_path / "prometheus.log", "wb") as log:
            proc = subprocess.Popen([PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp_path}/data",
                                     f"--web.listen-address=127.0.0.1:{web}", "--log.level=warn"],
                                    stdout=log, stderr=subprocess.STDOUT)
            api = f"http://127.0.0.1:{web}"
            try:
                deadline = time.monotonic() + 20
                up = accepted = None
                while time.monotonic() < deadline:
                    if proc.poll() is not None:
                        pytest.skip(f"prometheus would not start (exit {proc.returncode}): "
                                    f"{(tmp_path / 'prometheus.log').read_text()[-500:]}")
                    try:
                        up = _query(api, 'up{job="netreactor"}')
                        accepted = _query(api, 'netreactor_connections_accepted_total{job="netreactor"}')
                    except OSError:
                        up = None  # not listening yet
                    if up and up[0]["value"][1] == "1" and accepted:
                        break
                    time.sleep(0.2)
                assert up and up[0]["value"][1] == "1", f"no successful scrape within 20 s: {up}"
                assert accepted, "the scrape did not store netreactor_connections_accepted_total"
                series = accepted[0]
                assert series["metric"]["service"] == "it"
                assert series["metric"]["instance"] == f"127.0.0.1:{port}"
                assert float(series["value"][1]) >= 2
                closed = _query(api, 'netreactor_connections_closed_total{cause="peer"}')
                assert closed and closed[0]["metric"]["cause"] == "peer"
                assert source.calls >= 1
            finally:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
