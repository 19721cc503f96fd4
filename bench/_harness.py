"""The shape of a benchmark run, shared by every bench/ script.

* :class:`Scenario` (what the load does) and :class:`Profile` (how long);
  the standard command-line options and their checks;
* the CPU layout: server on the first CPU, load generator and harness on the
  second;
* :class:`CpuWindow`: the server's CPU time over a window, and the *other
  load* on the pinned CPUs (busy time minus our own processes');
* :func:`measure_load` / :func:`measure_idle`: one run against a generator
  that speaks the ``connected``/``start``/``end``/``result`` line protocol,
  and :func:`throughput_run`, the run record built from it;
* :func:`run_rounds`: every scenario x server, rounds interleaved with a
  rotating order, failures recorded, Ctrl-C reporting what was measured;
* medians, ratios, the notes on unsaturated or disturbed runs, and tables
  (plain text, or rich when installed).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional, Sequence

import _procstat
from _common import SERVERS_PY, BenchError, Interrupted, save_json
from _procs import LoadgenProc, ServerProc


@dataclass(frozen=True)
class Scenario:
    """One workload: what the load generator does, and what the servers speak."""

    name: str
    mode: str               # the generator's --mode (pingpong, pipeline, idle, short, ...)
    conns: int              # connections (UDP: sockets)
    depth: int = 1          # messages in flight per connection
    size: int = 64          # bytes per message
    about: str = ""
    proto: str = "echo"     # servers.py --proto: echo | framed | ...
    frame_header: int = 0   # loadgen --frame-header: length-field bytes at each message's start
    unit: str = "msg"       # what the CPU figure is per: msg | frame | conn | ...


@dataclass
class Profile:
    """Timing knobs; --quick and the full run differ only here."""

    warmup: float
    duration: float
    rounds: int
    settle: float = 1.0  # pause before reading memory, so the server is at rest


# ---------------------------------------------------------------------------- command line


def add_run_options(ap: argparse.ArgumentParser, scenarios: Iterable[str],
                    default_servers: Sequence[str], quick_help: str, results: str,
                    servers_help: str = "comma-separated server kinds (default %(default)s)") -> None:
    """The options every scenario x server benchmark has."""
    ap.add_argument("--quick", action="store_true", help=quick_help)
    ap.add_argument("--scenario", action="extend", nargs="+", metavar="NAME",
                    help=f"scenarios to run (default all): {', '.join(scenarios)}")
    ap.add_argument("--servers", default=",".join(default_servers), help=servers_help)
    ap.add_argument("--duration", type=float, help="measured seconds per run")
    ap.add_argument("--warmup", type=float, help="warm-up seconds per run")
    ap.add_argument("--rounds", type=int, help="rounds per scenario (median reported)")
    ap.add_argument("--json", metavar="PATH", help="where to save results "
                    f"(default bench/results/{results}-<timestamp>.json)")


def profile_from_args(ap: argparse.ArgumentParser, args: argparse.Namespace,
                      quick: Profile, full: Profile) -> Profile:
    """--quick's or the full profile, with --warmup/--duration/--rounds applied and checked."""
    base = quick if args.quick else full
    profile = Profile(
        warmup=args.warmup if args.warmup is not None else base.warmup,
        duration=args.duration if args.duration is not None else base.duration,
        rounds=max(1, args.rounds if args.rounds is not None else base.rounds),
        settle=base.settle,
    )
    if not (0 < profile.duration <= 60 and 0 <= profile.warmup <= 60):
        ap.error("--duration must be in (0, 60] and --warmup in [0, 60]")
    return profile


def pick_scenarios(names: Optional[Sequence[str]], table: Mapping[str, Scenario]) -> list[Scenario]:
    """Scenarios by name (comma-separated or not; a unique prefix is enough), default all."""
    if not names:
        return list(table.values())
    out: list[Scenario] = []
    for n in names:
        for part in n.split(","):
            part = part.strip()
            if not part:
                continue
            hits = [s for s in table if s == part] or [s for s in table if s.startswith(part)]
            if len(hits) != 1:
                raise SystemExit(f"error: scenario {part!r} is "
                                 f"{'ambiguous' if hits else 'unknown'}; "
                                 f"choose from {', '.join(table)}")
            if table[hits[0]] not in out:
                out.append(table[hits[0]])
    return out


def split_servers(text: str) -> list[str]:
    return [s.strip() for s in text.split(",") if s.strip()]


def pin_harness() -> tuple[Optional[int], Optional[int]]:
    """(server CPU, load generator CPU): the first two CPUs we may use.

    The harness moves itself to the generator's CPU: it mostly sleeps, and
    keeping it off the server's CPU keeps its wake-ups out of the figures.
    """
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        print("WARNING: fewer than 2 CPUs available: no pinning, server and load "
              "generator share a CPU", file=sys.stderr)
        return None, None
    os.sched_setaffinity(0, {cpus[1]})
    return cpus[0], cpus[1]


def check_servers(kinds: list[str], protos: set[str]) -> tuple[list[str], set]:
    """The kinds of ``kinds`` that can run here, and the (kind, proto) pairs they cannot serve.

    Asks ``servers.py --check`` and prints why a kind or pair is skipped.
    """
    servers = []
    for kind in kinds:
        r = subprocess.run([sys.executable, SERVERS_PY, "--check", kind],
                           capture_output=True, text=True)
        if r.returncode == 0:
            servers.append(kind)
        else:
            print(f"skipping {kind}: {r.stderr.strip() or 'not available'}", file=sys.stderr)
    unsupported: set = set()  # (kind, proto)
    for proto in sorted(protos - {"echo"}):
        for kind in servers:
            r = subprocess.run([sys.executable, SERVERS_PY, "--check", kind, "--proto", proto],
                               capture_output=True, text=True)
            if r.returncode != 0:
                unsupported.add((kind, proto))
                print(f"skipping {kind} in {proto} scenarios: "
                      f"{r.stderr.strip() or 'not available'}", file=sys.stderr)
    return servers, unsupported


# ---------------------------------------------------------------------------- measuring


def _all_process_cpu() -> dict[int, float]:
    """utime+stime (seconds) of every process now: a scan of /proc, a few ms."""
    return {int(n): _procstat.cpu_seconds(int(n)) for n in os.listdir("/proc") if n.isdigit()}


class CpuWindow:
    """The server's CPU time over a window, and what else ran on the pinned CPUs.

    ``open()`` and ``close()`` sample ``utime+stime`` of the server's process
    tree and the busy time of the pinned CPUs (``/proc/stat``).  *Other load*
    is a CPU's busy time minus what our own processes used there, per second
    of window: the machine is shared, and it says when somebody else's job
    competed with the benchmark.  ``everyone=True`` also scans every process,
    for :attr:`others_s` (CPU seconds of all processes but ``ours``).
    """

    def __init__(self, pids: list[int], server_cpu: Optional[int], gen_cpus: Sequence[int] = (),
                 everyone: bool = False):
        self.pids, self.server_cpu, self.gen_cpus = pids, server_cpu, list(gen_cpus)
        self.cpus = [c for c in [server_cpu, *self.gen_cpus] if c is not None]
        self.everyone = everyone
        self.cpu_s = self.wall = 0.0
        self.busy: dict[int, float] = {}
        self._all: dict[int, float] = {}
        self.others_s = 0.0

    def open(self) -> None:
        self._cpu0, self._t0 = _procstat.cpu_seconds(self.pids), time.monotonic()
        self._busy0 = _procstat.cpu_busy_seconds(self.cpus)
        if self.everyone:
            self._all = _all_process_cpu()

    def close(self, ours: Iterable[int] = ()) -> None:
        cpu1, t1 = _procstat.cpu_seconds(self.pids), time.monotonic()
        busy1 = _procstat.cpu_busy_seconds(self.cpus)
        self.cpu_s, self.wall = cpu1 - self._cpu0, t1 - self._t0
        self.busy = {c: busy1[c] - self._busy0[c] for c in self.cpus}
        if self.everyone:
            mine = set(self.pids) | set(ours) | {os.getpid()}
            after = _all_process_cpu()
            self.others_s = sum(cpu - self._all.get(pid, 0.0) for pid, cpu in after.items()
                                if pid not in mine)

    def server_frac(self) -> float:
        return self.cpu_s / self.wall if self.wall > 0 else 0.0

    def foreign_server(self) -> Optional[float]:
        """Share of the server's CPU that other processes used."""
        if self.server_cpu is None or self.wall <= 0:
            return None
        return max(0.0, (self.busy[self.server_cpu] - self.cpu_s) / self.wall)

    def foreign_gen(self, gen_used_s: float) -> Optional[float]:
        """Share of the generators' CPUs that other processes used (the generators used ``gen_used_s``)."""
        if not self.gen_cpus or self.wall <= 0:
            return None
        busy = sum(self.busy[g] for g in self.gen_cpus)
        return max(0.0, (busy - gen_used_s) / self.wall / len(self.gen_cpus))

    def server_cpu_busy(self) -> Optional[float]:
        """The server's CPU as a whole (softirq included), busy share of the window."""
        if self.server_cpu is None or self.wall <= 0:
            return None
        return self.busy[self.server_cpu] / self.wall


@dataclass
class Measured:
    """What :func:`measure_load` saw: the generator's events and the server's CPU."""

    connected: dict
    result: dict
    window: CpuWindow
    mem: dict
    pids: list[int]
    pinned: str
    foreign_srv: Optional[float] = None
    foreign_gen: Optional[float] = None


def measure_load(srv: ServerProc, argv: Sequence[str], server_cpu: Optional[int],
                 gen_cpu: Optional[int], profile: Profile, connect_timeout: float = 100,
                 everyone: bool = False) -> Measured:
    """Drive ``srv`` with the generator ``argv`` and sample its CPU over the window.

    The generator prints ``start`` and ``end`` at the instants it opens and
    closes its counting window; the server is sampled as soon as each line
    arrives.  After ``end`` it sends nothing new and holds its connections
    until we have sampled and close its stdin, so neither uncounted load nor
    teardown reaches the sample.
    """
    pids = _procstat.process_tree(srv.pid)  # workers, if the server has any
    win = CpuWindow(pids, server_cpu, [gen_cpu] if gen_cpu is not None else (), everyone)
    lg = LoadgenProc(argv)
    try:
        connected = lg.expect("connected", timeout=connect_timeout)
        lg.expect("start", timeout=profile.warmup + 30)
        win.open()
        lg.expect("end", timeout=profile.duration + 30)
        win.close(ours=[lg.proc.pid])
        mem = _procstat.memory_tree(pids)
        lg.release()
        res = lg.expect("result", timeout=30)
    finally:
        lg.close()
    srv.check_alive()
    m = Measured(connected, res, win, mem, pids, _procstat.cpus_allowed(srv.pid))
    m.foreign_srv = win.foreign_server()
    if "gen_cpu_frac" in res and "elapsed" in res:
        m.foreign_gen = win.foreign_gen(res["gen_cpu_frac"] * res["elapsed"])
    return m


def _latency(res: dict, key: str) -> Optional[float]:
    v = res.get(key)
    return v if isinstance(v, (int, float)) and v >= 0 else None


def throughput_run(kind: str, sc: Scenario, m: Measured, what: str = "message") -> dict:
    """The run record of a throughput run: server CPU per message, rate, latency, load."""
    res, win = m.result, m.window
    if res["messages"] <= 0:
        raise BenchError(f"no {what} echoed in the window: {res}")
    run = {
        "server": kind, "scenario": sc.name, "unit": sc.unit,
        "messages": res["messages"], "elapsed": res["elapsed"], "harness_window": win.wall,
        "server_cpu_s": win.cpu_s,
        "cpu_us_per_msg": win.cpu_s / res["messages"] * 1e6,
        "msgs_per_s": res["msgs_per_s"],
        "server_cpu_frac": win.server_frac(),
        "gen_cpu_frac": res["gen_cpu_frac"],
        "gen_busy_frac": res.get("gen_busy_frac", res["gen_cpu_frac"]),
        "foreign_frac_server_cpu": m.foreign_srv, "foreign_frac_gen_cpu": m.foreign_gen,
        "errors": res["errors"], "loadgen": res,
        "connect_s": m.connected.get("t"),
        # Round-trip latency per message as the generator saw it (the C
        # generators only; the Python fallback does not measure it).
        **{k: _latency(res, k) for k in ("lat_p50_us", "lat_p99_us", "lat_p999_us")},
        "server_rss": m.mem.get("rss"), "server_pids": len(m.pids),
        "server_cpus_allowed": m.pinned,
    }
    return run


def measure_idle(srv: ServerProc, argv: Sequence[str], kind: str, sc: Scenario, n: int,
                 settle: float, connect_timeout: float = 100) -> dict:
    """Idle-connection memory: (RSS after - RSS before) / ``n``, the generator holding ``n``."""
    time.sleep(settle)
    pids = _procstat.process_tree(srv.pid)
    before = _procstat.memory_tree(pids)
    fds0 = _procstat.open_fds(srv.pid)
    lg = LoadgenProc(argv)
    try:
        connected = lg.expect("connected", timeout=connect_timeout)
        time.sleep(settle)
        after = _procstat.memory_tree(pids)
        fds1 = _procstat.open_fds(srv.pid)
        lg.release()
        res = lg.expect("result", timeout=30)
    finally:
        lg.close()
    srv.check_alive()
    out = {
        "server": kind, "scenario": sc.name, "conns": n, "connected": res["connected"],
        "connect_s": connected.get("t"), "errors": res["errors"],
        "rss_before": before["rss"], "rss_after": after["rss"],
        "bytes_per_conn_rss": (after["rss"] - before["rss"]) / n,
        "server_fds_added": fds1 - fds0 if fds0 >= 0 and fds1 >= 0 else None,
        "loadgen": res,
    }
    if "pss" in before and "pss" in after:
        out.update(pss_before=before["pss"], pss_after=after["pss"],
                   bytes_per_conn_pss=(after["pss"] - before["pss"]) / n)
    return out


# ---------------------------------------------------------------------------- rounds


class LineReporter:
    """Progress: one line per run on stdout (failures on stderr)."""

    def __init__(self, total: int, name_width: int = 14, kind_width: int = 10,
                 numbered: bool = True):
        self.total, self.n = total, 0
        self.name_width, self.kind_width, self.numbered = name_width, kind_width, numbered
        self.label = ""

    def step(self, scenario: str, server: str, rnd: int) -> None:
        self.n += 1
        self.label = (f"[{self.n}/{self.total}] " if self.numbered else "") + \
            f"{scenario:<{self.name_width}} {server:<{self.kind_width}} round {rnd}"

    def done(self, text: str) -> None:
        print(f"{self.label}: {text}", flush=True)

    def failed(self, error: str) -> None:
        print(f"{self.label}: FAILED: {error}", file=sys.stderr, flush=True)

    def note(self, text: str) -> None:
        print(text, file=sys.stderr, flush=True)


@dataclass
class Rounds:
    """What :func:`run_rounds` measured: runs by (scenario, server), failures, and whether interrupted."""

    runs: dict = field(default_factory=dict)
    failures: list = field(default_factory=list)
    interrupted: bool = False

    def flat(self) -> list[dict]:
        return [r for rs in self.runs.values() for r in rs]


def run_rounds(scenarios: Sequence[Any], servers: Sequence[str], rounds: int,
               run_one: Callable[[str, Any], dict], describe: Callable[[dict], str],
               reporter: Any, skip: Optional[Callable[[str, Any], bool]] = None,
               errors: tuple = (BenchError,), into: Optional[Rounds] = None) -> Rounds:
    """Run every scenario x server ``rounds`` times, rotating the server order.

    The order rotates every round (A B C, B C A, C A B) so that slow drift of
    the machine favours nobody.  ``run_one(kind, scenario)`` returns a run
    dict or raises one of ``errors`` (recorded as a failure, the others go
    on); ``describe(run)`` is the progress line's tail; ``skip(kind,
    scenario)`` leaves a pair out.  Ctrl-C or SIGTERM (:class:`Interrupted`)
    stop early: what was measured is kept.
    """
    out = into if into is not None else Rounds()
    try:
        for sc in scenarios:
            for rnd in range(rounds):
                order = list(servers[rnd % len(servers):]) + list(servers[:rnd % len(servers)])
                for kind in order:
                    if skip is not None and skip(kind, sc):
                        continue
                    reporter.step(sc.name, kind, rnd + 1)
                    try:
                        run = run_one(kind, sc)
                    except (KeyboardInterrupt, Interrupted):
                        raise
                    except errors as exc:
                        msg = str(exc) if isinstance(exc, BenchError) else f"{type(exc).__name__}: {exc}"
                        reporter.failed(msg)
                        out.failures.append({"scenario": sc.name, "server": kind,
                                             "round": rnd + 1, "error": msg})
                        continue
                    run["round"] = rnd + 1
                    out.runs.setdefault((sc.name, kind), []).append(run)
                    reporter.done(describe(run))
    except (KeyboardInterrupt, Interrupted):
        out.interrupted = True
        reporter.note("\ninterrupted: servers stopped; reporting what was measured")
    return out


# ---------------------------------------------------------------------------- summaries


def median(vals: Iterable[Optional[float]]) -> Optional[float]:
    """Median of the values that are not None, or None."""
    got = [v for v in vals if v is not None]
    return statistics.median(got) if got else None


def pct(x: Optional[float]) -> str:
    return "-" if x is None else f"{100 * x:.0f}%"


def groups(runs: Mapping[tuple, list[dict]], scenarios: Sequence[Any],
           servers: Sequence[str]) -> Iterator[tuple[Any, str, list[dict]]]:
    """(scenario, server, its runs) for every pair that has runs, in scenario then server order."""
    for sc in scenarios:
        for kind in servers:
            rs = runs.get((sc.name, kind))
            if rs:
                yield sc, kind, rs


def summarize(runs: Mapping[tuple, list[dict]], scenarios: Sequence[Scenario],
              servers: Sequence[str], base: Optional[str], base_first: bool = True) -> dict:
    """Medians per (scenario, server), and the ratios of CPU per unit (idle: memory) to ``base``.

    ``base_first``: ratios are named and computed ``base/other`` (echo's
    "netreactor/uvloop"), else ``other/base`` (tls's "asyncio-tls/uvloop-tls").
    """
    table: dict = {}
    for sc, kind, rs in groups(runs, scenarios, servers):
        row = {"rounds": len(rs), "errors": sum(r["errors"] for r in rs),
               "conns": rs[0].get("conns", sc.conns), "unit": sc.unit}
        keys = (("bytes_per_conn_rss", "bytes_per_conn_pss", "connect_s")
                if sc.mode == "idle" else
                ("cpu_us_per_msg", "msgs_per_s", "server_cpu_frac", "gen_busy_frac",
                 "foreign_frac_server_cpu", "foreign_frac_gen_cpu",
                 "lat_p50_us", "lat_p99_us", "lat_p999_us"))
        for k in keys:
            row[k] = median(r.get(k) for r in rs)
        if sc.mode != "idle":
            # How far the harness's CPU-sampling window drifted from the
            # generator's counting window (should be well under 1%).
            row["window_skew"] = max(abs(r["harness_window"] - r["elapsed"]) / r["elapsed"]
                                     for r in rs)
            vals = [r["cpu_us_per_msg"] for r in rs]
            row["cpu_us_per_msg_min"], row["cpu_us_per_msg_max"] = min(vals), max(vals)
            if sc.unit == "conn":
                row["cpu_us_per_conn"], row["conns_per_s"] = (row["cpu_us_per_msg"],
                                                               row["msgs_per_s"])
        table.setdefault(sc.name, {})[kind] = row
    ratios: dict = {}
    for sc in scenarios:
        rows = table.get(sc.name, {})
        key = "bytes_per_conn_rss" if sc.mode == "idle" else "cpu_us_per_msg"
        if base not in rows or not rows[base].get(key):
            continue
        for kind, row in rows.items():
            if kind != base and row.get(key):
                if base_first:
                    ratios.setdefault(sc.name, {})[f"{base}/{kind}"] = rows[base][key] / row[key]
                else:
                    ratios.setdefault(sc.name, {})[f"{kind}/{base}"] = row[key] / rows[base][key]
    return {"baseline": base, "table": table, "ratios": ratios}


def run_notes(result: dict, scenarios: Sequence[Scenario]) -> list[str]:
    """Plain-language caveats per run: errors, other load, unsaturated servers, skewed windows."""
    out = []
    for sc in scenarios:
        for kind, row in result["table"].get(sc.name, {}).items():
            if row["errors"]:
                out.append(f"{sc.name}/{kind}: {row['errors']} load generator errors "
                           "(mismatched echo, reset or failed connect)")
            if sc.mode == "idle":
                continue
            srv, gen = row["server_cpu_frac"], row["gen_busy_frac"]
            other = row.get("foreign_frac_server_cpu") or 0.0
            other_gen = row.get("foreign_frac_gen_cpu") or 0.0
            parts = []
            if other > 0.05 or other_gen > 0.10:
                parts.append(f"other processes used {pct(other)} of the server's CPU and "
                             f"{pct(other_gen)} of the load generator's (shared machine)")
            if srv is not None and srv < 0.90:
                if other > 0.05:
                    why = "it shared its CPU"
                elif other_gen > 0.10:
                    why = "the load generator shared its CPU"
                elif gen and gen > 0.90:
                    why = "the load generator looks like the limit"
                else:
                    why = "latency bound: neither side saturated"
                parts.append(f"server only {pct(srv)} busy ({why}), so CPU/{sc.unit} is not at "
                             "saturation")
            if row.get("window_skew", 0) > 0.01:
                parts.append(f"sampling window off by {pct(row['window_skew'])} of its length")
            if parts:
                out.append(f"{sc.name}/{kind}: " + "; ".join(parts))
    return out


# ---------------------------------------------------------------------------- tables


def print_table(title: str, head: Sequence[str], rows: Sequence[Sequence[str]], use_rich: bool = False,
                width: int = 120, sections: bool = False, bold: Optional[str] = None) -> None:
    """A table: two left-aligned label columns, the rest right-aligned.

    Plain text by default (a blank line, the title, indented rows); with
    ``use_rich`` and rich installed, a rich table of at least ``width``
    columns, a section per value of the first column (``sections``) and the
    rows of server ``bold`` in bold.
    """
    if not rows:
        return
    if use_rich:
        try:
            from rich.console import Console
            from rich.table import Table
        except ImportError:
            use_rich = False
    if use_rich:
        con = Console(width=max(width, shutil.get_terminal_size((width, 20)).columns))
        t = Table(title=title)
        for i, h in enumerate(head):
            t.add_column(h, justify="left" if i < 2 else "right", no_wrap=True)
        prev = None
        for r in rows:
            if sections and prev is not None and r[0] != prev:
                t.add_section()
            prev = r[0]
            t.add_row(*r, style="bold" if bold is not None and r[1] == bold else None)
        con.print(t)
        return
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    print(f"\n{title}")
    for r in [list(head)] + [list(r) for r in rows]:
        print("  " + "  ".join(str(x).ljust(w) if i < 2 else str(x).rjust(w)
                               for i, (x, w) in enumerate(zip(r, widths))))


@dataclass
class TableSpec:
    """One table of :func:`print_report`: the scenarios whose unit is in ``units``."""

    title: str
    units: tuple
    head: list
    #: the rate column from the summary row and its scenario (default: messages/s)
    rate: Callable[[dict, Scenario], str] = lambda row, sc: f"{row['msgs_per_s']:,.0f}"


def _us(x: Optional[float]) -> str:
    return "-" if x is None else f"{x:,.0f}"


def print_report(result: dict, scenarios: Sequence[Scenario], specs: Sequence[TableSpec],
                 use_rich: bool, ratio_title: Optional[str] = None) -> None:
    """The run's tables: one per spec, idle memory, then the ratios."""
    table, ratios, base = result["table"], result["ratios"], result["baseline"]
    rows_by_spec: list[list] = [[] for _ in specs]
    idle_rows = []
    for sc in scenarios:
        for kind, row in table.get(sc.name, {}).items():
            if sc.mode == "idle":
                pss = row.get("bytes_per_conn_pss")
                idle_rows.append([sc.name, kind, f"{row['conns']:,}",
                                  f"{row['bytes_per_conn_rss']:,.0f}",
                                  "-" if pss is None else f"{pss:,.0f}",
                                  f"{row['connect_s']:.2f}" if row.get("connect_s") else "-",
                                  str(row["errors"])])
                continue
            i = next((i for i, s in enumerate(specs) if sc.unit in s.units), 0)
            spread = (f"{row['cpu_us_per_msg_min']:.2f}-{row['cpu_us_per_msg_max']:.2f}"
                      if row["rounds"] > 1 else "")
            rows_by_spec[i].append(
                [sc.name, kind, f"{row['cpu_us_per_msg']:.2f}", spread, specs[i].rate(row, sc),
                 _us(row.get("lat_p50_us")), _us(row.get("lat_p99_us")),
                 pct(row["server_cpu_frac"]), pct(row["gen_busy_frac"]),
                 f"{pct(row['foreign_frac_server_cpu'])}/{pct(row['foreign_frac_gen_cpu'])}",
                 str(row["errors"])])
    idle_head = ["scenario", "server", "conns", "RSS B/conn", "PSS B/conn", "connect s", "errors"]
    ratio_rows = []
    for sc in scenarios:
        for pair, v in ratios.get(sc.name, {}).items():
            what = "memory/conn" if sc.mode == "idle" else f"CPU/{sc.unit}"
            ratio_rows.append([sc.name, pair, what, f"{v:.2f}"])
    ratio_title = ratio_title or f"Ratios {base}/other (< 1: {base} uses less)"
    for spec, rows in zip(specs, rows_by_spec):
        print_table(spec.title, spec.head, rows, use_rich)
    print_table("Server memory per idle connection", idle_head, idle_rows, use_rich)
    print_table(ratio_title, ["scenario", "ratio", "of", "value"], ratio_rows, use_rich)


def finish(path: str, meta: dict, done: Rounds, started: float, **parts: Any) -> int:
    """Save the run (meta, interrupted, ``parts``, failures, runs) and say where; the exit code.

    130 when interrupted, 1 when a run failed, else 0.
    """
    meta["wall_s"] = round(time.monotonic() - started, 1)
    doc = {"meta": meta, "interrupted": done.interrupted, **parts, "failures": done.failures,
           "runs": done.flat()}
    save_json(path, doc)
    print(f"saved {os.path.relpath(path)} ({meta['wall_s']:.0f} s)")
    if done.interrupted:
        return 130
    return 1 if done.failures else 0
