"""netreactor.protocols.proxy: the spec's examples, fail-fast on every byte, random
round trips under random splits, malformed and oversized headers, CRC32c, and real
senders (HAProxy send-proxy / send-proxy-v2 with its TLV options, nginx stream)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import time

import pytest
from _haproxy import CaptureServer, HAProxy, client, haproxy_missing, listening_socket
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from netreactor.protocols import proxy
from netreactor.protocols.proxy import (
    PP2_CLIENT_CERT_CONN,
    PP2_CLIENT_CERT_SESS,
    PP2_CLIENT_SSL,
    PP2_SUBTYPE_SSL_CN,
    PP2_TYPE_ALPN,
    PP2_TYPE_AUTHORITY,
    PP2_TYPE_CRC32C,
    PP2_TYPE_NETNS,
    PP2_TYPE_NOOP,
    PP2_TYPE_SSL,
    PP2_TYPE_UNIQUE_ID,
    V2_SIGNATURE,
    AllowList,
    Command,
    ProxyHeader,
    ProxyParser,
    ProxyProtocolError,
    crc32c,
    encode_ssl,
    encode_v1,
    encode_v2,
)

SIG = V2_SIGNATURE


def parse(data: bytes, mode: str = "auto", **kw: int) -> tuple[ProxyHeader, bytes]:
    parser = ProxyParser(mode, **kw)
    header = parser.feed(data)
    assert header is not None, f"incomplete: {data!r}"
    return header, parser.rest


def error_at(data: bytes, mode: str = "auto", **kw: int) -> tuple[int, str]:
    """Feed ``data`` one byte at a time; the index of the byte that raised, and the message."""
    parser = ProxyParser(mode, **kw)
    for i in range(len(data)):
        try:
            if parser.feed(data[i:i + 1]) is not None:
                raise AssertionError(f"{data!r} parsed as a header")
        except ProxyProtocolError as exc:
            return i, str(exc)
    raise AssertionError(f"no error for {data!r}")


def v2(ver_cmd: int, fam: int, body: bytes, length: int | None = None) -> bytes:
    """A v2 header built by hand, independent of the encoder."""
    return SIG + bytes((ver_cmd, fam)) + struct.pack("!H", len(body) if length is None else length) + body


# ---------------------------------------------------------------- the spec's examples (2.1, 2.2)

def test_spec_v1_example_before_an_http_request():
    data = (b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n"
            b"GET / HTTP/1.1\r\nHost: 192.168.0.11\r\n\r\n")
    h, rest = parse(data)
    assert (h.version, h.command, h.family, h.protocol) == (1, Command.PROXY, socket.AF_INET, socket.SOCK_STREAM)
    assert h.source == ("192.168.0.1", 56324)
    assert h.destination == ("192.168.0.11", 443)
    assert h.proxied and h.length == 47 and h.tlvs == ()
    assert rest == b"GET / HTTP/1.1\r\nHost: 192.168.0.11\r\n\r\n"


FFFF6 = ":".join(["ffff"] * 8)


@pytest.mark.parametrize("line, length", [
    (b"PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n", 56),
    (f"PROXY TCP6 {FFFF6} {FFFF6} 65535 65535\r\n".encode(), 104),
    (b"PROXY UNKNOWN\r\n", 15),
    (f"PROXY UNKNOWN {FFFF6} {FFFF6} 65535 65535\r\n".encode(), 107),
])
def test_spec_v1_longest_lines(line, length):
    assert len(line) == length
    h, rest = parse(line + b"after")
    assert h.length == length and rest == b"after"
    if b"UNKNOWN" in line:
        assert h.family is None and h.source is None and not h.proxied
    else:
        assert h.source[1] == 65535 and h.destination[1] == 65535


def test_spec_v1_line_over_107_bytes_is_refused():
    line = f"PROXY UNKNOWN {FFFF6} {FFFF6} 65535 655350\r\n".encode()
    assert len(line) == 108
    with pytest.raises(ProxyProtocolError, match="107"):
        parse(line)
    # without a CRLF at all, the refusal comes at the 107th byte, not later
    index, _ = error_at(b"PROXY UNKNOWN " + b"x" * 200)
    assert index == 106


def test_spec_v1_tcp6_is_normalised():
    h, _ = parse(b"PROXY TCP6 2001:DB8:0:0:0:0:0:1 ::ffff:192.0.2.1 1 2\r\n")
    assert h.family == socket.AF_INET6
    assert h.source == ("2001:db8::1", 1)
    assert h.destination == ("::ffff:192.0.2.1", 2)  # as getpeername() writes it


def test_spec_v1_unknown_ignores_the_rest_of_its_line():
    h, rest = parse(b"PROXY UNKNOWN anything at all, even \x00 \xff\r\nDATA")
    assert h.family is None and not h.proxied and rest == b"DATA"


IP4_BLOCK = socket.inet_aton("10.0.0.1") + socket.inet_aton("10.0.0.2") + struct.pack("!HH", 1234, 80)
IP6_BLOCK = (socket.inet_pton(socket.AF_INET6, "2001:db8::1") + socket.inet_pton(socket.AF_INET6, "::1")
             + struct.pack("!HH", 4321, 443))
UNIX_BLOCK = b"/tmp/client.sock".ljust(108, b"\0") + b"/run/server.sock".ljust(108, b"\0")


@pytest.mark.parametrize("fam, block, family, protocol, source, destination", [
    (0x11, IP4_BLOCK, socket.AF_INET, socket.SOCK_STREAM, ("10.0.0.1", 1234), ("10.0.0.2", 80)),
    (0x12, IP4_BLOCK, socket.AF_INET, socket.SOCK_DGRAM, ("10.0.0.1", 1234), ("10.0.0.2", 80)),
    (0x21, IP6_BLOCK, socket.AF_INET6, socket.SOCK_STREAM, ("2001:db8::1", 4321), ("::1", 443)),
    (0x22, IP6_BLOCK, socket.AF_INET6, socket.SOCK_DGRAM, ("2001:db8::1", 4321), ("::1", 443)),
    (0x31, UNIX_BLOCK, socket.AF_UNIX, socket.SOCK_STREAM, "/tmp/client.sock", "/run/server.sock"),
    (0x32, UNIX_BLOCK, socket.AF_UNIX, socket.SOCK_DGRAM, "/tmp/client.sock", "/run/server.sock"),
])
def test_spec_v2_protocol_bytes(fam, block, family, protocol, source, destination):
    """2.2's table of expected protocol bytes, with the address lengths 12, 36 and 216."""
    assert len(block) == {1: 12, 2: 36, 3: 216}[fam >> 4]
    h, rest = parse(v2(0x21, fam, block) + b"payload")
    assert (h.version, h.command, h.family, h.protocol) == (2, Command.PROXY, family, protocol)
    assert (h.source, h.destination) == (source, destination)
    assert h.proxied and h.length == 16 + len(block) and rest == b"payload"


def test_spec_v2_unix_abstract_and_unnamed_addresses():
    block = b"\0abstract-name".ljust(108, b"\0") + bytes(108)
    h, _ = parse(v2(0x21, 0x31, block))
    assert h.source == b"\0abstract-name" and h.destination == ""


def test_spec_v2_unspec_keeps_the_real_addresses():
    h, rest = parse(v2(0x21, 0x00, b"") + b"x")
    assert h.command is Command.PROXY and h.family is None and not h.proxied and rest == b"x"


def test_spec_v2_local_ignores_its_address_block_and_skips_its_length():
    """2.2: "Receivers MUST always consider this field to skip the appropriate number
    of bytes and must not assume zero is presented for LOCAL connections"."""
    h, rest = parse(v2(0x20, 0x11, IP4_BLOCK) + b"app")
    assert h.command is Command.LOCAL and h.family is None and h.source is None and not h.proxied
    assert rest == b"app"
    # a LOCAL block shorter than its family's addresses is skipped whole, too
    h, rest = parse(v2(0x20, 0x21, b"\x01\x02\x03") + b"app")
    assert h.command is Command.LOCAL and rest == b"app" and h.length == 19


def test_spec_v2_local_unspec_carries_tlvs():
    """HAProxy's health checks: LOCAL, UNSPEC, then TLVs (a CRC32C for instance)."""
    data = encode_v2(command=Command.LOCAL, tlvs=[(PP2_TYPE_NOOP, b"")], crc=True)
    assert data[12:14] == b"\x20\x00"
    h, _ = parse(data)
    assert h.command is Command.LOCAL and h.crc32c is not None and h.tlv(PP2_TYPE_NOOP) == b""


def test_spec_v2_tlvs_in_order_with_unknown_and_custom_types():
    tlvs = [(PP2_TYPE_ALPN, b"h2"), (0xE0, b"custom"), (PP2_TYPE_NOOP, b"\0\0\0"), (0xF8, b""),
            (PP2_TYPE_AUTHORITY, "bücher.example".encode()), (PP2_TYPE_UNIQUE_ID, b"u" * 128),
            (PP2_TYPE_NETNS, b"blue"), (PP2_TYPE_ALPN, b"second")]
    body = IP4_BLOCK + b"".join(bytes((t,)) + struct.pack("!H", len(v)) + v for t, v in tlvs)
    h, _ = parse(v2(0x21, 0x11, body))
    assert list(h.tlvs) == tlvs
    assert h.alpn == b"h2"  # the first of its type
    assert h.authority == "bücher.example" and h.unique_id == b"u" * 128 and h.netns == "blue"
    assert h.tlv(0xE0) == b"custom" and h.tlv(0x99) is None
    assert h.ssl is None and h.crc32c is None


def test_spec_v2_ssl_tlv_and_its_subtypes():
    value = encode_ssl(PP2_CLIENT_SSL | PP2_CLIENT_CERT_CONN | PP2_CLIENT_CERT_SESS, 0,
                       version="TLSv1.3", cn="client.example", cipher="TLS_AES_128_GCM_SHA256",
                       sig_alg="RSA-SHA256", key_alg="RSA2048", group="X25519",
                       sig_scheme="rsa_pss_rsae_sha256", client_cert=b"\x30\x82DER")
    # the wire layout of 2.2.6: client (1), verify (4), then sub-TLVs
    assert value[:5] == b"\x07\x00\x00\x00\x00" and value[5:8] == b"\x21\x00\x07"
    h, _ = parse(encode_v2(("1.2.3.4", 1), ("5.6.7.8", 2), tlvs=[(PP2_TYPE_SSL, value)]))
    s = h.ssl
    assert s is not None and s.ssl and s.cert_in_connection and s.cert_in_session and s.verified
    assert (s.version, s.cn, s.cipher, s.sig_alg, s.key_alg, s.group, s.sig_scheme) == (
        "TLSv1.3", "client.example", "TLS_AES_128_GCM_SHA256", "RSA-SHA256", "RSA2048", "X25519",
        "rsa_pss_rsae_sha256")
    assert s.client_cert == b"\x30\x82DER"
    # a certificate that failed verification
    s = parse(encode_v2(("1.2.3.4", 1), ("5.6.7.8", 2),
                        tlvs=[(PP2_TYPE_SSL, encode_ssl(PP2_CLIENT_SSL | PP2_CLIENT_CERT_CONN, 20))]))[0].ssl
    assert s is not None and s.verify == 20 and not s.verified
    # no certificate: verify is 0 but nothing was verified
    s = parse(encode_v2(("1.2.3.4", 1), ("5.6.7.8", 2), tlvs=[(PP2_TYPE_SSL, encode_ssl())]))[0].ssl
    assert s is not None and s.ssl and not s.verified and s.cn is None


# ---------------------------------------------------------------- CRC32c (2.2.3, RFC 4960 / RFC 3720 B.4)

@pytest.mark.parametrize("data, crc", [
    (b"", 0x00000000),
    (b"123456789", 0xE3069283),
    (bytes(32), 0x8A9136AA),
    (b"\xff" * 32, 0x62A8AB43),
    (bytes(range(32)), 0x46DD794E),
    (bytes(range(31, -1, -1)), 0x113FDB5C),
])
def test_crc32c_known_vectors(data, crc):
    assert crc32c(data) == crc


def test_crc32c_continues():
    assert crc32c(b"56789", crc32c(b"1234")) == crc32c(b"123456789")


def test_crc32c_tlv_is_verified():
    good = encode_v2(("192.0.2.1", 1000), ("192.0.2.2", 2000), tlvs=[(PP2_TYPE_AUTHORITY, b"a.example")],
                     crc=True)
    h, _ = parse(good)
    assert h.crc32c == int.from_bytes(good[-4:], "big")
    for i in range(len(good)):
        if 14 <= i < 16:
            continue  # the length field: changing it makes another (truncated or overrun) header
        bad = bytearray(good)
        bad[i] ^= 0x01
        with pytest.raises(ProxyProtocolError):
            parse(bytes(bad) + b"x" * 64)


def test_crc32c_mismatch_message_names_both_values():
    good = encode_v2(("192.0.2.1", 1000), ("192.0.2.2", 2000), crc=True)
    bad = good[:20] + bytes((good[20] ^ 0xFF,)) + good[21:]
    with pytest.raises(ProxyProtocolError, match="checksum mismatch"):
        parse(bad)


@pytest.mark.parametrize("tlvs, match", [
    ([(PP2_TYPE_CRC32C, b"\0\0\0")], "must be 4"),
    ([(PP2_TYPE_CRC32C, b"\0\0\0\0\0")], "must be 4"),
])
def test_crc32c_tlv_of_wrong_size(tlvs, match):
    with pytest.raises(ProxyProtocolError, match=match):
        parse(encode_v2(("1.1.1.1", 1), ("2.2.2.2", 2), tlvs=tlvs))


def test_two_crc32c_tlvs_are_refused():
    data = encode_v2(("1.1.1.1", 1), ("2.2.2.2", 2), tlvs=[(PP2_TYPE_CRC32C, b"\0\0\0\0")], crc=True)
    with pytest.raises(ProxyProtocolError, match="more than one CRC32C"):
        parse(data)


# ---------------------------------------------------------------- fail fast

@pytest.mark.parametrize("data, index", [
    (b"GET / HTTP/1.1\r\n", 0),                       # plain HTTP: refused at its first byte
    (b"\x16\x03\x01\x02\x00\x01", 0),                   # a TLS ClientHello
    (b"SSH-2.0-OpenSSH_9.2\r\n", 0),
    (b"\x00\x00", 0),
    (b"PRIVMSG", 2),                                    # "PR" could still be "PROXY"
    (b"PROXY\r\n", 5),                                  # CR where the space must be
    (b"PROXY  TCP4", 6),                                # two spaces
    (b"PROXY TCP5 1", 9),
    (b"PROXY UNKNOWNX", 13),
    (b"PROXY TCP4 01.2.3.4", 12),                        # leading zero
    (b"PROXY TCP4 1.2.3.256", 19),
    (b"PROXY TCP4 1.2.3.4.", 18),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 01", 28),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 65536", 31),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3", 30),           # a fifth field
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", 30),           # LF without CR
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX", 31),          # CR without LF
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", 28),           # a field missing
    (b"PROXY TCP4 ::1", 11),                             # IPv6 announced as TCP4
    (b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n", 18),             # IPv4 as TCP6: known at the space ending it
    (b"PROXY TCP6 ::1%eth0", 14),                        # no zone identifiers
    (b"PROXY TCP6 1:::", 14),
    (b"proxy TCP4", 0),                                 # case matters
    (SIG[:6] + b"\x00", 6),                             # the v2 signature, wrong at its 7th byte
    (SIG + b"\x11", 12),                                # version 1
    (SIG + b"\x22", 12),                                # command 2
    (SIG + b"\x21\x41", 13),                            # family 4
    (SIG + b"\x21\x13", 13),                            # transport protocol 3
    (SIG + b"\x21\x11\x10\x01", 15),                    # 16 + 4097 bytes: over the 4 KiB default
    (SIG + b"\x21\x11\x00\x0b", 15),                    # IPv4 needs 12 bytes of addresses
    (SIG + b"\x21\x21\x00\x23", 15),                    # IPv6 needs 36
    (SIG + b"\x21\x31\x00\xd7", 15),                    # Unix needs 216
])
def test_refused_at_the_first_impossible_byte(data, index):
    assert error_at(data)[0] == index


@pytest.mark.parametrize("mode, data, match", [
    ("v1", SIG, "expected a PROXY v1 header"),
    ("v2", b"PROXY TCP4 ", "expected a PROXY v2 header"),
    ("auto", b"GET /", "expected a PROXY protocol header"),
])
def test_modes_refuse_the_other_version_at_once(mode, data, match):
    index, message = error_at(data, mode)
    assert index == 0 and match in message


def test_modes_accept_their_version():
    assert parse(b"PROXY UNKNOWN\r\n", "v1")[0].version == 1
    assert parse(encode_v2(), "v2")[0].version == 2


def test_max_header_bounds_v2():
    big = encode_v2(("1.1.1.1", 1), ("2.2.2.2", 2), tlvs=[(0xE0, b"x" * 5000)])
    with pytest.raises(ProxyProtocolError, match="over the 4096-byte limit"):
        ProxyParser().feed(big[:16])            # refused from the length alone
    h, _ = parse(big, max_header=8192)
    assert h.tlv(0xE0) == b"x" * 5000
    exact = encode_v2(("1.1.1.1", 1), ("2.2.2.2", 2), tlvs=[(0xE0, b"x" * (300 - 16 - 12 - 3))])
    assert len(exact) == 300
    assert parse(exact, max_header=300)[0].length == 300
    with pytest.raises(ProxyProtocolError):
        parse(exact, max_header=299)


@pytest.mark.parametrize("kw, match", [
    ({"mode": "v3"}, "mode must be one of"),
    ({"max_header": 100}, "max_header"),
    ({"max_header": 70000}, "max_header"),
    ({"max_header": True}, "max_header"),
    ({"max_header": "4096"}, "max_header"),
])
def test_bad_parser_options(kw, match):
    mode = kw.pop("mode", "auto")
    with pytest.raises(ValueError, match=match):
        ProxyParser(mode, **kw)


# ---------------------------------------------------------------- malformed complete headers

@pytest.mark.parametrize("data, match", [
    (v2(0x21, 0x11, IP4_BLOCK + b"\x01\x00"), "stray byte"),
    (v2(0x21, 0x11, IP4_BLOCK + b"\x01\x00\x05ab"), "announces 5 bytes, only 2 left"),
    (v2(0x21, 0x11, IP4_BLOCK + b"\x05\x00\x81" + b"u" * 129), "at most 128"),
    (v2(0x21, 0x11, IP4_BLOCK + b"\x02\x00\x02\xff\xfe"), "AUTHORITY TLV is not valid UTF-8"),
    (v2(0x21, 0x11, IP4_BLOCK + b"\x30\x00\x01\xff"), "NETNS TLV is not valid UTF-8"),
    (v2(0x21, 0x11, IP4_BLOCK + b"\x20\x00\x04\x01\x00\x00\x00"), "needs at least 5"),
    (v2(0x21, 0x11, IP4_BLOCK + b"\x20\x00\x08\x01\x00\x00\x00\x00\x21\x00\x09"), "SSL TLV"),
    (v2(0x21, 0x11, IP4_BLOCK + b"\x20\x00\x09\x01\x00\x00\x00\x00\x22\x00\x01\xc3"), "not valid UTF-8"),
])
def test_malformed_v2_bodies(data, match):
    with pytest.raises(ProxyProtocolError, match=match):
        parse(data)


@pytest.mark.parametrize("line", [
    b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n",
    b"PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n",
    b"PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n",
    b"PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n",
    b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\r\n",
    b"PROXY TCP6 ::1 ::2 1\r\n",
    b"PROXY TCP6 ::1 ::g 1 2\r\n",
    b"PROXY TCP6 1::2::3 ::1 1 2\r\n",
    b"PROXY TCP4\r\n",
    b"PROXY \r\n",
    b"PROXY\r\n",
    b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\x00\r\n",
])
def test_malformed_v1_lines(line):
    with pytest.raises(ProxyProtocolError):
        parse(line)


def test_parser_is_spent_after_an_error_and_done_after_a_header():
    p = ProxyParser()
    with pytest.raises(ProxyProtocolError):
        p.feed(b"HELLO")
    with pytest.raises(ProxyProtocolError, match="expected a PROXY"):
        p.feed(b"PROXY UNKNOWN\r\n")
    p = ProxyParser()
    assert p.feed(b"PROXY UNKNOWN\r\n") is not None
    with pytest.raises(RuntimeError, match="complete"):
        p.feed(b"more")


def test_trickled_header_holds_at_most_its_own_bytes():
    data = encode_v2(("1.1.1.1", 1), ("2.2.2.2", 2), tlvs=[(0xE0, b"x" * 4000)]) + b"R" * 10000
    p = ProxyParser()
    held = 0
    for i in range(0, len(data), 7):
        if p.feed(data[i:i + 7]) is not None:
            break
        held = max(held, p.buffered)
    assert p.header is not None and held < p.header.length
    assert p.buffered == 0


# ---------------------------------------------------------------- random round trips, random splits

hosts4 = st.ip_addresses(v=4).map(str)
hosts6 = st.ip_addresses(v=6).map(str)
ports = st.integers(0, 65535)
unix_paths = st.text(st.characters(min_codepoint=33, max_codepoint=0x7E), min_size=1, max_size=100).map(
    lambda s: "/" + s)
tlv_types = st.integers(0, 255).filter(lambda t: t not in (PP2_TYPE_CRC32C, PP2_TYPE_SSL, PP2_TYPE_AUTHORITY,
                                                           PP2_TYPE_NETNS, PP2_TYPE_UNIQUE_ID))
raw_tlvs = st.lists(st.tuples(tlv_types, st.binary(max_size=40)), max_size=5)
text_tlvs = st.lists(st.tuples(st.sampled_from([PP2_TYPE_AUTHORITY, PP2_TYPE_NETNS]),
                               st.text(max_size=20).map(lambda s: s.encode())), max_size=2)
ssl_tlvs = st.lists(st.builds(lambda c, v, cn, ver: (PP2_TYPE_SSL, encode_ssl(c, v, cn=cn, version=ver)),
                              st.integers(0, 7), st.integers(0, 2**32 - 1),
                              st.none() | st.text(max_size=20), st.none() | st.sampled_from(["TLSv1.2", "TLSv1.3"])),
                    max_size=1)


@st.composite
def headers(draw):
    """(encoded header, the expected ProxyHeader fields)."""
    kind = draw(st.sampled_from(["v1-4", "v1-6", "v1-unknown", "v2-4", "v2-6", "v2-unix", "v2-local",
                                 "v2-unspec"]))
    if kind.startswith("v1"):
        if kind == "v1-unknown":
            return encode_v1(), (1, Command.PROXY, None, None, None, None, ())
        hs = hosts4 if kind == "v1-4" else hosts6
        src, dst = (draw(hs), draw(ports)), (draw(hs), draw(ports))
        fam = socket.AF_INET if kind == "v1-4" else socket.AF_INET6
        return encode_v1(src, dst), (1, Command.PROXY, fam, socket.SOCK_STREAM, src, dst, ())
    tlvs = draw(raw_tlvs) + draw(text_tlvs) + draw(ssl_tlvs)
    tlvs = draw(st.permutations(tlvs)) if tlvs else []
    crc = draw(st.booleans())
    proto = draw(st.sampled_from([socket.SOCK_STREAM, socket.SOCK_DGRAM]))
    if kind == "v2-local":
        data = encode_v2(command=Command.LOCAL, tlvs=tlvs, crc=crc)
        fields = (2, Command.LOCAL, None, None, None, None)
    elif kind == "v2-unspec":
        data = encode_v2(tlvs=tlvs, crc=crc)
        fields = (2, Command.PROXY, None, None, None, None)
    else:
        if kind == "v2-unix":
            src, dst = draw(unix_paths), draw(unix_paths)
            fam = socket.AF_UNIX
        else:
            hs = hosts4 if kind == "v2-4" else hosts6
            src, dst = (draw(hs), draw(ports)), (draw(hs), draw(ports))
            fam = socket.AF_INET if kind == "v2-4" else socket.AF_INET6
        data = encode_v2(src, dst, protocol=proto, tlvs=tlvs, crc=crc)
        fields = (2, Command.PROXY, fam, proto, src, dst)
    expected_tlvs = tuple(tlvs) + (((PP2_TYPE_CRC32C, data[-4:]),) if crc else ())
    return data, fields + (expected_tlvs,)


def _fields(h: ProxyHeader) -> tuple:
    return (h.version, h.command, h.family, h.protocol, h.source, h.destination, h.tlvs)


def _norm(fields: tuple) -> tuple:
    """Hosts as the parser writes them (inet_ntop's form)."""
    def host(addr):
        if isinstance(addr, tuple):
            family = socket.AF_INET6 if ":" in addr[0] else socket.AF_INET
            return (socket.inet_ntop(family, socket.inet_pton(family, addr[0])), addr[1])
        return addr
    return fields[:4] + (host(fields[4]), host(fields[5])) + fields[6:]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(headers(), st.binary(max_size=64), st.lists(st.integers(0, 400), max_size=8))
def test_round_trip_under_random_splits(case, rest, cuts):
    data, expected = case
    stream = data + rest
    points = sorted({min(c, len(stream)) for c in cuts})
    pieces = [stream[a:b] for a, b in zip([0] + points, points + [len(stream)])]
    p = ProxyParser()
    header = None
    for i, piece in enumerate(pieces):
        header = p.feed(piece)
        if header is not None:
            after = b"".join(pieces[i + 1:])
            break
    assert header is not None
    assert _fields(header) == _norm(expected)
    assert header.length == len(data)
    assert p.rest + after == rest
    # and the version-specific mode agrees with auto
    h2, r2 = parse(stream, "v1" if header.version == 1 else "v2")
    assert _fields(h2) == _fields(header) and r2 == rest


@settings(max_examples=200, deadline=None)
@given(headers())
def test_every_proper_prefix_waits(case):
    data, _ = case
    p = ProxyParser()
    for i in range(len(data) - 1):
        assert p.feed(data[i:i + 1]) is None
    assert p.feed(data[-1:]) is not None and p.rest == b""


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=1, max_size=120))
def test_garbage_never_breaks_the_parser(data):
    """Random bytes: a header, a wait, or a ProxyProtocolError; never anything else."""
    p = ProxyParser()
    try:
        h = p.feed(data)
    except ProxyProtocolError:
        return
    if h is None:
        assert p.buffered == len(data) <= 4096
    else:
        assert p.rest == data[h.length:]


# ---------------------------------------------------------------- encoders

@pytest.mark.parametrize("call, match", [
    (lambda: encode_v1(("1.2.3.4", 1), ("::1", 2)), "same address family"),
    (lambda: encode_v1(("1.2.3.4", 70000), ("1.2.3.4", 2)), "out of range"),
    (lambda: encode_v1(("host", 1), ("1.2.3.4", 2)), "not an IP address"),
    (lambda: encode_v1("/tmp/a", "/tmp/b"), "IPv4 and IPv6 only"),
    (lambda: encode_v2(("1.2.3.4", 1), None), "both"),
    (lambda: encode_v2(("1.2.3.4", 1), ("1.2.3.4", 2), command=Command.LOCAL), "LOCAL"),
    (lambda: encode_v2("/a", ("1.2.3.4", 2)), "both be Unix"),
    (lambda: encode_v2("/" + "x" * 200, "/b"), "at most 108"),
    (lambda: encode_v2(("1.2.3.4", 1), ("1.2.3.4", 2), protocol=socket.SOCK_RAW), "protocol"),
    (lambda: encode_v2(tlvs=[(256, b"")]), "not a byte"),
    (lambda: encode_v2(tlvs=[(1, b"x" * 70000)]), "at most 65535"),
    (lambda: encode_ssl(300), "not a byte"),
    (lambda: encode_ssl(1, -1), "32-bit"),
])
def test_encoder_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_encode_v1_forms():
    assert encode_v1() == b"PROXY UNKNOWN\r\n"
    assert encode_v1(("192.0.2.1", 5), ("192.0.2.2", 6)) == b"PROXY TCP4 192.0.2.1 192.0.2.2 5 6\r\n"
    assert encode_v1(("2001:DB8::1", 5), ("::1", 6)) == b"PROXY TCP6 2001:db8::1 ::1 5 6\r\n"


# ---------------------------------------------------------------- who may send a header

def test_allow_list():
    allow = AllowList("127.0.0.1, 10.0.0.0/8,2001:db8::/32")
    assert ("127.0.0.1", 5) in allow and ("10.9.8.7", 1) in allow and ("2001:db8::5", 1, 0, 0) in allow
    assert ("127.0.0.2", 5) not in allow and ("192.168.1.1", 1) not in allow and ("::1", 1, 0, 0) not in allow
    assert ("::ffff:10.1.2.3", 1, 0, 0) in allow          # IPv4 peers of a dual-stack listener
    assert "/run/app.sock" in allow and "" in allow       # Unix peers: the socket's permissions decide
    assert ("not-an-ip", 1) not in allow
    assert ("8.8.8.8", 1) in AllowList("*") and ("::1", 1) in AllowList(["*"])
    assert ("192.168.0.1", 1) in AllowList(["192.168.0.1/24"])  # host bits are forgiven
    with pytest.raises(ValueError, match="'10.0.0.300'"):
        AllowList("127.0.0.1,10.0.0.300")
    with pytest.raises(ValueError, match="empty"):
        AllowList(" , ")


# ---------------------------------------------------------------- HAProxy, the reference sender

needs_haproxy = pytest.mark.skipif(haproxy_missing() is not None, reason=haproxy_missing() or "")
PAYLOAD = b"first bytes from the client\r\n" * 3


def _through_haproxy(front: socket.socket, server_options: str, *, frontend_extra: str = "",
                     send: bytes = PAYLOAD, client_first: bytes = b"") -> tuple[bytes, object, object]:
    """Client -> HAProxy (bound on ``front``) -> capture server. Returns what the server
    received, the client's own address and the address it dialled."""
    with CaptureServer("127.0.0.1") as backend, HAProxy(f"""
frontend fe
    bind fd@{front.fileno()}{' accept-proxy' if client_first else ''}
    {frontend_extra}
    default_backend be
backend be
    server s1 {backend.address} {server_options}
""", pass_fds=[front]):
        dialled = front.getsockname()
        with client(dialled) as c:
            c.sendall(client_first + send)
            c.shutdown(socket.SHUT_WR)
            me = c.getsockname()
            received = backend.wait_connection()
    return received, me, dialled


@needs_haproxy
@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
@pytest.mark.parametrize("option, version", [("send-proxy", 1), ("send-proxy-v2", 2)])
def test_haproxy_send_proxy(host, option, version):
    with listening_socket(host) as front:
        received, me, dialled = _through_haproxy(front, option)
    h, rest = parse(received)
    assert h.version == version and h.command is Command.PROXY and h.proxied
    assert h.family == (socket.AF_INET6 if ":" in host else socket.AF_INET)
    assert h.source == (me[0], me[1])           # the client's real address
    assert h.destination == (dialled[0], dialled[1])   # HAProxy's frontend address
    assert rest == PAYLOAD


@needs_haproxy
def test_haproxy_v2_tlv_options_without_tls():
    """crc32c (verified by the parser), unique-id, and the ssl TLV of a plain connection."""
    with listening_socket("127.0.0.1") as front:
        received, me, dialled = _through_haproxy(
            front, "send-proxy-v2 proxy-v2-options crc32c,unique-id,ssl,cert-cn,ssl-cipher,cert-sig,cert-key",
            frontend_extra="unique-id-format nr-%ci-%cp")
    h, rest = parse(received)
    assert h.source == (me[0], me[1]) and h.destination == (dialled[0], dialled[1])
    assert h.crc32c is not None
    assert h.unique_id == f"nr-{me[0]}-{me[1]}".encode()
    assert h.ssl is not None and not h.ssl.ssl and h.ssl.tlvs == ()
    assert rest == PAYLOAD
    # flip one bit of the client address: the checksum HAProxy wrote no longer matches
    tampered = bytearray(received)
    tampered[16] ^= 0x01
    with pytest.raises(ProxyProtocolError, match="checksum mismatch"):
        parse(bytes(tampered))


@needs_haproxy
@pytest.mark.parametrize("version", [1, 2])
def test_haproxy_relays_a_header_we_encoded(version):
    """Our encoder -> HAProxy ``accept-proxy`` (it parses ours) -> ``send-proxy-v2`` with the
    authority TLV -> our parser: both directions against the reference implementation."""
    src, dst = ("203.0.113.7", 40123), ("198.51.100.9", 443)
    if version == 1:
        ours = encode_v1(src, dst)
    else:
        ours = encode_v2(src, dst, tlvs=[(PP2_TYPE_AUTHORITY, b"shop.example"), (0xE5, b"ignored")], crc=True)
    with listening_socket("127.0.0.1") as front:
        received, _, _ = _through_haproxy(front, "send-proxy-v2 proxy-v2-options authority,crc32c",
                                          client_first=ours)
    h, rest = parse(received)
    assert h.source == src and h.destination == dst
    assert h.authority == ("shop.example" if version == 2 else None)
    assert h.crc32c is not None and rest == PAYLOAD


@needs_haproxy
@pytest.mark.parametrize("option", ["send-proxy", "send-proxy-v2"])
def test_haproxy_unix_frontend_means_keep_the_real_peer(option, tmp_path):
    """A Unix client has no IP address: HAProxy sends v1 UNKNOWN or a v2 LOCAL header."""
    path = str(tmp_path / "front.sock")
    with listening_socket(path=path) as front:
        received, _, _ = _through_haproxy(front, option)
    h, rest = parse(received)
    assert not h.proxied and h.source is None
    if option == "send-proxy":
        assert received.startswith(b"PROXY UNKNOWN\r\n") and h.family is None
    else:
        assert h.command is Command.LOCAL
    assert rest == PAYLOAD


@needs_haproxy
def test_haproxy_tls_frontend_fills_the_ssl_tlvs(tmp_path):
    """A TLS frontend with a client certificate: PP2_TYPE_SSL with its sub-TLVs, ALPN, authority (SNI)."""
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    server_cert = ca.issue_cert("netreactor.test")
    client_cert = ca.issue_cert("client.netreactor.test", common_name="nr-client")
    pem = tmp_path / "front.pem"
    server_cert.private_key_and_cert_chain_pem.write_to_path(str(pem))
    ca_pem = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_pem))
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    client_cert.configure_cert(ctx)
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    with listening_socket("127.0.0.1") as front, CaptureServer("127.0.0.1") as backend, HAProxy(f"""
frontend fe
    bind fd@{front.fileno()} ssl crt {pem} ca-file {ca_pem} verify optional alpn h2,http/1.1
    default_backend be
backend be
    server s1 {backend.address} send-proxy-v2 proxy-v2-options ssl,cert-cn,ssl-cipher,cert-sig,cert-key,authority
""", pass_fds=[front]), client(front.getsockname()) as raw:
        tls = ctx.wrap_socket(raw, server_hostname="netreactor.test")
        tls.sendall(PAYLOAD)
        me, version, cipher = tls.getsockname(), tls.version(), tls.cipher()[0]
        assert tls.selected_alpn_protocol() == "h2"
        tls.shutdown(socket.SHUT_WR)  # a FIN (no close_notify): HAProxy passes the end on
        received = backend.wait_connection()
        tls.close()
    h, rest = parse(received)
    assert h.source == (me[0], me[1]) and rest == PAYLOAD
    assert h.alpn == b"h2" and h.authority == "netreactor.test"
    s = h.ssl
    assert s is not None and s.ssl and s.cert_in_connection and s.cert_in_session and s.verified
    assert s.version == version and s.cipher == cipher
    assert s.cn == "nr-client" and s.tlv(PP2_SUBTYPE_SSL_CN) == b"nr-client"
    assert s.sig_alg and s.key_alg  # e.g. "ECDSA-SHA256" and "EC256" for trustme's keys


# ---------------------------------------------------------------- nginx stream proxy_protocol

NGINX_STREAM = "/usr/lib/nginx/modules/ngx_stream_module.so"


def _nginx_missing() -> str | None:
    if shutil.which("nginx") is None:
        return "nginx is not installed (Debian package 'nginx')"
    if not os.path.exists(NGINX_STREAM):
        return f"nginx's stream module is not installed ({NGINX_STREAM}, Debian package 'libnginx-mod-stream')"
    return None


@pytest.mark.skipif(_nginx_missing() is not None, reason=_nginx_missing() or "")
def test_nginx_stream_proxy_protocol(tmp_path):
    with CaptureServer("127.0.0.1") as backend:
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        probe.close()  # nginx binds it next (it cannot inherit a socket the way HAProxy can)
        conf = tmp_path / "nginx.conf"
        pid = tmp_path / "nginx.pid"
        conf.write_text(f"""
load_module {NGINX_STREAM};
worker_processes 1;
pid {pid};
error_log {tmp_path}/error.log info;
events {{ worker_connections 64; }}
stream {{
    server {{
        listen 127.0.0.1:{port};
        proxy_pass {backend.address};
        proxy_protocol on;
    }}
}}
""")
        proc = subprocess.Popen(["nginx", "-e", f"{tmp_path}/error.log", "-p", str(tmp_path), "-c", str(conf),
                                 "-g", "daemon off;"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 10
            while not pid.exists():  # written once the listening sockets are bound
                assert proc.poll() is None, f"nginx exited: {proc.stdout.read().decode()}"
                assert time.monotonic() < deadline, "nginx did not start within 10 s"
                time.sleep(0.02)
            with client(("127.0.0.1", port)) as c:
                c.sendall(PAYLOAD)
                c.shutdown(socket.SHUT_WR)
                me = c.getsockname()
                received = backend.wait_connection()
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.communicate(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate(timeout=5)
    h, rest = parse(received)
    assert h.version == 1 and h.source == (me[0], me[1]) and h.destination == ("127.0.0.1", port)
    assert rest == PAYLOAD


def test_module_exports():
    for name in proxy.__all__:
        assert hasattr(proxy, name)
