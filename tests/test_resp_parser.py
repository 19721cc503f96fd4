"""The RESP2 parser and encoders (netreactor.protocols.resp), without sockets."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netreactor.protocols.resp import (CommandParser, ProtocolError, ReplyParser, RespError,
                                       _fast_parse, encode_array, encode_bulk, encode_command,
                                       encode_error, encode_integer, encode_simple, parse_int,
                                       split_inline)

SET = b"*3\r\n$3\r\nSET\r\n$3\r\nkey\r\n$5\r\nvalue\r\n"
GET = b"*2\r\n$3\r\nGET\r\n$3\r\nkey\r\n"


def careful(data: bytes, **limits) -> list:
    """Parse with the careful (reference) path only."""
    parser = CommandParser(**limits)
    out: list = []
    pos = parser._careful_parse(data, 0, out)
    assert pos == len(data)
    return out


def feed_chunks(chunks, **limits) -> list:
    parser = CommandParser(**limits)
    out = []
    for chunk in chunks:
        out.extend(parser.feed(chunk))
    return out


# --------------------------------------------------------------------------- integers

@pytest.mark.parametrize("text,value", [
    (b"0", 0), (b"1", 1), (b"-1", -1), (b"42", 42), (b"9223372036854775807", 2**63 - 1),
    (b"-9223372036854775808", -2**63),
])
def test_parse_int_accepts_what_redis_accepts(text, value):
    assert parse_int(text) == value


@pytest.mark.parametrize("text", [
    b"", b"-", b"+1", b" 1", b"1 ", b"01", b"-0", b"00", b"1_0", b"1.0", b"0x10", b"abc",
    b"9223372036854775808", b"-9223372036854775809", b"\xd9\xa1", b"123456789012345678901",
])
def test_parse_int_rejects_what_redis_rejects(text):
    assert parse_int(text) is None


# --------------------------------------------------------------------------- commands

def test_one_command():
    assert CommandParser().feed(SET) == [[b"SET", b"key", b"value"]]


def test_pipelined_commands_in_one_read():
    data = SET + GET + b"*1\r\n$4\r\nPING\r\n" + encode_command("MSET", "a", "1", "b", "2")
    assert CommandParser().feed(data) == [
        [b"SET", b"key", b"value"], [b"GET", b"key"], [b"PING"],
        [b"MSET", b"a", b"1", b"b", b"2"],
    ]


def test_binary_values_with_crlf_inside():
    data = encode_command("SET", "k", b"a\r\nb\r\n") + encode_command("ECHO", b"\r\n") + GET
    assert CommandParser().feed(data) == [[b"SET", b"k", b"a\r\nb\r\n"], [b"ECHO", b"\r\n"], [b"GET", b"key"]]


def test_empty_and_long_values():
    big = bytes(range(256)) * 100  # past the fast path's header table
    data = encode_command("SET", b"", big) + encode_command("GET", "")
    assert CommandParser().feed(data) == [[b"SET", b"", big], [b"GET", b""]]


def test_many_arguments_take_the_careful_path():
    args = [b"MSET"] + [b"k%d" % i for i in range(200)]
    assert CommandParser().feed(encode_command(*args)) == [args]


def test_empty_multibulks_are_skipped():
    assert CommandParser().feed(b"*0\r\n*-1\r\n" + GET + b"*0\r\n") == [[b"GET", b"key"]]


def test_inline_commands():
    data = b"PING\r\nSET a  b\nGET a\r\n\r\n   \r\nECHO \"hello world\"\r\n"
    assert CommandParser().feed(data) == [
        [b"PING"], [b"SET", b"a", b"b"], [b"GET", b"a"], [b"ECHO", b"hello world"],
    ]


def test_inline_and_multibulk_mixed():
    data = b"PING\r\n" + SET + b"GET key\r\n" + GET
    assert CommandParser().feed(data) == [
        [b"PING"], [b"SET", b"key", b"value"], [b"GET", b"key"], [b"GET", b"key"],
    ]


@pytest.mark.parametrize("line,args", [
    (b"a b c", [b"a", b"b", b"c"]),
    (b'set k "a b"', [b"set", b"k", b"a b"]),
    (b'echo "\\x41\\n\\t\\"\\\\q"', [b"echo", b'A\n\t"\\q']),
    (b"echo 'it\\'s' x", [b"echo", b"it's", b"x"]),
    (b"echo 'a\\nb'", [b"echo", b"a\\nb"]),
    (b'echo ""', [b"echo", b""]),
    (b'a"b c"', [b"ab c"]),
    (b"a\x00b c", [b"a"]),
    (b"\t a \x0b", [b"a"]),
])
def test_split_inline_like_sdssplitargs(line, args):
    assert split_inline(line) == args


@pytest.mark.parametrize("line", [b'"abc', b"'abc", b'"a"b', b"'a'b", b'"\\"'])
def test_split_inline_unbalanced(line):
    assert split_inline(line) is None


def test_split_at_every_offset():
    data = (SET + b"PING\r\n" + encode_command("SET", "k", b"x\r\ny" * 10) + GET
            + b"*0\r\n" + encode_command("ECHO", b"z" * 5000) + b"ECHO 'q q'\n")
    expected = CommandParser().feed(data)
    assert len(expected) == 6
    for cut in range(len(data) + 1):
        assert feed_chunks([data[:cut], data[cut:]]) == expected, cut
    for cut in range(0, len(data), 7):  # three pieces too
        assert feed_chunks([data[:cut], data[cut:cut + 13], data[cut + 13:]]) == expected


def test_byte_by_byte():
    data = SET + GET + b"PING\r\n" + encode_command("SET", "k", b"v" * 300)
    parser = CommandParser()
    out = []
    for i in range(len(data)):
        out.extend(parser.feed(data[i:i + 1]))
        assert parser.buffered <= len(data)
    assert out == CommandParser().feed(data)
    assert parser.buffered == 0


def test_large_value_in_many_reads_is_linear():
    value = b"v" * (8 << 20)
    data = encode_command("SET", "k", value)
    parser = CommandParser()
    out = []
    for i in range(0, len(data), 65536):
        out.extend(parser.feed(data[i:i + 65536]))
    assert out == [[b"SET", b"k", value]]


def test_accepts_bytearray_and_memoryview():
    parser = CommandParser()
    assert parser.feed(bytearray(SET)) == [[b"SET", b"key", b"value"]]
    assert parser.feed(memoryview(GET)) == [[b"GET", b"key"]]


command_args = st.lists(st.binary(max_size=40) | st.sampled_from([b"\r\n", b"*3", b"$3", b"\r", b"\n"]),
                        min_size=1, max_size=6)


@settings(max_examples=200, deadline=None)
@given(st.lists(command_args, min_size=1, max_size=8), st.lists(st.integers(0, 400), max_size=6))
def test_any_commands_any_cuts(commands, cuts):
    data = b"".join(encode_command(*args) for args in commands)
    points = sorted({min(c, len(data)) for c in cuts})
    chunks = [data[a:b] for a, b in zip([0] + points, points + [len(data)])]
    assert feed_chunks(chunks) == commands


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_fast_path_agrees_with_careful_path(data):
    # Whatever the fast path accepts, the careful path parses the same way.
    out: list = []
    pos = _fast_parse(data, out)
    assert careful(data[:pos]) == out


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=120))
def test_garbage_never_crashes(data):
    parser = CommandParser(max_inline=64, max_bulk=64)
    try:
        parser.feed(data)
        parser.feed(data)
    except ProtocolError as exc:
        assert exc.reply.startswith(b"-ERR Protocol error: ")
        assert exc.reply.endswith(b"\r\n") and exc.reply.count(b"\r\n") == 1


# --------------------------------------------------------------------------- errors and limits

@pytest.mark.parametrize("data,message", [
    (b"*abc\r\n", "invalid multibulk length"),
    (b"*1x\r\n", "invalid multibulk length"),
    (b"*2\r\n$3\r\nGET\r\n:1\r\n", "expected '$', got ':'"),
    (b"*1\r\n$-1\r\n", "invalid bulk length"),
    (b"*1\r\n$x\r\n", "invalid bulk length"),
    (b"*1\r\n$3\r\nGETxx", "bulk string not terminated by CRLF"),
    (b'SET a "b\r\n', "unbalanced quotes in request"),
])
def test_protocol_errors(data, message):
    with pytest.raises(ProtocolError) as info:
        CommandParser().feed(data)
    assert str(info.value) == "Protocol error: " + message
    assert info.value.reply == b"-ERR Protocol error: " + message.encode() + b"\r\n"


def test_error_keeps_the_commands_before_it():
    with pytest.raises(ProtocolError) as info:
        CommandParser().feed(SET + b"PING\r\n" + b"*1\r\n$-5\r\n" + GET)
    assert info.value.commands == [[b"SET", b"key", b"value"], [b"PING"]]


def test_parser_is_spent_after_an_error():
    parser = CommandParser()
    with pytest.raises(ProtocolError):
        parser.feed(b"*x\r\n")
    with pytest.raises(ProtocolError) as info:
        parser.feed(GET)
    assert info.value.commands == []


def test_bulk_length_limit():
    parser = CommandParser(max_bulk=10)
    assert parser.feed(encode_command("SET", "k", b"x" * 10)) == [[b"SET", b"k", b"x" * 10]]
    with pytest.raises(ProtocolError, match="invalid bulk length"):
        parser.feed(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$11\r\n")


def test_default_bulk_limit_is_64_mib():
    assert CommandParser().max_bulk == 64 << 20
    with pytest.raises(ProtocolError, match="invalid bulk length"):
        CommandParser().feed(b"*2\r\n$3\r\nGET\r\n$%d\r\n" % ((64 << 20) + 1))


def test_argument_count_limit():
    with pytest.raises(ProtocolError, match="invalid multibulk length"):
        CommandParser(max_args=3).feed(b"*4\r\n")
    with pytest.raises(ProtocolError, match="invalid multibulk length"):
        CommandParser().feed(b"*%d\r\n" % (1024 * 1024 + 1))


def test_command_size_limit():
    parser = CommandParser(max_command=100)
    parser.feed(b"*100\r\n")
    with pytest.raises(ProtocolError, match="too big command"):
        for _ in range(10):
            parser.feed(b"$20\r\n" + b"x" * 20 + b"\r\n")
            assert parser.buffered <= 100
    with pytest.raises(ProtocolError, match="too big command"):
        CommandParser(max_command=100).feed(b"*1\r\n$200\r\n")


def test_inline_length_limit():
    parser = CommandParser(max_inline=100)
    parser.feed(b"x" * 100)
    with pytest.raises(ProtocolError, match="too big inline request"):
        parser.feed(b"x")
    with pytest.raises(ProtocolError, match="too big inline request"):
        CommandParser(max_inline=10).feed(b"SET a " + b"b" * 10 + b"\r\n")


def test_length_line_limits():
    with pytest.raises(ProtocolError, match="too big mbulk count string"):
        CommandParser(max_inline=10).feed(b"*" + b"1" * 11)
    with pytest.raises(ProtocolError, match="too big bulk count string"):
        CommandParser(max_inline=10).feed(b"*1\r\n$" + b"1" * 11)


def test_held_memory_is_bounded_while_a_big_value_arrives():
    parser = CommandParser(max_bulk=1 << 20)
    parser.feed(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$%d\r\n" % (1 << 20))
    for _ in range(15):
        parser.feed(b"x" * 65536)
        assert parser.buffered <= (1 << 20) + 100
    assert parser.feed(b"x" * 65536 + b"\r\n") == [[b"SET", b"k", b"x" * (1 << 20)]]
    assert parser.buffered == 0


@pytest.mark.parametrize("name", ["max_bulk", "max_args", "max_command", "max_inline"])
@pytest.mark.parametrize("value", [0, -1, 1.5, True, "10"])
def test_bad_limits(name, value):
    with pytest.raises(ValueError, match=name):
        CommandParser(**{name: value})


# --------------------------------------------------------------------------- encoders and replies

def test_encoders():
    assert encode_command("SET", b"k", 12) == b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$2\r\n12\r\n"
    assert encode_bulk(b"ab") == b"$2\r\nab\r\n"
    assert encode_bulk(None) == b"$-1\r\n"
    assert encode_integer(-3) == b":-3\r\n"
    assert encode_simple("OK") == b"+OK\r\n"
    assert encode_error("ERR a\r\nb") == b"-ERR a  b\r\n"
    assert encode_array([b"a", None]) == b"*2\r\n$1\r\na\r\n$-1\r\n"
    assert encode_array(None) == b"*-1\r\n"


def test_reply_parser_round_trip():
    data = (b"+OK\r\n-ERR bad\r\n:42\r\n$3\r\nabc\r\n$-1\r\n*-1\r\n*0\r\n"
            b"*3\r\n:1\r\n*1\r\n$1\r\nx\r\n$-1\r\n")
    expected = ["OK", RespError("ERR bad"), 42, b"abc", None, None, [], [1, [b"x"], None]]
    assert ReplyParser().feed(data) == expected
    parser = ReplyParser()
    out = []
    for i in range(len(data)):
        out.extend(parser.feed(data[i:i + 1]))
    assert out == expected


# --------------------------------------------------------------------------- limits, whatever the split

def outcome(chunks, **limits):
    """Every command the parser returned (those carried by the error included), and the error."""
    parser = CommandParser(**limits)
    out: list = []
    try:
        for chunk in chunks:
            out.extend(parser.feed(chunk))
    except ProtocolError as exc:
        return out + exc.commands, str(exc)
    return out, None


def careful_outcome(data, **limits):
    """The careful (reference) parser alone, the whole stream at once."""
    parser = CommandParser(**limits)
    out: list = []
    try:
        parser._careful_parse(data, 0, out)
    except ProtocolError as exc:
        return exc.commands, str(exc)
    return out, None


@pytest.mark.parametrize("limits,data,message", [
    (dict(max_bulk=10), encode_command("SET", "k", b"v" * 100), "invalid bulk length"),
    (dict(max_bulk=10), encode_command("SET", "k", b"v" * 11), "invalid bulk length"),
    (dict(max_args=3), encode_command("DEL", "a", "b", "c", "d", "e"), "invalid multibulk length"),
    (dict(max_command=40), encode_command("SET", "k", b"v" * 30), "too big command"),
    (dict(max_inline=2), encode_command("SET", "k", b"v" * 10), "too big bulk count string"),
    (dict(max_inline=1), encode_command("GET", "k"), "too big mbulk count string"),
])
def test_every_limit_holds_in_one_read_and_split(limits, data, message):
    # The fast path used to accept these in one read (it knew only the defaults)
    # while the careful path refused them when the same bytes came split.
    assert outcome([data], **limits) == ([], "Protocol error: " + message)
    for cut in range(len(data) + 1):
        assert outcome([data[:cut], data[cut:]], **limits) == ([], "Protocol error: " + message), cut
    assert outcome([data[i:i + 1] for i in range(len(data))], **limits) == ([], "Protocol error: " + message)


def test_a_command_exactly_at_each_limit_is_accepted():
    data = encode_command("SET", "k", b"v" * 10)
    size = len(data) - len(b"*3\r\n")  # max_command counts the arguments, not the count line
    limits = dict(max_bulk=10, max_args=3, max_command=size, max_inline=3)
    for cut in range(len(data) + 1):
        assert outcome([data[:cut], data[cut:]], **limits) == ([[b"SET", b"k", b"v" * 10]], None), cut
    assert outcome([data], **dict(limits, max_command=size - 1))[1] == "Protocol error: too big command"


limit_values = st.one_of(st.none(), st.integers(1, 40))
stream_parts = st.one_of(
    st.lists(st.binary(max_size=30) | st.sampled_from([b"\r\n", b"*3", b"$3"]), min_size=1, max_size=6).map(
        lambda args: encode_command(*args)),
    st.sampled_from([b"PING\r\n", b"GET k\n", b"*0\r\n", b"*-1\r\n", b'ECHO "a b"\r\n', b"\r\n"]),
    st.binary(max_size=12),  # garbage
)


@settings(max_examples=400, deadline=None)
@given(st.lists(stream_parts, min_size=1, max_size=6), st.lists(st.integers(0, 300), max_size=6),
       st.fixed_dictionaries({}, optional={"max_bulk": st.integers(1, 40), "max_args": st.integers(1, 8),
                                            "max_command": st.integers(1, 200),
                                            "max_inline": st.integers(1, 40)}))
def test_any_split_gives_the_same_outcome_limits_included(parts, cuts, limits):
    data = b"".join(parts)
    points = sorted({min(c, len(data)) for c in cuts})
    chunks = [data[a:b] for a, b in zip([0] + points, points + [len(data)])]
    whole = outcome([data], **limits)
    assert outcome(chunks, **limits) == whole
    assert outcome([data[i:i + 1] for i in range(len(data))], **limits) == whole
    assert careful_outcome(data, **limits) == whole


# --------------------------------------------------------------------------- reply parser limits

def test_reply_parser_refuses_deep_nesting_with_a_value_error():
    deep = b"*1\r\n" * 3000 + b":1\r\n"
    with pytest.raises(ValueError, match="nested deeper than"):
        ReplyParser().feed(deep)
    with pytest.raises(ValueError, match="nested deeper than"):
        ReplyParser().feed(b"*1\r\n" * 3000)  # unfinished, already too deep
    nested = b"*1\r\n" * 100 + b":1\r\n"
    value = ReplyParser().feed(nested)[0]
    for _ in range(100):
        value = value[0]
    assert value == 1


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_reply_parser_garbage_is_a_value_error(data):
    try:
        ReplyParser().feed(data)
    except ValueError:
        pass


def test_limits_beyond_64_bits_are_accepted():
    parser = CommandParser(max_bulk=1 << 70, max_args=1 << 70, max_command=1 << 70, max_inline=1 << 70)
    assert parser.feed(SET + b"PING\r\n") == [[b"SET", b"key", b"value"], [b"PING"]]
