"""The PROXY protocol on the engine's listeners (options proxy_protocol, proxy_allow_from,
proxy_header_timeout): addresses and TLVs as the handler sees them, refusals that cost
one connection only, the header timeout, on every poller and serving model, TCP and
Unix; then real HAProxy (send-proxy, send-proxy-v2) and nginx stream in front."""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import threading
import time

import pytest
from _haproxy import HAProxy, haproxy_missing, listening_socket
from conftest import CORE_CONFIGS, connect, serving, wait_for

import netreactor as nr
from netreactor.protocols.proxy import (
    PP2_TYPE_ALPN,
    PP2_TYPE_AUTHORITY,
    PP2_TYPE_SSL,
    PP2_TYPE_UNIQUE_ID,
    Command,
    encode_ssl,
    encode_v1,
    encode_v2,
)

CLIENT = ("203.0.113.7", 40123)
DIALLED = ("198.51.100.9", 443)


def _plain(addr):
    """JSON-friendly form of a socket address."""
    if isinstance(addr, tuple):
        return [addr[0], addr[1]]
    if isinstance(addr, bytes):
        return addr.decode("latin-1")
    return addr


class Who(nr.EventHandler):
    """Tells each client, in one JSON line, what on_open saw; then echoes."""

    def __init__(self):
        self.opened = 0
        self.closed = []
        self.lock = threading.Lock()

    def on_open(self, conn):
        h = conn.proxy_header
        info = {"remote": _plain(conn.remote_addr), "local": _plain(conn.local_addr),
                "peer": _plain(conn.proxy_peer), "version": h.version if h else None,
                "command": h.command.name if h else None, "alpn": h.alpn.decode() if h and h.alpn else None,
                "authority": h.authority if h else None,
                "unique_id": h.unique_id.decode() if h and h.unique_id else None,
                "ssl_cn": h.ssl.cn if h and h.ssl else None,
                "tls": conn.tls.version if conn.tls else None,
                "sni": conn.tls.server_name if conn.tls else None}
        with self.lock:
            self.opened += 1
        conn.write(json.dumps(info).encode() + b"\n")

    def on_traffic(self, conn):
        conn.write(conn.read())

    def on_close(self, conn, err):
        with self.lock:  # proxy_header stays readable in on_close
            self.closed.append((conn.proxy_header is not None, _plain(conn.remote_addr)))


def _line(sock: socket.socket) -> dict:
    """The JSON line on_open wrote (read a byte at a time: echoed bytes may follow it)."""
    buf = b""
    while not buf.endswith(b"\n"):
        chunk = sock.recv(1)
        assert chunk, f"closed after {buf!r}"
        buf += chunk
    return json.loads(buf)


def _refused(sock: socket.socket) -> bool:
    """True when the server closed without a byte (EOF or reset)."""
    try:
        return sock.recv(100) == b""
    except ConnectionResetError:
        return True


def _address(engine: nr.Engine) -> str:
    return engine.addresses[0]


def _stat(engine, key):
    return engine.stats()[key]


# ---------------------------------------------------------------- the handler's view, everywhere

@pytest.mark.parametrize("transport", ["tcp", "unix"])
@pytest.mark.parametrize("config", CORE_CONFIGS)
def test_header_addresses_and_first_bytes(config, transport, unix_path):
    """v1 and v2 in one segment with the client's first bytes, and trickled a byte at a
    time (the header spans many reads): the handler sees the client's addresses and
    exactly the bytes that followed the header."""
    handler = Who()
    addr = "tcp://127.0.0.1:0" if transport == "tcp" else f"unix://{unix_path}"
    with serving(handler, addr, proxy_protocol="auto", **config) as engine:
        for header in (encode_v1(CLIENT, DIALLED), encode_v2(CLIENT, DIALLED)):
            with connect(_address(engine)) as c:
                c.sendall(header + b"hello")
                info = _line(c)
                assert info["remote"] == list(CLIENT) and info["local"] == list(DIALLED)
                assert info["version"] == (1 if header.startswith(b"PROXY") else 2)
                assert info["peer"] == (list(c.getsockname()) if transport == "tcp" else "")
                assert c.recv(5) == b"hello"
            with connect(_address(engine)) as c:
                c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1) if transport == "tcp" else None
                for i in range(len(header)):
                    c.send(header[i:i + 1])
                    time.sleep(0.001)
                c.sendall(b"world")
                assert _line(c)["remote"] == list(CLIENT)
                got = b""
                while len(got) < 5:
                    got += c.recv(5)
                assert got == b"world"
        wait_for(lambda: len(handler.closed) == 4, what="four closes")
        assert all(had for had, _ in handler.closed)
        assert _stat(engine, "accepted") == 4 and _stat(engine, "refused.proxy") == 0


def test_local_unknown_and_unspec_keep_the_real_addresses():
    handler = Who()
    with serving(handler, "tcp://127.0.0.1:0", proxy_protocol="auto") as engine:
        for header, command in ((encode_v2(command=Command.LOCAL), "LOCAL"),
                                (b"PROXY UNKNOWN\r\n", "PROXY"), (encode_v2(), "PROXY")):
            with connect(_address(engine)) as c:
                c.sendall(header)
                info = _line(c)
                assert info["remote"] == list(c.getsockname()) == info["peer"]
                assert info["local"] == list(c.getpeername()) and info["command"] == command


def test_v2_tlvs_reach_the_handler():
    ssl_value = encode_ssl(version="TLSv1.3", cn="nr-client")
    header = encode_v2(CLIENT, DIALLED, crc=True, tlvs=[
        (PP2_TYPE_ALPN, b"h2"), (PP2_TYPE_AUTHORITY, b"shop.example"),
        (PP2_TYPE_UNIQUE_ID, b"req-42"), (PP2_TYPE_SSL, ssl_value)])
    with serving(Who(), "tcp://127.0.0.1:0", proxy_protocol="v2") as engine, connect(_address(engine)) as c:
        c.sendall(header)
        info = _line(c)
    assert (info["alpn"], info["authority"], info["unique_id"], info["ssl_cn"]) == \
        ("h2", "shop.example", "req-42", "nr-client")


def test_listeners_without_the_option_take_no_header():
    with serving(Who(), "tcp://127.0.0.1:0") as engine, connect(_address(engine)) as c:
        info = _line(c)  # on_open ran at once: nothing was waited for
        assert info["peer"] is None and info["version"] is None
        assert info["remote"] == list(c.getsockname())


# ---------------------------------------------------------------- refusals cost one connection

@pytest.mark.parametrize("mode, data", [
    ("auto", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"),      # no header at all: refused at 'G'
    ("v1", encode_v2(CLIENT, DIALLED)),                # the other version
    ("v2", encode_v1(CLIENT, DIALLED)),
    ("auto", b"PROXY TCP4 1.2.3.400 5.6.7.8 1 2\r\n"),  # malformed
    ("auto", b"\r\n\r\n\x00\r\nQUIT\n\x21\x11\xff\xff"),  # v2 announcing 65535 bytes: over max_header
])
def test_bad_headers_are_refused_before_on_open(mode, data):
    handler = Who()
    with serving(handler, "tcp://127.0.0.1:0", proxy_protocol=mode) as engine:
        with connect(_address(engine)) as good:
            good.sendall(encode_v1(CLIENT, DIALLED) if mode != "v2" else encode_v2(CLIENT, DIALLED))
            assert _line(good)["remote"] == list(CLIENT)
            with connect(_address(engine)) as bad:
                bad.sendall(data)
                assert _refused(bad)
            wait_for(lambda: _stat(engine, "refused.proxy") == 1, what="the refusal to be counted")
            good.sendall(b"still here")  # the other connection is untouched
            assert good.recv(10) == b"still here"
        assert handler.opened == 1
        wait_for(lambda: len(handler.closed) == 1, what="the good connection's close")
        snap = engine.stats()
        assert snap["accepted"] == 2 and snap["open"] == 0 and snap["closed.peer"] == 1


def test_peers_outside_proxy_allow_from_are_refused_unix_ones_pass(unix_path):
    handler = Who()
    with serving(handler, "tcp://127.0.0.1:0", f"unix://{unix_path}", proxy_protocol="v1",
                 proxy_allow_from="10.0.0.0/8, 192.168.1.1") as engine:
        tcp, unix = engine.addresses
        with connect(tcp) as c:
            c.sendall(encode_v1(CLIENT, DIALLED))  # a valid header, from the wrong peer
            assert _refused(c)
        with connect(unix) as c:
            c.sendall(encode_v1(CLIENT, DIALLED))
            assert _line(c)["remote"] == list(CLIENT)
        assert _stat(engine, "refused.proxy") == 1 and handler.opened == 1


@pytest.mark.parametrize("sent", [b"", b"PROXY TCP4 203.0.113.7 "])
def test_a_silent_or_slow_header_times_out(sent):
    handler = Who()
    with serving(handler, "tcp://127.0.0.1:0", proxy_protocol="v1", proxy_header_timeout=0.3) as engine:
        with connect(_address(engine)) as c:
            c.sendall(sent)
            started = time.monotonic()
            assert _refused(c)
            assert 0.25 <= time.monotonic() - started < 5
        wait_for(lambda: _stat(engine, "closed.timeout") == 1, what="the timeout to be counted")
        assert handler.opened == 0 and engine.loops[0].timer_count() <= 1  # no timer left behind


def test_a_completed_header_cancels_its_timer():
    handler = Who()
    with serving(handler, "tcp://127.0.0.1:0", proxy_protocol="v1", proxy_header_timeout=0.3) as engine:
        with connect(_address(engine)) as c:
            c.sendall(encode_v1(CLIENT, DIALLED))
            _line(c)
            time.sleep(0.5)  # past the header timeout: the connection lives on
            c.sendall(b"ping")
            assert c.recv(4) == b"ping"
        assert _stat(engine, "closed.timeout") == 0


def test_a_peer_that_leaves_mid_header_costs_only_itself():
    handler = Who()
    with serving(handler, "tcp://127.0.0.1:0", proxy_protocol="v2") as engine:
        with connect(_address(engine)) as c:
            c.sendall(encode_v2(CLIENT, DIALLED)[:20])
        wait_for(lambda: _stat(engine, "closed.peer") == 1, what="the peer's close to be counted")
        assert engine.count_connections() == 0 and handler.opened == 0 and handler.closed == []


@pytest.mark.parametrize("options, match", [
    ({"proxy_protocol": "yes"}, "'proxy_protocol' must be one of 'off', 'v1', 'v2', 'auto'"),
    ({"proxy_allow_from": "10.0.0.300"}, "'proxy_allow_from': '10.0.0.300' is not an IP address"),
    ({"proxy_allow_from": ""}, "'proxy_allow_from'.*empty"),
    ({"proxy_allow_from": 10}, "'proxy_allow_from' must be a string"),
    ({"proxy_header_timeout": -1}, "'proxy_header_timeout' must be a number of seconds > 0"),
])
def test_bad_options_name_themselves(options, match):
    with pytest.raises(ValueError, match=match):
        nr.Engine(Who(), "tcp://127.0.0.1:0", **options)


# ---------------------------------------------------------------- real load balancers in front

needs_haproxy = pytest.mark.skipif(haproxy_missing() is not None, reason=haproxy_missing() or "")


@needs_haproxy
@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
@pytest.mark.parametrize("option, version", [("send-proxy", 1), ("send-proxy-v2", 2)])
def test_haproxy_in_front(host, option, version):
    handler = Who()
    with serving(handler, "tcp://127.0.0.1:0", proxy_protocol="auto") as engine, \
            listening_socket(host) as front:
        backend = _address(engine).split("://")[1]
        with HAProxy(f"""
frontend fe
    bind fd@{front.fileno()}
    unique-id-format req-%cp
    default_backend be
backend be
    server nr {backend} {option} proxy-v2-options unique-id
""", pass_fds=[front]):
            with connect(f"tcp://[{host}]:{front.getsockname()[1]}") as c:
                info = _line(c)
                me, dialled = c.getsockname(), c.getpeername()
                c.sendall(b"through haproxy")
                assert c.recv(100) == b"through haproxy"
    assert info["remote"] == [me[0], me[1]] and info["local"] == [dialled[0], dialled[1]]
    assert info["version"] == version and info["peer"][0] == "127.0.0.1"
    assert info["unique_id"] == (f"req-{me[1]}" if version == 2 else None)


@needs_haproxy
def test_haproxy_to_a_unix_listener(tmp_path):
    path = str(tmp_path / "nr.sock")
    with serving(Who(), f"unix://{path}", proxy_protocol="v2") as engine, listening_socket("127.0.0.1") as front, \
            HAProxy(f"""
frontend fe
    bind fd@{front.fileno()}
    default_backend be
backend be
    server nr unix@{path} send-proxy-v2
""", pass_fds=[front]):
        with connect(f"tcp://127.0.0.1:{front.getsockname()[1]}") as c:
            info = _line(c)
            assert info["remote"] == list(c.getsockname()) and info["peer"] == ""
        assert engine.stats()["refused.proxy"] == 0


@needs_haproxy
def test_haproxy_in_front_of_a_tls_listener(tls_pki):
    """HAProxy in TCP mode passes TLS through and prefixes PROXY v2: netreactor reads the
    header, then terminates TLS, and the handler sees the client's address."""
    from netreactor.tls import server_context

    tls = server_context(tls_pki["server.pem"], tls_pki["server.key"])
    with serving(Who(), "tls://127.0.0.1:0", tls=tls, proxy_protocol="v2") as engine, \
            listening_socket("127.0.0.1") as front:
        with HAProxy(f"""
frontend fe
    bind fd@{front.fileno()}
    default_backend be
backend be
    server nr {_address(engine).split("://")[1]} send-proxy-v2
""", pass_fds=[front]):
            raw = connect(f"tcp://127.0.0.1:{front.getsockname()[1]}")
            with _client_tls(tls_pki).wrap_socket(raw, server_hostname="localhost") as c:
                info = _line(c)
                me = c.getsockname()
                c.sendall(b"tls through haproxy")
                assert c.recv(100) == b"tls through haproxy"
        snap = engine.stats()
    assert info["remote"] == [me[0], me[1]] and info["peer"][0] == "127.0.0.1"
    assert info["tls"].startswith("TLSv1.") and info["version"] == 2
    assert snap["tls_handshakes"] == 1 and snap["refused.proxy"] == 0


# ---------------------------------------------------------------- PROXY before TLS

def _client_tls(tls_pki) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=tls_pki["ca.pem"])
    return ctx


def _handshake_after(sock: socket.socket, ctx: ssl.SSLContext, first: bytes, sni: str = "localhost"):
    """A TLS client over ``sock`` whose ClientHello goes in one segment right after
    ``first`` (the PROXY header): the server must hand the handshake the bytes it read
    past the header. Returns a function reading one line of plaintext."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=sni)
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    sock.sendall(first + outgoing.read())
    while True:
        try:
            obj.do_handshake()
            break
        except ssl.SSLWantReadError:
            if outgoing.pending:
                sock.sendall(outgoing.read())
            data = sock.recv(65536)
            assert data, "the server closed during the handshake"
            incoming.write(data)
    if outgoing.pending:
        sock.sendall(outgoing.read())

    def line() -> dict:
        buf = b""
        while not buf.endswith(b"\n"):
            try:
                buf += obj.read(1)
            except ssl.SSLWantReadError:
                data = sock.recv(65536)
                assert data, f"closed after {buf!r}"
                incoming.write(data)
        return json.loads(buf)

    return line


@pytest.mark.parametrize("mode, encode", [("v1", encode_v1), ("v2", encode_v2), ("auto", encode_v2)])
@pytest.mark.parametrize("config", [{}, {"loops": 2}], ids=["1-loop", "main-reactor"])
def test_proxy_header_comes_before_the_tls_handshake(tls_pki, mode, encode, config):
    """On a tls:// listener the PROXY header is read first (a balancer writes it before
    the client's ClientHello), in the same segment as the ClientHello; the handler meets
    a TLS connection with the client's addresses."""
    from netreactor.tls import server_context

    handler = Who()
    with serving(handler, "tls://127.0.0.1:0", tls=server_context(tls_pki["server.pem"], tls_pki["server.key"]),
                 proxy_protocol=mode, **config) as engine:
        with connect(_address(engine)) as c:
            line = _handshake_after(c, _client_tls(tls_pki), encode(CLIENT, DIALLED))
            info = line()
        assert info["remote"] == list(CLIENT) and info["local"] == list(DIALLED)
        assert info["tls"].startswith("TLSv1.") and info["sni"] == "localhost"
        assert info["version"] == (1 if encode is encode_v1 else 2)
        wait_for(lambda: engine.stats()["open"] == 0, what="the close")
        snap = engine.stats()
    assert (snap["tls_handshakes"], snap["tls_failures"], snap["refused.proxy"]) == (1, 0, 0)


def test_a_bad_header_on_a_tls_listener_is_refused_before_the_handshake(tls_pki):
    """A ClientHello with no PROXY header is a refusal of the header (counted so), not
    a TLS failure: the handshake never began."""
    from netreactor.tls import server_context

    with serving(Who(), "tls://127.0.0.1:0", tls=server_context(tls_pki["server.pem"], tls_pki["server.key"]),
                 proxy_protocol="v2") as engine:
        with connect(_address(engine)) as c, pytest.raises((ssl.SSLError, OSError)):
            _client_tls(tls_pki).wrap_socket(c, server_hostname="localhost").do_handshake()
        wait_for(lambda: engine.stats()["refused.proxy"] == 1, what="the refusal")
        snap = engine.stats()
        assert (snap["tls_handshakes"], snap["tls_failures"], snap["open"]) == (0, 0, 0)


NGINX_STREAM = "/usr/lib/nginx/modules/ngx_stream_module.so"


def _nginx_missing() -> str | None:
    import shutil

    if shutil.which("nginx") is None:
        return "nginx is not installed (Debian package 'nginx')"
    if not os.path.exists(NGINX_STREAM):
        return f"nginx's stream module is not installed ({NGINX_STREAM}, Debian package 'libnginx-mod-stream')"
    return None


@pytest.mark.skipif(_nginx_missing() is not None, reason=_nginx_missing() or "")
def test_nginx_stream_in_front(tmp_path):
    with serving(Who(), "tcp://127.0.0.1:0", proxy_protocol="v1") as engine:
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        probe.close()  # nginx binds it next (it cannot inherit a socket the way HAProxy can)
        pid = tmp_path / "nginx.pid"
        conf = tmp_path / "nginx.conf"
        conf.write_text(f"""
load_module {NGINX_STREAM};
worker_processes 1;
pid {pid};
error_log {tmp_path}/error.log info;
events {{ worker_connections 64; }}
stream {{
    server {{
        listen 127.0.0.1:{port};
        proxy_pass {_address(engine).split("://")[1]};
        proxy_protocol on;
    }}
}}
""")
        proc = subprocess.Popen(["nginx", "-e", f"{tmp_path}/error.log", "-p", str(tmp_path), "-c", str(conf),
                                 "-g", "daemon off;"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 10
            while not pid.exists():
                assert proc.poll() is None, f"nginx exited: {proc.stdout.read().decode()}"
                assert time.monotonic() < deadline, "nginx did not start within 10 s"
                time.sleep(0.02)
            with connect(f"tcp://127.0.0.1:{port}") as c:
                info = _line(c)
                assert info["remote"] == list(c.getsockname()) and info["local"] == ["127.0.0.1", port]
                c.sendall(b"via nginx")
                assert c.recv(100) == b"via nginx"
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.communicate(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate(timeout=5)
