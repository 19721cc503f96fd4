"""A Redis-compatible (RESP2) in-memory key-value server: ``netreactor example redis``.

Speaks enough of Redis for ``redis-cli``, ``redis-benchmark`` and ordinary
client libraries: PING, ECHO, SET (EX/PX/EXAT/PXAT/NX/XX/KEEPTTL/GET), GET,
DEL, EXISTS, INCR, DECR, INCRBY, DECRBY, MGET, MSET, EXPIRE, PEXPIRE (NX/XX/GT/LT),
TTL, PTTL, PERSIST, KEYS (Redis glob), DBSIZE, FLUSHDB, SELECT 0, INFO, QUIT,
COMMAND (COUNT/INFO/LIST/DOCS) and CONFIG GET. Replies are byte for byte what
Redis 7 sends, errors included; anything else gets Redis's
``-ERR unknown command ...``.

Design, and why:

* :class:`KeyValueStore` is sans-IO: ``execute(args) -> reply bytes``. It keeps
  each value already encoded as its bulk reply (``$3\\r\\nbar\\r\\n``), so GET
  returns a stored object without formatting anything.
* Expiry is lazy (checked when a key is touched) and active (a heap of
  deadlines swept after each batch), on the wall clock, as Redis does.
* :class:`RedisServer` parses with :class:`~netreactor.protocols.resp.CommandParser`,
  runs the batch of commands one ``on_traffic`` delivered, and sends all the
  replies with one write.
* The store is shared by every connection. With ``loops > 1`` callbacks run on
  several threads, so a batch runs under one lock (about 0.1 µs per batch,
  uncontended); under the GIL that costs nothing measurable, and on a
  free-threaded build it serialises the store, not the I/O.

Redis's ``timeout``: ``RedisServer(timeout=N)`` closes a client idle for N
seconds (0, Redis's default: never); None (the default) leaves it to the
engine's ``idle_timeout``. ``netreactor example redis --timeout N`` makes it
the engine's, which costs the connections nothing. One rule beyond Redis's:
with a timeout, a command must also arrive whole within N seconds of its
first byte, so that a client trickling a byte at a time (which is never
idle) cannot hold a connection either; clients write a command at once, so
this never closes one of theirs.

Memory per connection is bounded: the parser holds at most one unfinished
command (``max_command`` bytes); replies are queued on the connection, which
stops reading a client that does not read its replies (write high-water mark)
and closes it past the engine's ``write_buffer_cap``. Because a value must fit
in that buffer to be read back, the bulk-string limit is lowered to it at boot
(raise ``write_buffer_cap`` to store bigger values).
"""

from __future__ import annotations

import heapq
import re
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Set, Tuple

from .. import __version__, speedups
from ..handler import Action, EventHandler
from ..protocols.resp import (DEFAULT_MAX_ARGS, DEFAULT_MAX_BULK, DEFAULT_MAX_COMMAND,
                              DEFAULT_MAX_INLINE, NULL_BULK, OK, CommandParser, ProtocolError,
                              encode_bulk, encode_error, parse_int)

__all__ = ["RedisServer", "KeyValueStore", "COMMANDS"]

Reply = Any  # bytes, or a list of bytes for a large reply (sent without joining)
_LLONG_MAX = (1 << 63) - 1
_LLONG_MIN = -(1 << 63)

_PONG = b"+PONG\r\n"
_ZERO = b":0\r\n"
_ONE = b":1\r\n"
_EMPTY_ARRAY = b"*0\r\n"
_SYNTAX = b"-ERR syntax error\r\n"
_NOT_INT = b"-ERR value is not an integer or out of range\r\n"
_OVERFLOW = b"-ERR increment or decrement would overflow\r\n"
#: QUIT's reply: the same bytes as OK, a distinct object the handler recognises.
_QUIT = bytes(bytearray(OK))
#: Replies over this size are queued as references instead of joined into one copy.
_JOIN_LIMIT = 256 * 1024

#: Command table as ``COMMAND`` reports it: name → (arity, flags, first key, last key, step, ACL categories).
COMMANDS: Dict[str, Tuple[int, Tuple[str, ...], int, int, int, Tuple[str, ...]]] = {
    "get": (2, ("readonly", "fast"), 1, 1, 1, ("@read", "@string", "@fast")),
    "set": (-3, ("write", "denyoom"), 1, 1, 1, ("@write", "@string", "@slow")),
    "del": (-2, ("write",), 1, -1, 1, ("@keyspace", "@write", "@slow")),
    "exists": (-2, ("readonly", "fast"), 1, -1, 1, ("@keyspace", "@read", "@fast")),
    "incr": (2, ("write", "denyoom", "fast"), 1, 1, 1, ("@write", "@string", "@fast")),
    "decr": (2, ("write", "denyoom", "fast"), 1, 1, 1, ("@write", "@string", "@fast")),
    "incrby": (3, ("write", "denyoom", "fast"), 1, 1, 1, ("@write", "@string", "@fast")),
    "decrby": (3, ("write", "denyoom", "fast"), 1, 1, 1, ("@write", "@string", "@fast")),
    "mget": (-2, ("readonly", "fast"), 1, -1, 1, ("@read", "@string", "@fast")),
    "mset": (-3, ("write", "denyoom"), 1, -1, 2, ("@write", "@string", "@slow")),
    "expire": (-3, ("write", "fast"), 1, 1, 1, ("@keyspace", "@write", "@fast")),
    "pexpire": (-3, ("write", "fast"), 1, 1, 1, ("@keyspace", "@write", "@fast")),
    "ttl": (2, ("readonly", "fast"), 1, 1, 1, ("@keyspace", "@read", "@fast")),
    "pttl": (2, ("readonly", "fast"), 1, 1, 1, ("@keyspace", "@read", "@fast")),
    "persist": (2, ("write", "fast"), 1, 1, 1, ("@keyspace", "@write", "@fast")),
    "keys": (2, ("readonly",), 0, 0, 0, ("@keyspace", "@read", "@slow", "@dangerous")),
    "dbsize": (1, ("readonly", "fast"), 0, 0, 0, ("@keyspace", "@read", "@fast")),
    "flushdb": (-1, ("write",), 0, 0, 0, ("@keyspace", "@write", "@slow", "@dangerous")),
    "select": (2, ("loading", "stale", "fast"), 0, 0, 0, ("@fast", "@connection")),
    "ping": (-1, ("fast",), 0, 0, 0, ("@fast", "@connection")),
    "echo": (2, ("fast",), 0, 0, 0, ("@fast", "@connection")),
    "quit": (-1, ("noscript", "loading", "stale", "fast", "no_auth", "allow_busy"), 0, 0, 0,
             ("@fast", "@connection")),
    "info": (-1, ("loading", "stale"), 0, 0, 0, ("@slow", "@dangerous")),
    "command": (-1, ("loading", "stale"), 0, 0, 0, ("@slow", "@connection")),
    "config": (-2, (), 0, 0, 0, ("@slow",)),
}

#: What ``CONFIG GET`` reports (what redis-benchmark and clients ask about).
CONFIG: Dict[bytes, bytes] = {
    b"save": b"",
    b"appendonly": b"no",
    b"databases": b"1",
    b"maxmemory": b"0",
    b"proto-max-bulk-len": b"%d" % DEFAULT_MAX_BULK,
}

def _arity_error(name: str) -> bytes:
    return b"-ERR wrong number of arguments for '%s' command\r\n" % name.encode()


_ARITY = {name: _arity_error(name) for name in COMMANDS}


def _now_ms() -> int:
    # Wall clock, as Redis: EXAT/PXAT and TTLs agree with the client's clock.
    return int(time.time() * 1000)


_bulk = encode_bulk  # values are stored as their bulk reply
#: encode_bulk is C (netreactor.speedups): cheaper than the expression it
#: replaces; the pure-Python path keeps the expression inline on SET's hot path.
_C_BULK = speedups.active()


def _value_of(stored: bytes) -> bytes:
    """The value inside a stored bulk reply."""
    return stored[stored.index(b"\r\n") + 2:-2]


def _array(items: List[bytes]) -> bytes:
    """An array of already encoded replies."""
    return b"*%d\r\n%s" % (len(items), b"".join(items))


def _c_string(arg: bytes, limit: int) -> bytes:
    """``%.Ns`` of a C string: up to the first NUL, at most ``limit`` bytes."""
    return arg.partition(b"\x00")[0][:limit]


def glob_to_regex(pattern: bytes) -> re.Pattern[bytes]:
    """Compile a Redis glob (``*``, ``?``, ``[a-z]``, ``[^a]``, ``\\x``) to an anchored regex."""
    out = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i:i + 1]
        if c == b"*":
            while i + 1 < n and pattern[i + 1:i + 2] == b"*":
                i += 1
            out.append(b".*")
        elif c == b"?":
            out.append(b".")
        elif c == b"\\" and i + 1 < n:
            i += 1
            out.append(re.escape(pattern[i:i + 1]))
        elif c == b"[":
            i += 1
            negate = i < n and pattern[i:i + 1] == b"^"
            if negate:
                i += 1
            items = []
            # Redis ends a class at ']' or at the end of the pattern.
            while i < n and pattern[i:i + 1] != b"]":
                ch = pattern[i:i + 1]
                if ch == b"\\" and i + 1 < n:
                    i += 1
                    items.append(re.escape(pattern[i:i + 1]))
                elif i + 2 < n and pattern[i + 1:i + 2] == b"-":
                    lo, hi = pattern[i], pattern[i + 2]
                    if lo > hi:  # Redis accepts reversed ranges
                        lo, hi = hi, lo
                    items.append(re.escape(bytes([lo])) + b"-" + re.escape(bytes([hi])))
                    i += 2
                else:
                    items.append(re.escape(ch))
                i += 1
            body = b"".join(items)
            if not body:
                out.append(b"(?!)" if not negate else b".")
            else:
                out.append(b"[" + (b"^" if negate else b"") + body + b"]")
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile(b"".join(out), re.DOTALL)


class KeyValueStore:
    """The keyspace and the commands, sans-IO: :meth:`execute` maps a command to its reply.

    Methods do not lock: callers on several threads hold :attr:`lock` around
    them (:class:`RedisServer` holds it for each batch of commands).
    """

    def __init__(self) -> None:
        #: Serialises access from several threads (event loops).
        self.lock = threading.Lock()
        #: key → its value encoded as a bulk reply.
        self.data: Dict[bytes, bytes] = {}
        #: key → deadline in ms since the epoch (only keys with a TTL).
        self.expires: Dict[bytes, int] = {}
        #: (deadline, key) min-heap for active expiry; stale entries are skipped.
        self.deadlines: List[Tuple[int, bytes]] = []
        self._patterns: Dict[bytes, re.Pattern[bytes]] = {}
        self.table: Dict[bytes, Callable[[List[bytes]], Reply]] = {}
        for name in COMMANDS:
            fn = getattr(self, "cmd_" + name)
            self.table[name.upper().encode()] = fn
            self.table[name.encode()] = fn

    # ------------------------------------------------------------------ dispatch

    def resolve(self, name: bytes) -> Callable[[List[bytes]], Reply]:
        """The function of command ``name`` in any letter case (unknown → the error reply)."""
        fn = self.table.get(name)
        if fn is not None:
            return fn
        fn = self.table.get(name.upper())
        if fn is None:
            return self._unknown
        if len(self.table) < 512:  # remember odd spellings ("Get"), boundedly
            self.table[name] = fn
        return fn

    def execute(self, args: List[bytes]) -> bytes:
        """Run one command; return its complete reply."""
        reply = self.resolve(args[0])(args)
        return reply if type(reply) is bytes else b"".join(reply)

    def _unknown(self, args: List[bytes]) -> bytes:
        name = args[0]
        shown = b""
        for arg in args[1:]:
            if len(shown) >= 128:
                break
            shown += b"'%s' " % _c_string(arg, 128 - len(shown))
        return encode_error(b"ERR unknown command '%s', with args beginning with: %s"
                            % (_c_string(name, 128), shown))

    def _unknown_subcommand(self, args: List[bytes]) -> bytes:
        return encode_error(b"ERR unknown subcommand '%s'. Try %s HELP."
                            % (_c_string(args[1], 128), args[0].upper()))

    # ------------------------------------------------------------------ keys and expiry

    def _lookup(self, key: bytes) -> Optional[bytes]:
        """The stored reply of a live key, deleting it if it has expired."""
        value = self.data.get(key)
        if value is not None and key in self.expires and self.expires[key] <= _now_ms():
            del self.data[key]
            del self.expires[key]
            return None
        return value

    def _set_expire(self, key: bytes, when: int) -> None:
        self.expires[key] = when
        heap = self.deadlines
        heapq.heappush(heap, (when, key))
        if len(heap) > 2 * len(self.expires) + 1024:
            # Too many stale entries (keys whose TTL changed): rebuild in place.
            heap[:] = [(w, k) for k, w in self.expires.items()]
            heapq.heapify(heap)

    def sweep(self, now: Optional[int] = None) -> int:
        """Delete every key whose deadline has passed; return how many."""
        heap = self.deadlines
        if now is None:
            now = _now_ms()
        removed = 0
        expires = self.expires
        while heap and heap[0][0] <= now:
            when, key = heapq.heappop(heap)
            if expires.get(key) == when:
                del expires[key]
                del self.data[key]
                removed += 1
        return removed

    # ------------------------------------------------------------------ strings

    def cmd_get(self, args: List[bytes]) -> Reply:
        if len(args) != 2:
            return _ARITY["get"]
        key = args[1]
        value = self.data.get(key)
        if value is None:
            return NULL_BULK
        if self.expires and key in self.expires:
            value = self._lookup(key)
            if value is None:
                return NULL_BULK
        return value

    def cmd_set(self, args: List[bytes]) -> Reply:
        if len(args) == 3:
            key = args[1]
            value = args[2]
            self.data[key] = _bulk(value) if _C_BULK else b"$%d\r\n%s\r\n" % (len(value), value)
            if self.expires:
                self.expires.pop(key, None)
            return OK
        if len(args) < 3:
            return _ARITY["set"]
        return self._set_with_options(args)

    def _set_with_options(self, args: List[bytes]) -> Reply:
        # Option rules of Redis 7.0's parseExtendedStringArgumentsOrReply.
        nx = xx = get = keepttl = False
        unit = None  # b"EX", b"PX", b"EXAT" or b"PXAT"
        expire = None
        j, argc = 3, len(args)
        while j < argc:
            opt = args[j].upper()
            has_next = j + 1 < argc
            if opt == b"NX" and not xx:
                nx = True
            elif opt == b"XX" and not nx:
                xx = True
            elif opt == b"GET":
                get = True
            elif opt == b"KEEPTTL" and unit is None:
                keepttl = True
            elif opt in (b"EX", b"PX", b"EXAT", b"PXAT") and not keepttl and unit in (None, opt) and has_next:
                unit = opt
                expire = args[j + 1]
                j += 1
            else:
                return _SYNTAX
            j += 1
        when = None
        if expire is not None:
            ms = parse_int(expire)
            if ms is None:
                return _NOT_INT
            seconds = unit in (b"EX", b"EXAT")
            if ms <= 0 or (seconds and ms > _LLONG_MAX // 1000):
                return b"-ERR invalid expire time in 'set' command\r\n"
            if seconds:
                ms *= 1000
            if unit in (b"EX", b"PX"):
                ms += _now_ms()
                if ms > _LLONG_MAX:
                    return b"-ERR invalid expire time in 'set' command\r\n"
            when = ms
        key = args[1]
        old = self._lookup(key)
        if (nx and old is not None) or (xx and old is None):
            return (NULL_BULK if old is None else old) if get else NULL_BULK
        self.data[key] = _bulk(args[2])
        if when is not None:
            self._set_expire(key, when)
        elif not keepttl:
            self.expires.pop(key, None)
        if get:
            return NULL_BULK if old is None else old
        return OK

    def cmd_mget(self, args: List[bytes]) -> Reply:
        if len(args) < 2:
            return _ARITY["mget"]
        data = self.data
        if self.expires:
            lookup = self._lookup
            values = [lookup(k) or NULL_BULK for k in args[1:]]
        else:
            values = [data.get(k) or NULL_BULK for k in args[1:]]
        head = b"*%d\r\n" % len(values)
        if sum(map(len, values)) > _JOIN_LIMIT:
            values.insert(0, head)
            return values  # queued as references, not copied into one reply
        return head + b"".join(values)

    def cmd_mset(self, args: List[bytes]) -> Reply:
        if len(args) < 3 or len(args) % 2 == 0:
            return _ARITY["mset"]
        data = self.data
        expires = self.expires
        for i in range(1, len(args), 2):
            key = args[i]
            data[key] = _bulk(args[i + 1])
            if expires:
                expires.pop(key, None)
        return OK

    def _incr_by(self, key: bytes, incr: int) -> bytes:
        old = self._lookup(key)
        if old is None:
            current: Optional[int] = 0
        else:
            current = parse_int(_value_of(old))
        if current is None:
            return _NOT_INT
        value = current + incr
        if not _LLONG_MIN <= value <= _LLONG_MAX:
            return _OVERFLOW
        text = b"%d" % value
        self.data[key] = _bulk(text)  # the TTL, if any, is kept (as Redis does)
        return b":%s\r\n" % text

    def cmd_incr(self, args: List[bytes]) -> Reply:
        if len(args) != 2:
            return _ARITY["incr"]
        return self._incr_by(args[1], 1)

    def cmd_decr(self, args: List[bytes]) -> Reply:
        if len(args) != 2:
            return _ARITY["decr"]
        return self._incr_by(args[1], -1)

    def cmd_incrby(self, args: List[bytes]) -> Reply:
        if len(args) != 3:
            return _ARITY["incrby"]
        incr = parse_int(args[2])
        if incr is None:
            return _NOT_INT
        return self._incr_by(args[1], incr)

    def cmd_decrby(self, args: List[bytes]) -> Reply:
        if len(args) != 3:
            return _ARITY["decrby"]
        decr = parse_int(args[2])
        if decr is None:
            return _NOT_INT
        if decr == _LLONG_MIN:
            return b"-ERR decrement would overflow\r\n"
        return self._incr_by(args[1], -decr)

    # ------------------------------------------------------------------ keyspace

    def cmd_del(self, args: List[bytes]) -> Reply:
        if len(args) < 2:
            return _ARITY["del"]
        count = 0
        data = self.data
        for key in args[1:]:
            if self._lookup(key) is not None:
                del data[key]
                self.expires.pop(key, None)
                count += 1
        return b":%d\r\n" % count

    def cmd_exists(self, args: List[bytes]) -> Reply:
        if len(args) < 2:
            return _ARITY["exists"]
        lookup = self._lookup
        return b":%d\r\n" % sum(1 for key in args[1:] if lookup(key) is not None)

    def _expire(self, args: List[bytes], name: str, in_seconds: bool) -> Reply:
        if len(args) < 3:
            return _ARITY[name]
        nx = xx = gt = lt = False
        for opt in args[3:]:
            word = opt.upper()
            if word == b"NX":
                nx = True
            elif word == b"XX":
                xx = True
            elif word == b"GT":
                gt = True
            elif word == b"LT":
                lt = True
            else:
                return encode_error(b"ERR Unsupported option %s" % _c_string(opt, 1 << 20))
        if nx and (xx or gt or lt):
            return b"-ERR NX and XX, GT or LT options at the same time are not compatible\r\n"
        if gt and lt:
            return b"-ERR GT and LT options at the same time are not compatible\r\n"
        when = parse_int(args[2])
        if when is None:
            return _NOT_INT
        invalid = b"-ERR invalid expire time in '%s' command\r\n" % name.encode()
        if in_seconds:
            if when > _LLONG_MAX // 1000 or when < -(-_LLONG_MIN // 1000):
                return invalid
            when *= 1000
        now = _now_ms()
        if when > _LLONG_MAX - now:
            return invalid
        when += now
        key = args[1]
        if self._lookup(key) is None:
            return _ZERO
        current = self.expires.get(key, -1)
        if nx and current != -1:
            return _ZERO
        if xx and current == -1:
            return _ZERO
        if gt and (when <= current or current == -1):
            return _ZERO
        if lt and current != -1 and when >= current:
            return _ZERO
        if when <= now:
            del self.data[key]
            self.expires.pop(key, None)
        else:
            self._set_expire(key, when)
        return _ONE

    def cmd_expire(self, args: List[bytes]) -> Reply:
        return self._expire(args, "expire", True)

    def cmd_pexpire(self, args: List[bytes]) -> Reply:
        return self._expire(args, "pexpire", False)

    def _ttl(self, args: List[bytes], name: str, in_ms: bool) -> Reply:
        if len(args) != 2:
            return _ARITY[name]
        key = args[1]
        if self._lookup(key) is None:
            return b":-2\r\n"
        when = self.expires.get(key)
        if when is None:
            return b":-1\r\n"
        left = max(0, when - _now_ms())
        return b":%d\r\n" % (left if in_ms else (left + 500) // 1000)

    def cmd_ttl(self, args: List[bytes]) -> Reply:
        return self._ttl(args, "ttl", False)

    def cmd_pttl(self, args: List[bytes]) -> Reply:
        return self._ttl(args, "pttl", True)

    def cmd_persist(self, args: List[bytes]) -> Reply:
        if len(args) != 2:
            return _ARITY["persist"]
        key = args[1]
        if self._lookup(key) is None or self.expires.pop(key, None) is None:
            return _ZERO
        return _ONE

    def cmd_keys(self, args: List[bytes]) -> Reply:
        if len(args) != 2:
            return _ARITY["keys"]
        pattern = args[1]
        self.sweep()
        if pattern == b"*":
            keys = list(self.data)
        else:
            regex = self._patterns.get(pattern)
            if regex is None:
                regex = glob_to_regex(pattern)
                if len(self._patterns) >= 256:
                    self._patterns.clear()
                self._patterns[pattern] = regex
            match = regex.fullmatch
            keys = [k for k in self.data if match(k)]
        return _array([_bulk(k) for k in keys])

    def cmd_dbsize(self, args: List[bytes]) -> Reply:
        if len(args) != 1:
            return _ARITY["dbsize"]
        self.sweep()
        return b":%d\r\n" % len(self.data)

    def cmd_flushdb(self, args: List[bytes]) -> Reply:
        if len(args) == 2 and args[1].upper() in (b"SYNC", b"ASYNC"):
            pass
        elif len(args) != 1:
            return _SYNTAX
        self.data.clear()
        self.expires.clear()
        self.deadlines.clear()
        return OK

    def cmd_select(self, args: List[bytes]) -> Reply:
        if len(args) != 2:
            return _ARITY["select"]
        index = parse_int(args[1])
        if index is None or not -(1 << 31) <= index < (1 << 31):
            return _NOT_INT
        if index != 0:
            return b"-ERR DB index is out of range\r\n"
        return OK

    # ------------------------------------------------------------------ connection and server

    def cmd_ping(self, args: List[bytes]) -> Reply:
        if len(args) == 1:
            return _PONG
        if len(args) == 2:
            return _bulk(args[1])
        return _ARITY["ping"]

    def cmd_echo(self, args: List[bytes]) -> Reply:
        if len(args) != 2:
            return _ARITY["echo"]
        return _bulk(args[1])

    def cmd_quit(self, args: List[bytes]) -> Reply:
        return _QUIT

    def cmd_info(self, args: List[bytes]) -> Reply:
        self.sweep()
        text = (
            "# Server\r\n"
            "redis_version:7.0.0\r\n"
            f"netreactor_version:{__version__}\r\n"
            "redis_mode:standalone\r\n"
            "\r\n# Keyspace\r\n"
        )
        if self.data:
            text += f"db0:keys={len(self.data)},expires={len(self.expires)},avg_ttl=0\r\n"
        return _bulk(text.encode())

    def cmd_config(self, args: List[bytes]) -> Reply:
        if len(args) < 2:
            return _ARITY["config"]
        sub = args[1].upper()
        if sub != b"GET":
            return self._unknown_subcommand(args)
        if len(args) < 3:
            return b"-ERR wrong number of arguments for 'config|get' command\r\n"
        found: Dict[bytes, bytes] = {}
        for pattern in args[2:]:
            pattern = pattern.lower()
            if pattern in CONFIG:
                found[pattern] = CONFIG[pattern]
            else:
                match = glob_to_regex(pattern).fullmatch
                for name, value in CONFIG.items():
                    if match(name):
                        found[name] = value
        items = []
        for name, value in found.items():
            items.append(_bulk(name))
            items.append(_bulk(value))
        return _array(items)

    def cmd_command(self, args: List[bytes]) -> Reply:
        if len(args) == 1:
            return _array([_command_entry(name) for name in COMMANDS])
        sub = args[1].upper()
        if sub == b"COUNT" and len(args) == 2:
            return b":%d\r\n" % len(COMMANDS)
        if sub == b"DOCS":
            return _EMPTY_ARRAY  # redis-cli then uses its built-in help
        if sub == b"LIST":
            return _array([_bulk(name.encode()) for name in COMMANDS])
        if sub == b"INFO":
            names = [n.decode("latin-1").lower() for n in args[2:]] or list(COMMANDS)
            return _array([_command_entry(n) if n in COMMANDS else b"*-1\r\n" for n in names])
        if sub in (b"COUNT",):
            return b"-ERR wrong number of arguments for 'command|%s' command\r\n" % sub.lower()
        return self._unknown_subcommand(args)


def _command_entry(name: str) -> bytes:
    """One ``COMMAND INFO`` entry in Redis 7's ten-field shape."""
    arity, flags, first, last, step, categories = COMMANDS[name]
    return _array([
        _bulk(name.encode()),
        b":%d\r\n" % arity,
        _array([b"+%s\r\n" % f.encode() for f in flags]),
        b":%d\r\n" % first,
        b":%d\r\n" % last,
        b":%d\r\n" % step,
        _array([b"+%s\r\n" % c.encode() for c in categories]),
        _EMPTY_ARRAY,  # tips
        _EMPTY_ARRAY,  # key specs
        _EMPTY_ARRAY,  # subcommands
    ])


def _flatten(replies: List[Reply]) -> List[bytes]:
    out: List[bytes] = []
    for reply in replies:
        if type(reply) is bytes:
            out.append(reply)
        else:
            out.extend(reply)
    return out


class RedisServer(EventHandler):
    """The RESP server handler: ``netreactor.run(RedisServer(), "tcp://127.0.0.1:6379")``.

    Keyword arguments set the protocol limits of every connection (see
    :mod:`netreactor.protocols.resp`). ``store`` may be shared between servers.
    """

    def __init__(self, *, max_bulk: int = DEFAULT_MAX_BULK, max_command: int = DEFAULT_MAX_COMMAND,
                 max_args: int = DEFAULT_MAX_ARGS, max_inline: int = DEFAULT_MAX_INLINE,
                 store: Optional[KeyValueStore] = None, timeout: Optional[float] = None) -> None:
        CommandParser(max_bulk=max_bulk, max_command=max_command, max_args=max_args,
                      max_inline=max_inline)  # validates the limits now, not per connection
        self.max_bulk = max_bulk
        self.max_command = max_command
        self.max_args = max_args
        self.max_inline = max_inline
        self.store = store if store is not None else KeyValueStore()
        self._lock = self.store.lock
        # Hot-path shortcuts (the store mutates these objects in place).
        self._table = self.store.table
        self._resolve = self.store.resolve
        self._deadlines = self.store.deadlines
        if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float))
                                    or not 0 <= timeout < float("inf")):
            raise ValueError(f"timeout must be a number of seconds >= 0 or None, got {timeout!r}")
        self.timeout = timeout
        self._own_idle = False  # set per connection: the engine's idle_timeout differs
        # Connections with an unfinished command whose read timeout is armed.
        self._arriving: Set[Any] = set()

    def on_boot(self, engine: Any) -> None:
        options = getattr(engine, "options", None)
        if self.timeout is not None:
            self._own_idle = (self.timeout or None) != (getattr(options, "idle_timeout", None) or None)
        cap = getattr(options, "write_buffer_cap", None)
        # A value must fit in the outbound buffer as a reply to be read back.
        if cap is not None and self.max_bulk > cap - 64:
            engine.logger.info("redis: bulk strings limited to %d bytes by write_buffer_cap; "
                               "raise write_buffer_cap to store bigger values", cap - 64)
            self.max_bulk = max(1, cap - 64)
        from ..supervisor import worker_count

        if options is not None and worker_count(options) > 1:
            # The store lives in the process: workers would not share it.
            engine.logger.warning("redis: every worker process has its own keyspace; "
                                  "serve with one process (loops may be > 1) for one shared store")
        return None

    def on_open(self, conn: Any) -> None:
        conn.context = CommandParser(max_bulk=self.max_bulk, max_command=self.max_command,
                                     max_args=self.max_args, max_inline=self.max_inline)
        if self._own_idle:
            conn.set_idle_timeout(self.timeout or None)
        return None

    def on_close(self, conn: Any, err: Optional[BaseException]) -> None:
        if self._arriving:
            self._arriving.discard(conn)
        return None

    def on_traffic(self, conn: Any) -> Optional[Action]:
        try:
            commands = conn.context.feed(conn.read())
        except ProtocolError as exc:
            return self._protocol_error(conn, exc)
        if self._arriving and commands:
            self._command_done(conn)
        if len(commands) == 1:
            # One command per read (clients that wait for each reply): the
            # shortest path, measured to matter at ~10 us per request.
            args = commands[0]
            with self._lock:
                reply = (self._table.get(args[0]) or self._resolve(args[0]))(args)
                deadlines = self._deadlines
                if deadlines and deadlines[0][0] <= _now_ms():
                    self.store.sweep()
            if type(reply) is bytes:
                conn.write(reply)
                return Action.CLOSE if reply is _QUIT else None
            conn.writev(reply)
            return None
        if commands:
            return self._run_batch(conn, commands, None)
        if self.timeout:  # an unfinished command: it has `timeout` seconds to arrive whole
            self._command_started(conn)
        return None

    def _command_started(self, conn: Any) -> None:
        if conn not in self._arriving:
            self._arriving.add(conn)
            conn.set_read_timeout(self.timeout)

    def _command_done(self, conn: Any) -> None:
        # An unfinished command after the complete ones is timed from the next read.
        if conn in self._arriving:
            self._arriving.discard(conn)
            conn.set_read_timeout(None)

    def _protocol_error(self, conn: Any, error: ProtocolError) -> Action:
        """Answer the commands before the bad input, then the error; then close."""
        if error.commands:
            self._run_batch(conn, error.commands, error)
        else:
            conn.write(error.reply)
        return Action.CLOSE

    def _run_batch(self, conn: Any, commands: List[List[bytes]], error: Optional[ProtocolError]) -> Optional[Action]:
        """Run pipelined commands and send all their replies with one write."""
        replies: List[Reply] = []
        append = replies.append
        get = self._table.get
        resolve = self._resolve
        action = None
        with self._lock:
            for args in commands:
                reply = (get(args[0]) or resolve(args[0]))(args)
                append(reply)
                if reply is _QUIT:
                    action = Action.CLOSE
                    error = None  # nothing after QUIT is answered
                    break
            deadlines = self._deadlines
            if deadlines and deadlines[0][0] <= _now_ms():
                self.store.sweep()
        if error is not None:
            append(error.reply)
            action = Action.CLOSE
        if sum(map(len, replies)) > _JOIN_LIMIT:
            # Big replies (often stored values themselves) are queued by
            # reference: no copy, and the engine's write_buffer_cap bounds them.
            conn.writev(_flatten(replies))
        else:
            try:
                data = b"".join(replies)
            except TypeError:  # a large reply given as parts
                conn.writev(_flatten(replies))
            else:
                conn.write(data)
        return action


def RedisExample(**kwargs: Any) -> RedisServer:
    """Factory used by ``netreactor example redis`` (keywords: its flags)."""
    return RedisServer(**kwargs)
