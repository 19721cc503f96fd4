"""Sans-IO frame codecs: bytes in, frames out, no sockets.

A *codec* describes one wire format. ``codec.encode(payload)`` returns the bytes
to send for one frame; ``codec.decoder()`` returns a fresh, stateful decoder for
one inbound stream (one per connection), whose ``feed(data)`` returns the list
of complete frames the stream holds so far and keeps any partial frame for the
next call. Any split of the stream gives the same frames: one byte per call, or
thousands of frames in one call.

Codecs (the names and parameters follow Netty's frame decoders):

* :class:`LineCodec` -- lines ended by ``\\n`` or ``\\r\\n``.
* :class:`DelimiterCodec` -- frames ended by one of several delimiters.
* :class:`FixedLengthCodec` -- frames of a fixed size.
* :class:`LengthFieldCodec` -- frames announced by a length header, with all of
  Netty's ``LengthFieldBasedFrameDecoder`` parameters.

Errors: a decoder raises :class:`FrameError` (a :class:`ValueError`) on corrupt
input, and its subclass :class:`FrameTooLongError` when a frame would exceed
``max_frame_length``. Checks fail *fast*: an oversized length header raises on the
``feed`` that delivers the header, and a delimiter-based frame raises as soon as
the buffered bytes prove that no delimiter can come in time, so a peer cannot
make a decoder buffer more than about ``max_frame_length`` bytes. A decoder that
raised stays failed: every later ``feed`` raises :class:`FrameError` again (the
stream has lost its framing; close the connection). Frames decoded by the
failing call before the bad one are in the exception's ``frames`` attribute.

Encoding problems (a payload that cannot be framed) raise a plain
:class:`ValueError`: they are the caller's bug, not the peer's.

Decoders are not thread-safe; like a connection, each belongs to one loop.
"""

from __future__ import annotations

import abc
import functools
import struct
from typing import Any, Iterable, List, NoReturn, Optional, Tuple, Union

from . import speedups

# The C twins (netreactor._speedups), or None: the pure-Python classes below
# define the behaviour either way (see netreactor/speedups.py).
_c = speedups.module()
# Parameters beyond this take the pure-Python decoders: the C ones do their
# arithmetic in 64 bits (no real stream comes near).
_C_LIMIT = 1 << 60

__all__ = [
    "DEFAULT_MAX_FRAME_LENGTH",
    "FrameError",
    "FrameTooLongError",
    "Codec",
    "Decoder",
    "LineCodec",
    "DelimiterCodec",
    "FixedLengthCodec",
    "LengthFieldCodec",
]

#: ``max_frame_length`` when none is given: 1 MiB.
DEFAULT_MAX_FRAME_LENGTH = 1 << 20

BytesLike = Union[bytes, bytearray, memoryview]


class FrameError(ValueError):
    """The inbound stream is malformed: it cannot be split into frames.

    ``frames`` holds the frames the failing ``feed`` call decoded before it met
    the bad input (usually empty). The decoder that raised is failed for good.
    """

    def __init__(self, message: str, frames: Optional[List[bytes]] = None) -> None:
        super().__init__(message)
        self.frames: List[bytes] = frames if frames is not None else []


class FrameTooLongError(FrameError):
    """A frame would be longer than the codec's ``max_frame_length``."""


# --------------------------------------------------------------------------
# Base classes for codecs and decoders (also the interface of custom codecs)
# --------------------------------------------------------------------------


class Decoder(abc.ABC):
    """A stateful splitter of one inbound byte stream into frames.

    Subclasses implement :meth:`feed`. The contract, which the built-in
    decoders keep and custom ones should keep:

    * ``feed(data)`` accepts any bytes-like object, returns the complete frames
      (a ``list``, empty when none is complete yet) and keeps the unconsumed
      remainder for the next call; the result must not depend on how the
      stream was split into calls.
    * Malformed or oversized input raises :class:`FrameError`; the decoder then
      stays failed and every later ``feed`` raises :class:`FrameError` too.
    """

    __slots__ = ()

    @abc.abstractmethod
    def feed(self, data: BytesLike) -> List[bytes]:
        """Add ``data`` to the stream; return the frames completed by it."""

    @property
    def buffered(self) -> int:
        """Bytes held for an incomplete frame."""
        return 0


class Codec(abc.ABC):
    """A wire format: how to encode one frame, and how to make a decoder.

    Subclass it for a custom format: implement :meth:`encode` and
    :meth:`decoder` (which returns a new :class:`Decoder` per stream). A codec
    holds only configuration, so one instance can serve every connection.
    """

    __slots__ = ()

    @abc.abstractmethod
    def encode(self, payload: BytesLike) -> bytes:
        """The bytes that carry ``payload`` as one frame."""

    @abc.abstractmethod
    def decoder(self) -> Decoder:
        """A fresh decoder for one stream."""

    def encode_many(self, payloads: List[BytesLike]) -> bytes:
        """The frames of several payloads, back to back (what a pipelined reply
        burst sends). Override when one pass beats encoding one by one."""
        return b"".join([self.encode(p) for p in payloads])


class _BufferedDecoder(Decoder):
    """Shared state of the built-in decoders: the partial tail, the failure."""

    __slots__ = ("_buf", "_error")

    def __init__(self) -> None:
        # The unconsumed tail of the stream. Empty in the common case, so the
        # hot path decodes straight out of the caller's bytes; a bytearray (not
        # bytes) so a big frame arriving in many pieces is appended in place
        # rather than re-concatenated on every call.
        self._buf = bytearray()
        self._error: Optional[FrameError] = None

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def _fail(self, exc: FrameError, frames: Optional[List[bytes]] = None) -> NoReturn:
        # Poison the decoder: after a framing error the stream position is
        # unknown, so any later "frame" would be garbage. Free the tail now.
        if frames:
            exc.frames = frames
        self._error = exc
        self._buf = bytearray()
        raise exc

    def _raise_failed(self) -> NoReturn:
        _raise_failed_again(self._error)  # type: ignore[arg-type]


def _raise_failed_again(error: FrameError) -> NoReturn:
    """What every ``feed`` of a failed decoder raises (both implementations)."""
    raise FrameError(
        f"decoder failed earlier ({error}); the stream cannot be resynchronised, "
        "use a new decoder (or close the connection)"
    ) from error


# --------------------------------------------------------------------------
# Argument checking (constructors raise ValueError naming the argument)
# --------------------------------------------------------------------------


def _check_int(name: str, value: object, minimum: Optional[int] = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        want = "an integer" if minimum is None else f"an integer >= {minimum}"
        raise ValueError(f"{name} must be {want}, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def _check_bool(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return value


def _check_max(value: object) -> int:
    return _check_int("max_frame_length", value, 1)


def _as_bytes(data: BytesLike) -> bytes:
    # Frames are sliced out of the data; slicing a bytearray or memoryview
    # would hand out mutable objects or views of the caller's buffer.
    return data if data.__class__ is bytes else bytes(data)


# --------------------------------------------------------------------------
# LineCodec
# --------------------------------------------------------------------------


class LineCodec(Codec):
    """Lines ended by ``\\n`` or ``\\r\\n`` (Netty's ``LineBasedFrameDecoder``).

    :param max_frame_length: longest accepted line, not counting its line
        ending; a longer line raises :class:`FrameTooLongError` as soon as
        ``max_frame_length + 2`` bytes without ``\\n`` are buffered (or
        ``+ 1`` when the last one is not ``\\r``).
    :param strip_delimiter: ``True`` (default) returns lines without their
        ending; ``False`` keeps ``\\n`` or ``\\r\\n`` as received.
    :param newline: what :meth:`encode` appends: ``b"\\r\\n"`` (default, the
        convention of network protocols such as HTTP, SMTP and RESP) or ``b"\\n"``.
        Decoding accepts both whatever this is.
    """

    __slots__ = ("_max", "_strip", "_newline")

    def __init__(
        self,
        *,
        max_frame_length: int = DEFAULT_MAX_FRAME_LENGTH,
        strip_delimiter: bool = True,
        newline: bytes = b"\r\n",
    ) -> None:
        self._max = _check_max(max_frame_length)
        self._strip = _check_bool("strip_delimiter", strip_delimiter)
        if not isinstance(newline, bytes) or newline not in (b"\r\n", b"\n"):
            raise ValueError(f"newline must be b'\\r\\n' or b'\\n', got {newline!r}")
        self._newline = newline

    @property
    def max_frame_length(self) -> int:
        return self._max

    @property
    def strip_delimiter(self) -> bool:
        return self._strip

    @property
    def newline(self) -> bytes:
        return self._newline

    def encode(self, payload: BytesLike) -> bytes:
        """``payload`` plus :attr:`newline`.

        Raises :class:`ValueError` when ``payload`` contains ``\\n``, or ends
        with ``\\r`` while ``newline`` is ``b"\\n"`` (the decoder would take
        that ``\\r`` for part of the line ending): either would not decode back
        to ``payload``.
        """
        if payload.__class__ is not bytes:
            payload = bytes(payload)
        if b"\n" in payload:
            raise ValueError("payload contains b'\\n'; a line cannot hold a line ending")
        if self._newline == b"\n" and payload[-1:] == b"\r":
            raise ValueError("payload ends with b'\\r', which would decode as part of b'\\r\\n'")
        return payload + self._newline

    def decoder(self) -> Decoder:
        """A fresh line decoder."""
        if _c is not None and self._max <= _C_LIMIT:
            return _c.SplitDecoder(  # type: ignore[no-any-return]
                b"\n", True, self._strip, self._max,
                functools.partial(_too_long_error, "line", "a line ending", self._max), _raise_failed_again)
        return self._py_decoder()

    def _py_decoder(self) -> Decoder:
        """The pure-Python decoder (the reference the C one is tested against)."""
        return _LineDecoder(self._max, self._strip)

    def __repr__(self) -> str:
        return (
            f"LineCodec(max_frame_length={self._max}, strip_delimiter={self._strip}, "
            f"newline={self._newline!r})"
        )


class _LineDecoder(_BufferedDecoder):
    __slots__ = ("_max", "_strip")

    def __init__(self, max_frame_length: int, strip: bool) -> None:
        super().__init__()
        self._max = max_frame_length
        self._strip = strip

    def feed(self, data: BytesLike) -> List[bytes]:
        if self._error is not None:
            self._raise_failed()
        if data.__class__ is not bytes:
            data = bytes(data)  # frames must be bytes, not views of the caller's buffer
        buf = self._buf
        if buf:
            # The delimiter is one byte, so the pending line can only end in
            # the new data: search just that, and append in place if no line
            # ends (a long line in many pieces stays linear).
            if data.find(b"\n") < 0:
                buf += data
                self._check_unterminated(buf, 0)
                return []
            data = b"".join((buf, data))
            buf.clear()
        maxlen = self._max
        frames: List[bytes] = []
        append = frames.append
        find = data.find
        pos = 0
        i = find(b"\n")
        # Two copies of the loop so the per-line work has no strip test.
        if self._strip:
            while i >= 0:
                j = i - 1 if i > pos and data[i - 1] == 13 else i
                if j - pos > maxlen:
                    self._too_long(j - pos, frames)
                append(data[pos:j])
                pos = i + 1
                i = find(b"\n", pos)
        else:
            while i >= 0:
                j = i - 1 if i > pos and data[i - 1] == 13 else i
                if j - pos > maxlen:
                    self._too_long(j - pos, frames)
                append(data[pos : i + 1])
                pos = i + 1
                i = find(b"\n", pos)
        if pos < len(data):
            self._check_unterminated(data, pos, frames)
            buf += memoryview(data)[pos:] if pos else data
        return frames

    def _check_unterminated(self, data: BytesLike, pos: int, frames: Optional[List[bytes]] = None) -> None:
        # Without a b"\n", the line is already too long once more than
        # max_frame_length bytes are held, unless exactly one more is held and
        # it is b"\r" (the line may still end right there with b"\r\n").
        rem = len(data) - pos
        maxlen = self._max
        if rem > maxlen and (rem > maxlen + 1 or data[-1] != 13):
            self._too_long(rem, frames, unterminated=True)

    def _too_long(self, length: int, frames: Optional[List[bytes]], unterminated: bool = False) -> NoReturn:
        self._fail(_too_long_error("line", "a line ending", self._max, length, unterminated), frames)


def _too_long_error(frame: str, ending: str, maxlen: int, length: int, unterminated: bool,
                    frames: Optional[List[bytes]] = None) -> FrameTooLongError:
    """The error for a ``frame`` ("line", "frame") over ``maxlen`` that ends
    with ``ending``; both implementations of both splitting codecs use it (the
    C decoders get it bound to the first three arguments)."""
    what = f"{length}+ bytes without {ending}" if unterminated else f"{length} bytes"
    exc = FrameTooLongError(f"{frame} longer than max_frame_length={maxlen}: {what}")
    if frames:
        exc.frames = frames
    return exc


# --------------------------------------------------------------------------
# DelimiterCodec
# --------------------------------------------------------------------------


class DelimiterCodec(Codec):
    """Frames ended by a delimiter (Netty's ``DelimiterBasedFrameDecoder``).

    :param delimiters: one non-empty ``bytes`` delimiter, or a sequence of them
        (any lengths). When several delimiters occur, the one that gives the
        shortest frame (the earliest) wins, as in Netty; when two start at the
        same byte (``b"\\r"`` and ``b"\\r\\n"``), the longer wins. A decoder
        waits for more bytes rather than guess when a longer delimiter could
        still complete, so the result never depends on how the stream is split.
    :param max_frame_length: longest accepted frame, not counting its
        delimiter. A longer frame raises :class:`FrameTooLongError` as soon as
        the buffered bytes prove it (at most ``max_frame_length`` plus the
        longest delimiter's length are ever held for one frame).
    :param strip_delimiter: ``True`` (default) returns frames without their
        delimiter; ``False`` keeps it.
    :param encode_delimiter: what :meth:`encode` appends; default: the first
        of ``delimiters``. It must be one of ``delimiters``.
    """

    __slots__ = ("_delims", "_max", "_strip", "_enc", "_enc_conflict")

    def __init__(
        self,
        delimiters: Union[bytes, Iterable[bytes]],
        *,
        max_frame_length: int = DEFAULT_MAX_FRAME_LENGTH,
        strip_delimiter: bool = True,
        encode_delimiter: Optional[bytes] = None,
    ) -> None:
        self._delims = _check_delimiters(delimiters)
        self._max = _check_max(max_frame_length)
        self._strip = _check_bool("strip_delimiter", strip_delimiter)
        if encode_delimiter is None:
            encode_delimiter = self._delims[0]
        elif not isinstance(encode_delimiter, (bytes, bytearray)) or encode_delimiter not in self._delims:
            raise ValueError(
                f"encode_delimiter must be one of the delimiters {list(self._delims)!r}, "
                f"got {encode_delimiter!r}"
            )
        self._enc = bytes(encode_delimiter)
        # A delimiter that holds the encode delimiter followed by more bytes
        # (b"\r" inside b"\r\n\r\n") could be completed by the *next* frame's
        # payload, so no check of one payload can make encode() safe; encode()
        # refuses then (decoding such a set is still fine).
        self._enc_conflict: Optional[bytes] = None
        for d in self._delims:
            k = d.find(encode_delimiter)
            while k >= 0:
                if k + len(encode_delimiter) < len(d):
                    self._enc_conflict = d
                    break
                k = d.find(encode_delimiter, k + 1)

    @property
    def delimiters(self) -> Tuple[bytes, ...]:
        """The delimiters, in the order given."""
        return self._delims

    @property
    def max_frame_length(self) -> int:
        return self._max

    @property
    def strip_delimiter(self) -> bool:
        return self._strip

    @property
    def encode_delimiter(self) -> bytes:
        return self._enc

    def encode(self, payload: BytesLike) -> bytes:
        """``payload`` plus :attr:`encode_delimiter`.

        Raises :class:`ValueError` when the result would not decode back to
        ``payload``: the payload contains a delimiter, or its end and the
        delimiter form an earlier one, or the encode delimiter begins a longer
        delimiter.
        """
        if self._enc_conflict is not None:
            raise ValueError(
                f"encode_delimiter {self._enc!r} is followed by more bytes inside delimiter "
                f"{self._enc_conflict!r}, so encoded frames would be ambiguous; "
                "choose another encode_delimiter"
            )
        frame = b"".join((payload, self._enc))
        n = len(frame) - len(self._enc)
        for d in self._delims:
            if -1 < frame.find(d) < n:
                raise ValueError(f"payload contains delimiter {d!r} (or ends with its start)")
        return frame

    def decoder(self) -> Decoder:
        """A fresh delimiter decoder."""
        if _c is not None and len(self._delims) == 1 and self._max <= _C_LIMIT:
            return _c.SplitDecoder(  # type: ignore[no-any-return]
                self._delims[0], False, self._strip, self._max,
                functools.partial(_too_long_error, "frame", "a delimiter", self._max), _raise_failed_again)
        return self._py_decoder()

    def _py_decoder(self) -> Decoder:
        """The pure-Python decoder (the reference the C one is tested against)."""
        return _DelimiterDecoder(self._delims, self._max, self._strip)

    def __repr__(self) -> str:
        return (
            f"DelimiterCodec({list(self._delims)!r}, max_frame_length={self._max}, "
            f"strip_delimiter={self._strip}, encode_delimiter={self._enc!r})"
        )


def _check_delimiters(delimiters: object) -> Tuple[bytes, ...]:
    accepted = "a non-empty bytes, or a non-empty sequence of non-empty bytes"
    if isinstance(delimiters, (bytes, bytearray, memoryview)):
        items = [bytes(delimiters)]
    elif isinstance(delimiters, str):
        raise ValueError(f"delimiters must be {accepted} (not str), got {delimiters!r}")
    else:
        try:
            items = list(delimiters)  # type: ignore[call-overload]
        except TypeError:
            raise ValueError(f"delimiters must be {accepted}, got {delimiters!r}") from None
    out: List[bytes] = []
    for d in items:
        if not isinstance(d, (bytes, bytearray, memoryview)) or not len(d):
            raise ValueError(f"delimiters must be {accepted}, got item {d!r}")
        d = bytes(d)
        if d not in out:
            out.append(d)
    if not out:
        raise ValueError(f"delimiters must be {accepted}, got an empty sequence")
    return tuple(out)


class _DelimiterDecoder(_BufferedDecoder):
    # _delims is sorted longest first: of several matches at one position,
    # the first one found is then the longest, which wins.
    __slots__ = ("_delims", "_maxd", "_max", "_strip", "_scan", "_lens", "_keeps", "_prefix_ends")

    def __init__(self, delimiters: Tuple[bytes, ...], max_frame_length: int, strip: bool) -> None:
        super().__init__()
        self._delims = tuple(sorted(delimiters, key=len, reverse=True))
        self._maxd = len(self._delims[0])
        self._max = max_frame_length
        self._strip = strip
        # Index in _buf before which no delimiter can start (already searched).
        self._scan = 0
        self._lens = [len(d) for d in self._delims]
        self._keeps = [0] * len(self._delims) if strip else self._lens
        # Bytes that can end a proper prefix of a delimiter: data ending with
        # any other byte cannot hold an incomplete delimiter (fast _pending).
        self._prefix_ends = frozenset(d[k] for d in self._delims for k in range(len(d) - 1))

    def feed(self, data: BytesLike) -> List[bytes]:
        if self._error is not None:
            self._raise_failed()
        buf = self._buf
        scan = 0
        if buf:
            buf += data
            scan = self._scan
            for d in self._delims:
                if buf.find(d, scan) >= 0:
                    break
            else:
                # Still no delimiter: keep appending in place (linear for a
                # long frame in many pieces) and only check the limit.
                end = len(buf)
                if end > self._max and not self._pending(buf, 0, self._max, end):
                    self._too_long(end, None, unterminated=True)
                self._scan = max(0, end - self._maxd + 1)
                return []
            data = bytes(buf)
            buf.clear()
        elif data.__class__ is not bytes:
            data = bytes(data)  # frames must be bytes, not views of the caller's buffer
        if len(self._delims) == 1:
            return self._split_one(data, scan)
        return self._split_many(data, scan)

    def _split_one(self, data: bytes, scan: int) -> List[bytes]:
        # One delimiter: no ambiguity is possible (a match found is the
        # earliest, and an incomplete one cannot start before it).
        delim = self._delims[0]
        dlen = len(delim)
        maxlen = self._max
        keep = 0 if self._strip else dlen
        frames: List[bytes] = []
        append = frames.append
        find = data.find
        pos = 0
        i = find(delim, scan)
        while i >= 0:
            if i - pos > maxlen:
                self._too_long(i - pos, frames)
            append(data[pos : i + keep])
            pos = i + dlen
            i = find(delim, pos)
        if pos < len(data):
            self._keep_tail(data, pos, frames)
        return frames

    def _split_many(self, data: bytes, scan: int) -> List[bytes]:
        delims = self._delims
        dlens = self._lens
        keeps = self._keeps
        maxd = self._maxd
        maxlen = self._max
        frames: List[bytes] = []
        append = frames.append
        find = data.find
        end = len(data)
        near_end = end - maxd
        none = end + 1  # "no further match": sorts after every real position
        pos = 0
        # nexts[k]: the next match of delims[k] at or after the position it
        # was searched from. Only a match that pos has passed is searched
        # again, so each delimiter scans the data once (a rare delimiter is
        # not searched to the end of the data for every frame). min() picks
        # the earliest match; index() the first of equal ones, which is the
        # longest delimiter since _delims is sorted longest first.
        nexts = []
        for d in delims:
            j = find(d, scan)
            nexts.append(j if j >= 0 else none)
        while True:
            best = min(nexts)
            k = nexts.index(best)
            if best < pos:
                # Overlapped by the delimiter just used (b"\n" in b"\r\n").
                j = find(delims[k], pos)
                nexts[k] = j if j >= 0 else none
                continue
            if best == none:
                break
            if best - pos > maxlen or best > near_end:
                # The latest start that would still beat this match (or,
                # past the limit, still give a valid frame): a delimiter
                # incomplete at the end of the data that starts there may win
                # once more bytes come, so wait for them rather than guess.
                lim = best if best - pos <= maxlen else pos + maxlen
                if lim > near_end and self._pending(data, pos, lim, end):
                    break
                if best - pos > maxlen:
                    self._too_long(best - pos, frames)
            append(data[pos : best + keeps[k]])
            pos = best + dlens[k]
            j = find(delims[k], pos)
            nexts[k] = j if j >= 0 else none
        if pos < end:
            self._keep_tail(data, pos, frames)
        return frames

    def _keep_tail(self, data: bytes, pos: int, frames: List[bytes]) -> None:
        end = len(data)
        rem = end - pos
        if rem > self._max and not self._pending(data, pos, pos + self._max, end):
            self._too_long(rem, frames, unterminated=True)
        self._buf += memoryview(data)[pos:] if pos else data
        # Delimiters starting before end - maxd + 1 would be complete and
        # would have been found (or were ruled out by _pending).
        self._scan = max(0, rem - self._maxd + 1)

    def _pending(self, data: BytesLike, pos: int, lim: int, end: int) -> bool:
        # Does an incomplete delimiter (a proper prefix of one, running to
        # the end of the data) start at some q in [pos, lim]? Only the last
        # maxd - 1 positions can hold one, so this is cheap.
        if end == 0 or data[end - 1] not in self._prefix_ends:
            return False
        for q in range(max(pos, end - self._maxd + 1), min(lim, end - 1) + 1):
            tail = data[q:end]
            n = end - q
            for d in self._delims:
                if len(d) > n and d.startswith(tail):
                    return True
        return False

    def _too_long(self, length: int, frames: Optional[List[bytes]], unterminated: bool = False) -> NoReturn:
        self._fail(_too_long_error("frame", "a delimiter", self._max, length, unterminated), frames)


# --------------------------------------------------------------------------
# FixedLengthCodec
# --------------------------------------------------------------------------


class FixedLengthCodec(Codec):
    """Frames of exactly ``frame_length`` bytes (Netty's ``FixedLengthFrameDecoder``).

    :param frame_length: the size of every frame (>= 1).
    :param max_frame_length: an upper bound checked against ``frame_length`` at
        construction (default: ``frame_length``). A fixed-length stream cannot
        carry an oversized frame, so decoding never raises.
    """

    __slots__ = ("_len", "_max")

    def __init__(self, frame_length: int, *, max_frame_length: Optional[int] = None) -> None:
        self._len = _check_int("frame_length", frame_length, 1)
        if max_frame_length is None:
            max_frame_length = frame_length
        self._max = _check_max(max_frame_length)
        if frame_length > max_frame_length:
            raise ValueError(
                f"frame_length ({frame_length}) must be <= max_frame_length ({max_frame_length})"
            )

    @property
    def frame_length(self) -> int:
        return self._len

    @property
    def max_frame_length(self) -> int:
        return self._max

    def encode(self, payload: BytesLike) -> bytes:
        """``payload`` itself; :class:`ValueError` unless it is ``frame_length`` long."""
        if len(payload) != self._len:
            raise ValueError(f"payload must be exactly frame_length={self._len} bytes, got {len(payload)}")
        return _as_bytes(payload)

    def decoder(self) -> Decoder:
        """A fresh fixed-length decoder."""
        return _FixedLengthDecoder(self._len)

    def __repr__(self) -> str:
        return f"FixedLengthCodec({self._len}, max_frame_length={self._max})"


class _FixedLengthDecoder(_BufferedDecoder):
    __slots__ = ("_len",)

    def __init__(self, frame_length: int) -> None:
        super().__init__()
        self._len = frame_length

    def feed(self, data: BytesLike) -> List[bytes]:
        if self._error is not None:
            self._raise_failed()
        n = self._len
        buf = self._buf
        if buf:
            if len(buf) + len(data) < n:
                buf += data
                return []
            data = b"".join((buf, data))
            buf.clear()
        elif data.__class__ is not bytes:
            data = bytes(data)  # frames must be bytes, not views of the caller's buffer
        stop = len(data) - len(data) % n
        frames = [data[i : i + n] for i in range(0, stop, n)]
        if stop < len(data):
            buf += memoryview(data)[stop:]
        return frames


# --------------------------------------------------------------------------
# LengthFieldCodec
# --------------------------------------------------------------------------

# struct formats of the length field, by size; 3 bytes has no struct code, so
# it is read as a byte and a short (faster than int.from_bytes on a slice).
_FORMATS = {1: "B", 2: "H", 4: "I", 8: "Q"}
_FIELD_LENGTHS = (1, 2, 3, 4, 8)


class LengthFieldCodec(Codec):
    """Frames announced by a length field (Netty's ``LengthFieldBasedFrameDecoder``).

    Decoding follows Netty exactly. The frame starts with
    ``length_field_offset`` bytes of anything, then the unsigned length field
    of ``length_field_length`` bytes (8-byte fields are signed, as in Netty:
    a negative one is an error). The field's value plus ``length_adjustment``
    is the number of bytes that follow the length field, so the whole frame is
    ``length_field_offset + length_field_length + value + length_adjustment``
    bytes; the decoder returns it minus its first ``initial_bytes_to_strip``
    bytes.

    :param length_field_length: 1, 2, 3, 4 or 8 bytes (default 4).
    :param length_field_offset: bytes before the length field (default 0).
    :param length_adjustment: added to the field's value to get the number of
        bytes after the length field; may be negative (e.g. ``-2`` when a
        2-byte field counts itself, Netty's third example).
    :param initial_bytes_to_strip: bytes removed from the start of each decoded
        frame. Default ``None`` means the whole header up to the end of the
        length field (``length_field_offset + length_field_length``), so that
        ``decoder().feed(encode(p)) == [p]``. Netty's default is 0 (keep it).
    :param max_frame_length: longest accepted frame, measured like Netty: the
        whole frame, header included, before stripping. A length field
        announcing more raises :class:`FrameTooLongError` on the ``feed`` that
        delivers the field, before any of the body is buffered.
    :param byteorder: ``"big"`` (network order, default) or ``"little"``.
    :param length_includes_length_field: ``True`` when the field's value also
        counts the length field itself (Netty ``LengthFieldPrepender``'s
        ``lengthIncludesLengthFieldLength``). It applies to both directions:
        decoding treats it as ``length_adjustment - length_field_length``.

    Corrupt headers raise :class:`FrameError` as soon as the field arrives: an
    adjusted length that ends the frame before the end of the length field
    (Netty's "negative adjusted length"), a negative 8-byte field, or
    ``initial_bytes_to_strip`` beyond the end of the frame.

    Differences from Netty, all deliberate: the ``initial_bytes_to_strip``
    default (above); the strip check happens when the length field arrives
    rather than once the whole frame has; and after a too-long frame the
    decoder stays failed, where Netty discards the frame and resumes (a peer
    that sends one is usually broken or hostile: close the connection).

    Encoding is the inverse of decoding: :meth:`encode` writes the length field
    then ``payload`` (the bytes after the length field), with the value
    ``len(payload) - length_adjustment`` (``+ length_field_length`` if
    ``length_includes_length_field``). That is Netty's ``LengthFieldPrepender``
    with ``lengthAdjustment = -length_adjustment``: to reproduce a
    ``LengthFieldPrepender(n, a, includes)``, use
    ``LengthFieldCodec(n, length_adjustment=-a, length_includes_length_field=includes)``.
    When ``length_field_offset > 0``, ``encode`` needs the bytes that go before
    the length field: ``encode(payload, prefix=...)``, exactly
    ``length_field_offset`` bytes long, else :class:`ValueError`.
    """

    __slots__ = (
        "_lfl",
        "_offset",
        "_adjustment",
        "_strip",
        "_max",
        "_byteorder",
        "_includes",
        "_adj",
        "_field_max",
        "_pack",
        "_c_args",
        "_c_encode",
    )

    def __init__(
        self,
        length_field_length: int = 4,
        *,
        length_field_offset: int = 0,
        length_adjustment: int = 0,
        initial_bytes_to_strip: Optional[int] = None,
        max_frame_length: int = DEFAULT_MAX_FRAME_LENGTH,
        byteorder: str = "big",
        length_includes_length_field: bool = False,
    ) -> None:
        if isinstance(length_field_length, bool) or length_field_length not in _FIELD_LENGTHS:
            raise ValueError(f"length_field_length must be one of 1, 2, 3, 4, 8; got {length_field_length!r}")
        self._lfl = length_field_length
        self._offset = _check_int("length_field_offset", length_field_offset, 0)
        self._adjustment = _check_int("length_adjustment", length_adjustment)
        header = length_field_offset + length_field_length
        if initial_bytes_to_strip is None:
            initial_bytes_to_strip = header
        self._strip = _check_int("initial_bytes_to_strip", initial_bytes_to_strip, 0)
        self._max = _check_max(max_frame_length)
        if byteorder not in ("big", "little"):
            raise ValueError(f"byteorder must be 'big' or 'little', got {byteorder!r}")
        self._byteorder = byteorder
        self._includes = _check_bool("length_includes_length_field", length_includes_length_field)
        if header > max_frame_length:
            # As Netty: even an empty frame would be too long.
            raise ValueError(
                f"max_frame_length ({max_frame_length}) must be >= length_field_offset + "
                f"length_field_length ({header})"
            )
        # Effective adjustment: field value + _adj = bytes after the field.
        self._adj = length_adjustment - (length_field_length if length_includes_length_field else 0)
        # Largest encodable field value (8-byte fields are signed in Netty).
        self._field_max = (1 << 63) - 1 if length_field_length == 8 else (1 << (8 * length_field_length)) - 1
        order = ">" if byteorder == "big" else "<"
        if length_field_length == 3:
            self._pack = None
        else:
            self._pack = struct.Struct(order + _FORMATS[length_field_length]).pack
        self._c_args = _c_length_field_args(self)
        self._c_encode = _c is not None and not length_field_offset and abs(self._adj) <= _C_LIMIT

    @property
    def length_field_length(self) -> int:
        return self._lfl

    @property
    def length_field_offset(self) -> int:
        return self._offset

    @property
    def length_adjustment(self) -> int:
        return self._adjustment

    @property
    def initial_bytes_to_strip(self) -> int:
        return self._strip

    @property
    def max_frame_length(self) -> int:
        return self._max

    @property
    def byteorder(self) -> str:
        return self._byteorder

    @property
    def length_includes_length_field(self) -> bool:
        return self._includes

    def encode(self, payload: BytesLike, prefix: Optional[BytesLike] = None) -> bytes:
        """``prefix`` + length field + ``payload``.

        ``prefix`` is required, and must be ``length_field_offset`` bytes, when
        ``length_field_offset > 0``; it must be omitted (or empty) otherwise.
        Raises :class:`ValueError` when the length does not fit the field or
        is negative. ``max_frame_length`` is not enforced here: it limits what
        a peer may send, and the two directions of a protocol may differ.
        """
        value = len(payload) - self._adj
        if not 0 <= value <= self._field_max:
            raise ValueError(
                f"length field value {value} (payload of {len(payload)} bytes) does not fit "
                f"a {self._lfl}-byte length field (0..{self._field_max})"
            )
        pack = self._pack
        field = pack(value) if pack is not None else value.to_bytes(3, self._byteorder)  # type: ignore[arg-type]
        if self._offset:
            if prefix is None or len(prefix) != self._offset:
                got = "none" if prefix is None else f"{len(prefix)} bytes"
                raise ValueError(
                    f"prefix must be the length_field_offset={self._offset} bytes before the "
                    f"length field, got {got}"
                )
            return b"".join((prefix, field, payload))
        if prefix:
            raise ValueError("prefix must be empty when length_field_offset is 0")
        return field + payload

    def encode_many(self, payloads: List[BytesLike]) -> bytes:
        """Like :meth:`Codec.encode_many`; one pass of header packing and one join."""
        if self._c_encode:
            out = _c.lf_encode_many(payloads, self._lfl, self._byteorder == "big", self._adj)  # type: ignore[union-attr]
            if out is not None:
                return out  # type: ignore[no-any-return]
            # None: an item the C code does not take, or a length that does not
            # fit; the Python code below encodes it or raises the right error.
        pack = self._pack
        if self._offset or pack is None:
            return super().encode_many(payloads)
        if not self._adj:
            # The common shape: the field is the payload length. A comprehension is
            # the cheapest loop; struct refuses a length the field cannot hold.
            try:
                return b"".join([pack(len(p)) + p for p in payloads])
            except struct.error:
                pass  # the loop below raises the descriptive error
        adj = self._adj
        field_max = self._field_max
        parts: List[BytesLike] = []
        append = parts.append
        for payload in payloads:
            value = len(payload) - adj
            if not 0 <= value <= field_max:
                self.encode(payload)  # raises the descriptive error
            append(pack(value))
            append(payload)
        return b"".join(parts)

    def decoder(self) -> Decoder:
        """A fresh length-field decoder."""
        if self._c_args is not None:
            return _c.LengthFieldDecoder(*self._c_args)  # type: ignore[union-attr,no-any-return]
        return self._py_decoder()

    def _py_decoder(self) -> Decoder:
        """The pure-Python decoder (the reference the C one is tested against)."""
        if self._lfl == 3:
            return _LengthField24Decoder(self)
        return _LengthFieldDecoder(self)

    def __repr__(self) -> str:
        return (
            f"LengthFieldCodec({self._lfl}, length_field_offset={self._offset}, "
            f"length_adjustment={self._adjustment}, initial_bytes_to_strip={self._strip}, "
            f"max_frame_length={self._max}, byteorder={self._byteorder!r}, "
            f"length_includes_length_field={self._includes})"
        )


class _LengthFieldDecoder(_BufferedDecoder):
    __slots__ = ("_cfg", "_hend", "_adj", "_max", "_strip", "_need", "_eight", "_big")

    def __init__(self, codec: LengthFieldCodec) -> None:
        super().__init__()
        lfl = codec.length_field_length
        order = ">" if codec.byteorder == "big" else "<"
        fmt = order + ("BH" if order == ">" else "HB") if lfl == 3 else order + _FORMATS[lfl]
        off = codec.length_field_offset
        self._hend = off + lfl  # end of the length field
        # frame length = field value + _adj (Netty: + adjustment + field end)
        self._adj = codec._adj + self._hend
        self._max = codec.max_frame_length
        self._strip = codec.initial_bytes_to_strip
        # One test catches both corruptions: a frame ending inside the header,
        # and a strip beyond the frame.
        minlen = max(self._hend, self._strip)
        self._cfg = (
            struct.Struct(fmt).unpack_from,
            off,
            self._hend,
            self._adj,
            self._max,
            minlen,
            self._strip,
        )
        # Bytes the buffered tail must reach before another frame may
        # complete: the header end, or the whole frame once its field is read.
        self._need = self._hend
        self._eight = lfl == 8
        # 3-byte fields: '>BH' yields (high byte, low short), '<HB' yields
        # (low short, high byte).
        self._big = order == ">"

    def feed(self, data: BytesLike) -> List[bytes]:
        if self._error is not None:
            self._raise_failed()
        buf = self._buf
        if buf:
            if len(buf) + len(data) < self._need:
                buf += data  # a big frame in pieces: append in place, stay linear
                return []
            data = b"".join((buf, data))  # one copy, and bytes to slice frames from
            buf.clear()
        elif data.__class__ is not bytes:
            data = bytes(data)
        # One attribute load and a tuple unpack: cheaper than seven loads,
        # which matters when a call carries a single small frame.
        unpack, off, hend, adj, maxlen, minlen, strip = self._cfg
        frames: List[bytes] = []
        append = frames.append
        end = len(data)
        pos = 0
        # The hot loop: one unpack, two compares, one slice per frame.
        while pos + hend <= end:
            flen = unpack(data, pos + off)[0] + adj
            if flen > maxlen or flen < minlen:
                self._bad_length(flen, frames)
            stop = pos + flen
            if stop > end:
                self._need = flen
                break
            append(data[pos + strip : stop])
            pos = stop
        else:
            self._need = hend
        if pos < end:
            buf += memoryview(data)[pos:] if pos else data
        return frames

    def _bad_length(self, flen: int, frames: List[bytes]) -> NoReturn:
        self._fail(_length_error(self._adj, self._max, self._hend, self._strip, self._eight,
                                 flen - self._adj), frames)


def _length_error(adj: int, maxlen: int, hend: int, strip: int, eight: bool, value: int,
                  frames: Optional[List[bytes]] = None) -> FrameError:
    """The error for a length field of ``value`` that the decoder refuses (both
    implementations). ``adj`` turns the value into the frame length."""
    flen = value + adj
    if eight and value >= 1 << 63:
        # Netty reads 8-byte fields as a signed long.
        exc = FrameError(f"negative length field: {value - (1 << 64)}")
    elif flen > maxlen:
        exc = FrameTooLongError(f"frame length {flen} (length field {value}) exceeds max_frame_length={maxlen}")
    elif flen < hend:
        exc = FrameError(
            f"adjusted frame length {flen} (length field {value}) is less than the end "
            f"of the length field ({hend})"
        )
    else:
        exc = FrameError(
            f"adjusted frame length {flen} (length field {value}) is less than "
            f"initial_bytes_to_strip ({strip})"
        )
    if frames:
        exc.frames = frames
    return exc


def _c_length_field_args(codec: LengthFieldCodec) -> Optional[Tuple[Any, ...]]:
    """The C decoder's constructor arguments for ``codec``, or None for the Python one."""
    if _c is None:
        return None
    lfl = codec.length_field_length
    hend = codec.length_field_offset + lfl
    adj = codec._adj + hend  # frame length = field value + adj
    maxlen = codec.max_frame_length
    strip = codec.initial_bytes_to_strip
    if maxlen > _C_LIMIT or abs(adj) > _C_LIMIT or strip > _C_LIMIT or hend > _C_LIMIT:
        return None
    # A field value is accepted when the frame ends at or after the end of the
    # field and the strip, and within max_frame_length; 8-byte fields are signed.
    field_max = (1 << 63) - 1 if lfl == 8 else (1 << (8 * lfl)) - 1
    lo = max(0, max(hend, strip) - adj)
    hi = min(field_max, maxlen - adj)
    if hi < lo:
        lo, hi = 1, 0  # no value is accepted
    error_for = functools.partial(_length_error, adj, maxlen, hend, strip, lfl == 8)
    return (codec.length_field_offset, lfl, codec.byteorder == "big", adj, lo, hi, strip,
            error_for, _raise_failed_again)


class _LengthField24Decoder(_LengthFieldDecoder):
    """3-byte length fields: struct has no 24-bit code, so read byte + short."""

    __slots__ = ()

    def feed(self, data: BytesLike) -> List[bytes]:
        if self._error is not None:
            self._raise_failed()
        buf = self._buf
        if buf:
            if len(buf) + len(data) < self._need:
                buf += data  # a big frame in pieces: append in place, stay linear
                return []
            data = b"".join((buf, data))  # one copy, and bytes to slice frames from
            buf.clear()
        elif data.__class__ is not bytes:
            data = bytes(data)
        # One attribute load and a tuple unpack: cheaper than seven loads,
        # which matters when a call carries a single small frame.
        unpack, off, hend, adj, maxlen, minlen, strip = self._cfg
        big = self._big
        frames: List[bytes] = []
        append = frames.append
        end = len(data)
        pos = 0
        while pos + hend <= end:
            a, b = unpack(data, pos + off)
            flen = ((a << 16 | b) if big else (b << 16 | a)) + adj
            if flen > maxlen or flen < minlen:
                self._bad_length(flen, frames)
            stop = pos + flen
            if stop > end:
                self._need = flen
                break
            append(data[pos + strip : stop])
            pos = stop
        else:
            self._need = hend
        if pos < end:
            buf += memoryview(data)[pos:] if pos else data
        return frames


if _c is not None:
    Decoder.register(_c.LengthFieldDecoder)
    Decoder.register(_c.SplitDecoder)
