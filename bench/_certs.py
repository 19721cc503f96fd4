"""Certificates for the TLS benchmarks, made at run time (no private key is committed).

One CA and one server certificate for ``localhost`` and ``127.0.0.1``, written
as PEM files into a directory the caller owns (a temporary one): with
``trustme`` when it is installed (the test dependency urllib3, trio and
aiohttp use for this), else with the ``openssl`` command line.  Every server
of a run uses the same files, so every server pays for the same key.

RSA 2048 by default: the TLS 1.2 cipher ECDHE-RSA-AES128-GCM-SHA256 needs an
RSA key, and RSA makes the handshake cheap for the client (verify, ~13 us)
and dear for the server (sign, ~220 us here), so the C load generator stays
the cheaper side.  ``ec`` (P-256) signs in ~15 us but verifies in ~40 us: the
server's framework overhead shows more, and the generator may become the
limit.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass

KEY_TYPES = ("rsa", "ec")


@dataclass(frozen=True)
class CertFiles:
    """Paths of the PEM files: the CA (for clients), the server's chain and key."""

    ca: str
    cert: str
    key: str
    key_type: str
    made_with: str


def make_certs(directory: str, key_type: str = "rsa") -> CertFiles:
    """Write a CA and a ``localhost``/``127.0.0.1`` server certificate into ``directory``.

    Raises RuntimeError (with the reason) when neither trustme nor openssl is there.
    """
    if key_type not in KEY_TYPES:
        raise ValueError(f"key type {key_type!r}: choose from {', '.join(KEY_TYPES)}")
    files = CertFiles(os.path.join(directory, "ca.pem"), os.path.join(directory, "server.pem"),
                      os.path.join(directory, "server.key"), key_type, "")
    try:
        import trustme
    except ImportError:
        trustme = None
    if trustme is not None:
        kt = trustme.KeyType.RSA if key_type == "rsa" else trustme.KeyType.ECDSA
        ca = trustme.CA(key_type=kt)
        leaf = ca.issue_cert("localhost", "127.0.0.1", key_type=kt)
        ca.cert_pem.write_to_path(files.ca)
        leaf.private_key_pem.write_to_path(files.key)
        with open(files.cert, "wb") as f:
            for pem in leaf.cert_chain_pems:
                f.write(pem.bytes())
        return CertFiles(files.ca, files.cert, files.key, key_type, f"trustme {trustme.__version__}")
    if shutil.which("openssl") is None:
        raise RuntimeError("neither trustme (pip install trustme) nor the openssl command is "
                           "installed to make the benchmark's certificate")
    _openssl_certs(directory, files)
    return CertFiles(files.ca, files.cert, files.key, key_type, "openssl")


def _openssl_certs(directory: str, files: CertFiles) -> None:
    """The same with the openssl CLI: a CA, then a leaf with the two subjectAltNames."""
    newkey = ["-newkey", "rsa:2048"] if files.key_type == "rsa" else \
        ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]
    ca_key = os.path.join(directory, "ca.key")
    csr = os.path.join(directory, "server.csr")
    ext = os.path.join(directory, "server.ext")
    with open(ext, "w") as f:
        f.write("subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n")

    def run(*argv: str) -> None:
        r = subprocess.run(["openssl", *argv], capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"openssl {argv[0]} failed: {r.stderr.strip()[-300:]}")

    run("req", "-x509", *newkey, "-nodes", "-keyout", ca_key, "-out", files.ca, "-days", "2",
        "-subj", "/CN=netreactor bench CA")
    run("req", *newkey, "-nodes", "-keyout", files.key, "-out", csr, "-subj", "/CN=localhost")
    run("x509", "-req", "-in", csr, "-CA", files.ca, "-CAkey", ca_key, "-CAcreateserial",
        "-out", files.cert, "-days", "2", "-extfile", ext)
