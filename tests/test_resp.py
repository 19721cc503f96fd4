"""The Redis example: the store (sans-IO), then end to end over real sockets with
raw RESP, redis-cli, redis-benchmark and, for byte compatibility, redis-server."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time

import pytest

from netreactor.examples import DESCRIPTIONS, load_example
from netreactor.examples.redis import KeyValueStore, RedisServer, glob_to_regex
from netreactor.protocols.resp import ReplyParser, RespError, encode_command
from conftest import exchange, serving_port

REDIS_CLI = shutil.which("redis-cli")
REDIS_BENCHMARK = shutil.which("redis-benchmark")
REDIS_SERVER = shutil.which("redis-server")
need_cli = pytest.mark.skipif(REDIS_CLI is None, reason="redis-cli not installed (Debian package redis-tools)")
need_benchmark = pytest.mark.skipif(REDIS_BENCHMARK is None,
                                    reason="redis-benchmark not installed (Debian package redis-tools)")
need_server = pytest.mark.skipif(REDIS_SERVER is None,
                                 reason="redis-server not installed (Debian package redis-server)")


# --------------------------------------------------------------------------- the store, sans-IO

@pytest.fixture
def store():
    return KeyValueStore()


def run(store, *args):
    return store.execute([a.encode() if isinstance(a, str) else a for a in args])


def test_registered_as_example():
    assert "redis" in DESCRIPTIONS
    assert isinstance(load_example("redis")(), RedisServer)


def test_strings(store):
    assert run(store, "SET", "k", "v") == b"+OK\r\n"
    assert run(store, "get", "k") == b"$1\r\nv\r\n"
    assert run(store, "GeT", "nope") == b"$-1\r\n"
    assert run(store, "SET", "k", "w", "NX") == b"$-1\r\n"
    assert run(store, "SET", "k2", "w", "XX") == b"$-1\r\n"
    assert run(store, "SET", "k", "w", "XX", "GET") == b"$1\r\nv\r\n"
    assert run(store, "SET", "k", "z", "NX", "GET") == b"$1\r\nw\r\n"
    assert run(store, "MSET", "a", "1", "b", "2") == b"+OK\r\n"
    assert run(store, "MGET", "a", "x", "b") == b"*3\r\n$1\r\n1\r\n$-1\r\n$1\r\n2\r\n"
    assert run(store, "EXISTS", "a", "a", "x") == b":2\r\n"
    assert run(store, "DEL", "a", "b", "x") == b":2\r\n"
    assert run(store, "ECHO", b"\x00\r\n") == b"$3\r\n\x00\r\n\r\n"
    assert run(store, "PING") == b"+PONG\r\n"
    assert run(store, "PING", "hi") == b"$2\r\nhi\r\n"


def test_counters(store):
    assert run(store, "INCR", "n") == b":1\r\n"
    assert run(store, "INCRBY", "n", "41") == b":42\r\n"
    assert run(store, "DECR", "n") == b":41\r\n"
    assert run(store, "DECRBY", "n", "50") == b":-9\r\n"
    assert run(store, "GET", "n") == b"$2\r\n-9\r\n"
    run(store, "SET", "s", "abc")
    assert run(store, "INCR", "s") == b"-ERR value is not an integer or out of range\r\n"
    run(store, "SET", "s", " 1")
    assert run(store, "INCR", "s") == b"-ERR value is not an integer or out of range\r\n"
    run(store, "SET", "m", str(2**63 - 1))
    assert run(store, "INCR", "m") == b"-ERR increment or decrement would overflow\r\n"
    assert run(store, "INCRBY", "n", "1.5") == b"-ERR value is not an integer or out of range\r\n"
    assert run(store, "DECRBY", "n", str(-2**63)) == b"-ERR decrement would overflow\r\n"


def test_errors_are_redis_errors(store):
    assert run(store, "GET") == b"-ERR wrong number of arguments for 'get' command\r\n"
    assert run(store, "MSET", "a", "1", "b") == b"-ERR wrong number of arguments for 'mset' command\r\n"
    assert run(store, "SET", "k", "v", "EX") == b"-ERR syntax error\r\n"
    assert run(store, "SET", "k", "v", "NX", "XX") == b"-ERR syntax error\r\n"
    assert run(store, "SET", "k", "v", "EX", "0") == b"-ERR invalid expire time in 'set' command\r\n"
    assert run(store, "SET", "k", "v", "PX", "x") == b"-ERR value is not an integer or out of range\r\n"
    assert run(store, "FOO", "a", "b c") == \
        b"-ERR unknown command 'FOO', with args beginning with: 'a' 'b c' \r\n"
    assert run(store, "foo") == b"-ERR unknown command 'foo', with args beginning with: \r\n"
    assert run(store, "x\r\ny", "a\nb") == \
        b"-ERR unknown command 'x  y', with args beginning with: 'a b' \r\n"
    long = run(store, "FOO", "x" * 100, "y" * 100, "z")
    assert long == b"-ERR unknown command 'FOO', with args beginning with: '" + b"x" * 100 + b"' '" \
        + b"y" * 25 + b"' \r\n"
    assert run(store, "CONFIG", "SET", "a", "b") == b"-ERR unknown subcommand 'SET'. Try CONFIG HELP.\r\n"


def test_expiry(store, monkeypatch):
    clock = [1_000_000.0]
    monkeypatch.setattr("netreactor.examples.redis.time.time", lambda: clock[0])
    run(store, "SET", "k", "v", "EX", "10")
    assert run(store, "TTL", "k") == b":10\r\n"
    assert run(store, "PTTL", "k") == b":10000\r\n"
    clock[0] += 4.4
    assert run(store, "TTL", "k") == b":6\r\n"  # rounded as Redis does
    assert run(store, "SET", "k", "w", "KEEPTTL") == b"+OK\r\n"
    assert run(store, "TTL", "k") == b":6\r\n"
    assert run(store, "INCR", "k") == b"-ERR value is not an integer or out of range\r\n"
    clock[0] += 6
    assert run(store, "GET", "k") == b"$-1\r\n"
    assert run(store, "TTL", "k") == b":-2\r\n"
    run(store, "SET", "k", "v")
    assert run(store, "TTL", "k") == b":-1\r\n"
    assert run(store, "EXPIRE", "k", "100") == b":1\r\n"
    assert run(store, "EXPIRE", "k", "50", "GT") == b":0\r\n"
    assert run(store, "EXPIRE", "k", "50", "LT") == b":1\r\n"
    assert run(store, "EXPIRE", "k", "50", "NX") == b":0\r\n"
    assert run(store, "PEXPIRE", "k", "1500", "XX") == b":1\r\n"
    assert run(store, "TTL", "k") == b":2\r\n"
    assert run(store, "PERSIST", "k") == b":1\r\n"
    assert run(store, "TTL", "k") == b":-1\r\n"
    assert run(store, "EXPIRE", "nope", "10") == b":0\r\n"
    assert run(store, "EXPIRE", "k", "-1") == b":1\r\n"
    assert run(store, "EXISTS", "k") == b":0\r\n"
    # Active expiry: keys nobody touches are removed too.
    for i in range(100):
        run(store, "SET", f"t{i}", "v", "PX", "100")
    run(store, "SET", "stay", "v", "EX", "100")
    clock[0] += 1
    assert store.sweep() == 100
    assert run(store, "DBSIZE") == b":1\r\n"
    run(store, "SET", "at", "v", "EXAT", str(int(clock[0]) + 20))
    assert run(store, "TTL", "at") == b":20\r\n"


def test_heap_of_deadlines_stays_bounded(store):
    for i in range(5000):
        run(store, "SET", "k", "v", "EX", str(1000 + i))
    assert len(store.deadlines) <= 2 * len(store.expires) + 1024 + 1


def test_keys_glob(store):
    for key in ("hello", "hallo", "hxllo", "hllo", "heeeello", "h*llo", "a[b"):
        run(store, "SET", key, "1")

    def keys(pattern):
        return sorted(ReplyParser().feed(run(store, "KEYS", pattern))[0])

    assert keys("h?llo") == [b"h*llo", b"hallo", b"hello", b"hxllo"]
    assert keys("h*llo") == [b"h*llo", b"hallo", b"heeeello", b"hello", b"hllo", b"hxllo"]
    assert keys("h[ae]llo") == [b"hallo", b"hello"]
    assert keys("h[^e]llo") == [b"h*llo", b"hallo", b"hxllo"]
    assert keys("h[a-b]llo") == [b"hallo"]
    assert keys("h[b-a]llo") == [b"hallo"]
    assert keys("h\\*llo") == [b"h*llo"]
    assert keys("a\\[b") == [b"a[b"]
    assert keys("nomatch*") == []
    assert len(keys("*")) == 7
    assert glob_to_regex(b"a*b?c").fullmatch(b"a\nxxb\nc")


def test_server_commands(store):
    assert run(store, "CONFIG", "GET", "save") == b"*2\r\n$4\r\nsave\r\n$0\r\n\r\n"
    assert run(store, "CONFIG", "GET", "appendonly") == b"*2\r\n$10\r\nappendonly\r\n$2\r\nno\r\n"
    assert run(store, "CONFIG", "GET", "nope") == b"*0\r\n"
    assert run(store, "COMMAND", "DOCS") == b"*0\r\n"
    count = ReplyParser().feed(run(store, "COMMAND", "COUNT"))[0]
    entries = ReplyParser().feed(run(store, "COMMAND"))[0]
    assert len(entries) == count > 20
    get = ReplyParser().feed(run(store, "COMMAND", "INFO", "get", "nope"))[0]
    assert get[0][:2] == [b"get", 2] and get[1] is None
    assert run(store, "SELECT", "0") == b"+OK\r\n"
    assert run(store, "FLUSHDB") == b"+OK\r\n"
    assert b"redis_version" in run(store, "INFO")


# --------------------------------------------------------------------------- over sockets

def serving(handler=None, **options):
    return serving_port(handler or RedisServer(), **options)


@pytest.fixture(scope="module")
def port():
    with serving() as p:
        yield p


class Client:
    """A minimal blocking RESP client."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.parser = ReplyParser()
        self.replies: list = []

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def replies_for(self, count: int) -> list:
        while len(self.replies) < count:
            data = self.sock.recv(1 << 20)
            if not data:
                raise ConnectionError("closed")
            self.replies.extend(self.parser.feed(data))
        out, self.replies = self.replies[:count], self.replies[count:]
        return out

    def call(self, *args):
        self.send(encode_command(*args))
        return self.replies_for(1)[0]

    def closed_by_peer(self) -> bool:
        """Read until the server's EOF (or reset), then close as a client does
        (the server lingers until then: it waits for our EOF after its own)."""
        self.sock.settimeout(5)
        try:
            while True:
                data = self.sock.recv(65536)
                if not data:
                    self.sock.close()
                    return True
                self.replies.extend(self.parser.feed(data))
        except ConnectionResetError:
            self.sock.close()
            return True

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def client(port):
    c = Client(port)
    yield c
    c.close()


def test_pipelined_and_split_commands(client):
    data = b"".join(encode_command("SET", f"p{i}", f"v{i}") for i in range(50))
    data += b"".join(encode_command("GET", f"p{i}") for i in range(50))
    data += b"PING\r\nECHO hello\r\n"
    client.send(data)
    replies = client.replies_for(102)
    assert replies[:50] == ["OK"] * 50
    assert replies[50:100] == [b"v%d" % i for i in range(50)]
    assert replies[100:] == ["PONG", b"hello"]
    cmd = encode_command("SET", "split", "x" * 100) + encode_command("GET", "split")
    for i in range(len(cmd)):
        client.send(cmd[i:i + 1])
    assert client.replies_for(2) == ["OK", b"x" * 100]


def test_large_value_round_trip(client):
    value = os.urandom(3 << 20)
    assert client.call("SET", "big", value) == "OK"
    assert client.call("GET", "big") == value
    assert client.call("MGET", "big", "big") == [value, value]


def test_protocol_error_replies_then_closes(port):
    c = Client(port)
    c.send(b"PING\r\n*1\r\n$-3\r\n")
    assert c.closed_by_peer()
    assert c.replies == ["PONG", RespError("ERR Protocol error: invalid bulk length")]


def test_oversized_bulk_is_refused(port):
    c = Client(port)
    c.send(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$%d\r\n" % (1 << 30))
    assert c.closed_by_peer()
    assert c.replies == [RespError("ERR Protocol error: invalid bulk length")]


def test_bulk_limit_follows_write_buffer_cap():
    with serving(RedisServer(max_bulk=1 << 20), write_buffer_cap=64 * 1024, write_high_water=32 * 1024,
                 write_low_water=8 * 1024) as p:
        c = Client(p)
        assert c.call("SET", "k", b"x" * 60000) == "OK"
        assert c.call("GET", "k") == b"x" * 60000
        c.send(encode_command("SET", "k", b"x" * 70000))
        assert c.closed_by_peer()
        assert c.replies == [RespError("ERR Protocol error: invalid bulk length")]


def test_server_limits_hold_in_one_read():
    # Whole commands in one read used to bypass non-default limits (the fast path
    # knew only the defaults): +OK to a 1000-byte SET, a 6-argument DEL run.
    with serving(RedisServer(max_bulk=100, max_args=3)) as p:
        c = Client(p)
        assert c.call("SET", "k", b"v" * 100) == "OK"
        c.send(encode_command("SET", "k", b"v" * 1000))
        assert c.closed_by_peer()
        assert c.replies == [RespError("ERR Protocol error: invalid bulk length")]
        c = Client(p)
        assert c.call("DEL", "k", "x") == 1
        c.send(encode_command("DEL", "a", "b", "c", "d", "e"))
        assert c.closed_by_peer()
        assert c.replies == [RespError("ERR Protocol error: invalid multibulk length")]


def test_client_that_does_not_read_is_bounded():
    # Replies pile up only to the engine's write_buffer_cap; then the client is dropped.
    with serving(write_buffer_cap=256 * 1024, write_high_water=64 * 1024, write_low_water=16 * 1024) as p:
        c = Client(p)
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        assert c.call("SET", "v", b"x" * 50000) == "OK"
        get = encode_command("GET", "v") * 1000
        sent = 0
        c.sock.settimeout(5)
        try:
            for _ in range(200):
                c.sock.sendall(get)
                sent += 1
        except (socket.timeout, ConnectionError, OSError):
            pass  # the server stopped reading us, or dropped us
        assert sent < 200


def test_quit(port):
    c = Client(port)
    c.send(b"PING\r\nQUIT\r\nPING\r\n")
    assert c.closed_by_peer()
    assert c.replies == ["PONG", "OK"]


def test_several_loops_share_one_store():
    with serving(loops=3) as p:
        def work():
            c = Client(p)
            c.send(encode_command("INCR", "counter") * 500)
            c.replies_for(500)
            c.close()

        threads = [threading.Thread(target=work) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        c = Client(p)
        assert c.call("GET", "counter") == b"3000"
        c.close()


# --------------------------------------------------------------------------- real Redis tools

def cli(port, *args, input=None):
    proc = subprocess.run([REDIS_CLI, "-p", str(port), *args], input=input, capture_output=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.decode()


@need_cli
def test_redis_cli(port):
    assert cli(port, "PING") == "PONG\n"
    assert cli(port, "SET", "cli:a", "b") == "OK\n"
    assert cli(port, "GET", "cli:a") == "b\n"
    assert cli(port, "INCR", "cli:n") == "1\n"
    assert cli(port, "INCR", "cli:n") == "2\n"
    assert cli(port, "MSET", "cli:x", "1", "cli:y", "2") == "OK\n"
    assert cli(port, "MGET", "cli:x", "cli:y", "cli:none") == "1\n2\n\n"
    assert cli(port, "EXPIRE", "cli:x", "100") == "1\n"
    assert cli(port, "TTL", "cli:x") == "100\n"
    assert sorted(cli(port, "KEYS", "cli:[xy]").split()) == ["cli:x", "cli:y"]
    assert cli(port, "DEL", "cli:a") == "1\n"
    assert cli(port, "EXISTS", "cli:a") == "0\n"
    assert cli(port, "FOO", "bar").startswith("ERR unknown command 'FOO'")
    # Interactive-style session over stdin (redis-cli sends COMMAND DOCS first in this mode).
    out = cli(port, input=b"SET cli:s hello\nGET cli:s\nDBSIZE\n")
    assert out.splitlines()[:2] == ["OK", "hello"]


@need_cli
def test_redis_cli_pipe_mode(port):
    data = b"".join(encode_command("SET", f"pipe:{i}", str(i)) for i in range(1000))
    out = cli(port, "--pipe", input=data)
    assert "errors: 0, replies: 1000" in out
    assert cli(port, "GET", "pipe:999") == "999\n"


@need_benchmark
def test_redis_benchmark(port):
    proc = subprocess.run([REDIS_BENCHMARK, "-p", str(port), "-n", "2000", "-c", "10", "-t", "set,get",
                           "-q"], capture_output=True, timeout=60)
    out = (proc.stdout + proc.stderr).decode()
    assert proc.returncode == 0, out
    lines = [line for line in out.replace("\r", "\n").splitlines() if "requests per second" in line]
    assert [line.split(":")[0] for line in lines] == ["SET", "GET"], out
    assert "error" not in out.lower() and "WARNING" not in out, out


@need_benchmark
def test_redis_benchmark_pipelined(port):
    proc = subprocess.run([REDIS_BENCHMARK, "-p", str(port), "-n", "5000", "-c", "5", "-P", "16",
                           "-t", "set,get,incr,mset", "-q"], capture_output=True, timeout=60)
    out = (proc.stdout + proc.stderr).decode()
    assert proc.returncode == 0, out
    assert out.count("requests per second") == 4, out
    assert "error" not in out.lower(), out


# Commands whose replies do not depend on timing or on hash order.
COMPAT = [
    ["FLUSHDB"], ["PING"], ["PING", "hello"], ["PING", "a", "b"], ["ping"], ["ECHO", "x y"], ["ECHO"],
    ["SET", "k", "v"], ["GET", "k"], ["GET", "nokey"], ["GET"], ["GET", "a", "b"], ["SET", "k"],
    ["SET", "k", "v2", "NX"], ["SET", "k2", "v", "XX"], ["SET", "k2", "v", "NX"],
    ["SET", "k", "v3", "XX", "GET"], ["SET", "k", "v", "NX", "XX"], ["SET", "k", "v", "EX"],
    ["SET", "k", "v", "EX", "abc"], ["SET", "k", "v", "EX", "0"], ["SET", "k", "v", "EX", "-5"],
    ["SET", "k", "v", "PX", "100000", "EX", "10"], ["SET", "k", "v", "EX", "10", "KEEPTTL"],
    ["SET", "k", "v", "FOO"], ["SET", "k", "v", "EX", "9223372036854775807"],
    ["SET", "k", "v", "EX", "100"], ["TTL", "k"], ["PTTL", "nokey"], ["TTL", "k2"],
    ["SET", "k", "v", "KEEPTTL"], ["TTL", "k"], ["SET", "k", "v", "GET"], ["TTL", "k"],
    ["SET", "newk", "v", "GET"], ["SET", "k", "x", "NX", "GET"],
    ["INCR", "n"], ["INCR", "n"], ["DECR", "n"], ["INCRBY", "n", "10"], ["INCRBY", "n", "x"],
    ["INCRBY", "n", "-20"], ["DECRBY", "n", "5"], ["DECRBY", "n", "-9223372036854775808"],
    ["INCR", "k"], ["SET", "big", "9223372036854775807"], ["INCR", "big"], ["SET", "sp", " 1"],
    ["INCR", "sp"], ["SET", "z", "007"], ["INCR", "z"], ["INCR"], ["INCRBY", "n"],
    ["MSET", "a", "1", "b", "2"], ["MSET", "a"], ["MSET", "a", "1", "b"], ["MGET", "a", "b", "nokey"],
    ["MGET"], ["DEL", "a", "b", "nokey"], ["DEL"], ["EXISTS", "k", "k", "nokey"], ["EXISTS"],
    ["EXPIRE", "k", "100"], ["TTL", "k"], ["EXPIRE", "nokey", "100"], ["EXPIRE", "k", "abc"],
    ["EXPIRE", "k", "100", "NX"], ["EXPIRE", "k", "200", "XX"], ["TTL", "k"],
    ["EXPIRE", "k", "100", "GT"], ["EXPIRE", "k", "300", "GT"], ["TTL", "k"],
    ["EXPIRE", "k", "100", "NX", "XX"], ["EXPIRE", "k", "100", "GT", "LT"],
    ["EXPIRE", "k", "100", "FOO"], ["EXPIRE", "k", "9223372036854775807"],
    ["PEXPIRE", "k", "9223372036854775807"], ["EXPIRE", "k"], ["PERSIST", "k"], ["PERSIST", "k"],
    ["TTL", "k"], ["SET", "gone", "1"], ["EXPIRE", "gone", "-1"], ["GET", "gone"], ["EXISTS", "gone"],
    ["SELECT", "0"], ["SELECT", "x"], ["SELECT"], ["FLUSHDB"], ["DBSIZE"], ["SET", "hello", "1"],
    ["KEYS", "h?llo"], ["KEYS", "nomatch*"], ["KEYS"], ["DBSIZE"], ["DBSIZE", "x"],
    ["FLUSHDB", "ASYNC"], ["FLUSHDB", "x"], ["FLUSHDB", "a", "b"],
    ["FOO"], ["FOO", "a", "b c"], ["foo", "x" * 200], ["FOO", "x" * 100, "y" * 100, "z"],
    ["foo\r\nbar", "a\nb"], ["CONFIG"], ["CONFIG", "GET"], ["CONFIG", "GET", "save"],
    ["CONFIG", "GET", "appendonly"], ["CONFIG", "GET", "nosuchparam"], ["CONFIG", "FOO"],
    ["COMMAND", "FOO"], ["COMMAND", "COUNT", "x"], ["GET", "k", "v"],
]
RAW_COMPAT = [
    b"PING\r\n", b"set a \"b c\"\r\nget a\r\n", b"echo 'x\r\n", b"*1\r\n$4\r\nPING\r\n*x\r\n",
    b"*2\r\n$3\r\nGET\r\n:1\r\n", b"*1\r\n$-1\r\n", b"*2\r\n$3\r\nGET\r\n$999999999999\r\n",
    b"*0\r\n*-1\r\nPING\r\n", b"PING\r\nQUIT\r\nPING\r\n", b"\r\n\r\nPING\n", b"QUIT\r\n*x\r\n",
]


@pytest.fixture(scope="module")
def redis_port(tmp_path_factory):
    if REDIS_SERVER is None:
        pytest.skip("redis-server not installed (Debian package redis-server)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    proc = subprocess.Popen([REDIS_SERVER, "--port", str(free), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(tmp_path_factory.mktemp("redis"))],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", free), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    pytest.skip("redis-server did not start")
                time.sleep(0.05)
        yield free
    finally:
        proc.terminate()
        proc.wait(10)


def _transcript(port: int) -> list:
    c = Client(port)
    out = []
    for args in COMPAT:
        c.send(encode_command(*args))
        out.append(c.replies_for(1)[0])
    c.close()
    return out


@need_server
def test_replies_are_byte_compatible_with_redis(port, redis_port):
    ours = _transcript(port)
    theirs = _transcript(redis_port)
    diffs = [(args, a, b) for args, a, b in zip(COMPAT, theirs, ours) if a != b]
    assert not diffs


@need_server
@pytest.mark.parametrize("data", RAW_COMPAT)
def test_protocol_handling_is_compatible_with_redis(port, redis_port, data):
    assert exchange(port, data) == exchange(redis_port, data)
