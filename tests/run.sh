#!/usr/bin/env bash
# The test command: installs what it needs, builds (-Werror) and runs every
# test, then does it again under ASan+UBSan. Exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
jobs=${JOBS:-2}
PY=/usr/bin/python3   # Debian's python3-* packages live here, not in a pyenv

deploy/deps.sh test

section() { printf '\n===== %s =====\n' "$*"; }

build() { # dir, extra cmake args...
  local dir=$1; shift
  cmake -S . -B "$dir" -DSG_WERROR=ON "$@" >/dev/null
  cmake --build "$dir" -j"$jobs"
}

section "build (release, -Werror)"
build build

section "unit tests (ctest + cmocka)"
(cd build && ctest --output-on-failure)

section "integration tests (pytest, real redis-server and gateways)"
SG_GATEWAY_BIN="$root/build/signal-gateway" $PY -m pytest -q tests/integration

section "JS client unit tests (node --test)"
node --test clients/js/test/

section "end-to-end tests (aiortc, Chromium, haproxy)"
SG_GATEWAY_BIN="$root/build/signal-gateway" tests/e2e/run.sh

section "fuzzing: each libFuzzer harness for ${FUZZ_SECONDS:-60} s"
FUZZ_SECONDS=${FUZZ_SECONDS:-60} tests/fuzz/run.sh

section "build (ASan + UBSan)"
build build-asan -DSG_SANITIZE=ON -DCMAKE_BUILD_TYPE=Debug

section "unit tests under ASan + UBSan"
(cd build-asan && ASAN_OPTIONS=detect_leaks=1 ctest --output-on-failure)

section "integration tests against the ASan + UBSan gateway (core suite)"
SG_GATEWAY_BIN="$root/build-asan/signal-gateway" SG_SANITIZED=1 \
  ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  $PY -m pytest -q -m "not slow and not e2e" tests/integration/test_handshake.py tests/integration/test_rooms.py \
    tests/integration/test_relay.py tests/integration/test_failures.py tests/integration/test_ws_protocol.py \
    tests/integration/test_logs.py tests/integration/test_config.py

section "all tests passed"
