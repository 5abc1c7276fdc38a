#!/usr/bin/env bash
# Runs the engine's kernel tests under valgrind memcheck: every out-of-bounds read or write,
# or use of uninitialised memory in the `unsafe` kernels (SIMD microkernels, transposes,
# strided gathers, masked copies) fails the run (leaks are not checked: rayon keeps its
# global pool alive on purpose). Miri and the sanitizers need a nightly
# toolchain, which these machines cannot fetch; valgrind is available everywhere.
#
# Valgrind's virtual CPU has AVX2 but not AVX-512, so runtime dispatch picks the AVX2 and
# scalar kernels here; the AVX-512 kernels are checked against the scalar ones by the normal
# tests, and every kernel's bounds are asserted in safe code before its `unsafe` block.
#
# Usage: bash scripts/memcheck.sh   (about 2 minutes on 2 cores; PROPTEST_CASES=16)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if ! command -v valgrind >/dev/null 2>&1; then
    echo "memcheck: valgrind not found; installing it (Debian package)" >&2
    if command -v apt-get >/dev/null 2>&1; then
        SUDO=""
        [[ $(id -u) -ne 0 ]] && SUDO="sudo"
        $SUDO apt-get install -y -qq valgrind >/dev/null
    else
        echo "memcheck: no apt-get to install valgrind with" >&2
        exit 1
    fi
fi

# Test binaries that exercise the unsafe kernels (library unit tests: microkernels, stores,
# transposes, depthwise, filters; the integration tests: every algorithm vs the reference).
targets=(--lib --test plan_vs_reference --test properties --test dwsep_plan)
[[ -f crates/convkit/tests/gradcheck.rs ]] && targets+=(--test gradcheck)

bins=$(cargo test --release -p convkit "${targets[@]}" --no-run --message-format=json 2>/dev/null |
    python3 -c 'import json, sys
for line in sys.stdin:
    j = json.loads(line)
    if j.get("reason") == "compiler-artifact" and j.get("executable"):
        print(j["executable"])')

export PROPTEST_CASES="${PROPTEST_CASES:-16}"
status=0
for bin in $bins; do
    echo "==> valgrind memcheck: $(basename "$bin")"
    if ! valgrind --error-exitcode=99 --leak-check=no -q \
        "$bin" --test-threads=2 -q; then
        echo "memcheck: $(basename "$bin") failed under valgrind" >&2
        status=1
    fi
done
exit $status
