"""One behaviour, two implementations: the C speedups against their pure-Python originals.

Each test feeds both implementations the same random streams, splits, parameters
and corrupt input, and requires identical results after every call: the same
frames (or commands), the same bytes held, the same errors with the same
messages, the same state after an error. Run under AddressSanitizer as well
(docs/codecs.md, "The C speedups"). Skipped where the extension is not built.
"""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import weakref
from typing import Any, List

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from netreactor import codec as codec_module
from netreactor import speedups
from netreactor.codec import FrameError, LengthFieldCodec

try:
    from netreactor import _speedups as C  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - exercised where no compiler exists
    C = None

pytestmark = pytest.mark.skipif(not speedups.active(), reason=f"C speedups not in use: {speedups.describe()}")

DIFF = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def split_at(data: bytes, cuts: List[int]) -> List[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0] + points, points + [len(data)])]


def as_kind(chunk: bytes, kind: int) -> Any:
    return (chunk, bytearray(chunk), memoryview(chunk))[kind % 3]


def exc_summary(exc: BaseException) -> tuple:
    cause = exc.__cause__
    return (type(exc).__name__, str(exc), getattr(exc, "frames", None),
            None if cause is None else (type(cause).__name__, str(cause)))


def trace(decoder: Any, chunks: List[bytes], kinds: List[int]) -> list:
    """What each feed returned or raised, and the bytes held after it; then one more feed."""
    out: list = []
    for i, chunk in enumerate(chunks + [b"\x00\x00\x00\x01z"]):
        try:
            result = decoder.feed(as_kind(chunk, kinds[i % len(kinds)] if kinds else 0))
        except FrameError as exc:
            out.append(("error", exc_summary(exc)))
        else:
            assert all(type(f) is bytes for f in result)
            out.append(("frames", result, decoder.buffered))
    return out


# --------------------------------------------------------------------------- the switch

def test_the_switch_reports_the_active_path():
    assert speedups.active() is (speedups.module() is not None)
    assert speedups.describe() == "C speedups active (netreactor._speedups)"
    assert C.API_VERSION == speedups.API_VERSION


@pytest.mark.parametrize("value,described", [
    ("1", "pure Python (NETREACTOR_NO_EXTENSIONS=1)"),
    ("yes", "pure Python (NETREACTOR_NO_EXTENSIONS=yes)"),
    ("0", "C speedups active (netreactor._speedups)"),
    ("", "C speedups active (netreactor._speedups)"),
])
def test_the_environment_variable_forces_the_pure_path(value, described):
    code = ("from netreactor import speedups, codec; print(speedups.active(), speedups.describe(), "
            "type(codec.LengthFieldCodec(4).decoder()).__module__)")
    env = dict(os.environ, NETREACTOR_NO_EXTENSIONS=value)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    active = described.startswith("C ")
    assert out.split(" ", 1)[0] == str(active)
    assert described in out
    assert out.strip().endswith("netreactor._speedups" if active else "netreactor.codec")


# --------------------------------------------------------------------------- LengthFieldCodec

def both_length_field(codec: LengthFieldCodec):
    assert codec._c_args is not None
    return codec._py_decoder(), C.LengthFieldDecoder(*codec._c_args)


def frames_stream(codec: LengthFieldCodec, payloads: List[bytes], garbage: bytes, at: int) -> bytes:
    parts = []
    for p in payloads:
        try:
            parts.append(codec.encode(p, prefix=b"p" * codec.length_field_offset or None))
        except ValueError:
            pass
    stream = b"".join(parts)
    at %= len(stream) + 1
    return stream[:at] + garbage + stream[at:]


@pytest.mark.parametrize("length", [1, 2, 3, 4, 8])
@pytest.mark.parametrize("byteorder", ["big", "little"])
@DIFF
@given(offset=st.integers(0, 3), adjustment=st.integers(-6, 6), strip=st.none() | st.integers(0, 12),
       max_frame_length=st.integers(12, 300), includes=st.booleans(),
       payloads=st.lists(st.binary(max_size=60), max_size=12), garbage=st.binary(max_size=12),
       at=st.integers(0, 1000), cuts=st.lists(st.integers(0, 5000), max_size=10),
       kinds=st.lists(st.integers(0, 2), max_size=4))
def test_length_field_decoders_agree(length, byteorder, offset, adjustment, strip, max_frame_length, includes,
                                     payloads, garbage, at, cuts, kinds):
    if offset + length > max_frame_length:
        return
    codec = LengthFieldCodec(length, length_field_offset=offset, length_adjustment=adjustment,
                             initial_bytes_to_strip=strip, max_frame_length=max_frame_length,
                             byteorder=byteorder, length_includes_length_field=includes)
    stream = frames_stream(codec, payloads, garbage, at)
    py, c = both_length_field(codec)
    chunks = split_at(stream, cuts)
    assert trace(c, chunks, kinds) == trace(py, chunks, kinds)
    py, c = both_length_field(codec)
    one = [stream[i:i + 1] for i in range(len(stream))]
    assert trace(c, one, []) == trace(py, one, [])


@pytest.mark.parametrize("length", [1, 2, 3, 4, 8])
@DIFF
@given(stream=st.binary(max_size=400), cuts=st.lists(st.integers(0, 1000), max_size=8),
       max_frame_length=st.integers(8, 1 << 40), adjustment=st.integers(-(1 << 40), 1 << 40),
       strip=st.integers(0, 1 << 20))
def test_length_field_decoders_agree_on_any_bytes_and_extreme_parameters(length, stream, cuts, max_frame_length,
                                                                         adjustment, strip):
    codec = LengthFieldCodec(length, length_adjustment=adjustment, initial_bytes_to_strip=strip,
                             max_frame_length=max_frame_length)
    py, c = both_length_field(codec)
    chunks = split_at(stream, cuts)
    assert trace(c, chunks, [0]) == trace(py, chunks, [0])


def test_parameters_beyond_64_bits_take_the_python_decoder():
    codec = LengthFieldCodec(8, max_frame_length=1 << 70)
    assert codec._c_args is None
    assert type(codec.decoder()) is not C.LengthFieldDecoder
    assert codec.decoder().feed(codec.encode(b"abc")) == [b"abc"]


def test_a_failed_c_decoder_frees_its_buffer_and_chains_the_first_error():
    dec = LengthFieldCodec(4, max_frame_length=100).decoder()
    assert dec.feed(b"\x00\x00\x00\x05ab") == [] and dec.buffered == 6
    with pytest.raises(FrameError) as first:
        dec.feed(b"cde\x00\x00\x01\x00")
    assert first.value.frames == [b"abcde"] and dec.buffered == 0
    with pytest.raises(FrameError) as again:
        dec.feed(b"")
    assert again.value.__cause__ is first.value


def test_no_reference_is_kept_to_the_callers_buffers():
    dec = LengthFieldCodec(2).decoder()
    data = bytearray(b"\x00\x03abc\x00\x05xy")
    view = memoryview(data)
    frames = dec.feed(view)
    view.release()  # would raise BufferError if the decoder still held an export
    data[:] = b"\xff" * len(data)  # resizing too
    assert frames == [b"abc"] and dec.feed(b"zzz") == [b"xyzzz"]


def test_decoders_are_collected_with_their_error_cycles():
    dec = LengthFieldCodec(4, max_frame_length=10).decoder()
    with pytest.raises(FrameError) as info:
        dec.feed(b"\x00\x00\x01\x00")
    ref = weakref.ref(info.value)
    state = [dec, info]  # decoder -> error -> traceback -> this frame -> state -> decoder
    del dec, info, state
    gc.collect()
    assert ref() is None


payload_kinds = st.one_of(st.binary(max_size=300), st.binary(max_size=40).map(bytearray),
                          st.binary(max_size=40).map(memoryview))


@pytest.mark.parametrize("length", [1, 2, 3, 4, 8])
@pytest.mark.parametrize("byteorder", ["big", "little"])
@DIFF
@given(adjustment=st.integers(-300, 4), includes=st.booleans(), payloads=st.lists(payload_kinds, max_size=20))
def test_encode_many_agrees(length, byteorder, adjustment, includes, payloads):
    codec = LengthFieldCodec(length, length_adjustment=adjustment, byteorder=byteorder,
                             length_includes_length_field=includes)
    assert codec._c_encode

    def result(c_on: bool):
        codec._c_encode = c_on
        try:
            return codec.encode_many(payloads)
        except ValueError as exc:
            return type(exc).__name__, str(exc)

    assert result(True) == result(False)
    if all(type(p) is not memoryview for p in payloads):
        expected = result(False)
        assert C.lf_encode_many(payloads, length, byteorder == "big", codec._adj) in (expected, None)


def test_the_codec_module_uses_the_c_decoder():
    assert type(LengthFieldCodec(4).decoder()) is C.LengthFieldDecoder
    assert codec_module._c is C
