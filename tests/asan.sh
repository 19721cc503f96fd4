#!/usr/bin/env bash
# Build netreactor._speedups with AddressSanitizer and UBSan in a scratch copy
# of the checkout and run the differential and fuzz tests against that build.
#
#   tests/asan.sh [-x ...]                          # tests/test_speedups.py
#   tests/asan.sh tests/test_codec.py tests/test_resp_parser.py -x
#
# CPython itself is not instrumented, so the sanitizer runtime is preloaded and
# leak detection is off (the interpreter keeps memory until exit by design);
# reference leaks are tested by tests/test_speedups.py itself. Needs gcc (or
# CC=clang) with libasan. A few minutes; CI does not run it.
set -euo pipefail
src=$(cd "$(dirname "$0")/.." && pwd)
cc=${CC:-gcc}
asan=$("$cc" -print-file-name=libasan.so)
[ -e "$asan" ] || { echo "no libasan for $cc" >&2; exit 2; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$src" && cp -r netreactor tests docs setup.py pyproject.toml README.md "$work"/)
rm -f "$work"/netreactor/*.so
cd "$work"
CC="$cc" CFLAGS="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined -O1 -g" \
    LDFLAGS="-fsanitize=address,undefined" python3 setup.py -q build_ext --inplace >build.log 2>&1 \
    || { cat build.log >&2; echo "ASan build failed" >&2; exit 1; }
# PYTHONMALLOC=malloc: pymalloc's arenas are invisible to ASan; the system malloc is not.
# Reports go to files (pytest captures stderr), printed below.
run() {
    LD_PRELOAD="$asan" PYTHONMALLOC=malloc PYTHONPATH="$work" \
        ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:log_path=$work/sanitizer" \
        UBSAN_OPTIONS="print_stacktrace=1:log_path=$work/sanitizer" "$@"
}
run python3 -c 'import netreactor._speedups as c, netreactor.speedups as s; print("ASan build:", c.__file__, "-", s.describe())'
# No test path among the arguments: the differential tests.
paths=0
for arg in "$@"; do [ -e "$src/${arg%%::*}" ] && paths=1; done
[ "$paths" -eq 1 ] || set -- tests/test_speedups.py "$@"
status=0
run python3 -m pytest -q -p no:cacheprovider "$@" || status=$?
if compgen -G "$work/sanitizer*" >/dev/null; then
    cat "$work"/sanitizer* >&2
    echo "sanitizer reports above" >&2
    [ "$status" -ne 0 ] || status=1
fi
exit "$status"
