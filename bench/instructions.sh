#!/usr/bin/env bash
# User-space instructions per echoed message, counted by callgrind: a figure that
# repeats run after run on a shared, noisy machine (CPU time does not), for
# tuning the hot path. Kernel work is not counted: use bench/echo.py for CPU.
#
#   bench/instructions.sh [SERVER] [MODE] [CONNS] [DEPTH] [PROTO]
#   bench/instructions.sh netreactor pingpong 50 1 echo    # the defaults
#   bench/instructions.sh uvloop pipeline 50 16
#   bench/instructions.sh netreactor pipeline 50 16 framed # 4-byte length-prefixed frames
#
# SERVER is a kind of bench/servers.py (netreactor, uvloop, asyncio, ...).
# Needs valgrind and a C compiler; loopback only; about 30 s.
set -euo pipefail
cd "$(dirname "$0")/.."
kind=${1:-netreactor}; mode=${2:-pingpong}; conns=${3:-50}; depth=${4:-1}; proto=${5:-echo}
case $proto in
    echo) header=0 ;;
    framed) header=4 ;;
    *) echo "PROTO must be echo or framed, not $proto" >&2; exit 2 ;;
esac
command -v valgrind >/dev/null || { echo "valgrind is not installed (apt-get install valgrind)" >&2; exit 2; }
python=$(python3 -c 'import sys; print(sys.executable)')   # the real binary, not a shim
loadgen=$(cd bench && python3 -c 'import _common; cmd, kind, _ = _common.build_loadgen("c"); print(cmd[0])' 2>/dev/null | tail -1)
[ -x "$loadgen" ] || { echo "could not build bench/loadgen.c" >&2; exit 2; }
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
out=$(mktemp -d)
trap 'kill $pid 2>/dev/null || true; rm -rf "$out"' EXIT
valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$out/cg.%p" \
    "$python" bench/servers.py "$kind" --port "$port" --proto "$proto" >/dev/null 2>&1 &
pid=$!
for _ in $(seq 150); do (echo >/dev/tcp/127.0.0.1/"$port") 2>/dev/null && break; sleep 0.2; done
lg() { "$loadgen" --port "$port" --conns "$conns" --mode "$mode" --depth "$depth" --size 64 --frame-header "$header" --warmup 0 --duration "$1" 2>/dev/null | tail -1; }
lg 1 >/dev/null                                  # warm up outside the count
callgrind_control -i on "$pid" >/dev/null 2>&1
result=$(lg 4)
callgrind_control -i off "$pid" >/dev/null 2>&1
callgrind_control -d "$pid" >/dev/null 2>&1
kill "$pid"; wait "$pid" 2>/dev/null || true
msgs=$(python3 -c 'import json, sys; l = sys.argv[1]; print(json.loads(l[l.index("{"):])["messages_total"])' "$result")
ir=$(cat "$out"/cg.* | awk '/^(summary|totals):/ {s += $2} END {print s + 0}')
echo "$kind $proto $mode conns=$conns depth=$depth: $msgs messages, $ir instructions, $((ir / msgs)) per message"
