"""Netty's own unit-test scenarios for its frame decoders, replayed on netreactor.codec.

The inputs and expected frames follow Netty's LineBasedFrameDecoderTest,
DelimiterBasedFrameDecoderTest, LengthFieldBasedFrameDecoderTest and
LengthFieldPrependerTest. One deliberate difference: after a too-long frame,
Netty discards it and resumes with the next frame; a netreactor decoder stays
failed (the connection is expected to be closed), so those tests check the
error, the frames decoded before it, and the failed state.
"""

from __future__ import annotations

import struct

import pytest

from netreactor.codec import DelimiterCodec, FrameError, FrameTooLongError, LengthFieldCodec, LineCodec

LINE_DELIMITERS = [b"\r\n", b"\n"]  # Netty's Delimiters.lineDelimiter()


# LineBasedFrameDecoderTest ------------------------------------------------


def test_line_decode_with_strip() -> None:
    dec = LineCodec(max_frame_length=8192).decoder()
    assert dec.feed(b"first\r\nsecond\nthird") == [b"first", b"second"]
    assert dec.buffered == len(b"third")


def test_line_decode_without_strip() -> None:
    dec = LineCodec(max_frame_length=8192, strip_delimiter=False).decoder()
    assert dec.feed(b"first\r\nsecond\nthird") == [b"first\r\n", b"second\n"]


def test_line_too_long_line_1() -> None:
    dec = LineCodec(max_frame_length=16, strip_delimiter=False).decoder()
    with pytest.raises(FrameTooLongError) as info:
        dec.feed(b"12345678901234567890\r\nfirst\nsecond")
    assert info.value.frames == []
    with pytest.raises(FrameError):
        dec.feed(b"\n")


def test_line_too_long_line_2() -> None:
    dec = LineCodec(max_frame_length=16, strip_delimiter=False).decoder()
    # 17 bytes without b"\n" and not ending in b"\r": already too long. Netty
    # without failFast waits for the line ending; failing fast is the contract here.
    with pytest.raises(FrameTooLongError):
        dec.feed(b"12345678901234567")


def test_line_decode_splits_correctly() -> None:
    dec = LineCodec(max_frame_length=8192, strip_delimiter=False).decoder()
    assert dec.feed(b"line\r\n.\r\n") == [b"line\r\n", b".\r\n"]


# DelimiterBasedFrameDecoderTest -------------------------------------------


def test_delimiter_multiple_lines_stripped() -> None:
    dec = DelimiterCodec(LINE_DELIMITERS, max_frame_length=8192).decoder()
    assert dec.feed(b"TestLine\r\ng\r\n") == [b"TestLine", b"g"]


def test_delimiter_incomplete_lines_stripped() -> None:
    dec = DelimiterCodec(LINE_DELIMITERS, max_frame_length=8192).decoder()
    assert dec.feed(b"Test") == []
    assert dec.feed(b"Line\r\ng\r\n") == [b"TestLine", b"g"]


def test_delimiter_multiple_lines() -> None:
    dec = DelimiterCodec(LINE_DELIMITERS, max_frame_length=8192, strip_delimiter=False).decoder()
    assert dec.feed(b"TestLine\r\ng\r\n") == [b"TestLine\r\n", b"g\r\n"]


def test_delimiter_incomplete_lines() -> None:
    dec = DelimiterCodec(LINE_DELIMITERS, max_frame_length=8192, strip_delimiter=False).decoder()
    assert dec.feed(b"Test") == []
    assert dec.feed(b"Line\r\ng\r\n") == [b"TestLine\r\n", b"g\r\n"]


def test_delimiter_decode() -> None:
    dec = DelimiterCodec(LINE_DELIMITERS, max_frame_length=8192).decoder()
    assert dec.feed(b"first\r\nsecond\nthird") == [b"first", b"second"]


def test_delimiter_line_delimiters_match_line_codec() -> None:
    # Netty routes exactly these two delimiters to its line decoder; the
    # generic delimiter decoder gives the same frames.
    stream = b"a\r\nb\n\r\n\nc\rd\r\n" * 3 + b"tail\r"
    for strip in (True, False):
        line = LineCodec(strip_delimiter=strip).decoder()
        delim = DelimiterCodec(LINE_DELIMITERS, strip_delimiter=strip).decoder()
        assert delim.feed(stream) == line.feed(stream)
        assert delim.buffered == line.buffered


# LengthFieldBasedFrameDecoderTest -----------------------------------------


def _too_long_then_small() -> bytes:
    return struct.pack(">I", 32) + bytes(range(32)) + struct.pack(">I", 1) + b"a"


def test_length_field_discard_too_long_frame_1() -> None:
    # LengthFieldBasedFrameDecoder(16, 0, 4): Netty throws, then yields the
    # next frame (strip 0, so with its header); we throw and stay failed.
    codec = LengthFieldCodec(4, max_frame_length=16, initial_bytes_to_strip=0)
    dec = codec.decoder()
    with pytest.raises(FrameTooLongError):
        dec.feed(_too_long_then_small())
    with pytest.raises(FrameError):
        dec.feed(b"")
    # The frame Netty resumes with decodes as Netty says, on a fresh decoder.
    assert codec.decoder().feed(struct.pack(">I", 1) + b"a") == [b"\x00\x00\x00\x01a"]


def test_length_field_discard_too_long_frame_2() -> None:
    codec = LengthFieldCodec(4, max_frame_length=16, initial_bytes_to_strip=0)
    dec = codec.decoder()
    data = _too_long_then_small()
    # The first 14 bytes hold the header: the error comes on that feed.
    with pytest.raises(FrameTooLongError):
        dec.feed(data[:14])


# LengthFieldPrependerTest -------------------------------------------------
# LengthFieldPrepender(n, a, includes) == LengthFieldCodec(n, length_adjustment=-a, ...)


def test_prepend_length() -> None:
    assert LengthFieldCodec(4).encode(b"A") == b"\x00\x00\x00\x01A"


def test_prepend_length_includes_length_field_length() -> None:
    assert LengthFieldCodec(4, length_includes_length_field=True).encode(b"A") == b"\x00\x00\x00\x05A"


def test_prepend_adjusted_length() -> None:
    assert LengthFieldCodec(4, length_adjustment=1).encode(b"A") == b"\x00\x00\x00\x00A"


def test_adjusted_length_less_than_zero() -> None:
    with pytest.raises(ValueError):
        LengthFieldCodec(4, length_adjustment=2).encode(b"A")


def test_prepend_length_in_little_endian() -> None:
    assert LengthFieldCodec(4, byteorder="little").encode(b"A") == b"\x01\x00\x00\x00A"
