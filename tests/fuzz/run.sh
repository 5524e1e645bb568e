#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Runs every libFuzzer harness (tests/fuzz/fuzz_<name>.c) for a bounded time.
# Installs nothing: needs clang and libclang-rt-14-dev (deploy/deps.sh test).
#
#   FUZZ_SECONDS=30 tests/fuzz/run.sh            # every harness
#   FUZZ_SECONDS=60 tests/fuzz/run.sh proto auth # some of them
#
# Each harness gets a copy of its committed corpus (tests/fuzz/corpus/<name>/)
# in a temporary directory, so the run never changes the tree. A crash, leak,
# timeout or out-of-memory is a failure (libFuzzer exits non-zero); the input
# that triggered it is kept in $FUZZ_ARTIFACTS (default build-fuzz/artifacts)
# to become a corpus entry and a unit test. Prints one line per harness and
# then "N passed, M failed" on a line of its own; exits 1 if any failed.
#
# Environment: FUZZ_SECONDS (30), FUZZ_BUILD_DIR (build-fuzz), JOBS (2),
# FUZZ_ARTIFACTS, FUZZ_RSS_MB (2048), FUZZ_TIMEOUT_S (10, per input).
set -uo pipefail
cd "$(dirname "$0")/../.."
root=$(pwd)

seconds=${FUZZ_SECONDS:-30}
build=${FUZZ_BUILD_DIR:-build-fuzz}
jobs=${JOBS:-2}
artifacts=${FUZZ_ARTIFACTS:-$root/$build/artifacts}
rss_mb=${FUZZ_RSS_MB:-2048}
per_input=${FUZZ_TIMEOUT_S:-10}

all=(ws_frame http_upgrade proto auth session redis_url)
if [ $# -gt 0 ]; then names=("$@"); else names=("${all[@]}"); fi

# -max_len per harness: a little over what the code under test accepts, so
# the size caps themselves are exercised.
max_len() {
  case "$1" in
    ws_frame) echo 16384 ;;     # several frames; the harness caps a message at 4096
    http_upgrade) echo 9216 ;;  # SIGNAL_MAX_HEADER_BYTES default 8192, plus overrun
    proto) echo 8192 ;;         # JSON messages; an SDP-sized one fits
    auth) echo 6144 ;;          # tokens up to 4096 (SG_TOKEN_MAX), JWKS documents
    session) echo 8192 ;;       # a program of a few hundred session steps
    redis_url) echo 2600 ;;     # one URL or list entry up to SG_REDIS_INPUT_MAX (2048), and lists
    *) echo 4096 ;;
  esac
}

for n in "${names[@]}"; do
  if [ ! -f "tests/fuzz/fuzz_$n.c" ]; then
    echo "no harness tests/fuzz/fuzz_$n.c" >&2
    exit 2
  fi
done
command -v clang >/dev/null || { echo "clang not found (deploy/deps.sh test installs it)" >&2; exit 2; }

echo "== configure and build ($build, clang, -fsanitize=fuzzer,address,undefined)"
if ! CC=clang cmake -S . -B "$build" -DSG_FUZZ=ON -DSG_TESTS=OFF >"$root/$build.configure.log" 2>&1; then
  cat "$root/$build.configure.log" >&2
  echo "0 passed, ${#names[@]} failed"
  exit 1
fi
rm -f "$root/$build.configure.log"
targets=()
for n in "${names[@]}"; do targets+=("fuzz_$n"); done
if ! cmake --build "$build" -j"$jobs" --target "${targets[@]}"; then
  echo "0 passed, ${#names[@]} failed"
  exit 1
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/sg-fuzz.XXXXXX")
trap 'rm -rf "$work"' EXIT
mkdir -p "$artifacts"

passed=0
failed=0
summary=()
for n in "${names[@]}"; do
  bin="$root/$build/fuzz_$n"
  corpus="$work/corpus-$n"
  mkdir -p "$corpus"
  if [ -d "tests/fuzz/corpus/$n" ]; then
    cp -R "tests/fuzz/corpus/$n/." "$corpus/"
  fi
  seeds=$(find "$corpus" -type f | wc -l)
  log="$work/$n.log"
  echo "== fuzz_$n: ${seconds}s, -max_len=$(max_len "$n"), $seeds seed input(s)"
  start=$(date +%s.%N)
  ASAN_OPTIONS="detect_leaks=1:abort_on_error=0${ASAN_OPTIONS:+:$ASAN_OPTIONS}" \
  UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1${UBSAN_OPTIONS:+:$UBSAN_OPTIONS}" \
    "$bin" "$corpus" \
      -max_total_time="$seconds" -max_len="$(max_len "$n")" -timeout="$per_input" \
      -rss_limit_mb="$rss_mb" -print_final_stats=1 -detect_leaks=1 \
      -artifact_prefix="$artifacts/$n-" >"$log" 2>&1
  rc=$?
  end=$(date +%s.%N)
  took=$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.1f", b - a }')
  execs=$(awk '/stat::number_of_executed_units/ { v = $NF } END { print v + 0 }' "$log")
  cov=$(grep -Eo 'cov: [0-9]+' "$log" | tail -1 | awk '{ print $2 }')
  units=$(find "$corpus" -type f | wc -l)
  if [ "$rc" -eq 0 ]; then
    result="ok"
    passed=$((passed + 1))
  else
    what=$(grep -Eo 'ERROR: (AddressSanitizer|LeakSanitizer|libFuzzer)[^(]*|runtime error:.*|SUMMARY: [A-Za-z]+Sanitizer: [^ ]+' "$log" | head -1)
    art=$(grep -Eo "Test unit written to [^ ]+" "$log" | tail -1 | sed 's/Test unit written to //')
    result="FAILED (exit $rc${what:+: $what}${art:+; input: $art})"
    failed=$((failed + 1))
    echo "---- last lines of fuzz_$n's output ----"
    tail -n 60 "$log"
    echo "----"
  fi
  line=$(printf 'fuzz_%-13s execs=%-10s seconds=%-6s cov=%-6s corpus=%s->%s  %s' \
    "$n" "$execs" "$took" "${cov:-?}" "$seeds" "$units" "$result")
  echo "$line"
  summary+=("$line")
done

echo
echo "== summary (FUZZ_SECONDS=$seconds)"
for l in "${summary[@]}"; do echo "$l"; done
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
