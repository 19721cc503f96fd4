"""Servers compared by ``bench/echo.py`` and ``bench/suite.py``, one KIND per process.

    python3 bench/servers.py KIND --port P [--host 127.0.0.1] [--cpu N] [--proto PROTO]
    python3 bench/servers.py KIND --unix PATH [--cpu N] [--proto PROTO]
    python3 bench/servers.py --check KIND [--proto PROTO]   # exit 0 if KIND can run here
    python3 bench/servers.py --check-all   # JSON: {kind: {proto: null or why not}}

KINDs:

* ``asyncio``    -- asyncio Protocol API on the default (selector/epoll) loop.
* ``uvloop``     -- the very same Protocol on uvloop (skipped if not installed).
* ``netreactor`` -- this project, through its public contract only.  Engine
  options may be given in ``NETREACTOR_BENCH_OPTIONS`` (``name=value,...``,
  values as Python literals: ``idle_timeout=300,max_connections=20000``).
* ``netreactor-idle`` -- the same with ``idle_timeout=300`` (its timing wheel
  on, no connection expiring within a run): the cost of idle timeouts, side
  by side with ``netreactor`` in one run.
* ``gevent``     -- a ``gevent.server.StreamServer`` handler, one greenlet per
  connection with blocking-style ``recv``/``sendall`` (skipped if not installed).
* ``twisted``    -- a Twisted ``Protocol`` on the default (epoll) reactor
  (skipped if not installed).
* ``c-floor``    -- a floor, not a contender: ``cfloor.c``, the cheapest
  server the same syscalls allow (one read, one write, a share of one
  epoll_wait per batch), built on demand.  Its CPU per message is what the
  kernel costs here; the gap between it and a Python server is all that user
  space can win back.  echo and framed only.
* ``py-floor``   -- the other floor: the barest pure-Python epoll loop with the
  same syscalls (``os.read``/``os.write`` straight from the dispatch loop, no
  handler, no connection object), and for framed the hand-written frame loop
  inline.  No pure-Python framework can use less CPU than this, whatever its
  design; netreactor's distance to it is its whole overhead.  echo and framed.
* ``py-api-floor`` -- ``py-floor`` plus the least a callback API costs: each
  read is handed to ``handler.on_traffic(conn)``, which calls ``conn.read()``
  and ``conn.write(data)`` on a three-slot connection object.  What any
  gnet-style pure-Python framework pays at the very least.  echo only.

* TLS kinds (``bench/tls.py``; echo over TLS; ``--certfile``/``--keyfile``,
  ``--ciphers`` for TLS 1.2 suites): ``uvloop-tls`` and ``asyncio-tls`` (the
  same Protocol, ``create_server(..., ssl=context)``), ``netreactor-tls``
  (``tls://`` with ``tls=netreactor.tls.server_context(...)``; skipped with the
  reason until netreactor serves TLS), and two TLS floors:
  ``py-floor-tls-bio`` (ssl.SSLObject over MemoryBIOs, as asyncio, uvloop and
  trio do) and ``py-floor-tls-sock`` (a non-blocking ssl.SSLSocket reading the
  fd itself, as Tornado does).  Their docstrings say how each handles the
  subtleties (want-read/want-write, coalesced records, records without
  application data, close_notify).

PROTOs:

* ``echo`` (default) -- echo every byte back as it arrives.  All kinds.
* ``framed`` -- length-prefixed frames (4-byte big-endian length of the bytes
  that follow, then the payload); every frame is decoded and its payload sent
  back re-encoded as one frame.  All kinds.  netreactor: a
  ``nr.FramedHandler`` with ``codec = LengthFieldCodec(4)`` whose ``on_frames``
  returns the frames of each read (the burst API; ``on_frame``, one call per
  frame, runs ~15% more instructions per frame).  asyncio/uvloop: the same protocol hand-written on the
  Protocol API the way a competent asyncio user writes it -- a bytearray
  buffer, a loop of ``struct.unpack_from`` over the complete frames, the
  replies gathered and written with one ``transport.write(b"".join(...))``
  per ``data_received``, and the same 1 MiB frame-length limit as the codec's
  default.  gevent: the same loop around ``recv``/``sendall`` in the
  connection's greenlet.  Twisted: its own ``Int32StringReceiver`` (the same
  wire format) whose ``stringReceived`` calls ``sendString``, the idiomatic
  Twisted way.
* ``resp`` / ``http`` -- netreactor, asyncio and uvloop only: the Redis
  (``netreactor example redis``) and HTTP/1.1 (``netreactor example http``)
  example handlers.  netreactor runs them as they are; asyncio and uvloop run
  *the very same handler objects* behind a small ``asyncio.Protocol`` shim
  (``data_received`` -> ``on_traffic`` on a conn-like object whose ``read()``
  returns the chunk and whose ``write()`` is ``transport.write``), so the
  comparison isolates the event loop and I/O layer from the protocol code.

Each server is the idiomatic few lines a user would write, with two settings
made explicit so the comparison is fair:

* ``TCP_NODELAY`` on every accepted TCP connection (netreactor does this by
  default; asyncio and uvloop do it too nowadays, we set it in
  ``connection_made`` anyway so the benchmark does not depend on that).
* A listen backlog of 1024 for asyncio/uvloop instead of their default 100,
  since the load generator opens thousands of connections.  (It also throttles
  its connects, so this mostly matters for robustness.)

The process runs until it is killed (SIGTERM/SIGKILL from the harness).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import socket
import ssl
import struct
import sys

KINDS = ("netreactor", "netreactor-idle", "uvloop", "asyncio", "gevent", "twisted", "c-floor",
         "py-floor", "py-api-floor", "netreactor-tls", "uvloop-tls", "asyncio-tls", "py-floor-tls-bio", "py-floor-tls-sock")
PROTOS = ("echo", "framed", "resp", "http")
#: Protocols that only these kinds serve (the netreactor example handlers).
APP_PROTOS = {"resp": "redis", "http": "http"}
APP_KINDS = ("netreactor", "netreactor-idle", "uvloop", "asyncio")

# The package uses a flat layout: make ``import netreactor`` find the source
# tree this file belongs to (bench/ is sys.path[0] when run as a script).
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(1, REPO_ROOT)


def _nodelay(sock) -> None:
    """TCP_NODELAY on an accepted TCP socket (None and Unix sockets are left as they are)."""
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


# --------------------------------------------------------------------------
# asyncio / uvloop: the Protocol API (callbacks, no task per connection)
# --------------------------------------------------------------------------
class EchoProtocol(asyncio.Protocol):
    """Echo every chunk back as it arrives."""

    def connection_made(self, transport):
        _nodelay(transport.get_extra_info("socket"))
        self.transport = transport

    def data_received(self, data):
        self.transport.write(data)


_HEADER = struct.Struct(">I")  # 4-byte big-endian length of the bytes that follow
MAX_FRAME = 1 << 20            # same limit as LengthFieldCodec's default max_frame_length


class FramedEchoProtocol(asyncio.Protocol):
    """Length-prefixed frames; each payload is sent back as one frame."""

    def connection_made(self, transport):
        _nodelay(transport.get_extra_info("socket"))
        self.transport = transport
        self.buf = bytearray()

    def data_received(self, data):
        buf = self.buf
        buf += data
        end = len(buf)
        pos = 0
        out = []
        unpack_from, pack = _HEADER.unpack_from, _HEADER.pack
        while end - pos >= 4:
            (length,) = unpack_from(buf, pos)
            if length > MAX_FRAME - 4:
                self.transport.close()  # corrupt or hostile peer
                return
            stop = pos + 4 + length
            if stop > end:
                break
            payload = buf[pos + 4:stop]          # the frame (a copy)
            out.append(pack(len(payload)))       # reply = the payload, re-encoded
            out.append(payload)
            pos = stop
        if pos:
            del buf[:pos]
        if out:
            self.transport.write(b"".join(out))


class _ShimConn:
    """Just enough of a netreactor ``Conn`` for the example handlers' hot path."""

    __slots__ = ("data", "context", "write", "transport")

    def __init__(self, transport) -> None:
        self.transport = transport
        self.write = transport.write
        self.context = None
        self.data = b""

    def read(self, n: int = -1) -> bytes:
        data, self.data = self.data, b""
        return data

    def writev(self, buffers) -> None:
        self.transport.writelines(buffers)

    def set_read_timeout(self, seconds, on_timeout=None) -> None:
        pass  # the HTTP example times a request that arrives in pieces; the shim does not

    def set_idle_timeout(self, seconds) -> None:
        pass

    def close(self) -> None:
        self.transport.close()


def _app_protocol_factory(proto: str):
    """An asyncio Protocol class running netreactor's example handler for ``proto``."""
    from netreactor import Action
    from netreactor.examples import load_example

    handler = load_example(APP_PROTOS[proto])()
    on_traffic = handler.on_traffic
    close = Action.CLOSE

    class AppProtocol(asyncio.Protocol):
        def connection_made(self, transport):
            _nodelay(transport.get_extra_info("socket"))
            self.transport = transport
            self.conn = _ShimConn(transport)
            handler.on_open(self.conn)

        def data_received(self, data):
            conn = self.conn
            conn.data = data
            if on_traffic(conn) is close:
                self.transport.close()

    return AppProtocol


async def _serve_protocol(host: str, port: int, unix: str | None, proto: str = "echo",
                          tls: ssl.SSLContext | None = None) -> None:
    loop = asyncio.get_running_loop()
    if proto in APP_PROTOS:
        factory = _app_protocol_factory(proto)
    else:
        factory = FramedEchoProtocol if proto == "framed" else EchoProtocol
    if unix:
        server = await loop.create_unix_server(factory, unix, backlog=1024, ssl=tls)
    else:
        server = await loop.create_server(
            factory, host, port, backlog=1024, reuse_address=True, ssl=tls
        )
    async with server:
        await server.serve_forever()


def serve_asyncio(host: str, port: int, unix: str | None, proto: str = "echo",
                  tls: ssl.SSLContext | None = None) -> None:
    asyncio.run(_serve_protocol(host, port, unix, proto, tls))


def serve_uvloop(host: str, port: int, unix: str | None, proto: str = "echo",
                 tls: ssl.SSLContext | None = None) -> None:
    import uvloop

    if hasattr(uvloop, "run"):  # uvloop >= 0.18
        uvloop.run(_serve_protocol(host, port, unix, proto, tls))
    else:
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
        asyncio.run(_serve_protocol(host, port, unix, proto, tls))


# --------------------------------------------------------------------------
# netreactor: public contract only (EventHandler, Conn.read/write, run)
# --------------------------------------------------------------------------
def bench_options(defaults: dict | None = None) -> dict:
    """Engine options for the netreactor kinds: ``defaults``, then
    ``NETREACTOR_BENCH_OPTIONS`` (``name=value,...``; values are Python literals)."""
    import ast

    options = dict(defaults or {})
    for item in filter(None, os.environ.get("NETREACTOR_BENCH_OPTIONS", "").split(",")):
        name, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"NETREACTOR_BENCH_OPTIONS: expected name=value, got {item!r}")
        try:
            options[name.strip()] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            options[name.strip()] = value.strip()
    return options


def serve_netreactor(host: str, port: int, unix: str | None, proto: str = "echo",
                     options: dict | None = None) -> None:
    import netreactor as nr

    class Echo(nr.EventHandler):
        def on_traffic(self, conn):
            conn.write(conn.read())

    handler = Echo()
    if proto == "framed":
        from netreactor.codec import LengthFieldCodec

        class FramedEcho(nr.FramedHandler):
            codec = LengthFieldCodec(4)

            def on_frames(self, conn, frames):
                return frames  # the burst, encoded again by the codec in one pass

        handler = FramedEcho()
    elif proto in APP_PROTOS:
        from netreactor.examples import load_example, resolve_flags

        handler = load_example(APP_PROTOS[proto])()
        # The engine options `netreactor example NAME` gives it (HTTP: its
        # keep-alive timeout is the engine's idle_timeout, not one per connection).
        options = {**resolve_flags(APP_PROTOS[proto], {}, {})[1], **(options or {})}
    addr = f"unix://{unix}" if unix else f"tcp://{host}:{port}"
    # --engine flags over the defaults, then NETREACTOR_BENCH_OPTIONS over both.
    nr.run(handler, addr, **bench_options({**(options or {}), **ENGINE_OPTIONS}))


#: Engine options of the netreactor kinds (``--engine``: netreactor's own command-line flags).
ENGINE_OPTIONS: dict = {}


def engine_options(flags: str) -> dict:
    """``"--asyncio --edge-triggered"`` -> ``{"asyncio": True, "edge_triggered": True}``,
    parsed and named as ``netreactor run`` does; a bad flag exits with its error."""
    import shlex

    from netreactor.cli.flags import add_option_flags, options_from_args

    ap = argparse.ArgumentParser(prog="--engine", allow_abbrev=False)
    add_option_flags(ap)
    return options_from_args(ap.parse_args(shlex.split(flags)))


# --------------------------------------------------------------------------
# gevent: one greenlet per connection, blocking-style socket calls
# --------------------------------------------------------------------------
def serve_gevent(host: str, port: int, unix: str | None, proto: str = "echo") -> None:
    from gevent.server import StreamServer

    def echo(sock, _addr):
        _nodelay(sock)
        recv, sendall = sock.recv, sock.sendall
        try:
            while True:
                data = recv(65536)
                if not data:
                    break
                sendall(data)
        except OSError:
            pass

    def framed(sock, _addr):
        _nodelay(sock)
        recv, sendall = sock.recv, sock.sendall
        unpack_from, pack = _HEADER.unpack_from, _HEADER.pack
        buf = bytearray()
        try:
            while True:
                data = recv(65536)
                if not data:
                    break
                buf += data
                end, pos, out = len(buf), 0, []
                while end - pos >= 4:
                    (length,) = unpack_from(buf, pos)
                    if length > MAX_FRAME - 4:
                        return  # corrupt or hostile peer
                    stop = pos + 4 + length
                    if stop > end:
                        break
                    payload = buf[pos + 4:stop]
                    out.append(pack(len(payload)))
                    out.append(payload)
                    pos = stop
                if pos:
                    del buf[:pos]
                if out:
                    sendall(b"".join(out))
        except OSError:
            pass

    handle = framed if proto == "framed" else echo
    if unix:
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(unix)
        listener.listen(1024)
        server = StreamServer(listener, handle)
    else:
        server = StreamServer((host, port), handle, backlog=1024)
    server.serve_forever()


# --------------------------------------------------------------------------
# Twisted: Protocol callbacks on the default (epoll) reactor
# --------------------------------------------------------------------------
def serve_twisted(host: str, port: int, unix: str | None, proto: str = "echo") -> None:
    from twisted.internet import protocol, reactor
    from twisted.protocols.basic import Int32StringReceiver

    class Echo(protocol.Protocol):
        def connectionMade(self):
            if hasattr(self.transport, "setTcpNoDelay"):
                self.transport.setTcpNoDelay(True)

        def dataReceived(self, data):
            self.transport.write(data)

    class FramedEcho(Int32StringReceiver):  # 4-byte big-endian length prefix
        MAX_LENGTH = MAX_FRAME - 4

        def connectionMade(self):
            if hasattr(self.transport, "setTcpNoDelay"):
                self.transport.setTcpNoDelay(True)

        def stringReceived(self, string):
            self.sendString(string)

    factory = protocol.Factory.forProtocol(FramedEcho if proto == "framed" else Echo)
    if unix:
        reactor.listenUNIX(unix, factory, backlog=1024)
    else:
        reactor.listenTCP(port, factory, backlog=1024, interface=host)
    reactor.run()


# --------------------------------------------------------------------------
# c: the kernel floor (bench/cfloor.c), exec'd in place so the harness's pid,
# CPU pinning and CPU accounting apply to it unchanged
# --------------------------------------------------------------------------
CFLOOR_SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cfloor.c")
CFLOOR_BIN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_build", "cfloor")


def _build_cfloor() -> str | None:
    """Build cfloor.c if needed; None when ready, else why not."""
    from _common import compile_c, find_cc, is_stale

    if not is_stale(CFLOOR_BIN, CFLOOR_SRC):
        return None
    cc = find_cc()
    if cc is None:
        return "no C compiler (cc, gcc or clang) to build bench/cfloor.c"
    r = compile_c(cc, CFLOOR_SRC, CFLOOR_BIN)
    return None if r.returncode == 0 else f"building bench/cfloor.c failed: {r.stderr.strip()}"


def serve_c_floor(host: str, port: int, unix: str | None, proto: str = "echo") -> None:
    where = ["--unix", unix] if unix else ["--host", host, "--port", str(port)]
    os.execv(CFLOOR_BIN, [CFLOOR_BIN, *where, "--proto", proto])


# --------------------------------------------------------------------------
# py-floor: the barest pure-Python loop with the same syscalls
# --------------------------------------------------------------------------
class _FloorConn:
    """py-api-floor's connection: the least a ``read``/``write`` API can hold."""

    __slots__ = ("_in", "_out", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._in = b""
        self._out = None

    def read(self) -> bytes:
        data, self._in = self._in, b""
        return data

    def write(self, data: bytes) -> int:
        self._out = data  # the loop sends it when on_traffic returns
        return len(data)


class _FloorEcho:
    def on_traffic(self, conn: _FloorConn) -> None:
        conn.write(conn.read())


def _listener(host: str, port: int, unix: str | None) -> socket.socket:
    """A non-blocking listening socket with a backlog of 1,024 (the floors')."""
    if unix:
        lsock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        lsock.bind(unix)
    else:
        lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        lsock.bind((host, port))
    lsock.listen(1024)
    lsock.setblocking(False)
    return lsock


def _accepted(lsock: socket.socket):
    """Every connection waiting on a non-blocking listener, non-blocking, TCP_NODELAY set."""
    while True:
        try:
            s, _ = lsock.accept()
        except BlockingIOError:
            return
        s.setblocking(False)
        _nodelay(s)
        yield s


def serve_py_floor(host: str, port: int, unix: str | None, proto: str = "echo",
                   api: bool = False) -> None:
    import select

    lsock = _listener(host, port, unix)
    lfd = lsock.fileno()
    ep = select.epoll()
    ep.register(lfd, select.EPOLLIN)
    socks: dict = {}        # fd -> socket (kept alive); with api, fd -> _FloorConn
    pending: dict = {}      # fd -> reply bytes the socket did not take yet
    bufs: dict = {}         # framed: fd -> partial frame
    read, write, IN, OUT = os.read, os.write, select.EPOLLIN, select.EPOLLOUT
    unpack_from, pack = _HEADER.unpack_from, _HEADER.pack
    framed = proto == "framed"
    handler = _FloorEcho()

    def drop(fd: int) -> None:
        ep.unregister(fd)
        s = socks.pop(fd)
        (s.sock if api else s).close()
        pending.pop(fd, None)
        bufs.pop(fd, None)

    while True:
        for fd, _ev in ep.poll():
            if fd == lfd:
                for s in _accepted(lsock):
                    socks[s.fileno()] = _FloorConn(s) if api else s
                    ep.register(s.fileno(), IN)
                continue
            if fd in pending:  # writable again: send the rest, then read again
                data = pending.pop(fd)
                try:
                    n = write(fd, data)
                except OSError:
                    drop(fd)
                    continue
                if n < len(data):
                    pending[fd] = data[n:]
                else:
                    ep.modify(fd, IN)
                continue
            try:
                data = read(fd, 65536)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data:
                drop(fd)
                continue
            if api:
                conn = socks[fd]
                conn._in = data
                handler.on_traffic(conn)
                data = conn._out
                if data is None:
                    continue
                conn._out = None
            elif framed:  # the hand-written frame loop, as in FramedEchoProtocol
                buf = bufs.get(fd)
                if buf:
                    buf += data
                    data = bytes(buf)
                end, pos, out = len(data), 0, []
                while end - pos >= 4:
                    (length,) = unpack_from(data, pos)
                    if length > MAX_FRAME - 4:
                        end = -1
                        break
                    stop = pos + 4 + length
                    if stop > end:
                        break
                    payload = data[pos + 4:stop]
                    out.append(pack(len(payload)))
                    out.append(payload)
                    pos = stop
                if end < 0:
                    drop(fd)
                    continue
                if pos < end:
                    bufs[fd] = bytearray(data[pos:])
                elif buf:
                    del bufs[fd]
                if not out:
                    continue
                data = b"".join(out)
            try:
                n = write(fd, data)
            except BlockingIOError:
                n = 0
            except OSError:
                drop(fd)
                continue
            if n < len(data):  # stop reading until the reply is out: bounded memory
                pending[fd] = data[n:]
                ep.modify(fd, OUT)


# --------------------------------------------------------------------------
# TLS (bench/tls.py): echo over TLS.  Every kind serves the run's certificate
# with the context an asyncio user writes -- ssl.create_default_context(
# Purpose.CLIENT_AUTH) + load_cert_chain (--ciphers: set_ciphers, for TLS 1.2)
# -- and netreactor-tls with netreactor.tls.server_context, its own helper.
# --------------------------------------------------------------------------
TLS_KINDS = ("netreactor-tls", "uvloop-tls", "asyncio-tls", "py-floor-tls-bio", "py-floor-tls-sock")


def tls_context(certfile: str, keyfile: str, ciphers: str | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(certfile, keyfile)
    if ciphers:
        ctx.set_ciphers(ciphers)
    return ctx


def serve_netreactor_tls(host: str, port: int, unix: str | None, certfile: str, keyfile: str,
                         ciphers: str | None) -> None:
    """netreactor's TLS transport through the public contract (tls:// and tls=)."""
    import netreactor as nr
    from netreactor.tls import server_context

    class Echo(nr.EventHandler):
        def on_traffic(self, conn):
            conn.write(conn.read())

    addr = f"unix://{unix}" if unix else f"tls://{host}:{port}"
    nr.run(Echo(), addr, tls=server_context(certfile, keyfile, ciphers=ciphers))


def serve_py_floor_tls_bio(host: str, port: int, unix: str | None, ctx: ssl.SSLContext) -> None:
    """The barest epoll loop with TLS as asyncio, uvloop and trio do it: ssl.SSLObject over
    two MemoryBIOs.  The loop moves ciphertext between the socket and the BIOs itself.

    * Handshake: each read feeds the incoming BIO and retries do_handshake();
      SSLWantReadError means the client's flight is not all here yet.  What
      OpenSSL wrote (ServerHello..Finished, then the session tickets) is in
      the outgoing BIO and goes out with the reply.  Application data may
      already sit behind the client's Finished: read it at once.
    * Reading: one recv_into for everything the kernel has, then SSLObject.read
      record by record into a 64 KiB buffer (>= 16 KiB, a whole record, so no
      decrypted byte is ever left behind in OpenSSL).  Drained when the
      incoming BIO is empty -- checked, so that draining costs no
      SSLWantReadError; that exception still comes for a partial record or one
      with no application data (a ticket, a key update).
    * Writing: SSLObject.write never blocks (the outgoing BIO grows); all the
      records of one read go out in one send().  What the socket does not
      take waits for EPOLLOUT and the connection is not read meanwhile, so
      memory stays bounded.
    * read() returning 0 is the client's close_notify: unwrap() puts ours in
      the outgoing BIO, it goes out, and the EOF that follows closes.  A
      socket EOF without close_notify (a truncation) just closes.
    """
    import select

    lsock = _listener(host, port, unix)
    lfd = lsock.fileno()
    ep = select.epoll()
    ep.register(lfd, select.EPOLLIN)
    conns: dict = {}    # fd -> [socket, SSLObject, incoming BIO, outgoing BIO, handshake done]
    pending: dict = {}  # fd -> ciphertext the socket did not take yet
    rbuf = bytearray(65536)  # ciphertext from the socket
    rview = memoryview(rbuf)
    pbuf = bytearray(65536)  # plaintext out of OpenSSL
    pview = memoryview(pbuf)
    IN, OUT = select.EPOLLIN, select.EPOLLOUT
    WantRead, SSLError, MemoryBIO, wrap = ssl.SSLWantReadError, ssl.SSLError, ssl.MemoryBIO, ctx.wrap_bio

    def drop(fd: int) -> None:
        ep.unregister(fd)
        conns.pop(fd)[0].close()
        pending.pop(fd, None)

    while True:
        for fd, _ in ep.poll():
            if fd == lfd:
                for s in _accepted(lsock):
                    inc, out = MemoryBIO(), MemoryBIO()
                    conns[s.fileno()] = [s, wrap(inc, out, server_side=True), inc, out, False]
                    ep.register(s.fileno(), IN)
                continue
            c = conns[fd]
            sock = c[0]
            if fd in pending:  # writable again: send the rest, then read again
                data = pending.pop(fd)
                try:
                    n = sock.send(data)
                except OSError:
                    drop(fd)
                    continue
                if n < len(data):
                    pending[fd] = data[n:]
                else:
                    ep.modify(fd, IN)
                continue
            try:
                n = sock.recv_into(rbuf)
            except BlockingIOError:
                continue
            except OSError:
                n = 0
            if not n:
                drop(fd)
                continue
            obj, inc = c[1], c[2]
            inc.write(rview[:n])
            try:
                if not c[4]:
                    try:
                        obj.do_handshake()
                        c[4] = True
                    except WantRead:
                        pass
                while c[4] and inc.pending:
                    try:
                        k = obj.read(65536, pbuf)
                    except WantRead:
                        break
                    if not k:  # close_notify: ours back, then close
                        obj.unwrap()
                        break
                    obj.write(pview[:k])
            except WantRead:  # unwrap() sent ours and would wait for more: no need
                pass
            except SSLError:
                drop(fd)
                continue
            data = c[3].read()
            if not data:
                continue
            try:
                n = sock.send(data)
            except BlockingIOError:
                n = 0
            except OSError:
                drop(fd)
                continue
            if n < len(data):  # stop reading until the reply is out: bounded memory
                pending[fd] = data[n:]
                ep.modify(fd, OUT)


def serve_py_floor_tls_sock(host: str, port: int, unix: str | None, ctx: ssl.SSLContext) -> None:
    """The barest epoll loop with TLS as Tornado does it: a non-blocking ssl.SSLSocket
    (do_handshake_on_connect=False) whose OpenSSL reads and writes the fd itself.

    * Handshake: do_handshake() on every event until it completes;
      SSLWantReadError waits for EPOLLIN, SSLWantWriteError for EPOLLOUT.
    * Reading: one recv_into per readable event into a 64 KiB buffer.  OpenSSL
      (read_ahead off, CPython's default) reads one record from the fd -- a
      5-byte header, then the body: two read() calls -- and leaves the next
      record in the kernel, where level-triggered epoll still sees it.  A
      buffer >= 16 KiB takes a whole record, so pending() is always 0
      afterwards; with a smaller buffer, or edge-triggered epoll, the loop
      would have to drain with pending() / until SSLWantReadError itself, or
      stall.  SSLWantReadError: a partial record, or one with no application
      data (a key update); nothing to echo.
    * Writing: send() is SSL_write without partial writes: it writes every
      record or raises SSLWantWriteError having written some.  Then the very
      same bytes must be offered again once the fd is writable (OpenSSL
      remembers how far it got); the connection is not read meanwhile.
    * recv_into() returning 0 is close_notify or EOF (with CPython's default
      OP_IGNORE_UNEXPECTED_EOF OpenSSL reports both the same way): unwrap()
      sends our close_notify, then close.
    """
    import select

    lsock = _listener(host, port, unix)
    lfd = lsock.fileno()
    ep = select.epoll()
    ep.register(lfd, select.EPOLLIN)
    conns: dict = {}    # fd -> [SSLSocket, handshake done, events registered]
    pending: dict = {}  # fd -> plaintext SSL_write must be given again
    buf = bytearray(65536)
    view = memoryview(buf)
    IN, OUT = select.EPOLLIN, select.EPOLLOUT
    WantRead, WantWrite, SSLError = ssl.SSLWantReadError, ssl.SSLWantWriteError, ssl.SSLError
    wrap = ctx.wrap_socket

    def drop(fd: int) -> None:
        ep.unregister(fd)
        conns.pop(fd)[0].close()
        pending.pop(fd, None)

    def wait(fd: int, c: list, events: int) -> None:
        if c[2] != events:
            ep.modify(fd, events)
            c[2] = events

    while True:
        for fd, _ in ep.poll():
            if fd == lfd:
                for s in _accepted(lsock):
                    ss = wrap(s, server_side=True, do_handshake_on_connect=False)
                    conns[ss.fileno()] = [ss, False, IN]
                    ep.register(ss.fileno(), IN)
                continue
            c = conns[fd]
            ss = c[0]
            n = 0
            try:
                if fd in pending:  # writable again: the same bytes, then read again
                    ss.send(pending[fd])
                    del pending[fd]
                    wait(fd, c, IN)
                    continue
                if not c[1]:
                    ss.do_handshake()
                    c[1] = True
                    wait(fd, c, IN)
                    continue  # the client's data, if any, is still in the kernel: epoll says so
                n = ss.recv_into(buf)
                if not n:
                    try:
                        ss.unwrap()  # close_notify back; EOF-only peers just go
                    except (SSLError, OSError):
                        pass
                    drop(fd)
                    continue
                ss.send(view[:n])
                if c[2] != IN:  # after a WantWrite on a read
                    wait(fd, c, IN)
            except WantRead:
                wait(fd, c, IN)
            except WantWrite:
                if n and fd not in pending:
                    pending[fd] = bytes(view[:n])  # the buffer is reused: keep the bytes
                wait(fd, c, OUT)
            except (SSLError, OSError):
                drop(fd)


SERVE = {"asyncio": serve_asyncio, "uvloop": serve_uvloop, "netreactor": serve_netreactor,
         "netreactor-idle": lambda *a: serve_netreactor(*a, options={"idle_timeout": 300.0}),
         "gevent": serve_gevent, "twisted": serve_twisted,
         "c-floor": serve_c_floor, "py-floor": serve_py_floor,
         "py-api-floor": lambda *a: serve_py_floor(*a, api=True)}
#: TLS kinds: (host, port, unix, SSLContext); netreactor-tls builds its own context.
SERVE_TLS = {"asyncio-tls": lambda h, p, u, ctx: serve_asyncio(h, p, u, "echo", ctx),
             "uvloop-tls": lambda h, p, u, ctx: serve_uvloop(h, p, u, "echo", ctx),
             "py-floor-tls-bio": serve_py_floor_tls_bio, "py-floor-tls-sock": serve_py_floor_tls_sock}


def _importable(module: str, kind: str, pip: str) -> str | None:
    try:
        __import__(module)
    except ImportError as e:
        return f"{kind} is not installed ({e}); pip install {pip}"
    return None


def _check_netreactor_tls() -> str | None:
    """Whether netreactor serves tls:// yet: a real start (on_boot aborts it) with a fresh certificate."""
    import tempfile

    try:
        import netreactor as nr
        from netreactor.tls import server_context
        from _certs import make_certs

        class Probe(nr.EventHandler):
            def on_boot(self, engine):
                return nr.Action.SHUTDOWN

        with tempfile.TemporaryDirectory(prefix="nr-tls-check-") as d:
            certs = make_certs(d)
            nr.run(Probe(), "tls://127.0.0.1:0", tls=server_context(certs.cert, certs.key))
    except Exception as e:
        return f"netreactor has no TLS transport yet ({type(e).__name__}: {e})"[:300]
    return None


def check(kind: str, proto: str = "echo") -> str | None:
    """Return None if ``kind`` can run ``proto`` in this interpreter, else the reason."""
    if proto not in PROTOS:
        return f"unknown protocol {proto!r} (choose from {', '.join(PROTOS)})"
    if kind in TLS_KINDS:
        if proto != "echo":
            return f"{kind} serves echo over TLS only, not {proto}"
        if kind == "uvloop-tls":
            return _importable("uvloop", "uvloop", "uvloop")
        return _check_netreactor_tls() if kind == "netreactor-tls" else None
    if kind in KINDS and proto in APP_PROTOS:
        if kind not in APP_KINDS:
            return f"{kind} has no {proto} server here (only {', '.join(APP_KINDS)})"
        try:
            from netreactor.examples import load_example

            load_example(APP_PROTOS[proto])
        except Exception as e:
            return f"netreactor's {APP_PROTOS[proto]} example is not importable: {e}"
    if kind == "asyncio":
        return None
    if kind == "py-api-floor" and proto != "echo":
        return f"{kind} serves echo only, not {proto}"
    if kind in ("c-floor", "py-floor", "py-api-floor"):
        if proto not in ("echo", "framed"):
            return f"{kind} serves echo and framed only, not {proto}"
        return _build_cfloor() if kind == "c-floor" else None
    if kind == "uvloop":
        return _importable("uvloop", "uvloop", "uvloop")
    if kind == "gevent":
        return _importable("gevent", "gevent", "gevent")
    if kind == "twisted":
        return _importable("twisted.internet.protocol", "Twisted", "twisted")
    if kind in ("netreactor", "netreactor-idle"):
        try:
            import netreactor as nr
        except Exception as e:  # any import-time failure means "not ready"
            return f"import netreactor failed: {type(e).__name__}: {e}"
        missing = [n for n in ("run", "EventHandler") if not hasattr(nr, n)]
        if proto == "framed":
            missing += [n for n in ("FramedHandler",) if not hasattr(nr, n)]
            try:
                from netreactor.codec import LengthFieldCodec  # noqa: F401
            except Exception:
                missing.append("codec.LengthFieldCodec")
        if missing:
            return f"netreactor has no {', '.join(missing)} yet"
        return None
    return f"unknown server kind {kind!r} (choose from {', '.join(KINDS)})"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("kind", choices=KINDS)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--unix", default=None, help="serve on this unix socket path instead")
    ap.add_argument("--cpu", type=int, default=None, help="pin the process to this CPU")
    ap.add_argument("--proto", choices=PROTOS, default="echo",
                    help="echo (default), framed (4-byte length-prefixed frames), resp or http "
                         "(netreactor's example handlers; netreactor, uvloop, asyncio)")
    ap.add_argument("--check", action="store_true", help="only check that KIND can run")
    ap.add_argument("--certfile", help="TLS kinds: the server's certificate chain (PEM)")
    ap.add_argument("--keyfile", help="TLS kinds: its private key (PEM)")
    ap.add_argument("--ciphers", help="TLS kinds: SSLContext.set_ciphers (TLS 1.2 suites)")
    ap.add_argument("--engine", default="", metavar="FLAGS",
                    help="netreactor kinds: engine options as netreactor's command-line flags, "
                         "e.g. --engine='--asyncio --edge-triggered'")
    if argv is None:
        argv = sys.argv[1:]
    if argv[:1] == ["--check-all"]:
        # One process answers for every (kind, proto): {kind: {proto: reason or null}}.
        import json

        print(json.dumps({k: {p: check(k, p) for p in PROTOS} for k in KINDS}))
        return 0
    args = ap.parse_args(argv)

    reason = check(args.kind, args.proto)
    if args.check or reason:
        if reason:
            print(reason, file=sys.stderr)
            return 3
        return 0
    if not args.unix and not args.port:
        ap.error("--port or --unix is required")
    if args.engine:
        if not args.kind.startswith("netreactor"):
            ap.error("--engine applies to the netreactor kinds only")
        ENGINE_OPTIONS.update(engine_options(args.engine))
    tls = None
    if args.kind in TLS_KINDS:
        if not (args.certfile and args.keyfile):
            ap.error(f"{args.kind} needs --certfile and --keyfile")
        if args.kind != "netreactor-tls":
            tls = tls_context(args.certfile, args.keyfile, args.ciphers)

    if args.cpu is not None:
        # Pin before the loop starts so every thread it creates inherits it.
        os.sched_setaffinity(0, {args.cpu})
    # Thousands of idle connections need thousands of fds.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    try:
        if args.kind == "netreactor-tls":
            serve_netreactor_tls(args.host, args.port, args.unix, args.certfile, args.keyfile,
                                 args.ciphers)
        elif tls is not None:
            SERVE_TLS[args.kind](args.host, args.port, args.unix, tls)
        else:
            SERVE[args.kind](args.host, args.port, args.unix, args.proto)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
