"""Parsing of listen/dial addresses such as ``tcp://127.0.0.1:9000``.

Parsing is pure: nothing is resolved or bound here, so a bad address is a
``ValueError`` naming the offending part before any socket exists.

``fd://N`` names a socket already bound (and, for a stream, listening) on
descriptor N, inherited from a parent process (uvicorn's and gunicorn's
``--fd``); whether it is a stream or a datagram socket, and of which family, is
read from the descriptor when it is adopted
(:func:`netreactor.server.activation.inherit_fd`), not here.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass

__all__ = ["MAX_FD", "SCHEMES", "Address", "parse_address"]

#: scheme -> (transport, address family or None for "either")
SCHEMES: dict[str, tuple[str, int | None]] = {
    "tcp": ("tcp", None),
    "tcp4": ("tcp", socket.AF_INET),
    "tcp6": ("tcp", socket.AF_INET6),
    "udp": ("udp", None),
    "udp4": ("udp", socket.AF_INET),
    "udp6": ("udp", socket.AF_INET6),
    "unix": ("unix", socket.AF_UNIX),
    "tls": ("tcp", None),   # TCP with TLS (the engine's ``tls=`` context)
    "tls4": ("tcp", socket.AF_INET),
    "tls6": ("tcp", socket.AF_INET6),
    "fd": ("fd", None),  # an inherited descriptor: family and type come from the fd
}

#: Highest descriptor number ``fd://N`` accepts (a C int).
MAX_FD = 2**31 - 1


@dataclass(frozen=True)
class Address:
    """A parsed address. ``host``/``port`` for IP transports, ``path`` for Unix."""

    scheme: str
    transport: str  # "tcp", "udp", "unix", or "fd" (an inherited descriptor)
    family: int | None  # AF_INET / AF_INET6 / AF_UNIX, None = decided by resolution (or by the fd)
    host: str = ""
    port: int = 0
    path: str = ""
    fd: int = -1  # for "fd://N"

    @property
    def tls(self) -> bool:
        """TCP with TLS (``tls://``, ``tls4://``, ``tls6://``)."""
        return self.scheme in ("tls", "tls4", "tls6")

    @property
    def ipv6_only(self) -> bool:
        """Bound to IPv6 only (``tcp6://``, ``udp6://``, ``tls6://``)."""
        return self.scheme in ("tcp6", "udp6", "tls6")

    @property
    def is_stream(self) -> bool:
        if self.transport == "fd":
            raise ValueError(f"{self}: whether an inherited socket is a stream is read from the "
                             f"descriptor (netreactor.server.activation.inherit_fd)")
        return self.transport in ("tcp", "unix")

    def sockaddr(self) -> object:
        """The address in the form ``socket.bind`` wants (host not resolved)."""
        if self.transport == "fd":
            raise ValueError(f"{self} is bound already: there is nothing to bind")
        if self.transport == "unix":
            return "\0" + self.path[1:] if self.path.startswith("@") else self.path
        return (self.host, self.port)

    def __str__(self) -> str:
        if self.transport == "fd":
            return f"fd://{self.fd}"
        if self.transport == "unix":
            return f"{self.scheme}://{self.path}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


def _schemes_text() -> str:
    return ", ".join(f"{s}://N" if s == "fd" else f"{s}://" for s in SCHEMES)


def parse_address(text: str) -> Address:
    """Parse ``scheme://host:port`` or ``unix://path``; raise ``ValueError`` naming the fault.

    ``tcp://:9000`` and ``tcp://0.0.0.0:9000`` listen on every IPv4 interface,
    ``tcp6://[::]:9000`` on every IPv6 one. ``unix://@name`` is a Linux abstract socket.
    ``fd://N`` is the socket already bound on inherited descriptor N.
    """
    if not isinstance(text, str):
        raise ValueError(f"address must be a string like 'tcp://127.0.0.1:9000', got {text!r}")
    scheme, sep, rest = text.partition("://")
    if not sep:
        raise ValueError(
            f"address {text!r} has no scheme; expected one of {_schemes_text()} "
            f"(for example 'tcp://{text}')"
        )
    scheme_l = scheme.lower()
    if scheme_l not in SCHEMES:
        raise ValueError(
            f"address {text!r} has unknown scheme {scheme!r}; expected one of {_schemes_text()}"
        )
    transport, family = SCHEMES[scheme_l]
    if transport == "fd":
        return Address(scheme_l, transport, None, fd=_parse_fd(text, rest))
    if transport == "unix":
        if not rest:
            raise ValueError(f"address {text!r} has an empty Unix socket path")
        if "\0" in rest:
            raise ValueError(f"address {text!r}: Unix socket path contains a NUL byte")
        return Address(scheme_l, transport, family, path=rest)
    host, port = _split_host_port(text, rest)
    if host:
        family = _check_host(text, host, family)
    return Address(scheme_l, transport, family, host=host, port=port)


def _parse_fd(text: str, rest: str) -> int:
    if not rest:
        raise ValueError(f"address {text!r} has no descriptor number; expected fd://N, e.g. 'fd://3'")
    if not (rest.isascii() and rest.isdigit()):
        raise ValueError(f"address {text!r}: descriptor {rest!r} is not a number; expected fd://N with N >= 0")
    fd = int(rest)
    if fd > MAX_FD:
        raise ValueError(f"address {text!r}: descriptor {fd} is out of range 0..{MAX_FD}")
    return fd


def _split_host_port(text: str, rest: str) -> tuple[str, int]:
    if "/" in rest:
        raise ValueError(f"address {text!r}: unexpected path {rest[rest.index('/'):]!r} after host:port")
    if rest.startswith("["):
        end = rest.find("]")
        if end < 0:
            raise ValueError(f"address {text!r}: missing ']' after IPv6 host")
        host, after = rest[1:end], rest[end + 1 :]
        if not after.startswith(":"):
            raise ValueError(f"address {text!r}: missing ':port' after IPv6 host [{host}]")
        if ":" not in host:
            raise ValueError(f"address {text!r}: brackets are only for IPv6 addresses, got [{host}]")
        port_text = after[1:]
    else:
        host, sep, port_text = rest.rpartition(":")
        if not sep:
            raise ValueError(f"address {text!r} has no port; expected host:port, e.g. '127.0.0.1:9000'")
        if ":" in host:
            raise ValueError(f"address {text!r}: IPv6 hosts must be bracketed, e.g. 'tcp6://[::1]:9000'")
    if not (port_text.isascii() and port_text.isdigit()):
        raise ValueError(f"address {text!r}: port {port_text!r} is not a number in 0..65535")
    port = int(port_text)
    if not 0 <= port <= 65535:
        raise ValueError(f"address {text!r}: port {port} is out of range 0..65535")
    return host, port


def _check_host(text: str, host: str, family: int | None) -> int | None:
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        # A name; resolution happens at bind/dial time. Reject what can never be a name.
        if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in host) or len(host) > 253:
            raise ValueError(f"address {text!r}: {host!r} is neither an IP address nor a host name") from None
        return family
    ip_family = socket.AF_INET if ip.version == 4 else socket.AF_INET6
    if family is not None and family != ip_family:
        want = "IPv4" if family == socket.AF_INET else "IPv6"
        raise ValueError(f"address {text!r}: host {host!r} is not an {want} address")
    return ip_family
