"""Listening sockets inherited from a parent: ``fd://N`` and systemd socket activation.

Two ways a server is handed sockets that are bound already, so it can start
without privileges, be restarted without refusing connections, and be started
on demand:

* **``fd://N``** (uvicorn's and gunicorn's ``--fd``): the parent bound and
  listened, then started us with the socket on descriptor N.
  :func:`inherit_fd` adopts it.
* **systemd socket activation** (``sd_listen_fds(3)``, and gunicorn's
  ``systemd.listen_fds``): :func:`listen_fds` adopts the sockets systemd (or
  ``systemd-socket-activate``) passed.

The rules, from ``sd_listen_fds(3)`` and ``sd_listen_fds_with_names(3)``:

* The sockets are ours only when ``$LISTEN_PID`` is our process id: the
  variables are inherited by children, and a child must not take its parent's
  sockets. Without ``$LISTEN_PID``, or with another pid, there are none.
* ``$LISTEN_FDS`` sockets start at descriptor 3 (``SD_LISTEN_FDS_START``),
  in the order of the socket unit's ``Listen*=`` lines.
* ``$LISTEN_FDNAMES`` (``FileDescriptorName=``, ``--fdname``), when set, holds
  one colon-separated name per socket; a count that does not match is an
  error. Unnamed sockets are called ``"unknown"``, systemd's default.
* With ``unset_environment`` (the default) the three variables are removed
  once read, so no child we start believes it was activated. As
  ``sd_listen_fds`` does, and unlike gunicorn, they are removed even when
  ``$LISTEN_PID`` names another process: they are wrong for any child too.
* Each adopted descriptor gets ``FD_CLOEXEC`` (``sd_listen_fds`` does the same),
  so a program we exec does not hold our listening sockets open. Processes
  forked without exec (worker processes) still share them.
* Malformed variables are a ``ValueError`` naming the variable.

Adopting a descriptor (:func:`inherit_fd`) checks that it is an open socket
of family ``AF_INET``, ``AF_INET6`` or ``AF_UNIX``; a ``SOCK_STREAM`` socket must
be listening (``SO_ACCEPTCONN``), a ``SOCK_DGRAM`` one bound. Family and type
are read from the descriptor (``SO_DOMAIN``/``SO_TYPE``), never assumed. Anything
else is a ``ValueError`` naming the descriptor, and the descriptor is left
open and untouched. The blocking mode is left as the parent set it (the
engine makes its listeners non-blocking itself).

:func:`socket_address` writes the address an inherited socket serves in
netreactor's own syntax (``tcp://127.0.0.1:8000``, ``udp://[::1]:53``,
``unix:///run/app.sock``, ``unix://@name``), for logs and ``engine.addresses``.
"""

from __future__ import annotations

import os
import socket
import stat
from collections.abc import MutableMapping
from dataclasses import dataclass

__all__ = ["SD_LISTEN_FDS_START", "InheritedSocket", "check_fd", "inherit_fd", "listen_fds", "socket_address"]

#: The first descriptor systemd passes.
SD_LISTEN_FDS_START = 3
_FAMILIES = {socket.AF_INET: "AF_INET", socket.AF_INET6: "AF_INET6", socket.AF_UNIX: "AF_UNIX"}
_ENV = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")
# Far more than any socket unit has; guards against a corrupt $LISTEN_FDS walking the fd table.
_MAX_LISTEN_FDS = 4096


@dataclass(frozen=True, eq=False)
class InheritedSocket:
    """One adopted socket: its descriptor, its name (``$LISTEN_FDNAMES``; ``""``
    for ``fd://N``), family and type as read from the descriptor, and the
    ``socket.socket`` that now owns the descriptor."""

    fd: int
    name: str
    family: int
    type: int
    sock: socket.socket

    @property
    def is_stream(self) -> bool:
        return self.type == socket.SOCK_STREAM

    @property
    def address(self) -> str:
        """The address it serves, e.g. ``tcp://127.0.0.1:8000`` (see :func:`socket_address`)."""
        return socket_address(self.sock)

    def __repr__(self) -> str:
        kind = "stream" if self.is_stream else "datagram"
        return f"<InheritedSocket fd={self.fd} name={self.name!r} {kind} {self.address}>"


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISREG, "a regular file"), (stat.S_ISDIR, "a directory"),
                       (stat.S_ISFIFO, "a pipe"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISLNK, "a symbolic link")):
        if test(mode):
            return name
    return "not a socket"


def inherit_fd(fd: int, name: str = "") -> InheritedSocket:
    """Adopt the bound socket on descriptor ``fd``; see the module docstring for the checks.

    On success the returned record's ``sock`` owns ``fd`` (closing it closes the
    descriptor) and ``fd`` is close-on-exec. On failure a ``ValueError`` names
    ``fd`` and the descriptor is left as it was.
    """
    sock = _checked_socket(fd)
    os.set_inheritable(fd, False)
    return InheritedSocket(fd, name, sock.family, sock.type, sock)


def check_fd(fd: int) -> str:
    """Run :func:`inherit_fd`'s checks on ``fd`` without adopting it (the
    descriptor is left exactly as it was); return the address it serves
    (:func:`socket_address`). ``ValueError`` naming ``fd`` when it would be refused."""
    sock = _checked_socket(fd)
    try:
        return socket_address(sock)
    finally:
        sock.detach()


def _checked_socket(fd: int) -> socket.socket:
    """A ``socket.socket`` owning ``fd`` once the checks passed; on failure the
    descriptor is left open and untouched and ``ValueError`` names it."""
    if isinstance(fd, bool) or not isinstance(fd, int) or fd < 0:
        raise ValueError(f"a descriptor is an integer >= 0, got {fd!r}")
    try:
        mode = os.fstat(fd).st_mode
    except OSError as exc:
        raise ValueError(f"fd {fd} is not an open descriptor ({exc.strerror})") from None
    if not stat.S_ISSOCK(mode):
        raise ValueError(f"fd {fd} is {_kind(mode)}, not a socket")
    sock = socket.socket(fileno=fd)
    try:
        _check(sock, fd)
    except BaseException:
        sock.detach()  # not ours: leave the descriptor open
        raise
    return sock


def _check(sock: socket.socket, fd: int) -> None:
    if sock.family not in _FAMILIES:
        raise ValueError(f"fd {fd} is a socket of family {sock.family!r}; expected AF_INET, AF_INET6 or AF_UNIX")
    if sock.type == socket.SOCK_STREAM:
        if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            raise ValueError(f"fd {fd} is a stream socket that is not listening "
                             f"(pass a socket after bind() and listen(), not a connection)")
    elif sock.type == socket.SOCK_DGRAM:
        if not _bound(sock):
            raise ValueError(f"fd {fd} is a datagram socket that is not bound")
    else:
        raise ValueError(f"fd {fd} is a socket of type {sock.type!r}; expected SOCK_STREAM or SOCK_DGRAM")


def _bound(sock: socket.socket) -> bool:
    name = sock.getsockname()
    if sock.family == socket.AF_UNIX:
        return bool(name)
    return bool(name[1])


def socket_address(sock: socket.socket) -> str:
    """The address ``sock`` is bound to, in netreactor's syntax.

    IP sockets give ``tcp://host:port`` or ``udp://host:port`` (IPv6 hosts in
    brackets); Unix sockets ``unix://path``, or ``unix://@name`` for a Linux
    abstract name; an unnamed Unix socket gives ``unix://``.
    """
    name = sock.getsockname()
    if sock.family == socket.AF_UNIX:
        # Linux gives an abstract name as bytes with a leading NUL, a path as str.
        path = os.fsdecode(name) if isinstance(name, bytes) else str(name)
        return "unix://@" + path[1:] if path.startswith("\0") else "unix://" + path
    scheme = "tcp" if sock.type == socket.SOCK_STREAM else "udp"
    host, port = name[0], name[1]
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}:{port}"


def _int_var(env: MutableMapping[str, str], var: str) -> int:
    text = env[var]
    if not (text.isascii() and text.isdigit()):
        raise ValueError(f"${var}={text!r} is not a non-negative integer")
    return int(text)


def listen_fds(unset_environment: bool = True, *,
               environ: MutableMapping[str, str] | None = None) -> list[InheritedSocket]:
    """The sockets passed by systemd socket activation, adopted; ``[]`` when there are none.

    ``environ`` defaults to ``os.environ`` (pass a dict to test the parsing).
    Raises ``ValueError`` for malformed variables, or for a passed descriptor
    that is not a listening (stream) or bound (datagram) socket.
    """
    env = os.environ if environ is None else environ
    try:
        if "LISTEN_PID" not in env:
            return []
        pid = _int_var(env, "LISTEN_PID")
        if pid != os.getpid():
            return []
        count = _int_var(env, "LISTEN_FDS") if "LISTEN_FDS" in env else 0
        if count > _MAX_LISTEN_FDS:
            raise ValueError(f"$LISTEN_FDS={count} is more than {_MAX_LISTEN_FDS} sockets")
        names = env.get("LISTEN_FDNAMES")
        if names is None:
            labels = ["unknown"] * count
        else:
            labels = names.split(":") if count else []
            if len(labels) != count:
                raise ValueError(f"$LISTEN_FDNAMES has {len(labels)} name(s) for $LISTEN_FDS={count} sockets")
        out: list[InheritedSocket] = []
        try:
            for i, label in enumerate(labels):
                out.append(inherit_fd(SD_LISTEN_FDS_START + i, label))
        except ValueError:
            for adopted in out:
                adopted.sock.detach()  # adopt all or none: the caller may retry or exit
            raise
        return out
    finally:
        if unset_environment:
            for var in _ENV:
                env.pop(var, None)
