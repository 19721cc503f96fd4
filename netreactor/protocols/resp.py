"""RESP2, the Redis serialization protocol, sans-IO.

Commands (client → server) are parsed by :class:`CommandParser`::

    parser = CommandParser()
    for args in parser.feed(data):      # each command is a list of bytes
        ...
    # a ProtocolError carries the commands that came before the bad input

It accepts everything a Redis server accepts from a client:

* multibulk commands (``*2\\r\\n$3\\r\\nGET\\r\\n$1\\r\\nk\\r\\n``), pipelined any
  number per read and split at any byte across reads;
* inline commands (``GET k\\r\\n`` or ``GET k\\n``, with Redis's quoting rules:
  ``"..."`` with ``\\n``, ``\\xHH``… escapes and ``'...'``), as typed in telnet;
* empty commands (``*0``, ``*-1``, blank inline lines), which are skipped.

Limits (all per connection, all configurable): a bulk string is at most
``max_bulk`` bytes (default 64 MiB; Redis allows 512 MiB), a command has at most
``max_args`` arguments (default 1,048,576) and at most ``max_command`` bytes in
total (default 128 MiB: each argument with its ``$len`` line), an inline command
(before its LF) or a ``*``/``$`` length line (before its CRLF) is at most
``max_inline`` bytes (64 KiB, as in Redis). The parser holds only the
unfinished command, so its memory is bounded by ``max_command``. Violations
raise :class:`ProtocolError`, whose :attr:`ProtocolError.reply` is the
``-ERR Protocol error: ...`` line Redis would send before closing. Every limit
is one rule whatever the segmentation: the commands and the error depend only
on the bytes, not on how they were split into reads (an unfinished line is
refused as soon as it is certain to be too long; a property test checks it).

Replies (server → client) are parsed by :class:`ReplyParser` (used by tests and
clients; arrays nest at most ``max_depth`` deep), and built with the
``encode_*`` helpers.

Why the parser looks the way it does: on the server's hot path, one
``bytes.split(b"\\r\\n")`` (a single C call) cuts a whole pipelined batch into
its lines; a well-formed command is then taken by list indexing and checked by
comparing each ``$len`` line with a precomputed header for the value's length.
Anything unusual (inline commands, a CRLF inside a value, values of 4 KiB or
more, many arguments, an unfinished command, errors, anything a limit refuses:
the fast path's tables are built for the parser's limits) falls back to a
careful parser that keeps Redis's query-buffer state between reads and defines
the semantics; the fast path only ever accepts what the careful one would
(property tests check it). With the C speedups (:mod:`netreactor.speedups`) the
fast path is C (any size, every limit) and :func:`encode_bulk` too.
"""

from __future__ import annotations

import functools
import sys
from typing import Any, Callable, Dict, Iterable, List, NoReturn, Optional, Tuple, Union

from .. import speedups

_c = speedups.module()
_c_parse = getattr(_c, "resp_parse_commands", None)

__all__ = [
    "CommandParser", "ReplyParser", "ProtocolError", "RespError",
    "DEFAULT_MAX_BULK", "DEFAULT_MAX_COMMAND", "DEFAULT_MAX_ARGS", "DEFAULT_MAX_INLINE",
    "DEFAULT_MAX_REPLY_DEPTH",
    "encode_command", "encode_bulk", "encode_integer", "encode_simple", "encode_error",
    "encode_array", "NULL_BULK", "NULL_ARRAY", "OK", "parse_int",
]

MiB = 1 << 20
#: Largest bulk string accepted (Redis's ``proto-max-bulk-len`` is 512 MiB).
DEFAULT_MAX_BULK = 64 * MiB
#: Largest command, all arguments together (bounds the per-connection buffer).
DEFAULT_MAX_COMMAND = 128 * MiB
#: Most arguments in one command (Redis: 1024*1024 before authentication was split out).
DEFAULT_MAX_ARGS = 1024 * 1024
#: Longest inline command or ``*``/``$`` length line (Redis's PROTO_INLINE_MAX_SIZE).
DEFAULT_MAX_INLINE = 64 * 1024
#: Deepest nesting of arrays :class:`ReplyParser` accepts.
DEFAULT_MAX_REPLY_DEPTH = 128

OK = b"+OK\r\n"
NULL_BULK = b"$-1\r\n"
NULL_ARRAY = b"*-1\r\n"

Command = List[bytes]


class ProtocolError(ValueError):
    """The client broke the protocol; the connection cannot continue.

    ``commands`` holds the complete commands that preceded the bad input in the
    data given to :meth:`CommandParser.feed` (Redis executes those before it
    replies with the error and closes).
    """

    def __init__(self, message: str, commands: Optional[List[Command]] = None) -> None:
        super().__init__(f"Protocol error: {message}")
        self.commands: List[Command] = commands if commands is not None else []

    @property
    def reply(self) -> bytes:
        """The error reply Redis sends for this error, CRLF-terminated."""
        return encode_error("ERR " + str(self))


class RespError(Exception):
    """An error reply (``-ERR ...``) as returned by :class:`ReplyParser` (not raised)."""

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RespError) and str(self) == str(other)

    def __hash__(self) -> int:
        return hash(str(self))


# --------------------------------------------------------------------------- integers


def parse_int(data: bytes) -> Optional[int]:
    """Parse a signed 64-bit decimal integer exactly as Redis's ``string2ll`` does.

    No sign other than a leading ``-``, no spaces, no leading zeros, no ``-0``,
    within ``[-2**63, 2**63-1]``. Returns None when ``data`` is not such a number.
    """
    # int() alone would accept " 1", "+1", "1_0" and "007"; Redis rejects them all.
    if not data or len(data) > 20:
        return None
    if data.isdigit():
        if data[0] == 48 and len(data) > 1:  # leading zero
            return None
        value = int(data)
        return value if value <= 0x7FFFFFFFFFFFFFFF else None
    if data[0] == 45 and len(data) > 1 and data[1] != 48 and data[1:].isdigit():
        value = int(data)
        return value if value >= -0x8000000000000000 else None
    return None


# --------------------------------------------------------------------------- encoders


def encode_command(*args: Union[bytes, str, int]) -> bytes:
    """A command as a RESP multibulk, e.g. ``encode_command("SET", "k", b"v")``."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, str):
            arg = arg.encode()
        elif isinstance(arg, int):
            arg = b"%d" % arg
        parts.append(b"$%d\r\n%s\r\n" % (len(arg), arg))
    return b"".join(parts)


def encode_bulk(value: Optional[bytes]) -> bytes:
    """A bulk string reply; ``None`` is the null bulk ``$-1``."""
    if value is None:
        return NULL_BULK
    return b"$%d\r\n%s\r\n" % (len(value), value)


_py_encode_bulk = encode_bulk
if _c is not None:
    # The same function in C (a server stores every value this way): bytes and
    # bytearray written directly, anything else through the expression above.
    encode_bulk = _c.resp_bulk


def encode_integer(value: int) -> bytes:
    """An integer reply (``:n``)."""
    return b":%d\r\n" % value


def encode_simple(text: Union[str, bytes]) -> bytes:
    """A simple string reply (``+text``); CR and LF are not allowed in it."""
    if isinstance(text, str):
        text = text.encode()
    return b"+" + text.replace(b"\r", b" ").replace(b"\n", b" ") + b"\r\n"


def encode_error(text: Union[str, bytes]) -> bytes:
    """An error reply (``-ERR ...``); as Redis does, CR and LF become spaces."""
    if isinstance(text, str):
        text = text.encode("utf-8", "replace")
    return b"-" + text.replace(b"\r", b" ").replace(b"\n", b" ") + b"\r\n"


def encode_array(items: Optional[Iterable[Optional[bytes]]]) -> bytes:
    """An array of bulk strings (``None`` items are null bulks); ``None`` is the null array."""
    if items is None:
        return NULL_ARRAY
    items = list(items)
    parts = [b"*%d\r\n" % len(items)]
    for item in items:
        parts.append(NULL_BULK if item is None else b"$%d\r\n%s\r\n" % (len(item), item))
    return b"".join(parts)


# --------------------------------------------------------------------------- inline commands

_SPACE = frozenset(b" \t\n\r\x0b\x0c")   # C isspace(): skipped between arguments
_ENDS_WORD = frozenset(b" \n\r\t\x00")   # what ends an unquoted argument in sdssplitargs
_ESCAPES = {ord("n"): 10, ord("r"): 13, ord("t"): 9, ord("b"): 8, ord("a"): 7}
_HEX = frozenset(b"0123456789abcdefABCDEF")
_PLAIN_INLINE = bytes(range(256)).translate(None, b"\"'\x00\x0b\x0c")


def split_inline(line: bytes) -> Optional[List[bytes]]:
    """Split an inline command line like Redis's ``sdssplitargs``; None on unbalanced quotes."""
    # The common case (no quotes, no odd control bytes) is one C call.
    if not line.translate(None, _PLAIN_INLINE):
        return line.split()
    # Redis splits a C string: a NUL ends the line.
    line = line.partition(b"\x00")[0]
    args: List[bytes] = []
    i, n = 0, len(line)
    while True:
        while i < n and line[i] in _SPACE:
            i += 1
        if i >= n:
            return args
        cur = bytearray()
        inq = insq = False
        while True:
            if inq:
                if i >= n:
                    return None  # unterminated "
                c = line[i]
                if c == 92 and i + 3 < n and line[i + 1] == 120 and line[i + 2] in _HEX and line[i + 3] in _HEX:
                    cur.append(int(line[i + 2:i + 4], 16))
                    i += 3
                elif c == 92 and i + 1 < n:
                    i += 1
                    cur.append(_ESCAPES.get(line[i], line[i]))
                elif c == 34:
                    # The closing quote must be followed by a space or the end.
                    if i + 1 < n and line[i + 1] not in _SPACE:
                        return None
                    i += 1
                    break
                else:
                    cur.append(c)
            elif insq:
                if i >= n:
                    return None  # unterminated '
                c = line[i]
                if c == 92 and i + 1 < n and line[i + 1] == 39:
                    i += 1
                    cur.append(39)
                elif c == 39:
                    if i + 1 < n and line[i + 1] not in _SPACE:
                        return None
                    i += 1
                    break
                else:
                    cur.append(c)
            else:
                if i >= n:
                    break
                c = line[i]
                if c in _ENDS_WORD:
                    i += 1
                    break
                if c == 34:
                    inq = True
                elif c == 39:
                    insq = True
                else:
                    cur.append(c)
            i += 1
        args.append(bytes(cur))


# --------------------------------------------------------------------------- command parser

# Multibulk count lines the fast path knows; larger counts take the careful path.
_COUNT_LINES: Dict[bytes, int] = {b"*%d" % n: n for n in range(1, 65)}


# ``$len`` line of each small length; longer values take the careful path.
_BULK_HEADER: List[bytes] = [b"$%d" % n for n in range(4096)]


def _fast_parse(buf: bytes, out: List[Command], counts: Dict[bytes, int] = _COUNT_LINES,
                header: List[bytes] = _BULK_HEADER) -> int:
    """Take well-formed multibulk commands from the start of ``buf``; return where it stopped.

    Stops (without error) at the first thing it is not sure about; the careful
    parser takes over from there. Each value must be exactly as long as its
    ``$len`` line says: a value holding a CRLF was cut short by the split and
    fails that test. Two- and three-argument commands (GET, SET...) are
    unrolled, which measured ~35% faster than the general slice-and-compare.

    The limits are in the tables: ``counts`` holds only the ``*n`` lines a
    parser accepts (``n <= max_args``, the line within ``max_inline``) and
    ``header`` only the ``$len`` lines (``len <= max_bulk``, within
    ``max_inline``); :func:`_fast_parse_sized` adds ``max_command`` when the
    tables admit commands bigger than that (see :func:`_fast_tables`).
    """
    parts = buf.split(b"\r\n")
    last = len(parts) - 1  # parts[last] is what follows the final CRLF (unterminated)
    count_of = counts.get
    append = out.append
    i = 0
    try:
        while i < last:
            n = count_of(parts[i])
            if n is None:
                break
            end = i + 1 + 2 * n
            if end > last:
                break
            if n == 3:
                a = parts[i + 2]
                b = parts[i + 4]
                c = parts[i + 6]
                if parts[i + 1] != header[len(a)] or parts[i + 3] != header[len(b)] \
                        or parts[i + 5] != header[len(c)]:
                    break
                append([a, b, c])
            elif n == 2:
                a = parts[i + 2]
                b = parts[i + 4]
                if parts[i + 1] != header[len(a)] or parts[i + 3] != header[len(b)]:
                    break
                append([a, b])
            else:
                args = parts[i + 2:end:2]
                if parts[i + 1:end:2] != [header[len(v)] for v in args]:
                    break
                append(args)
            i = end
    except IndexError:  # a value longer than the header table
        pass
    if i == last:
        return len(buf) - len(parts[last])
    return len(buf) - sum(map(len, parts[i:])) - 2 * (last - i)


def _fast_parse_sized(buf: bytes, out: List[Command], counts: Dict[bytes, int],
                      header: List[bytes], max_command: int) -> int:
    """:func:`_fast_parse`, keeping only the commands within ``max_command``
    (the arguments with their ``$len`` lines, as the careful parser counts)."""
    start = len(out)
    pos = _fast_parse(buf, out, counts, header)
    for k in range(start, len(out)):
        args = out[k]
        if sum([len(a) + len(header[len(a)]) + 4 for a in args]) > max_command:
            # The careful parser refuses this one; stop where it starts. The
            # commands taken are canonical, so their encodings give the place.
            del out[k:]
            return sum(len(b"*%d\r\n" % len(c)) + sum([len(a) + len(header[len(a)]) + 4 for a in c])
                       for c in out[start:])
    return pos


@functools.lru_cache(maxsize=64)
def _fast_tables(max_bulk: int, max_args: int, max_command: int,
                 max_inline: int) -> Tuple[Dict[bytes, int], List[bytes], int]:
    """The fast path's tables for one set of limits: ``(counts, header, max_command)``.

    Each table keeps only what the careful parser would accept: a ``*n`` line
    with ``n <= max_args`` and a ``$len`` line with ``len <= max_bulk``, each
    at most ``max_inline`` bytes. The size check is needed (non-zero) only
    when the largest command the tables admit could exceed ``max_command``.
    """
    counts = {line: n for line, n in _COUNT_LINES.items() if n <= max_args and len(line) <= max_inline}
    header = []
    for length, line in enumerate(_BULK_HEADER):
        if length > max_bulk or len(line) > max_inline:
            break  # both grow with the length: the table is a prefix
        header.append(line)
    if not counts or not header:
        return {}, [], 0
    if counts == _COUNT_LINES and len(header) == len(_BULK_HEADER):
        counts, header = _COUNT_LINES, _BULK_HEADER  # the shared default tables
    largest = max(counts.values()) * (len(header[-1]) + len(header) - 1 + 4)
    return counts, header, (max_command if largest > max_command else 0)


def _check_limit(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def _fast_path(max_bulk: int, max_args: int, max_command: int,
               max_inline: int) -> Callable[[bytes, List[Command]], int]:
    """The fast path for these limits: the C one when active, else :func:`_py_fast_path`'s."""
    if _c_parse is not None:
        # The C code counts in Py_ssize_t; a larger limit is the same as the
        # largest one (no buffer comes near it).
        big = sys.maxsize
        return functools.partial(_c_parse, min(max_bulk, big), min(max_args, big), min(max_command, big),
                                 min(max_inline, big))
    return _py_fast_path(max_bulk, max_args, max_command, max_inline)


def _py_fast_path(max_bulk: int, max_args: int, max_command: int,
                  max_inline: int) -> Callable[[bytes, List[Command]], int]:
    """:func:`_fast_parse` bound to the tables of these limits."""
    counts, header, size_limit = _fast_tables(max_bulk, max_args, max_command, max_inline)
    if counts is _COUNT_LINES and not size_limit:
        return _fast_parse
    if not counts:
        return _no_fast_path
    if size_limit:
        return functools.partial(_fast_parse_sized, counts=counts, header=header, max_command=size_limit)
    return functools.partial(_fast_parse, counts=counts, header=header)


def _no_fast_path(buf: bytes, out: List[Command]) -> int:
    return 0


def _line_too_long(buf: bytes, pos: int, max_inline: int) -> bool:
    """No CRLF in ``buf[pos:]`` ends a line of at most ``max_inline`` bytes: is it
    already certain that none will? (A final CR may still be a CRLF's first half.)"""
    held = len(buf) - pos
    return held > max_inline + 1 or (held == max_inline + 1 and buf[-1] != 13)


class CommandParser:
    """Incremental parser of client commands (RESP2 multibulk and inline).

    :meth:`feed` takes bytes as they arrive and returns the commands completed
    by them, each a list of ``bytes`` arguments (the command name first, as sent).
    After a :class:`ProtocolError` the parser is spent: further feeds raise again.

    State between feeds is that of Redis's query buffer: the arguments of an
    unfinished multibulk already read, how many are still due, and the bytes of
    the unfinished argument or line. Work per byte is therefore constant, however
    a command is cut into reads.
    """

    __slots__ = ("_max_bulk", "_max_args", "_max_command", "_max_inline", "_fast",
                 "_pending", "_need", "_line", "_args", "_left", "_size", "_error")

    def __init__(self, *, max_bulk: int = DEFAULT_MAX_BULK, max_args: int = DEFAULT_MAX_ARGS,
                 max_command: int = DEFAULT_MAX_COMMAND, max_inline: int = DEFAULT_MAX_INLINE) -> None:
        self._max_bulk = _check_limit("max_bulk", max_bulk)
        self._max_args = _check_limit("max_args", max_args)
        self._max_command = _check_limit("max_command", max_command)
        self._max_inline = _check_limit("max_inline", max_inline)
        #: The fast path, bound to these limits: ``(buf, out) -> position``.
        self._fast: Callable[[bytes, List[Command]], int] = _fast_path(
            max_bulk, max_args, max_command, max_inline)
        #: Unparsed bytes (an unfinished line or argument); None when there are none.
        self._pending: Optional[bytearray] = None
        #: Bytes _pending must hold before parsing it again can make progress.
        self._need = 0
        #: _pending is an unfinished line: only a newline can complete it.
        self._line = False
        #: Arguments of the unfinished multibulk read so far (None between commands).
        self._args: Optional[Command] = None
        #: Arguments of the unfinished multibulk still to read.
        self._left = 0
        #: Bytes of the unfinished multibulk consumed so far (checked against max_command).
        self._size = 0
        self._error: Optional[str] = None

    def _set_limit(self, name: str, value: int) -> None:
        setattr(self, "_" + name, _check_limit(name, value))
        self._fast = _fast_path(self._max_bulk, self._max_args, self._max_command, self._max_inline)

    @property
    def max_bulk(self) -> int:
        """Longest bulk string (argument) accepted, in bytes."""
        return self._max_bulk

    @max_bulk.setter
    def max_bulk(self, value: int) -> None:
        self._set_limit("max_bulk", value)

    @property
    def max_args(self) -> int:
        """Most arguments in one command."""
        return self._max_args

    @max_args.setter
    def max_args(self, value: int) -> None:
        self._set_limit("max_args", value)

    @property
    def max_command(self) -> int:
        """Largest command: the bytes of its arguments, each with its ``$len`` line."""
        return self._max_command

    @max_command.setter
    def max_command(self, value: int) -> None:
        self._set_limit("max_command", value)

    @property
    def max_inline(self) -> int:
        """Longest inline command (before its LF) or ``*``/``$`` line (before its CRLF)."""
        return self._max_inline

    @max_inline.setter
    def max_inline(self, value: int) -> None:
        self._set_limit("max_inline", value)

    @property
    def buffered(self) -> int:
        """Bytes held for an unfinished command (arguments already read included)."""
        return self._size + (0 if self._pending is None else len(self._pending))

    def feed(self, data: Union[bytes, bytearray, memoryview]) -> List[Command]:
        """Consume ``data``; return the commands it completed (possibly none).

        Raises :class:`ProtocolError` on malformed or oversized input; its
        ``commands`` are the complete commands found before the bad bytes.
        """
        if self._error is not None:
            raise ProtocolError(self._error)
        out: List[Command] = []
        pending = self._pending
        if type(data) is not bytes:
            data = bytes(data)
        if pending is not None:
            pending += data
            if len(pending) < self._need:
                return out
            if self._line and b"\n" not in data and len(pending) <= self._max_inline:
                # Still no end of line, so nothing can complete (nor be proven
                # too long): skipping the rescan keeps a line that trickles in
                # byte by byte linear.
                return out
            buf = bytes(pending)
            self._pending = None
        else:
            buf = data
        if self._args is None:
            pos = self._fast(buf, out)
            if pos == len(buf):
                return out
        else:
            pos = 0
        pos = self._careful_parse(buf, pos, out)
        if pos < len(buf) or self._args is not None:
            self._pending = bytearray(buf[pos:])
        return out

    def _fail(self, message: str, out: List[Command]) -> NoReturn:
        self._error = message
        self._pending = self._args = None
        raise ProtocolError(message, out)

    def _careful_parse(self, buf: bytes, pos: int, out: List[Command]) -> int:
        """Parse commands one by one from ``buf[pos:]``; return where parsing stopped.

        Parsing stops at the end of ``buf`` or at an unfinished line or argument;
        then ``self._need`` is the number of bytes, from the returned position on,
        that must be buffered before parsing can go on.
        """
        n = len(buf)
        max_inline = self._max_inline
        args = self._args
        left = self._left
        while True:
            if args is None:
                if pos >= n:
                    return pos
                if buf[pos] != 42:  # not '*': an inline command
                    # The line before its LF is at most max_inline bytes.
                    nl = buf.find(b"\n", pos, pos + max_inline + 1)
                    if nl < 0:
                        if n - pos > max_inline:
                            self._fail("too big inline request", out)
                        self._line = True
                        self._need = n - pos + 1
                        return pos
                    line = buf[pos:nl - 1] if nl > pos and buf[nl - 1] == 13 else buf[pos:nl]
                    args = split_inline(line)
                    if args is None:
                        self._fail("unbalanced quotes in request", out)
                    if args:
                        out.append(args)
                    args = None
                    pos = nl + 1
                    continue
                nl = buf.find(b"\r\n", pos, pos + max_inline + 2)
                if nl < 0:
                    if _line_too_long(buf, pos, max_inline):
                        self._fail("too big mbulk count string", out)
                    self._line = True
                    self._need = n - pos + 1
                    return pos
                count = parse_int(buf[pos + 1:nl])
                if count is None or count > self._max_args:
                    self._fail("invalid multibulk length", out)
                pos = nl + 2
                if count <= 0:
                    continue  # an empty command: Redis skips it
                args = self._args = []
                left = count
                self._size = 0
            while left:
                if pos >= n:
                    self._left = left
                    self._line = False
                    self._need = 1
                    return pos
                if buf[pos] != 36:  # '$'
                    self._fail(f"expected '$', got '{chr(buf[pos])}'", out)
                nl = buf.find(b"\r\n", pos, pos + max_inline + 2)
                if nl < 0:
                    if _line_too_long(buf, pos, max_inline):
                        self._fail("too big bulk count string", out)
                    self._left = left
                    self._line = True
                    self._need = n - pos + 1
                    return pos
                length = parse_int(buf[pos + 1:nl])
                if length is None or length < 0 or length > self._max_bulk:
                    self._fail("invalid bulk length", out)
                stop = nl + 2 + length
                if self._size + stop + 2 - pos > self._max_command:
                    self._fail("too big command", out)
                if stop + 2 > n:
                    self._left = left
                    self._line = False
                    self._need = stop + 2 - pos
                    return pos
                if buf[stop] != 13 or buf[stop + 1] != 10:
                    self._fail("bulk string not terminated by CRLF", out)
                args.append(buf[nl + 2:stop])
                self._size += stop + 2 - pos
                pos = stop + 2
                left -= 1
            out.append(args)
            args = self._args = None
            self._size = 0


# --------------------------------------------------------------------------- reply parser

Reply = Union[str, int, bytes, None, RespError, List[Any]]
_INCOMPLETE = object()


class ReplyParser:
    """Incremental parser of RESP2 replies, for clients and tests.

    Values: simple string → ``str``, error → :class:`RespError` (returned, not
    raised), integer → ``int``, bulk string → ``bytes``, null bulk or null array
    → ``None``, array → ``list``.

    ``max_depth`` bounds how deeply arrays may nest (default
    :data:`DEFAULT_MAX_REPLY_DEPTH`, 128; Redis's own replies nest a few
    levels): a deeper reply is garbage like any other, a ``ValueError``.
    """

    __slots__ = ("_buf", "max_depth")

    def __init__(self, *, max_depth: int = DEFAULT_MAX_REPLY_DEPTH) -> None:
        self.max_depth = _check_limit("max_depth", max_depth)
        self._buf = b""

    def feed(self, data: bytes) -> List[Reply]:
        """Consume ``data``; return the complete replies so far. ``ValueError`` on garbage."""
        buf = self._buf + bytes(data)
        out: List[Reply] = []
        pos = 0
        while pos < len(buf):
            value, end = self._parse(buf, pos, 0)
            if value is _INCOMPLETE:
                break
            out.append(value)
            pos = end
        self._buf = buf[pos:]
        return out

    def _parse(self, buf: bytes, pos: int, depth: int) -> Any:
        nl = buf.find(b"\r\n", pos)
        if nl < 0:
            return _INCOMPLETE, pos
        kind, line, after = buf[pos:pos + 1], buf[pos + 1:nl], nl + 2
        if kind == b"+":
            return line.decode(), after
        if kind == b"-":
            return RespError(line.decode()), after
        if kind == b":":
            return int(line), after
        if kind == b"$":
            length = int(line)
            if length < 0:
                return None, after
            if after + length + 2 > len(buf):
                return _INCOMPLETE, pos
            if buf[after + length:after + length + 2] != b"\r\n":
                raise ValueError("bulk string not terminated by CRLF")
            return buf[after:after + length], after + length + 2
        if kind == b"*":
            count = int(line)
            if count < 0:
                return None, after
            if depth >= self.max_depth and count:
                raise ValueError(f"reply arrays nested deeper than max_depth={self.max_depth}")
            items = []
            for _ in range(count):
                value, after = self._parse(buf, after, depth + 1)
                if value is _INCOMPLETE:
                    return _INCOMPLETE, pos
                items.append(value)
            return items, after
        raise ValueError(f"not a RESP2 reply: {buf[pos:pos + 20]!r}")
