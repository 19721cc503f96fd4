"""One behaviour, two implementations: the C speedups against their pure-Python originals.

Each test feeds both implementations the same random streams, splits, parameters
and corrupt input, and requires identical results after every call: the same
frames (or commands), the same bytes held, the same errors with the same
messages, the same state after an error. Run under AddressSanitizer as well
(docs/codecs.md, "The C speedups"). Skipped where the extension is not built.
"""

from __future__ import annotations

import gc
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


def test_large_but_64_bit_parameters_take_the_c_decoder():
    codec = LengthFieldCodec(2, length_field_offset=1 << 41, max_frame_length=1 << 50,
                             initial_bytes_to_strip=1 << 45)
    dec = codec.decoder()
    assert type(dec) is C.LengthFieldDecoder
    assert dec.feed(b"x" * 100) == [] and dec.buffered == 100


def test_adjustments_beyond_64_bits_take_the_python_encoder():
    codec = LengthFieldCodec(4, length_adjustment=1 << 70)
    assert not codec._c_encode
    with pytest.raises(ValueError, match="does not fit"):
        codec.encode_many([b"x"])


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


# --------------------------------------------------------------------------- LineCodec, DelimiterCodec

from netreactor.codec import DelimiterCodec, LineCodec  # noqa: E402

small_alphabet = st.binary(max_size=300).map(lambda b: bytes(b"ab\r\n|"[x % 5] for x in b))


@DIFF
@given(stream=small_alphabet, max_frame_length=st.integers(1, 40), strip=st.booleans(),
       cuts=st.lists(st.integers(0, 1000), max_size=10), kinds=st.lists(st.integers(0, 2), max_size=4))
def test_line_decoders_agree(stream, max_frame_length, strip, cuts, kinds):
    codec = LineCodec(max_frame_length=max_frame_length, strip_delimiter=strip)
    c = codec.decoder()
    assert type(c) is C.SplitDecoder
    chunks = split_at(stream, cuts)
    assert trace(c, chunks, kinds) == trace(codec._py_decoder(), chunks, kinds)
    one = [stream[i:i + 1] for i in range(len(stream))]
    assert trace(codec.decoder(), one, []) == trace(codec._py_decoder(), one, [])


@DIFF
@given(delimiter=st.binary(min_size=1, max_size=4).map(lambda b: bytes(b"ab|"[x % 3] for x in b)),
       stream=st.binary(max_size=300).map(lambda b: bytes(b"abc|"[x % 4] for x in b)),
       max_frame_length=st.integers(1, 40), strip=st.booleans(),
       cuts=st.lists(st.integers(0, 1000), max_size=10), kinds=st.lists(st.integers(0, 2), max_size=4))
def test_single_delimiter_decoders_agree(delimiter, stream, max_frame_length, strip, cuts, kinds):
    codec = DelimiterCodec(delimiter, max_frame_length=max_frame_length, strip_delimiter=strip)
    c = codec.decoder()
    assert type(c) is C.SplitDecoder
    chunks = split_at(stream, cuts)
    assert trace(c, chunks, kinds) == trace(codec._py_decoder(), chunks, kinds)
    one = [stream[i:i + 1] for i in range(len(stream))]
    assert trace(codec.decoder(), one, []) == trace(codec._py_decoder(), one, [])


def test_several_delimiters_keep_the_python_decoder():
    assert type(DelimiterCodec([b"|", b"\r\n"]).decoder()) is not C.SplitDecoder


# --------------------------------------------------------------------------- RESP

from netreactor.protocols import resp  # noqa: E402
from netreactor.protocols.resp import CommandParser, ProtocolError, encode_command  # noqa: E402

resp_limits = st.fixed_dictionaries({}, optional={
    "max_bulk": st.integers(1, 50), "max_args": st.integers(1, 80), "max_command": st.integers(1, 400),
    "max_inline": st.integers(1, 40)})
resp_parts = st.one_of(
    st.lists(st.binary(max_size=60) | st.sampled_from([b"\r\n", b"*3", b"$3", b"\r", b"\n"]),
             min_size=1, max_size=70).map(lambda args: encode_command(*args)),
    st.sampled_from([b"PING\r\n", b"GET k\n", b"*0\r\n", b"*-1\r\n", b"*1\r\n$-1\r\n", b'ECHO "a b"\r\n',
                     b"*2\r\n$3\r\nGET\r\n$01\r\nk\r\n", b"*1\r\n$3\r\nGETxx", b"*+1\r\n", b"*2\r\n$3\r\nGET\r\n:1\r\n"]),
    st.binary(max_size=16),
)


def limits_tuple(limits: dict) -> tuple:
    p = CommandParser(**limits)
    return p.max_bulk, p.max_args, p.max_command, p.max_inline


def parser_trace(parser: CommandParser, chunks: List[bytes]) -> list:
    out: list = []
    for chunk in chunks + [b"PING\r\n"]:
        try:
            out.append((parser.feed(chunk), parser.buffered))
        except ProtocolError as exc:
            out.append(("error", str(exc), exc.commands))
    return out


def near_limits(draw, commands: List[list]) -> dict:
    """Limits drawn around the sizes of the commands in the stream: the boundaries
    (exactly at a limit, one over) are where a fast path goes wrong."""
    limits: dict = {}
    if not commands:
        return draw(resp_limits)
    cmd = draw(st.sampled_from(commands))
    sizes = {
        "max_args": len(cmd),
        "max_bulk": max(len(a) for a in cmd),
        "max_command": sum(len(b"$%d\r\n" % len(a)) + len(a) + 2 for a in cmd),
        "max_inline": max(len(b"$%d" % len(a)) for a in cmd + [b"x" * (len(cmd) if len(cmd) > 9 else 0)]),
    }
    for name in draw(st.sets(st.sampled_from(sorted(sizes)))):
        limits[name] = max(1, sizes[name] + draw(st.integers(-1, 1)))
    return limits


command_lists = st.lists(st.binary(max_size=60) | st.sampled_from([b"\r\n", b"*3", b"$3", b"\r", b"\n"]),
                         min_size=1, max_size=70)


@DIFF
@given(st.data(), st.lists(command_lists, max_size=6), st.lists(resp_parts, max_size=3),
       st.lists(st.integers(0, 3000), max_size=8), st.integers(0, 10))
def test_command_parsers_agree(data, commands, extra, cuts, at):
    limits = near_limits(data.draw, commands)
    parts = [encode_command(*args) for args in commands]
    parts[at % (len(parts) + 1):at % (len(parts) + 1)] = extra
    stream = b"".join(parts)
    c_parser = CommandParser(**limits)
    py_parser = CommandParser(**limits)
    py_parser._fast = resp._py_fast_path(*limits_tuple(limits))
    assert isinstance(c_parser._fast.func, type(C.resp_parse_commands))
    chunks = split_at(stream, cuts)
    assert parser_trace(c_parser, chunks) == parser_trace(py_parser, chunks)
    assert parser_trace(CommandParser(**limits), [stream]) == parser_trace(py_parser_for(limits), [stream])


def py_parser_for(limits: dict) -> CommandParser:
    parser = CommandParser(**limits)
    parser._fast = resp._py_fast_path(*limits_tuple(limits))
    return parser


@DIFF
@given(st.data(), st.lists(command_lists, max_size=6), st.lists(resp_parts, max_size=3), st.integers(0, 10))
def test_c_fast_path_takes_only_what_the_careful_parser_gives(data, commands, extra, at):
    limits = near_limits(data.draw, commands)
    parts = [encode_command(*args) for args in commands]
    parts[at % (len(parts) + 1):at % (len(parts) + 1)] = extra
    stream = b"".join(parts)
    out: list = []
    pos = C.resp_parse_commands(*limits_tuple(limits), stream, out)
    assert 0 <= pos <= len(stream)
    careful = CommandParser(**limits)
    expected: list = []
    try:
        careful._careful_parse(stream, 0, expected)
    except ProtocolError as exc:
        expected = exc.commands
    # The C path took a prefix of what the careful parser takes, and stopped
    # between commands.
    assert out == expected[:len(out)]
    assert pos == sum(len(encode_command(*cmd)) for cmd in out)
    again: list = []
    assert CommandParser(**limits)._careful_parse(stream[:pos], 0, again) == pos and again == out


def test_c_fast_path_takes_big_and_many_arguments():
    big = [b"SET", b"k", bytes(range(256)) * 400]
    many = [b"MSET"] + [b"a%d" % i for i in range(500)]
    data = encode_command(*big) + encode_command(*many)
    out: list = []
    assert C.resp_parse_commands(*limits_tuple({}), data, out) == len(data)
    assert out == [big, many]


class BytesLike:
    def __bytes__(self) -> bytes:
        return b"via __bytes__"

    def __len__(self) -> int:
        return 13


@pytest.mark.parametrize("value", [None, b"", b"abc", b"\r\n" * 10, bytearray(b"xy"), memoryview(b"mv"),
                                   BytesLike(), "text", 5, [1, 2], (3,), object()])
def test_encode_bulk_agrees(value):
    def result(f):
        try:
            return f(value)
        except Exception as exc:  # noqa: BLE001 - the point is the same exception
            return type(exc), str(exc)

    assert resp.encode_bulk is C.resp_bulk
    assert result(C.resp_bulk) == result(resp._py_encode_bulk)


@given(st.binary(max_size=5000))
def test_encode_bulk_agrees_on_any_bytes(value):
    assert C.resp_bulk(value) == resp._py_encode_bulk(value) == C.resp_bulk(bytearray(value))


# --------------------------------------------------------------------------- HTTP heads

from netreactor.protocols import http1  # noqa: E402

head_bytes = st.lists(st.sampled_from([
    b"GET", b"POST", b"get", b" ", b"  ", b"\t", b"/", b"/a?b=c", b"*", b"http://h/x", b"HTTP/1.1", b"HTTP/1.0",
    b"HTTP/2.0", b"HTTP/1.1x", b"\r\n", b"\r", b"\n", b"Host", b"host", b"X-A", b":", b": ", b"v", b"a b",
    b"\x00", b"\x7f", b"\x80\xff", b"(", b",", b"\"q\"", b"Content-Length", b"0",
]), max_size=40).map(b"".join)


def python_split(buf: bytes, pos: int, end: int):
    m = http1._REQUEST_LINE.match(buf, pos, end + 2)
    if m is None:
        return None
    try:
        headers = http1.RequestParser._header_lines(buf, m.end(), end)
    except http1.HTTPError:
        return None
    return (*m.groups(), m.end(), headers)


odd_bytes = st.binary(max_size=4) | st.sampled_from([b"\x7f", b"\x80", b"\xff", b"\x00", b"\x20", b"\x21", b"\x7e"])
def mostly(valid, odd):
    """Usually (7 in 8) one of ``valid``, else ``odd``: each part of a head is rarely the broken one."""
    return st.integers(0, 7).flatmap(lambda k: st.sampled_from(valid) if k else odd)


request_lines = st.tuples(
    mostly([b"GET", b"POST", b"M-1"], st.sampled_from([b"get", b"", b"G(T"]) | odd_bytes),
    mostly([b" "], st.sampled_from([b"  ", b"\t"])),
    mostly([b"/", b"/a?b=c", b"*", b"http://h/x"], odd_bytes.map(lambda b: b"/" + b)),
    mostly([b" "], st.sampled_from([b"  ", b""])),
    mostly([b"HTTP/1.1", b"HTTP/1.0"],
           st.sampled_from([b"HTTP/1.2", b"HTTP/2.0", b"HTTP/1.1 ", b"http/1.1", b"HTTP/1.", b"HTTP/1.9"])),
).map(b"".join)
header_lines = st.tuples(
    mostly([b"Host", b"X-A", b"a", b"Content-Length"], st.sampled_from([b"", b"X A", b"("]) | odd_bytes),
    mostly([b":", b": ", b":\t"], st.sampled_from([b" :", b"", b"::"])),
    mostly([b"v", b"a b", b"a  b\t", b"", b" x "], odd_bytes),
    mostly([b""], st.sampled_from([b" ", b"\t", b" \t"])),
).map(b"".join)


@settings(max_examples=1500, deadline=None)
@given(st.one_of(head_bytes.map(lambda b: [b]), st.tuples(request_lines, st.lists(header_lines, max_size=4)).map(
    lambda t: [t[0]] + t[1])), st.sampled_from([b"", b"\r\n"]))
def test_http_head_splitters_agree(lines, before):
    buf = before + b"\r\n".join(lines) + b"\r\n\r\n"
    pos = len(before)
    end = buf.find(b"\r\n\r\n", pos)
    assert C.http_split_head(buf, pos, end) == python_split(buf, pos, end)


def test_http_head_splitter_takes_a_common_head():
    head = (b"GET /plaintext HTTP/1.1\r\nHost: localhost:8080\r\nAccept: text/plain, */*;q=0.7 \r\n"
            b"X-Empty:\r\nConnection:\tkeep-alive\r\n\r\n")
    split = C.http_split_head(head, 0, head.find(b"\r\n\r\n"))
    assert split == (b"GET", b"/plaintext", b"1.1", 25, ((b"host", b"localhost:8080"),
                     (b"accept", b"text/plain, */*;q=0.7"), (b"x-empty", b""), (b"connection", b"keep-alive")))
    assert split == python_split(head, 0, head.find(b"\r\n\r\n"))
    assert http1._c_split_head is C.http_split_head


# --------------------------------------------------------------------------- no leaks, no crash

def _exercise() -> None:
    lf = LengthFieldCodec(2, max_frame_length=50)
    d = lf.decoder()
    d.feed(b"\x00\x03ab")
    d.feed(bytearray(b"c\x00\x01"))
    try:
        d.feed(b"x\x00\xff")
    except FrameError:
        pass
    try:
        d.feed(b"")
    except FrameError:
        pass
    lf.encode_many([b"a", bytearray(b"bc"), memoryview(b"d")])
    for codec in (LineCodec(max_frame_length=5), DelimiterCodec(b"||", max_frame_length=5)):
        d = codec.decoder()
        d.feed(b"ab\r\n||e")
        try:
            d.feed(b"f" * 20)
        except FrameError:
            pass
    p = CommandParser(max_bulk=20)
    p.feed(encode_command("SET", "k", "v") + b"*2\r\n$3\r\nGET\r\n$1")
    try:
        p.feed(b"\r\nk\r\n" + encode_command("SET", "k", b"v" * 30))
    except ProtocolError:
        pass
    C.resp_bulk(b"abc")
    C.resp_bulk(memoryview(b"abc"))
    head = b"GET / HTTP/1.1\r\nHost: h\r\nX: y\r\n\r\n"
    C.http_split_head(head, 0, head.find(b"\r\n\r\n"))


def test_no_memory_is_kept_across_many_calls():
    import tracemalloc

    for _ in range(200):
        _exercise()
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(3000):
            _exercise()
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 20_000, grown  # one leaked object per call would be > 100 KB


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300), st.integers(0, 2))
def test_any_input_to_any_c_entry_point_never_crashes(data, kind):
    value = as_kind(data, kind)
    for decoder in (LengthFieldCodec(1).decoder(), LengthFieldCodec(8, byteorder="little").decoder(),
                    LineCodec(max_frame_length=8).decoder(), DelimiterCodec(b"\x00\x01").decoder()):
        for _ in range(2):
            try:
                decoder.feed(value)
            except FrameError:
                pass
    C.resp_parse_commands(5, 3, 50, 4, data, [])
    C.resp_bulk(value)
    for end in (data.find(b"\r\n\r\n"), len(data) - 4, 0, -1):
        C.http_split_head(data, 0, end)
        C.http_split_head(data, len(data), end)
    C.lf_encode_many([data, bytearray(data)], 1 + kind, kind == 1, kind - 1)


@pytest.mark.parametrize("call", [
    lambda: C.LengthFieldDecoder(0, 5, True, 0, 0, 10, 0, None, None),
    lambda: C.LengthFieldDecoder(-1, 4, True, 0, 0, 10, 0, None, None),
    lambda: C.LengthFieldDecoder(0, 4, True, 0, 0, 1 << 63, 0, None, None),
    lambda: C.LengthFieldDecoder(0, 4, True),
    lambda: C.SplitDecoder(b"", False, True, 10, None, None),
    lambda: C.SplitDecoder(b"|", True, True, 10, None, None),
    lambda: C.SplitDecoder(b"\n", True, True, 0, None, None),
    lambda: C.resp_parse_commands(1, 1, 1, 1, bytearray(b"*1"), []),
    lambda: C.resp_parse_commands(1, 1, 1, b"*1", []),
    lambda: C.http_split_head(b"x", 0),
    lambda: C.lf_encode_many([], 4, True),
])
def test_bad_calls_raise_instead_of_crashing(call):
    with pytest.raises((TypeError, ValueError, OverflowError)):
        call()


def test_encode_many_of_many_payloads():
    codec = LengthFieldCodec(4)
    payloads = [b"x" * (i % 7) for i in range(300)] + [bytearray(b"tail")]
    expected = b"".join(codec.encode(p) for p in payloads)
    assert C.lf_encode_many(payloads, 4, True, 0) == expected == codec.encode_many(payloads)
    assert C.lf_encode_many(payloads + [memoryview(b"m")], 4, True, 0) is None


def test_a_decoder_cannot_be_fed_from_inside_its_own_feed():
    # Python code can run inside feed (a __bytes__ of the input, a finalizer run
    # by the garbage collector); feeding the same decoder from there would
    # change its buffer while it is being read, so the C decoders refuse.
    for codec in (LengthFieldCodec(2), LineCodec(), DelimiterCodec(b"|")):
        dec = codec.decoder()
        seen = []

        class Sneaky:
            def __bytes__(self):
                try:
                    dec.feed(b"x")
                except RuntimeError as exc:
                    seen.append(str(exc))
                return codec.encode(b"ab")

        assert dec.feed(Sneaky()) == [b"ab"]
        assert seen == ["decoder.feed() called again from inside feed()"]
        assert dec.feed(codec.encode(b"cd")) == [b"cd"]  # and it still works
