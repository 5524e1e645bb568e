#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# The test command: installs what it needs, builds (-Werror) and runs every
# test. Exits non-zero on the first failing step.
#
# The release build carries the unit tests, the memory bounds, the e2e tests
# and fuzzing; the integration suite (every file in tests/integration) runs
# once, against the ASan + UBSan gateway, in parallel (pytest-xdist). Quick
# steps first, so a broken build or unit test fails within a minute.
#
# Environment: JOBS (build jobs, 2), TEST_WORKERS (pytest-xdist workers for
# the integration suite, JOBS), FUZZ_SECONDS (per harness, 60).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
jobs=${JOBS:-2}
workers=${TEST_WORKERS:-$jobs}
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

section "Debian package (CPack): contents, Depends, dpkg -i into a throwaway root, --version"
tests/package/deb.sh build

section "JS client unit tests (node --test)"
node --test clients/js/test/

section "npm package of the JS client: npm pack, tsc --noEmit on a typed example"
tests/package/npm.sh

section "build (ASan + UBSan)"
build build-asan -DSG_SANITIZE=ON -DCMAKE_BUILD_TYPE=Debug

section "unit tests under ASan + UBSan"
(cd build-asan && ASAN_OPTIONS=detect_leaks=1 ctest --output-on-failure)

# Every integration test, once, against the sanitized gateway: a fixture fails
# the test whose gateway log holds a sanitizer report. --dist loadgroup keeps
# each xdist_group (pytest.ini) on one worker.
section "integration tests against the ASan + UBSan gateway ($workers workers)"
SG_GATEWAY_BIN="$root/build-asan/signal-gateway" SG_SANITIZED=1 \
  ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  $PY -m pytest -q -rfE -n "$workers" --dist loadgroup --durations=10 tests/integration

# RSS says nothing under ASan (quarantine, shadow memory): the tests that bound
# a gateway's memory run once more, against the release gateway.
section "memory bounds against the release gateway (tests marked rss)"
SG_GATEWAY_BIN="$root/build/signal-gateway" $PY -m pytest -q -rfE -m rss tests/integration

section "end-to-end tests (aiortc, Chromium, haproxy)"
SG_GATEWAY_BIN="$root/build/signal-gateway" tests/e2e/run.sh

section "fuzzing: each libFuzzer harness for ${FUZZ_SECONDS:-60} s"
FUZZ_SECONDS=${FUZZ_SECONDS:-60} tests/fuzz/run.sh

section "all tests passed"
