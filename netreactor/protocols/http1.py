"""HTTP/1.1 requests, sans-IO: bytes in, :class:`Request` objects out.

    parser = RequestParser()
    try:
        for request in parser.feed(data):
            ...                          # request.method, .target, .headers, .body, .keep_alive
    except HTTPError as exc:             # exc.status: 400, 413, 414, 431, 501 or 505
        ...                              # exc.requests: the complete requests before the bad one

What it handles (RFC 9112): pipelined requests, requests split at any byte,
``Content-Length`` bodies, ``chunked`` bodies (extensions ignored, trailers
read and dropped), HTTP/1.0 and 1.1 keep-alive rules, ``Expect: 100-continue``
(:attr:`RequestParser.expect_continue`), empty lines before a request.

What it refuses, with the status a server should answer before closing:

* 400 — a malformed request line, header line (including obsolete line
  folding, bare CR or LF, control characters), ``Content-Length`` or chunk
  size (a bare LF is refused as soon as it arrives, in the head as in chunked
  framing: a client that ends lines with LF alone gets its answer);
  ``Transfer-Encoding`` together with ``Content-Length``; conflicting
  ``Content-Length`` values; a ``Transfer-Encoding`` that does not end in
  ``chunked`` or that comes with HTTP/1.0; an HTTP/1.1 request without exactly
  one ``Host``;
* 413 — a body over ``max_body`` bytes (known from ``Content-Length`` before
  the body is read, or counted while chunks arrive);
* 414 — a request line over ``max_request_line`` bytes;
* 431 — a head (request line and headers, through the empty line that ends
  it) over ``max_head`` bytes, more than ``max_headers`` headers, or trailers
  over ``max_head`` bytes;
* 501 — a method not in ``methods``, or a transfer coding other than chunked;
* 505 — an HTTP major version other than 1.

Memory is bounded: the parser holds at most ``max_head`` bytes of an unfinished
head and ``max_body`` bytes of an unfinished body, however slowly they come.

One rule whatever the segmentation: the requests and the error (status and
detail) depend only on the bytes, never on how they were split into reads. A
limit is refused as soon as the bytes prove it is exceeded, and when several
problems are proven the one proven by the fewest bytes wins (see
:meth:`RequestParser._check_head`); a property test checks it.

Why it looks the way it does: the head of a request is found with one
``bytes.find(b"\\r\\n\\r\\n")``, its request line is checked and split by one
regular-expression match, and all its header lines are checked and split by one
``findall`` (a line that does not match makes the count of matches differ from
the count of lines). That is a handful of C calls per request whatever its
headers, which is what a pure-Python server can afford. A server may also share
a cache of checked heads between its parsers (``head_cache``). With the C
speedups (:mod:`netreactor.speedups`) one C call splits an ordinary head into
the same request line and header pairs; anything it does not take goes
through the patterns, which define the behaviour.
"""

from __future__ import annotations

import re
from email.utils import formatdate
from typing import Any, Dict, FrozenSet, Iterable, List, Optional, Sequence, Tuple, Union

from .. import speedups

# The C head splitter (netreactor._speedups), or None; see _parse_head.
_c_split_head = getattr(speedups.module(), "http_split_head", None)

__all__ = [
    "Request", "RequestParser", "HTTPError", "encode_response", "http_date", "REASONS",
    "DEFAULT_METHODS", "DEFAULT_MAX_HEAD", "DEFAULT_MAX_BODY", "DEFAULT_MAX_HEADERS",
    "DEFAULT_MAX_REQUEST_LINE",
]

KiB = 1024
MiB = 1024 * KiB
#: Most bytes of a request line and its headers together.
DEFAULT_MAX_HEAD = 16 * KiB
#: Longest request line (method, target, version).
DEFAULT_MAX_REQUEST_LINE = 8 * KiB
#: Most header lines in one request.
DEFAULT_MAX_HEADERS = 100
#: Largest request body.
DEFAULT_MAX_BODY = 1 * MiB
#: Longest chunk-size line (size and extensions).
_MAX_CHUNK_LINE = 4 * KiB

#: The methods of RFC 9110 and PATCH; others get 501.
DEFAULT_METHODS: FrozenSet[bytes] = frozenset(
    (b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"CONNECT", b"OPTIONS", b"TRACE", b"PATCH"))

REASONS: Dict[int, str] = {
    100: "Continue", 200: "OK", 201: "Created", 204: "No Content", 301: "Moved Permanently",
    302: "Found", 304: "Not Modified", 400: "Bad Request", 401: "Unauthorized",
    403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed", 408: "Request Timeout",
    411: "Length Required", 413: "Content Too Large", 414: "URI Too Long",
    415: "Unsupported Media Type", 417: "Expectation Failed",
    431: "Request Header Fields Too Large", 500: "Internal Server Error",
    501: "Not Implemented", 503: "Service Unavailable", 505: "HTTP Version Not Supported",
}

# token = 1*tchar (RFC 9110 5.6.2); request-target: visible ASCII; HTTP/1.0 and 1.1 in the fast match.
_TOKEN = rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_REQUEST_LINE = re.compile(rb"(" + _TOKEN + rb") ([\x21-\x7e]+) HTTP/(1\.[01])\r\n")
_REQUEST_LINE_ANY_VERSION = re.compile(rb"(" + _TOKEN + rb") ([\x21-\x7e]+) HTTP/([0-9])\.([0-9])\r\n")
# field-line = field-name ":" OWS field-value OWS; field-value chars: VCHAR, obs-text, SP, HTAB.
# Anchored at each line start (re.M); a line that does not match is simply not
# found, so "matches == lines" validates every line at once.
_FIELD_VALUE = rb"(?:[\x21-\x7e\x80-\xff]+(?:[ \t]+[\x21-\x7e\x80-\xff]+)*)?"
_HEADER_LINE = re.compile(rb"^(" + _TOKEN + rb"):[ \t]*(" + _FIELD_VALUE + rb")[ \t]*\r\n", re.M)
_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,16})[ \t]*(?:;[^\r\n]*)?")
_SPECIAL = frozenset((b"content-length", b"transfer-encoding", b"connection", b"host", b"expect"))
# Head cache bounds: heads longer than this are not cached; a full cache is emptied.
_CACHED_HEAD_MAX = 2 * KiB
_CACHE_ENTRIES = 512

# Parser states.
_HEAD, _LENGTH, _CHUNK_SIZE_LINE, _CHUNK_DATA, _CHUNK_END, _TRAILERS = range(6)

Headers = Tuple[Tuple[bytes, bytes], ...]
# What _parse_head returns: method, target, version, headers, keep_alive,
# content length (-1: none), chunked, expect 100-continue.
_HeadInfo = Tuple[bytes, bytes, bytes, Headers, bool, int, bool, bool]


class HTTPError(Exception):
    """The request cannot be served; answer ``status`` and close the connection.

    ``requests`` holds the complete requests that came before the bad one in
    the data given to :meth:`RequestParser.feed` (answer those first).
    """

    def __init__(self, status: int, detail: str, requests: Optional[List[Request]] = None) -> None:
        super().__init__(f"{status} {REASONS.get(status, '')}: {detail}")
        self.status = status
        self.detail = detail
        self.requests: List[Request] = requests if requests is not None else []


class Request:
    """One parsed request.

    ``method`` and ``target`` are bytes as sent (``b"GET"``, ``b"/a?b=1"``);
    ``version`` is ``b"1.1"`` or ``b"1.0"``; ``headers`` is a tuple of
    ``(name, value)`` pairs with lowercase names, values without surrounding
    whitespace, in order, repeats kept; ``body`` is the whole body (chunked
    bodies are decoded); ``keep_alive`` tells whether the connection may serve
    another request afterwards (HTTP/1.1 unless ``Connection: close``; HTTP/1.0
    only with ``Connection: keep-alive``).
    """

    __slots__ = ("method", "target", "version", "headers", "body", "keep_alive")

    def __init__(self, method: bytes, target: bytes, version: bytes, headers: Headers,
                 body: bytes = b"", keep_alive: bool = True) -> None:
        self.method = method
        self.target = target
        self.version = version
        self.headers = headers
        self.body = body
        self.keep_alive = keep_alive

    @property
    def path(self) -> bytes:
        """The target without its query string."""
        return self.target.partition(b"?")[0]

    @property
    def query(self) -> bytes:
        """The query string (after ``?``), or ``b""``."""
        return self.target.partition(b"?")[2]

    def header(self, name: Union[str, bytes], default: Optional[bytes] = None) -> Optional[bytes]:
        """The first value of header ``name`` (any case), or ``default``."""
        key = (name.encode("latin-1") if isinstance(name, str) else name).lower()
        for n, v in self.headers:
            if n == key:
                return v
        return default

    def get_all(self, name: Union[str, bytes]) -> List[bytes]:
        """Every value of header ``name`` (any case), in order."""
        key = (name.encode("latin-1") if isinstance(name, str) else name).lower()
        return [v for n, v in self.headers if n == key]

    def __repr__(self) -> str:
        return (f"<Request {self.method.decode('latin-1')} {self.target.decode('latin-1')} "
                f"HTTP/{self.version.decode()} headers={len(self.headers)} body={len(self.body)}B>")


def _tokens(values: Iterable[bytes]) -> List[bytes]:
    """Comma-separated list tokens of header values, lowercased, empty items dropped."""
    out = []
    for value in values:
        for item in value.split(b","):
            item = item.strip(b" \t").lower()
            if item:
                out.append(item)
    return out


class RequestParser:
    """Incremental HTTP/1.x request parser (server side); see the module docstring.

    ``head_cache``: a dict shared by the parsers of one server (all with the
    same limits and methods), in which checked heads are kept by their exact
    bytes — at most 512 heads of at most 2 KiB each; a full cache is emptied.
    Clients on keep-alive connections tend to repeat the very same head, and a
    hit skips the request-line and header checks (about two thirds of the
    parsing cost), with the same result by construction.

    After an :class:`HTTPError` the parser is spent: further feeds raise again.
    """

    __slots__ = ("_max_head", "_head_room", "max_body", "max_headers", "max_request_line", "methods",
                 "expect_continue", "_buf", "_skip_below", "_state", "_req", "_body", "_left",
                 "_extra", "_error", "_cache")

    def __init__(self, *, max_head: int = DEFAULT_MAX_HEAD, max_body: int = DEFAULT_MAX_BODY,
                 max_headers: int = DEFAULT_MAX_HEADERS,
                 max_request_line: int = DEFAULT_MAX_REQUEST_LINE,
                 methods: Iterable[Union[str, bytes]] = DEFAULT_METHODS,
                 head_cache: Optional[Dict[bytes, Any]] = None) -> None:
        for name, value in (("max_head", max_head), ("max_body", max_body),
                            ("max_headers", max_headers), ("max_request_line", max_request_line)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0 or \
                    (value == 0 and name != "max_body"):
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        self._max_head = self._head_room = 0
        self.max_head = max_head
        self.max_body = max_body
        self.max_headers = max_headers
        self.max_request_line = max_request_line
        self.methods: FrozenSet[bytes] = frozenset(
            m.encode("ascii") if isinstance(m, str) else bytes(m) for m in methods)
        #: True when the request being read asked for ``100 Continue`` and its
        #: body has not arrived yet. Set by :meth:`feed`; the server answers
        #: ``HTTP/1.1 100 Continue`` and clears it.
        self.expect_continue = False
        # Unparsed bytes (an unfinished head or framing line): b"" or a bytearray.
        self._buf: Union[bytes, bytearray] = b""
        # While _buf holds fewer bytes than this, data without a LF can neither
        # complete its line nor prove an error: feed() need not rescan.
        self._skip_below = 0
        self._state = _HEAD
        self._req: Optional[Request] = None   # the request whose body is being read
        self._body: Optional[bytearray] = None
        self._left = 0           # body (or chunk) bytes still due
        self._extra = 0          # trailer bytes read so far
        self._error: Optional[HTTPError] = None
        #: Parsed heads by their exact bytes, shared by the parsers given the
        #: same dict (they must have the same limits and methods).
        self._cache = head_cache

    @property
    def max_head(self) -> int:
        """Most bytes of a head, from the request line through the empty line that ends it."""
        return self._max_head

    @max_head.setter
    def max_head(self, value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"max_head must be a positive integer, got {value!r}")
        self._max_head = value
        # What feed() compares with the distance to the CRLFCRLF (the head
        # without its last 4 bytes): one subtraction less per request.
        self._head_room = value - 4

    @property
    def buffered(self) -> int:
        """Bytes held for the unfinished request."""
        return len(self._buf) + (len(self._body) if self._body is not None else 0)

    @property
    def idle(self) -> bool:
        """True between requests, with nothing of the next one received."""
        return self._state == _HEAD and not self._buf

    def feed(self, data: Union[bytes, bytearray, memoryview]) -> List[Request]:
        """Consume ``data``; return the requests it completed. Raises :class:`HTTPError`."""
        if self._error is not None:
            raise HTTPError(self._error.status, self._error.detail)
        if type(data) is not bytes:
            data = bytes(data)
        if self._buf:
            held = self._buf
            held += data
            if b"\n" not in data and len(held) < self._skip_below:
                # An unfinished line is still unfinished: not rescanning it keeps
                # a head that trickles in byte by byte linear, not quadratic.
                return []
            buf = bytes(held)
            self._buf = b""
        else:
            buf = data
        out: List[Request] = []
        pos = 0
        n = len(buf)
        cache = self._cache
        try:
            while pos < n:
                if self._state == _HEAD:
                    if buf[pos] == 13 and buf.startswith(b"\r\n", pos):
                        pos += 2  # an empty line before a request (RFC 9112 2.2)
                        continue
                    end = buf.find(b"\r\n\r\n", pos)
                    if end < 0 or end - pos > self._head_room:
                        # Unfinished, or too big: raise what the bytes already prove.
                        self._skip_below = self._check_head(buf, pos, n if end < 0 else end + 4)
                        self._buf = bytearray(buf[pos:])
                        break
                    if cache is not None:
                        head = buf[pos:end + 4]
                        info = cache.get(head)
                        if info is None:
                            info = self._parse_head(buf, pos, end)
                            if end - pos < _CACHED_HEAD_MAX:
                                if len(cache) >= _CACHE_ENTRIES:
                                    cache.clear()
                                cache[head] = info
                    else:
                        info = self._parse_head(buf, pos, end)
                    method, target, version, headers, keep_alive, length, chunked, expect = info
                    pos = end + 4
                    if length <= 0 and not chunked:
                        out.append(Request(method, target, version, headers, b"", keep_alive))
                    else:
                        pos = self._start_body(buf, pos, Request(method, target, version, headers, b"",
                                                                 keep_alive), length, chunked, expect, out)
                elif self._state == _LENGTH:
                    take = min(self._left, n - pos)
                    body = self._body
                    assert body is not None  # a body state always has its buffer
                    body += memoryview(buf)[pos:pos + take]
                    pos += take
                    self._left -= take
                    if not self._left:
                        self._finish(out)
                else:
                    pos = self._chunked(buf, pos, out)
                    if pos < 0:  # a framing line is unfinished: keep its bytes
                        pos = -pos - 1
                        self._buf = bytearray(buf[pos:])
                        state = self._state
                        self._skip_below = (_MAX_CHUNK_LINE if state == _CHUNK_SIZE_LINE else
                                            self.max_head + 1 - self._extra if state == _TRAILERS else 0)
                        break
        except HTTPError as exc:
            exc.requests = out
            self._error = exc
            self._buf = b""
            self._body = None
            raise
        return out

    # ------------------------------------------------------------------ heads

    def _check_head(self, buf: bytes, pos: int, stop: int) -> int:
        """Raise the error that ``buf[pos:stop]``, the start of a head, already proves.

        Three things are refused before a head is complete, each as soon as the
        bytes prove it: a bare LF (400, at the LF), a request line over
        ``max_request_line`` (414, once ``max_request_line + 2`` bytes hold no
        CRLF) and a head over ``max_head`` (431, once ``max_head`` bytes hold no
        CRLFCRLF). When several are proven, the one proven by the fewest bytes
        wins (then 400, 414, 431 in that order), so the answer is the same
        however the head is split into reads. Returns, when nothing is proven,
        how many bytes must be held before bytes without a LF can prove more.
        """
        held = stop - pos
        proofs = []
        if buf.count(b"\n", pos, stop) != buf.count(b"\r\n", pos, stop):
            lf = buf.find(b"\n", pos, stop)
            while lf > pos and buf[lf - 1] == 13:
                lf = buf.find(b"\n", lf + 1, stop)
            proofs.append((lf + 1 - pos, 400, "bare LF in the request head"))
        line_proof = self.max_request_line + 2
        line_done = buf.find(b"\r\n", pos, pos + line_proof) >= 0
        if not line_done and held >= line_proof:
            proofs.append((line_proof, 414, "request line too long"))
        if held >= self.max_head and buf.find(b"\r\n\r\n", pos, pos + self.max_head) < 0:
            proofs.append((self.max_head, 431, f"request head over {self.max_head} bytes"))
        if proofs:
            _, status, detail = min(proofs)
            raise HTTPError(status, detail)
        return self.max_head if line_done else min(line_proof, self.max_head)

    def _parse_head(self, buf: bytes, pos: int, end: int) -> _HeadInfo:
        """Parse and check the head ``buf[pos:end+4]`` (no side effects, so results can be cached)."""
        if buf.count(b"\n", pos, end + 4) != buf.count(b"\r\n", pos, end + 4):
            self._check_head(buf, pos, end + 4)  # a bare LF: refused as in an unfinished head
        split = _c_split_head(buf, pos, end) if _c_split_head is not None else None
        if split is not None:
            # The C splitter: the same request line and header lines the two
            # patterns below give, names lowercased; None when anything is odd.
            method, target, version, line_end, headers = split
        else:
            m = _REQUEST_LINE.match(buf, pos, end + 2)
            if m is None:
                method, target, version, line_end = self._odd_request_line(buf, pos, end)
            else:
                method, target, version = m.groups()
                line_end = m.end()
            headers = None
        if line_end - pos > self.max_request_line + 2:
            self._check_head(buf, pos, end + 4)  # raises 414, as an unfinished head would
        if method not in self.methods:
            raise HTTPError(501, f"method {method.decode('latin-1')!r} not implemented")
        if target[0] != 47 and not self._other_target_form(method, target):  # 47 is '/'
            raise HTTPError(400, "invalid request target")
        if headers is None:
            headers = self._header_lines(buf, line_end, end)
        if len(headers) > self.max_headers:
            raise HTTPError(431, f"more than {self.max_headers} headers")
        keep_alive = version == b"1.1"
        length = -1
        chunked = expect = False
        hosts = 0
        for name, value in headers:
            if name in _SPECIAL:
                if name == b"host":
                    hosts += 1
                elif name == b"connection":
                    tokens = _tokens((value,))
                    if b"close" in tokens:
                        keep_alive = False
                    elif b"keep-alive" in tokens and version == b"1.0":
                        keep_alive = True
                elif name == b"content-length":
                    length = self._content_length(value, length)
                elif name == b"transfer-encoding":
                    chunked = self._transfer_encoding(headers, version)
                elif name == b"expect" and value.lower() == b"100-continue" and version != b"1.0":
                    expect = True  # HTTP/1.0 clients cannot ask for it (RFC 9110 10.1.1)
        if hosts != 1 and (hosts or version == b"1.1"):
            raise HTTPError(400, "an HTTP/1.1 request needs exactly one Host header")
        if chunked and length >= 0:
            raise HTTPError(400, "both Transfer-Encoding and Content-Length")
        if length > self.max_body:
            raise HTTPError(413, f"body of {length} bytes is over the {self.max_body}-byte limit")
        return method, target, version, headers, keep_alive, length, chunked, expect

    @staticmethod
    def _header_lines(buf: bytes, line_end: int, end: int) -> Headers:
        """The header lines between the request line and the empty line, checked."""
        if line_end >= end:
            return ()
        block = buf[line_end:end + 2]
        pairs = _HEADER_LINE.findall(block)
        if len(pairs) != block.count(b"\n"):
            raise HTTPError(400, "malformed header line")
        return tuple([(name.lower(), value) for name, value in pairs])

    def _start_body(self, buf: bytes, pos: int, request: Request, length: int, chunked: bool,
                    expect: bool, out: List[Request]) -> int:
        """The head of ``request`` announced a body starting at ``buf[pos]``; return where parsing goes on."""
        if chunked:
            self._req = request
            self._body = bytearray()
            self._state = _CHUNK_SIZE_LINE
            self.expect_continue = expect
            return pos
        if len(buf) - pos >= length:  # the whole body is here: one slice
            request.body = buf[pos:pos + length]
            out.append(request)
            return pos + length
        self._req = request
        self._body = bytearray(buf[pos:])
        self._left = length - (len(buf) - pos)
        self._state = _LENGTH
        self.expect_continue = expect
        return len(buf)

    def _odd_request_line(self, buf: bytes, pos: int, end: int) -> Tuple[bytes, bytes, bytes, int]:
        """A request line the fast pattern refused: another HTTP version, or malformed."""
        m = _REQUEST_LINE_ANY_VERSION.match(buf, pos, end + 2)
        if m is None:
            self._check_head(buf, pos, end + 4)  # a request line too long is 414, not 400
            raise HTTPError(400, "malformed request line")
        method, target, major, minor = m.groups()
        if major != b"1":
            raise HTTPError(505, f"HTTP/{major.decode()}.{minor.decode()} is not supported")
        return method, target, b"1.1", m.end()  # HTTP/1.2+ is served as 1.1 (RFC 9110 2.5)

    @staticmethod
    def _other_target_form(method: bytes, target: bytes) -> bool:
        """Absolute-form (any method), authority-form (CONNECT), asterisk-form (OPTIONS)."""
        if target == b"*":
            return method == b"OPTIONS"
        if method == b"CONNECT":
            return b"/" not in target and b":" in target
        scheme, sep, rest = target.partition(b"://")
        return bool(sep) and scheme.lower() in (b"http", b"https") and bool(rest)

    def _content_length(self, value: bytes, previous: int) -> int:
        values = {v.strip(b" \t") for v in value.split(b",")}
        if len(values) != 1:
            raise HTTPError(400, "conflicting Content-Length values")
        text = values.pop()
        if not text.isdigit():  # 1*DIGIT: no sign, no spaces, no underscores
            raise HTTPError(400, "invalid Content-Length")
        if len(text) > 18:
            raise HTTPError(413, "Content-Length too large")
        length = int(text)
        if previous >= 0 and previous != length:
            raise HTTPError(400, "conflicting Content-Length values")
        return length

    def _transfer_encoding(self, headers: Headers, version: bytes) -> bool:
        if version == b"1.0":
            raise HTTPError(400, "Transfer-Encoding in an HTTP/1.0 request")
        codings = _tokens(v for n, v in headers if n == b"transfer-encoding")
        if not codings or codings[-1] != b"chunked" or b"chunked" in codings[:-1]:
            raise HTTPError(400, "Transfer-Encoding must end with chunked, once")
        if len(codings) > 1:
            raise HTTPError(501, f"transfer coding {codings[0].decode('latin-1')!r} not implemented")
        return True

    def _finish(self, out: List[Request]) -> None:
        request, body = self._req, self._body
        assert request is not None and body is not None  # only a body state finishes
        request.body = bytes(body)
        out.append(request)
        self._req = None
        self._body = None
        self._state = _HEAD
        self.expect_continue = False

    # ------------------------------------------------------------------ chunked bodies

    def _chunked(self, buf: bytes, pos: int, out: List[Request]) -> int:
        """Advance through a chunked body; return the new position, or ``-pos-1`` to wait for more."""
        n = len(buf)
        while pos < n:
            state = self._state
            if state == _CHUNK_DATA:
                take = min(self._left, n - pos)
                body = self._body
                assert body is not None  # a body state always has its buffer
                body += memoryview(buf)[pos:pos + take]
                pos += take
                self._left -= take
                if not self._left:
                    self._state = _CHUNK_END
            elif state == _CHUNK_END:
                if buf[pos] != 13 or (n - pos > 1 and buf[pos + 1] != 10):
                    raise HTTPError(400, "chunk not followed by CRLF")
                if n - pos < 2:
                    return -pos - 1
                pos += 2
                self._state = _CHUNK_SIZE_LINE
            elif state == _CHUNK_SIZE_LINE:
                # Lines end at their LF, so that a bare LF is refused at once.
                nl = buf.find(b"\n", pos, pos + _MAX_CHUNK_LINE)
                if nl < 0:
                    if n - pos >= _MAX_CHUNK_LINE:
                        raise HTTPError(400, "chunk-size line too long")
                    return -pos - 1
                if nl == pos or buf[nl - 1] != 13:
                    raise HTTPError(400, "bare LF in a chunk-size line")
                m = _CHUNK_SIZE.fullmatch(buf, pos, nl - 1)
                if m is None:
                    raise HTTPError(400, "invalid chunk size")
                size = int(m.group(1), 16)
                pos = nl + 1
                if size == 0:
                    self._state = _TRAILERS
                    self._extra = 0
                    continue
                if len(self._body or b"") + size > self.max_body:
                    raise HTTPError(413, f"chunked body over the {self.max_body}-byte limit")
                self._left = size
                self._state = _CHUNK_DATA
            elif state == _TRAILERS:
                nl = buf.find(b"\n", pos, pos + self.max_head + 2)
                if nl < 0:
                    if n - pos > self.max_head or self._extra + (n - pos) > self.max_head:
                        raise HTTPError(431, "trailers too large")
                    return -pos - 1
                if nl == pos or buf[nl - 1] != 13:
                    raise HTTPError(400, "bare LF in the trailers")
                if nl == pos + 1:  # the empty line that ends the message
                    pos += 2
                    self._finish(out)
                    return pos
                self._extra += nl + 1 - pos
                if self._extra > self.max_head:
                    raise HTTPError(431, "trailers too large")
                if not _HEADER_LINE.fullmatch(buf, pos, nl + 1):
                    raise HTTPError(400, "malformed trailer line")
                pos = nl + 1  # trailers are read and dropped
            else:  # pragma: no cover - _HEAD and _LENGTH never reach here
                raise AssertionError(state)
        return pos


# --------------------------------------------------------------------------- responses

_date_cache: List[Union[int, bytes]] = [0, b""]


def http_date(now: Optional[float] = None) -> bytes:
    """The ``Date`` header value (IMF-fixdate), computed at most once per second."""
    import time

    second = int(time.time() if now is None else now)
    if second != _date_cache[0]:
        _date_cache[1] = formatdate(second, usegmt=True).encode("ascii")
        _date_cache[0] = second
    return _date_cache[1]  # type: ignore[return-value]


def encode_response(status: int, headers: Sequence[Tuple[Union[str, bytes], Union[str, bytes]]] = (),
                    body: bytes = b"", *, date: Optional[bytes] = None,
                    server: Optional[bytes] = b"netreactor", keep_alive: Optional[bool] = True,
                    head_only: bool = False, reason: Optional[str] = None) -> bytes:
    """A complete HTTP/1.1 response with ``Content-Length``, ``Date`` and ``Server``.

    ``keep_alive``: True adds nothing (HTTP/1.1's default; pass ``b"keep-alive"``
    in ``headers`` for an HTTP/1.0 client), False adds ``Connection: close``,
    None adds no Connection header. ``head_only`` leaves the body out but keeps
    its ``Content-Length`` (for HEAD).
    """
    lines = [b"HTTP/1.1 %d %s\r\n" % (status, (reason or REASONS.get(status, "Unknown")).encode("latin-1"))]
    if server:
        lines.append(b"Server: %s\r\n" % server)
    lines.append(b"Date: %s\r\n" % (date or http_date()))
    for name, value in headers:
        if isinstance(name, str):
            name = name.encode("latin-1")
        if isinstance(value, str):
            value = value.encode("latin-1")
        if b"\r" in value or b"\n" in value or b"\r" in name or b"\n" in name:
            raise ValueError("CR or LF in a response header")
        lines.append(b"%s: %s\r\n" % (name, value))
    if keep_alive is False:
        lines.append(b"Connection: close\r\n")
    if status >= 200 and status not in (204, 304):
        lines.append(b"Content-Length: %d\r\n" % len(body))
    lines.append(b"\r\n")
    if not head_only:
        lines.append(body)
    return b"".join(lines)
