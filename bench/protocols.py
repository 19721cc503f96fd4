"""Protocol benchmarks: netreactor's Redis and HTTP examples against the real thing.

    python3 bench/protocols.py                 # both suites, ~3 minutes
    python3 bench/protocols.py --quick         # shorter runs, ~1 minute
    python3 bench/protocols.py --only resp     # or: --only http
    netreactor bench protocols [ARGS]          # the same, through the CLI

RESP: ``netreactor example redis`` against ``redis-server --save '' --appendonly no``,
driven by ``redis-benchmark -c 50 -t set,get`` without pipelining and with ``-P 16``.

HTTP: ``netreactor example http`` against uvicorn (``--loop uvloop --http httptools``)
serving a minimal ASGI plaintext app, driven by ``wrk -t1 -c50`` on ``/plaintext``,
without pipelining and with a Lua script pipelining 16 requests.

Every server is pinned to CPU 0 and the load generator to CPU 1 (when the machine
has two CPUs), servers of one scenario run one after the other, and each scenario
is repeated ``--rounds`` times alternating the servers; the best round of each
server is compared (the runs that other load on the machine disturbed least).
Beside throughput, the server's CPU time per request is read from /proc: it is
what a core-bound server would turn into throughput, and it moves much less than
throughput when the machine is busy. Everything runs on 127.0.0.1, for bounded
times. Results are printed as a table and saved as JSON in ``bench/results/``.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import (ASGI_APP, HOST, WRK_PIPELINE_LUA, BenchError, free_port,  # noqa: E402
                     results_path, save_json)
from _procs import ServerProc, run_to_end  # noqa: E402
from _procstat import cpu_seconds  # noqa: E402

#: The targets of issue 6: ours / peer throughput.
TARGETS = {"resp": 0.6, "resp-P16": 0.2, "http": 2.5}


# --------------------------------------------------------------------------- processes

def _cpus() -> List[int]:
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return []


class Server(ServerProc):
    """A server subprocess pinned to one CPU, ready once it accepts; stopped (with its children) on exit."""

    def __init__(self, name: str, argv: List[str], port: int, cpu: Optional[int], cwd: Optional[str] = None):
        super().__init__(name, argv, port, cpu, cwd=cwd, what="")
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise

    def cpu(self) -> float:
        return cpu_seconds(self.proc.pid)


def _netreactor_server(example: str, port: int, cpu: Optional[int]) -> Server:
    # As `netreactor example NAME` serves it: its flags' engine options (HTTP's keep-alive timeout).
    code = ("import netreactor as nr; from netreactor.examples import load_example, resolve_flags; "
            f"nr.run(load_example({example!r})(), 'tcp://{HOST}:{port}', "
            f"**resolve_flags({example!r}, {{}}, {{}})[1])")
    return Server(f"netreactor-{example}", [sys.executable, "-c", code], port, cpu)


def _loadgen(argv: List[str], cpu: Optional[int], timeout: float) -> str:
    return run_to_end(argv, [cpu] if cpu is not None else None, timeout)[0]


# --------------------------------------------------------------------------- RESP

def _redis_benchmark(port: int, requests: int, pipeline: int, cpu: Optional[int]) -> Dict[str, Dict[str, float]]:
    argv = ["redis-benchmark", "-h", HOST, "-p", str(port), "-c", "50", "-n", str(requests),
            "-t", "set,get", "--csv"]
    if pipeline > 1:
        argv += ["-P", str(pipeline)]
    out = _loadgen(argv, cpu, timeout=600)
    results = {}
    for line in out.splitlines():
        cells = [c.strip('"') for c in line.strip().split(",")]
        if len(cells) >= 7 and cells[0] in ("SET", "GET"):
            results[cells[0]] = {"rps": float(cells[1]), "p50_ms": float(cells[4]), "p99_ms": float(cells[6])}
    if set(results) != {"SET", "GET"}:
        raise BenchError(f"cannot read redis-benchmark output: {out[-500:]}")
    return results


def run_resp(rounds: int, quick: bool, cpus: List[int]) -> Dict[str, Any]:
    server_cpu, load_cpu = (cpus[0], cpus[1]) if len(cpus) >= 2 else (None, None)
    scenarios = {"resp": (1, 50_000 if quick else 200_000), "resp-P16": (16, 300_000 if quick else 1_000_000)}
    peers: Dict[str, Any] = {
        "netreactor": lambda port: _netreactor_server("redis", port, server_cpu),
    }
    if shutil.which("redis-server"):
        peers["redis-server"] = lambda port: Server(
            "redis-server", ["redis-server", "--port", str(port), "--bind", HOST, "--save", "",
                             "--appendonly", "no", "--dir", tempfile.gettempdir()], port, server_cpu)
    out: Dict[str, Any] = {}
    for scenario, (pipeline, requests) in scenarios.items():
        def one(port: int, pipeline: int = pipeline, requests: int = requests) -> Dict[str, Any]:
            res = _redis_benchmark(port, requests, pipeline, load_cpu)
            return {"rps": (res["SET"]["rps"] + res["GET"]["rps"]) / 2, "ops": 2 * requests,
                    "detail": res}

        runs = _rounds(scenario, peers, rounds, one,
                       lambda r: f"{r['rps']:,.0f} ops/s, {r['cpu_us_per_op']:.2f} us CPU/op")
        out[scenario] = _summarize(runs, "netreactor", "redis-server", TARGETS[scenario])
    return out


def _rounds(scenario: str, peers: Dict[str, Any], rounds: int, one: Any, line: Any) -> Dict[str, List[Dict[str, Any]]]:
    """``rounds`` runs of every peer, in turn: ``one(port)`` drives a started server."""
    runs: Dict[str, List[Dict[str, Any]]] = {name: [] for name in peers}
    for r in range(rounds):
        for name, start in peers.items():
            port = free_port()
            with start(port) as server:
                cpu0 = server.cpu()
                res = one(port)
                res["cpu_us_per_op"] = (server.cpu() - cpu0) * 1e6 / max(1, res.pop("ops"))
            runs[name].append(res)
            _progress(f"{scenario} round {r + 1}/{rounds} {name}: {line(res)}")
    return runs


# --------------------------------------------------------------------------- HTTP

def _wrk(port: int, seconds: int, script: Optional[str], cpu: Optional[int]) -> Dict[str, Any]:
    argv = ["wrk", "-t1", "-c50", f"-d{seconds}s", "--latency"]
    if script:
        argv += ["-s", script]
    argv.append(f"http://{HOST}:{port}/plaintext")
    out = _loadgen(argv, cpu, timeout=seconds + 60)
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    n = re.search(r"(\d+) requests in", out)
    if not (m and n):
        raise BenchError(f"cannot read wrk output: {out[-500:]}")
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    lat = dict(re.findall(r"^\s+(50|99)%\s+(\S+)", out, re.M))
    return {"rps": float(m.group(1)), "requests": int(n.group(1)),
            "non_2xx": int(non2xx.group(1)) if non2xx else 0,
            "socket_errors": sum(map(int, sock.groups())) if sock else 0,
            "p50": lat.get("50"), "p99": lat.get("99")}


def _have_uvicorn() -> bool:
    import importlib.util

    return all(importlib.util.find_spec(name) is not None for name in ("uvicorn", "uvloop", "httptools"))


def run_http(rounds: int, quick: bool, cpus: List[int], workdir: str) -> Dict[str, Any]:
    server_cpu, load_cpu = (cpus[0], cpus[1]) if len(cpus) >= 2 else (None, None)
    seconds = 3 if quick else 10
    with open(os.path.join(workdir, "plaintext_app.py"), "w") as f:
        f.write(ASGI_APP)
    lua = os.path.join(workdir, "pipeline16.lua")
    with open(lua, "w") as f:
        f.write(WRK_PIPELINE_LUA)
    peers: Dict[str, Any] = {
        "netreactor": lambda port: _netreactor_server("http", port, server_cpu),
    }
    if _have_uvicorn():
        peers["uvicorn"] = lambda port: Server(
            "uvicorn", [sys.executable, "-m", "uvicorn", "plaintext_app:app", "--host", HOST, "--port", str(port),
                        "--loop", "uvloop", "--http", "httptools", "--no-access-log", "--log-level", "warning",
                        "--backlog", "2048"], port, server_cpu, cwd=workdir)
    out: Dict[str, Any] = {}
    for scenario, script in (("http", None), ("http-P16", lua)):
        def one(port: int, script: Optional[str] = script) -> Dict[str, Any]:
            res = _wrk(port, seconds, script, load_cpu)
            return {**res, "ops": res["requests"]}

        runs = _rounds(scenario, peers, rounds, one,
                       lambda r: (f"{r['rps']:,.0f} req/s, {r['cpu_us_per_op']:.2f} us CPU/req, "
                                  f"non-2xx {r['non_2xx']}, socket errors {r['socket_errors']}"))
        out[scenario] = _summarize(runs, "netreactor", "uvicorn", TARGETS.get(scenario))
    return out


# --------------------------------------------------------------------------- report

def _progress(text: str) -> None:
    print(f"  {text}", file=sys.stderr, flush=True)


def _summarize(runs: Dict[str, List[Dict[str, Any]]], ours: str, peer: str,
               target: Optional[float]) -> Dict[str, Any]:
    best = {name: max(rs, key=lambda r: r["rps"]) for name, rs in runs.items() if rs}
    summary: Dict[str, Any] = {"runs": runs, "best": best, "target": target}
    if ours in best and peer in best:
        summary["ratio_rps"] = best[ours]["rps"] / best[peer]["rps"]
        low_cpu = {name: min(r["cpu_us_per_op"] for r in rs) for name, rs in runs.items()}
        summary["ratio_cpu"] = low_cpu[peer] / low_cpu[ours]  # >1: ours needs less CPU per request
        if target is not None:
            summary["meets_target"] = summary["ratio_rps"] >= target
    return summary


def print_table(results: Dict[str, Any]) -> None:
    print()
    print(f"{'scenario':<10} {'server':<13} {'ops/s':>11} {'CPU us/op':>10}  {'ours/peer':>9} "
          f"{'by CPU':>7} {'target':>7}")
    for scenario, summary in results.items():
        first = True
        for name, best in summary["best"].items():
            ratio = cpu_ratio = target = ""
            if first and "ratio_rps" in summary:
                ratio = f"{summary['ratio_rps']:.2f}x"
                cpu_ratio = f"{summary['ratio_cpu']:.2f}x"
                if summary.get("target") is not None:
                    target = f">={summary['target']}" + (" ok" if summary.get("meets_target") else " MISS")
            print(f"{scenario if first else '':<10} {name:<13} {best['rps']:>11,.0f} "
                  f"{best['cpu_us_per_op']:>10.2f}  {ratio:>9} {cpu_ratio:>7} {target:>7}")
            first = False
    print()


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="shorter runs (about a minute in all)")
    ap.add_argument("--rounds", type=int, default=2, help="repetitions of each scenario (default 2)")
    ap.add_argument("--only", choices=("resp", "http"), help="run one suite only")
    ap.add_argument("--json", metavar="PATH", help="where to save results "
                    "(default bench/results/protocols-<timestamp>.json)")
    args = ap.parse_args(argv)
    cpus = _cpus()
    results: Dict[str, Any] = {}
    missing = []
    with tempfile.TemporaryDirectory(prefix="nr-bench-") as workdir:
        if args.only in (None, "resp"):
            if shutil.which("redis-benchmark"):
                if not shutil.which("redis-server"):
                    missing.append("redis-server (Debian package redis-server): no peer for RESP")
                results.update(run_resp(args.rounds, args.quick, cpus))
            else:
                missing.append("redis-benchmark (Debian package redis-tools): RESP skipped")
        if args.only in (None, "http"):
            if shutil.which("wrk"):
                if not _have_uvicorn():
                    missing.append("uvicorn, uvloop, httptools (pip): no peer for HTTP")
                results.update(run_http(args.rounds, args.quick, cpus, workdir))
            else:
                missing.append("wrk (Debian package wrk): HTTP skipped")
    for line in missing:
        print(f"note: not installed: {line}", file=sys.stderr)
    if not results:
        return 1
    print_table(results)
    doc = {
        "suite": "protocols",
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "cpus": os.cpu_count(), "pinned": len(cpus) >= 2,
                    "loadavg_after": os.getloadavg()},
        "quick": args.quick, "rounds": args.rounds, "results": results,
    }
    path = results_path("protocols", args.json)
    save_json(path, doc)
    print(f"results saved to {os.path.relpath(path)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
