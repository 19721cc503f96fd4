"""The HTTP example end to end: raw sockets, curl, wrk and h11 as an independent client."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import time

import pytest

from netreactor.examples import DESCRIPTIONS, load_example
from netreactor.examples.http import HTTPServer, StaticRoute
from conftest import exchange, serving_port

CURL = shutil.which("curl")
WRK = shutil.which("wrk")
need_curl = pytest.mark.skipif(CURL is None, reason="curl not installed (Debian package curl)")
need_wrk = pytest.mark.skipif(WRK is None, reason="wrk not installed (Debian package wrk)")

GET = b"GET /plaintext HTTP/1.1\r\nHost: t\r\n\r\n"


def serving(handler=None, **options):
    return serving_port(handler or HTTPServer(), **options)


@pytest.fixture(scope="module")
def port():
    with serving() as p:
        yield p


def split_responses(data: bytes):
    """Cut a byte stream into (status, headers dict, body) using Content-Length."""
    out = []
    while data:
        head, _, rest = data.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get(b"content-length", b"0")) if status >= 200 else 0
        out.append((status, headers, rest[:length]))
        data = rest[length:]
    return out


def test_registered_as_example():
    assert "http" in DESCRIPTIONS
    assert isinstance(load_example("http")(), HTTPServer)


def test_plaintext(port):
    data, closed = exchange(port, GET)
    assert not closed
    [(status, headers, body)] = split_responses(data)
    assert (status, body) == (200, b"Hello, World!")
    assert headers[b"content-type"] == b"text/plain"
    assert headers[b"content-length"] == b"13"
    assert headers[b"server"] == b"netreactor"
    assert re.fullmatch(rb"[A-Z][a-z]{2}, \d\d [A-Z][a-z]{2} \d{4} \d\d:\d\d:\d\d GMT", headers[b"date"])


def test_json(port):
    [(status, headers, body)] = split_responses(exchange(port, b"GET /json HTTP/1.1\r\nHost: t\r\n\r\n")[0])
    assert (status, headers[b"content-type"], body) == (200, b"application/json", b'{"message":"Hello, World!"}')


def test_not_found_method_not_allowed_and_head(port):
    data, closed = exchange(port, b"GET /nope HTTP/1.1\r\nHost: t\r\n\r\n"
                                  b"POST /plaintext HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n"
                                  b"HEAD /plaintext HTTP/1.1\r\nHost: t\r\n\r\n"
                                  b"GET /plaintext?x=1 HTTP/1.1\r\nHost: t\r\n\r\n")
    assert not closed
    head_end = data.index(b"HTTP/1.1 200")
    rest = data[head_end:]
    assert rest.count(b"Hello, World!") == 1  # HEAD has no body, the GET has
    statuses = [int(m) for m in re.findall(rb"HTTP/1.1 (\d+)", data)]
    assert statuses == [404, 405, 200, 200]
    assert b"Allow: GET, HEAD" in data


def test_pipelining_keeps_order(port):
    requests = (GET + b"GET /json HTTP/1.1\r\nHost: t\r\n\r\n") * 20
    data, closed = exchange(port, requests)
    responses = split_responses(data)
    assert not closed
    assert [b for _, _, b in responses] == [b"Hello, World!", b'{"message":"Hello, World!"}'] * 20


def test_bodies(port):
    body = bytes(range(256)) * 40
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + 999]), body[i:i + 999]) for i in range(0, len(body), 999))
    data, _ = exchange(port, b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % len(body) + body
                       + b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked
                       + b"0\r\n\r\n")
    assert [b for _, _, b in split_responses(data)] == [body, body]


def test_request_split_across_writes(port):
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        req = b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
        for i in range(len(req)):
            s.sendall(req[i:i + 1])
            time.sleep(0.001)
        data = b""
        while b"hello" not in data:
            data += s.recv(4096)
        assert split_responses(data)[0][2] == b"hello"


def test_expect_100_continue(port):
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n")
        assert s.recv(4096) == b"HTTP/1.1 100 Continue\r\n\r\n"
        s.sendall(b"data")
        data = b""
        while not data.endswith(b"data"):
            data += s.recv(4096)
        assert split_responses(data)[0][:1] == (200,)


@pytest.mark.parametrize("request_bytes,keep", [
    (b"GET /plaintext HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n", False),
    (b"GET /plaintext HTTP/1.0\r\n\r\n", False),
    (b"GET /plaintext HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", True),
    (b"GET /nope HTTP/1.0\r\n\r\n", False),
])
def test_connection_management(port, request_bytes, keep):
    data, closed = exchange(port, request_bytes + GET, wait=2)
    responses = split_responses(data)
    assert closed is not keep
    assert len(responses) == (2 if keep else 1)
    connection = responses[0][1].get(b"connection")
    assert connection == (b"keep-alive" if keep and b"HTTP/1.0" in request_bytes else
                          None if keep else b"close")


@pytest.mark.parametrize("request_bytes,status", [
    (b"GARBAGE\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: t\r\nBad Header\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\n\r\n", 400),
    (b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: t\r\nX-Big: " + b"x" * 20000 + b"\r\n\r\n", 431),
    (b"GET / HTTP/1.1\r\nHost: t\r\nX-Big: " + b"x" * 20000, 431),
    (b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 999999999\r\n\r\n", 413),
    (b"BREW /coffee HTTP/1.1\r\nHost: t\r\n\r\n", 501),
    (b"GET / HTTP/2.0\r\nHost: t\r\n\r\n", 505),
    (b"GET /" + b"a" * 10000 + b" HTTP/1.1\r\nHost: t\r\n\r\n", 414),
])
def test_errors_answer_then_close(port, request_bytes, status):
    data, closed = exchange(port, GET + request_bytes + GET)
    responses = split_responses(data)
    assert closed
    assert [s for s, _, _ in responses] == [200, status]
    assert responses[1][1][b"connection"] == b"close"


@pytest.mark.parametrize("request_bytes", [
    b"GET / HTTP/1.1\nHost: t\n\n",
    b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\n0\n\n",
])
def test_bare_lf_gets_400_at_once(port, request_bytes):
    # It used to get no answer: the parser waited for a CRLFCRLF (or CRLF) that never came.
    data, closed = exchange(port, GET + request_bytes)
    assert closed
    assert [s for s, _, _ in split_responses(data)] == [200, 400]


def test_chunked_body_over_limit_is_refused():
    with serving(HTTPServer(max_body=1000)) as p:
        chunk = b"64\r\n" + b"x" * 100 + b"\r\n"
        data, closed = exchange(p, b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
                                + chunk * 11)
        assert closed and split_responses(data)[0][0] == 413


def test_custom_routes():
    def hello(request):
        return 201, [("Content-Type", "text/plain"), ("X-Target", request.target)], b"made"

    server = HTTPServer({"/static": StaticRoute("text/html", "<p>hi</p>"), "/fn": hello,
                         "/post": (hello, ["POST"])})
    with serving(server) as p:
        data, _ = exchange(p, b"GET /static HTTP/1.1\r\nHost: t\r\n\r\nGET /fn?a HTTP/1.1\r\nHost: t\r\n\r\n"
                              b"POST /post HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n")
        responses = split_responses(data)
        assert [(s, b) for s, _, b in responses] == [(200, b"<p>hi</p>"), (201, b"made"), (201, b"made")]
        assert responses[1][1][b"x-target"] == b"/fn?a"


def test_failing_route_is_a_500(expected_errors):
    def broken(request):
        raise RuntimeError("boom")

    with serving(HTTPServer({"/x": broken})) as p:
        data, closed = exchange(p, b"GET /x HTTP/1.1\r\nHost: t\r\n\r\n" + GET.replace(b"/plaintext", b"/x"))
        assert [s for s, _, _ in split_responses(data)] == [500, 500] and not closed
    assert [r.getMessage() for r in expected_errors] == ["route b'/x' failed"] * 2


def test_client_that_does_not_read_is_bounded():
    with serving(write_buffer_cap=256 * 1024, write_high_water=64 * 1024, write_low_water=16 * 1024) as p:
        with socket.create_connection(("127.0.0.1", p), timeout=3) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sent = 0
            try:
                for _ in range(20000):
                    s.sendall(GET * 100)
                    sent += 1
            except OSError:
                pass  # paused (send times out) or dropped
            assert sent < 20000


# --------------------------------------------------------------------------- curl

def curl(*args, input=None):
    proc = subprocess.run([CURL, "-sS", *args], input=input, capture_output=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    return proc


@need_curl
def test_curl_keep_alive_two_urls(port):
    base = f"http://127.0.0.1:{port}"
    proc = curl("-v", f"{base}/plaintext", f"{base}/json")
    assert proc.stdout == b'Hello, World!{"message":"Hello, World!"}'
    assert b"Re-using existing connection" in proc.stderr or b"Reusing existing connection" in proc.stderr


@need_curl
def test_curl_http10(port):
    proc = curl("-v", "--http1.0", f"http://127.0.0.1:{port}/plaintext")
    assert proc.stdout == b"Hello, World!"
    assert b"< Connection: close" in proc.stderr


@need_curl
def test_curl_chunked_upload(port):
    payload = b"".join(b"line %d\n" % i for i in range(5000))
    proc = curl("-H", "Transfer-Encoding: chunked", "--data-binary", "@-", f"http://127.0.0.1:{port}/echo",
                input=payload)
    assert proc.stdout == payload


@need_curl
def test_curl_errors(port):
    proc = subprocess.run([CURL, "-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", "BREW",
                           f"http://127.0.0.1:{port}/plaintext"], capture_output=True, timeout=30)
    assert proc.stdout == b"501"
    proc = subprocess.run([CURL, "-s", "-o", "/dev/null", "-w", "%{http_code}", f"http://127.0.0.1:{port}/x"],
                          capture_output=True, timeout=30)
    assert proc.stdout == b"404"


# --------------------------------------------------------------------------- wrk

PIPELINE_LUA = """
init = function(args)
   local r = {}
   for i = 1, 16 do r[i] = wrk.format(nil, "/plaintext") end
   req = table.concat(r)
end
request = function() return req end
"""


def run_wrk(port, *extra):
    proc = subprocess.run([WRK, "-t1", "-c10", "-d1s", *extra, f"http://127.0.0.1:{port}/plaintext"],
                          capture_output=True, timeout=60)
    out = proc.stdout.decode()
    assert proc.returncode == 0, out + proc.stderr.decode()
    assert "Non-2xx" not in out, out
    assert "Socket errors" not in out, out
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    assert requests > 100, out
    return out


@need_wrk
def test_wrk(port):
    run_wrk(port)


@need_wrk
def test_wrk_pipelined(port, tmp_path):
    script = tmp_path / "pipeline.lua"
    script.write_text(PIPELINE_LUA)
    run_wrk(port, "-s", str(script))


# --------------------------------------------------------------------------- h11

def test_h11_client(port):
    h11 = pytest.importorskip("h11")
    conn = h11.Connection(our_role=h11.CLIENT)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:

        def roundtrip(*events):
            for event in events:
                sock.sendall(conn.send(event))
            response, body = None, b""
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(sock.recv(65536))
                elif isinstance(event, h11.Response):
                    response = event
                elif isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, h11.EndOfMessage):
                    break
            return response, body

        response, body = roundtrip(h11.Request(method="GET", target="/plaintext", headers=[("Host", "t")]),
                                   h11.EndOfMessage())
        assert (response.status_code, body) == (200, b"Hello, World!")
        headers = dict(response.headers)
        assert headers[b"server"] == b"netreactor" and b"date" in headers
        conn.start_next_cycle()
        # No Content-Length: h11 sends the body chunked.
        response, body = roundtrip(h11.Request(method="POST", target="/echo",
                                               headers=[("Host", "t"), ("Transfer-Encoding", "chunked")]),
                                   h11.Data(data=b"abc"), h11.Data(data=b"def"), h11.EndOfMessage())
        assert (response.status_code, body) == (200, b"abcdef")
        conn.start_next_cycle()
        response, body = roundtrip(h11.Request(method="GET", target="/json",
                                               headers=[("Host", "t"), ("Connection", "close")]),
                                   h11.EndOfMessage())
        assert response.status_code == 200 and body == b'{"message":"Hello, World!"}'
        assert conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE
        assert sock.recv(10) == b""


def test_h11_reads_every_error_response(port):
    h11 = pytest.importorskip("h11")
    for request_bytes in (b"GARBAGE\r\n\r\n", b"BREW / HTTP/1.1\r\nHost: t\r\n\r\n",
                          b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 99999999\r\n\r\n"):
        data, _ = exchange(port, request_bytes)
        conn = h11.Connection(our_role=h11.CLIENT)
        conn.send(h11.Request(method="GET", target="/", headers=[("Host", "t")]))
        conn.send(h11.EndOfMessage())
        conn.receive_data(data)
        conn.receive_data(b"")
        events = []
        while True:
            event = conn.next_event()
            events.append(event)
            if isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)) or event is h11.NEED_DATA:
                break
        assert isinstance(events[0], h11.Response) and events[0].status_code >= 400
        assert isinstance(events[-1], h11.EndOfMessage)


def test_several_loops():
    import threading

    with serving(loops=3) as p:
        results = []

        def client():
            data, _ = exchange(p, GET * 30 + b"GET /json HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            results.append([s for s, _, _ in split_responses(data)])

        threads = [threading.Thread(target=client) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert results == [[200] * 31] * 6
