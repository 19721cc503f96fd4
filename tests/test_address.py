"""Unit tests for netreactor.address: every scheme of the contract, every bad form."""

from __future__ import annotations

import ipaddress
import socket

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netreactor.address import SCHEMES, Address, parse_address


# ---------------------------------------------------------------- valid forms

@pytest.mark.parametrize(
    "text, scheme, transport, family, host, port",
    [
        ("tcp://127.0.0.1:9000", "tcp", "tcp", socket.AF_INET, "127.0.0.1", 9000),
        ("tcp4://127.0.0.1:9000", "tcp4", "tcp", socket.AF_INET, "127.0.0.1", 9000),
        ("tcp6://[::1]:9000", "tcp6", "tcp", socket.AF_INET6, "::1", 9000),
        ("tcp://[::1]:9000", "tcp", "tcp", socket.AF_INET6, "::1", 9000),
        ("udp://127.0.0.1:53", "udp", "udp", socket.AF_INET, "127.0.0.1", 53),
        ("udp4://10.1.2.3:0", "udp4", "udp", socket.AF_INET, "10.1.2.3", 0),
        ("udp6://[fe80::1]:65535", "udp6", "udp", socket.AF_INET6, "fe80::1", 65535),
        ("udp://[2001:db8::42]:5353", "udp", "udp", socket.AF_INET6, "2001:db8::42", 5353),
        # empty host: every interface; the family comes from the scheme (None = decided at bind)
        ("tcp://:9000", "tcp", "tcp", None, "", 9000),
        ("tcp4://:9000", "tcp4", "tcp", socket.AF_INET, "", 9000),
        ("tcp6://:9000", "tcp6", "tcp", socket.AF_INET6, "", 9000),
        ("tcp6://[::]:9000", "tcp6", "tcp", socket.AF_INET6, "::", 9000),
        ("tcp://0.0.0.0:0", "tcp", "tcp", socket.AF_INET, "0.0.0.0", 0),
        # host names are kept for resolution at bind/dial time
        ("tcp://localhost:80", "tcp", "tcp", None, "localhost", 80),
        ("tcp4://localhost:80", "tcp4", "tcp", socket.AF_INET, "localhost", 80),
        ("tcp6://example.com:443", "tcp6", "tcp", socket.AF_INET6, "example.com", 443),
        ("udp://my-host.internal:1", "udp", "udp", None, "my-host.internal", 1),
        # the scheme is case-insensitive and normalised
        ("TCP://127.0.0.1:1", "tcp", "tcp", socket.AF_INET, "127.0.0.1", 1),
        ("Udp6://[::1]:2", "udp6", "udp", socket.AF_INET6, "::1", 2),
    ],
)
def test_ip_schemes(text, scheme, transport, family, host, port):
    a = parse_address(text)
    assert (a.scheme, a.transport, a.family, a.host, a.port) == (scheme, transport, family, host, port)
    assert a.path == ""
    assert a.sockaddr() == (host, port)
    assert a.is_stream is (transport == "tcp")
    assert parse_address(str(a)) == a


def test_every_contract_scheme_is_known():
    assert set(SCHEMES) == {"tcp", "tcp4", "tcp6", "udp", "udp4", "udp6", "unix", "tls", "tls4", "tls6", "fd"}


def test_port_leading_zeros_are_a_number():
    assert parse_address("tcp://127.0.0.1:00080").port == 80


def test_ipv6_str_is_bracketed():
    a = parse_address("tcp6://[2001:db8::1]:8080")
    assert str(a) == "tcp6://[2001:db8::1]:8080"
    assert str(parse_address("tcp://127.0.0.1:1")) == "tcp://127.0.0.1:1"


@pytest.mark.parametrize(
    "text, path, sockaddr",
    [
        ("unix:///tmp/x.sock", "/tmp/x.sock", "/tmp/x.sock"),
        ("unix://relative/dir/s.sock", "relative/dir/s.sock", "relative/dir/s.sock"),
        ("unix://s.sock", "s.sock", "s.sock"),
        ("unix://@abstract-name", "@abstract-name", "\0abstract-name"),
        ("unix://@", "@", "\0"),
        ("UNIX:///a b/with space", "/a b/with space", "/a b/with space"),
    ],
)
def test_unix(text, path, sockaddr):
    a = parse_address(text)
    assert a.scheme == "unix" and a.transport == "unix" and a.family == socket.AF_UNIX
    assert a.path == path
    assert a.host == "" and a.port == 0
    assert a.is_stream
    assert a.sockaddr() == sockaddr
    assert parse_address(str(a)) == a


def test_address_is_frozen_and_hashable():
    a = parse_address("tcp://127.0.0.1:1")
    with pytest.raises(Exception):
        a.port = 2  # type: ignore[misc]
    assert {a, parse_address("tcp://127.0.0.1:1")} == {a}


# ---------------------------------------------------------------- bad forms

@pytest.mark.parametrize(
    "text, fragments",
    [
        # port not a number
        ("tcp://host:notaport", ["notaport", "port"]),
        ("tcp://127.0.0.1:80a", ["80a", "port"]),
        ("tcp://127.0.0.1:+80", ["+80", "port"]),
        ("tcp://127.0.0.1: 80", ["port"]),
        # missing scheme
        ("127.0.0.1:9000", ["127.0.0.1:9000", "no scheme"]),
        ("localhost", ["localhost", "no scheme"]),
        ("", ["no scheme"]),
        # unknown scheme
        ("http://127.0.0.1:80", ["'http'", "unknown scheme"]),
        ("sctp://127.0.0.1:80", ["'sctp'", "unknown scheme"]),
        ("://127.0.0.1:80", ["unknown scheme"]),
        # port out of range
        ("tcp://127.0.0.1:65536", ["65536", "range"]),
        ("tcp://127.0.0.1:99999999", ["99999999"]),
        ("tcp://127.0.0.1:-1", ["'-1'", "port"]),
        ("udp6://[::1]:70000", ["70000", "range"]),
        # missing port
        ("tcp://127.0.0.1", ["no port"]),
        ("tcp://localhost", ["no port"]),
        ("tcp://127.0.0.1:", ["port ''"]),
        ("tcp://", ["no port"]),
        ("tcp6://[::1]", ["port", "[::1]"]),
        ("tcp6://[::1]:", ["port ''"]),
        # unbracketed IPv6 / broken brackets
        ("tcp://::1:9000", ["bracketed"]),
        ("tcp6://fe80::1:9000", ["bracketed"]),
        ("tcp6://[::1:9000", ["']'"]),
        ("tcp6://[::1]9000", ["port", "[::1]"]),
        # family mismatch
        ("tcp4://[::1]:9000", ["'::1'", "IPv4"]),
        ("udp4://[2001:db8::1]:53", ["'2001:db8::1'", "IPv4"]),
        ("tcp6://127.0.0.1:9000", ["'127.0.0.1'", "IPv6"]),
        ("udp6://10.0.0.1:53", ["'10.0.0.1'", "IPv6"]),
        # not a host at all
        ("tcp://bad host:80", ["'bad host'"]),
        ("tcp://evil\nhost:80", ["'evil\\nhost'", "neither"]),
        ("tcp://" + "a" * 254 + ":80", ["neither"]),
        # trailing path
        ("tcp://127.0.0.1:80/index.html", ["'/index.html'"]),
        # unix
        ("unix://", ["empty"]),
        ("unix:///tmp/a\0b", ["NUL"]),
        ("unix://@abs\0tract", ["NUL"]),
    ],
)
def test_bad_address(text, fragments):
    with pytest.raises(ValueError) as info:
        parse_address(text)
    msg = str(info.value)
    for frag in fragments:
        assert frag in msg, f"{frag!r} not in {msg!r}"


@pytest.mark.parametrize("value", [9000, None, b"tcp://127.0.0.1:9000", ("127.0.0.1", 9000), 1.5])
def test_non_string_is_value_error(value):
    with pytest.raises(ValueError, match="must be a string") as info:
        parse_address(value)  # type: ignore[arg-type]
    assert repr(value) in str(info.value)


@pytest.mark.parametrize("port_text", ["\u00b2", "\u0663", "\uff18\uff10"])  # superscript 2, Arabic-Indic 3, fullwidth 80
def test_port_must_be_ascii_digits(port_text):
    # '²'.isdigit() is True but int('²') fails -> a raw "invalid literal for int()" message that
    # does not name the port; '٣' and '８０' are silently accepted as ports 3 and 80.
    with pytest.raises(ValueError) as info:
        parse_address(f"tcp://127.0.0.1:{port_text}")
    assert "port" in str(info.value)


@pytest.mark.parametrize("host", ["a\0b", "bad\x01host"])
def test_control_characters_in_host_are_rejected(host):
    # NUL can never be part of a host name; it is accepted here and only fails later, in
    # getaddrinfo() ("embedded null character") - after earlier addresses were bound.
    # (Whitespace such as '\n' is already rejected: see test_bad_address.)
    with pytest.raises(ValueError) as info:
        parse_address(f"tcp://{host}:80")
    assert repr(host) in str(info.value)


# ---------------------------------------------------------------- property tests

_LOWER = "abcdefghijklmnopqrstuvwxyz"
_label = st.builds(lambda first, rest: first + rest, st.sampled_from(_LOWER),
                   st.text(alphabet=_LOWER + "0123456789-", max_size=12))
_hostname = st.lists(_label, min_size=1, max_size=4).map(".".join)
_ipv4 = st.ip_addresses(v=4).map(str)
_ipv6 = st.ip_addresses(v=6).map(str)


def _case(s: str) -> st.SearchStrategy[str]:
    return st.sampled_from([s, s.upper(), s.capitalize()])


@st.composite
def ip_address_texts(draw):
    scheme = draw(st.sampled_from(["tcp", "tcp4", "tcp6", "udp", "udp4", "udp6"]))
    if scheme.endswith("4"):
        host = draw(st.one_of(_ipv4, _hostname, st.just("")))
    elif scheme.endswith("6"):
        host = draw(st.one_of(_ipv6, _hostname, st.just("")))
    else:
        host = draw(st.one_of(_ipv4, _ipv6, _hostname, st.just("")))
    port = draw(st.integers(0, 65535))
    shown = f"[{host}]" if ":" in host else host
    return f"{draw(_case(scheme))}://{shown}:{port}", scheme, host, port


@given(ip_address_texts())
@settings(max_examples=200, deadline=None)
def test_ip_roundtrip(case):
    text, scheme, host, port = case
    a = parse_address(text)
    assert (a.scheme, a.host, a.port) == (scheme, host, port)
    if host:
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            assert a.family == SCHEMES[scheme][1]
        else:
            assert a.family == (socket.AF_INET if ip.version == 4 else socket.AF_INET6)
    assert parse_address(str(a)) == a
    assert str(parse_address(str(a))) == str(a)


@given(st.text(alphabet=st.characters(blacklist_characters="\0", blacklist_categories=("Cs",)), min_size=1))
@settings(max_examples=200, deadline=None)
def test_unix_roundtrip(path):
    a = parse_address("unix://" + path)
    assert a.path == path
    assert parse_address(str(a)) == a


@given(st.text(max_size=40))
@settings(max_examples=300, deadline=None)
def test_arbitrary_text_parses_or_raises_value_error(text):
    # Whatever the input, the only failure is a ValueError.
    try:
        a = parse_address(text)
    except ValueError:
        return
    assert isinstance(a, Address)
    assert a.scheme in SCHEMES
