"""The command line's TLS flags (uvicorn's names) and certificate reloading.

``--ssl-certfile`` and ``--ssl-keyfile`` (with the others) make the engine
option ``tls=`` a function that builds a context from the files with
:func:`netreactor.tls.server_context`: it is called where serving starts, so
with ``--workers`` each worker builds its own after the fork, and a SIGHUP
roll of the workers picks up new certificate files. In a single process,
SIGHUP rebuilds the context from the files and swaps it in
(``engine.set_tls``); a broken file is logged and the old context kept.
"""

from __future__ import annotations

import argparse
import logging
import signal
import ssl
from typing import Any, Callable, Dict, Optional

__all__ = ["add_tls_flags", "tls_option", "reload_on_sighup"]

_log = logging.getLogger("netreactor.cli")
CERT_REQS = {"0": ssl.CERT_NONE, "1": ssl.CERT_OPTIONAL, "2": ssl.CERT_REQUIRED,
             "none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}


def add_tls_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("TLS, for tls:// addresses (uvicorn's flag names)")
    group.add_argument("--ssl-certfile", metavar="PEM", help="certificate chain (leaf first)")
    group.add_argument("--ssl-keyfile", metavar="PEM", help="its private key (default: in --ssl-certfile)")
    group.add_argument("--ssl-keyfile-password", metavar="PASSWORD", help="password of an encrypted key")
    group.add_argument("--ssl-ca-certs", metavar="PEM", help="CAs that client certificates must chain to")
    group.add_argument("--ssl-cert-reqs", default="0", choices=sorted(CERT_REQS), metavar="{0,1,2}",
                       help="client certificates: 0 none, 1 optional, 2 required (default: 0)")
    group.add_argument("--ssl-ciphers", metavar="CIPHERS", help="OpenSSL cipher string for TLS 1.2")
    group.add_argument("--ssl-alpn", metavar="PROTOCOLS", help="ALPN protocols, comma-separated, "
                                                               "in preference order (e.g. http/1.1)")


def tls_option(args: argparse.Namespace) -> Optional[Callable[[], ssl.SSLContext]]:
    """The ``tls=`` option the flags ask for (None without ``--ssl-certfile``).
    The files are read once here, so that a wrong one is a usage error (a
    ``ValueError`` naming it) before anything binds."""
    tls_flags = [name for name in ("ssl_keyfile", "ssl_keyfile_password", "ssl_ca_certs",
                                   "ssl_ciphers", "ssl_alpn") if getattr(args, name, None)]
    if not getattr(args, "ssl_certfile", None):
        if tls_flags:
            raise ValueError(f"--{tls_flags[0].replace('_', '-')} needs --ssl-certfile")
        return None
    params: Dict[str, Any] = {
        "certfile": args.ssl_certfile, "keyfile": args.ssl_keyfile,
        "password": args.ssl_keyfile_password, "ca_certs": args.ssl_ca_certs,
        "reqs": CERT_REQS[args.ssl_cert_reqs], "ciphers": args.ssl_ciphers,
        "alpn": [p.strip() for p in args.ssl_alpn.split(",") if p.strip()] if args.ssl_alpn else [],
    }
    if params["reqs"] != ssl.CERT_NONE and not params["ca_certs"]:
        raise ValueError("--ssl-cert-reqs 1 or 2 needs --ssl-ca-certs (the CAs client "
                         "certificates must chain to)")

    def build() -> ssl.SSLContext:
        from ..tls import server_context

        context = server_context(params["certfile"], params["keyfile"], password=params["password"],
                                 ca_certs=params["ca_certs"],
                                 verify_client=params["reqs"] == ssl.CERT_REQUIRED,
                                 alpn=params["alpn"], ciphers=params["ciphers"])
        if params["reqs"] == ssl.CERT_NONE:
            context.verify_mode = ssl.CERT_NONE  # CA file given, but no client certificates asked for
        return context

    build()  # a wrong file fails now, naming itself
    return build


def reload_on_sighup(engine: Any, build: Callable[[], ssl.SSLContext]) -> Callable[[], None]:
    """In a single process: SIGHUP reloads the certificate files. Returns a
    function that puts the previous handler back."""
    def on_hup(signum: int, frame: Any) -> None:
        try:
            context = build()
        except (ValueError, OSError) as exc:
            _log.error("SIGHUP: not reloading the TLS certificates: %s (the old ones stay)", exc)
            return
        engine.set_tls(context)
        _log.info("SIGHUP: TLS certificates reloaded; new connections use them")

    try:
        previous = signal.signal(signal.SIGHUP, on_hup)
    except (ValueError, OSError, AttributeError):  # not the main thread, or no SIGHUP here
        return lambda: None

    def restore() -> None:
        signal.signal(signal.SIGHUP, previous)

    return restore
