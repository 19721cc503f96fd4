"""Listening sockets: binding them (one, or a SO_REUSEPORT group).

A :class:`Listener` is one bound socket; :func:`bind_group` binds several
that share an address, after checking that nobody else holds it. Accepting
on them is :mod:`netreactor.server.acceptor`'s job.
"""

from __future__ import annotations

import dataclasses
import errno
import ipaddress
import os
import socket
import stat
import struct
from typing import Any, Callable, List, Optional, Tuple, TypeVar

from ..address import Address
from ..stream.sockopts import apply_buffer_sizes

__all__ = ["Listener", "bind_group"]

_T = TypeVar("_T")



class Listener:
    """A bound, listening, non-blocking socket for one address.

    ``Listener(address, options)`` binds it. :meth:`inherit` makes the
    record a forked worker keeps of a socket its supervisor bound: closing it
    closes only the worker's descriptor and never unlinks a Unix socket file.
    """

    def __init__(self, address: Address, options: Any, reuse_port: bool = False) -> None:
        self.address = address
        self.sock: socket.socket = _named_errors(address, _bind, address, options, reuse_port)
        self._unix_inode: Optional[int] = None
        if address.transport == "unix" and not address.path.startswith("@"):
            self._unix_inode = os.stat(address.path).st_ino

    @classmethod
    def inherit(cls, origin: "Listener") -> "Listener":
        inherited = cls.__new__(cls)
        inherited.address = origin.address
        inherited.sock = origin.sock
        inherited._unix_inode = None
        return inherited

    @property
    def transport(self) -> str:
        """``"tcp"``, ``"udp"`` or ``"unix"``."""
        return self.address.transport

    def bound_address(self) -> str:
        """The address actually bound (with the real port when port 0 was asked)."""
        if self.address.transport == "unix":
            return str(self.address)
        host, port = self.sock.getsockname()[:2]
        host = f"[{host}]" if ":" in host else host
        return f"{self.address.scheme}://{host}:{port}"

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass
        if self._unix_inode is not None:
            # Remove the socket file only if it is still ours (not re-created by another server).
            try:
                if os.stat(self.address.path).st_ino == self._unix_inode:
                    os.unlink(self.address.path)
            except OSError:
                pass
            self._unix_inode = None


def bind_group(address: Address, options: Any, count: int) -> List[Listener]:
    """``count`` SO_REUSEPORT listeners sharing ``address`` (the kernel spreads
    connections or datagrams over them), after checking that nobody else holds
    the port: SO_REUSEPORT would otherwise let this group bind beside another
    server of the same user and silently take half of its traffic. With port 0
    the first socket picks a free port and the others join it."""
    if address.transport != "unix" and address.port != 0:
        _named_errors(address, _probe_free, address, options)
    first = Listener(address, options, reuse_port=True)
    group = [first]
    try:
        if address.port == 0 and address.transport != "unix":
            address = dataclasses.replace(address, port=first.sock.getsockname()[1])
        for _ in range(count - 1):
            group.append(Listener(address, options, reuse_port=True))
    except BaseException:
        for lst in group:
            lst.close()
        raise
    return group


def _named_errors(address: Address, fn: Callable[..., _T], *args: Any) -> _T:
    """Call ``fn``; a resolution or bind error names the address it was for."""
    try:
        return fn(*args)
    except socket.gaierror as exc:
        raise socket.gaierror(exc.errno, f"cannot resolve {address}: {exc.strerror}") from None
    except OSError as exc:
        if exc.errno is None or isinstance(exc, FileExistsError):
            raise
        reason = exc.strerror or os.strerror(exc.errno)
        raise type(exc)(exc.errno, f"cannot listen on {address}: {reason}") from None


def _probe_free(address: Address, options: Any) -> None:
    """Bind (and drop) a socket without SO_REUSEPORT: EADDRINUSE if anyone holds the port."""
    fam, type_, proto, sockaddr = _resolve(address)
    probe = socket.socket(fam, type_, proto)
    try:
        if type_ == socket.SOCK_STREAM and options.reuse_addr:
            # As the real listener will: a port with connections in TIME_WAIT is free.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if fam == socket.AF_INET6 and address.ipv6_only:
            probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        probe.bind(sockaddr)
    finally:
        probe.close()


def _resolve(address: Address) -> Tuple[int, int, int, Any]:
    datagram = address.transport == "udp"
    host = address.host
    family = address.family
    if not host:
        host = "::" if family == socket.AF_INET6 else "0.0.0.0"
        family = family or socket.AF_INET
    infos = socket.getaddrinfo(host, address.port, family or socket.AF_UNSPEC,
                               socket.SOCK_DGRAM if datagram else socket.SOCK_STREAM, 0,
                               socket.AI_PASSIVE)
    fam, type_, proto, _, sockaddr = infos[0]
    return fam, type_, proto, sockaddr


def _bind(address: Address, options: Any, reuse_port: bool) -> socket.socket:
    if address.transport == "unix":
        return _bind_unix(address, options)
    datagram = address.transport == "udp"
    fam, type_, proto, sockaddr = _resolve(address)
    multicast = datagram and ipaddress.ip_address(sockaddr[0]).is_multicast
    sock = socket.socket(fam, type_, proto)
    try:
        # SO_REUSEADDR means "ignore TIME_WAIT" for TCP, but for unicast UDP it
        # lets a second socket share the port outright: only multicast wants that.
        if (options.reuse_addr and not datagram) or multicast:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            if not hasattr(socket, "SO_REUSEPORT"):
                raise ValueError("option 'reuse_port': SO_REUSEPORT is not available on this platform")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if fam == socket.AF_INET6 and address.ipv6_only:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        apply_buffer_sizes(sock, options)
        # Bound to the group address, a multicast socket receives that group only.
        sock.bind(sockaddr)
        if multicast:
            join_multicast(sock, fam, sockaddr[0], options.multicast_interface)
        if not datagram:
            sock.listen(options.backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def join_multicast(sock: socket.socket, family: int, group: str, interface: Optional[str]) -> None:
    """Join ``group`` on ``interface`` (an IPv4 address or an interface name; None: the
    kernel's choice) and receive our own group traffic too (as gnet does)."""
    if family == socket.AF_INET:
        iface = interface_ipv4(interface)
        mreq = socket.inet_aton(group) + socket.inet_aton(iface)
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)
        if interface:
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(iface))
    else:
        index = socket.if_nametoindex(interface) if interface else 0
        mreq = socket.inet_pton(socket.AF_INET6, group) + struct.pack("@I", index)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP, mreq)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_LOOP, 1)
        if index:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, index)


def interface_ipv4(interface: Optional[str]) -> str:
    """The IPv4 address for a multicast interface given as an address or a name."""
    if not interface:
        return "0.0.0.0"
    try:
        ipaddress.IPv4Address(interface)
        return interface
    except ValueError:
        pass
    import fcntl

    # SIOCGIFADDR: the interface's IPv4 address, by name (Linux).
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        packed = fcntl.ioctl(probe.fileno(), 0x8915, struct.pack("256s", interface.encode()[:15]))
    finally:
        probe.close()
    return socket.inet_ntoa(packed[20:24])


def _bind_unix(address: Address, options: Any) -> socket.socket:
    path = address.path
    if not path.startswith("@"):
        _remove_stale_unix_socket(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        apply_buffer_sizes(sock, options)
        sock.bind(address.sockaddr())
        sock.listen(options.backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def _remove_stale_unix_socket(path: str) -> None:
    """A socket file nobody listens on is left by a crashed server: remove it.
    A live one is EADDRINUSE; a non-socket file is never touched."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise FileExistsError(errno.EEXIST, f"{path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        os.unlink(path)
        return
    except OSError:
        return
    finally:
        probe.close()
    raise OSError(errno.EADDRINUSE, "Address already in use (another server listens on it)")


