#!/usr/bin/env bash
# User-space instructions per echoed message, counted by callgrind: a figure that
# repeats run after run on a shared, noisy machine (CPU time does not), for
# tuning the hot path. Kernel work is not counted: use bench/echo.py for CPU.
#
#   bench/instructions.sh [SERVER] [MODE] [CONNS] [DEPTH] [PROTO]
#   bench/instructions.sh netreactor pingpong 50 1 echo    # the defaults
#   bench/instructions.sh uvloop pipeline 50 16
#   bench/instructions.sh netreactor pipeline 50 16 framed # 4-byte length-prefixed frames
#   bench/instructions.sh uvloop-tls pingpong 50 1         # a TLS kind: tlsloadgen.c drives it
#   bench/instructions.sh py-floor-tls-bio handshake 50 1  # MODE also bulk, handshake (TLS)
#   WHO=loadgen bench/instructions.sh uvloop-tls pingpong 50 1   # count the load generator
#   ENGINE='--asyncio' bench/instructions.sh netreactor pingpong 50 1   # engine options (CLI flags)
#
# SERVER is a kind of bench/servers.py (netreactor, uvloop, asyncio, ..., and the
# TLS kinds *-tls, py-floor-tls-*: these get a certificate made for the run,
# RSA 2048, and TLS 1.3 with TLS_AES_128_GCM_SHA256).  WHO=loadgen counts the
# C load generator instead (its whole run: connections included), to check
# that it is the cheaper side.  A TLS handshake message is a whole connection.
# Needs valgrind and a C compiler (TLS: libssl-dev); loopback only; about 30 s.
set -euo pipefail
cd "$(dirname "$0")/.."
kind=${1:-netreactor}; mode=${2:-pingpong}; conns=${3:-50}; depth=${4:-1}; proto=${5:-echo}
who=${WHO:-server}
case $proto in
    echo) header=0 ;;
    framed) header=4 ;;
    *) echo "PROTO must be echo or framed, not $proto" >&2; exit 2 ;;
esac
case $who in server|loadgen) ;; *) echo "WHO must be server or loadgen, not $who" >&2; exit 2 ;; esac
command -v valgrind >/dev/null || { echo "valgrind is not installed (apt-get install valgrind)" >&2; exit 2; }
python=$(python3 -c 'import sys; print(sys.executable)')   # the real binary, not a shim
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
out=$(mktemp -d)
pid=
trap '[ -n "$pid" ] && kill $pid 2>/dev/null; rm -rf "$out"' EXIT
srv_args=(); lg_args=()
case $kind in
    *-tls|py-floor-tls-*)
        loadgen=$(cd bench && python3 -c 'import tls; b, why = tls.build_loadgen(); print(b or why)' 2>/dev/null | tail -1)
        [ -x "$loadgen" ] || { echo "could not build bench/tlsloadgen.c: $loadgen" >&2; exit 2; }
        (cd bench && python3 -c 'import sys, _certs; _certs.make_certs(sys.argv[1])' "$out")
        srv_args=(--certfile "$out/server.pem" --keyfile "$out/server.key")
        lg_args=(--cafile "$out/ca.pem")
        [ "$proto" = echo ] || { echo "TLS kinds serve echo only" >&2; exit 2; } ;;
    *)
        loadgen=$(cd bench && python3 -c 'import _common; cmd, kind, _ = _common.build_loadgen("c"); print(cmd[0])' 2>/dev/null | tail -1)
        [ -x "$loadgen" ] || { echo "could not build bench/loadgen.c" >&2; exit 2; }
        lg_args=(--frame-header "$header") ;;
esac
[ -n "${ENGINE:-}" ] && srv_args+=("--engine=$ENGINE")
server=("$python" bench/servers.py "$kind" --port "$port" --proto "$proto" "${srv_args[@]}")
lg_cmd=("$loadgen" --port "$port" --conns "$conns" --mode "$mode" --depth "$depth" "${lg_args[@]}"
        --warmup 1 --duration 4 --hold --hold-timeout 120 --connect-timeout 120)
wait_port() { for _ in $(seq 150); do (echo >/dev/tcp/127.0.0.1/"$port") 2>/dev/null && return; sleep 0.2; done; }
# Count only inside the generator's measured window: from its "start" line to its
# "end" line (connections and handshakes before it are not counted; a TLS
# handshake costs as much as hundreds of messages).  Prints the result line.
window() {  # window PID-TO-COUNT CMD...: run CMD (the generator), toggling callgrind in PID
    python3 - "$@" <<'PY'
import json, subprocess, sys
target, cmd = sys.argv[1], sys.argv[2:]
lg = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
pid = lg.pid if target == "self" else target
for line in lg.stdout:
    ev = json.loads(line)
    name = ev.get("event")
    if name in ("start", "end"):
        subprocess.run(["callgrind_control", "-i", "on" if name == "start" else "off", str(pid)],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if name == "end":
            subprocess.run(["callgrind_control", "-d", str(pid)], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
            lg.stdin.close()
    elif name == "result":
        print(line.decode().strip())
lg.wait()
PY
}
if [ "$who" = server ]; then
    valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$out/cg.%p" "${server[@]}" >/dev/null 2>&1 &
    pid=$!
    wait_port
    result=$(window "$pid" "${lg_cmd[@]}")
    kill "$pid"; wait "$pid" 2>/dev/null || true
else
    "${server[@]}" >/dev/null 2>&1 &
    pid=$!
    wait_port
    result=$(window self valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$out/cg.%p" "${lg_cmd[@]}")
    kill "$pid"; wait "$pid" 2>/dev/null || true
fi
pid=
msgs=$(python3 -c 'import json, sys; print(json.loads(sys.argv[1])["messages"])' "$result")
# Only the dump taken at "end" (cg.PID.1): the final dump at exit holds nothing more.
ir=$(cat "$out"/cg.*.1 | awk '/^(summary|totals):/ {s += $2} END {printf "%.0f\n", s}')
[ "$msgs" -gt 0 ] || { echo "no message was echoed: $result" >&2; exit 1; }
echo "$kind $proto $mode conns=$conns depth=$depth ($who): $msgs messages, $ir instructions, $((ir / msgs)) per message"
