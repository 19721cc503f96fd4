"""netreactor.tls: the context helpers, TLSInfo and the ClientHello SNI reader.

Certificates are made per test session with trustme (no key is committed).
Handshakes run between two ssl objects over a socketpair (one thread each) or
over memory BIOs, so the tests need no port and no event loop.
"""

from __future__ import annotations

import socket
import ssl
import threading
from pathlib import Path
from typing import Any, Callable, Optional

import pytest

from netreactor.tls import (
    CLIENT_HELLO_LIMIT,
    TLSInfo,
    client_context,
    client_hello_server_name,
    server_context,
)

trustme = pytest.importorskip("trustme")


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> dict:
    """A CA, a server certificate (localhost, example.test, 127.0.0.1), a client one, junk."""
    d = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    server = ca.issue_cert("localhost", "example.test", "127.0.0.1")
    client = ca.issue_cert("client@example.test", common_name="client")
    other = trustme.CA().issue_cert("localhost")
    f = {name: d / name for name in ("ca.pem", "cert.pem", "key.pem", "both.pem", "client.pem",
                                     "client.key", "other.key", "junk.pem", "enc.key")}
    ca.cert_pem.write_to_path(str(f["ca.pem"]))
    server.cert_chain_pems[0].write_to_path(str(f["cert.pem"]))
    server.private_key_pem.write_to_path(str(f["key.pem"]))
    server.private_key_and_cert_chain_pem.write_to_path(str(f["both.pem"]))
    client.cert_chain_pems[0].write_to_path(str(f["client.pem"]))
    client.private_key_pem.write_to_path(str(f["client.key"]))
    other.private_key_pem.write_to_path(str(f["other.key"]))
    f["junk.pem"].write_text("this is not PEM\n")
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(server.private_key_pem.bytes(), None)
    f["enc.key"].write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"s3cret")))
    f["missing"] = d / "missing.pem"
    return {k: str(v) for k, v in f.items()}


# ---------------------------------------------------------------------------- errors name the culprit


def _raises(fn: Callable[[], Any], *fragments: str) -> None:
    with pytest.raises(ValueError) as e:
        fn()
    for fragment in fragments:
        assert fragment in str(e.value), (fragment, str(e.value))


def test_unreadable_certfile_and_keyfile_are_named(pki):
    _raises(lambda: server_context(pki["missing"], pki["key.pem"]), "certfile", pki["missing"],
            "cannot be read")
    _raises(lambda: server_context(pki["cert.pem"], pki["missing"]), "keyfile", pki["missing"],
            "cannot be read")
    _raises(lambda: server_context(str(Path(pki["cert.pem"]).parent), pki["key.pem"]),
            "certfile", "cannot be read")


def test_files_without_certificate_or_key_are_named(pki):
    _raises(lambda: server_context(pki["junk.pem"], pki["key.pem"]), "certfile", pki["junk.pem"],
            "no PEM certificate")
    _raises(lambda: server_context(pki["key.pem"], pki["key.pem"]), "certfile", pki["key.pem"],
            "no PEM certificate")
    _raises(lambda: server_context(pki["cert.pem"], pki["junk.pem"]), "keyfile", pki["junk.pem"],
            "no PEM private key")
    # The key may live in the certificate's file; when it does not, say so.
    assert isinstance(server_context(pki["both.pem"]), ssl.SSLContext)
    _raises(lambda: server_context(pki["cert.pem"]), "certfile", pki["cert.pem"], "give keyfile=")


def test_mismatched_key_names_both_files(pki):
    _raises(lambda: server_context(pki["cert.pem"], pki["other.key"]), pki["other.key"],
            pki["cert.pem"], "does not match")


def test_encrypted_key_password(pki):
    # No password: an error, never a prompt on the terminal.
    _raises(lambda: server_context(pki["cert.pem"], pki["enc.key"]), "keyfile", pki["enc.key"],
            "encrypted", "password=")
    _raises(lambda: server_context(pki["cert.pem"], pki["enc.key"], password="wrong"),
            "wrong password", pki["enc.key"])
    for pw in ("s3cret", b"s3cret", bytearray(b"s3cret"), lambda: "s3cret"):
        assert isinstance(server_context(pki["cert.pem"], pki["enc.key"], password=pw),
                          ssl.SSLContext)


def test_bad_ca_certs_and_verify_client_without_them(pki):
    _raises(lambda: server_context(pki["cert.pem"], pki["key.pem"], ca_certs=pki["missing"]),
            "ca_certs", pki["missing"], "cannot be read")
    _raises(lambda: server_context(pki["cert.pem"], pki["key.pem"], ca_certs=pki["junk.pem"]),
            "ca_certs", pki["junk.pem"], "no PEM CA certificate")
    _raises(lambda: server_context(pki["cert.pem"], pki["key.pem"], verify_client=True),
            "verify_client", "ca_certs")
    _raises(lambda: client_context(pki["junk.pem"]), "cafile", pki["junk.pem"])
    _raises(lambda: client_context(keyfile=pki["client.key"]), "keyfile", "certfile")
    _raises(lambda: client_context(pki["ca.pem"], certfile=pki["client.pem"],
                                   keyfile=pki["other.key"]), "does not match")


def test_bad_ciphers_are_named(pki):
    for bad in ("NO-SUCH-CIPHER", "", "   "):
        _raises(lambda bad=bad: server_context(pki["cert.pem"], pki["key.pem"], ciphers=bad),
                "ciphers", repr(bad))
        _raises(lambda bad=bad: client_context(ciphers=bad), "ciphers")


@pytest.mark.parametrize("alpn", ["h2", b"h2", [""], ["x" * 256], ["h2", "h2"], ["h2", 2], ["ü"], 7])
def test_bad_alpn_lists_are_named(pki, alpn):
    _raises(lambda: server_context(pki["cert.pem"], pki["key.pem"], alpn=alpn), "alpn")
    _raises(lambda: client_context(alpn=alpn), "alpn")


def test_secure_defaults(pki):
    for ctx in (server_context(pki["cert.pem"], pki["key.pem"]), client_context(pki["ca.pem"]),
                client_context()):
        assert ctx.minimum_version >= ssl.TLSVersion.TLSv1_2
        assert ctx.options & ssl.OP_NO_RENEGOTIATION
        assert ctx.options & ssl.OP_NO_COMPRESSION
    srv = server_context(pki["cert.pem"], pki["key.pem"])
    assert srv.verify_mode == ssl.CERT_NONE
    assert server_context(pki["cert.pem"], pki["key.pem"], ca_certs=pki["ca.pem"]).verify_mode \
        == ssl.CERT_OPTIONAL
    assert server_context(pki["cert.pem"], pki["key.pem"], ca_certs=pki["ca.pem"],
                          verify_client=True).verify_mode == ssl.CERT_REQUIRED
    cli = client_context()
    assert cli.verify_mode == ssl.CERT_REQUIRED and cli.check_hostname


# ---------------------------------------------------------------------------- handshakes


def _handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext,
               server_hostname: Optional[str] = "localhost") -> dict:
    """A handshake and one echoed message over a socketpair; what each side saw."""
    a, b = socket.socketpair()
    a.settimeout(10)
    b.settimeout(10)
    out: dict = {}

    def serve() -> None:
        try:
            with server_ctx.wrap_socket(a, server_side=True) as s:
                out["server"] = TLSInfo.from_ssl(s, server_name="captured-elsewhere")
                s.sendall(s.recv(100))
        except (ssl.SSLError, OSError) as e:
            out["server_error"] = e

    t = threading.Thread(target=serve)
    t.start()
    try:
        with client_ctx.wrap_socket(b, server_hostname=server_hostname) as c:
            out["client"] = TLSInfo.from_ssl(c)
            c.sendall(b"ping")
            out["echo"] = c.recv(100)
    except (ssl.SSLError, OSError) as e:
        out["client_error"] = e
    finally:
        b.close()
        t.join(10)
    return out


def test_server_context_completes_a_handshake_with_a_python_client(pki):
    r = _handshake(server_context(pki["cert.pem"], pki["key.pem"]), client_context(pki["ca.pem"]))
    assert r["echo"] == b"ping"
    srv, cli = r["server"], r["client"]
    assert srv.version == cli.version == "TLSv1.3"
    assert srv.cipher == cli.cipher and srv.cipher.startswith("TLS_")
    assert srv.cipher_bits >= 128
    assert srv.server_side and not cli.server_side
    assert not srv.session_reused
    assert cli.server_name == "localhost"           # the client knows what it sent
    assert srv.server_name == "captured-elsewhere"  # the server gets it from the transport
    assert srv.peer_certificate is None and srv.peer_certificate_der is None  # no client cert
    assert ("DNS", "localhost") in cli.peer_certificate["subjectAltName"]  # verified, decoded
    assert cli.peer_certificate_der and cli.peer_certificate_der[:1] == b"\x30"  # DER SEQUENCE


def test_client_context_refuses_an_unknown_ca_and_a_wrong_host(pki):
    srv = server_context(pki["cert.pem"], pki["key.pem"])
    r = _handshake(srv, client_context())  # system CAs: trustme's CA is not among them
    assert isinstance(r["client_error"], ssl.SSLCertVerificationError)
    r = _handshake(srv, client_context(pki["ca.pem"]), server_hostname="not-this-host.test")
    assert isinstance(r["client_error"], ssl.SSLCertVerificationError)
    assert "not-this-host.test" in str(r["client_error"])


def test_tls12_with_a_cipher_string(pki):
    srv = server_context(pki["cert.pem"], pki["key.pem"], ciphers="ECDHE+AESGCM")
    cli = client_context(pki["ca.pem"], ciphers="ECDHE+AESGCM")
    cli.maximum_version = ssl.TLSVersion.TLSv1_2
    r = _handshake(srv, cli)
    assert r["server"].version == "TLSv1.2"
    assert "GCM" in r["server"].cipher and r["server"].cipher.startswith("ECDHE-")


def test_mutual_tls_required_and_refused(pki):
    srv = server_context(pki["cert.pem"], pki["key.pem"], ca_certs=pki["ca.pem"],
                         verify_client=True)
    with_cert = client_context(pki["ca.pem"], certfile=pki["client.pem"], keyfile=pki["client.key"])
    r = _handshake(srv, with_cert)
    assert r["echo"] == b"ping"
    peer = r["server"].peer_certificate
    assert peer is not None and ((("commonName", "client"),) in peer["subject"])
    assert r["server"].peer_certificate_der

    r = _handshake(srv, client_context(pki["ca.pem"]))  # no client certificate
    assert isinstance(r.get("server_error"), ssl.SSLError)
    assert "echo" not in r  # TLS 1.3: the client learns it on its first read
    assert "CERTIFICATE" in str(r["server_error"]).upper()

    stranger = trustme.CA().issue_cert("client@example.test")
    d = Path(pki["ca.pem"]).parent
    stranger.cert_chain_pems[0].write_to_path(str(d / "stranger.pem"))
    stranger.private_key_pem.write_to_path(str(d / "stranger.key"))
    r = _handshake(srv, client_context(pki["ca.pem"], certfile=str(d / "stranger.pem"),
                                       keyfile=str(d / "stranger.key")))
    assert isinstance(r.get("server_error"), ssl.SSLError) and "echo" not in r


def test_alpn_negotiated(pki):
    srv = server_context(pki["cert.pem"], pki["key.pem"], alpn=("h2", "http/1.1"))
    r = _handshake(srv, client_context(pki["ca.pem"], alpn=["http/1.1", "h2"]))
    assert r["server"].alpn_protocol == r["client"].alpn_protocol == "h2"  # the server's order
    r = _handshake(srv, client_context(pki["ca.pem"], alpn=["http/1.1"]))
    assert r["server"].alpn_protocol == r["client"].alpn_protocol == "http/1.1"
    r = _handshake(srv, client_context(pki["ca.pem"]))  # none offered
    assert r["server"].alpn_protocol is None and r["echo"] == b"ping"


def test_tlsinfo_before_the_handshake_is_an_error(pki):
    obj = server_context(pki["cert.pem"], pki["key.pem"]).wrap_bio(
        ssl.MemoryBIO(), ssl.MemoryBIO(), server_side=True)
    with pytest.raises(ValueError, match="not complete"):
        TLSInfo.from_ssl(obj)


# ---------------------------------------------------------------------------- SNI


def _first_flight(pki, server_hostname: Optional[str]) -> bytes:
    """The ClientHello a client_context client sends first."""
    cli = client_context(pki["ca.pem"]).wrap_bio(ssl.MemoryBIO(), out := ssl.MemoryBIO(),
                                                  server_hostname=server_hostname)
    with pytest.raises(ssl.SSLWantReadError):
        cli.do_handshake()
    return out.read()


def test_sni_captured_through_a_real_handshake(pki):
    """The transport's way: feed the connection's first bytes to the reader, hand the name
    to TLSInfo once OpenSSL has completed the handshake over memory BIOs."""
    srv = server_context(pki["cert.pem"], pki["key.pem"]).wrap_bio(
        s_in := ssl.MemoryBIO(), s_out := ssl.MemoryBIO(), server_side=True)
    cli = client_context(pki["ca.pem"]).wrap_bio(c_in := ssl.MemoryBIO(), c_out := ssl.MemoryBIO(),
                                                  server_hostname="example.test")
    seen = b""
    name: Optional[str] = None
    complete = False
    for _ in range(10):
        for obj in (cli, srv):
            try:
                obj.do_handshake()
            except ssl.SSLWantReadError:
                pass
        data = c_out.read()
        if not complete and data:
            seen += data
            complete, name = client_hello_server_name(seen)
        s_in.write(data)
        c_in.write(s_out.read())
        if srv.version() and cli.version():
            break
    cli.do_handshake()
    assert complete and name == "example.test"
    info = TLSInfo.from_ssl(srv, server_name=name)
    assert info.server_name == "example.test" and info.version == "TLSv1.3"


def test_sni_reader_needs_more_until_the_hello_is_whole(pki):
    hello = _first_flight(pki, "example.test")
    for i in range(len(hello)):
        assert client_hello_server_name(hello[:i]) == (False, None), i
    assert client_hello_server_name(hello) == (True, "example.test")
    assert client_hello_server_name(hello + b"\x17\x03\x03junk") == (True, "example.test")


def test_sni_reader_reassembles_a_hello_split_over_records(pki):
    hello = _first_flight(pki, "example.test")
    body = hello[5:5 + int.from_bytes(hello[3:5], "big")]
    cut = 40  # inside the random: the name only comes with the second record
    split = b"".join(b"\x16\x03\x01" + len(part).to_bytes(2, "big") + part
                     for part in (body[:cut], body[cut:]))
    assert client_hello_server_name(split[:5 + cut + 5]) == (False, None)
    assert client_hello_server_name(split) == (True, "example.test")


def test_sni_reader_without_a_name_or_without_tls(pki):
    assert client_hello_server_name(_first_flight(pki, "127.0.0.1")) == (True, None)  # IP: no SNI
    assert client_hello_server_name(_first_flight(pki, None)) == (True, None)
    assert client_hello_server_name(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n") == (True, None)
    assert client_hello_server_name(b"\x16\x03\x01\x00\x05\x02\x00\x00\x01\x00") == (True, None)
    # A record header promising more than the limit: the answer comes at the limit, not never.
    huge = b"\x16\x03\x01\xff\xff" + b"\x01\xff\xff\xff" + bytes(CLIENT_HELLO_LIMIT)
    assert client_hello_server_name(huge[:100]) == (False, None)
    assert client_hello_server_name(huge) == (True, None)
