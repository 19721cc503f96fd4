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
server=("$python" bench/servers.py "$kind" --port "$port" --proto "$proto" "${srv_args[@]}")
lg() { "$@" "$loadgen" --port "$port" --conns "$conns" --mode "$mode" --depth "$depth" "${lg_args[@]}" \
       --warmup 0 --duration "$secs" --connect-timeout 120 2>/dev/null | tail -1; }
wait_port() { for _ in $(seq 150); do (echo >/dev/tcp/127.0.0.1/"$port") 2>/dev/null && return; sleep 0.2; done; }
if [ "$who" = server ]; then
    valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$out/cg.%p" "${server[@]}" >/dev/null 2>&1 &
    pid=$!
    wait_port
    secs=1 lg >/dev/null                             # warm up outside the count
    callgrind_control -i on "$pid" >/dev/null 2>&1
    result=$(secs=4 lg)
    callgrind_control -i off "$pid" >/dev/null 2>&1
    callgrind_control -d "$pid" >/dev/null 2>&1
    kill "$pid"; wait "$pid" 2>/dev/null || true
else
    "${server[@]}" >/dev/null 2>&1 &
    pid=$!
    wait_port
    result=$(secs=4 lg valgrind --tool=callgrind --callgrind-out-file="$out/cg.%p")
    kill "$pid"; wait "$pid" 2>/dev/null || true
fi
pid=
msgs=$(python3 -c 'import json, sys; l = sys.argv[1]; print(json.loads(l[l.index("{"):])["messages_total"])' "$result")
ir=$(cat "$out"/cg.* | awk '/^(summary|totals):/ {s += $2} END {print s + 0}')
[ "$msgs" -gt 0 ] || { echo "no message was echoed: $result" >&2; exit 1; }
echo "$kind $proto $mode conns=$conns depth=$depth ($who): $msgs messages, $ir instructions, $((ir / msgs)) per message"
