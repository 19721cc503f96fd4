"""Read a process's CPU time and memory from /proc (Linux only, stdlib only).

Used by ``bench/echo.py`` to measure the echo servers from the outside, so that
every server is measured the same way whatever it is written in.

CPU: ``utime + stime`` from ``/proc/PID/stat`` (fields 14 and 15, in clock
ticks).  Those already include every thread of the process.  Worker processes
would not be included (``cutime``/``cstime`` only count children that were
waited for), so :func:`process_tree` finds descendants once, before the
measured window, and :func:`cpu_seconds` sums them.

Memory: ``VmRSS`` / ``VmHWM`` from ``/proc/PID/status`` and ``Pss`` / ``Rss``
from ``/proc/PID/smaps_rollup`` (Linux >= 4.14) where readable.
"""

from __future__ import annotations

import os

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str]:
    """Fields of /proc/PID/stat after the ``(comm)`` field.

    ``comm`` may contain spaces or parentheses, so split after the *last* ')'.
    The returned list starts at field 3 (state), i.e. index 0 == field 3.
    """
    with open(f"/proc/{pid}/stat", "rb") as f:
        data = f.read()
    return data[data.rindex(b")") + 2 :].decode().split()


def process_tree(pid: int) -> list[int]:
    """Return ``pid`` and all its live descendants (scan of /proc, a few ms)."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            ppid = int(_stat_fields(int(name))[1])  # field 4
        except (OSError, ValueError, IndexError):
            continue  # the process went away while we looked
        children.setdefault(ppid, []).append(int(name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, ()))
    return out


def cpu_seconds(pids: list[int] | int) -> float:
    """Sum of utime+stime, in seconds, over ``pids`` (vanished ones count 0)."""
    if isinstance(pids, int):
        pids = [pids]
    ticks = 0
    for pid in pids:
        try:
            f = _stat_fields(pid)
        except OSError:
            continue
        ticks += int(f[11]) + int(f[12])  # fields 14 (utime) and 15 (stime)
    return ticks / CLK_TCK


def _kv_kib(path: str, keys: tuple[str, ...]) -> dict[str, int]:
    """Parse ``Key:   123 kB`` lines of a /proc file into {key: bytes}."""
    out: dict[str, int] = {}
    try:
        with open(path) as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in keys:
                    parts = rest.split()
                    if parts:
                        out[key] = int(parts[0]) * 1024
    except OSError:
        pass
    return out


def memory(pid: int) -> dict[str, int]:
    """Memory of one process in bytes: rss, hwm, and pss/rollup_rss if available."""
    st = _kv_kib(f"/proc/{pid}/status", ("VmRSS", "VmHWM"))
    sm = _kv_kib(f"/proc/{pid}/smaps_rollup", ("Pss", "Rss"))
    out = {"rss": st.get("VmRSS", 0), "hwm": st.get("VmHWM", 0)}
    if "Pss" in sm:
        out["pss"] = sm["Pss"]
    return out


def memory_tree(pids: list[int]) -> dict[str, int]:
    """Sum of :func:`memory` over several processes (workers included)."""
    total: dict[str, int] = {}
    for pid in pids:
        for k, v in memory(pid).items():
            total[k] = total.get(k, 0) + v
    return total


def open_fds(pid: int) -> int:
    """Number of open file descriptors of ``pid`` (-1 if unreadable)."""
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


def cpus_allowed(pid: int) -> str:
    """The ``Cpus_allowed_list`` of ``pid``, e.g. ``"0"``, to check pinning."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("Cpus_allowed_list:"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "?"


def cpu_busy_seconds(cpus: list[int]) -> dict[int, float]:
    """Busy time (everything but idle and iowait), in seconds, of each CPU.

    Compared with the CPU time of the processes pinned there, it reveals load
    from *other* processes on the same CPU (this machine is shared), which
    makes a run's figures suspect.  Includes irq/softirq/steal time.
    """
    want = {f"cpu{c}": c for c in cpus}
    out: dict[int, float] = {}
    with open("/proc/stat") as f:
        for line in f:
            parts = line.split()
            if parts and parts[0] in want:
                v = [int(x) for x in parts[1:]]
                # user nice system idle iowait irq softirq steal [guest guest_nice]
                # guest time is already included in user/nice.
                busy = v[0] + v[1] + v[2] + v[5] + v[6] + (v[7] if len(v) > 7 else 0)
                out[want[parts[0]]] = busy / CLK_TCK
    return out
