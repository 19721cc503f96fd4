"""The PROXY protocol, versions 1 and 2, sans-IO: bytes in, a :class:`ProxyHeader` out.

A load balancer in TCP mode (HAProxy ``send-proxy`` / ``send-proxy-v2``, nginx
``proxy_protocol on``, cloud NLBs) prepends one header to each connection that
says who the client really was. The server reads it before anything else::

    parser = ProxyParser("auto")            # "v1", "v2" or "auto" (either, but one is required)
    try:
        header = parser.feed(data)          # None: the header is not complete yet
    except ProxyProtocolError as exc:       # not a valid header: refuse this connection
        ...
    if header is not None:
        if header.proxied:                  # else keep the real connection's addresses
            client, served = header.source, header.destination
        first_bytes = parser.rest           # the client's first application bytes

The rules, from HAProxy's specification (``doc/proxy-protocol.txt``, revision
2026/04/27; section numbers are the spec's):

* **One header, required, at the very start** (2). ``auto`` accepts either
  version, told apart by the first byte, but never "no header": the spec
  forbids guessing whether a header is present (2, 5), since that would let
  any client spoof its address. Who may send one is the server's
  configuration (:class:`AllowList`, gunicorn's ``--proxy-allow-from``).
* **Fail fast** (2.1: "abort the connection as soon as possible"). Every byte
  is checked as it arrives against what a valid header may still become, so a
  client that does not speak the protocol is refused at its first byte
  (``GET`` fails at ``G``), not after a timeout. Partial headers are waited for
  (the spec recommends tolerance; a slow sender is the caller's header timeout,
  which the spec wants at 3 s or more).
* **Version 1** (2.1): ``PROXY`` SP (``TCP4`` | ``TCP6`` | ``UNKNOWN``) and, but
  for UNKNOWN, SP src SP dst SP sport SP dport, then CRLF within 107 bytes.
  Exactly one space between fields; IPv4 as four decimal numbers 0..255
  without leading zeros; IPv6 in hexadecimal groups with at most one ``::``
  (the address must match the announced family); ports 0..65535 without
  leading zeros; a lone CR or LF is an error. After UNKNOWN anything up to the
  CRLF is ignored, and the real connection's addresses are kept.
* **Version 2** (2.2): the 12-byte signature, version 2 in the high nibble of
  byte 13 and command LOCAL (0) or PROXY (1) in its low nibble; family
  UNSPEC/INET/INET6/UNIX and protocol UNSPEC/STREAM/DGRAM in byte 14 (any other
  value is refused); the length of what follows in bytes 15-16. The length is
  checked against ``max_header`` as soon as it is known. Addresses take 12
  (INET), 36 (INET6), 216 (UNIX) or 0 (UNSPEC) bytes and a PROXY header whose
  length cannot hold its family's addresses is refused. LOCAL (a health check)
  and UNSPEC family or protocol mean "use the real connection's addresses";
  a LOCAL header's address block is skipped whatever its family says, and its
  TLVs are read only when they are well formed (2.2: LOCAL "must discard the
  protocol block").
* **TLVs** (2.2.1-2.2.8) fill the rest of the block exactly: a TLV that
  overruns it is an error. The raw list is kept in order (custom and unknown
  types included); accessors decode ALPN, AUTHORITY (UTF-8), CRC32C, UNIQUE_ID
  (128 bytes at most), NETNS and SSL (client flags, verify, and the sub-TLVs
  VERSION, CN, CIPHER, SIG_ALG, KEY_ALG, GROUP, SIG_SCHEME, CLIENT_CERT; the
  sub-TLVs must fill the SSL value exactly). NOOP is kept and ignored.
  String TLVs that are not valid UTF-8 are refused.
* **CRC32C** (2.2.3): when present it must be 4 bytes, and the CRC32c
  (Castagnoli, RFC 4960 appendix B) of the whole header with the checksum
  field zeroed must equal it, or the header is refused.

Bounds: a v1 header is at most 107 bytes (2.1); a v2 header is at most
``max_header`` bytes, by default :data:`DEFAULT_MAX_HEADER` (4 KiB): addresses
take 216 bytes at most and HAProxy's richest header (SSL TLV with CN, cipher
and algorithms, authority up to 255 bytes, unique ID up to 128) stays under
1 KiB, while the client-certificate sub-TLV added in 2026 carries a DER
certificate (1-2 KiB typically); 4 KiB fits those and keeps what an unfinished
header may hold per connection small. The parser never holds more than one
header's worth of bytes.

Addresses come out the way Python's socket module gives them: ``(host, port)``
for IPv4 and IPv6 (host in ``inet_ntop``'s text form, as ``getpeername()`` has it), ``str`` for a Unix path,
``bytes`` starting with NUL for a Linux abstract name.

:func:`encode_v1`, :func:`encode_v2` and :func:`encode_ssl` write headers, for
tests and for anyone writing a proxy.
"""

from __future__ import annotations

import enum
import ipaddress
import os
import socket
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import NoReturn

__all__ = [
    "DEFAULT_MAX_HEADER",
    "MODES",
    "PP2_CLIENT_CERT_CONN",
    "PP2_CLIENT_CERT_SESS",
    "PP2_CLIENT_SSL",
    "PP2_SUBTYPE_SSL_CIPHER",
    "PP2_SUBTYPE_SSL_CLIENT_CERT",
    "PP2_SUBTYPE_SSL_CN",
    "PP2_SUBTYPE_SSL_GROUP",
    "PP2_SUBTYPE_SSL_KEY_ALG",
    "PP2_SUBTYPE_SSL_SIG_ALG",
    "PP2_SUBTYPE_SSL_SIG_SCHEME",
    "PP2_SUBTYPE_SSL_VERSION",
    "PP2_TYPE_ALPN",
    "PP2_TYPE_AUTHORITY",
    "PP2_TYPE_CRC32C",
    "PP2_TYPE_NETNS",
    "PP2_TYPE_NOOP",
    "PP2_TYPE_SSL",
    "PP2_TYPE_UNIQUE_ID",
    "V1_MAX_LENGTH",
    "V2_SIGNATURE",
    "AllowList",
    "Command",
    "ProxyHeader",
    "ProxyParser",
    "ProxyProtocolError",
    "SSLInfo",
    "crc32c",
    "encode_ssl",
    "encode_v1",
    "encode_v2",
]

#: A socket address as Python's socket module gives it: ``(host, port)``, a Unix
#: path, or ``bytes`` for a Linux abstract name (leading NUL).
SockAddr = tuple[str, int] | str | bytes
Buffer = bytes | bytearray | memoryview

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
_V1_PREFIX = b"PROXY "
#: Longest v1 line, CRLF included (2.1: "PROXY UNKNOWN" with two full IPv6 addresses).
V1_MAX_LENGTH = 107
#: Default bound on a v2 header (16-byte fixed part included); see the module docstring.
DEFAULT_MAX_HEADER = 4096
_V2_FIXED = 16
# Smallest useful bound: the fixed part plus two Unix addresses.
_MIN_MAX_HEADER = _V2_FIXED + 216
_MAX_MAX_HEADER = _V2_FIXED + 0xFFFF
MODES = ("auto", "v1", "v2")

PP2_TYPE_ALPN = 0x01
PP2_TYPE_AUTHORITY = 0x02
PP2_TYPE_CRC32C = 0x03
PP2_TYPE_NOOP = 0x04
PP2_TYPE_UNIQUE_ID = 0x05
PP2_TYPE_SSL = 0x20
PP2_SUBTYPE_SSL_VERSION = 0x21
PP2_SUBTYPE_SSL_CN = 0x22
PP2_SUBTYPE_SSL_CIPHER = 0x23
PP2_SUBTYPE_SSL_SIG_ALG = 0x24
PP2_SUBTYPE_SSL_KEY_ALG = 0x25
PP2_SUBTYPE_SSL_GROUP = 0x26
PP2_SUBTYPE_SSL_SIG_SCHEME = 0x27
PP2_SUBTYPE_SSL_CLIENT_CERT = 0x28
PP2_TYPE_NETNS = 0x30
PP2_CLIENT_SSL = 0x01
PP2_CLIENT_CERT_CONN = 0x02
PP2_CLIENT_CERT_SESS = 0x04
_UNIQUE_ID_MAX = 128
_STRING_TLVS = (PP2_TYPE_AUTHORITY, PP2_TYPE_NETNS)
_SSL_STRING_SUBTLVS = (PP2_SUBTYPE_SSL_VERSION, PP2_SUBTYPE_SSL_CN, PP2_SUBTYPE_SSL_CIPHER,
                       PP2_SUBTYPE_SSL_SIG_ALG, PP2_SUBTYPE_SSL_KEY_ALG, PP2_SUBTYPE_SSL_GROUP,
                       PP2_SUBTYPE_SSL_SIG_SCHEME)

# v2 family nibble -> (socket family, address block size).
_V2_FAMILIES = {0x0: (None, 0), 0x1: (socket.AF_INET, 12), 0x2: (socket.AF_INET6, 36),
                0x3: (socket.AF_UNIX, 216)}
_V2_PROTOCOLS = {0x0: None, 0x1: socket.SOCK_STREAM, 0x2: socket.SOCK_DGRAM}
_UNIX_PATH = 108


class ProxyProtocolError(ValueError):
    """The bytes received are not (the start of) a valid PROXY protocol header."""


class Command(enum.IntEnum):
    """The v2 command. A v1 header is always PROXY."""

    LOCAL = 0
    PROXY = 1


TLVs = tuple[tuple[int, bytes], ...]


def _first(tlvs: TLVs, kind: int) -> bytes | None:
    for t, value in tlvs:
        if t == kind:
            return value
    return None


def _text(value: bytes | None) -> str | None:
    # The parser has checked these are UTF-8; "replace" only matters for
    # headers built by hand.
    return None if value is None else value.decode("utf-8", "replace")


@dataclass(frozen=True)
class SSLInfo:
    """The PP2_TYPE_SSL TLV (2.2.6): how the client reached the proxy.

    ``client`` holds the PP2_CLIENT_* bits; ``verify`` is zero when the client
    presented a certificate that verified. ``tlvs`` are the raw sub-TLVs.
    """

    client: int
    verify: int
    tlvs: TLVs = ()

    @property
    def ssl(self) -> bool:
        """The client connected over SSL/TLS."""
        return bool(self.client & PP2_CLIENT_SSL)

    @property
    def cert_in_connection(self) -> bool:
        return bool(self.client & PP2_CLIENT_CERT_CONN)

    @property
    def cert_in_session(self) -> bool:
        return bool(self.client & PP2_CLIENT_CERT_SESS)

    @property
    def verified(self) -> bool:
        """The client presented a certificate and it verified."""
        return bool(self.client & (PP2_CLIENT_CERT_CONN | PP2_CLIENT_CERT_SESS)) and self.verify == 0

    def tlv(self, kind: int) -> bytes | None:
        """The value of the first sub-TLV of type ``kind``, or None."""
        return _first(self.tlvs, kind)

    @property
    def version(self) -> str | None:
        """TLS version, e.g. ``"TLSv1.3"``."""
        return _text(self.tlv(PP2_SUBTYPE_SSL_VERSION))

    @property
    def cn(self) -> str | None:
        """Common Name of the client certificate's subject."""
        return _text(self.tlv(PP2_SUBTYPE_SSL_CN))

    @property
    def cipher(self) -> str | None:
        return _text(self.tlv(PP2_SUBTYPE_SSL_CIPHER))

    @property
    def sig_alg(self) -> str | None:
        """Signature algorithm of the frontend's certificate, e.g. ``"RSA-SHA256"``."""
        return _text(self.tlv(PP2_SUBTYPE_SSL_SIG_ALG))

    @property
    def key_alg(self) -> str | None:
        """Key algorithm of the frontend's certificate, e.g. ``"RSA2048"``."""
        return _text(self.tlv(PP2_SUBTYPE_SSL_KEY_ALG))

    @property
    def group(self) -> str | None:
        """Key exchange group, e.g. ``"secp256r1"``."""
        return _text(self.tlv(PP2_SUBTYPE_SSL_GROUP))

    @property
    def sig_scheme(self) -> str | None:
        return _text(self.tlv(PP2_SUBTYPE_SSL_SIG_SCHEME))

    @property
    def client_cert(self) -> bytes | None:
        """The client certificate, DER."""
        return self.tlv(PP2_SUBTYPE_SSL_CLIENT_CERT)


@dataclass(frozen=True)
class ProxyHeader:
    """One parsed header.

    ``family`` is ``socket.AF_INET``/``AF_INET6``/``AF_UNIX``, or None for v1
    UNKNOWN and v2 UNSPEC; ``protocol`` is ``socket.SOCK_STREAM``/``SOCK_DGRAM``
    or None. ``source`` is the client, ``destination`` the address it dialled
    (both None when not :attr:`proxied`). ``tlvs`` are v2's TLVs in order;
    ``length`` is how many bytes the header took on the wire.
    """

    version: int
    command: Command
    family: int | None
    protocol: int | None
    source: SockAddr | None
    destination: SockAddr | None
    tlvs: TLVs = ()
    length: int = 0

    @property
    def proxied(self) -> bool:
        """True when ``source``/``destination`` are the original connection's.
        False for LOCAL, v1 UNKNOWN and v2 UNSPEC: keep the real peer's addresses."""
        return self.command is Command.PROXY and self.source is not None

    def tlv(self, kind: int) -> bytes | None:
        """The value of the first TLV of type ``kind``, or None."""
        return _first(self.tlvs, kind)

    @property
    def alpn(self) -> bytes | None:
        """The ALPN protocol the client negotiated with the proxy (``b"h2"``)."""
        return self.tlv(PP2_TYPE_ALPN)

    @property
    def authority(self) -> str | None:
        """The host name the client asked for (TLS SNI, typically)."""
        return _text(self.tlv(PP2_TYPE_AUTHORITY))

    @property
    def crc32c(self) -> int | None:
        """The checksum the sender put in (already verified by the parser)."""
        value = self.tlv(PP2_TYPE_CRC32C)
        return None if value is None or len(value) != 4 else int.from_bytes(value, "big")

    @property
    def unique_id(self) -> bytes | None:
        """The proxy's opaque connection identifier."""
        return self.tlv(PP2_TYPE_UNIQUE_ID)

    @property
    def netns(self) -> str | None:
        """The network namespace the proxy accepted the connection in."""
        return _text(self.tlv(PP2_TYPE_NETNS))

    @property
    def ssl(self) -> SSLInfo | None:
        """The SSL TLV, or None when absent."""
        value = self.tlv(PP2_TYPE_SSL)
        if value is None:
            return None
        return _parse_ssl(value)


# --------------------------------------------------------------------------- CRC32c

def _crc32c_table() -> tuple[int, ...]:
    poly = 0x82F63B78  # Castagnoli, reflected
    table = []
    for i in range(256):
        crc = i
        for _ in range(8):
            crc = (crc >> 1) ^ poly if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_CRC_TABLE = _crc32c_table()


def crc32c(data: Buffer, crc: int = 0) -> int:
    """CRC32c (Castagnoli) of ``data``, continuing from ``crc`` (RFC 4960 appendix B)."""
    table = _CRC_TABLE
    crc ^= 0xFFFFFFFF
    for byte in bytes(data):
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


# --------------------------------------------------------------------------- v1 checks

_DIGITS = frozenset(b"0123456789")
_HEX_COLON_DOT = frozenset(b"0123456789abcdefABCDEF:.")
_V1_PROTOCOLS = (b"TCP4", b"TCP6", b"UNKNOWN")


def _show(data: Buffer, limit: int = 24) -> str:
    head = bytes(data[:limit])
    return repr(head) + ("..." if len(data) > limit else "")


def _ipv4_ok(tok: bytes, partial: bool) -> bool:
    """Canonical dotted quad (2.1: no leading zeros); ``partial``: a prefix of one."""
    parts = tok.split(b".")
    if len(parts) > 4 or (not partial and len(parts) != 4):
        return False
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if not part:
            if partial and last:
                continue  # "1.2." waits for the next octet
            return False
        if len(part) > 3 or not _DIGITS.issuperset(part) or (len(part) > 1 and part[0] == 48):
            return False
        if int(part) > 255:
            return False
    return True


def _ipv6_ok(tok: bytes, partial: bool) -> bool:
    # Longest textual form: eight full groups, or six and a dotted quad (45).
    if not tok or len(tok) > 45 or not _HEX_COLON_DOT.issuperset(tok):
        return partial and not tok
    if partial:
        return tok.count(b"::") <= 1 and b":::" not in tok
    try:
        ipaddress.IPv6Address(tok.decode("ascii"))
    except ValueError:
        return False
    return True


def _port_ok(tok: bytes, partial: bool) -> bool:
    if not tok:
        return partial
    if len(tok) > 5 or not _DIGITS.issuperset(tok) or (len(tok) > 1 and tok[0] == 48):
        return False
    return int(tok) <= 65535


def _v1_field_ok(index: int, tok: bytes, v6: bool, partial: bool) -> bool:
    """Field ``index`` after the protocol: 0 src, 1 dst, 2 sport, 3 dport."""
    if index < 2:
        return _ipv6_ok(tok, partial) if v6 else _ipv4_ok(tok, partial)
    return _port_ok(tok, partial)


def _v1_prefix_error(line: bytes) -> str | None:
    """Why ``line`` (no CRLF yet, possibly ending in CR) cannot start a v1 header, or None."""
    if b"\n" in line:
        return "a v1 header line has a LF without CR before it"
    cr = line.find(b"\r")
    if cr >= 0 and cr != len(line) - 1:
        return "a v1 header line has a CR not followed by LF"
    if cr >= 0:
        line = line[:-1]
    if len(line) < len(_V1_PREFIX):
        if cr < 0 and _V1_PREFIX.startswith(line):
            return None
        return f"not a PROXY v1 header: {_show(line)}"
    if not line.startswith(_V1_PREFIX):
        return f"not a PROXY v1 header: {_show(line)}"
    tokens = line[len(_V1_PREFIX):].split(b" ")
    proto = tokens[0]
    if len(tokens) == 1:
        if cr >= 0:
            return None if proto == b"UNKNOWN" else f"v1 header ends after protocol {_show(proto)}"
        if any(p.startswith(proto) for p in _V1_PROTOCOLS):
            return None
        return f"v1 header has unknown protocol {_show(proto)}; expected TCP4, TCP6 or UNKNOWN"
    if proto == b"UNKNOWN":
        return None  # 2.1: anything up to the CRLF is ignored
    if proto not in (b"TCP4", b"TCP6"):
        return f"v1 header has unknown protocol {_show(proto)}; expected TCP4, TCP6 or UNKNOWN"
    fields = tokens[1:]
    if len(fields) > 4:
        return "v1 header has more than four fields after the protocol"
    v6 = proto == b"TCP6"
    for i, tok in enumerate(fields):
        last = i == len(fields) - 1
        if not _v1_field_ok(i, tok, v6, partial=last and cr < 0):
            return _v1_field_error(i, tok, proto)
    if cr >= 0 and len(fields) != 4:
        return "v1 header line ends before its four address fields"
    return None


_V1_FIELD_NAMES = ("source address", "destination address", "source port", "destination port")


def _v1_field_error(index: int, tok: bytes, proto: bytes) -> str:
    what = _V1_FIELD_NAMES[index]
    if not tok:
        return f"v1 header has an empty {what} (fields are separated by exactly one space)"
    kind = proto.decode() + " " if index < 2 else ""
    return f"v1 header has an invalid {kind}{what} {_show(tok)}"


def _parse_v1_line(line: bytes, length: int) -> ProxyHeader:
    """``line``: the header without its CRLF."""
    error = _v1_prefix_error(line + b"\r")
    if error is not None:
        raise ProxyProtocolError(error)
    tokens = line[len(_V1_PREFIX):].split(b" ")
    if tokens[0] == b"UNKNOWN":
        return ProxyHeader(1, Command.PROXY, None, None, None, None, (), length)
    family = socket.AF_INET6 if tokens[0] == b"TCP6" else socket.AF_INET
    src, dst, sport, dport = (t.decode("ascii") for t in tokens[1:])
    if family == socket.AF_INET6:
        # The text getpeername() would give (IPv4-mapped addresses end in a dotted quad).
        src = socket.inet_ntop(family, socket.inet_pton(family, src))
        dst = socket.inet_ntop(family, socket.inet_pton(family, dst))
    return ProxyHeader(1, Command.PROXY, family, socket.SOCK_STREAM, (src, int(sport)),
                       (dst, int(dport)), (), length)


# --------------------------------------------------------------------------- v2 checks

def _v2_prefix_check(buf: Buffer, max_header: int) -> int | None:
    """Check what is known of a v2 header; return its total length once known."""
    n = min(len(buf), 12)
    if bytes(buf[:n]) != V2_SIGNATURE[:n]:
        return _raise(f"not a PROXY v2 header (bad signature): {_show(buf, 16)}")
    if len(buf) > 12:
        ver_cmd = buf[12]
        if ver_cmd >> 4 != 2:
            _raise(f"PROXY v2 header has version {ver_cmd >> 4}; only 2 is defined")
        if ver_cmd & 0xF not in (0, 1):
            _raise(f"PROXY v2 header has command {ver_cmd & 0xF}; expected 0 (LOCAL) or 1 (PROXY)")
    if len(buf) > 13:
        fam = buf[13]
        if fam >> 4 not in _V2_FAMILIES:
            _raise(f"PROXY v2 header has address family {fam >> 4}; expected 0 to 3")
        if fam & 0xF not in _V2_PROTOCOLS:
            _raise(f"PROXY v2 header has transport protocol {fam & 0xF}; expected 0 to 2")
    if len(buf) < _V2_FIXED:
        return None
    total = _V2_FIXED + int.from_bytes(buf[14:16], "big")
    if total > max_header:
        _raise(f"PROXY v2 header of {total} bytes is over the {max_header}-byte limit")
    _family, size = _V2_FAMILIES[buf[13] >> 4]
    if buf[12] & 0xF == Command.PROXY and total - _V2_FIXED < size:
        _raise(f"PROXY v2 header's {total - _V2_FIXED}-byte address block is too short for "
               f"its family (needs {size})")
    return total


def _raise(message: str) -> NoReturn:
    raise ProxyProtocolError(message)


def _unix_addr(raw: bytes) -> SockAddr:
    if not raw.strip(b"\0"):
        return ""  # unnamed, as getpeername() gives it
    if raw[:1] == b"\0":
        return b"\0" + raw[1:].rstrip(b"\0")  # abstract name (its length is not carried)
    return os.fsdecode(raw.split(b"\0", 1)[0])


def _split_tlvs(block: bytes, where: str) -> TLVs:
    out = []
    pos = 0
    n = len(block)
    while pos < n:
        if n - pos < 3:
            _raise(f"{where}: {n - pos} stray byte(s) where a TLV should start")
        kind = block[pos]
        size = (block[pos + 1] << 8) | block[pos + 2]
        end = pos + 3 + size
        if end > n:
            _raise(f"{where}: TLV of type {kind:#04x} announces {size} bytes, only {n - pos - 3} left")
        out.append((kind, block[pos + 3:end]))
        pos = end
    return tuple(out)


def _check_text(value: bytes, what: str) -> None:
    try:
        value.decode("utf-8")
    except UnicodeDecodeError:
        _raise(f"PROXY v2 {what} TLV is not valid UTF-8: {_show(value)}")


def _parse_ssl(value: bytes) -> SSLInfo:
    if len(value) < 5:
        _raise(f"PROXY v2 SSL TLV is {len(value)} bytes; it needs at least 5 (client, verify)")
    subs = _split_tlvs(value[5:], "PROXY v2 SSL TLV")
    for kind, sub in subs:
        if kind in _SSL_STRING_SUBTLVS:
            _check_text(sub, f"SSL sub-TLV {kind:#04x}")
    return SSLInfo(value[0], int.from_bytes(value[1:5], "big"), subs)


def _parse_v2(header: bytes) -> ProxyHeader:
    total = len(header)
    command = Command(header[12] & 0xF)
    family, size = _V2_FAMILIES[header[13] >> 4]
    protocol = _V2_PROTOCOLS[header[13] & 0xF]
    if total - _V2_FIXED < size:
        # Only a LOCAL header gets here (checked earlier): its address block is skipped whole.
        return ProxyHeader(2, command, None, None, None, None, (), total)
    try:
        tlvs = _split_tlvs(header[_V2_FIXED + size:], "PROXY v2 header")
    except ProxyProtocolError:
        if command is Command.PROXY:
            raise
        tlvs = ()  # LOCAL: the whole block may be discarded (2.2); only well-formed TLVs are read
    if sum(1 for kind, _ in tlvs if kind == PP2_TYPE_CRC32C) > 1:
        _raise("PROXY v2 header has more than one CRC32C TLV")
    for kind, value in tlvs:
        if kind == PP2_TYPE_CRC32C:
            _check_crc(header, tlvs, value)
        elif kind in _STRING_TLVS:
            _check_text(value, "AUTHORITY" if kind == PP2_TYPE_AUTHORITY else "NETNS")
        elif kind == PP2_TYPE_UNIQUE_ID and len(value) > _UNIQUE_ID_MAX:
            _raise(f"PROXY v2 UNIQUE_ID TLV is {len(value)} bytes; at most {_UNIQUE_ID_MAX} are allowed")
        elif kind == PP2_TYPE_SSL:
            _parse_ssl(value)
    if command is Command.LOCAL or family is None or protocol is None:
        return ProxyHeader(2, command, None, None, None, None, tlvs, total)
    block = header[_V2_FIXED:_V2_FIXED + size]
    source: SockAddr
    dest: SockAddr
    if family == socket.AF_UNIX:
        source, dest = _unix_addr(block[:_UNIX_PATH]), _unix_addr(block[_UNIX_PATH:])
    else:
        width = 4 if family == socket.AF_INET else 16
        sport, dport = struct.unpack_from("!HH", block, 2 * width)
        source = (socket.inet_ntop(family, block[:width]), sport)
        dest = (socket.inet_ntop(family, block[width:2 * width]), dport)
    return ProxyHeader(2, command, family, protocol, source, dest, tlvs, total)


def _check_crc(header: bytes, tlvs: TLVs, value: bytes) -> None:
    if len(value) != 4:
        _raise(f"PROXY v2 CRC32C TLV is {len(value)} bytes; it must be 4")
    # Locate the checksum field to zero it: the TLVs were split from the end of the header.
    pos = len(header)
    for kind, v in reversed(tlvs):
        pos -= len(v) + 3
        if kind == PP2_TYPE_CRC32C:
            break
    zeroed = header[:pos + 3] + b"\0\0\0\0" + header[pos + 7:]
    expected = int.from_bytes(value, "big")
    actual = crc32c(zeroed)
    if actual != expected:
        _raise(f"PROXY v2 header checksum mismatch: CRC32C TLV says {expected:#010x}, "
               f"the header's is {actual:#010x}")


# --------------------------------------------------------------------------- parser

class ProxyParser:
    """Incremental PROXY protocol header parser; see the module docstring.

    ``mode``: ``"v1"``, ``"v2"``, or ``"auto"`` (either version; one is required).
    ``max_header``: largest v2 header accepted, in bytes (232 .. 65551).

    :meth:`feed` returns None until the header is complete, then the
    :class:`ProxyHeader` (also in :attr:`header`); :attr:`rest` then holds the
    bytes that followed it. After a :class:`ProxyProtocolError` the parser is
    spent: further feeds raise it again.
    """

    __slots__ = ("_buf", "_error", "_total", "header", "max_header", "mode", "rest")

    def __init__(self, mode: str = "auto", *, max_header: int = DEFAULT_MAX_HEADER) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        if isinstance(max_header, bool) or not isinstance(max_header, int) or \
                not _MIN_MAX_HEADER <= max_header <= _MAX_MAX_HEADER:
            raise ValueError(f"max_header must be an integer in {_MIN_MAX_HEADER}..{_MAX_MAX_HEADER}, "
                             f"got {max_header!r}")
        self.mode = mode
        self.max_header = max_header
        #: The header, once complete.
        self.header: ProxyHeader | None = None
        #: The bytes received after the header (the client's first bytes), once complete.
        self.rest = b""
        self._buf = bytearray()
        self._total = 0  # v2: the header's length once known
        self._error: ProxyProtocolError | None = None

    @property
    def buffered(self) -> int:
        """Bytes held of the unfinished header."""
        return len(self._buf)

    def feed(self, data: Buffer) -> ProxyHeader | None:
        """Consume ``data``; return the header once complete. Raises :class:`ProxyProtocolError`."""
        if self.header is not None:
            raise RuntimeError("the PROXY header is complete; the bytes after it are the application's")
        if self._error is not None:
            raise ProxyProtocolError(str(self._error))
        if self._buf:
            self._buf += data
            buf: Buffer = self._buf
        else:
            buf = data
        try:
            header, end = self._parse(buf)
        except ProxyProtocolError as exc:
            self._error = exc
            self._buf = bytearray()
            raise
        if header is None:
            if buf is not self._buf:
                self._buf = bytearray(buf)
            return None
        self.header = header
        self.rest = bytes(buf[end:])
        self._buf = bytearray()
        return header

    def _parse(self, buf: Buffer) -> tuple[ProxyHeader | None, int]:
        if not buf:
            return None, 0
        first = buf[0]
        mode = self.mode
        if first == 0x50 and mode != "v2":  # "P"
            return self._v1(buf)
        if first == 0x0D and mode != "v1":
            return self._v2(buf)
        wanted = {"v1": "a PROXY v1 header ('PROXY ...')",
                  "v2": "a PROXY v2 header (its binary signature)",
                  "auto": "a PROXY protocol header (v1 'PROXY ...' or the v2 signature)"}[mode]
        raise ProxyProtocolError(f"expected {wanted}, got {_show(buf)}")

    def _v1(self, buf: Buffer) -> tuple[ProxyHeader | None, int]:
        head = bytes(buf[:V1_MAX_LENGTH])
        end = head.find(b"\r\n")
        if end < 0:
            error = _v1_prefix_error(head)
            if error is not None:
                raise ProxyProtocolError(error)
            if len(head) >= V1_MAX_LENGTH:
                raise ProxyProtocolError(f"PROXY v1 header has no CRLF within {V1_MAX_LENGTH} bytes")
            return None, 0
        return _parse_v1_line(head[:end], end + 2), end + 2

    def _v2(self, buf: Buffer) -> tuple[ProxyHeader | None, int]:
        total = self._total
        if not total:
            known = _v2_prefix_check(buf, self.max_header)
            if known is None:
                return None, 0
            total = self._total = known
        if len(buf) < total:
            return None, 0
        return _parse_v2(bytes(buf[:total])), total


# --------------------------------------------------------------------------- who may send it

class AllowList:
    """Peers allowed to send a PROXY header: addresses and CIDR networks, or ``"*"``.

    ``AllowList("127.0.0.1, 10.0.0.0/8")``, ``AllowList(["::1", "192.168.0.0/16"])``.
    Unix-socket peers (no IP address) are always allowed, as in gunicorn: whoever
    can reach the socket file is trusted by its permissions. A bad entry is a
    ``ValueError`` naming it.
    """

    __slots__ = ("any", "networks")

    def __init__(self, spec: str | Iterable[str]) -> None:
        items = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else [s.strip() for s in spec]
        items = [s for s in items if s]
        if not items:
            raise ValueError("proxy_allow_from is empty; give addresses or networks, or '*' for any")
        self.any = "*" in items
        nets: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        for item in items:
            if item == "*":
                continue
            try:
                nets.append(ipaddress.ip_network(item, strict=False))
            except ValueError:
                raise ValueError(f"proxy_allow_from: {item!r} is not an IP address or network") from None
        self.networks = tuple(nets)

    def allows(self, peer: object) -> bool:
        """Whether ``peer`` (a socket's peer address) may send a header."""
        if self.any or not isinstance(peer, tuple):
            return True
        try:
            ip = ipaddress.ip_address(peer[0])
        except (ValueError, IndexError, TypeError):
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            mapped = ip.ipv4_mapped
            return any(mapped in net for net in self.networks if net.version == 4) or \
                any(ip in net for net in self.networks if net.version == 6)
        return any(ip in net for net in self.networks if net.version == ip.version)

    def __contains__(self, peer: object) -> bool:
        return self.allows(peer)

    def __repr__(self) -> str:
        items = (["*"] if self.any else []) + [str(n) for n in self.networks]
        return f"AllowList({', '.join(items)!r})"


# --------------------------------------------------------------------------- encoders

def _ip_family(addr: object, what: str) -> int:
    if not (isinstance(addr, tuple) and len(addr) >= 2 and isinstance(addr[0], str)
            and isinstance(addr[1], int) and not isinstance(addr[1], bool)):
        raise ValueError(f"{what} must be (host, port), got {addr!r}")
    if not 0 <= addr[1] <= 65535:
        raise ValueError(f"{what} port {addr[1]} is out of range 0..65535")
    try:
        ip = ipaddress.ip_address(addr[0])
    except ValueError:
        raise ValueError(f"{what} host {addr[0]!r} is not an IP address") from None
    return socket.AF_INET if ip.version == 4 else socket.AF_INET6


def _family_of(source: object, destination: object) -> int:
    if isinstance(source, (str, bytes)) or isinstance(destination, (str, bytes)):
        if not (isinstance(source, (str, bytes)) and isinstance(destination, (str, bytes))):
            raise ValueError(
                "source and destination must both be Unix addresses, or both (host, port)")
        return socket.AF_UNIX
    family = _ip_family(source, "source")
    if _ip_family(destination, "destination") != family:
        raise ValueError("source and destination must be of the same address family")
    return family


def encode_v1(source: tuple[str, int] | None = None,
              destination: tuple[str, int] | None = None) -> bytes:
    """A v1 header line: ``PROXY TCP4|TCP6 src dst sport dport\\r\\n``, or
    ``PROXY UNKNOWN\\r\\n`` when no addresses are given."""
    if source is None and destination is None:
        return b"PROXY UNKNOWN\r\n"
    family = _family_of(source, destination)
    if family == socket.AF_UNIX:
        raise ValueError("PROXY v1 carries IPv4 and IPv6 only; use UNKNOWN (no addresses) for Unix")
    assert isinstance(source, tuple) and isinstance(destination, tuple)
    src = socket.inet_ntop(family, socket.inet_pton(family, source[0]))
    dst = socket.inet_ntop(family, socket.inet_pton(family, destination[0]))
    proto = "TCP4" if family == socket.AF_INET else "TCP6"
    return f"PROXY {proto} {src} {dst} {source[1]} {destination[1]}\r\n".encode("ascii")


def _tlv(kind: int, value: bytes) -> bytes:
    if not 0 <= kind <= 255:
        raise ValueError(f"TLV type {kind!r} is not a byte")
    if len(value) > 0xFFFF:
        raise ValueError(f"TLV of type {kind:#04x} is {len(value)} bytes; at most 65535 fit")
    return bytes((kind,)) + len(value).to_bytes(2, "big") + value


def _unix_raw(addr: str | bytes, what: str) -> bytes:
    raw = os.fsencode(addr) if isinstance(addr, str) else addr
    if len(raw) > _UNIX_PATH:
        raise ValueError(f"{what} Unix address is {len(raw)} bytes; at most {_UNIX_PATH} fit")
    return raw.ljust(_UNIX_PATH, b"\0")


def encode_v2(source: SockAddr | None = None, destination: SockAddr | None = None, *,
              command: Command = Command.PROXY, protocol: int = socket.SOCK_STREAM,
              tlvs: Sequence[tuple[int, bytes]] = (), crc: bool = False) -> bytes:
    """A v2 header.

    With addresses (both ``(host, port)`` of one family, or both Unix paths), a
    PROXY header of that family; without, an UNSPEC one (use
    ``command=Command.LOCAL`` for a health check). ``tlvs`` are written in
    order; ``crc=True`` appends a CRC32C TLV holding the header's checksum.
    """
    if (source is None) != (destination is None):
        raise ValueError("give both source and destination, or neither")
    if protocol not in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        raise ValueError(f"protocol must be socket.SOCK_STREAM or socket.SOCK_DGRAM, got {protocol!r}")
    command = Command(command)
    if command is Command.LOCAL and source is not None:
        raise ValueError("a LOCAL header carries no addresses (the receiver keeps the real ones)")
    if source is None:
        fam_byte = 0x00
        block = b""
    else:
        family = _family_of(source, destination)
        proto_nibble = 0x1 if protocol == socket.SOCK_STREAM else 0x2
        if family == socket.AF_UNIX:
            assert isinstance(source, (str, bytes)) and isinstance(destination, (str, bytes))
            fam_byte = 0x30 | proto_nibble
            block = _unix_raw(source, "source") + _unix_raw(destination, "destination")
        else:
            assert isinstance(source, tuple) and isinstance(destination, tuple)
            fam_byte = (0x10 if family == socket.AF_INET else 0x20) | proto_nibble
            block = (socket.inet_pton(family, source[0]) + socket.inet_pton(family, destination[0])
                     + struct.pack("!HH", source[1], destination[1]))
    body = block + b"".join(_tlv(kind, bytes(value)) for kind, value in tlvs)
    if crc:
        body += _tlv(PP2_TYPE_CRC32C, b"\0\0\0\0")
    if len(body) > 0xFFFF:
        raise ValueError(f"PROXY v2 header body is {len(body)} bytes; at most 65535 fit")
    header = V2_SIGNATURE + bytes((0x20 | command, fam_byte)) + len(body).to_bytes(2, "big") + body
    if crc:
        header = header[:-4] + crc32c(header).to_bytes(4, "big")
    return header


def encode_ssl(client: int = PP2_CLIENT_SSL, verify: int = 0, *, version: str | None = None,
               cn: str | None = None, cipher: str | None = None,
               sig_alg: str | None = None, key_alg: str | None = None,
               group: str | None = None, sig_scheme: str | None = None,
               client_cert: bytes | None = None,
               extra: Sequence[tuple[int, bytes]] = ()) -> bytes:
    """The value of a PP2_TYPE_SSL TLV (pass it as ``(PP2_TYPE_SSL, value)`` to :func:`encode_v2`)."""
    if not 0 <= client <= 255:
        raise ValueError(f"client flags {client!r} are not a byte")
    if not 0 <= verify <= 0xFFFFFFFF:
        raise ValueError(f"verify {verify!r} is not a 32-bit value")
    subs: list[tuple[int, bytes]] = []
    for kind, text in ((PP2_SUBTYPE_SSL_VERSION, version), (PP2_SUBTYPE_SSL_CN, cn),
                       (PP2_SUBTYPE_SSL_CIPHER, cipher), (PP2_SUBTYPE_SSL_SIG_ALG, sig_alg),
                       (PP2_SUBTYPE_SSL_KEY_ALG, key_alg), (PP2_SUBTYPE_SSL_GROUP, group),
                       (PP2_SUBTYPE_SSL_SIG_SCHEME, sig_scheme)):
        if text is not None:
            subs.append((kind, text.encode("utf-8")))
    if client_cert is not None:
        subs.append((PP2_SUBTYPE_SSL_CLIENT_CERT, bytes(client_cert)))
    subs.extend(extra)
    return bytes((client,)) + verify.to_bytes(4, "big") + b"".join(_tlv(k, v) for k, v in subs)
