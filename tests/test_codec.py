"""Tests of netreactor.codec: round trips, split independence, errors, arguments."""

from __future__ import annotations

import pathlib
import re
import struct
from typing import List, Optional, Sequence, Tuple

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from netreactor.codec import (
    DEFAULT_MAX_FRAME_LENGTH,
    Codec,
    Decoder,
    DelimiterCodec,
    FixedLengthCodec,
    FrameError,
    FrameTooLongError,
    LengthFieldCodec,
    LineCodec,
)

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

DOCS = pathlib.Path(__file__).resolve().parent.parent / "docs" / "codecs.md"


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------


def split_at(data: bytes, cuts: Sequence[int]) -> List[bytes]:
    """``data`` cut at the given offsets (taken modulo len+1, sorted)."""
    points = sorted({c % (len(data) + 1) for c in cuts})
    out, prev = [], 0
    for p in points:
        out.append(data[prev:p])
        prev = p
    out.append(data[prev:])
    return out


def feed_all(decoder: Decoder, chunks: Sequence[bytes]) -> Tuple[List[bytes], Optional[FrameError]]:
    """Feed every chunk; return all frames, and the FrameError if one was raised."""
    frames: List[bytes] = []
    for chunk in chunks:
        try:
            frames += decoder.feed(chunk)
        except FrameError as exc:
            frames += exc.frames
            return frames, exc
    return frames, None


def outcome(decoder: Decoder, chunks: Sequence[bytes]):
    frames, err = feed_all(decoder, chunks)
    return frames, type(err).__name__ if err else None, (None if err else decoder.buffered)


def byte_by_byte(data: bytes) -> List[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


cuts_st = st.lists(st.integers(min_value=0, max_value=1 << 16), max_size=12)


def all_codecs() -> List[Codec]:
    return [
        LineCodec(),
        LineCodec(newline=b"\n"),
        DelimiterCodec(b"\x00"),
        DelimiterCodec([b"END", b"\x00\x00"]),
        FixedLengthCodec(7),
        LengthFieldCodec(),
        LengthFieldCodec(1, byteorder="little"),
        LengthFieldCodec(2),
        LengthFieldCodec(3, byteorder="little"),
        LengthFieldCodec(8),
        LengthFieldCodec(2, length_adjustment=-2, length_includes_length_field=False),
        LengthFieldCodec(2, length_includes_length_field=True),
        LengthFieldCodec(4, length_adjustment=3),
    ]


def payload_for(codec: Codec, raw: bytes) -> bytes:
    """Turn arbitrary bytes into a payload the codec can encode."""
    if isinstance(codec, FixedLengthCodec):
        return (raw + b"\xaa" * codec.frame_length)[: codec.frame_length]
    if isinstance(codec, LineCodec):
        return raw.replace(b"\n", b"").replace(b"\r", b"")
    if isinstance(codec, DelimiterCodec):
        return raw.replace(b"\x00", b"").replace(b"E", b"")
    if isinstance(codec, LengthFieldCodec) and codec.length_adjustment > 0:
        return raw + b"h" * codec.length_adjustment  # at least the extra header
    return raw


# --------------------------------------------------------------------------
# round trips under random splits (every codec)
# --------------------------------------------------------------------------


@pytest.mark.parametrize("codec", all_codecs(), ids=repr)
@FAST
@given(raws=st.lists(st.binary(max_size=80), max_size=25), cuts=cuts_st)
def test_round_trip_random_splits(codec: Codec, raws: List[bytes], cuts: List[int]) -> None:
    payloads = [payload_for(codec, r) for r in raws]
    stream = b"".join(codec.encode(p) for p in payloads)
    frames, err = feed_all(codec.decoder(), split_at(stream, cuts))
    assert err is None
    assert frames == payloads


@pytest.mark.parametrize("codec", all_codecs(), ids=repr)
def test_round_trip_byte_by_byte_and_one_call(codec: Codec) -> None:
    payloads = [payload_for(codec, bytes([65 + i % 26]) * (i % 37)) for i in range(200)]
    stream = b"".join(map(codec.encode, payloads))
    dec = codec.decoder()
    got: List[bytes] = []
    for piece in byte_by_byte(stream):
        got += dec.feed(piece)
    assert got == payloads
    assert dec.buffered == 0
    assert codec.decoder().feed(stream) == payloads


@pytest.mark.parametrize("codec", all_codecs(), ids=repr)
def test_thousands_of_frames_in_one_feed(codec: Codec) -> None:
    payloads = [payload_for(codec, b"%05d-payload" % i) for i in range(5000)]
    stream = b"".join(map(codec.encode, payloads))
    dec = codec.decoder()
    assert dec.feed(stream + stream[:3]) == payloads
    assert dec.buffered == 3
    assert dec.feed(stream[3:]) == payloads


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_feed_accepts_bytes_like_and_returns_bytes(kind) -> None:
    for codec in all_codecs():
        payloads = [payload_for(codec, b"abc"), payload_for(codec, b"defgh")]
        stream = b"".join(map(codec.encode, payloads))
        dec = codec.decoder()
        frames = dec.feed(kind(stream[:5])) + dec.feed(kind(stream[5:]))
        assert frames == payloads
        assert all(type(f) is bytes for f in frames), codec


def test_feed_empty() -> None:
    for codec in all_codecs():
        dec = codec.decoder()
        assert dec.feed(b"") == []
        assert dec.buffered == 0


def test_decoders_are_independent() -> None:
    codec = LengthFieldCodec(2)
    a, b = codec.decoder(), codec.decoder()
    frame = codec.encode(b"hello")
    assert a.feed(frame[:3]) == []
    assert b.feed(frame) == [b"hello"]
    assert a.feed(frame[3:]) == [b"hello"]


# --------------------------------------------------------------------------
# LengthFieldCodec: Netty's seven javadoc examples
# --------------------------------------------------------------------------

HELLO = b"HELLO, WORLD"


def netty(
    offset: int, length: int, adjustment: int, strip: int, max_frame_length: int = 1 << 16
) -> LengthFieldCodec:
    return LengthFieldCodec(
        length,
        length_field_offset=offset,
        length_adjustment=adjustment,
        initial_bytes_to_strip=strip,
        max_frame_length=max_frame_length,
    )


NETTY_EXAMPLES = [
    # (name, codec, before, after)
    ("1: 2-byte field at 0, keep header", netty(0, 2, 0, 0), b"\x00\x0c" + HELLO, b"\x00\x0c" + HELLO),
    ("2: 2-byte field at 0, strip header", netty(0, 2, 0, 2), b"\x00\x0c" + HELLO, HELLO),
    ("3: length counts whole message", netty(0, 2, -2, 0), b"\x00\x0e" + HELLO, b"\x00\x0e" + HELLO),
    (
        "4: 3-byte field after a 2-byte header",
        netty(2, 3, 0, 0),
        b"\xca\xfe" + b"\x00\x00\x0c" + HELLO,
        b"\xca\xfe" + b"\x00\x00\x0c" + HELLO,
    ),
    (
        "5: 3-byte field before a 2-byte header",
        netty(0, 3, 2, 0),
        b"\x00\x00\x0c" + b"\xca\xfe" + HELLO,
        b"\x00\x00\x0c" + b"\xca\xfe" + HELLO,
    ),
    (
        "6: HDR1 LEN HDR2, strip HDR1 and LEN",
        netty(1, 2, 1, 3),
        b"\xca" + b"\x00\x0c" + b"\xfe" + HELLO,
        b"\xfe" + HELLO,
    ),
    (
        "7: HDR1 LEN HDR2, length counts whole message",
        netty(1, 2, -3, 3),
        b"\xca" + b"\x00\x10" + b"\xfe" + HELLO,
        b"\xfe" + HELLO,
    ),
]


@pytest.mark.parametrize("name,codec,before,after", NETTY_EXAMPLES, ids=[e[0] for e in NETTY_EXAMPLES])
def test_netty_javadoc_examples(name: str, codec: LengthFieldCodec, before: bytes, after: bytes) -> None:
    assert codec.decoder().feed(before) == [after]
    # Any split, and several in a row with a partial one left over.
    assert feed_all(codec.decoder(), byte_by_byte(before))[0] == [after]
    dec = codec.decoder()
    assert dec.feed(before * 3 + before[:-1]) == [after] * 3
    assert dec.buffered == len(before) - 1
    assert dec.feed(before[-1:]) == [after]


def test_netty_examples_round_trip_with_encode() -> None:
    # The encoder is the decoder's inverse: encode(payload after the length
    # field, prefix=bytes before it) rebuilds each example's input.
    assert netty(0, 2, 0, 0).encode(HELLO) == b"\x00\x0c" + HELLO
    assert netty(0, 2, -2, 0).encode(HELLO) == b"\x00\x0e" + HELLO
    assert netty(2, 3, 0, 0).encode(HELLO, prefix=b"\xca\xfe") == b"\xca\xfe\x00\x00\x0c" + HELLO
    assert netty(0, 3, 2, 0).encode(b"\xca\xfe" + HELLO) == b"\x00\x00\x0c\xca\xfe" + HELLO
    assert netty(1, 2, 1, 3).encode(b"\xfe" + HELLO, prefix=b"\xca") == b"\xca\x00\x0c\xfe" + HELLO
    assert netty(1, 2, -3, 3).encode(b"\xfe" + HELLO, prefix=b"\xca") == b"\xca\x00\x10\xfe" + HELLO


def test_length_field_prepender_equivalence() -> None:
    # LengthFieldPrepender(n, a, includes) == LengthFieldCodec(n, length_adjustment=-a, ...)
    body = b"x" * 10
    assert LengthFieldCodec(2).encode(body) == b"\x00\x0a" + body
    assert LengthFieldCodec(2, length_includes_length_field=True).encode(body) == b"\x00\x0c" + body
    assert LengthFieldCodec(2, length_adjustment=-5).encode(body) == b"\x00\x0f" + body  # a = +5
    assert (
        LengthFieldCodec(4, length_adjustment=3, length_includes_length_field=True).encode(body)
        == struct.pack(">I", 10 - 3 + 4) + body
    )
    assert LengthFieldCodec(3).encode(body) == b"\x00\x00\x0a" + body
    assert LengthFieldCodec(3, byteorder="little").encode(body) == b"\x0a\x00\x00" + body
    # includes_length_field is decoded too, so the codec round-trips.
    codec = LengthFieldCodec(2, length_includes_length_field=True)
    assert codec.decoder().feed(codec.encode(body)) == [body]


# --------------------------------------------------------------------------
# LengthFieldCodec: every field length and byte order
# --------------------------------------------------------------------------

FORMATS = {1: "B", 2: "H", 4: "I", 8: "Q"}


def pack_field(value: int, length: int, byteorder: str) -> bytes:
    return value.to_bytes(length, byteorder)


@pytest.mark.parametrize("length", [1, 2, 3, 4, 8])
@pytest.mark.parametrize("byteorder", ["big", "little"])
def test_each_field_length_and_byteorder(length: int, byteorder: str) -> None:
    codec = LengthFieldCodec(length, byteorder=byteorder)
    payloads = [b"", b"a", b"x" * 200, bytes(range(255))]
    stream = b"".join(pack_field(len(p), length, byteorder) + p for p in payloads)
    assert b"".join(map(codec.encode, payloads)) == stream
    assert codec.decoder().feed(stream) == payloads
    assert feed_all(codec.decoder(), byte_by_byte(stream))[0] == payloads
    if length in FORMATS:
        order = ">" if byteorder == "big" else "<"
        assert codec.encode(b"abc")[:length] == struct.pack(order + FORMATS[length], 3)


@pytest.mark.parametrize("length", [1, 2, 3])
def test_encode_rejects_length_not_fitting_the_field(length: int) -> None:
    codec = LengthFieldCodec(length, max_frame_length=1 << 30)
    biggest = (1 << (8 * length)) - 1
    if length < 3:
        assert len(codec.encode(b"x" * biggest)) == biggest + length
    with pytest.raises(ValueError, match="does not fit"):
        codec.encode(b"x" * (biggest + 1))


def test_encode_rejects_negative_length() -> None:
    with pytest.raises(ValueError, match="does not fit"):
        LengthFieldCodec(2, length_adjustment=5).encode(b"abc")


def test_encode_with_offset_needs_prefix() -> None:
    codec = LengthFieldCodec(2, length_field_offset=3)
    with pytest.raises(ValueError, match="prefix"):
        codec.encode(b"abc")
    with pytest.raises(ValueError, match="prefix"):
        codec.encode(b"abc", prefix=b"12")
    assert codec.encode(b"abc", prefix=b"123") == b"123\x00\x03abc"
    assert codec.decoder().feed(b"123\x00\x03abc") == [b"abc"]
    with pytest.raises(ValueError, match="prefix"):
        LengthFieldCodec(2).encode(b"abc", prefix=b"1")
    assert LengthFieldCodec(2).encode(b"abc", prefix=b"") == b"\x00\x03abc"


@pytest.mark.parametrize("length", [1, 2, 3, 4, 8])
@pytest.mark.parametrize("byteorder", ["big", "little"])
@FAST
@given(
    offset=st.integers(0, 3),
    adjustment=st.integers(-6, 6),
    strip=st.integers(0, 12),
    max_frame_length=st.integers(12, 120),
    stream=st.binary(max_size=300),
    cuts=cuts_st,
)
def test_length_field_matches_reference_for_any_bytes(
    length, byteorder, offset, adjustment, strip, max_frame_length, stream, cuts
) -> None:
    """Arbitrary (mostly corrupt) input: same frames and same error as a
    straightforward whole-stream parser, whatever the split."""
    codec = LengthFieldCodec(
        length,
        length_field_offset=offset,
        length_adjustment=adjustment,
        initial_bytes_to_strip=strip,
        max_frame_length=max_frame_length,
        byteorder=byteorder,
    )
    if length > 2:
        # Keep high bytes small so that valid frames occur, not only errors.
        stream = bytes(b if (i % 5) else b & 0x0F for i, b in enumerate(stream))
    expected = reference_length_field(stream, offset, length, adjustment, strip, max_frame_length, byteorder)
    assert outcome(codec.decoder(), split_at(stream, cuts)) == expected
    assert outcome(codec.decoder(), [stream]) == expected


def reference_length_field(stream, offset, length, adjustment, strip, maxlen, byteorder):
    hend = offset + length
    pos, frames = 0, []
    while len(stream) - pos >= hend:
        value = int.from_bytes(stream[pos + offset : pos + hend], byteorder, signed=(length == 8))
        if value < 0:
            return frames, "FrameError", None
        flen = value + adjustment + hend
        if flen < hend:
            return frames, "FrameError", None
        if flen > maxlen:
            return frames, "FrameTooLongError", None
        if flen < strip:
            return frames, "FrameError", None
        if len(stream) - pos < flen:
            break
        frames.append(stream[pos + strip : pos + flen])
        pos += flen
    return frames, None, len(stream) - pos


# --------------------------------------------------------------------------
# LengthFieldCodec: errors
# --------------------------------------------------------------------------


def test_oversized_header_fails_fast_before_the_body() -> None:
    codec = LengthFieldCodec(4, max_frame_length=1000)
    ok = codec.encode(b"ok")
    dec = codec.decoder()
    # The header arrives in pieces; the feed that completes it raises, with
    # nothing of the 1 MB body sent.
    assert dec.feed(ok + b"\x00\x10") == [b"ok"]
    with pytest.raises(FrameTooLongError, match="exceeds max_frame_length=1000") as info:
        dec.feed(b"\x00\x00")
    assert info.value.frames == []
    assert isinstance(info.value, FrameError) and isinstance(info.value, ValueError)
    assert dec.buffered == 0


def test_oversized_header_in_one_feed_keeps_earlier_frames() -> None:
    codec = LengthFieldCodec(2, max_frame_length=10)
    with pytest.raises(FrameTooLongError) as info:
        codec.decoder().feed(codec.encode(b"a") + codec.encode(b"bb") + b"\x00\x09")
    assert info.value.frames == [b"a", b"bb"]


def test_max_frame_length_counts_the_whole_frame_like_netty() -> None:
    # Netty compares offset + field + value + adjustment with the maximum.
    codec = LengthFieldCodec(2, length_field_offset=1, max_frame_length=10)
    assert codec.decoder().feed(b"h\x00\x07" + b"x" * 7) == [b"x" * 7]  # 10 bytes
    with pytest.raises(FrameTooLongError):
        codec.decoder().feed(b"h\x00\x08")  # 11 bytes


def test_negative_adjusted_length() -> None:
    codec = LengthFieldCodec(2, length_adjustment=-4, initial_bytes_to_strip=0)
    with pytest.raises(FrameError, match="less than the end of the length field"):
        codec.decoder().feed(b"\x00\x03")  # 3 - 4 < 0 bytes after the field
    assert codec.decoder().feed(b"\x00\x04") == [b"\x00\x04"]  # exactly the header


def test_negative_eight_byte_field() -> None:
    codec = LengthFieldCodec(8)
    with pytest.raises(FrameError, match="negative length field: -1"):
        codec.decoder().feed(b"\xff" * 8)
    # Netty reads 8-byte fields as signed, so encode stops at 2**63 - 1.
    assert LengthFieldCodec(8, length_adjustment=-((1 << 63) - 1)).encode(b"") == b"\x7f" + b"\xff" * 7
    with pytest.raises(ValueError, match="does not fit"):
        LengthFieldCodec(8, length_adjustment=-(1 << 63)).encode(b"")


def test_strip_beyond_frame() -> None:
    codec = LengthFieldCodec(2, initial_bytes_to_strip=5)
    with pytest.raises(FrameError, match="initial_bytes_to_strip"):
        codec.decoder().feed(b"\x00\x02")  # frame is 4 bytes, strip 5: raise at the header
    assert codec.decoder().feed(b"\x00\x03abc") == [b""]
    assert codec.decoder().feed(b"\x00\x04abcd") == [b"d"]


@pytest.mark.parametrize(
    "codec,bad",
    [
        (LengthFieldCodec(2, max_frame_length=5), b"\x00\x09"),
        (LengthFieldCodec(2, length_adjustment=-3), b"\x00\x01"),
        (LengthFieldCodec(2, initial_bytes_to_strip=9), b"\x00\x01"),
        (LineCodec(max_frame_length=3), b"abcdef"),
        (DelimiterCodec(b"|", max_frame_length=3), b"abcdef"),
    ],
    ids=repr,
)
def test_failed_decoder_stays_failed(codec: Codec, bad: bytes) -> None:
    dec = codec.decoder()
    with pytest.raises(FrameError) as first:
        dec.feed(bad)
    for data in (b"", b"\x00\x01x", b"ok\n"):
        with pytest.raises(FrameError, match="failed earlier") as again:
            dec.feed(data)
        assert again.value.__cause__ is first.value
    assert dec.buffered == 0
    # A new decoder from the same codec is fine.
    assert codec.decoder().feed(b"") == []


# --------------------------------------------------------------------------
# LineCodec
# --------------------------------------------------------------------------


def test_line_basic() -> None:
    dec = LineCodec().decoder()
    assert dec.feed(b"one\r\ntwo\nthree\r") == [b"one", b"two"]
    assert dec.feed(b"\n\n\r\nx") == [b"three", b"", b""]
    assert dec.buffered == 1
    # A lone b"\r" inside a line is content.
    assert LineCodec().decoder().feed(b"a\rb\n") == [b"a\rb"]


def test_line_keep_delimiter() -> None:
    dec = LineCodec(strip_delimiter=False).decoder()
    assert dec.feed(b"one\r\ntwo\n\n") == [b"one\r\n", b"two\n", b"\n"]
    assert feed_all(dec, byte_by_byte(b"a\r\nb\n"))[0] == [b"a\r\n", b"b\n"]


def test_line_encode() -> None:
    assert LineCodec().encode(b"hi") == b"hi\r\n"
    assert LineCodec(newline=b"\n").encode(b"hi") == b"hi\n"
    assert LineCodec().encode(b"a\r") == b"a\r\r\n"
    with pytest.raises(ValueError, match="contains"):
        LineCodec().encode(b"a\nb")
    with pytest.raises(ValueError, match="ends with"):
        LineCodec(newline=b"\n").encode(b"a\r")


def test_line_max_length_is_content_without_ending() -> None:
    codec = LineCodec(max_frame_length=4)
    assert codec.decoder().feed(b"abcd\r\nabcd\n") == [b"abcd", b"abcd"]
    with pytest.raises(FrameTooLongError):
        codec.decoder().feed(b"abcde\n")
    with pytest.raises(FrameTooLongError):
        codec.decoder().feed(b"abcde\r\n")


def test_line_too_long_fails_fast_without_newline() -> None:
    dec = LineCodec(max_frame_length=4).decoder()
    assert dec.feed(b"abcd") == []
    # Five bytes ending in b"\r": the line may still be b"abcd\r\n".
    assert dec.feed(b"\r") == []
    with pytest.raises(FrameTooLongError):
        dec.feed(b"x")
    dec = LineCodec(max_frame_length=4).decoder()
    with pytest.raises(FrameTooLongError):
        dec.feed(b"abcde")  # no newline needed to know


@FAST
@given(
    stream=st.lists(st.sampled_from([b"a", b"b", b"\r", b"\n", b"\r\n", b"xyz"]), max_size=60).map(b"".join),
    max_frame_length=st.integers(1, 8),
    strip=st.booleans(),
    cuts=cuts_st,
)
def test_line_matches_reference(stream, max_frame_length, strip, cuts) -> None:
    codec = LineCodec(max_frame_length=max_frame_length, strip_delimiter=strip)
    expected = reference_lines(stream + b"\x00" * 2, max_frame_length, strip)
    assert outcome(codec.decoder(), split_at(stream, cuts) + [b"\x00" * 2]) == expected
    assert outcome(codec.decoder(), [stream + b"\x00" * 2]) == expected


def reference_lines(stream: bytes, maxlen: int, strip: bool):
    frames, pos = [], 0
    while True:
        i = stream.find(b"\n", pos)
        if i < 0:
            break
        j = i - 1 if i > pos and stream[i - 1 : i] == b"\r" else i
        if j - pos > maxlen:
            return frames, "FrameTooLongError", None
        frames.append(stream[pos:j] if strip else stream[pos : i + 1])
        pos = i + 1
    if len(stream) - pos > maxlen:  # the stream ends in b"\x00": cannot become valid
        return frames, "FrameTooLongError", None
    return frames, None, len(stream) - pos


# --------------------------------------------------------------------------
# DelimiterCodec
# --------------------------------------------------------------------------


def test_delimiter_single_and_multi() -> None:
    assert DelimiterCodec(b"||").decoder().feed(b"a||b||||c") == [b"a", b"b", b""]
    codec = DelimiterCodec([b"\r\n", b"\n", b";"])
    assert codec.decoder().feed(b"a\r\nb\nc;d;;e") == [b"a", b"b", b"c", b"d", b""]
    keep = DelimiterCodec([b"\r\n", b"\n"], strip_delimiter=False)
    assert keep.decoder().feed(b"a\r\nb\n") == [b"a\r\n", b"b\n"]


def test_delimiter_shortest_frame_wins_like_netty() -> None:
    # Of several delimiters, the one giving the shortest frame (found first) wins.
    codec = DelimiterCodec([b"ABC", b"+"])
    assert codec.decoder().feed(b"xx+yyABCzz+") == [b"xx", b"yy", b"zz"]
    codec = DelimiterCodec([b"\x00", b"\n"])
    assert codec.decoder().feed(b"ab\ncd\x00ef\n") == [b"ab", b"cd", b"ef"]


def test_delimiter_longest_wins_at_same_position_whatever_the_split() -> None:
    codec = DelimiterCodec([b"\r", b"\r\n"], strip_delimiter=False)
    stream = b"a\r\nb\rc\r\n"
    expected = [b"a\r\n", b"b\r", b"c\r\n"]
    assert codec.decoder().feed(stream) == expected
    assert feed_all(codec.decoder(), byte_by_byte(stream))[0] == expected
    # After b"a\r" the decoder cannot know yet: it waits.
    dec = codec.decoder()
    assert dec.feed(b"a\r") == []
    assert dec.feed(b"x") == [b"a\r"]


def test_delimiter_earlier_incomplete_delimiter_waits() -> None:
    # b"abc" starting before the complete b"b" would give a shorter frame.
    codec = DelimiterCodec([b"b", b"abc"])
    assert codec.decoder().feed(b"zabc") == [b"z"]
    dec = codec.decoder()
    assert dec.feed(b"zab") == []
    assert dec.feed(b"c") == [b"z"]
    dec = codec.decoder()
    assert dec.feed(b"zab") == []
    assert dec.feed(b"x") == [b"za"]


def test_delimiter_too_long_fails_fast() -> None:
    dec = DelimiterCodec(b"END", max_frame_length=5).decoder()
    assert dec.feed(b"12345EN") == []  # may still be b"12345" + b"END"
    with pytest.raises(FrameTooLongError):
        dec.feed(b"x")
    dec = DelimiterCodec(b"END", max_frame_length=5).decoder()
    with pytest.raises(FrameTooLongError):
        dec.feed(b"123456")  # no delimiter can make this valid any more
    with pytest.raises(FrameTooLongError):
        DelimiterCodec(b"|", max_frame_length=5).decoder().feed(b"ok|123456|")
    # In pieces, the buffer never holds more than max + longest delimiter.
    dec = DelimiterCodec([b"|", b"<END>"], max_frame_length=100).decoder()
    with pytest.raises(FrameTooLongError):
        for _ in range(200):
            dec.feed(b"x")
            assert dec.buffered <= 100 + 4


def test_delimiter_encode() -> None:
    codec = DelimiterCodec([b"\r\n", b"\n"])
    assert codec.encode(b"hi") == b"hi\r\n"
    assert DelimiterCodec([b"\r\n", b"\n"], encode_delimiter=b"\n").encode(b"hi") == b"hi\n"
    with pytest.raises(ValueError, match="contains delimiter"):
        codec.encode(b"a\nb")
    with pytest.raises(ValueError, match="contains delimiter"):
        DelimiterCodec([b"\r\n", b"\n"], encode_delimiter=b"\n").encode(b"a\r")  # a\r\n
    with pytest.raises(ValueError, match="contains delimiter"):
        DelimiterCodec(b"aa").encode(b"xa")  # b"xaaa" splits at 1
    with pytest.raises(ValueError, match="ambiguous"):
        DelimiterCodec([b"\r", b"\r\n"]).encode(b"x")  # next payload b"\n..." would merge


@FAST
@given(
    delimiters=st.lists(
        st.lists(st.sampled_from(b"ab|"), min_size=1, max_size=3).map(bytes), min_size=1, max_size=3
    ),
    stream=st.lists(st.sampled_from([b"a", b"b", b"|", b"x", b"ab", b"xyz"]), max_size=40).map(b"".join),
    max_frame_length=st.integers(1, 8),
    strip=st.booleans(),
    cuts=cuts_st,
)
def test_delimiter_matches_reference(delimiters, stream, max_frame_length, strip, cuts) -> None:
    """Arbitrary overlapping delimiter sets and input: the frames and the error
    are those of a whole-stream reference parser, for any split."""
    codec = DelimiterCodec(delimiters, max_frame_length=max_frame_length, strip_delimiter=strip)
    end = b"\x00" * 4  # cannot start a delimiter: ends any ambiguity
    expected = reference_delimited(stream + end, codec.delimiters, max_frame_length, strip)
    assert outcome(codec.decoder(), split_at(stream, cuts) + [end]) == expected
    assert outcome(codec.decoder(), [stream + end]) == expected


def reference_delimited(stream: bytes, delimiters, maxlen: int, strip: bool):
    frames, pos = [], 0
    while True:
        found = [(stream.find(d, pos), -len(d), d) for d in delimiters]
        found = [f for f in found if f[0] >= 0]
        if not found:
            break
        i, _, d = min(found)  # earliest, then longest
        if i - pos > maxlen:
            return frames, "FrameTooLongError", None
        frames.append(stream[pos:i] if strip else stream[pos : i + len(d)])
        pos = i + len(d)
    if len(stream) - pos > maxlen:
        return frames, "FrameTooLongError", None
    return frames, None, len(stream) - pos


@FAST
@given(
    delimiters=st.lists(
        st.lists(st.sampled_from(b"ab|"), min_size=1, max_size=3).map(bytes), min_size=1, max_size=3
    ),
    raws=st.lists(st.binary(max_size=12).map(lambda b: b.translate(bytes.maketrans(b"ab|", b"xyz"))), max_size=10),
    payload_bytes=st.lists(st.sampled_from([b"a", b"b", b"|", b"c"]), max_size=6),
    cuts=cuts_st,
)
def test_delimiter_encode_is_safe_or_refuses(delimiters, raws, payload_bytes, cuts) -> None:
    """Whatever encode() accepts decodes back to the same payloads."""
    codec = DelimiterCodec(delimiters, max_frame_length=64)
    stream, sent = [], []
    for i, raw in enumerate(raws):
        payload = raw + b"".join(payload_bytes[: i % (len(payload_bytes) + 1)])
        try:
            stream.append(codec.encode(payload))
        except ValueError:
            continue
        sent.append(payload)
    frames, err = feed_all(codec.decoder(), split_at(b"".join(stream), cuts))
    assert err is None
    assert frames == sent


# --------------------------------------------------------------------------
# FixedLengthCodec
# --------------------------------------------------------------------------


def test_fixed_length() -> None:
    codec = FixedLengthCodec(3)
    dec = codec.decoder()
    assert dec.feed(b"abcdefg") == [b"abc", b"def"]
    assert dec.buffered == 1
    assert dec.feed(b"hi") == [b"ghi"]
    assert codec.encode(b"xyz") == b"xyz"
    with pytest.raises(ValueError, match="exactly frame_length=3"):
        codec.encode(b"xy")
    assert FixedLengthCodec(3).max_frame_length == 3
    assert FixedLengthCodec(3, max_frame_length=10).max_frame_length == 10


# --------------------------------------------------------------------------
# constructor arguments
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "factory,message",
    [
        (lambda: LengthFieldCodec(5), r"length_field_length must be one of 1, 2, 3, 4, 8; got 5"),
        (lambda: LengthFieldCodec(0), r"length_field_length must be one of 1, 2, 3, 4, 8"),
        (lambda: LengthFieldCodec("4"), r"length_field_length must be one of"),
        (lambda: LengthFieldCodec(True), r"length_field_length must be one of"),
        (lambda: LengthFieldCodec(length_field_offset=-1), r"length_field_offset must be an integer >= 0"),
        (lambda: LengthFieldCodec(length_field_offset=1.0), r"length_field_offset must be an integer >= 0"),
        (lambda: LengthFieldCodec(length_adjustment="2"), r"length_adjustment must be an integer"),
        (lambda: LengthFieldCodec(initial_bytes_to_strip=-1), r"initial_bytes_to_strip must be an integer >= 0"),
        (lambda: LengthFieldCodec(max_frame_length=0), r"max_frame_length must be an integer >= 1"),
        (lambda: LengthFieldCodec(max_frame_length=None), r"max_frame_length must be an integer >= 1"),
        (lambda: LengthFieldCodec(byteorder="network"), r"byteorder must be 'big' or 'little'"),
        (lambda: LengthFieldCodec(length_includes_length_field=1), r"length_includes_length_field must be True or False"),
        (lambda: LengthFieldCodec(4, length_field_offset=10, max_frame_length=13), r"max_frame_length \(13\) must be >= "),
        (lambda: LineCodec(max_frame_length=-5), r"max_frame_length must be an integer >= 1"),
        (lambda: LineCodec(newline=b"\r"), r"newline must be b'\\r\\n' or b'\\n'"),
        (lambda: LineCodec(newline="\n"), r"newline must be b'\\r\\n' or b'\\n'"),
        (lambda: LineCodec(strip_delimiter="yes"), r"strip_delimiter must be True or False"),
        (lambda: DelimiterCodec(b""), r"delimiters must be a non-empty bytes"),
        (lambda: DelimiterCodec([]), r"delimiters must be a non-empty bytes.*empty sequence"),
        (lambda: DelimiterCodec("\n"), r"delimiters must be .*not str"),
        (lambda: DelimiterCodec([b"\n", "x"]), r"delimiters must be .*got item 'x'"),
        (lambda: DelimiterCodec([b"\n", b""]), r"delimiters must be .*got item b''"),
        (lambda: DelimiterCodec(5), r"delimiters must be"),
        (lambda: DelimiterCodec(b"|", encode_delimiter=b";"), r"encode_delimiter must be one of the delimiters"),
        (lambda: DelimiterCodec(b"|", max_frame_length=0), r"max_frame_length must be an integer >= 1"),
        (lambda: FixedLengthCodec(0), r"frame_length must be an integer >= 1"),
        (lambda: FixedLengthCodec(3, max_frame_length=2), r"frame_length \(3\) must be <= max_frame_length \(2\)"),
    ],
)
def test_bad_constructor_arguments(factory, message) -> None:
    with pytest.raises(ValueError, match=message):
        factory()


def test_defaults_and_properties() -> None:
    c = LengthFieldCodec()
    assert (c.length_field_length, c.length_field_offset, c.length_adjustment) == (4, 0, 0)
    assert (c.initial_bytes_to_strip, c.max_frame_length, c.byteorder) == (4, DEFAULT_MAX_FRAME_LENGTH, "big")
    assert LengthFieldCodec(2, length_field_offset=3).initial_bytes_to_strip == 5
    assert c.length_includes_length_field is False
    line = LineCodec()
    assert (line.newline, line.strip_delimiter, line.max_frame_length) == (b"\r\n", True, DEFAULT_MAX_FRAME_LENGTH)
    d = DelimiterCodec([b"a", bytearray(b"bc"), b"a"])
    assert d.delimiters == (b"a", b"bc") and d.encode_delimiter == b"a"
    for codec in all_codecs():
        assert isinstance(codec, Codec)
        assert isinstance(codec.decoder(), Decoder)
        assert type(codec).__name__ in repr(codec)


def test_codec_base_classes_are_abstract() -> None:
    with pytest.raises(TypeError):
        Codec()  # type: ignore[abstract]
    with pytest.raises(TypeError):
        Decoder()  # type: ignore[abstract]


# --------------------------------------------------------------------------
# docs/codecs.md: every python block runs
# --------------------------------------------------------------------------


def _docs_blocks() -> List[str]:
    text = DOCS.read_text(encoding="utf-8")
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def _needs_engine(block: str) -> bool:
    return "import netreactor as nr" in block


def test_docs_examples_run() -> None:
    blocks = [b for b in _docs_blocks() if not _needs_engine(b)]
    assert len(blocks) >= 6
    namespace: dict = {"__name__": "codecs_md"}
    for i, block in enumerate(blocks):
        exec(compile(block, f"{DOCS.name}[block {i}]", "exec"), namespace)


def test_docs_handler_example_runs() -> None:
    import netreactor

    if not (hasattr(netreactor, "EventHandler") and hasattr(netreactor, "Action")):
        pytest.skip("netreactor.EventHandler / netreactor.Action not exported yet")
    blocks = [b for b in _docs_blocks() if _needs_engine(b)]
    assert blocks
    for i, block in enumerate(blocks):
        exec(compile(block, f"{DOCS.name}[engine block {i}]", "exec"), {"__name__": "codecs_md"})


@pytest.mark.parametrize("codec", [LengthFieldCodec(4), LengthFieldCodec(2, byteorder="little"),
                                   LengthFieldCodec(3), LengthFieldCodec(1), LineCodec(), FixedLengthCodec(3)])
def test_encode_many_equals_encoding_one_by_one(codec):
    payloads = [b"abc", b"xyz", b"123"] if isinstance(codec, FixedLengthCodec) else [b"", b"a", b"hello" * 50]
    assert codec.encode_many(payloads) == b"".join(codec.encode(p) for p in payloads)


def test_encode_many_refuses_what_encode_refuses():
    with pytest.raises(ValueError, match="does not fit"):
        LengthFieldCodec(1).encode_many([b"ok", b"x" * 300])


# --------------------------------------------------------------------------
# The inlined 24-bit feed is tied to the general one
# --------------------------------------------------------------------------


@pytest.mark.parametrize("byteorder", ["big", "little"])
@FAST
@given(
    offset=st.integers(0, 3),
    adjustment=st.integers(-6, 6),
    strip=st.integers(0, 12),
    max_frame_length=st.integers(12, 400),
    stream=st.binary(max_size=400),
    cuts=cuts_st,
)
def test_24_bit_feed_is_the_general_feed(byteorder, offset, adjustment, strip, max_frame_length, stream, cuts):
    """_LengthField24Decoder.feed is a hand-inlined copy of _LengthFieldDecoder.feed
    (struct has no 24-bit code): run the general loop with a 24-bit field reader
    on the same input and require the same frames, held bytes, errors and messages."""
    from netreactor.codec import _LengthField24Decoder, _LengthFieldDecoder

    codec = LengthFieldCodec(3, length_field_offset=offset, length_adjustment=adjustment,
                             initial_bytes_to_strip=strip, max_frame_length=max_frame_length,
                             byteorder=byteorder)
    stream = bytes(b if (i % 4) else b & 0x01 for i, b in enumerate(stream))  # small fields: real frames
    inlined = _LengthField24Decoder(codec)
    general = _LengthFieldDecoder(codec)
    unpack, *rest = general._cfg
    general._cfg = (lambda data, at: (int.from_bytes(data[at:at + 3], byteorder),), *rest)

    def run(decoder):
        out = []
        for chunk in split_at(stream, cuts) + [b"\x00\x00\x01x"]:
            try:
                out.append((decoder.feed(chunk), decoder.buffered))
            except FrameError as exc:
                out.append((type(exc).__name__, str(exc), exc.frames))
        return out

    assert run(inlined) == run(general)
