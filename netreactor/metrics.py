"""Engine statistics: the model, its Prometheus text exposition, the worker
aggregate, and a ``/metrics`` HTTP handler.

**The model.** :data:`METRICS` is the one table of what is measured: each row a
key (what the engine counts under), a Prometheus name, a type, a help text and,
for labelled metrics, the label and its fixed values. Adding a metric is one
row. A loop counts into a plain dict made by :func:`loop_stats` (keys such as
``"accepted"`` or ``"closed.peer"``: one key per series), so counting is
``stats["accepted"] += 1`` on the loop's own thread, no lock. A
:class:`Snapshot` is an immutable copy: per-loop values and the totals.

**The exposition** (:func:`render`) follows the Prometheus text format 0.0.4
(``https://prometheus.io/docs/instrumenting/exposition_formats/``):

* one ``# HELP`` and one ``# TYPE`` line per metric, then its samples, metrics
  in table order, each metric's series together;
* names are ``netreactor_`` + the table's name, in Prometheus' conventions:
  ``snake_case``, counters end in ``_total``, units in the name (``_bytes``);
* HELP text escapes ``\\`` as ``\\\\`` and newline as ``\\n``; label values
  also escape ``"`` as ``\\"`` (the format's three escapes, nothing else);
* every label value of a labelled metric is always present (at 0 until it
  happens), so a rate never starts from a missing series;
* values are integers where they are integers, else Go-parseable floats
  (``NaN``, ``+Inf``, ``-Inf``); no timestamps (the scrape time is right).

By default the totals are exposed; ``per_loop=True`` labels loop-scope series
with ``loop="N"`` instead (sum them with ``sum without (loop)``).

**Workers.** :class:`Aggregator` folds the snapshots that N worker processes
send the supervisor into one: counters are the sum over live workers plus the
last counters of every retired worker, so they never go back when a worker
dies and is replaced; gauges are the sum over live workers only. The wire form
is one JSON line per snapshot (:func:`encode_stats`, :class:`StatsDecoder`);
the decoder holds at most one line (``max_line`` bytes), drops what is not a
valid stats line and counts it.

**Serving.** :class:`MetricsHandler` is an ``EventHandler`` that answers
``GET /metrics`` (and ``HEAD``) on the loop that owns the connection, parsing
with :mod:`netreactor.protocols.http1`: keep-alive and pipelining, 404 for
other paths, 405 (with ``Allow``) for other methods, 400/413/431... for bad
requests, 500 when the snapshot callable fails; idle connections are closed
after ``idle_timeout`` seconds.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .handler import Action, EventHandler
from .protocols.http1 import HTTPError, Request, RequestParser, encode_response

__all__ = [
    "CLOSE_CAUSES",
    "CONTENT_TYPE",
    "COUNTER",
    "GAUGE",
    "KEYS",
    "LOOP",
    "LOOP_KEYS",
    "METRICS",
    "PREFIX",
    "PROCESS",
    "REFUSAL_REASONS",
    "Aggregator",
    "Metric",
    "MetricsHandler",
    "Snapshot",
    "StatsDecoder",
    "decode_stats",
    "encode_stats",
    "loop_stats",
    "render",
]

COUNTER = "counter"
GAUGE = "gauge"
#: Scopes: counted by each loop (summed for the total), or once per process.
LOOP = "loop"
PROCESS = "process"
PREFIX = "netreactor_"
#: The ``Content-Type`` of the text format.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: Why a connection closed: the peer closed or reset it; the server closed it
#: (``Action.CLOSE``, ``conn.close()``, shutdown); a socket or handler error; an
#: idle, read or header timeout; a buffer cap was passed.
CLOSE_CAUSES = ("peer", "local", "error", "timeout", "cap")
#: Why a connection was refused before ``on_open``: ``max_connections``,
#: ``max_connections_per_ip``, or a missing/invalid/unauthorised PROXY header.
REFUSAL_REASONS = ("max_connections", "per_ip", "proxy")


@dataclass(frozen=True)
class Metric:
    """One row of :data:`METRICS`."""

    key: str
    name: str
    kind: str
    help: str
    label: str = ""
    values: tuple[str, ...] = ()
    scope: str = LOOP

    @property
    def keys(self) -> tuple[str, ...]:
        """The stats keys of its series: ``key``, or ``key.value`` per label value."""
        if not self.label:
            return (self.key,)
        return tuple(f"{self.key}.{v}" for v in self.values)

    @property
    def full_name(self) -> str:
        return PREFIX + self.name


METRICS: tuple[Metric, ...] = (
    Metric("open", "connections_open", GAUGE, "Connections open now."),
    Metric("accepted", "connections_accepted_total", COUNTER, "Connections accepted."),
    Metric("closed", "connections_closed_total", COUNTER,
           "Connections closed, by cause: peer, local, error, timeout or cap.", "cause", CLOSE_CAUSES),
    Metric("refused", "connections_refused_total", COUNTER,
           "Connections refused before on_open, by reason: max_connections, per_ip or proxy.",
           "reason", REFUSAL_REASONS),
    Metric("bytes_in", "received_bytes_total", COUNTER,
           "Application bytes received (plain TCP: as the kernel counts them; TLS: plaintext)."),
    Metric("bytes_out", "sent_bytes_total", COUNTER,
           "Application bytes sent (plain TCP: transmitted, as the kernel counts them; TLS: plaintext)."),
    Metric("frames_in", "frames_received_total", COUNTER,
           "Frames (messages) decoded, where the handler's codec or protocol knows them."),
    Metric("frames_out", "frames_sent_total", COUNTER,
           "Frames (messages) encoded, where the handler's codec or protocol knows them."),
    Metric("paused", "connections_paused", GAUGE, "Connections not read now, for back-pressure."),
    Metric("queued_out", "output_queued_bytes", GAUGE, "Output bytes queued and not yet taken by the kernel."),
    Metric("tls_handshakes", "tls_handshakes_total", COUNTER, "TLS handshakes completed."),
    Metric("tls_failures", "tls_handshake_failures_total", COUNTER, "TLS handshakes that failed."),
    Metric("pool_queue", "pool_queue_depth", GAUGE,
           "Jobs submitted to worker pools and not yet delivered (running or waiting).", scope=PROCESS),
)

#: Every stats key, in table order.
KEYS: tuple[str, ...] = tuple(k for m in METRICS for k in m.keys)
#: The keys each loop counts.
LOOP_KEYS: tuple[str, ...] = tuple(k for m in METRICS if m.scope == LOOP for k in m.keys)
_COUNTER_KEYS = frozenset(k for m in METRICS if m.kind == COUNTER for k in m.keys)
_KEY_SET = frozenset(KEYS)

Values = Mapping[str, float]


def _check_table() -> None:
    names = set()
    for m in METRICS:
        if not re.fullmatch(r"[a-z][a-z0-9_]*", m.name) or m.full_name in names:
            raise AssertionError(f"metric {m.name!r}: bad or repeated name")
        names.add(m.full_name)
        if (m.kind == COUNTER) != m.name.endswith("_total"):
            raise AssertionError(f"metric {m.name!r}: counters, and only they, end in _total")
        if bool(m.label) != bool(m.values):
            raise AssertionError(f"metric {m.name!r}: a label needs its values")
    if len(KEYS) != len(_KEY_SET):
        raise AssertionError("repeated stats key")


_check_table()


def loop_stats() -> dict[str, int]:
    """A fresh counting dict for one loop: every loop-scope key at 0."""
    return dict.fromkeys(LOOP_KEYS, 0)


def _number(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"stats value {key!r} must be a number, got {value!r}")
    return value


@dataclass(frozen=True)
class Snapshot:
    """Stats at one moment: ``total`` has every key of :data:`KEYS`; ``loops`` has
    the loop-scope values of each loop (empty for an aggregate of workers)."""

    total: Mapping[str, float]
    loops: tuple[Mapping[str, float], ...] = field(default=())

    @classmethod
    def from_loops(cls, loops: Iterable[Values], process: Values | None = None) -> Snapshot:
        """Build a snapshot from each loop's stats and the process-wide values
        (``pool_queue``). Missing keys are 0; an unknown key is a ``ValueError``."""
        per_loop: list[dict[str, float]] = []
        total: dict[str, float] = dict.fromkeys(KEYS, 0)
        for values in loops:
            row: dict[str, float] = dict.fromkeys(LOOP_KEYS, 0)
            for key, value in values.items():
                if key not in row:
                    raise ValueError(f"unknown loop stats key {key!r}")
                row[key] = _number(key, value)
                total[key] += row[key]
            per_loop.append(row)
        for key, value in (process or {}).items():
            if key not in _KEY_SET or key in LOOP_KEYS:
                raise ValueError(f"unknown process stats key {key!r}")
            total[key] = _number(key, value)
        return cls(total, tuple(per_loop))

    def __getitem__(self, key: str) -> float:
        """The total of ``key`` (0 when absent)."""
        if key not in _KEY_SET:
            raise KeyError(key)
        return self.total.get(key, 0)


# --------------------------------------------------------------------------- exposition

_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _escape_label(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _format_value(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value.is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(value)


def _labels(pairs: Iterable[tuple[str, str]]) -> str:
    text = ",".join(f'{name}="{_escape_label(value)}"' for name, value in pairs)
    return "{" + text + "}" if text else ""


def render(snapshot: Snapshot, *, per_loop: bool = False,
           const_labels: Mapping[str, str] | None = None) -> str:
    """The Prometheus text exposition (format 0.0.4) of ``snapshot``.

    ``const_labels`` are added to every sample (say ``{"service": "api"}``);
    a name that is not a valid label name, or one of ours, is a ``ValueError``.
    """
    const = tuple((const_labels or {}).items())
    reserved = {"loop"} | {m.label for m in METRICS if m.label}
    for name, value in const:
        if not isinstance(name, str) or not _LABEL_NAME.fullmatch(name) or name.startswith("__") \
                or name in reserved:
            raise ValueError(f"const label name {name!r} is not usable (reserved or not [a-zA-Z_][a-zA-Z0-9_]*)")
        if not isinstance(value, str):
            raise ValueError(f"const label {name!r}: value must be a string, got {value!r}")
    split = per_loop and bool(snapshot.loops)
    lines: list[str] = []
    for m in METRICS:
        name = m.full_name
        lines.append(f"# HELP {name} {_escape_help(m.help)}")
        lines.append(f"# TYPE {name} {m.kind}")
        series = [((), snapshot.total)] if not split or m.scope != LOOP else \
            [((("loop", str(i)),), values) for i, values in enumerate(snapshot.loops)]
        for extra, values in series:
            if m.label:
                for label_value, key in zip(m.values, m.keys, strict=True):
                    labels = _labels(const + extra + ((m.label, label_value),))
                    lines.append(f"{name}{labels} {_format_value(values.get(key, 0))}")
            else:
                lines.append(f"{name}{_labels(const + extra)} {_format_value(values.get(m.key, 0))}")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- workers

class Aggregator:
    """Folds the snapshots of worker processes into one (the supervisor's endpoint).

    :meth:`update` records a live worker's latest snapshot; :meth:`retire` is
    called when the supervisor reaps a worker. Counters are the sum over live
    workers plus every retired worker's last counters, so they never go back
    when a worker dies and is replaced; gauges are summed over live workers
    only. A worker id whose counters go down is taken to be a new process
    reusing the id: the old one's counters are retired first.
    """

    def __init__(self) -> None:
        self._live: dict[Hashable, dict[str, float]] = {}
        self._retired: dict[str, float] = dict.fromkeys(sorted(_COUNTER_KEYS), 0)
        #: Workers retired so far.
        self.retired_workers = 0

    @property
    def workers(self) -> int:
        """Workers with a snapshot and not retired."""
        return len(self._live)

    def update(self, worker: Hashable, snapshot: Snapshot) -> None:
        values = {k: snapshot.total.get(k, 0) for k in KEYS}
        previous = self._live.get(worker)
        if previous is not None and any(values[k] < previous[k] for k in _COUNTER_KEYS):
            self._fold(previous)
        self._live[worker] = values

    def retire(self, worker: Hashable) -> None:
        """``worker`` is gone: keep its counters, forget its gauges. Unknown ids are ignored."""
        previous = self._live.pop(worker, None)
        if previous is not None:
            self._fold(previous)

    def _fold(self, values: Mapping[str, float]) -> None:
        for k in _COUNTER_KEYS:
            self._retired[k] += values[k]
        self.retired_workers += 1

    def snapshot(self) -> Snapshot:
        total: dict[str, float] = {}
        for k in KEYS:
            live = sum(v[k] for v in self._live.values())
            total[k] = live + self._retired[k] if k in _COUNTER_KEYS else live
        return Snapshot(total)


#: A worker's stats line starts with this (the worker pipe may carry other lines).
WIRE_PREFIX = b"stats "
_WIRE_VERSION = 1
#: Longest stats line accepted (a full snapshot is about 300 bytes).
MAX_WIRE_LINE = 16384


def encode_stats(snapshot: Snapshot) -> bytes:
    """One line: ``stats {"v":1,"t":{key: value, ...}}\\n`` (totals, zero values left out)."""
    total = {k: v for k in KEYS if (v := snapshot.total.get(k, 0))}
    body = json.dumps({"v": _WIRE_VERSION, "t": total}, separators=(",", ":"), allow_nan=False)
    return WIRE_PREFIX + body.encode("ascii") + b"\n"


def decode_stats(line: bytes) -> Snapshot:
    """Parse one line made by :func:`encode_stats` (with or without its newline).
    Raises ``ValueError`` for anything else; keys it does not know are ignored
    (a newer worker may count more)."""
    if not line.startswith(WIRE_PREFIX):
        raise ValueError("not a stats line")
    if len(line) > MAX_WIRE_LINE:
        raise ValueError(f"stats line over {MAX_WIRE_LINE} bytes")
    try:
        message = json.loads(line[len(WIRE_PREFIX):])
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"stats line is not JSON: {exc}") from None
    if not isinstance(message, dict) or message.get("v") != _WIRE_VERSION or \
            not isinstance(message.get("t"), dict):
        raise ValueError("stats line is not a version-1 stats message")
    total: dict[str, float] = dict.fromkeys(KEYS, 0)
    for key, value in message["t"].items():
        if key not in _KEY_SET:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or \
                not math.isfinite(value) or value < 0:
            raise ValueError(f"stats value {key!r} is not a finite non-negative number: {value!r}")
        total[key] = value
    return Snapshot(total)


class StatsDecoder:
    """Cuts a byte stream (a worker's pipe) into stats lines and decodes them.

    Holds at most ``max_line`` bytes of an unfinished line; a longer line is
    dropped up to its newline. Lines that are not valid stats lines are dropped
    and counted in :attr:`rejected`; nothing raises.
    """

    __slots__ = ("_buf", "_skipping", "max_line", "rejected")

    def __init__(self, max_line: int = MAX_WIRE_LINE) -> None:
        if isinstance(max_line, bool) or not isinstance(max_line, int) or max_line < 64:
            raise ValueError(f"max_line must be an integer of at least 64, got {max_line!r}")
        self.max_line = max_line
        #: Lines dropped as not being stats lines (garbage, too long, bad values).
        self.rejected = 0
        self._buf = bytearray()
        self._skipping = False

    def feed(self, data: bytes) -> list[Snapshot]:
        out: list[Snapshot] = []
        start = 0
        n = len(data)
        while start < n:
            nl = data.find(b"\n", start)
            if nl < 0:
                if not self._skipping:
                    self._buf += data[start:]
                    if len(self._buf) > self.max_line:
                        self._buf = bytearray()
                        self._skipping = True
                        self.rejected += 1
                break
            if self._skipping:
                self._skipping = False
            else:
                self._buf += data[start:nl]
                line = bytes(self._buf)
                if len(line) > self.max_line:
                    self.rejected += 1
                elif line:
                    try:
                        out.append(decode_stats(line))
                    except ValueError:
                        self.rejected += 1
            self._buf = bytearray()
            start = nl + 1
        return out


# --------------------------------------------------------------------------- serving

_logger = logging.getLogger("netreactor")
_TEXT = (("Content-Type", "text/plain; charset=utf-8"),)
_ALLOW = "GET, HEAD"


class _Client:
    __slots__ = ("last", "parser", "timer")

    def __init__(self, parser: RequestParser) -> None:
        self.parser = parser
        self.last = time.monotonic()
        self.timer: Any = None


class MetricsHandler(EventHandler):
    """Serves ``GET path`` (default ``/metrics``) with ``render(snapshot())``.

    ``snapshot`` is called on the serving loop for each scrape and must not
    block. ``idle_timeout`` (seconds, None for never) closes connections that
    send nothing for that long, half-sent requests included.
    """

    def __init__(self, snapshot: Callable[[], Snapshot], *, path: str = "/metrics",
                 per_loop: bool = False, const_labels: Mapping[str, str] | None = None,
                 idle_timeout: float | None = 120.0, max_head: int = 8192) -> None:
        if not callable(snapshot):
            raise ValueError(f"snapshot must be a callable returning a Snapshot, got {snapshot!r}")
        if not path.startswith("/") or any(c in path for c in " ?#\r\n"):
            raise ValueError(f"path must be an absolute path like '/metrics', got {path!r}")
        if idle_timeout is not None and (isinstance(idle_timeout, bool) or
                                         not isinstance(idle_timeout, (int, float)) or
                                         not idle_timeout > 0 or math.isinf(idle_timeout)):
            raise ValueError(f"idle_timeout must be a positive number of seconds or None, got {idle_timeout!r}")
        render(Snapshot.from_loops([]), const_labels=const_labels)  # check the labels now
        self.snapshot = snapshot
        self.path = path.encode("ascii")
        self.per_loop = per_loop
        self.const_labels = dict(const_labels or {})
        self.idle_timeout = idle_timeout
        self.max_head = max_head
        self._parser()  # validate the limits before any connection

    def _parser(self) -> RequestParser:
        # Scrapers send no body; a small one (to be answered 405) is read and dropped.
        return RequestParser(max_head=self.max_head, max_body=4096,
                             # Below max_head, so that a long request line is proven (414) before
                             # the head is (431): the parser answers whichever it proves first.
                             max_request_line=min(self.max_head // 2, 4096))

    def new_parser(self) -> RequestParser:
        """A request parser for one connection, for :meth:`answer`."""
        return self._parser()

    def answer(self, parser: RequestParser, data: bytes) -> tuple[bytes, bool]:
        """Sans-IO core of the handler, for servers that are not an engine (a
        worker supervisor): feed a connection's bytes to its ``parser``; return
        the replies to send and whether to close the connection after them."""
        error: HTTPError | None = None
        try:
            requests = parser.feed(data)
        except HTTPError as exc:
            requests, error = exc.requests, exc
        out = []
        close = False
        for request in requests:
            out.append(self._respond(request))
            if not request.keep_alive:
                close = True
                error = None  # nothing after a closing request is answered
                break
        if error is not None:
            body = f"{error.status} {error.detail}\n".encode("latin-1", "replace")
            out.append(encode_response(error.status, _TEXT, body, keep_alive=False))
            close = True
        return b"".join(out), close

    def on_open(self, conn: Any) -> Action | None:
        state = _Client(self._parser())
        conn.context = state
        if self.idle_timeout is not None:
            state.timer = conn.call_later(self.idle_timeout, self._check_idle, conn)
        return None

    def on_close(self, conn: Any, err: BaseException | None) -> Action | None:
        state = conn.context
        if isinstance(state, _Client) and state.timer is not None:
            state.timer.cancel()
            state.timer = None
        return None

    def _check_idle(self, conn: Any) -> None:
        state = conn.context
        if conn.closed or not isinstance(state, _Client) or self.idle_timeout is None:
            return
        idle = time.monotonic() - state.last
        if idle >= self.idle_timeout:
            state.timer = None
            conn.close()
        else:  # one timer per connection, re-armed for the time left (never one per request)
            state.timer = conn.call_later(self.idle_timeout - idle, self._check_idle, conn)

    def on_traffic(self, conn: Any) -> Action | None:
        state: _Client = conn.context
        state.last = time.monotonic()
        reply, close = self.answer(state.parser, conn.read())
        if reply:
            conn.write(reply)
        return Action.CLOSE if close else None

    def _respond(self, request: Request) -> bytes:
        keep = request.keep_alive
        head = request.method == b"HEAD"  # same headers, no body, whatever the status
        extra = (("Connection", "keep-alive"),) if keep and request.version == b"1.0" else ()
        if request.path != self.path:
            return encode_response(404, _TEXT + extra, b"Not Found\n", keep_alive=keep, head_only=head)
        if request.method not in (b"GET", b"HEAD"):
            return encode_response(405, _TEXT + (("Allow", _ALLOW),) + extra, b"Method Not Allowed\n",
                                   keep_alive=keep)
        try:
            body = render(self.snapshot(), per_loop=self.per_loop,
                          const_labels=self.const_labels).encode("utf-8")
        except Exception:
            _logger.exception("metrics: the snapshot could not be taken or rendered")
            return encode_response(500, _TEXT + extra, b"Internal Server Error\n", keep_alive=keep,
                                   head_only=head)
        return encode_response(200, (("Content-Type", CONTENT_TYPE),) + extra, body, keep_alive=keep,
                               head_only=head)
