"""The HTTP/1.1 request parser and response encoder (netreactor.protocols.http1), without sockets."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netreactor.protocols.http1 import (HTTPError, Request, RequestParser, encode_response,
                                        http_date)

GET = b"GET /plaintext HTTP/1.1\r\nHost: localhost:8080\r\n\r\n"


def parse(data: bytes, **kw):
    return RequestParser(**kw).feed(data)


def summary(requests):
    return [(r.method, r.target, r.version, r.headers, r.body, r.keep_alive) for r in requests]


def feed_chunks(chunks, **kw):
    parser = RequestParser(**kw)
    out = []
    for chunk in chunks:
        out.extend(parser.feed(chunk))
    return out


def status_of(data: bytes, **kw) -> int:
    with pytest.raises(HTTPError) as info:
        feed_chunks([data], **kw)
    return info.value.status


# --------------------------------------------------------------------------- requests

def test_simple_get():
    [req] = parse(GET)
    assert (req.method, req.target, req.version, req.body, req.keep_alive) == \
        (b"GET", b"/plaintext", b"1.1", b"", True)
    assert req.headers == ((b"host", b"localhost:8080"),)
    assert req.path == b"/plaintext" and req.query == b""


def test_headers_are_lowercased_trimmed_and_kept_in_order():
    [req] = parse(b"GET /a?b=1&c HTTP/1.1\r\nHost: x\r\nX-Thing:  a b \t\r\nx-thing:\r\n"
                  b"Accept: */*\r\nCookie: a=b; c=\"d\"\r\n\r\n")
    assert req.headers == ((b"host", b"x"), (b"x-thing", b"a b"), (b"x-thing", b""),
                           (b"accept", b"*/*"), (b"cookie", b'a=b; c="d"'))
    assert req.header("X-THING") == b"a b"
    assert req.header("nope", b"d") == b"d"
    assert req.get_all(b"x-thing") == [b"a b", b""]
    assert req.path == b"/a" and req.query == b"b=1&c"


@pytest.mark.parametrize("version,connection,keep_alive", [
    (b"1.1", None, True), (b"1.1", b"close", False), (b"1.1", b"Keep-Alive, Close", False),
    (b"1.1", b"keep-alive", True), (b"1.0", None, False), (b"1.0", b"keep-alive", True),
    (b"1.0", b"Keep-Alive", True), (b"1.0", b"close", False),
])
def test_keep_alive_rules(version, connection, keep_alive):
    head = b"GET / HTTP/" + version + b"\r\nHost: h\r\n"
    if connection:
        head += b"Connection: " + connection + b"\r\n"
    [req] = parse(head + b"\r\n")
    assert req.keep_alive is keep_alive


def test_http10_without_host():
    [req] = parse(b"GET / HTTP/1.0\r\n\r\n")
    assert req.version == b"1.0" and not req.keep_alive


def test_minor_versions_above_1_are_served_as_1_1():
    [req] = parse(b"GET / HTTP/1.7\r\nHost: h\r\n\r\n")
    assert req.version == b"1.1"


def test_content_length_body():
    [req] = parse(b"POST /echo HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello")
    assert req.body == b"hello"


def test_chunked_body_with_extensions_and_trailers():
    data = (b"POST /echo HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n1;name=value\r\n \r\nA \t; x\r\n0123456789\r\n0\r\nTrailer: x\r\n\r\n")
    [req] = parse(data)
    assert req.body == b"hello 0123456789"


def test_pipelined_mix():
    data = (GET + b"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc"
            + b"PUT /b HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nxy\r\n0\r\n\r\n"
            + b"\r\nGET /c HTTP/1.0\r\n\r\n")
    reqs = parse(data)
    assert [(r.method, r.target, r.body) for r in reqs] == [
        (b"GET", b"/plaintext", b""), (b"POST", b"/a", b"abc"), (b"PUT", b"/b", b"xy"), (b"GET", b"/c", b"")]


def test_split_at_every_offset():
    data = (GET + b"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\nExpect: 100-continue\r\n\r\n0123456789"
            + b"PUT /b HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nxy\r\n10\r\n"
            + b"z" * 16 + b"\r\n0\r\nT: 1\r\n\r\n" + GET)
    expected = summary(parse(data))
    assert len(expected) == 4
    for cut in range(len(data) + 1):
        assert summary(feed_chunks([data[:cut], data[cut:]])) == expected, cut


def test_byte_by_byte():
    data = GET + b"POST /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n" + GET
    assert summary(feed_chunks([data[i:i + 1] for i in range(len(data))])) == summary(parse(data))


def test_accepts_bytearray_and_memoryview():
    parser = RequestParser()
    assert len(parser.feed(bytearray(GET))) == 1
    assert len(parser.feed(memoryview(GET))) == 1


def test_expect_continue_flag():
    parser = RequestParser()
    assert parser.feed(b"POST /a HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n") == []
    assert parser.expect_continue
    parser.expect_continue = False  # the server answered 100 Continue
    [req] = parser.feed(b"data")
    assert req.body == b"data" and not parser.expect_continue
    # With the body already there, nothing is to be continued.
    parser.feed(b"POST /a HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\nx")
    assert not parser.expect_continue
    # HTTP/1.0 cannot ask for it.
    parser.feed(b"POST /a HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n")
    assert not parser.expect_continue


def test_other_target_forms():
    assert parse(b"OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n")[0].target == b"*"
    assert parse(b"GET http://h/x HTTP/1.1\r\nHost: h\r\n\r\n")[0].target == b"http://h/x"
    assert parse(b"CONNECT h:443 HTTP/1.1\r\nHost: h:443\r\n\r\n")[0].target == b"h:443"


def test_empty_lines_before_a_request_are_ignored():
    assert len(parse(b"\r\n\r\n" + GET + b"\r\n" + GET)) == 2


def test_head_cache_gives_the_same_requests():
    cache: dict = {}
    data = GET * 3 + b"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nab" * 2
    cached = RequestParser(head_cache=cache)
    assert summary(cached.feed(data)) == summary(parse(data))
    assert len(cache) == 2
    # Each request has its own object; a body given to one is not seen by another.
    a, b = RequestParser(head_cache=cache).feed(GET * 2)
    assert a is not b


def test_head_cache_is_bounded():
    cache: dict = {}
    parser = RequestParser(head_cache=cache)
    for i in range(2000):
        parser.feed(b"GET /%d HTTP/1.1\r\nHost: h\r\n\r\n" % i)
        assert len(cache) <= 512
    parser.feed(b"GET / HTTP/1.1\r\nHost: h\r\nX: " + b"a" * 3000 + b"\r\n\r\n")
    assert all(len(k) < 2100 for k in cache)


def test_errors_are_not_cached():
    cache: dict = {}
    bad = b"GET / HTTP/1.1\r\nHost: h\r\nContent-Length: x\r\n\r\n"
    for _ in range(2):
        with pytest.raises(HTTPError):
            RequestParser(head_cache=cache).feed(bad)
    assert not cache


# --------------------------------------------------------------------------- errors and limits

@pytest.mark.parametrize("data", [
    b"GET /\r\n\r\n",
    b"GET  / HTTP/1.1\r\nHost: h\r\n\r\n",
    b"GET / HTTP/1.1 \r\nHost: h\r\n\r\n",
    b"GET / http/1.1\r\nHost: h\r\n\r\n",
    b"GET / HTTP/1.1x\r\nHost: h\r\n\r\n",
    b"G(T / HTTP/1.1\r\nHost: h\r\n\r\n",
    b"GET /a b HTTP/1.1\r\nHost: h\r\n\r\n",
    b"GET /\x01 HTTP/1.1\r\nHost: h\r\n\r\n",
    b"GET /\xff HTTP/1.1\r\nHost: h\r\n\r\n",
    b"GET x HTTP/1.1\r\nHost: h\r\n\r\n",
    b"GET * HTTP/1.1\r\nHost: h\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost h\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h\r\n folded\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost : h\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h\r\nX: a\x00b\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h\r\nX: a\rb\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h\nX: y\r\n\r\n",
    b"GET / HTTP/1.1\r\nX-(: y\r\nHost: h\r\n\r\n",
    b"GET / HTTP/1.1\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: -1\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: +1\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1_0\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 0x10\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1, 2\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, identity\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, chunked\r\n\r\n",
    b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\nx\r\n",
    b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n-1\r\n",
    b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n",
    b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nbad trailer\r\n\r\n",
])
def test_bad_request(data):
    assert status_of(data) == 400


@pytest.mark.parametrize("data,status", [
    (b"BREW /pot HTTP/1.1\r\nHost: h\r\n\r\n", 501),
    (b"get / HTTP/1.1\r\nHost: h\r\n\r\n", 501),
    (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501),
    (b"GET / HTTP/2.0\r\nHost: h\r\n\r\n", 505),
    (b"GET / HTTP/0.9\r\nHost: h\r\n\r\n", 505),
])
def test_other_refusals(data, status):
    assert status_of(data) == status


def test_body_limits():
    assert status_of(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 101\r\n\r\n", max_body=100) == 413
    assert status_of(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 99999999999999999999\r\n\r\n") == 413
    chunked = b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n" + b"20\r\n" + b"x" * 32 + b"\r\n"
    assert status_of(chunked * 1 + b"50\r\n", max_body=100) == 413
    [req] = parse(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 100\r\n\r\n" + b"x" * 100, max_body=100)
    assert len(req.body) == 100


def test_head_limits():
    assert status_of(b"GET / HTTP/1.1\r\nHost: h\r\nX: " + b"a" * 20000 + b"\r\n\r\n") == 431
    assert status_of(b"GET / HTTP/1.1\r\nHost: h\r\nX: " + b"a" * 20000) == 431  # unfinished, already too big
    many = b"".join(b"X-%d: y\r\n" % i for i in range(101))
    assert status_of(b"GET / HTTP/1.1\r\nHost: h\r\n" + many + b"\r\n") == 431
    assert len(parse(b"GET / HTTP/1.1\r\nHost: h\r\n" + many + b"\r\n", max_headers=200)) == 1
    assert status_of(b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: h\r\n\r\n") == 414
    assert status_of(b"GET /" + b"a" * 9000) == 414
    trailers = b"".join(b"T%d: %s\r\n" % (i, b"v" * 100) for i in range(200))
    assert status_of(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n" + trailers) == 431


def test_a_slow_client_holds_bounded_memory():
    parser = RequestParser(max_head=4096)
    parser.feed(b"GET / HTTP/1.1\r\nHost: h\r\n")
    with pytest.raises(HTTPError) as info:
        for _ in range(10000):
            parser.feed(b"X-Slow: " + b"s" * 50 + b"\r\n")
            assert parser.buffered <= 4096 + 100
    assert info.value.status == 431
    body_parser = RequestParser(max_body=1000)
    body_parser.feed(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n")
    with pytest.raises(HTTPError) as info:
        for _ in range(10000):
            body_parser.feed(b"a\r\n0123456789\r\n")
            assert body_parser.buffered <= 1000
    assert info.value.status == 413


def test_error_keeps_earlier_requests_and_spends_the_parser():
    parser = RequestParser()
    with pytest.raises(HTTPError) as info:
        parser.feed(GET + GET + b"BAD\r\n\r\n")
    assert len(info.value.requests) == 2 and info.value.status == 400
    with pytest.raises(HTTPError):
        parser.feed(GET)


@pytest.mark.parametrize("name", ["max_head", "max_headers", "max_request_line"])
@pytest.mark.parametrize("value", [0, -1, 1.5, True])
def test_bad_limits(name, value):
    with pytest.raises(ValueError, match=name):
        RequestParser(**{name: value})


# --------------------------------------------------------------------------- property tests

token = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.", min_size=1,
                max_size=12).map(str.encode)
value = st.text(alphabet="".join(chr(c) for c in range(0x21, 0x7f)) + " ", max_size=20).map(
    lambda s: s.strip().encode())
request_strategy = st.tuples(
    st.sampled_from([b"GET", b"POST", b"PUT", b"DELETE", b"PATCH"]),
    st.text(alphabet="abc/?=&%.-_~0123456789", max_size=20).map(lambda s: b"/" + s.encode()),
    st.lists(st.tuples(token.filter(lambda t: t.lower() not in (
        b"host", b"content-length", b"transfer-encoding", b"connection", b"expect")), value), max_size=5),
    st.binary(max_size=60),
    st.booleans(),
    st.lists(st.integers(1, 30), max_size=4),
)


def _encode(method, target, headers, body, chunked, sizes):
    head = b"%s %s HTTP/1.1\r\nHost: example\r\n" % (method, target)
    head += b"".join(b"%s: %s\r\n" % (n, v) for n, v in headers)
    if not body:
        return head + b"\r\n"
    if not chunked:
        return head + b"Content-Length: %d\r\n\r\n" % len(body) + body
    out, pos = [head + b"Transfer-Encoding: chunked\r\n\r\n"], 0
    for size in sizes + [len(body)]:
        piece = body[pos:pos + size]
        if piece:
            out.append(b"%x\r\n%s\r\n" % (len(piece), piece))
        pos += size
        if pos >= len(body):
            break
    return b"".join(out) + b"0\r\n\r\n"


@settings(max_examples=150, deadline=None)
@given(st.lists(request_strategy, min_size=1, max_size=5), st.lists(st.integers(0, 1000), max_size=5),
       st.booleans())
def test_any_requests_any_cuts(requests, cuts, cached):
    data = b"".join(_encode(*r) for r in requests)
    points = sorted({min(c, len(data)) for c in cuts})
    chunks = [data[a:b] for a, b in zip([0] + points, points + [len(data)])]
    parsed = feed_chunks(chunks, head_cache={} if cached else None)
    assert [(r.method, r.target, r.body) for r in parsed] == [(m, t, b) for m, t, _, b, _, _ in requests]
    for req, (_, _, headers, _, _, _) in zip(parsed, requests):
        assert [h for h in req.headers if h[0] not in (b"host", b"content-length", b"transfer-encoding")] == \
            [(n.lower(), v) for n, v in headers]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_garbage_never_crashes(data):
    parser = RequestParser(max_head=100, max_body=50)
    try:
        parser.feed(b"GET / HTTP/1.1\r\nHost: h\r\n" + data)
        parser.feed(data)
    except HTTPError as exc:
        assert exc.status in (400, 413, 414, 431, 501, 505)


# --------------------------------------------------------------------------- responses

def test_encode_response():
    data = encode_response(200, [("Content-Type", "text/plain")], b"hi", date=b"D")
    assert data == (b"HTTP/1.1 200 OK\r\nServer: netreactor\r\nDate: D\r\nContent-Type: text/plain\r\n"
                    b"Content-Length: 2\r\n\r\nhi")
    closing = encode_response(404, (), b"x", date=b"D", keep_alive=False, head_only=True)
    assert closing.endswith(b"Connection: close\r\nContent-Length: 1\r\n\r\n")
    assert b"Content-Length" not in encode_response(204, date=b"D")
    with pytest.raises(ValueError):
        encode_response(200, [("X", "a\r\nInjected: 1")])


def test_http_date_format():
    assert http_date(0) == b"Thu, 01 Jan 1970 00:00:00 GMT"
    assert http_date(1e9) == b"Sun, 09 Sep 2001 01:46:40 GMT"


def test_request_repr():
    assert "GET /plaintext HTTP/1.1" in repr(Request(b"GET", b"/plaintext", b"1.1", ()))


# --------------------------------------------------------------------------- one rule whatever the split

def outcome(chunks, **kw):
    """Every request the parser returned (those carried by the error included), and the error."""
    parser = RequestParser(**kw)
    out: list = []
    try:
        for chunk in chunks:
            out.extend(parser.feed(chunk))
    except HTTPError as exc:
        return summary(out + exc.requests), (exc.status, exc.detail)
    return summary(out), None


def head_of(size: int) -> bytes:
    """A valid head of exactly ``size`` bytes, its final empty line included."""
    base = b"GET / HTTP/1.1\r\nHost: h\r\nX: \r\n\r\n"
    return base[:-4] + b"a" * (size - len(base)) + b"\r\n\r\n"


@pytest.mark.parametrize("size", [99, 100, 101, 103, 104, 105])
def test_head_limit_does_not_depend_on_the_split(size):
    # A head of max_head + 4 bytes used to be accepted in one read and refused
    # with 431 when its last bytes came separately.
    head = head_of(size) + GET
    whole = outcome([head], max_head=100)
    if size <= 100:
        assert whole[1] is None and len(whole[0]) == 2
    else:
        assert whole == ([], (431, "request head over 100 bytes"))
    for cut in range(len(head) + 1):
        assert outcome([head[:cut], head[cut:]], max_head=100) == whole, cut
    assert outcome([head[i:i + 1] for i in range(len(head))], max_head=100) == whole


@pytest.mark.parametrize("data", [
    b"GET / HTTP/1.1\nHost: x\n\n",
    b"GET / HTTP/1.1\r\nHost: x\n\n",
    b"GET / HTTP/1.1\r\nHost: x\r\n\n",
    b"\nGET / HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET / HTTP/1.1\n",
])
def test_bare_lf_is_refused_at_once(data):
    # It used to wait for a CRLFCRLF that a bare-LF client never sends.
    expected = ([], (400, "bare LF in the request head"))
    assert outcome([data]) == expected
    assert outcome([data[i:i + 1] for i in range(len(data))]) == expected
    assert outcome([GET + data]) == (summary(parse(GET)), expected[1])


@pytest.mark.parametrize("body,detail", [
    (b"5\nhello\r\n0\r\n\r\n", "bare LF in a chunk-size line"),
    (b"5\r\nhello\n", "chunk not followed by CRLF"),
    (b"5\r\nhello\r\n0\r\nX: y\n", "bare LF in the trailers"),
    (b"5\r\nhello\r\n0\r\n\n", "bare LF in the trailers"),
])
def test_bare_lf_in_chunked_framing_is_refused_at_once(body, detail):
    data = b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n" + body
    assert outcome([data]) == ([], (400, detail))
    assert outcome([data[i:i + 1] for i in range(len(data))]) == ([], (400, detail))


def test_limits_and_bare_lf_earliest_proof_wins():
    # The answer is the one the earliest bytes prove, in one read as in many.
    long_line = b"GET /" + b"a" * 300 + b" HTTP/1.1\r\nHost: h\r\n\r\n"
    assert outcome([long_line], max_request_line=100, max_head=200)[1][0] == 414
    assert outcome([long_line], max_request_line=250, max_head=200)[1][0] == 431
    early_lf = b"GET / HTTP/1.1\r\nX: y\nHost: h\r\n" + b"Z: " + b"z" * 300 + b"\r\n\r\n"
    assert outcome([early_lf], max_head=200)[1] == (400, "bare LF in the request head")
    late_lf = b"GET / HTTP/1.1\r\nHost: h\r\nZ: " + b"z" * 300 + b"\n\r\n"
    assert outcome([late_lf], max_head=200)[1][0] == 431
    for data, kw in ((long_line, dict(max_request_line=100, max_head=200)),
                     (long_line, dict(max_request_line=250, max_head=200)),
                     (early_lf, dict(max_head=200)), (late_lf, dict(max_head=200))):
        whole = outcome([data], **kw)
        for cut in range(len(data) + 1):
            assert outcome([data[:cut], data[cut:]], **kw) == whole, cut


def _corrupt(data: bytes, where: int, what: bytes) -> bytes:
    where %= len(data) + 1
    return data[:where] + what + data[where:]


http_limits = st.fixed_dictionaries({}, optional={
    "max_head": st.integers(20, 200), "max_request_line": st.integers(5, 120),
    "max_headers": st.integers(1, 6), "max_body": st.integers(0, 80)})


@settings(max_examples=300, deadline=None)
@given(st.lists(request_strategy, min_size=1, max_size=4),
       st.lists(st.tuples(st.integers(0, 2000), st.sampled_from(
           [b"\n", b"\r", b"\r\n", b"\r\n\r\n", b"\x00", b" ", b"0\r\n\r\n", b"Host: y\r\n", b"x" * 150])),
           max_size=3),
       st.lists(st.integers(0, 2000), max_size=6), http_limits, st.booleans())
def test_any_split_gives_the_same_outcome(requests, corruptions, cuts, limits, cached):
    data = b"".join(_encode(*r) for r in requests)
    for where, what in corruptions:
        data = _corrupt(data, where, what)
    points = sorted({min(c, len(data)) for c in cuts})
    chunks = [data[a:b] for a, b in zip([0] + points, points + [len(data)])]
    whole = outcome([data], **limits)
    assert outcome(chunks, head_cache={} if cached else None, **limits) == whole
    assert outcome([data[i:i + 1] for i in range(len(data))], **limits) == whole
