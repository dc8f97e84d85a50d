#!/usr/bin/env bash
# Optional sanitizer run: fastrnn's compiled code under AddressSanitizer + UndefinedBehaviorSanitizer.
#
#   tools/sanitize.sh                       # tests/test_rnn.py tests/test_functional.py tests/test_kernels.py tests/test_hardening.py
#   tools/sanitize.sh tests/test_fuzz.py -x # any pytest arguments instead
#
# What it does (nothing in the checkout changes; needs gcc or clang with libasan/libubsan):
#   1. copies the source tree (no build/, .git, *.so, generated .c) to a temporary directory;
#   2. builds the extensions there in place, sanitizers on for the Cython loops and the kernels:
#        CC="gcc -fsanitize=address,undefined -fno-omit-frame-pointer" CFLAGS=-O1 \
#        LDFLAGS="-fsanitize=address,undefined" python setup.py build_ext --inplace
#      The flags go in CC because setup.py detects OpenMP by linking a test program, and
#      setuptools links executables with CC alone (not LDFLAGS): with the flags only in
#      CFLAGS that link fails and the build silently comes out serial. setup.py's own -O3
#      follows CFLAGS, so the kernels are the optimised code that ships. The script checks
#      that the sanitized build has OpenMP;
#   3. runs pytest on that copy with the ASan runtime preloaded, since python itself is not
#      instrumented:
#        LD_PRELOAD="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libstdc++.so.6)"
#        ASAN_OPTIONS=detect_leaks=0:allocator_may_return_null=1   # CPython "leaks" at exit by
#            # design; oversized allocations (the hardening tests ask for petabytes) must fail
#            # with NULL -> MemoryError rather than abort
#        UBSAN_OPTIONS=print_stacktrace=1        # report every undefined behaviour, keep going
#        PYTHONMALLOC=malloc                     # Python objects through malloc, so ASan sees them
#   4. fails if pytest fails, or if the log has any "ERROR: AddressSanitizer" or UBSan
#      "runtime error:" report. The log is kept in build/sanitize.log.
#
# Set KEEP=1 to keep the temporary copy (its path is printed). It takes a few minutes on
# 2 cores; results measured are in docs/hardening.md.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
CC=${CC:-gcc}
SAN="-fsanitize=address,undefined -fno-omit-frame-pointer"
LOG="$ROOT/build/sanitize.log"
if [ "$#" -eq 0 ]; then
    set -- tests/test_rnn.py tests/test_functional.py tests/test_kernels.py tests/test_hardening.py
fi

LIBASAN=$("$CC" -print-file-name=libasan.so)
if [ ! -e "$LIBASAN" ]; then
    echo "sanitize.sh: $CC has no libasan.so (install libasan / gcc's sanitizer runtime)" >&2
    exit 2
fi
# libstdc++ preloaded too: ASan's __cxa_throw interceptor finds the real one when it starts,
# and python itself does not load libstdc++; without it the first C++ exception (torch's
# errors, raised as RuntimeError) aborts the run ("CHECK failed: asan_interceptors.cpp")
LIBSTDCXX=$("$CC" -print-file-name=libstdc++.so.6)
[ -e "$LIBSTDCXX" ] && LIBASAN="$LIBASAN $LIBSTDCXX"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/fastrnn-sanitize.XXXXXX")
if [ "${KEEP:-0}" = 1 ]; then
    echo "sanitize.sh: keeping $WORK"
else
    trap 'rm -rf "$WORK"' EXIT
fi

(cd "$ROOT" && tar cf - --exclude=./build --exclude=./.git --exclude='*.so' \
    --exclude='./fastrnn/*.c' --exclude=./.hypothesis --exclude=./.pytest_cache \
    --exclude=./.benchmarks .) | (cd "$WORK" && tar xf -)

cd "$WORK"
echo "sanitize.sh: building in $WORK with $SAN"
CC="$CC $SAN" CFLAGS="-O1" LDFLAGS="$SAN" python setup.py build_ext --inplace -q >build.log 2>&1 \
    || { tail -30 build.log >&2; exit 1; }
if [ "${FASTRNN_NO_OPENMP:-0}" != 1 ] && ! LD_PRELOAD="$LIBASAN" ASAN_OPTIONS=detect_leaks=0 \
        PYTHONPATH="$WORK" python -c "import sys, fastrnn.functional as f; sys.exit(not f.openmp_enabled())"; then
    echo "sanitize.sh: the sanitized build has no OpenMP (see $WORK/build.log); the parallel" \
         "paths would go untested" >&2
    exit 1
fi

mkdir -p "$(dirname "$LOG")"
echo "sanitize.sh: pytest $* (log: $LOG)"
status=0
env LD_PRELOAD="$LIBASAN" \
    ASAN_OPTIONS="detect_leaks=0:allocator_may_return_null=1:${ASAN_OPTIONS:-}" \
    UBSAN_OPTIONS="print_stacktrace=1:${UBSAN_OPTIONS:-}" \
    PYTHONMALLOC=malloc PYTHONPATH="$WORK" \
    python -m pytest -q -p no:cacheprovider "$@" >"$LOG" 2>&1 || status=$?
tail -3 "$LOG"

reports=$(grep -cE "ERROR: AddressSanitizer|runtime error:" "$LOG" || true)
if [ "$reports" -ne 0 ]; then
    echo "sanitize.sh: $reports sanitizer report(s):" >&2
    grep -nE -A12 "ERROR: AddressSanitizer|runtime error:" "$LOG" | head -80 >&2
    exit 1
fi
if [ "$status" -ne 0 ]; then
    echo "sanitize.sh: pytest exited with status $status (see $LOG)" >&2
    exit "$status"
fi
echo "sanitize.sh: clean (no AddressSanitizer or UBSan reports)"
