"""TLS: the contexts netreactor recommends, and what a TLS connection tells its handler.

* :func:`server_context` and :func:`client_context` build :class:`ssl.SSLContext`
  objects with secure defaults (TLS 1.2 at least, no compression, renegotiation
  refused) and turn every configuration mistake into a :class:`ValueError` that
  names the file or the parameter, before anything is served.
* :class:`TLSInfo` is what ``conn.tls`` returns on a TLS connection: version,
  cipher, ALPN protocol, SNI server name, peer certificate.
* :func:`client_hello_server_name` reads the SNI name out of a ClientHello's
  bytes (sans-IO), which is how the transport learns it per connection.

Why the server name is parsed rather than taken from ``sni_callback``: on the
server side, Python exposes SNI only through ``SSLContext.sni_callback``,
which is per *context*.  Capturing the name with it means writing into the
context the user handed over (overwriting or chaining their own callback,
and changing a context that may be live, shared with other servers, or about
to be replaced by ``engine.set_tls``), and Python has no way to copy an
``SSLContext`` so as to install it on a private one instead.  The transport
reads the ciphertext itself anyway (an ``SSLObject`` over memory BIOs; with an
``SSLSocket`` it would ``recv(MSG_PEEK)`` before the first handshake step),
so it feeds the first bytes of each connection to
:func:`client_hello_server_name` until it answers, at most
:data:`CLIENT_HELLO_LIMIT` bytes, and builds :class:`TLSInfo` with that name
once the handshake is done.  The name is the one the client sent; OpenSSL
still does all the validation.  Contexts are never mutated after they are
built: ``engine.set_tls(new_context)`` swaps in a new one for new connections.

CPython sets ``OP_IGNORE_UNEXPECTED_EOF`` on every context (OpenSSL 3 then
reports a TCP EOF without close_notify as a clean close); these helpers keep
that default, because the transport sees the socket's EOF itself and tells a
truncated stream from a close_notify without OpenSSL's help.
"""

from __future__ import annotations

import os
import re
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

__all__ = [
    "CLIENT_HELLO_LIMIT",
    "TLSInfo",
    "client_context",
    "client_hello_server_name",
    "server_context",
]

PathLike: TypeAlias = "str | os.PathLike[str]"
Password: TypeAlias = "str | bytes | bytearray | Callable[[], str | bytes | bytearray]"

#: Bytes of a connection's start searched for the ClientHello (records of at most
#: 16 KiB; a ClientHello with post-quantum key shares is ~2 KB).
CLIENT_HELLO_LIMIT = 16 * 1024 + 5

_CERT_BLOCK = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.DOTALL)
_KEY_BLOCK = re.compile(rb"-----BEGIN ([A-Z ]*)PRIVATE KEY-----")


# ---------------------------------------------------------------------------- contexts


def server_context(certfile: PathLike, keyfile: PathLike | None = None, *,
                   password: Password | None = None, ca_certs: PathLike | None = None,
                   verify_client: bool = False, alpn: Sequence[str] = (),
                   ciphers: str | None = None) -> ssl.SSLContext:
    """A server :class:`ssl.SSLContext` with secure defaults.

    ``certfile``: the certificate chain (PEM, leaf first); ``keyfile``: its
    private key (PEM; ``None`` when it is in ``certfile``), decrypted with
    ``password`` (str, bytes, or a callable returning one) if it is encrypted.
    ``ca_certs`` (a PEM file or a directory of hashed certificates): the CAs
    client certificates must chain to; with ``verify_client=True`` a client
    must present such a certificate, without it a certificate is optional (but
    verified when presented).  ``alpn``: protocols the server accepts, in its
    order of preference (``("h2", "http/1.1")``).  ``ciphers``: an OpenSSL
    cipher string for TLS 1.2 (TLS 1.3's suites are OpenSSL's defaults).

    Defaults: TLS 1.2 minimum, compression off, renegotiation refused, the
    server's cipher order, fresh (EC)DHE keys per handshake.

    Raises :class:`ValueError` naming the culprit for: a certificate or key
    file that cannot be read or holds no certificate / key, a key that does not
    match the certificate, an encrypted key without ``password`` or with a wrong
    one, a bad ``ca_certs``, ``verify_client`` without ``ca_certs``, a cipher
    string OpenSSL rejects, a bad ``alpn`` list.
    """
    if verify_client and ca_certs is None:
        raise ValueError("verify_client=True needs ca_certs: the CAs client certificates must "
                         "chain to")
    protocols = _check_alpn(alpn)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _harden(ctx)
    ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_SINGLE_ECDH_USE | ssl.OP_SINGLE_DH_USE
    _load_chain(ctx, certfile, keyfile, password)
    if ca_certs is not None:
        _load_cas(ctx, ca_certs, "ca_certs")
        ctx.verify_mode = ssl.CERT_REQUIRED if verify_client else ssl.CERT_OPTIONAL
    _finish(ctx, ciphers, protocols)
    return ctx


def client_context(cafile: PathLike | None = None, *, certfile: PathLike | None = None,
                   keyfile: PathLike | None = None, password: Password | None = None,
                   alpn: Sequence[str] = (), ciphers: str | None = None) -> ssl.SSLContext:
    """A client :class:`ssl.SSLContext`: ``ssl.create_default_context()``'s verification.

    The server's certificate must chain to the system's CAs, or to ``cafile``
    alone when given (a PEM file or a directory), and match the host name
    dialled (``check_hostname`` on).  ``certfile``/``keyfile``/``password``: a
    client certificate for mutual TLS.  ``alpn``: protocols to offer, in order.
    ``ciphers``: an OpenSSL cipher string for TLS 1.2.  TLS 1.2 minimum,
    compression off, renegotiation refused.

    Raises :class:`ValueError` naming the culprit, as :func:`server_context` does.
    """
    protocols = _check_alpn(alpn)
    if cafile is None:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    else:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verify_mode REQUIRED, check_hostname on
        _load_cas(ctx, cafile, "cafile")
    _harden(ctx)
    if certfile is not None:
        _load_chain(ctx, certfile, keyfile, password)
    elif keyfile is not None:
        raise ValueError(f"keyfile={os.fspath(keyfile)!r} needs certfile, the certificate it "
                         "belongs to")
    _finish(ctx, ciphers, protocols)
    return ctx


def _harden(ctx: ssl.SSLContext) -> None:
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION


def _finish(ctx: ssl.SSLContext, ciphers: str | None, protocols: list[str]) -> None:
    if ciphers is not None:
        if not isinstance(ciphers, str) or not ciphers.strip():
            raise ValueError(f"ciphers={ciphers!r}: an OpenSSL cipher string is expected")
        try:
            ctx.set_ciphers(ciphers)
        except ssl.SSLError:
            raise ValueError(f"ciphers={ciphers!r}: OpenSSL selects no cipher from it") from None
    if protocols:
        ctx.set_alpn_protocols(protocols)


def _check_alpn(alpn: Sequence[str]) -> list[str]:
    """The ALPN list, checked: names of 1 to 255 ASCII bytes, no duplicates."""
    if isinstance(alpn, (str, bytes)):
        # A str is iterable: "h2" would become ["h", "2"]. (ValueError: the contract says so.)
        raise ValueError(f"alpn={alpn!r}: a list of protocol names is expected, e.g. "
                         f"[{alpn!r}]")
    try:
        names = list(alpn)
    except TypeError:
        raise ValueError(f"alpn={alpn!r}: a list of protocol names is expected") from None
    for name in names:
        if not isinstance(name, str) or not name or not name.isascii() or len(name) > 255:
            raise ValueError(f"alpn: {name!r} is not a protocol name (1 to 255 ASCII "
                             "characters, e.g. 'h2', 'http/1.1')")
    if len(set(names)) != len(names):
        raise ValueError(f"alpn={names!r}: a protocol is listed twice")
    return names


def _read(path: PathLike, what: str) -> bytes:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{what} must be a path, not {type(path).__name__}")
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise ValueError(f"{what} {os.fspath(path)!r} cannot be read: {e.strerror or e}") from None


def _load_chain(ctx: ssl.SSLContext, certfile: PathLike, keyfile: PathLike | None,
                password: Password | None) -> None:
    """load_cert_chain, with a ValueError naming the file at fault."""
    cert_pem = _read(certfile, "certfile")
    cert_name = os.fspath(certfile)
    blocks = _CERT_BLOCK.findall(cert_pem)
    try:
        if not blocks:
            raise ssl.SSLError("no certificate")
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(
            cadata=b"\n".join(blocks).decode("ascii"))
    except (ssl.SSLError, UnicodeDecodeError):
        raise ValueError(f"certfile {cert_name!r} holds no PEM certificate") from None
    key_pem = _read(keyfile, "keyfile") if keyfile is not None else cert_pem
    key_name = os.fspath(keyfile) if keyfile is not None else cert_name
    key_what = "keyfile" if keyfile is not None else "certfile"
    found = _KEY_BLOCK.search(key_pem)
    if found is None:
        raise ValueError(f"{key_what} {key_name!r} holds no PEM private key"
                         + ("" if keyfile is not None else " (give keyfile=)"))
    encrypted = found.group(1) == b"ENCRYPTED " or b"Proc-Type: 4,ENCRYPTED" in key_pem

    def no_password() -> bytes:
        # Without this OpenSSL would prompt on the terminal: a server must not.
        raise ValueError(f"{key_what} {key_name!r} is encrypted: give password=")

    pw: Any = no_password if password is None else password
    try:
        ctx.load_cert_chain(certfile, keyfile, pw)
    except ssl.SSLError as e:
        if getattr(e, "reason", None) == "KEY_VALUES_MISMATCH":
            raise ValueError(f"the private key in {key_name!r} does not match the certificate "
                             f"in {cert_name!r}") from None
        if encrypted and password is not None:
            raise ValueError(f"wrong password for {key_what} {key_name!r}") from None
        raise ValueError(f"{key_what} {key_name!r} holds no usable PEM private key "
                         f"({e.reason or e})") from None


def _load_cas(ctx: ssl.SSLContext, where: PathLike, what: str) -> None:
    if not isinstance(where, (str, os.PathLike)):
        raise TypeError(f"{what} must be a path, not {type(where).__name__}")
    name = os.fspath(where)
    try:
        if os.path.isdir(where):
            ctx.load_verify_locations(capath=where)
        else:
            _read(where, what)
            ctx.load_verify_locations(cafile=where)
    except ssl.SSLError:
        raise ValueError(f"{what} {name!r} holds no PEM CA certificate") from None
    except OSError as e:
        raise ValueError(f"{what} {name!r} cannot be read: {e.strerror or e}") from None


# ---------------------------------------------------------------------------- the record


@dataclass(frozen=True)
class TLSInfo:
    """What ``conn.tls`` returns on a TLS connection once its handshake is done.

    ``version``: "TLSv1.3" or "TLSv1.2"; ``cipher``: the suite's OpenSSL name
    and ``cipher_bits`` its secret bits; ``alpn_protocol``: the protocol
    agreed, or None; ``server_name``: the SNI name (server side: the one the
    client asked for, None if it sent none; client side: the one sent);
    ``peer_certificate``: the peer's certificate as :meth:`ssl.SSLSocket.getpeercert`
    decodes it, only when it was verified (else None), and
    ``peer_certificate_der`` the raw DER whenever the peer sent one;
    ``session_reused``: the handshake resumed a session.
    """

    version: str
    cipher: str
    cipher_bits: int
    alpn_protocol: str | None
    server_name: str | None
    peer_certificate: dict[str, Any] | None
    peer_certificate_der: bytes | None
    server_side: bool
    session_reused: bool

    @classmethod
    def from_ssl(cls, obj: ssl.SSLObject | ssl.SSLSocket,
                 server_name: str | None = None) -> TLSInfo:
        """Read a completed handshake off an ``SSLObject`` or ``SSLSocket``.

        ``server_name``: on the server side, the SNI name the transport
        captured (see :func:`client_hello_server_name`); the client side
        knows its own.
        """
        suite = obj.cipher()
        version = obj.version()
        if suite is None or version is None:
            raise ValueError("the TLS handshake is not complete: no version or cipher yet")
        if not obj.server_side:
            server_name = obj.server_hostname
        decoded = obj.getpeercert()
        return cls(version=version, cipher=suite[0], cipher_bits=suite[2],
                   alpn_protocol=obj.selected_alpn_protocol(), server_name=server_name,
                   peer_certificate=decoded or None,
                   peer_certificate_der=obj.getpeercert(binary_form=True),
                   server_side=obj.server_side, session_reused=bool(obj.session_reused))


# ---------------------------------------------------------------------------- SNI


class _Incomplete(Exception):
    pass


def client_hello_server_name(data: bytes) -> tuple[bool, str | None]:
    """The SNI host name in the ClientHello that starts ``data``: (complete, name).

    ``complete`` is False while ``data`` holds only the start of the
    ClientHello: call again with more bytes.  Once it is True, ``name`` is the
    ``host_name`` of the server_name extension, or None when the client sent
    none, or when ``data`` is no TLS ClientHello at all (OpenSSL will say why;
    this only reads).  The message may span several records (RFC 8446 5.1);
    past :data:`CLIENT_HELLO_LIMIT` bytes the answer is (True, None).
    """
    try:
        hello = _client_hello(memoryview(data)[:CLIENT_HELLO_LIMIT])
    except _Incomplete:
        if len(data) >= CLIENT_HELLO_LIMIT:
            return True, None
        return False, None
    except (ValueError, IndexError):
        return True, None
    return True, _sni(hello)


def _client_hello(data: memoryview) -> memoryview:
    """The ClientHello body, reassembled from the handshake records at the start of ``data``."""
    payload = bytearray()
    pos = 0
    while True:
        if len(data) - pos < 5:
            raise _Incomplete
        if data[pos] != 22 or data[pos + 1] != 3:  # handshake record, TLS major version 3
            raise ValueError("not a TLS handshake record")
        length = int.from_bytes(data[pos + 3:pos + 5], "big")
        if len(data) - pos - 5 < length:
            raise _Incomplete
        payload += data[pos + 5:pos + 5 + length]
        pos += 5 + length
        if len(payload) >= 4:
            if payload[0] != 1:  # client_hello
                raise ValueError("not a ClientHello")
            size = int.from_bytes(payload[1:4], "big")
            if len(payload) >= 4 + size:
                return memoryview(bytes(payload[4:4 + size]))


def _sni(hello: memoryview) -> str | None:
    pos = 2 + 32  # legacy_version, random
    pos += 1 + hello[pos]  # legacy_session_id
    pos += 2 + int.from_bytes(hello[pos:pos + 2], "big")  # cipher_suites
    pos += 1 + hello[pos]  # legacy_compression_methods
    if pos + 2 > len(hello):
        return None  # no extensions
    end = pos + 2 + int.from_bytes(hello[pos:pos + 2], "big")
    pos += 2
    while pos + 4 <= end:
        kind = int.from_bytes(hello[pos:pos + 2], "big")
        size = int.from_bytes(hello[pos + 2:pos + 4], "big")
        body = hello[pos + 4:pos + 4 + size]
        pos += 4 + size
        if kind != 0:  # server_name
            continue
        i, names_end = 2, 2 + int.from_bytes(body[0:2], "big")
        while i + 3 <= names_end:
            name_type, n = body[i], int.from_bytes(body[i + 1:i + 3], "big")
            if name_type == 0:  # host_name
                raw = bytes(body[i + 3:i + 3 + n])
                if len(raw) != n:
                    raise ValueError("truncated server_name")
                return raw.decode("ascii")
            i += 3 + n
        return None
    return None
