"""Pure-Python fallback for ``bench/loadgen.c`` (same options, same output).

Used by ``bench/echo.py`` only when no C compiler is available.  A Python load
generator costs about as much per message as a Python server, so it will
usually be the bottleneck: the server then is not saturated, its CPU per
message is inflated by small epoll batches, and ratios between servers are
compressed.  The harness prints a warning when this fallback is used.

Protocol on stdout (one JSON object per line): ``connected``, ``start``,
``end``, ``result`` -- see the comment at the top of ``loadgen.c``.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import resource
import select
import socket
import sys
import time

P_CONNECT, P_WARMUP, P_MEASURE, P_DRAIN = range(4)


class Conn:
    """One client connection and its current batch."""

    __slots__ = ("sock", "fd", "id", "connecting", "confirmed", "seq", "buf", "out_off",
                 "in_off", "want_out")

    def __init__(self, sock: socket.socket, cid: int):
        self.sock = sock
        self.fd = sock.fileno()
        self.id = cid
        self.connecting = True
        self.confirmed = False
        self.seq = 0
        self.buf = b""
        self.out_off = 0
        self.in_off = 0
        self.want_out = True


def _batch(cid: int, seq: int, size: int, depth: int) -> bytes:
    """Same pattern as loadgen.c's fill_batch()."""
    out = bytearray()
    for m in range(depth):
        base = cid * 7 + seq * 13 + m * 31
        out += bytes((base + k) & 0xFF for k in range(size))
    return bytes(out)


def _loopback(host: str) -> bool:
    try:
        return socket.inet_pton(socket.AF_INET, host)[0] == 127
    except OSError:
        pass
    try:
        return socket.inet_pton(socket.AF_INET6, host) == socket.inet_pton(socket.AF_INET6, "::1")
    except OSError:
        return False


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--unix")
    ap.add_argument("--conns", type=int, default=50)
    ap.add_argument("--mode", choices=("pingpong", "pipeline", "idle"), default="pingpong")
    ap.add_argument("--depth", type=int, default=1)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--warmup", type=float, default=1.0)
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--cpu", type=int, default=-1)
    ap.add_argument("--hold", action="store_true")
    ap.add_argument("--hold-timeout", type=float, default=120.0)
    ap.add_argument("--connect-timeout", type=float, default=60.0)
    ap.add_argument("--connect-concurrency", type=int, default=64)
    a = ap.parse_args(argv)
    if a.mode == "pingpong":
        a.depth = 1
    if a.mode == "idle":
        a.size = a.depth = 1
    if not a.unix and not _loopback(a.host):
        print(f"loadgen: refusing non-loopback target {a.host}", file=sys.stderr)
        return 2
    if a.duration > 60 or a.warmup > 60 or a.conns > 100000:
        print("loadgen: duration/warmup capped at 60 s, conns at 100000", file=sys.stderr)
        return 2
    if a.cpu >= 0:
        os.sched_setaffinity(0, {a.cpu})
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < a.conns + 32:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    family = socket.AF_UNIX if a.unix else (socket.AF_INET6 if ":" in a.host else socket.AF_INET)
    target = a.unix if a.unix else (a.host, a.port)
    ep = select.epoll()
    conns: dict[int, Conn] = {}
    errs = dict(err_connect=0, err_io=0, err_closed=0, err_mismatch=0, err_extra=0)
    st = dict(opened=0, unconfirmed=0, confirmed=0, inflight=0)
    msgs_window = msgs_total = bytes_window = 0
    phase = P_CONNECT
    t0 = time.monotonic()
    deadline = t0 + a.connect_timeout
    hold_deadline = 0.0
    t_connected = t_start = t_end = 0.0
    cpu_start = cpu_end = 0.0
    IN, OUT = select.EPOLLIN, select.EPOLLOUT

    def kill(c: Conn) -> None:
        if c.fd not in conns:
            return
        if not c.confirmed:
            st["unconfirmed"] -= 1
        if c.buf and c.in_off < len(c.buf):
            st["inflight"] -= 1
        del conns[c.fd]
        ep.unregister(c.fd)
        c.sock.close()

    def pump(c: Conn) -> None:
        while c.out_off < len(c.buf):
            try:
                c.out_off += c.sock.send(c.buf[c.out_off:])
            except BlockingIOError:
                if not c.want_out:
                    ep.modify(c.fd, IN | OUT)
                    c.want_out = True
                return
            except OSError:
                errs["err_io"] += 1
                kill(c)
                return
        if c.want_out:
            ep.modify(c.fd, IN)
            c.want_out = False

    def start_batch(c: Conn) -> None:
        c.seq += 1
        c.buf = _batch(c.id, c.seq, a.size, a.depth)
        c.out_off = c.in_off = 0
        st["inflight"] += 1
        pump(c)

    def open_more() -> None:
        while st["opened"] < a.conns and st["unconfirmed"] < a.connect_concurrency:
            s = socket.socket(family, socket.SOCK_STREAM)
            s.setblocking(False)
            if family != socket.AF_UNIX:
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            c = Conn(s, st["opened"])
            st["opened"] += 1
            st["unconfirmed"] += 1
            conns[c.fd] = c
            ep.register(c.fd, IN | OUT)
            err = s.connect_ex(target)
            if err not in (0, errno.EINPROGRESS, errno.EAGAIN):
                errs["err_connect"] += 1
                kill(c)

    def emit(name: str) -> None:
        print(json.dumps({"event": name, "t": time.monotonic() - t0, "live": len(conns),
                          "errors": sum(errs.values())}), flush=True)

    def cpu_self() -> float:
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime

    stdin_watched = False
    open_more()
    done = False
    while not done:
        tn = time.monotonic()
        if phase == P_CONNECT:
            if st["confirmed"] == a.conns:
                t_connected = tn
                emit("connected")
                if a.mode == "idle":
                    phase, hold_deadline = P_DRAIN, tn + a.hold_timeout
                else:
                    phase, deadline = P_WARMUP, tn + a.warmup
            elif not conns and st["opened"] == a.conns:
                print("loadgen: every connection failed", file=sys.stderr)
                break
            elif tn >= deadline:
                print(f"loadgen: connect phase timed out ({st['confirmed']}/{a.conns})",
                      file=sys.stderr)
                break
        if phase == P_WARMUP and tn >= deadline:
            phase, t_start, cpu_start = P_MEASURE, time.monotonic(), cpu_self()
            emit("start")
            deadline = t_start + a.duration
        if phase == P_MEASURE and tn >= deadline:
            t_end, cpu_end = time.monotonic(), cpu_self()
            phase, hold_deadline = P_DRAIN, t_end + a.hold_timeout
            emit("end")
        if phase == P_DRAIN:
            if a.hold and not stdin_watched:
                try:
                    ep.register(0, IN)
                    stdin_watched = True
                except OSError:
                    break
            if not a.hold and st["inflight"] == 0:
                break
            if tn >= hold_deadline:
                break
        elif not conns:
            print("loadgen: no connection left", file=sys.stderr)
            break
        nxt = hold_deadline if phase == P_DRAIN else deadline
        timeout = max(0.0, nxt - tn)
        if phase == P_CONNECT:
            timeout = min(timeout, 0.1)
        for fd, ev in ep.poll(timeout):
            if fd == 0 and stdin_watched:
                os.read(0, 256)  # a line or EOF releases the hold
                done = True
                continue
            c = conns.get(fd)
            if c is None:
                continue
            if c.connecting:
                err = c.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    errs["err_connect"] += 1
                    kill(c)
                    continue
                c.connecting = False
                ep.modify(fd, IN)
                c.want_out = False
                start_batch(c)
                continue
            if ev & OUT:
                pump(c)
            if not ev & (IN | select.EPOLLERR | select.EPOLLHUP) or fd not in conns:
                continue
            try:
                data = c.sock.recv(65536)
            except BlockingIOError:
                continue
            except OSError:
                errs["err_io"] += 1
                kill(c)
                continue
            if not data:
                errs["err_closed"] += 1
                kill(c)
                continue
            n = len(data)
            if c.in_off + n > c.out_off:
                errs["err_extra"] += 1
                kill(c)
                continue
            if c.buf[c.in_off:c.in_off + n] != data:
                errs["err_mismatch"] += 1
                kill(c)
                continue
            before = c.in_off // a.size
            c.in_off += n
            if a.mode != "idle":
                k = c.in_off // a.size - before
                msgs_total += k
                if phase == P_MEASURE:
                    msgs_window += k
                    bytes_window += n
            if c.in_off == len(c.buf):
                st["inflight"] -= 1
                if not c.confirmed:
                    c.confirmed = True
                    st["unconfirmed"] -= 1
                    st["confirmed"] += 1
                if a.mode != "idle" and phase < P_DRAIN:
                    start_batch(c)
        if phase == P_CONNECT:
            open_more()

    elapsed = t_end - t_start if t_end > t_start else 0.0
    total_errs = sum(errs.values())
    print(json.dumps({
        "event": "result", "mode": a.mode, "conns": a.conns, "depth": a.depth, "size": a.size,
        "connected": st["confirmed"], "connect_s": (t_connected - t0) if t_connected else -1.0,
        "messages": msgs_window, "messages_total": msgs_total, "bytes": bytes_window,
        "elapsed": elapsed, "msgs_per_s": msgs_window / elapsed if elapsed else 0.0,
        "gen_cpu_frac": (cpu_end - cpu_start) / elapsed if elapsed else 0.0,
        "gen_busy_frac": (cpu_end - cpu_start) / elapsed if elapsed else 0.0, "spin": 0,
        "errors": total_errs, **errs, "live": len(conns),
    }), flush=True)
    complete = st["confirmed"] == a.conns and (a.mode == "idle" or t_end > 0)
    return 0 if complete and total_errs == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
